"""The training loop in one plain process: local shards, checkpoints in the run folder, no Ray.

``LocalRuntime`` is the ``Runtime`` of a single worker: its datasets read the shards through
``data/shard_reader.py`` (the decoders and wire rows the Ray pipeline uses, collated by the same
``training_collate``), the resume dataset keeps the shards the latest checkpoint had not finished
(as ``launch.ShardDatasetFactory`` does), and a checkpoint is copied into
``<run>/checkpoint_step_<N>`` and then recorded in ``<run>/_checkpoint_index.json``.
``train_local`` runs a whole job that way (a local ``storage_path`` only; every checkpoint is kept).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import torch

from multimodal import fs
from multimodal.checkpoint import CHECKPOINT_INDEX, latest_data_position
from multimodal.config import MediaSpec
from multimodal.data.shard_reader import iter_wire_tables
from multimodal.job_config import JobConfig
from multimodal.training.loop import run_training
from multimodal.training.position import TRAIN, TRAIN_RESUME, VAL


class LocalShards:
    """A dataset of local (or S3) shards with the one method the loop uses: ``iter_torch_batches``."""

    def __init__(self, uri: str, spec: MediaSpec, tokenizer, shards: list[str] | None = None,
                 max_consecutive_failures: int = 100):
        self.uri, self.spec, self.tokenizer, self.shards = uri, spec, tokenizer, shards
        self.max_consecutive_failures = max_consecutive_failures

    def iter_torch_batches(self, *, batch_size: int, collate_fn, device="cpu", drop_last: bool = False,
                           **_: Any) -> Iterator[dict]:
        """Batches of exactly ``batch_size`` wire rows (the last may be smaller), collated."""
        device = "cpu" if device == "auto" else device
        pending: list[pa.Table] = []
        rows = 0
        for table in iter_wire_tables(self.uri, self.spec, self.tokenizer, batch_size, shards=self.shards,
                                      max_consecutive_failures=self.max_consecutive_failures):
            pending.append(table.drop_columns(["text"]))
            rows += table.num_rows
            while rows >= batch_size:
                joined = pa.concat_tables(pending)
                yield self._collate(joined.slice(0, batch_size), collate_fn, device)
                pending, rows = [joined.slice(batch_size)], rows - batch_size
        if rows and not drop_last:
            yield self._collate(pa.concat_tables(pending), collate_fn, device)

    @staticmethod
    def _collate(table: pa.Table, collate_fn, device) -> dict:
        return {k: v.to(device) for k, v in collate_fn(table).items()}


class NoMetrics:
    """``TrainMetrics``' methods, recording nothing (no Ray metrics agent in a plain process)."""

    def record_step(self, **_: Any) -> None: ...
    def record_samples(self, *_: Any) -> None: ...
    def record_validation(self, *_: Any) -> None: ...


class LocalRuntime:
    """``Runtime`` for one worker in this process (see the module docstring)."""

    rank, world_size = 0, 1

    def __init__(self, run_uri: str, datasets: dict[str, LocalShards], device: str = "cpu"):
        self.run_uri, self.datasets = run_uri, datasets
        self.run_name = os.path.basename(run_uri.rstrip("/"))
        self.device = torch.device(device)

    def dataset(self, name: str) -> LocalShards:
        return self.datasets[name]

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        index = os.path.join(self.run_uri, CHECKPOINT_INDEX)
        if not os.path.exists(index):
            yield None
            return
        with open(index) as handle:
            yield os.path.join(self.run_uri, json.load(handle)["latest"]["dir"])

    def commit_checkpoint(self, metrics: dict[str, Any], directory: str, dir_name: str) -> None:
        final = os.path.join(self.run_uri, dir_name)
        staging = final + ".partial"  # copied whole, then renamed: never half there
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(directory, staging)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(staging, final)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def node_id(self) -> str:
        return socket.gethostname()

    def metrics(self) -> NoMetrics:
        return NoMetrics()


def train_local(job: JobConfig, model_cfg, tokenizer_uri: str, device: str = "cpu") -> dict[str, Any]:
    """Run ``job`` (training and optional validation shards) in this process; returns the result.

    The run folder is ``<storage_path>/<name>`` (local); running the same job again resumes from
    its latest checkpoint, at the data position stored with it.
    """
    from multimodal.data.tokenizer import load_tokenizer
    from multimodal.launch import describe_data, run_uri, total_steps

    if fs.is_s3(job.run.storage_path):
        raise ValueError("train_local: storage_path must be a local folder")
    run = run_uri(job)
    os.makedirs(run, exist_ok=True)
    train_data = describe_data(job.data.train)
    tokenizer = load_tokenizer(tokenizer_uri)
    shards = dict(spec=model_cfg.media, tokenizer=tokenizer,
                  max_consecutive_failures=job.data.max_consecutive_failures)
    remaining = latest_data_position(run).remaining_shards(train_data.shard_rows)
    datasets = {TRAIN: LocalShards(train_data.uri, **shards),
                TRAIN_RESUME: LocalShards(train_data.uri, shards=[train_data.shard_names[i] for i in remaining]
                                          or None, **shards)}
    if job.data.val:
        datasets[VAL] = LocalShards(job.data.val, **shards)
    one_worker = job.model_copy(update={"run": job.run.model_copy(update={"num_workers": 1})})
    loop_config = {"job": job.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json"),
                   "run_uri": run, "shard_rows": train_data.shard_rows,
                   "total_steps": total_steps(one_worker, train_data), "tokenizer_uri": tokenizer_uri,
                   "datasets": sorted(datasets)}
    return run_training(loop_config, LocalRuntime(run, datasets, device))


def run_job_local(job: JobConfig) -> dict[str, Any]:
    """``jobs/train_multimodal.py --no-ray``: the preflight's data checks, the tokenizer, ``train_local``, and the
    result (stored as ``<run>/result.json``), all in this process."""
    import time

    from multimodal.data.tokenizer import load_tokenizer
    from multimodal.launch import (PreflightError, _finetune_base_config, check_data_spec, describe_data,
                                   prepare_tokenizer, run_uri)

    started = time.time()
    if fs.is_s3(job.run.storage_path):
        raise PreflightError("--no-ray keeps the run in a local folder: give a local --storage-path")
    run = run_uri(job)
    os.makedirs(run, exist_ok=True)
    for uri, role in ((job.data.train, "training"), (job.data.val, "validation")):
        if uri:
            check_data_spec(job, describe_data(uri, role), role)
    base_cfg = _finetune_base_config(job)
    tokenizer_uri = prepare_tokenizer(job, run)
    model_cfg = base_cfg or job.model.resolve(vocab_size=load_tokenizer(tokenizer_uri).get_vocab_size())
    resolved = {"job": job.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json")}
    fs.write_bytes_atomic(fs.join(run, "config.json"), json.dumps(resolved, indent=1).encode())
    result = dict(train_local(job, model_cfg, tokenizer_uri) or {})
    result.update({"name": job.run.name, "run_uri": run, "preset": model_cfg.preset, "runtime": "plain process",
                   "wall_seconds": round(time.time() - started, 1)})
    fs.write_bytes_atomic(fs.join(run, "result.json"), json.dumps(result, indent=1).encode())
    return result

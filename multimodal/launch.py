"""The training driver: preflight, tokenizer, datasets, ``TorchTrainer``, result.

``jobs/train_multimodal.py`` parses flags into a ``JobConfig`` and calls ``run``. Everything a
run keeps lives under ``storage_path/name/``: ``config.json`` (resolved), ``tokenizer.json``,
Ray Train's checkpoints and snapshot, ``model/`` (the exported model) and ``result.json``.
Submitting the same name again resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from multimodal import fs
from multimodal.checkpoint import latest_checkpoint_metrics, latest_data_position
from multimodal.job_config import ConfigError, JobConfig
from multimodal.ray_logs import is_quiet, quiet_data_context, ray_init_kwargs, train_logging_config
from multimodal.run_stop import clear_broken_dataset, raise_if_stopped
from multimodal.train_data import (
    PreflightError, TrainData, check_data_spec, check_data_tokenizer, check_writable, describe_data,
    storage_estimate,
)


def run_uri(job: JobConfig) -> str:
    storage = job.run.storage_path
    if not fs.is_s3(storage):
        storage = str(fs.filesystem_for(storage)[1])
    return fs.join(storage, job.run.name)


# --- preflight (the data part: multimodal/train_data.py) ---------------------------------
def _cluster_cpus(capacity) -> float:
    """The CPUs the job may be sized against: what is up, or the node types at their maximum."""
    if capacity.autoscaling and capacity.node_types:
        return sum(t.resources.get("CPU", 0.0) * (t.max_count if t.max_count >= 0 else 1)
                   for t in capacity.node_types) + capacity.total().get("CPU", 0.0)
    return capacity.total().get("CPU", 0.0) or 1.0


def size_job(job: JobConfig, capacity) -> str | None:
    """Fill in ``--cpus-per-worker`` / ``data.decode_cpus`` when not given; returns what was chosen."""
    from multimodal.capacity import default_cpus

    if job.run.cpus_per_worker is not None and job.data.decode_cpus is not None:
        return None
    share = default_cpus(_cluster_cpus(capacity), job.run.num_workers, job.data.decode_concurrency,
                         job.run.use_gpu)
    if job.run.cpus_per_worker is None:
        job.run.cpus_per_worker = share
    if job.data.decode_cpus is None:
        job.data.decode_cpus = share
    return (f"sized for this cluster: {job.run.num_workers} workers x {job.run.cpus_per_worker:g} CPU, "
            f"{job.data.decode_concurrency} decode actor(s) x {job.data.decode_cpus:g} CPU "
            f"(--cpus-per-worker and --set data.decode_cpus=N choose them)")


def check_cluster(job: JobConfig, dry_run: bool = False) -> dict[str, Any]:
    """The job must fit the cluster (as it is, or as the autoscaler can grow it); on an
    autoscaling cluster, ask for the nodes and wait for them (``--scale-timeout``)."""
    from multimodal import capacity as cap

    capacity = cap.discover()
    sized = size_job(job, capacity)
    if sized:
        print(sized, flush=True)
    worker = {"CPU": job.run.cpus_per_worker, **({"GPU": 1.0} if job.run.use_gpu else {})}
    pool = cap.decoder_pool(capacity, worker, job.run.num_workers, job.data.decode_cpus,
                            job.data.decode_concurrency, job.data.decode_max_concurrency)
    try:  # the pool starts at its minimum; Ray Data grows it within what is free
        plan = cap.plan(capacity, worker, job.run.num_workers, pool.bundle, pool.min_size)
    except cap.CapacityError as exc:
        raise PreflightError(str(exc)) from None
    summary = {"autoscaling": capacity.autoscaling, "source": capacity.source,
               "resources_up": capacity.total(), "nodes_up": len(capacity.nodes),
               "node_types": None if capacity.node_types is None else
               {t.name: {"resources": t.resources, "max": t.max_count} for t in capacity.node_types},
               "bundles": plan.bundles(), "nodes_to_start": plan.new_nodes,
               "decoders": {"min": pool.min_size, "max": pool.max_size, "bundle": pool.bundle}}
    if dry_run or not capacity.autoscaling or (capacity.node_types is not None and not plan.new_nodes):
        return summary
    try:
        summary["scale_wait_s"] = round(cap.wait_for_nodes(plan, job.run.scale_timeout_s,
                                                           say=lambda m: print(m, flush=True)), 1)
    except cap.CapacityError as exc:
        cap.release()
        raise PreflightError(str(exc)) from None
    summary["requested"] = True
    return summary


def check_cluster_reads(uri: str) -> None:
    """A Ray task (not this driver) reads the data's summary: the nodes need S3 access of their own,
    because credentials never travel in Ray's runtime env."""
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def probe(target: str) -> None:
        from multimodal.data.schema import read_summary

        read_summary(target)

    try:
        ray.get(probe.remote(uri), timeout=120)
    except Exception as exc:
        cause = str(getattr(exc, "cause", None) or exc).strip().splitlines()
        raise PreflightError(f"Ray's nodes cannot read {uri}: {cause[-1] if cause else exc}; give the "
                             f"nodes S3 credentials in their own environment or role (slm-cluster up "
                             f"does; on AWS an instance profile, on Kubernetes IRSA): they are never sent "
                             f"through Ray's runtime env") from None


# --- tokenizer and datasets --------------------------------------------------------------
def prepare_tokenizer(job: JobConfig, run: str, train_uri: str | None = None) -> str:
    """The URI of the run's tokenizer: the run's saved one, the given one, the pre-decoded
    training data's own, or one trained now on ``train_uri`` (the resolved training data;
    default ``data.train``)."""
    from multimodal.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer_from_dataset
    from multimodal.finetune import base_tokenizer_uri

    target = fs.join(run, "tokenizer.json")
    if fs.exists(target):
        return target
    from multimodal.data.predecoded import dataset_tokenizer

    train_uri = train_uri or job.data.train
    # a fine-tune: the base model's; else the given one or, for pre-decoded shards, the shards' own
    source = (base_tokenizer_uri(job.finetune.init_from) if job.finetune.init_from
              else job.data.tokenizer or dataset_tokenizer(train_uri))
    if source:
        save_tokenizer(load_tokenizer(source), target)
    else:
        vocab_size = job.data.vocab_size or job.model.resolve().core.vocab_size
        print(f"training a byte-level BPE tokenizer (vocab <= {vocab_size}) on {train_uri}", flush=True)
        started = time.time()
        train_tokenizer_from_dataset(train_uri, vocab_size, target)
        print(f"tokenizer saved to {target} ({time.time() - started:.1f}s)", flush=True)
    return target


class ShardDatasetFactory:
    """Builds a Ray Dataset when Ray Train (re)starts its worker group.

    With ``resume=True`` it reads the latest committed checkpoint's data position and keeps only
    the shards that position had not finished, so an epoch interrupted by a worker failure or a
    resubmission continues with the unread shards instead of starting over.
    """

    def __init__(self, data: TrainData, media: dict[str, Any], tokenizer_uri: str, run: str,
                 resume: bool, max_consecutive_failures: int, concurrency: int | tuple[int, int],
                 num_cpus: float, cache_decoded: bool = False, resources: dict[str, float] | None = None):
        self.data, self.media, self.tokenizer_uri, self.run = data, media, tokenizer_uri, run
        self.resume, self.max_consecutive_failures = resume, max_consecutive_failures
        self.concurrency, self.num_cpus, self.resources = concurrency, num_cpus, resources or None
        # the resume dataset is read once (the rest of one epoch): never worth caching
        self.cache_decoded = cache_decoded and not resume

    def shards(self) -> list[str]:
        if not self.resume:
            return list(self.data.shard_names)
        position = latest_data_position(self.run)
        remaining = position.remaining_shards(self.data.shard_rows)
        # none left: the epoch was finished, and the loop starts the next one (close_finished_epoch)
        return [self.data.shard_names[i] for i in remaining] or list(self.data.shard_names)

    def __call__(self):
        from ray.data import DataContext

        from multimodal.config import MediaSpec
        from multimodal.data.pipeline import build_dataset

        # Ray Train calls this in its controller, whose DataContext is not the driver's
        DataContext.get_current().enable_progress_bars = False
        quiet_data_context(DataContext.get_current())
        dataset = build_dataset(self.data.uri, MediaSpec.model_validate(self.media),
                                self.tokenizer_uri, shards=self.shards(),
                                max_consecutive_failures=self.max_consecutive_failures,
                                concurrency=self.concurrency, num_cpus=self.num_cpus,
                                resources=self.resources)
        return dataset.materialize() if self.cache_decoded else dataset


def total_steps(job: JobConfig, data: TrainData) -> int:
    per_step = job.train.batch_size * job.run.num_workers * job.train.grad_accum_steps
    epoch_steps = max(1, data.rows // per_step)
    planned = epoch_steps * job.train.num_epochs
    return min(planned, job.train.max_steps) if job.train.max_steps else planned


def _ray_init() -> None:
    """Connect to (or start) Ray. Only the non-secret S3 settings (endpoint, region) travel in
    the runtime env: Ray writes runtime envs to its logs and shows them on the dashboard, so
    credentials must come from each node's own environment or role."""
    import ray

    if ray.is_initialized():
        return
    job_env: dict[str, str] = {}
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if injected:
        job_env = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
    env_vars = {k: v for k, v in fs.aws_public_env_vars().items() if k not in job_env}
    env_vars.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    ray.init(runtime_env={"env_vars": env_vars}, log_to_driver=True, **ray_init_kwargs())


def _finetune_base_config(job: JobConfig):
    """The base model's config for a fine-tune (``None`` for a fresh run)."""
    if not job.finetune.init_from:
        return None
    from multimodal.finetune import base_model_config, base_tokenizer_uri

    try:
        base_tokenizer_uri(job.finetune.init_from)
        return base_model_config(job.finetune.init_from)
    except (OSError, ValueError) as exc:
        raise PreflightError(f"--init-from {str(exc).splitlines()[0]}") from None


# --- the run -----------------------------------------------------------------------------
def run(job: JobConfig, dry_run: bool = False, local_mode: bool = False) -> dict[str, Any]:
    """Preflight, train with Ray Train, export, and return (and store) the result.

    ``dry_run`` stops after the preflight and returns its plan (nothing is started).
    ``local_mode`` runs the training loop in this process (Ray Train's ``num_workers=0``: no
    Train controller or worker actors; Ray Data still feeds it): ``jobs/bench_train.py``'s baseline."""
    if not job.data.train:
        raise ConfigError("config error: data.train: no training data; pass --data s3://bucket/prefix")
    started = time.time()
    run = run_uri(job)
    train_data = describe_data(job.data.train, run=run, dry_run=dry_run)
    val_data = describe_data(job.data.val, "validation", run, dry_run) if job.data.val else None
    for data, role in ((train_data, "training"), (val_data, "validation")):
        if data is not None:
            check_data_spec(job, data, role)  # pre-decoded shards: fail before anything starts
    check_writable(run)
    base_cfg = _finetune_base_config(job)
    _ray_init()
    if fs.is_s3(train_data.uri):
        check_cluster_reads(train_data.uri)
    cluster = check_cluster(job, dry_run=dry_run)
    estimate = storage_estimate(train_data)
    detail = "" if is_quiet() else f"; cluster {json.dumps(cluster)}; storage estimate {json.dumps(estimate)}"
    print(f"preflight: {train_data.rows} samples in {len(train_data.shard_names)} shards "
          f"({train_data.bytes / 1e6:.1f} MB) at {train_data.uri}{detail}", flush=True)
    if dry_run:
        return {"dry_run": True, "name": job.run.name, "run_uri": run, "cluster": cluster,
                "steps": total_steps(job, train_data), "cpus_per_worker": job.run.cpus_per_worker,
                "decode_cpus": job.data.decode_cpus, "data": {"train": train_data.uri, "rows": train_data.rows}}
    try:
        return _train(job, run, train_data, val_data, started, base_cfg, local_mode, cluster.get("decoders"))
    finally:
        if cluster.get("requested"):
            from multimodal.capacity import release

            release()


def _shard_datasets(job: JobConfig, run: str, train_data: TrainData, val_data: TrainData | None,
                    model_cfg, tokenizer_uri: str, decoders: dict[str, Any] | None) -> dict[str, Any]:
    """Ray Train's dataset factories: the epoch's training data, the rest of a resumed epoch,
    validation; decoders sized as the preflight planned them."""
    from multimodal.training import TRAIN, TRAIN_RESUME, VAL

    media = model_cfg.media.model_dump()
    factory_args = dict(media=media, tokenizer_uri=tokenizer_uri, run=run,
                        max_consecutive_failures=job.data.max_consecutive_failures,
                        concurrency=((decoders["min"], decoders["max"]) if decoders
                                     else job.data.decode_concurrency),
                        num_cpus=job.data.decode_cpus, cache_decoded=job.data.cache_decoded,
                        resources={k: v for k, v in (decoders or {}).get("bundle", {}).items() if k != "CPU"})
    datasets: dict[str, Any] = {
        TRAIN: ShardDatasetFactory(train_data, resume=False, **factory_args),
        TRAIN_RESUME: ShardDatasetFactory(train_data, resume=True, **factory_args),
    }
    if val_data:
        datasets[VAL] = ShardDatasetFactory(val_data, resume=False, **factory_args)
    return datasets


def _train(job: JobConfig, run: str, train_data: TrainData, val_data: TrainData | None,
           started: float, base_cfg=None, local_mode: bool = False,
           decoders: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tokenizer, datasets, ``TorchTrainer.fit()``, result: the part after the preflight.
    ``base_cfg``: the base model's config when fine-tuning (``--init-from``); ``decoders``: the
    decode actor pool ``check_cluster`` planned (min, max, bundle)."""
    from ray.data import DataContext
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from multimodal.data.tokenizer import load_tokenizer
    from multimodal.training import train_loop_per_worker

    DataContext.get_current().enable_progress_bars = False  # one line per step in the job log instead
    quiet_data_context(DataContext.get_current())
    tokenizer_uri = prepare_tokenizer(job, run, train_data.uri)
    for data, role in ((train_data, "training"), (val_data, "validation")):
        if data is not None:
            check_data_tokenizer(data, tokenizer_uri, role)
    model_cfg = base_cfg or job.model.resolve(vocab_size=load_tokenizer(tokenizer_uri).get_vocab_size())
    from multimodal.compress.distill import check_teacher

    try:
        check_teacher(job.train.teacher, load_tokenizer(tokenizer_uri), model_cfg.core.vocab_size)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    resolved = {"job": job.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json")}
    fs.write_bytes_atomic(fs.join(run, "config.json"), json.dumps(resolved, indent=1).encode())
    previous = latest_checkpoint_metrics(run)
    if previous:
        print(f"run {job.run.name} has a checkpoint at step {previous.get('step')}: resuming", flush=True)

    datasets = _shard_datasets(job, run, train_data, val_data, model_cfg, tokenizer_uri, decoders)
    steps = total_steps(job, train_data)
    loop_config = {"job": job.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json"),
                   "run_uri": run, "shard_rows": train_data.shard_rows, "total_steps": steps,
                   "tokenizer_uri": tokenizer_uri, "datasets": sorted(datasets)}
    scaling = ScalingConfig(num_workers=0 if local_mode else job.run.num_workers, use_gpu=job.run.use_gpu,
                            placement_strategy=job.run.placement_strategy,
                            resources_per_worker={"CPU": job.run.cpus_per_worker,
                                                  **({"GPU": 1} if job.run.use_gpu else {})})
    checkpoints = (CheckpointConfig(num_to_keep=job.train.keep_checkpoints, checkpoint_score_attribute="val_loss",
                                    checkpoint_score_order="min") if val_data
                   else CheckpointConfig(num_to_keep=job.train.keep_checkpoints))
    storage_path = run.rsplit("/", 1)[0]
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling,
        datasets=datasets,
        run_config=RunConfig(name=job.run.name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=job.run.max_failures),
                             checkpoint_config=checkpoints, logging_config=train_logging_config(),
                             worker_runtime_env={"env_vars": {**fs.aws_public_env_vars(),
                                                              "RAY_CHDIR_TO_TRIAL_DIR": "0"}}),
    )
    clear_broken_dataset(run)  # a new submission gets a fresh try at (possibly fixed) data
    try:
        outcome = trainer.fit()
    except Exception as exc:  # a broken dataset: one line instead of a worker traceback
        raise_if_stopped(None, exc)
        raise
    raise_if_stopped(outcome.return_value)
    result = dict(outcome.return_value or {})
    result.update({"name": job.run.name, "run_uri": run, "preset": model_cfg.preset,
                   "resumed_run": previous is not None, "resumed_run_from_step": (previous or {}).get("step"),
                   "wall_seconds": round(time.time() - started, 1),
                   "data": {"train": train_data.uri, "rows": train_data.rows,
                            "val": val_data.uri if val_data else None},
                   "checkpoint": outcome.checkpoint.path if outcome.checkpoint else None})
    fs.write_bytes_atomic(fs.join(run, "result.json"), json.dumps(result, indent=1).encode())
    return result


__all__ = ["run", "PreflightError", "describe_data", "ShardDatasetFactory"]

"""The training loop in one plain process (no Ray): the same ``Trainer`` Ray Train runs."""

from __future__ import annotations

import json

import pytest
import torch

from multimodal.checkpoint import DataPosition, TrainerState, checkpoint_dir_name, latest_data_position
from multimodal.data import make_shards as ms
from multimodal.data.loader import BatchStats
from multimodal.data.tokenizer import train_tokenizer
from multimodal.job_config import JobConfig
from multimodal.training.counts import Collectives, Counts
from multimodal.training.local import train_local
from multimodal.training.mfu import CPU_PEAK_TFLOPS_PER_CORE, FlopsModel, peak_flops
from tests.unit.test_predecoded_shards import write_manifest


@pytest.fixture(scope="module")
def shards(media_dir, tmp_path_factory):
    """28 rows in 9 small shards (2-5 rows each), and a tokenizer trained on their captions."""
    root = tmp_path_factory.mktemp("local-train")
    manifest = write_manifest(media_dir, "local-train.csv", repeat=4)
    summary = ms.make_shards(str(manifest), str(root / "shards"), target_shard_bytes=20_000, progress=None)
    assert summary.rows == 28 and len(summary.shard_names) >= 6
    captions = [line.split(",")[1] for line in manifest.read_text().splitlines()[1:]]
    tokenizer = train_tokenizer(captions * 3, 300)
    tokenizer.save(str(root / "tokenizer.json"))
    return {"root": root, "uri": str(root / "shards"), "tokenizer": str(root / "tokenizer.json"),
            "rows": [s["rows"] for s in summary.shards], "vocab": tokenizer.get_vocab_size()}


def _job(shards, max_steps: int) -> JobConfig:
    return JobConfig.model_validate({
        "model": {"preset": "tiny"}, "data": {"train": shards["uri"], "val": shards["uri"]},
        "train": {"batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 0, "max_steps": max_steps,
                  "num_epochs": 3, "val_every_steps": 3, "log_every_steps": 1},
        "run": {"name": "plain", "storage_path": str(shards["root"] / "runs"), "num_workers": 1,
                "cpus_per_worker": 1}})


def test_the_loop_trains_checkpoints_and_resumes_mid_epoch_without_ray(shards, capsys):
    job = _job(shards, max_steps=3)
    model_cfg = job.model.resolve(vocab_size=shards["vocab"])
    first = train_local(job, model_cfg, shards["tokenizer"])
    run = shards["root"] / "runs" / "plain"
    assert first["steps"] == 3 and first["stop_reason"] == "max_steps" and not first["resumed"]
    assert (run / checkpoint_dir_name(3) / "model.safetensors").exists()
    assert (run / checkpoint_dir_name(3) / "rng-rank-0.pt").exists()
    # 3 steps of 4 rows: the first shards read whole, the next one partly
    position = latest_data_position(str(run))
    assert sum(position.rows_per_shard.values()) == 12
    done = [i for i, n in enumerate(shards["rows"]) if position.rows_per_shard.get(i, 0) >= n]
    assert done and len(done) < len(shards["rows"])
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("step 3/"))
    assert "MFU " in line and "tok/s" in line
    assert first["mfu"] is not None and 0 < first["mfu"] < 1
    assert first["peak_tflops"] == pytest.approx(CPU_PEAK_TFLOPS_PER_CORE)

    # the same job with a higher step limit resumes at step 3, and reads only the unfinished shards
    second = train_local(_job(shards, max_steps=8), model_cfg, shards["tokenizer"])
    assert second["resumed_from_steps"] == [3] and second["steps"] == 8
    resume = second["resume_shards"]
    assert resume["epoch"] == 0 and resume["fully_read_at_checkpoint"] == done
    assert set(resume["read_after_resume"]).isdisjoint(done)
    assert set(resume["read_after_resume"]) == set(range(len(shards["rows"]))) - set(done)
    # every row once, but the partly read shard again from its start (checkpoint.py)
    partly_read = sum(n for i, n in position.rows_per_shard.items() if i not in done)
    assert second["samples_by_modality"]["text"] + second["dropped_samples"] == 28 + partly_read
    assert second["last_train_loss"] < second["first_train_loss"]  # the loss drops
    assert second["best_val_loss"] is not None and second["best_step"] in (3, 6, 8)
    index = json.loads((run / "_checkpoint_index.json").read_text())
    assert index["latest"]["step"] == 8
    assert (run / "model" / "config.json").exists()


def test_counts_are_one_record_summed_by_name():
    a, b = Counts(), Counts()
    a.add_batch(BatchStats(rows=3, valid=2, dropped=1, samples={"text": 2, "image": 1},
                           bad={"image": 1}, rows_per_shard={0: 3}, wait_s=0.5), tokens=10)
    b.add_batch(BatchStats(rows=2, valid=2, samples={"text": 2, "audio": 2}, rows_per_shard={1: 2},
                           wait_s=1.5), tokens=6)
    total = Collectives(torch.device("cpu")).sum_counts(a) + b  # one process: gather is itself
    assert total.workers == 2 and total.tokens == 16 and total.rows_per_shard == {0: 3, 1: 2}
    state = TrainerState(position=DataPosition(rows_per_shard={0: 1}))
    total.add_to(state, num_shards=2)
    assert state.position.rows_per_shard == {0: 4, 1: 2} and state.tokens_seen == 16
    assert state.samples_by_modality == {"text": 4, "image": 1, "audio": 2}
    assert state.bad_samples_by_modality == {"image": 1, "audio": 0, "video": 0} and state.dropped_samples == 1
    assert state.data_wait_seconds == pytest.approx(1.0)  # the mean over the two workers


def test_model_flops_count_encoders_only_for_samples_that_carry_them():
    from multimodal.config import preset
    from multimodal.model import MultimodalSLM

    flops = FlopsModel(MultimodalSLM(preset("tiny")))
    text_only = flops.flops(4, {"text": 4})
    with_images = flops.flops(4, {"text": 4, "image": 2})
    assert text_only == 4 * flops.per_sample and with_images == text_only + 2 * flops.per_modality["image"]
    assert peak_flops(torch.device("cpu"), 2) == pytest.approx(2 * CPU_PEAK_TFLOPS_PER_CORE * 1e12)
    assert peak_flops(torch.device("cpu"), 2, peak_tflops=3.0) == 3e12


def test_the_job_runs_without_ray_from_the_command_line(shards, capsys):
    from jobs.train_multimodal import main

    storage = shards["root"] / "cli-runs"
    argv = ["--no-ray", "--data", shards["uri"], "--tokenizer", shards["tokenizer"], "--preset", "tiny",
            "--storage-path", str(storage), "--name", "cli", "--max-steps", "2", "--batch-size", "4",
            "--cpus-per-worker", "1", "--peak-tflops", "0.5"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.split("RESULT ", 1)[1])
    assert result["steps"] == 2 and result["world_size"] == 1 and result["peak_tflops"] == 0.5
    assert result["runtime"] == "plain process" and (storage / "cli" / "model" / "model.safetensors").exists()
    assert json.loads((storage / "cli" / "result.json").read_text())["steps"] == 2
    assert main([*argv, "--storage-path", "s3://bucket/runs"]) == 2  # one line, no traceback
    assert capsys.readouterr().err.strip() == ("error: --no-ray keeps the run in a local folder: "
                                               "give a local --storage-path")

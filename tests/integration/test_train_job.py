"""The training job end to end on the session's Ray cluster and S3 server (tiny preset, CPU)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request

import pytest

from multimodal import fs
from multimodal.checkpoint import committed_steps, latest_checkpoint_metrics
from multimodal.job_config import build_config
from tests.media import demo_shards_on_s3

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory, s3_server):
    """A small demo corpus packed into many small shards on S3 (so an epoch spans shards)."""
    return demo_shards_on_s3(s3_server, tmp_path_factory.mktemp("corpus"), "train",
                             {"image": 24, "audio": 24, "video": 24, "text": 8}, seed=3,
                             shard_bytes={"train": 60_000})


def job_config(bucket: str, uris: dict[str, str], name: str, **train) -> object:
    return build_config({
        "model": {"preset": "tiny"},
        "data": {"train": uris["train"], "val": uris["val"], "vocab_size": 300, "decode_cpus": 0.5},
        "train": {"batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 2, "val_every_steps": 4,
                  "log_every_steps": 2, "num_epochs": 50, **train},
        "run": {"name": name, "storage_path": f"s3://{bucket}/runs", "num_workers": 2,
                "cpus_per_worker": 0.5, "max_failures": 2},
    })


def test_two_worker_run_learns_and_exports(ray_cluster, s3_server, demo_shards, tmp_path):
    from multimodal.launch import run

    bucket, uris = demo_shards
    result = run(job_config(bucket, uris, "basic", max_steps=12))

    assert result["steps"] == 12
    assert result["world_size"] == 2
    assert len(result["nodes"]) == 1  # both workers on the session cluster's one node
    assert result["last_train_loss"] < result["first_train_loss"]
    assert result["best_val_loss"] is not None
    # 60 rows split over 2 workers: 30 each per epoch, in batches of 4,4,4,4,4,4,4,2 (8 steps);
    # 12 steps = one epoch (30 rows) + 4 batches of the next (16 rows), per worker
    assert result["epochs_completed"] == 1
    assert result["samples_by_modality"]["text"] == 2 * (30 + 16)
    assert sum(result["samples_by_modality"][m] for m in ("image", "audio", "video")) > 0
    assert result["bad_samples_by_modality"] == {"image": 0, "audio": 0, "video": 0}
    assert result["resumed"] is False
    keys = s3_server.keys(bucket, "runs/basic/")
    assert "runs/basic/model/model.safetensors" in keys
    assert "runs/basic/model/tokenizer.json" in keys
    assert "runs/basic/result.json" in keys
    assert any(k.startswith("runs/basic/checkpoint_step_0000012/") for k in keys)
    # every rank's own RNG stream is in the checkpoint (a resume must not give both rank 0's)
    assert {"runs/basic/checkpoint_step_0000012/rng-rank-0.pt",
            "runs/basic/checkpoint_step_0000012/rng-rank-1.pt"} <= set(keys)
    stored = json.loads(fs.read_bytes(f"s3://{bucket}/runs/basic/result.json"))
    assert stored["steps"] == 12 and stored["model_uri"] == f"s3://{bucket}/runs/basic/model"

    # the exported model evaluates: loss, perplexity and caption accuracy per modality group
    from jobs.evaluate import main as evaluate_main

    report_path = tmp_path / "eval.json"
    assert evaluate_main(["--model", stored["model_uri"], "--data", uris["val"], "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["groups"]) == {"image", "audio", "video", "text"}
    assert report["samples"] == 20
    for group in ("image", "audio", "video"):
        score = report["groups"][group]
        assert score["caption_samples"] == score["samples"] > 0
        assert 0.0 <= score["caption_accuracy"] <= 1.0 and score["perplexity"] > 1.0
    assert report["groups"]["text"]["caption_accuracy"] is None

    # the project's metrics reached Ray's Prometheus endpoint
    port = ray_cluster.metrics_export_port
    wanted = ("ray_slm_train_loss{", "ray_slm_samples_total{")
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline and not all(name in text for name in wanted):
        time.sleep(2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'ray_slm_train_loss{' in text
    assert 'ray_slm_samples_total{' in text and 'modality="image"' in text


def test_resubmission_resumes_with_unfinished_shards(ray_cluster, demo_shards):
    from multimodal.launch import run

    bucket, uris = demo_shards
    first = run(job_config(bucket, uris, "resume", max_steps=4))
    assert first["steps"] == 4 and first["resumed"] is False
    position = json.loads(latest_checkpoint_metrics(f"s3://{bucket}/runs/resume")["data_position"])
    assert position["epoch"] == 0 and sum(position["rows_per_shard"].values()) == 4 * 2 * 4

    second = run(job_config(bucket, uris, "resume", max_steps=8))
    assert second["resumed_run"] is True and second["resumed_run_from_step"] == 4
    assert second["resumed_from_steps"] == [4]
    assert second["steps"] == 8
    shards = second["resume_shards"]
    assert shards["epoch"] == 0
    assert shards["fully_read_at_checkpoint"], "the first run should finish at least one shard"
    assert shards["read_after_resume"]
    assert not set(shards["read_after_resume"]) & set(shards["fully_read_at_checkpoint"])


def test_killed_worker_is_replaced_and_run_continues(ray_cluster, demo_shards):
    from ray.util.state import list_actors

    from multimodal.launch import run

    bucket, uris = demo_shards
    run_uri = f"s3://{bucket}/runs/killed"
    killed: dict[str, int] = {}

    def kill_a_worker_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            committed = committed_steps(run_uri)  # what Ray has committed (our index may be ahead)
            if committed and committed[-1] >= 4:
                workers = list_actors(address=f"http://{ray_cluster.dashboard_url}",
                                      filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                if workers:
                    killed["step"] = committed[-1]
                    killed["pid"] = int(workers[0]["pid"])
                    os.kill(killed["pid"], signal.SIGKILL)
                    return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, daemon=True)
    killer.start()
    result = run(job_config(bucket, uris, "killed", max_steps=16, log_every_steps=1))
    killer.join(timeout=5)

    assert killed, "no worker was killed"
    assert result["steps"] == 16
    assert len(result["resumed_from_steps"]) == 1
    resumed = result["resumed_from_steps"][0]
    # it restarted from the checkpoint that was the latest when the worker died (or the one
    # right after it, if that upload completed before the kill landed)
    assert resumed in (killed["step"], killed["step"] + 4)
    assert resumed % 4 == 0


def test_unreachable_data_fails_fast(ray_cluster, s3_server):
    from multimodal.launch import PreflightError, run

    bucket = s3_server.new_bucket("empty")
    job = build_config({"model": {"preset": "tiny"}, "data": {"train": f"s3://{bucket}/nothing"},
                        "run": {"storage_path": f"s3://{bucket}/runs", "cpus_per_worker": 0.5}})
    started = time.monotonic()
    with pytest.raises(PreflightError, match="slm-make-shards"):
        run(job)
    assert time.monotonic() - started < 30


def test_more_workers_than_the_cluster_holds_fails_fast(ray_cluster, demo_shards):
    from multimodal.launch import PreflightError, run

    bucket, uris = demo_shards
    for overrides, message in (({"num_workers": 16}, r"cannot hold them \(4 CPU up, fixed size\)"),
                               ({"use_gpu": True}, "a Train worker needs 0.5 CPU, 1 GPU, more than any node")):
        job = job_config(bucket, uris, "too-big")
        job.run = job.run.model_copy(update=overrides)
        started = time.monotonic()
        with pytest.raises(PreflightError, match=message):
            run(job)
        assert time.monotonic() - started < 30


def test_dry_run_sizes_the_job_and_trains_nothing(ray_cluster, demo_shards):
    """No --cpus-per-worker: the preflight sizes workers and decoders to the 4-CPU test cluster,
    prints the plan and returns without training."""
    from multimodal.launch import run

    bucket, uris = demo_shards
    job = job_config(bucket, uris, "dry-run")
    job.run = job.run.model_copy(update={"cpus_per_worker": None})
    job.data = job.data.model_copy(update={"decode_cpus": None})
    result = run(job, dry_run=True)
    assert result["dry_run"] is True
    assert result["cpus_per_worker"] == 1.0 and result["decode_cpus"] == 1.0  # 2 + 1 fit in 4 CPUs
    cluster = result["cluster"]
    assert cluster["autoscaling"] is False and cluster["source"] == "fixed size"
    assert cluster["bundles"] == [{"CPU": 1.0}] * 3
    from multimodal import fs

    assert not fs.exists(f"{result['run_uri']}/config.json")  # nothing was started or written

"""Faults during a run: the S3 server pauses for 20 s mid-run; the driver is SIGKILLed and the run
is submitted again under the same name. Tiny preset, one worker, a few steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from multimodal import fs
from multimodal.job_config import build_config
from tests.media import demo_shards_on_s3

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 20


@pytest.fixture(scope="module")
def shards(tmp_path_factory, s3_server):
    return demo_shards_on_s3(s3_server, tmp_path_factory.mktemp("corpus"), "faults",
                             {"image": 12, "audio": 12, "video": 8, "text": 4}, seed=9, shard_bytes=60_000)


def latest_step(run_uri: str) -> int:
    index = fs.join(run_uri, "_checkpoint_index.json")
    return json.loads(fs.read_bytes(index))["latest"]["step"] if fs.exists(index) else 0


def wait_for_step(run_uri: str, step: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reached = latest_step(run_uri)
        if reached >= step:
            return reached
        time.sleep(0.5)
    raise AssertionError(f"{run_uri} did not reach step {step} in {timeout:.0f}s")


def test_s3_outage_mid_run_is_retried_and_the_run_finishes(ray_cluster, s3_server, shards):
    from multimodal.launch import run

    bucket, uris = shards
    run_uri = f"s3://{bucket}/runs/outage"
    outage: dict[str, int] = {}

    def pause_s3_after_first_checkpoint() -> None:
        outage["at_step"] = wait_for_step(run_uri, 4)
        os.kill(s3_server.pid, signal.SIGSTOP)  # the server stops answering (connections hang)
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            os.kill(s3_server.pid, signal.SIGCONT)
        outage["resumed"] = 1

    watcher = threading.Thread(target=pause_s3_after_first_checkpoint, daemon=True)
    watcher.start()
    job = build_config({
        "model": {"preset": "tiny"},
        "data": {"train": uris["train"], "val": uris["val"], "vocab_size": 300, "decode_cpus": 0.5},
        "train": {"batch_size": 4, "warmup_steps": 1, "val_every_steps": 4, "log_every_steps": 4,
                  "num_epochs": 50, "max_steps": 16},
        "run": {"name": "outage", "storage_path": f"s3://{bucket}/runs", "num_workers": 1,
                "cpus_per_worker": 0.5, "max_failures": 3},
    })
    result = run(job)
    watcher.join(timeout=OUTAGE_SECONDS + 60)
    assert outage.get("resumed") == 1 and outage["at_step"] < 16  # the outage happened mid-run
    assert result["steps"] == 16
    assert latest_step(run_uri) == 16
    assert fs.exists(f"{run_uri}/model/model.safetensors")


def test_killed_driver_resubmitted_under_the_same_name_resumes(ray_cluster, shards, tmp_path):
    bucket, uris = shards
    run_uri = f"s3://{bucket}/runs/driver"
    command = [sys.executable, "jobs/train_multimodal.py", "--data", uris["train"], "--val-data", uris["val"],
               "--storage-path", f"s3://{bucket}/runs", "--name", "driver", "--preset", "tiny",
               "--num-workers", "1", "--cpus-per-worker", "0.5", "--max-steps", "12", "--val-every", "4",
               "--batch-size", "4", "--set", "data.vocab_size=300", "--set", "data.decode_cpus=0.5"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"]}
    with open(tmp_path / "first.log", "wb") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            killed_after = wait_for_step(run_uri, 4, timeout=240)
        finally:
            driver.send_signal(signal.SIGKILL)  # no cleanup, no final checkpoint
            driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL and killed_after < 12
    assert not fs.exists(f"{run_uri}/result.json")

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    result = json.loads(next(line for line in again.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["resumed_run"] is True and result["resumed_run_from_step"] >= killed_after
    assert result["steps"] == 12

"""Honest results across resumes and broken data, end to end on the session's Ray cluster and S3
server (tiny preset, one worker, a few steps per run)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load

from multimodal import fs
from multimodal.data.make_shards import make_shards
from multimodal.job_config import build_config
from tests.media import demo_shards_on_s3

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, s3_server):
    return demo_shards_on_s3(s3_server, tmp_path_factory.mktemp("corpus"), "safety",
                             {"image": 12, "audio": 12, "video": 8, "text": 4}, seed=5, shard_bytes=60_000)


def job(bucket: str, uris: dict[str, str], name: str, **train):
    return build_config({
        "model": {"preset": "tiny"},
        "data": {"train": uris["train"], "val": uris.get("val"), "vocab_size": 300, "decode_cpus": 0.5},
        "train": {"batch_size": 4, "warmup_steps": 1, "val_every_steps": 4, "log_every_steps": 4,
                  "num_epochs": 50, **train},
        "run": {"name": name, "storage_path": f"s3://{bucket}/runs", "num_workers": 1,
                "cpus_per_worker": 0.5, "max_failures": 0},
    })


def weights(uri: str) -> dict[str, torch.Tensor]:
    return load(fs.read_bytes(uri))


def test_export_after_a_resume_is_the_best_checkpoint(ray_cluster, small_shards):
    """Step 4 is the best; a huge learning rate makes validation worse at 8 and, after a resume
    from 8, at 12. The exported model must be step 4's weights, not the resumed step 8's."""
    from multimodal.launch import run

    bucket, uris = small_shards
    runs = f"s3://{bucket}/runs/best"
    first = run(job(bucket, uris, "best", max_steps=4, learning_rate=3e-3))
    assert first["best_step"] == 4
    second = run(job(bucket, uris, "best", max_steps=8, learning_rate=30.0))
    third = run(job(bucket, uris, "best", max_steps=12, learning_rate=30.0))
    assert third["resumed_from_steps"] == [4, 8] and third["steps"] == 12
    assert second["best_step"] == third["best_step"] == 4  # validation rose after step 4
    exported = weights(f"{runs}/model/model.safetensors")
    best = weights(f"{runs}/checkpoint_step_0000004/model.safetensors")
    resumed = weights(f"{runs}/checkpoint_step_0000008/model.safetensors")
    assert exported.keys() == best.keys()
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert not all(torch.equal(exported[k], resumed[k]) for k in resumed)
    # the resume plan comes from the run's own index, which names the latest checkpoint
    index = json.loads(fs.read_bytes(f"{runs}/_checkpoint_index.json"))
    assert index["latest"]["step"] == 12 and index["latest"]["dir"] == "checkpoint_step_0000012"
    state = json.loads(fs.read_bytes(f"{runs}/checkpoint_step_0000012/trainer_state.json"))
    assert json.loads(index["latest"]["metrics"]["data_position"]) == state["position"]
    assert fs.exists(f"{runs}/checkpoint_step_0000012/rng-rank-0.pt")


def test_a_broken_modality_ends_the_run_even_with_unlimited_restarts(ray_cluster, s3_server, media_dir,
                                                                     capsys):
    """Every image is undecodable (as with a missing codec), audio is fine, so no shard has a run
    of consecutive failures. With --max-failures -1 Ray Train would restart forever; the run must
    stop after one retry with one line naming the modality and the first error."""
    from jobs.train_multimodal import main as train_main
    from multimodal.run_stop import BROKEN_RECORD

    bucket = s3_server.new_bucket("broken")
    manifest = media_dir / "broken-images.csv"
    lines = [f"image {i},random.png,\naudio {i},,ceg.wav\n" for i in range(40)]
    manifest.write_text("text,image,audio\n" + "".join(lines))
    data = f"s3://{bucket}/shards"
    make_shards(str(manifest), data, progress=None)
    code = train_main(["--data", data, "--storage-path", f"s3://{bucket}/runs", "--name", "broken",
                       "--preset", "tiny", "--num-workers", "1", "--cpus-per-worker", "0.5",
                       "--max-failures", "-1", "--max-steps", "50", "--batch-size", "4",
                       "--set", "data.vocab_size=300", "--set", "data.decode_cpus=0.5"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: dataset broken: image decoding failed on ")
    assert "First error: MediaDecodeError: undecodable image" in err[-1]
    assert fs.exists(f"s3://{bucket}/runs/broken/{BROKEN_RECORD}")
    assert not fs.exists(f"s3://{bucket}/runs/broken/model/model.safetensors")

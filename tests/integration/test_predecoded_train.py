"""Pre-decoded shards end to end: pack from S3 to S3 with --decode (stopped and resumed), train the
tiny preset on them (bad samples counted, data wait reported), resume mid-epoch, and a model whose
media spec differs fails at preflight with one line naming both."""

from __future__ import annotations

import hashlib

import pytest

from multimodal import fs
from multimodal.data.demo_corpus import make_demo_corpus
from multimodal.data.pack_decoded import PROGRESS_NAME, PackInterrupted, pack_decoded
from multimodal.data.schema import read_summary
from multimodal.job_config import build_config
from tests.media import add_corrupt_rows

pytestmark = pytest.mark.integration


def _upload(s3_server, bucket: str, folder) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            s3_server.client.upload_file(str(path), bucket, f"corpus/{path.relative_to(folder)}")


@pytest.fixture(scope="module")
def decoded_shards(tmp_path_factory, s3_server):
    """The demo corpus on S3, packed from S3 to S3 as tiny-preset pre-decoded shards; the training
    split is stopped after one shard and resumed, as a crashed pack would be."""
    bucket = s3_server.new_bucket("pre")
    folder = tmp_path_factory.mktemp("corpus")
    manifests = make_demo_corpus(folder, {"image": 8, "audio": 8, "video": 8, "text": 4},
                                 splits={"train": 0.75, "val": 0.25}, seed=5)
    # two undecodable samples, and a text-only one so the split has an even number of rows
    add_corrupt_rows(manifests["train"], folder / "media", ["words", "a circle has no corners", "", "", ""])
    _upload(s3_server, bucket, folder)
    uris = {split: f"s3://{bucket}/pre/{split}" for split in manifests}
    with pytest.raises(PackInterrupted):
        pack_decoded(f"s3://{bucket}/corpus/train.csv", uris["train"], "tiny", workers=2, vocab_size=300,
                     target_shard_bytes=40_000, progress=None, stop_after_shards=1)
    assert f"pre/train/{PROGRESS_NAME}" in s3_server.keys(bucket, "pre/train/")
    pack_decoded(f"s3://{bucket}/corpus/train.csv", uris["train"], "tiny", workers=2, vocab_size=300,
                 target_shard_bytes=40_000, progress=None)
    tokenizer = f"s3://{bucket}/pre/train/tokenizer.json"
    pack_decoded(f"s3://{bucket}/corpus/val.csv", uris["val"], "tiny", workers=1, tokenizer=tokenizer,
                 progress=None)
    return bucket, uris


def job_config(bucket: str, uris: dict[str, str], name: str, preset: str = "tiny", validate: bool = True,
               **train):
    return build_config({
        "model": {"preset": preset},
        "data": {"train": uris["train"], "val": uris["val"] if validate else None, "decode_cpus": 0.5},
        "train": {"batch_size": 2, "learning_rate": 3e-3, "warmup_steps": 2, "val_every_steps": 3,
                  "log_every_steps": 2, "num_epochs": 1, **train},
        "run": {"name": name, "storage_path": f"s3://{bucket}/runs", "num_workers": 2,
                "cpus_per_worker": 0.5, "max_failures": 1},
    })


def test_pack_from_s3_to_s3_resumed(decoded_shards, s3_server):
    bucket, uris = decoded_shards
    summary = read_summary(uris["train"])
    assert summary.decoded["preset"] == "tiny" and len(summary.shards) > 2
    assert summary.decoded["bad"] == {"image": 1, "audio": 0, "video": 1}
    assert sum(s["rows"] for s in summary.shards) == summary.rows
    ids = []
    import pyarrow.parquet as pq

    for shard in summary.shards:
        filesystem, path = fs.filesystem_for(fs.join(uris["train"], shard["path"]))
        with filesystem.open_input_file(path) as handle:
            ids += pq.read_table(handle, columns=["sample_id"]).column("sample_id").to_pylist()
    assert ids == list(range(summary.rows))  # nothing lost or packed twice by the resume
    keys = s3_server.keys(bucket, "pre/train/")
    assert f"pre/train/{PROGRESS_NAME}" not in keys and "pre/train/_dataset.json" in keys


def test_training_on_predecoded_shards_counts_bad_samples(ray_cluster, decoded_shards):
    from multimodal.launch import run

    bucket, uris = decoded_shards
    summary = read_summary(uris["train"])
    result = run(job_config(bucket, uris, "pre-epoch"))
    per_worker = summary.rows // 2
    assert result["steps"] == -(-per_worker // 2)  # one epoch of ceil(rows per worker / 2) steps
    assert result["stop_reason"] == "num_epochs"
    assert summary.rows % 2 == 0  # so streaming_split(equal=True) gives each worker every row of its half
    assert result["bad_samples_by_modality"] == summary.decoded["bad"] == {"image": 1, "audio": 0, "video": 1}
    assert result["samples_by_modality"]["image"] == summary.modalities["image"]["count"]
    assert 0.0 <= result["data_wait_fraction"] < 1.0
    assert len(result["epoch_start_wait_seconds"]) == 1 and result["epoch_start_wait_seconds"][0] >= 0.0
    assert result["best_val_loss"] is not None
    run_tokenizer = fs.read_bytes(f"s3://{bucket}/runs/pre-epoch/tokenizer.json")
    assert hashlib.sha256(run_tokenizer).hexdigest() == summary.decoded["tokenizer_sha256"]


def test_resume_mid_epoch_reads_only_unfinished_shards(ray_cluster, decoded_shards):
    from multimodal.launch import run

    bucket, uris = decoded_shards
    first = run(job_config(bucket, uris, "pre-resume", validate=False, max_steps=3))
    assert first["steps"] == 3
    second = run(job_config(bucket, uris, "pre-resume", validate=False))
    assert second["resumed_run"] is True and second["resumed_run_from_step"] == 3
    shards = second["resume_shards"]
    assert shards["epoch"] == 0 and shards["read_after_resume"]
    assert not set(shards["read_after_resume"]) & set(shards["fully_read_at_checkpoint"])
    assert second["steps"] > 3 and second["stop_reason"] == "num_epochs"


def test_a_model_with_another_spec_fails_at_preflight(decoded_shards, s3_server):
    from multimodal.launch import PreflightError, run

    bucket, uris = decoded_shards
    with pytest.raises(PreflightError) as caught:
        run(job_config(bucket, uris, "pre-mismatch", preset="slm-63m"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"training data {uris['train']} was pre-decoded for preset tiny {{image_size=32")
    assert "the model slm-63m needs {image_size=64" in message
    assert s3_server.keys(bucket, "runs/pre-mismatch/") == []  # nothing was started or written

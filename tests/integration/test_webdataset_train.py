"""The training job on data that is not packed shards: a WebDataset tar prefix on S3 (written by
the ``webdataset`` package's ShardWriter; indexed at preflight, index cached under the run, a
resume mid-epoch reads only the unfinished tars) and a CSV manifest given as ``--data`` (packed
under the run once, reused by the next run of the same name)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from multimodal import fs
from multimodal.data import synthetic
from multimodal.data.demo_corpus import make_demo_corpus
from multimodal.job_config import build_config
from tests.wds_corpus import write_wds_from_manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, s3_server):
    """A small demo corpus with one corrupt image (24 samples), on S3 as a manifest with its media
    and as 4 tars of 6 samples: ``(bucket, manifest uri, tar prefix uri)``."""
    folder = tmp_path_factory.mktemp("wdscorpus")
    manifest = make_demo_corpus(folder, {"image": 7, "audio": 6, "video": 6, "text": 4},
                                splits={"train": 1.0}, seed=7)["train"]
    (folder / "media" / "broken.jpg").write_bytes(synthetic.corrupt_bytes("random", None, seed=3))
    with open(manifest, "a", newline="") as handle:
        csv.writer(handle).writerow(["bad-image", "a red circle", "media/broken.jpg", "", ""])
    write_wds_from_manifest(manifest, folder / "tars", maxcount=6)
    bucket = s3_server.new_bucket("wds")
    for path in folder.rglob("*"):
        if path.is_file():
            s3_server.client.upload_file(str(path), bucket, f"corpus/{path.relative_to(folder)}")
    return bucket, f"s3://{bucket}/corpus/train.csv", f"s3://{bucket}/corpus/tars"


def job_config(bucket: str, data: str, name: str, **train):
    return build_config({
        "model": {"preset": "tiny"},
        "data": {"train": data, "vocab_size": 300, "decode_cpus": 0.5},
        "train": {"batch_size": 2, "learning_rate": 3e-3, "warmup_steps": 1, "log_every_steps": 2,
                  "num_epochs": 1, **train},
        "run": {"name": name, "storage_path": f"s3://{bucket}/runs", "num_workers": 2,
                "cpus_per_worker": 0.5, "max_failures": 1},
    })


def test_trains_from_a_tar_prefix_and_resumes_mid_epoch(ray_cluster, s3_server, corpus):
    from multimodal.launch import run

    bucket, _, tars = corpus
    first = run(job_config(bucket, tars, "wds", max_steps=3))
    assert first["steps"] == 3 and first["data"]["rows"] == 24
    index = json.loads(fs.read_bytes(f"s3://{bucket}/runs/wds/data/train-wds-index.json"))
    assert index["index"]["prefix"] == tars and [s["rows"] for s in index["shards"]] == [6, 6, 6, 6]
    assert not any(k.endswith("_dataset.json") for k in s3_server.keys(bucket, "corpus/"))  # prefix untouched

    second = run(job_config(bucket, tars, "wds"))
    assert second["resumed_run"] is True and second["resumed_run_from_step"] == 3
    shards = second["resume_shards"]
    assert shards["epoch"] == 0 and shards["read_after_resume"]
    assert not set(shards["read_after_resume"]) & set(shards["fully_read_at_checkpoint"])
    # the rest of the epoch: the tars not fully read at step 3 (which ones depends on how the
    # streaming split interleaved them), split over 2 workers, 2 rows a step
    left_rows = 6 * (4 - len(shards["fully_read_at_checkpoint"]))
    assert second["stop_reason"] == "num_epochs" and second["steps"] == 3 + math.ceil(left_rows / 2 / 2)
    # the corrupt JPEG is counted (twice at most: a tar half read at the checkpoint is read again)
    bad = second["bad_samples_by_modality"]
    assert bad["image"] in (1, 2) and bad["audio"] == bad["video"] == 0
    assert second["samples_by_modality"]["video"] >= 6


def test_a_manifest_as_data_is_packed_once_under_the_run(ray_cluster, s3_server, corpus, capsys):
    from multimodal.launch import run

    bucket, manifest, _ = corpus
    first = run(job_config(bucket, manifest, "csv", max_steps=1))
    packed = f"s3://{bucket}/runs/csv/data/train"
    assert first["steps"] == 1 and first["data"]["train"] == packed and first["data"]["rows"] == 24
    shard_keys = sorted(k for k in s3_server.keys(bucket, "runs/csv/data/train/") if k.endswith(".parquet"))
    assert shard_keys and "packing manifest" in capsys.readouterr().out

    again = run(job_config(bucket, manifest, "csv", max_steps=2), dry_run=True)  # preflight only
    assert again["data"] == {"train": packed, "rows": 24}
    assert f"reusing {packed}" in capsys.readouterr().out
    assert sorted(k for k in s3_server.keys(bucket, "runs/csv/data/train/") if k.endswith(".parquet")) == shard_keys
    # a dry run of a new name counts the manifest and packs nothing
    assert run(job_config(bucket, manifest, "csv-dry"), dry_run=True)["data"]["rows"] == 24
    assert s3_server.keys(bucket, "runs/csv-dry/data") == []


def test_make_shards_from_an_s3_tar_prefix_matches_the_manifest(s3_server, corpus):
    from multimodal.data.make_shards import main as make_shards_main
    from multimodal.data.schema import read_summary

    bucket, manifest, tars = corpus
    assert make_shards_main([tars, "--out", f"s3://{bucket}/packed/tars", "--quiet"]) == 0
    assert make_shards_main([manifest, "--out", f"s3://{bucket}/packed/manifest", "--quiet"]) == 0
    from_tars, from_manifest = read_summary(f"s3://{bucket}/packed/tars"), read_summary(f"s3://{bucket}/packed/manifest")
    assert from_tars.rows == from_manifest.rows == 24
    assert from_tars.modalities == from_manifest.modalities

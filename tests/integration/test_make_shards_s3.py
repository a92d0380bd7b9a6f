"""slm-make-shards against the real (moto) S3 server: re-packing a prefix and an S3 manifest's
reach (no Ray needed)."""

from __future__ import annotations

import json

import pytest

from multimodal import fs
from multimodal.data import make_shards as ms
from multimodal.data.schema import read_summary

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_corpus(s3_server, media_dir):
    """A manifest and its media under s3://<bucket>/corpus/, plus a private object elsewhere."""
    bucket = s3_server.new_bucket("corpus")
    for name in ("red_circle.jpg", "ceg.wav"):
        fs.write_bytes_atomic(f"s3://{bucket}/corpus/{name}", (media_dir / name).read_bytes())
    other = s3_server.new_bucket("private")
    fs.write_bytes_atomic(f"s3://{other}/secret.png", (media_dir / "blue_square.png").read_bytes())
    rows = [{"text": "a red circle", "image": "red_circle.jpg"}, {"text": "notes", "audio": "ceg.wav"},
            {"text": "other bucket", "image": f"s3://{other}/secret.png"},
            {"text": "local file", "image": str(media_dir / "blue_square.png")},
            {"text": "climbing out", "image": "../../x.png"}]
    manifest = f"s3://{bucket}/corpus/m.jsonl"
    fs.write_bytes_atomic(manifest, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return bucket, manifest


def test_s3_manifest_reads_only_its_own_prefix(s3_corpus):
    bucket, manifest = s3_corpus
    summary = ms.make_shards(manifest, f"s3://{bucket}/ds", progress=None)
    assert summary.rows == 2 and summary.skipped_by_reason == {"refused": 3}


def test_s3_repack_is_refused_then_overwrite_replaces(s3_server, s3_corpus):
    bucket, manifest = s3_corpus
    out = f"s3://{bucket}/ds"
    old = ms.make_shards(manifest, out, progress=None)
    with pytest.raises(ms.ManifestError, match="not empty"):
        ms.make_shards(manifest, out, progress=None)
    new = ms.make_shards(manifest, out, overwrite=True, progress=None)
    assert not set(new.shard_names) & set(old.shard_names)
    assert read_summary(out).shard_names == new.shard_names
    objects = [k for k in s3_server.keys(bucket, "ds/") if not k.endswith("/")]  # pyarrow adds a "ds/" marker
    assert sorted(objects) == sorted(f"ds/{n}" for n in new.shard_names + ["_dataset.json"])

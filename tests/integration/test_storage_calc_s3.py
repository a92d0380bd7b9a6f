"""slm-estimate-storage --from s3://... against the real (moto) S3 server of tests/conftest.py."""

import json

import pytest

from storage_calc.cli import main
from storage_calc.measure import MeasureError, measure

pytestmark = pytest.mark.integration


def _put(s3_server, bucket, key, size):
    s3_server.client.put_object(Bucket=bucket, Key=key, Body=b"x" * size)


def test_from_s3_prefix_groups_by_extension(s3_server, s3_bucket, capsys):
    for key, size in [("corpus/a.txt", 400), ("corpus/b.jsonl", 800), ("corpus/img/1.jpg", 1000),
                      ("corpus/img/2/3.webp", 3000), ("corpus/audio/c.wav", 5000),
                      ("corpus/video/d.mp4", 7000), ("corpus/video/e.mov", 9000),
                      ("corpus/README", 11), ("elsewhere/x.jpg", 10**6)]:
        _put(s3_server, s3_bucket, key, size)
    assert main(["--from", f"s3://{s3_bucket}/corpus/", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "listing"
    assert data["uri"] == f"s3://{s3_bucket}/corpus/"
    assert data["modalities"]["text"] == {"count": 2, "avg_bytes": 600.0, "bytes": 1200}
    assert data["modalities"]["image"] == {"count": 2, "avg_bytes": 2000.0, "bytes": 4000}
    assert data["modalities"]["audio"]["bytes"] == 5000
    assert data["modalities"]["video"] == {"count": 2, "avg_bytes": 8000.0, "bytes": 16000}
    assert data["other"] == {"count": 1, "bytes": 11}
    assert data["total_bytes"] == 26_211
    assert data["measurement"]["objects"] == 8

    assert main(["--from", f"s3://{s3_bucket}/corpus", "--capacity", "20KB"]) == 0
    out = capsys.readouterr().out
    assert "Measured s3://" in out and "does NOT fit in 20 KB" in out


def test_from_s3_whole_bucket_and_single_object(s3_server, s3_bucket):
    _put(s3_server, s3_bucket, "a/b/c.flac", 10)
    _put(s3_server, s3_bucket, "top.png", 20)
    whole = measure(f"s3://{s3_bucket}")
    assert whole.objects == 2 and whole.total_bytes == 30
    single = measure(f"s3://{s3_bucket}/top.png")
    assert single.count("image") == 1 and single.total_bytes == 20


def test_from_s3_uses_shard_summary(s3_server, s3_bucket, capsys):
    summary = {"schema_version": 1,
               "shards": [{"path": "part-00000.parquet", "rows": 7, "bytes": 5000}],
               "rows": 7, "bytes": 5000,
               "modalities": {"text": {"count": 7, "bytes": 2800}, "image": {"count": 3, "bytes": 1500},
                              "audio": {"count": 0, "bytes": 0}, "video": {"count": 1, "bytes": 600}}}
    _put(s3_server, s3_bucket, "shards/part-00000.parquet", 5000)
    s3_server.client.put_object(Bucket=s3_bucket, Key="shards/_dataset.json",
                                Body=json.dumps(summary).encode())
    assert main(["--from", f"s3://{s3_bucket}/shards", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "shard-summary"
    assert data["modalities"]["text"]["count"] == 7
    assert data["total_bytes"] == 5000
    assert data["plan"]["shards"] == 1


@pytest.mark.parametrize("suffix, message", [
    ("", "does not exist"),  # missing bucket
    ("/prefix", "does not exist"),
])
def test_from_s3_missing_bucket(s3_server, capsys, suffix, message):
    code = main(["--from", f"s3://no-such-bucket-slm{suffix}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_from_s3_empty_or_missing_prefix(s3_server, s3_bucket, capsys):
    assert main(["--from", f"s3://{s3_bucket}/nothing/here"]) == 2
    err = capsys.readouterr().err
    assert "no objects under this prefix" in err and err.count("\n") == 1
    with pytest.raises(MeasureError):
        measure(f"s3://{s3_bucket}")  # an empty bucket holds nothing to measure

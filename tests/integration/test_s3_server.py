"""cluster/s3_server.py on a real moto server: start, buckets (idempotent), stop, ensure_s3."""

from __future__ import annotations

import pytest

from cluster import net, s3_server

pytestmark = pytest.mark.integration


def test_s3_server_start_bucket_and_stop(tmp_path, monkeypatch):
    proc = s3_server.start_moto(log_path=tmp_path / "moto.log")
    try:
        endpoint = s3_server.endpoint_url("0.0.0.0", proc.port)
        assert endpoint == f"http://127.0.0.1:{proc.port}"
        assert s3_server.create_bucket("bucket-one", endpoint) == "bucket-one"
        assert s3_server.create_bucket("bucket-one", endpoint) == "bucket-one"  # already ours: fine
        names = [b["Name"] for b in s3_server.s3_client(endpoint).list_buckets()["Buckets"]]
        assert names == ["bucket-one"]
    finally:
        s3_server.stop(proc)
    assert proc.poll() is not None and not net.listening(proc.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert s3_server.ensure_s3() is None  # an endpoint is configured: nothing started

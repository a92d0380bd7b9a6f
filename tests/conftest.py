"""Shared fixtures: a real S3 server (moto, server mode, HTTP on 127.0.0.1) and one local Ray
cluster per test session. Unit tests use neither; integration tests ask for them by name.

Environment set here (process-wide, so Ray workers started later inherit it):
``AWS_ENDPOINT_URL`` → the moto server, test credentials, ``AWS_REGION``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cluster import s3_server as s3_server_lib
from cluster.net import free_port

__all__ = ["free_port", "S3Server"]  # free_port is cluster.net's, re-exported for the tests


class S3Server:
    """A running moto S3 server and a boto3 client for it."""

    def __init__(self, endpoint: str, pid: int | None = None):
        self.endpoint = endpoint
        self.pid = pid  # fault tests pause it (SIGSTOP/SIGCONT) to simulate an outage
        self.client = s3_server_lib.s3_client(endpoint)

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a fresh bucket and return its name (each test gets its own)."""
        return s3_server_lib.create_bucket(f"{prefix}-{uuid.uuid4().hex[:12]}", client=self.client)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for obj in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """moto in server mode on a free loopback port; sets the standard AWS_* variables."""
    port = free_port()
    proc = s3_server_lib.start_moto(port, log_path=Path(os.environ.get("TMPDIR", "/tmp")) / f"moto-{port}.log")
    try:
        endpoint = s3_server_lib.endpoint_url("127.0.0.1", port)
        variables = s3_server_lib.client_env(endpoint)
        saved = {k: os.environ.get(k) for k in variables}
        os.environ.update(variables)
        yield S3Server(endpoint, proc.pid)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    finally:
        s3_server_lib.stop(proc)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.new_bucket()


RAY_TEST_CPUS = 4  # logical CPUs: overcommitted on 2 cores so Train workers and Data tasks both fit


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server, tmp_path_factory):
    """One local Ray cluster for the whole session, with fixed resources.

    It starts after the S3 server so every Ray worker inherits the AWS_* variables. Ray 2.60
    turns token auth on for a new local cluster; the driver in this process holds the token,
    so nothing else is needed here (the cluster CLI tests cover `ray job submit` with a token).
    """
    import ray

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    metrics_port = free_port()
    context = ray.init(
        num_cpus=RAY_TEST_CPUS,
        num_gpus=0,
        object_store_memory=600 * 1024**2,
        include_dashboard=True,  # the state API (list_actors) that the fault tests use lives there
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        _temp_dir=str(Path("/tmp") / f"rt{uuid.uuid4().hex[:6]}"),
    )
    context.metrics_export_port = metrics_port  # type: ignore[attr-defined]
    yield context
    ray.shutdown()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A folder of real encoded media in several formats per modality (see make_media_set)."""
    from tests.media import make_media_set

    root = tmp_path_factory.mktemp("media")
    make_media_set(root)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on busy shared cores: one torch thread is far faster than two fighting.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


"""The local S3-compatible server (moto in server mode) and its buckets.

One implementation used by ``slm-cluster up``, the benchmarks (``ensure_s3``) and the test
fixtures. The server is for tests and demos only: it accepts the fixed, fake credentials below
from anyone who can reach it, so it binds to loopback unless told otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster.net import dial_host, free_port, wait_port

TEST_ACCESS_KEY = "testing"  # fixed, fake credentials of the local moto server
TEST_SECRET_KEY = "testing"
TEST_REGION = "us-east-1"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def moto_command(host: str, port: int) -> list[str]:
    """The command line that serves S3 on host:port."""
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


def endpoint_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to host:port."""
    return f"http://{dial_host(host)}:{port}"


def start_moto(port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None,
               new_session: bool = False, timeout: float = 60.0) -> subprocess.Popen:
    """Start moto on host:port (a free port if None) and wait until it accepts connections.

    Output goes to ``log_path`` (discarded if None). ``new_session`` detaches it from this
    process's session (so a Ctrl-C in the terminal does not reach it). Raises RuntimeError
    (and kills it) if it does not come up.
    """
    port = port or free_port(host)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(moto_command(host, port), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=new_session)
    finally:
        if log_path:
            log.close()
    proc.port = port  # type: ignore[attr-defined]
    try:
        wait_port(port, host, timeout, process=proc)
    except TimeoutError as exc:
        proc.kill()
        raise RuntimeError(f"moto S3 server did not start ({exc}; pip install 'moto[server]')") from exc
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a server started by :func:`start_moto` (kill it if it lingers)."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def client_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point boto3/pyarrow at the test server."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY, "AWS_REGION": TEST_REGION}


def s3_client(endpoint: str | None = None, **config: Any):
    """A boto3 S3 client for ``endpoint`` (default: the configured one) with the test
    credentials when ``endpoint`` is given; ``config`` goes to botocore's Config."""
    import boto3
    from botocore.config import Config

    if endpoint is None:
        return boto3.client("s3", config=Config(**config) if config else None)
    return boto3.client("s3", endpoint_url=endpoint, region_name=TEST_REGION,
                        aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY,
                        config=Config(**config) if config else None)


def create_bucket(name: str, endpoint: str | None = None, client=None, timeout: float = 30.0) -> str:
    """Create bucket ``name`` (fine if it exists and is ours) and return the name. ``client``
    (default: one for ``endpoint`` with the test credentials) may point at any S3. Retries for
    up to ``timeout`` s unless the store refused the request (4xx): moto may need a moment after
    binding its port."""
    from botocore.exceptions import ClientError

    client = client or s3_client(endpoint)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=name)
            return name
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            return name
        except Exception as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500) \
                if isinstance(exc, ClientError) else 500
            if status < 500 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ensure_s3() -> subprocess.Popen | None:
    """Start a moto server on a free loopback port and point this process's AWS_* variables at
    it, unless an S3 endpoint is configured already (then None)."""
    if any(os.environ.get(name) for name in ENDPOINT_VARS):
        return None
    proc = start_moto()
    os.environ.update(client_env(endpoint_url("127.0.0.1", proc.port)))  # type: ignore[attr-defined]
    return proc

"""Local paths and ``s3://`` URIs behind one pyarrow filesystem API.

The S3 endpoint and credentials come only from the standard AWS environment
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``), so the same code talks to AWS S3,
MinIO or the local test server. Only the non-secret ones (``aws_public_env_vars()``: endpoint,
region) may travel in a Ray runtime env; credentials come from each node's own environment or
role. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

S3_RETRY_ATTEMPTS = 8


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem(*, retries: int = S3_RETRY_ATTEMPTS, connect_timeout: float = 10,
                  request_timeout: float = 60) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem for the environment's endpoint, retrying transient errors.

    The defaults suit data loading; an interactive tool that must fail fast on an unreachable
    endpoint passes fewer ``retries`` and a shorter ``connect_timeout`` (seconds).
    """
    kwargs: dict = {
        "region": s3_region(),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=retries),
        "connect_timeout": connect_timeout,
        "request_timeout": request_timeout,
    }
    endpoint = s3_endpoint()
    if endpoint:
        # pyarrow's constructor ignores AWS_ENDPOINT_URL (apache/arrow#49643): pass it explicitly.
        scheme, _, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host or scheme
        kwargs["scheme"] = scheme if host else "https"
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``uri`` and the path inside it (``bucket/key`` for S3, absolute locally)."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://"):].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}; use a local path or s3://bucket/prefix")
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI."""
    uri = str(uri)
    if is_s3(uri):
        return "s3://" + posixpath.join(uri[len("s3://"):].rstrip("/"), *parts)
    return str(Path(uri).joinpath(*parts))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old object or the whole new one, never a part.

    On S3 a single PUT is atomic already; locally we write a temporary file and rename it.
    """
    fs, path = filesystem_for(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def exists(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


PUBLIC_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def aws_public_env_vars() -> dict[str, str]:
    """The non-secret S3 settings (endpoints, region) of this process: all that may travel in a
    Ray runtime env. Credentials come from each node's environment or role."""
    return {k: v for k, v in os.environ.items() if k.startswith(PUBLIC_AWS_ENV)}

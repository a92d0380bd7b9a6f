"""How fast does ``storage_calc.measure`` list an S3 prefix? Extrapolates to a million objects.

    .venv/bin/python benchmarks/bench_listing.py                 # 20,000 objects on a local moto
    .venv/bin/python benchmarks/bench_listing.py --objects 50000 --layout flat
    AWS_ENDPOINT_URL=http://minio:9000 .venv/bin/python benchmarks/bench_listing.py --use-env

Without ``--use-env`` the script starts its own moto S3 server on 127.0.0.1 (moto is a Python
server: each page of 1,000 keys costs it far more than AWS S3, so the numbers are a pessimistic
bound for the client side). With ``--use-env`` it uses the endpoint and credentials of the AWS_*
environment and creates (then, unless ``--keep``, deletes) a bucket there.

Layouts: ``folders`` puts the objects in one sub-folder per modality (text/ image/ audio/ video/,
listed concurrently by ``measure``); ``flat`` puts them all directly under the prefix (one
sequential paginated listing).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import s3_server  # noqa: E402
from storage_calc.measure import measure  # noqa: E402

EXTENSIONS = [("text", "txt"), ("image", "jpg"), ("audio", "wav"), ("video", "mp4")]


def _log_lines(path: Path) -> list[str]:
    """The request lines of moto's log so far."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line for line in text.splitlines() if "HTTP/1.1" in line]


def _key(prefix: str, i: int, layout: str) -> str:
    modality, ext = EXTENSIONS[i % len(EXTENSIONS)]
    if layout == "folders":
        return f"{prefix}/{modality}/{i // 1000:04d}/{i:08d}.{ext}"
    return f"{prefix}/{i:08d}.{ext}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=20_000, help="objects to create (default 20000)")
    parser.add_argument("--layout", choices=["folders", "flat"], default="folders",
                        help="one sub-folder per modality, or all keys under one prefix")
    parser.add_argument("--threads", type=int, default=16, help="upload threads (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed measure() calls (default 3)")
    parser.add_argument("--use-env", action="store_true",
                        help="use the AWS_* environment's endpoint instead of starting moto")
    parser.add_argument("--keep", action="store_true", help="do not delete the bucket afterwards")
    args = parser.parse_args(argv)

    import boto3

    proc = None
    log_path = Path(tempfile.gettempdir()) / f"bench-listing-moto-{os.getpid()}.log"
    if not args.use_env:
        # moto logs one line per request: used to count requests
        proc = s3_server.start_moto(log_path=log_path)
        os.environ.update(s3_server.client_env(s3_server.endpoint_url("127.0.0.1", proc.port)))
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"bench-listing-{uuid.uuid4().hex[:10]}"
    try:
        client.create_bucket(Bucket=bucket)
        started = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=_key("data", i, args.layout),
                                                      Body=b"x" * (1 + i % 97)),
                          range(args.objects)))
        upload_s = time.monotonic() - started
        print(f"endpoint {endpoint}; created {args.objects:,} objects ({args.layout}) "
              f"in {upload_s:.1f} s")
        started = time.monotonic()
        listed = sum(len(page.get("Contents", [])) for page in
                     client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/"))
        baseline = time.monotonic() - started
        assert listed == args.objects
        print(f"baseline, boto3 ListObjectsV2 paginator (one stream, no delimiter): {baseline:.2f} s "
              f"-> {args.objects / baseline:,.0f} objects/s")
        times, requests = [], None
        for _ in range(args.repeats):
            before = _log_lines(log_path) if proc else None
            started = time.monotonic()
            result = measure(f"s3://{bucket}/data")
            times.append(time.monotonic() - started)
            assert result.objects == args.objects, (result.objects, args.objects)
            if proc:
                time.sleep(0.2)  # let moto flush its request log
                requests = _log_lines(log_path)[len(before):]
        if requests is not None:
            kinds: dict[str, int] = {}
            for line in requests:
                match = re.search(r'"([A-Z]+) (\S+) HTTP', re.sub(r"\x1b\[[0-9;]*m", "", line))
                kind = ("?" if not match else "LIST" if "list-type=2" in match.group(2)
                        else match.group(1))
                kinds[kind] = kinds.get(kind, 0) + 1
            print(f"HTTP requests per measure(): {len(requests)} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
        best = min(times)
        rate = args.objects / best
        print(f"measure(): {', '.join(f'{t:.2f}' for t in times)} s for {args.objects:,} objects "
              f"(best {best:.2f} s) -> {rate:,.0f} objects/s")
        print(f"extrapolated for 1,000,000 objects at this rate: {1_000_000 / rate:.1f} s "
              f"(about 1,000 ListObjectsV2 pages of 1,000 keys)")
    finally:
        if not args.keep:
            try:
                paginator = client.get_paginator("list_objects_v2")
                for page in paginator.paginate(Bucket=bucket):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
                client.delete_bucket(Bucket=bucket)
            except Exception as exc:  # noqa: BLE001 - best-effort cleanup
                print(f"cleanup failed: {exc}", file=sys.stderr)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
            log_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

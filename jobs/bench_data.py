"""Data pipeline benchmark: samples/s per modality, Ray Data pipeline vs a single-process loop.

Both sides read the same Parquet shards from S3 and run the same decode code
(``multimodal.data.pipeline.SampleProcessor``: Pillow / soundfile+torchaudio / PyAV + tokenizer);
the Ray side is ``build_dataset`` with ``--concurrency`` decode actors. Prints a table, the
ratio, the memory seen while streaming, and a final ``RESULT {json}`` line.

    python jobs/bench_data.py                       # starts a local moto S3 server + local Ray
    ray job submit --working-dir . -- python jobs/bench_data.py --samples 200
    AWS_ENDPOINT_URL=http://minio:9000 python jobs/bench_data.py --bucket my-bench-bucket

Without ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` in the environment it starts a moto S3 server
on 127.0.0.1 itself (test credentials). With them it uses that endpoint (the bucket must exist or
be creatable). "Steady" throughput counts from the first batch out of the pipeline (actor start-up
excluded); "end-to-end" includes it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multimodal import fs  # noqa: E402
from multimodal.config import MediaSpec, preset  # noqa: E402

MODALITY_CHOICES = ("image", "audio", "video")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Samples/s per modality from S3 shards through decode + preprocess: Ray Data "
                    "pipeline vs a plain single-process loop over the same shards and functions.")
    parser.add_argument("--samples", type=int, default=160,
                        help="samples per modality (default 160; video uses half)")
    parser.add_argument("--modalities", default="image,audio,video", help="comma list (default all)")
    parser.add_argument("--preset", default="slm-63m", help="MediaSpec of this model preset (default slm-63m)")
    parser.add_argument("--concurrency", type=int, default=2, help="Ray decode actors (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per decode batch (default 16)")
    parser.add_argument("--source-image-size", type=int, default=320, help="pixels of the source JPEGs")
    parser.add_argument("--source-video-size", type=int, default=128, help="pixels of the source videos")
    parser.add_argument("--source-video-frames", type=int, default=48, help="frames per source video")
    parser.add_argument("--object-store-mb", type=int, default=120,
                        help="object store size when this script starts Ray itself (default 120)")
    parser.add_argument("--bucket", default=None, help="S3 bucket to use (default: a new one)")
    parser.add_argument("--skip-single", action="store_true", help="only run the Ray pipeline")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------- S3 and data

def ensure_s3() -> subprocess.Popen | None:
    if fs.s3_endpoint():
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"})
    return proc


def create_bucket(name: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=fs.s3_endpoint(), region_name=fs.s3_region())
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def make_corpus(modality: str, samples: int, root: Path, args) -> Path:
    """Distinct encoded files (a few dozen) referenced ``samples`` times from a manifest."""
    import numpy as np

    from multimodal.data import synthetic

    rng = np.random.default_rng(0)
    files = []
    distinct = min(samples, 24)
    for i in range(distinct):
        colour = list(synthetic.COLOURS)[i % len(synthetic.COLOURS)]
        if modality == "image":
            path = synthetic.write_image(root / f"img{i}.jpg", colour, synthetic.SHAPES[i % 3],
                                         size=args.source_image_size, rng=rng)
            caption = synthetic.image_caption(colour, synthetic.SHAPES[i % 3])
        elif modality == "audio":
            notes = [list(synthetic.NOTES)[(i + k) % 7] for k in range(3)]
            path = synthetic.write_audio(root / f"aud{i}.flac", notes, sample_rate=44100, seconds=3.0,
                                         channels=2)
            caption = synthetic.audio_caption(notes)
        else:
            direction = synthetic.DIRECTIONS[i % 4]
            path = synthetic.write_video(root / f"vid{i}.mp4", colour, direction,
                                         frames=args.source_video_frames, size=args.source_video_size)
            caption = synthetic.video_caption(colour, direction)
        files.append((path.name, caption))
    manifest = root / f"{modality}.jsonl"
    with open(manifest, "w") as handle:
        for i in range(samples):
            name, caption = files[i % len(files)]
            handle.write(json.dumps({"text": caption, modality: name}) + "\n")
    return manifest


# ------------------------------------------------------------------------------------ measuring

class MemorySampler(threading.Thread):
    """Sums VmRSS of this process and every Ray worker process every 0.5 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self._halt = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    cmd = handle.read()
                if int(pid) != os.getpid() and b"ray::" not in cmd:
                    continue
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                            break
            except (OSError, ValueError):
                continue
        return total / 1024

    def run(self):
        while not self._halt.is_set():
            self.samples.append(self.rss_mb())
            self._halt.wait(0.5)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


def single_process(uri: str, spec: MediaSpec, tok_json: str, batch_size: int) -> tuple[int, float]:
    """The baseline: read each shard from S3 with pyarrow and decode rows in this process."""
    import numpy as np
    import pyarrow.parquet as pq

    from multimodal.data.pipeline import SampleProcessor, resolve_shards

    _, names, paths = resolve_shards(uri)
    proc = SampleProcessor(spec, tok_json, names, torch_threads=1)
    rows = 0
    start = time.perf_counter()
    for path in paths:
        filesystem, inner = fs.filesystem_for(path)
        with filesystem.open_input_file(inner) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_size):
                data = {k: np.asarray(batch.column(k).to_pylist(), dtype=object) for k in batch.schema.names}
                data["path"] = np.asarray([inner] * batch.num_rows, dtype=object)
                out = proc(data)
                rows += int(out["sample_valid"].sum())
    return rows, time.perf_counter() - start


def ray_pipeline(uri: str, spec: MediaSpec, tok_json: str, args) -> dict:
    from multimodal.data.pipeline import build_dataset

    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    dataset = build_dataset(uri, spec, tok_json, concurrency=args.concurrency, batch_size=args.batch_size)
    rows = first_at = 0
    first_rows = 0
    decoded_bytes = 0
    for batch in dataset.iter_batches(batch_size=args.batch_size, batch_format="numpy", prefetch_batches=2):
        if not first_at:
            first_at, first_rows = time.perf_counter(), len(batch["sample_valid"])
        rows += int(batch["sample_valid"].sum())
        decoded_bytes += sum(v.nbytes for v in batch.values())
    end = time.perf_counter()
    sampler.stop()
    mem = sampler.samples or [0.0]
    warm = mem[min(len(mem) - 1, max(2, len(mem) // 5)):]  # after start-up
    return {"rows": rows, "total_s": end - start, "steady_s": end - first_at,
            "steady_rows": rows - first_rows, "decoded_mb": decoded_bytes / 1e6,
            "rss_mb_start": round(warm[0], 1), "rss_mb_peak": round(max(warm), 1),
            "rss_mb_end": round(warm[-1], 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    bad = sorted(set(modalities) - set(MODALITY_CHOICES))
    if bad:
        print(f"error: unknown modality {bad}; choose from {MODALITY_CHOICES}", file=sys.stderr)
        return 2
    spec = preset(args.preset).media
    moto = ensure_s3()
    started_ray = False
    try:
        import ray

        from multimodal.data.make_shards import make_shards
        from multimodal.data.tokenizer import train_tokenizer

        bucket = args.bucket or f"bench-{int(time.time())}"
        create_bucket(bucket)
        if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        else:
            # logical CPUs overcommitted 2x, so decode actors and read tasks fit on a small host
            ray.init(num_cpus=2 * (os.cpu_count() or 1),
                     object_store_memory=args.object_store_mb * 1024**2, include_dashboard=False,
                     log_to_driver=False, runtime_env={"env_vars": fs.aws_env_vars()})
            started_ray = True
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        cpus = int(ray.cluster_resources().get("CPU", 0))
        store_mb = ray.cluster_resources().get("object_store_memory", 0) / 1e6
        print(f"cluster: {cpus} CPUs, object store {store_mb:.0f} MB, cores on this host {os.cpu_count()}; "
              f"spec {args.preset}: image {spec.image_size}px, audio {spec.audio_seconds}s@"
              f"{spec.audio_sample_rate}Hz, video {spec.video_frames}x{spec.video_size}px", file=sys.stderr)
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for modality in modalities:
                n = args.samples // 2 if modality == "video" else args.samples
                root = Path(tmp) / modality
                root.mkdir()
                manifest = make_corpus(modality, n, root, args)
                uri = f"s3://{bucket}/bench/{modality}"
                probe = make_shards(str(manifest), uri, progress=None)
                target = max(probe.bytes // 8, 50_000)  # about 8 shards so reads can overlap
                summary = make_shards(str(manifest), uri, target_shard_bytes=target, progress=None)
                tok = train_tokenizer((json.loads(line)["text"] for line in open(manifest)), 512).to_str()
                print(f"{modality}: {n} samples in {len(summary.shards)} shards, "
                      f"{summary.bytes / 1e6:.1f} MB on S3", file=sys.stderr)
                single = single_process(uri, spec, tok, args.batch_size) if not args.skip_single else (0, 0.0)
                piped = ray_pipeline(uri, spec, tok, args)
                single_rate = single[0] / single[1] if single[1] else 0.0
                steady_rate = piped["steady_rows"] / piped["steady_s"] if piped["steady_s"] else 0.0
                e2e_rate = piped["rows"] / piped["total_s"]
                results[modality] = {
                    "samples": n, "single_per_s": round(single_rate, 1), "ray_steady_per_s": round(steady_rate, 1),
                    "ray_end_to_end_per_s": round(e2e_rate, 1),
                    "ratio_steady": round(steady_rate / single_rate, 2) if single_rate else None,
                    "ratio_end_to_end": round(e2e_rate / single_rate, 2) if single_rate else None,
                    "decoded_mb_streamed": round(piped["decoded_mb"], 1), "object_store_mb": round(store_mb),
                    "rss_mb_start": piped["rss_mb_start"], "rss_mb_peak": piped["rss_mb_peak"],
                    "rss_mb_end": piped["rss_mb_end"],
                }
                print(f"  {modality}: single {single_rate:.1f}/s, ray steady {steady_rate:.1f}/s, "
                      f"end-to-end {e2e_rate:.1f}/s", file=sys.stderr)
        header = (f"{'modality':<8} {'samples':>7} {'single/s':>9} {'ray/s':>8} {'ratio':>6} "
                  f"{'ray e2e/s':>9} {'e2e ratio':>9} {'streamed MB':>11} {'RSS MB start/peak/end':>22}")
        print(header)
        for modality, r in results.items():
            print(f"{modality:<8} {r['samples']:>7} {r['single_per_s']:>9} {r['ray_steady_per_s']:>8} "
                  f"{str(r['ratio_steady']):>6} {r['ray_end_to_end_per_s']:>9} {str(r['ratio_end_to_end']):>9} "
                  f"{r['decoded_mb_streamed']:>11} "
                  f"{r['rss_mb_start']:>8}/{r['rss_mb_peak']}/{r['rss_mb_end']}")
        print("RESULT " + json.dumps({"cpus": cpus, "object_store_mb": round(store_mb),
                                      "concurrency": args.concurrency, "preset": args.preset,
                                      "modalities": results}))
        return 0
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())

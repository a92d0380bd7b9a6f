"""Does the trainer wait for data? ``data_wait_fraction`` of the same run on raw vs pre-decoded shards.

    python jobs/bench_data_wait.py [--per-modality 52] [--steps 200] [--repeats 1] [--json]

One generated corpus (``--corpus mixed``, default: ``data/mixed_corpus.py``, images, clips and
videos in several formats and sizes up to 1280x720 with a few corrupt files; ``--corpus demo``:
the demo corpus's media at ``--image-px``/``--video-px``) is packed on S3 twice: raw
(``slm-make-shards``) and pre-decoded for the ``tiny`` preset (``--decode tiny``, same tokenizer).
Each side then trains the ``tiny`` preset through ``multimodal.launch.run`` (the job's own code:
Ray Data -> Ray Train) with 2 workers x 0.5 CPU on a 4-logical-CPU local Ray cluster, as the README's
``slm-cluster up --num-cpus 4`` does, and the job's defaults for the decode actors. Reported per run:
``data_wait_fraction`` from the RESULT (time the loop waited for a batch / training time, mean over
workers), each epoch's first-batch wait, tokens/s, CPU seconds by process role over the run,
and the host load average. Runs alternate raw / pre-decoded.

Without ``AWS_ENDPOINT_URL`` a moto S3 server is started on loopback (as ``jobs/bench_data.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/bench_data_wait.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("raw", "predecoded")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_data_wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-modality", type=int, default=120, help="images, audio clips and videos each")
    parser.add_argument("--corpus", choices=("mixed", "demo"), default="mixed",
                        help="mixed: data/mixed_corpus.py (JPEG/PNG/WebP/CMYK/grey/RGBA up to 1280x720, "
                             "WAV/FLAC/MP3/OGG, MP4/WebM/AVI/MKV, corrupt files); demo: the demo corpus's media")
    parser.add_argument("--image-px", type=int, default=256, help="side of the source images (demo corpus)")
    parser.add_argument("--video-px", type=int, default=128, help="side of the source videos (demo corpus)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8, help="per worker")
    parser.add_argument("--repeats", type=int, default=1, help="runs per kind, alternating")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--cache-decoded", action="store_true",
                        help="set data.cache_decoded (decoded rows kept in the object store after epoch 1)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    return parser


def prepare(workdir: Path, bucket: str, args: argparse.Namespace, say) -> dict[str, str]:
    """Generate the corpus, pack it raw and pre-decoded (one tokenizer) on S3; returns the URIs."""
    from multimodal.data.demo_corpus import make_demo_corpus
    from multimodal.data.make_shards import make_shards
    from multimodal.data.mixed_corpus import make_mixed_corpus
    from multimodal.data.pack_decoded import pack_decoded
    from multimodal.data.tokenizer import train_tokenizer_from_dataset

    n = args.per_modality
    if args.corpus == "mixed":
        manifest = make_mixed_corpus(workdir / "corpus", n, seed=13)
    else:
        manifest = make_demo_corpus(workdir / "corpus", {"image": n, "audio": n, "video": n, "text": max(1, n // 5)},
                                    splits={"train": 1.0}, seed=13, image_size=args.image_px,
                                    video_size=args.video_px)["train"]
    uris = {"raw": f"s3://{bucket}/raw", "predecoded": f"s3://{bucket}/predecoded"}
    make_shards(str(manifest), uris["raw"], target_shard_bytes=4_000_000, progress=None)
    tokenizer = str(workdir / "tokenizer.json")
    train_tokenizer_from_dataset(uris["raw"], 300, tokenizer)
    pack_decoded(str(manifest), uris["predecoded"], "tiny", tokenizer=tokenizer, workers=2,
                 target_shard_bytes=4_000_000, progress=None)
    uris["tokenizer"] = tokenizer
    say(f"packed {3 * n + max(1, n // 5)} samples raw and pre-decoded on s3://{bucket}")
    return uris


def run_once(kind: str, repeat: int, uris: dict[str, str], bucket: str, args: argparse.Namespace,
             extra_pids: tuple[int, ...] = ()) -> dict:
    from multimodal.job_config import build_config
    from multimodal.launch import run

    job = build_config({
        "model": {"preset": "tiny"},
        "data": {"train": uris[kind], "tokenizer": uris["tokenizer"], "cache_decoded": args.cache_decoded},
        "train": {"batch_size": args.batch_size, "max_steps": args.steps, "log_every_steps": 10,
                  "val_every_steps": 10 * args.steps, "num_epochs": 1000, "warmup_steps": 2},
        "run": {"name": f"{kind}-{repeat}", "storage_path": f"s3://{bucket}/runs", "num_workers": 2,
                "cpus_per_worker": 0.5, "max_failures": 0},
    })
    import ray

    from cluster.procs import session_raylet_pid
    from multimodal.data.benchmark.sampler import MemorySampler

    session = ray._private.worker._global_node.get_session_dir_path()
    sampler = MemorySampler(session_raylet_pid(session), ray.get_runtime_context().gcs_address, every=2.0,
                            extra_pids=extra_pids)
    sampler.mark = time.perf_counter()  # the whole run is the window: where the CPU went
    sampler.start()
    try:
        result = run(job)
    finally:
        sampler.stop()
    return {"cpu_seconds": sampler.cpu_breakdown(),"kind": kind, "repeat": repeat, "data_wait_fraction": result["data_wait_fraction"],
            "tokens_per_second": round(result["tokens_per_second"], 1), "steps": result["steps"],
            "train_seconds": round(result["train_seconds"], 1),
            "data_wait_seconds": round(result["data_wait_fraction"] * result["train_seconds"], 2),
            "epoch_start_wait_seconds": result["epoch_start_wait_seconds"],
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.per_modality, args.steps, args.batch_size, args.repeats) < 1:
        print("error: --per-modality, --steps, --batch-size and --repeats must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    from jobs.bench_data import create_bucket, ensure_s3

    say = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    load_start = [round(x, 2) for x in os.getloadavg()]
    moto = ensure_s3()
    import ray

    runs: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-wait-") as tmp:
            bucket = f"wait-{os.getpid()}"
            create_bucket(bucket)
            uris = prepare(Path(tmp), bucket, args, say)
            ray_dir = tempfile.mkdtemp(prefix="rbw", dir="/tmp")  # short: AF_UNIX path limit
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=500 * 1024**2, _temp_dir=ray_dir)
            try:
                for repeat in range(args.repeats):
                    for kind in (KINDS if repeat % 2 == 0 else KINDS[::-1]):
                        say(f"run {repeat + 1}/{args.repeats}: {kind}")
                        runs.append(run_once(kind, repeat, uris, bucket, args,
                                             (moto.pid,) if moto is not None else ()))
                        say(f"  data wait {100 * runs[-1]['data_wait_fraction']:.1f}%, "
                            f"{runs[-1]['tokens_per_second']:.0f} tokens/s, epoch starts "
                            f"{runs[-1]['epoch_start_wait_seconds']}, CPU s {runs[-1]['cpu_seconds']}")
            finally:
                ray.shutdown()
                shutil.rmtree(ray_dir, ignore_errors=True)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)
    medians = {k: {"data_wait_fraction": statistics.median(r["data_wait_fraction"] for r in runs if r["kind"] == k),
                   "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs if r["kind"] == k)}
               for k in KINDS}
    summary = {"medians": medians, "runs": runs, "load_average_start": load_start,
               "load_average_end": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count()}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{'shards':<11} {'data wait':>10} {'tokens/s':>10}")
    for kind in KINDS:
        wait, rate = medians[kind]["data_wait_fraction"], medians[kind]["tokens_per_second"]
        print(f"{kind:<11} {100 * wait:>9.1f}% {rate:>10,.0f}")
    print(f"{os.cpu_count()} cores, load average {load_start} at start, {summary['load_average_end']} at end")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

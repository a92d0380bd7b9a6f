"""Ray Train's overhead: training tokens/s of the same loop under one Ray Train worker vs in this process.

    python jobs/bench_train.py [--preset tiny] [--steps 80] [--repeats 3] [--json]

Both sides run ``multimodal.training.train_loop_per_worker`` through ``multimodal.launch.run`` on
the same local shards, tokenizer and preset, with one CPU thread:

* ``ray_train``: ``TorchTrainer`` with one worker (a Train controller and a worker actor; batches
  cross from Ray Data's object store into the worker; reports and checkpoints go through Ray Train);
* ``plain``: Ray Train's local mode (``num_workers=0``): the loop runs in this process, with no
  controller, worker actor or collective; Ray Data still feeds it.

Decoded rows are cached (``data.cache_decoded``), so both sides read the same model-ready rows
and decoding is not what is measured. Steady state is the median tokens/s of the logging windows
after ``--warmup-windows``; runs are interleaved (ray_train, plain, plain, ray_train, ...) and the
table shows the median over ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/bench_train.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("ray_train", "plain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    parser.add_argument("--samples", type=int, default=240, help="training samples (image/audio/video/text mix)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per run")
    parser.add_argument("--log-every", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--warmup-windows", type=int, default=4, help="windows left out as warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    return parser


def prepare_data(workdir: Path, samples: int, vocab_size: int = 300) -> tuple[str, str]:
    """Pack a demo corpus into local shards and train one tokenizer for both sides."""
    from multimodal.data.demo_corpus import make_demo_corpus
    from multimodal.data.make_shards import make_shards
    from multimodal.data.tokenizer import train_tokenizer_from_dataset

    per_kind = max(1, samples * 3 // 10)
    corpus = make_demo_corpus(workdir / "corpus", {"image": per_kind, "audio": per_kind, "video": per_kind,
                                                   "text": max(1, samples - 3 * per_kind)},
                              splits={"train": 1.0}, seed=11)
    shards = str(workdir / "shards")
    make_shards(str(corpus["train"]), shards, target_shard_bytes=200_000, progress=None)
    tokenizer = str(workdir / "tokenizer.json")
    train_tokenizer_from_dataset(shards, vocab_size, tokenizer)
    return shards, tokenizer


def run_once(mode: str, repeat: int, shards: str, tokenizer: str, workdir: Path,
             args: argparse.Namespace) -> dict:
    """One training run; returns its steady-state tokens/s and what it was computed from."""
    from multimodal.job_config import build_config
    from multimodal.launch import run

    job = build_config({
        "model": {"preset": args.preset},
        "data": {"train": shards, "tokenizer": tokenizer, "cache_decoded": True, "decode_cpus": 1.0,
                 "decode_concurrency": 1},
        "train": {"batch_size": args.batch_size, "max_steps": args.steps, "log_every_steps": args.log_every,
                  "val_every_steps": 10 * args.steps, "num_epochs": 1000, "warmup_steps": 2},
        "run": {"name": f"{mode}-{repeat}", "storage_path": str(workdir / "runs"), "num_workers": 1,
                "cpus_per_worker": 1.0, "max_failures": 0},
    })
    result = run(job, local_mode=mode == "plain")
    windows = result["throughput_windows"]
    steady = windows[args.warmup_windows:] or windows
    return {"mode": mode, "repeat": repeat,
            "steady_tokens_per_s": statistics.median(w["tokens_per_s"] for w in steady),
            "steady_data_wait": statistics.median(w["data_wait"] for w in steady),
            # tokens/s while not waiting for a batch: the step itself
            "steady_compute_tokens_per_s": statistics.median(w["tokens_per_s"] / max(1e-6, 1 - w["data_wait"])
                                                             for w in steady),
            "windows": windows, "steps": result["steps"], "train_seconds": round(result["train_seconds"], 1)}


def summarize(runs: list[dict]) -> dict:
    """Median steady tokens/s per side and Ray Train's overhead relative to the plain process."""
    def median(key: str, mode: str) -> float:
        return statistics.median(r[key] for r in runs if r["mode"] == mode)

    medians = {m: median("steady_tokens_per_s", m) for m in MODES}
    overhead = 1 - medians["ray_train"] / medians["plain"]
    return {"tokens_per_s": {m: round(v, 1) for m, v in medians.items()},
            "data_wait": {m: round(median("steady_data_wait", m), 3) for m in MODES},
            "compute_tokens_per_s": {m: round(median("steady_compute_tokens_per_s", m), 1) for m in MODES},
            "ray_train_overhead_percent": round(100 * overhead, 1), "runs": runs,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps <= args.log_every * (args.warmup_windows + 1):
        print("error: --steps leaves no steady-state window; raise --steps or lower --warmup-windows",
              file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        workdir = Path(tmp)
        log = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
        log(f"packing {args.samples} samples and training a tokenizer in {workdir}")
        shards, tokenizer = prepare_data(workdir, args.samples)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=500 * 1024**2, _temp_dir=tempfile.mkdtemp(prefix="rbt", dir="/tmp"))
        runs = []
        try:
            for repeat in range(args.repeats):
                order = MODES if repeat % 2 == 0 else MODES[::-1]
                for mode in order:
                    log(f"run {repeat + 1}/{args.repeats}: {mode}")
                    runs.append(run_once(mode, repeat, shards, tokenizer, workdir, args))
                    log(f"  steady {runs[-1]['steady_tokens_per_s']:.0f} tokens/s")
        finally:
            ray.shutdown()
    summary = summarize(runs)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{'side':<10} {'tokens/s (median steady)':>26} {'data wait':>10} {'tokens/s not waiting':>21}")
    for mode in MODES:
        print(f"{mode:<10} {summary['tokens_per_s'][mode]:>26,.1f} {100 * summary['data_wait'][mode]:>9.1f}% "
              f"{summary['compute_tokens_per_s'][mode]:>21,.1f}")
    print(f"Ray Train overhead: {summary['ray_train_overhead_percent']:.1f}% "
          f"(load average {summary['load_average']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The end-to-end demo (``make demo``): a local cluster, a corpus, shards on S3, training, evaluation.

1. ``slm-cluster up``: a Ray head with the dashboard on 127.0.0.1:8265 and an S3 server on loopback;
2. a small corpus of real media whose captions can only be learnt from the media
   (coloured shapes, tone sequences, moving squares, plus text-only sentences);
3. ``slm-make-shards`` packs each split into Parquet shards on the local S3;
4. ``ray job submit --working-dir . -- python jobs/train_multimodal.py ...`` trains the ``tiny``
   preset with 2 Ray Train workers for a fixed number of steps (a time cap stops a far too slow
   machine), streaming the shards through Ray Data;
5. ``python jobs/evaluate.py`` scores the exported model on held-out samples and shows captions.

Every step prints the command it runs, so each can be pasted on its own. Ray's own log lines stay
in Ray's log files (multimodal/ray_logs.py); ``--verbose`` shows them. The cluster stays up
afterwards (for the dashboard); ``slm-cluster down`` stops it. Expected output: docs/demo.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent
# ~2,400 steps reach >= 90 % caption accuracy per modality (docs/benchmarks.md): about 8 minutes of
# training on a 2-core machine; the time cap only stops a machine far slower than that
DEFAULT_MAX_STEPS = 2400
DEFAULT_CAP_MINUTES = 20.0
DEMO_CONFIG = "jobs/configs/demo.yaml"
UPLOAD_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "demo_out", "*.egg-info"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "demo_out"), help="local folder for the corpus and reports")
    parser.add_argument("--per-modality", type=int, default=600,
                        help="video samples over all splits (default 600); images get 2x, audio 1.5x, text-only 1/5")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                        help=f"training budget in optimizer steps (default {DEFAULT_MAX_STEPS})")
    parser.add_argument("--train-minutes", type=float, default=DEFAULT_CAP_MINUTES,
                        help=f"safety cap on training time (default {DEFAULT_CAP_MINUTES:g})")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--name", default=None, help="run name (default demo-<time>); reuse one to resume it")
    parser.add_argument("--num-cpus", type=int, default=4,
                        help="logical CPUs of the local Ray head (default 4: overcommitted on small machines)")
    parser.add_argument("--dashboard-port", type=int, default=None, help="slm-cluster up --dashboard-port")
    parser.add_argument("--s3-port", type=int, default=None, help="slm-cluster up --s3-port")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's own log lines")
    return parser


def stage(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def echo(command: list[str]) -> None:
    print("$ " + shlex.join(command), flush=True)


def run(command: list[str], env: dict[str, str]) -> str:
    """Run a command as a user would, echoing it first; its stdout, less the machine-readable
    ``RESULT {json}`` line, is shown. Returns that RESULT's JSON ('' if none)."""
    echo(command)
    result = ""
    with subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = line[len("RESULT "):]
            else:
                print(line, end="", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo: '{Path(command[0]).name}' failed with exit code {proc.returncode}")
    return result


def cli(name: str) -> str:
    """How to call one of this environment's commands from the repository root."""
    path = BIN / name
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO) else str(path)


def train_entrypoint(args, shards: str, storage: str, name: str) -> list[str]:
    return ["python", "jobs/train_multimodal.py", "--config", DEMO_CONFIG,
            "--data", f"{shards}/train", "--val-data", f"{shards}/val", "--storage-path", storage,
            "--name", name, "--num-workers", str(args.num_workers),
            "--max-steps", str(args.max_steps), "--max-train-minutes", str(args.train_minutes)]


def submit_quietly(entrypoint: list[str], env: dict[str, str]) -> str:
    """``ray job submit`` through Ray's job SDK with the quiet log settings; the job's own lines
    are streamed. Returns the job's RESULT JSON."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from multimodal.ray_logs import quiet_job_env

    # the upload's packaging notices: Ray's loggers at WARNING, and the excludes given explicitly
    # (Ray warns once per default exclude it applies itself)
    for logger in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    os.environ["RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES"] = ""
    client = JobSubmissionClient(env["RAY_ADDRESS"])
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env={
        "working_dir": str(REPO), "excludes": UPLOAD_EXCLUDES, "env_vars": quiet_job_env()})
    result = []

    async def follow() -> None:
        pending = ""
        async for chunk in client.tail_job_logs(job_id):
            *lines, pending = (pending + chunk).split("\n")
            for line in lines:
                if line.startswith("RESULT "):
                    result.append(line[len("RESULT "):])
                else:
                    print(line, flush=True)
        if pending:
            print(pending, flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        raise SystemExit(f"demo: training job {job_id} {status.value}; "
                         f"see `{cli('ray')} job logs {job_id}` or the dashboard")
    return result[-1] if result else ""


def train(args, env: dict[str, str], shards: str, storage: str, name: str) -> dict:
    """Stage 4: submit the training job and summarise its RESULT."""
    entrypoint = train_entrypoint(args, shards, storage, name)
    batch = yaml.safe_load((REPO / DEMO_CONFIG).read_text())["train"]["batch_size"] * args.num_workers
    print(f"budget: {args.max_steps:,} steps of {batch} samples; "
          f"a {args.train_minutes:g}-minute cap stops a machine too slow for that", flush=True)
    command = [cli("ray"), "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", ".",
               "--", *entrypoint]
    if args.verbose:
        raw = run(command, env)
    else:
        echo(command)
        raw = submit_quietly(entrypoint, env)
    result = json.loads(raw) if raw else {}
    if result:
        print(f"trained {result['steps']:,} steps in {result['train_seconds']:.0f} s "
              f"(stopped by {result['stop_reason'].replace('_', ' ')}), {result['epochs_completed']} epochs, "
              f"best validation loss {result['best_val_loss']:.4f} at step {result['best_step']}", flush=True)
    return result


def closing_lines(state, storage: str, name: str, report: dict) -> None:
    accuracy = {g: s["caption_accuracy"] for g, s in report["groups"].items() if s["caption_accuracy"] is not None}
    print("\ncaption exact-match accuracy: " + ", ".join(f"{g} {100 * a:.1f}%" for g, a in accuracy.items()))
    print(f"\nRay dashboard:  {state.dashboard_url}  (jobs, actors, logs, metrics)")
    print(f"  it asks for a token: paste what `{cli('slm-cluster')} token` prints "
          "(the dialog's hint `ray get-auth-token` reads ~/.ray/auth_token, not this cluster's token)")
    print(f"run folder:     {storage}/{name}/  (checkpoints, model/, result.json)")
    print(f"Ray's own logs: {state.temp_dir}/session_latest/logs  (or run the demo with --verbose)")
    print(f"use the cluster from a shell:  eval \"$({cli('slm-cluster')} env)\"")
    print(f"stop everything:               {cli('slm-cluster')} down")


def make_corpus(out: Path, per_modality: int) -> Path:
    corpus = out / "corpus"
    if (corpus / "test.csv").exists():
        print(f"reusing {corpus}")
        return corpus
    from multimodal.data.demo_corpus import make_demo_corpus

    n, started = per_modality, time.time()
    # shapes need the most examples (18 classes, position and size jitter), video the fewest
    make_demo_corpus(corpus, {"image": 2 * n, "audio": 3 * n // 2, "video": n, "text": max(n // 5, 1)})
    print(f"wrote {corpus} in {time.time() - started:.0f}s")
    return corpus


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_steps < 1 or args.train_minutes <= 0:
        print("demo: --max-steps must be >= 1 and --train-minutes > 0", file=sys.stderr)
        return 2
    out, env = Path(args.out), dict(os.environ)
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"})

    stage("1/5 local cluster: Ray head + dashboard + S3 server on 127.0.0.1")
    ports = [f"--{flag}={value}" for flag, value in (("dashboard-port", args.dashboard_port),
                                                      ("s3-port", args.s3_port)) if value]
    run([cli("slm-cluster"), "up", "--num-cpus", str(args.num_cpus), *ports], env)
    from cluster.local import env_vars, load_state

    env.update(env_vars())
    os.environ.update(env)  # the job SDK in this process authenticates with the cluster's token
    state = load_state()
    bucket = env["SLM_BUCKET"]

    stage("2/5 demo corpus: shapes (JPEG/PNG), tones (WAV/FLAC), moving squares (MP4), text")
    corpus = make_corpus(out, args.per_modality)

    stage("3/5 pack shards onto the local S3")
    shards = f"s3://{bucket}/demo/shards"
    for split in ("train", "val", "test"):
        # --overwrite: a re-run replaces the last run's shards (new names, _dataset.json published last)
        run([cli("slm-make-shards"), str(corpus / f"{split}.csv"), "--out", f"{shards}/{split}", "--overwrite"], env)

    stage(f"4/5 train: ray job submit -> jobs/train_multimodal.py (Ray Train, {args.num_workers} workers, tiny preset)")
    name = args.name or time.strftime("demo-%Y%m%d-%H%M%S")
    storage = f"s3://{bucket}/runs"
    train(args, env, shards, storage, name)

    stage("5/5 evaluate on held-out samples")
    report_path = out / f"{name}-eval.json"
    run([cli("python"), "jobs/evaluate.py", "--model", f"{storage}/{name}/model", "--data", f"{shards}/test",
         "--json", str(report_path)], env)
    closing_lines(state, storage, name, json.loads(report_path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

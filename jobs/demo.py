"""The end-to-end demo (``make demo``): a local cluster, a corpus, shards on S3, training, evaluation.

1. ``slm-cluster up``: a Ray head with the dashboard on 127.0.0.1:8265 and an S3 server on loopback;
2. a small corpus of real media whose captions can only be learnt from the media
   (coloured shapes, tone sequences, moving squares, plus text-only sentences);
3. ``slm-make-shards`` packs each split into Parquet shards on the local S3;
4. ``ray job submit --working-dir . -- python jobs/train_multimodal.py ...`` trains the ``tiny``
   preset with 2 Ray Train workers, streaming the shards through Ray Data;
5. ``python jobs/evaluate.py`` scores the exported model on held-out samples and shows captions.

Every step prints the command it runs, so each can be pasted on its own. The cluster stays up
afterwards (for the dashboard); ``slm-cluster down`` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "demo_out"), help="local folder for the corpus and reports")
    parser.add_argument("--per-modality", type=int, default=600,
                        help="video samples over all splits (default 600); images get 2x, audio 1.5x, text-only 1/5")
    parser.add_argument("--train-minutes", type=float, default=8.0, help="training time budget (default 8)")
    parser.add_argument("--max-steps", type=int, default=None, help="also stop after this many steps")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--name", default=None, help="run name (default demo-<time>); reuse one to resume it")
    parser.add_argument("--num-cpus", type=int, default=4,
                        help="logical CPUs of the local Ray head (default 4: overcommitted on small machines)")
    return parser


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(command: list[str], env: dict[str, str], check: bool = True) -> int:
    """Run a command as a user would, echoing it first."""
    print("$ " + " ".join(shlex.quote(part) for part in command), flush=True)
    code = subprocess.call(command, env=env, cwd=REPO)
    if check and code != 0:
        raise SystemExit(f"demo: '{command[0]}' failed with exit code {code}")
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"

    step("1/5 local cluster: Ray head + dashboard + S3 server on 127.0.0.1")
    run([str(BIN / "slm-cluster"), "up", "--num-cpus", str(args.num_cpus)], env)
    from cluster.local import env_vars, load_state

    env.update(env_vars())
    state = load_state()
    bucket = env.get("SLM_BUCKET", "slm-demo")

    step("2/5 demo corpus: shapes (JPEG/PNG), tones (WAV/FLAC), moving squares (MP4), text")
    corpus = out / "corpus"
    if (corpus / "test.csv").exists():
        print(f"reusing {corpus}")
    else:
        from multimodal.data.demo_corpus import make_demo_corpus

        n = args.per_modality
        started = time.time()
        # shapes need the most examples (18 classes, position and size jitter), video the fewest
        make_demo_corpus(corpus, {"image": 2 * n, "audio": 3 * n // 2, "video": n, "text": max(n // 5, 1)})
        print(f"wrote {corpus} in {time.time() - started:.0f}s")

    step("3/5 pack shards onto the local S3")
    shards = f"s3://{bucket}/demo/shards"
    for split in ("train", "val", "test"):
        # --overwrite: a re-run replaces the last run's shards (new names, _dataset.json published last)
        run([str(BIN / "slm-make-shards"), str(corpus / f"{split}.csv"), "--out", f"{shards}/{split}",
             "--overwrite"], env)

    step("4/5 train: ray job submit -> jobs/train_multimodal.py (Ray Train, 2 workers, tiny preset)")
    name = args.name or time.strftime("demo-%Y%m%d-%H%M%S")
    storage = f"s3://{bucket}/runs"
    train = [str(BIN / "ray"), "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", ".",
             "--", "python", "jobs/train_multimodal.py", "--config", "jobs/configs/demo.yaml",
             "--data", f"{shards}/train", "--val-data", f"{shards}/val", "--storage-path", storage,
             "--name", name, "--num-workers", str(args.num_workers),
             "--max-train-minutes", str(args.train_minutes)]
    if args.max_steps:
        train += ["--max-steps", str(args.max_steps)]
    run(train, env)

    step("5/5 evaluate on held-out samples")
    report_path = out / f"{name}-eval.json"
    run([sys.executable, "jobs/evaluate.py", "--model", f"{storage}/{name}/model", "--data", f"{shards}/test",
         "--json", str(report_path)], env)
    report = json.loads(report_path.read_text())
    accuracy = {g: s["caption_accuracy"] for g, s in report["groups"].items() if s["caption_accuracy"] is not None}
    print("\ncaption exact-match accuracy: " + ", ".join(f"{g} {100 * a:.1f}%" for g, a in accuracy.items()))
    dashboard = state.dashboard_url if state else env["RAY_ADDRESS"]
    print(f"\nRay dashboard: {dashboard}  (jobs, actors, logs, metrics)")
    print("dashboard token (it asks for one): .venv/bin/slm-cluster token")
    print(f"run folder:    {storage}/{name}/  (checkpoints, model/, result.json)")
    print("to use the cluster from a shell:  eval \"$(.venv/bin/slm-cluster env)\"")
    print("to stop everything:               .venv/bin/slm-cluster down")
    return 0


if __name__ == "__main__":
    sys.exit(main())

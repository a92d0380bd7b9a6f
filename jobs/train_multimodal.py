"""Train the multimodal SLM with Ray Train.

    ray job submit --working-dir . -- python jobs/train_multimodal.py \\
        --data s3://bucket/shards/train --val-data s3://bucket/shards/val \\
        --preset slm-63m --num-workers 4 --use-gpu --storage-path s3://bucket/runs --name my-run

Also runs as plain ``python jobs/train_multimodal.py ...`` (starts or joins a local Ray).
Ends with one line ``RESULT {json}``; the same JSON is stored at ``storage_path/name/result.json``.
Exit codes: 0 done, 2 bad configuration or preflight failure, 1 training failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/train_multimodal.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multimodal.job_config import ConfigError, JobConfig, build_config, deep_merge, dotted_override, read_config_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_multimodal", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags override the config file; --set KEY=VALUE overrides any other setting "
               "(e.g. --set train.warmup_steps=50).")
    parser.add_argument("--config", help="JSON or YAML config (ours, or the seed's main/SLM/SLMOtak/SLMTrainLoad file)")
    parser.add_argument("--data", help="training data, local or s3://: shards (with _dataset.json), a WebDataset "
                                       ".tar prefix, or a CSV/JSONL manifest (packed under the run; docs/data.md)")
    parser.add_argument("--val-data", help="validation data, as --data (enables validation, early stopping, "
                                           "best-N checkpoints)")
    parser.add_argument("--tokenizer", help="tokenizer.json to use instead of training one on the data")
    parser.add_argument("--preset", help="model preset: tiny or slm-63m (default slm-63m)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (default 2)")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker (NCCL, bf16)")
    parser.add_argument("--cpus-per-worker", type=float,
                        help="CPUs reserved per worker (default: sized to the cluster, 1 where it fits)")
    parser.add_argument("--placement-strategy", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                        help="how Ray Train places workers on nodes (default PACK; STRICT_SPREAD: one per node)")
    parser.add_argument("--scale-timeout", type=float, metavar="SECONDS",
                        help="on an autoscaling cluster, how long to wait for the nodes the job needs "
                             "(default 600; a GPU node on AWS takes 3-6 minutes)")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s of one worker's device, for MFU "
                        "(default: known GPUs' bf16 peak; on CPU 0.175 per core, docs/training.md)")
    parser.add_argument("--no-ray", action="store_true",
                        help="run the same training loop in this process, without Ray: one worker, "
                             "local storage (docs/training.md)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the preflight (data, storage, cluster capacity) and print the plan; "
                             "start no nodes and no training")
    parser.add_argument("--storage-path", help="where runs live: s3://bucket/prefix or a local folder (default ./runs)")
    parser.add_argument("--name", help="run name; submitting the same name again resumes it")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--max-train-minutes", type=float, help="stop after this much training time")
    parser.add_argument("--epochs", type=int, help="number of epochs (seed: main.num_epochs)")
    parser.add_argument("--batch-size", type=int, help="per-worker batch size (seed: main.batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (seed: main.learning_rate)")
    parser.add_argument("--val-every", type=int, help="validate and checkpoint every N steps")
    parser.add_argument("--max-failures", type=int, help="worker-group restarts allowed (-1 = unlimited)")
    parser.add_argument("--init-from", help="fine-tune: start from an exported model folder or s3:// prefix "
                        "(its config and tokenizer)")
    parser.add_argument("--freeze", choices=["encoders", "core", "none"], help="fine-tune: part to keep fixed")
    parser.add_argument("--lora-rank", type=int, help="fine-tune: LoRA rank on the core's linear layers "
                        "(merged into plain weights at export)")
    parser.add_argument("--teacher", help="distill from this model (save_pretrained URI, same tokenizer)")
    parser.add_argument("--distill-alpha", type=float, help="soft-target weight (default 0.5; 1 = no labels)")
    parser.add_argument("--distill-temperature", type=float, help="distillation temperature (default 2)")
    parser.add_argument("--early-exit-loss", type=float, help="LayerSkip-style exit loss weight (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any setting")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, in the config's layout."""
    mapping = {
        "data": ("data", "train"), "val_data": ("data", "val"), "tokenizer": ("data", "tokenizer"),
        "preset": ("model", "preset"), "num_workers": ("run", "num_workers"), "use_gpu": ("run", "use_gpu"),
        "cpus_per_worker": ("run", "cpus_per_worker"), "storage_path": ("run", "storage_path"),
        "placement_strategy": ("run", "placement_strategy"), "scale_timeout": ("run", "scale_timeout_s"),
        "name": ("run", "name"), "max_failures": ("run", "max_failures"), "max_steps": ("train", "max_steps"),
        "max_train_minutes": ("train", "max_train_minutes"), "epochs": ("train", "num_epochs"),
        "batch_size": ("train", "batch_size"), "lr": ("train", "learning_rate"),
        "val_every": ("train", "val_every_steps"), "init_from": ("finetune", "init_from"),
        "freeze": ("finetune", "freeze"), "lora_rank": ("finetune", "lora_rank"),
        "val_every": ("train", "val_every_steps"), "teacher": ("train", "teacher"),
        "distill_alpha": ("train", "distill_alpha"), "distill_temperature": ("train", "distill_temperature"),
        "early_exit_loss": ("train", "early_exit_loss"), "peak_tflops": ("train", "peak_tflops"),
    }
    overrides: dict[str, Any] = {}
    for attribute, (section, key) in mapping.items():
        value = getattr(args, attribute)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    for assignment in args.set:
        overrides = deep_merge(overrides, dotted_override(assignment))
    return overrides


def load_job_config(argv: list[str] | None = None) -> tuple[JobConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    file_values = read_config_file(args.config) if args.config else {}
    return build_config(file_values, flag_overrides(args)), args


def main(argv: list[str] | None = None) -> int:
    from multimodal.launch import PreflightError, run
    from multimodal.run_stop import RunStopped

    try:
        job, args = load_job_config(argv)
        if args.print_config:
            print(json.dumps(job.model_dump(mode="json"), indent=1))
            return 0
        if args.no_ray:
            from multimodal.training.local import run_job_local

            result = run_job_local(job)
        else:
            result = run(job, dry_run=args.dry_run)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # e.g. a broken dataset: retrying cannot help
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

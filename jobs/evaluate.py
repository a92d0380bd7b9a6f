"""Evaluate an exported model on packed shards.

    python jobs/evaluate.py --model s3://bucket/runs/my-run/model --data s3://bucket/shards/test

Prints a table (loss, perplexity and caption exact-match accuracy per modality group), a few
generated captions beside their references, and a final ``RESULT {json}`` line. ``--json FILE``
also writes the JSON to a local path or an ``s3://`` URI. Runs as plain Python or under
``ray job submit``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported model folder (local or s3://), from save_pretrained")
    parser.add_argument("--data", required=True, help="shards to evaluate on (with _dataset.json)")
    parser.add_argument("--batch-size", type=_int_at_least(1), default=32,
                        help="samples per forward pass (default 32)")
    parser.add_argument("--max-samples", type=_int_at_least(1), help="evaluate only the first N samples (N >= 1)")
    parser.add_argument("--examples", type=_int_at_least(0), default=3,
                        help="generated captions to show per group (0 or more)")
    parser.add_argument("--json", dest="json_out", help="also write the report JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from multimodal import fs
    from multimodal.data import schema
    from multimodal.evaluation import evaluate, format_table
    from multimodal.model import MultimodalSLM

    try:
        if not fs.exists(fs.join(args.model, "config.json")):
            raise FileNotFoundError(f"no exported model at {args.model} (config.json missing)")
        if schema.read_summary(args.data) is None:
            raise FileNotFoundError(f"no shards at {args.data} (_dataset.json missing)")
        model = MultimodalSLM.from_pretrained(args.model)
    except (OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    report = evaluate(model, args.data, batch_size=args.batch_size, max_samples=args.max_samples,
                      examples_per_group=args.examples)
    report["model"], report["data"] = args.model, args.data
    print(format_table(report))
    for group, score in report["groups"].items():
        for example in score["examples"]:
            mark = "ok " if example["correct"] else "MISS"
            print(f"  [{group:<5}] {mark} generated {example['generated']!r:<32} "
                  f"reference {example['reference']!r} (confidence {example['confidence']})")
    if args.json_out:
        fs.write_bytes_atomic(args.json_out, json.dumps(report, indent=1).encode())
    print("RESULT " + json.dumps(report, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

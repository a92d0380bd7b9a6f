"""The seed's edge table for this project: what each compression technique costs and buys.

One row per technique (and the best combination), with the seed's columns: batch-1 caption
latency (p50/p90 ms), batch-32 throughput (samples/s), peak process RSS (MB, a fresh process
per row that loads the model and generates once), weights file (MB), parameters, and quality --
held-out caption exact match per modality and text loss. Quality comes from a ``tiny`` model with
a 4-layer core that this script trains itself on a small demo corpus (the teacher); latency,
memory and size are also reported for ``slm-63m`` (random weights: speed and size do not depend
on training; fixed 16-token generations).

    python -m jobs.bench_edge --out bench_edge_out --json bench_edge_out/result.json

Every group of rows that is compared takes its batch-1 latencies in one interleaved loop with
its reference (fp32, or the same model at full depth), so ``speedup`` is fair on a shared
machine. Torch threads are pinned (``--threads``, default 1), timings have warm-up runs and are
medians; ``lscpu`` flags and ``os.getloadavg()`` are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multimodal.compress.bench_runners import EarlyExitRunner, OrtRunner, TorchRunner  # noqa: E402
from multimodal.compress.bench_table import (Bench, Context, Row, compress_cli,  # noqa: E402
                                             export_ort, save, say)

SLM_NEW_TOKENS = 16
PRUNE_STRUCTURES = ("ffn", "heads,ffn", "layers", "layers,ffn")


class Trained:
    """The tiny teacher trained on the demo corpus, and what every row on it shares."""

    def __init__(self, bench: Bench):
        import torch

        from multimodal.compress.demo_data import prepare_data

        self.bench, self.args = bench, bench.args
        self.out = bench.out / "tiny"
        image, audio, video = self.args.per_modality
        self.data = prepare_data(bench.out, {"image": image, "audio": audio, "video": video,
                                             "text": max(8, video // 10)})
        self.vocab = self.data.tokenizer.get_vocab_size()
        val = self.data.val_batches
        say(f"data: {len(self.data.train_batches)} train batches, {len(val)} val batches")
        image_rows = torch.cat([b["image"][b["image_present"]] for b in val])
        samples = [{"image": image_rows[i:i + 1]}
                   for i in range(min(self.args.reps, len(image_rows)))]
        self.ctx = Context("tiny (trained)", samples, {"image": image_rows[:32]},
                           self.config().media.max_text_tokens - 1, val)
        self.calibration = self.data.train_batches[:4]
        self.teacher: Any = None
        self.reference: Row | None = None
        self.teacher_cache: dict = {}  # the frozen teacher's logits per training batch

    def config(self, **core: Any):
        from multimodal.compress.demo_data import tiny_config

        return tiny_config(self.vocab, **{"num_layers": self.args.teacher_layers, **core})

    def train(self, model, steps: int, **kwargs: Any) -> float:
        """``finetune`` on the training batches; returns the seconds it took."""
        from multimodal.compress.finetune import finetune

        started = time.monotonic()
        finetune(model, self.data.train_batches, steps, **kwargs)
        return round(time.monotonic() - started, 1)

    def recover(self, model) -> float:
        """The short distillation recovery from the unpruned teacher (alpha 0.5, T 2)."""
        return self.train(model, self.args.recovery_steps, lr=self.args.recovery_lr,
                          teacher=self.teacher, alpha=0.5, temperature=2.0, warmup=10,
                          teacher_cache=self.teacher_cache)

    def row(self, technique: str, model, name: str, **extra: Any) -> Row:
        """A PyTorch row for ``model``, saved under ``name``."""
        model_dir = save(model, self.out / name, self.data.tokenizer)
        return Row(technique, TorchRunner(model), model_dir, "torch", model, extra)


def teacher_rows(t: Trained, with_int8: bool = True) -> None:
    """Train the teacher; fp32, int8 (aten, torchao) and ONNX Runtime rows on it."""
    import torch

    from multimodal.compress.int8_runtime import load_int8_model, torchao_int8
    from multimodal.model import MultimodalSLM

    args = t.args
    if args.teacher:  # trained by an earlier run (same corpus and tokenizer under --out)
        t.teacher, seconds = MultimodalSLM.from_pretrained(args.teacher), None
        if t.teacher.tokenizer.get_vocab() != t.data.tokenizer.get_vocab():
            raise SystemExit(f"--teacher {args.teacher}: not trained on the corpus in --out")
        ref = t.reference = Row("fp32 (PyTorch)", TorchRunner(t.teacher), args.teacher, "torch",
                                t.teacher)
    else:
        torch.manual_seed(0)
        t.teacher = MultimodalSLM(t.config())
        say(f"training the tiny teacher: {args.train_steps} steps")
        seconds = t.train(t.teacher, args.train_steps, lr=3e-3, log_every=250)
        ref = t.reference = t.row("fp32 (PyTorch)", t.teacher, "fp32", train_s=seconds)
    if not with_int8:
        if not args.teacher:  # a reused teacher was measured by the run that trained it
            t.bench.group(t.ctx, [ref], ref)
        return
    int8_dir = compress_cli(ref.model_dir, t.out / "int8", "--quantize", "int8")
    export_ort(t.teacher, ref.model_dir)
    text_len = t.ctx.new_tokens + 1
    torchao = torchao_int8(MultimodalSLM.from_pretrained(ref.model_dir))
    rows = [ref, Row("int8 weight-only (aten kernel)", TorchRunner(load_int8_model(int8_dir)),
                     int8_dir, "int8", t.teacher),
            Row("int8 dynamic (torchao)", TorchRunner(torchao), ref.model_dir, "torchao", t.teacher)]
    for label, name, kind in (("fp32 (ONNX Runtime)", "model.onnx", "ort"),
                              ("int8 dynamic (ONNX Runtime)", "model.int8.onnx", "ort-int8")):
        runner = OrtRunner(str(Path(ref.model_dir, name)), text_len, args.threads)
        rows.append(Row(label, runner, ref.model_dir, kind, t.teacher))
    t.bench.group(t.ctx, rows, ref)


def pruning_rows(t: Trained) -> None:
    """30 % of the core removed per structure (Wanda scores, block influence for layers), each
    followed by the short distillation recovery."""
    from multimodal.compress.measure import quality
    from multimodal.compress.structured import parse_structures, prune_core

    rows = []
    for structure in t.args.prune_structures:
        pruned, steps = prune_core(t.teacher, 0.3, parse_structures(structure), "wanda",
                                   t.calibration)
        before = quality(TorchRunner(pruned), t.ctx.quality_batches, t.ctx.new_tokens)
        seconds = t.recover(pruned)
        rows.append(t.row(f"prune 30% {structure} + {t.args.recovery_steps}-step recovery",
                          pruned, "pruned-" + structure.replace(",", "-"), train_s=seconds,
                          mean_exact_no_recovery=before["mean_exact"], structures=steps))
    t.bench.group(t.ctx, rows, t.reference)


def sharing_rows(t: Trained) -> None:
    """Tied embeddings and ALBERT-style shared layers, each with the recovery."""
    import copy

    from multimodal.compress import share

    steps = t.args.recovery_steps
    tied = share.tie_embeddings(copy.deepcopy(t.teacher))
    tied_row = t.row(f"tie embeddings + {steps}-step recovery", tied, "tied",
                     train_s=t.recover(tied))
    shared = copy.deepcopy(t.teacher)
    share.share_layers(shared)
    shared_row = t.row(f"share layers (2->1) + {steps}-step recovery", shared, "shared",
                       train_s=t.recover(shared))
    t.bench.group(t.ctx, [tied_row, shared_row], t.reference)


def early_exit_rows(t: Trained) -> None:
    """An exit-loss fine-tune, then generation at fixed and at calibrated per-layer thresholds,
    timed against the same model at full depth."""
    import copy

    from multimodal.compress.early_exit import calibrate_thresholds

    args = t.args
    exits = copy.deepcopy(t.teacher)
    seconds = t.train(exits, args.exit_steps, lr=args.recovery_lr, exit_weight=1.0, warmup=10)
    full = t.row(f"exit-loss fine-tune ({args.exit_steps} steps), full depth", exits,
                 "early-exit", train_s=seconds)
    rows = [full]
    for threshold in args.exit_thresholds:
        rows.append(Row(f"early exit, confidence >= {threshold}",
                        EarlyExitRunner(exits, threshold, args.exit_min_layer), full.model_dir,
                        "torch", exits))
    for agreement in args.exit_agreements:
        thresholds = calibrate_thresholds(exits, t.data.train_batches[:8], agreement)
        rows.append(Row(f"early exit, per-layer thresholds for {agreement:.0%} agreement",
                        EarlyExitRunner(exits, thresholds, args.exit_min_layer), full.model_dir,
                        "torch", exits,
                        {"thresholds": thresholds}))
    t.bench.group(t.ctx, rows, full)


STUDENTS = (  # (label, alpha, initialised from the teacher's layers, taught by the teacher)
    ("teacher's layers 0,2 (DistilBERT init), soft targets only (alpha=1)", 1.0, True, True),
    ("teacher's layers 0,2 (DistilBERT init), alpha=0.5 with labels", 0.5, True, True),
    ("random init, soft targets only (alpha=1)", 1.0, False, True),
    ("random init, alpha=0.5 with labels", 0.5, False, True),
    ("random init, labels only (from scratch)", 0.0, False, False))


def distill_rows(t: Trained) -> dict[str, Any]:
    """Students with half the teacher's core layers, ``--student-steps`` each."""
    import torch

    from multimodal.compress.distill import student_from_teacher
    from multimodal.model import MultimodalSLM

    args = t.args
    layers = max(1, args.teacher_layers // 2)
    rows, students = [], {}
    for label, alpha, from_teacher, taught in (STUDENTS[i] for i in args.students):
        torch.manual_seed(1)
        student = (student_from_teacher(t.teacher, layers) if from_teacher
                   else MultimodalSLM(t.config(num_layers=layers)))
        seconds = t.train(student, args.student_steps, lr=1e-3 if from_teacher else 3e-3,
                          teacher=t.teacher if taught else None, alpha=alpha,
                          temperature=args.distill_temperature, teacher_cache=t.teacher_cache)
        rows.append(t.row(f"student {layers}-layer core, {label}, {args.student_steps} steps",
                          student, f"student-{len(rows)}", train_s=seconds))
        students[label] = student
    t.bench.group(t.ctx, rows, t.reference)
    return students


def best_row(t: Trained, student) -> None:
    """The distilled student, FFN-pruned 30 %, recovered, stored int8."""
    from multimodal.compress.int8_runtime import load_int8_model
    from multimodal.compress.structured import prune_core

    best, _ = prune_core(student, 0.3, ("ffn",), "wanda", t.calibration)
    seconds = t.recover(best)
    best_fp32 = save(best, t.out / "best-fp32", t.data.tokenizer)
    best_dir = compress_cli(best_fp32, t.out / "best-int8", "--quantize", "int8")
    row = Row("best: distilled student + prune 30% + recovery + int8",
              TorchRunner(load_int8_model(best_dir)), best_dir, "int8", best, {"train_s": seconds})
    t.bench.group(t.ctx, [row], t.reference)


SECTIONS = ("int8", "pruning", "sharing", "early-exit", "distillation", "best")


def trained_rows(bench: Bench) -> None:
    """The techniques of ``--sections`` on the trained tiny teacher, with quality."""
    t = Trained(bench)
    sections = bench.args.sections
    teacher_rows(t, with_int8="int8" in sections)
    for name, rows in (("pruning", pruning_rows), ("sharing", sharing_rows),
                       ("early-exit", early_exit_rows)):
        if name in sections:
            rows(t)
    if "distillation" in sections:
        students = distill_rows(t)
        if "best" in sections and STUDENTS[1][0] in students:
            best_row(t, students[STUDENTS[1][0]])


def slm63m_rows(bench: Bench) -> None:
    """Latency, throughput, memory and size of ``slm-63m`` (random weights) per technique, all
    batch-1 latencies in one interleaved loop with fp32."""
    import torch

    from multimodal.compress.int8_runtime import load_int8_model, torchao_int8
    from multimodal.config import preset
    from multimodal.model import MultimodalSLM

    args, out = bench.args, bench.out / "slm-63m"
    torch.manual_seed(0)
    model = MultimodalSLM(preset("slm-63m")).eval()
    fp32_dir = save(model, out / "fp32")
    size = model.cfg.media.image_size
    images = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    ctx = Context("slm-63m", [{"image": images[i:i + 1]} for i in range(args.reps_63m)],
                  {"image": images}, SLM_NEW_TOKENS, None)

    def compressed(label: str, name: str, *flags: str, kind: str = "torch") -> Row:
        model_dir = compress_cli(fp32_dir, out / name, *flags)
        loaded = MultimodalSLM.from_pretrained(model_dir)
        runner = TorchRunner(load_int8_model(model_dir) if kind == "int8" else loaded)
        return Row(label, runner, model_dir, kind, loaded)

    ref = Row("fp32 (PyTorch)", TorchRunner(model), fp32_dir, "torch", model)
    rows = [ref, compressed("int8 weight-only (aten kernel)", "int8", "--quantize", "int8",
                            kind="int8"),
            Row("int8 dynamic (torchao)", TorchRunner(torchao_int8(MultimodalSLM.from_pretrained(
                fp32_dir))), fp32_dir, "torchao", model)]
    if not args.skip_onnx_63m:
        export_ort(model, fp32_dir)
        for label, name, kind in (("fp32 (ONNX Runtime, no KV cache)", "model.onnx", "ort"),
                                  ("int8 dynamic (ONNX Runtime, no KV cache)", "model.int8.onnx",
                                   "ort-int8")):
            runner = OrtRunner(str(Path(fp32_dir, name)), model.cfg.media.max_text_tokens,
                               args.threads)
            rows.append(Row(label, runner, fp32_dir, kind, model))
    for structure in PRUNE_STRUCTURES:
        rows.append(compressed(f"prune 30% {structure}", "pruned-" + structure.replace(",", "-"),
                               "--prune-ratio", "0.3", "--prune-structure", structure))
    rows += [compressed("tie embeddings + share layers", "tied-shared", "--tie-embeddings",
                        "--share-layers"),
             compressed("prune 30% layers + tie + int8 weight-only", "best", "--prune-ratio", "0.3",
                        "--prune-structure", "layers", "--tie-embeddings", "--quantize", "int8",
                        kind="int8")]
    bench.group(ctx, rows, ref)


COLUMNS = ("technique", "latency_p50_ms", "latency_p90_ms", "speedup", "cpu_p50_ms",
           "cpu_speedup", "throughput_b32", "throughput_b32_cpu",
           "peak_rss_mb", "model_rss_mb", "file_mb", "params", "core_change", "total_change",
           "image_exact", "audio_exact", "video_exact", "mean_exact", "loss", "average_depth")


def markdown(rows: list[dict[str, Any]], model_name: str) -> str:
    """One markdown table of ``model_name``'s rows (columns that no row has are left out)."""
    chosen = [r for r in rows if r["model"] == model_name]
    columns = [c for c in COLUMNS if any(r.get(c) is not None for r in chosen)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in chosen:
        cells = [f"{r[c]:,}" if isinstance(r.get(c), int) and c == "params" else
                 ("-" if r.get(c) is None else str(r[c])) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_edge",
                                     description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out", default="bench_edge_out", help="work folder (corpus, models)")
    add("--threads", type=int, default=1, help="torch/ORT threads (default 1)")
    add("--teacher-layers", type=int, default=4, help="core layers of the trained tiny teacher")
    add("--train-steps", type=int, default=2000, help="teacher steps (tiny)")
    add("--teacher", default=None, metavar="DIR",
        help="use this teacher (an earlier run's OUT/tiny/fp32) instead of training one")
    add("--student-steps", type=int, default=1000, help="each student's steps")
    add("--students", type=int, nargs="+", default=list(range(len(STUDENTS))),
        help="which STUDENTS to train (indices; 'best' needs 1)")
    add("--distill-temperature", type=float, default=1.0)
    add("--recovery-steps", type=int, default=200,
        help="distillation recovery after pruning / sharing")
    add("--recovery-lr", type=float, default=1e-3)
    add("--prune-structures", nargs="+", default=list(PRUNE_STRUCTURES),
        help="--prune-structure values for the pruning rows of the trained model")
    add("--exit-steps", type=int, default=300, help="early-exit fine-tune steps")
    add("--exit-agreements", type=float, nargs="+", default=[0.99, 0.95],
        help="per-layer thresholds calibrated to these token agreements with the full model")
    add("--exit-min-layer", type=int, default=1,
        help="first layer whose exit is checked (the checks cost time too)")
    add("--exit-thresholds", type=float, nargs="+", default=[0.9],
        help="fixed confidence thresholds (one for every exit)")
    add("--per-modality", type=int, nargs=3, default=[300, 240, 160],
        metavar=("IMAGE", "AUDIO", "VIDEO"), help="demo corpus sizes")
    add("--reps", type=int, default=20, help="batch-1 latency samples (tiny)")
    add("--throughput-repeats", type=int, default=3, help="batch-32 runs per row (median)")
    add("--reps-63m", type=int, default=10, help="batch-1 latency samples (slm-63m)")
    add("--skip-63m", action="store_true")
    add("--skip-trained", action="store_true")
    add("--skip-onnx-63m", action="store_true")
    add("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
        help="which groups of trained-model rows to run (the teacher's fp32 row always)")
    add("--json", default=None, help="write every row as JSON here (rewritten after each group)")
    add("--probe", nargs=2, metavar=("KIND", "MODEL_DIR"), help=argparse.SUPPRESS)
    add("--probe-tokens", type=int, default=16, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from multimodal.compress.measure import cpu_flags, run_probe

    if args.probe:
        run_probe(args.probe[0], args.probe[1], args.threads, args.probe_tokens)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": cpu_flags(), "threads": args.threads, "torch": torch.__version__,
               "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    print(f"machine: {json.dumps(machine)}", flush=True)
    bench = Bench(args, out)
    if not args.skip_trained:
        trained_rows(bench)
    if not args.skip_63m:
        slm63m_rows(bench)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    for model_name in dict.fromkeys(r["model"] for r in bench.rows):
        print(f"\n### {model_name}\n\n{markdown(bench.rows, model_name)}")
    print(f"\nload average (1, 5, 15 min) at the end: {machine['loadavg_end']}")
    result = {"machine": machine, "args": vars(args), "rows": bench.rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

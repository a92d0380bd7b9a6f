"""The seed's edge table for this project: what each compression technique costs and buys.

One row per technique (and the best combination), with the seed's columns: batch-1 caption
latency (p50/p90 ms), batch-32 throughput (samples/s), peak process RSS (MB, a fresh process
per row that loads the model and generates once), weights file (MB), parameters, and quality --
held-out caption exact match per modality and text loss. Quality comes from a ``tiny`` model that
this script trains itself on a small demo corpus (the teacher); latency, memory and size are also
reported for ``slm-63m`` (random weights: speed and size do not depend on training; fixed
16-token generations).

    python -m jobs.bench_edge --out bench_edge_out --json bench_edge_out/result.json

Torch threads are pinned (``--threads``, default 1), every timing has warm-up runs and is a
median over repeats; ``lscpu`` flags and ``os.getloadavg()`` are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from cluster.procs import reset_peak_rss, status_mb  # noqa: E402

SLM_NEW_TOKENS = 16
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_flags() -> dict[str, Any]:
    """The CPU model and the SIMD flags that matter for int8 (from ``lscpu``)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {"model": "unknown", "flags": {}}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "").strip(), "cpus": fields.get("CPU(s)", "").strip(),
            "flags": {flag: flag in flags for flag in CPU_FLAGS}}


# --------------------------------------------------------------------------------------------
# Data: a small demo corpus, shards, a tokenizer, decoded batches
# --------------------------------------------------------------------------------------------


@dataclass
class Data:
    train_uri: str
    val_uri: str
    tokenizer: Any
    train_batches: list = field(default_factory=list)
    val_batches: list = field(default_factory=list)


def prepare_data(out: Path, per_modality: dict[str, int], batch_size: int = 16) -> Data:
    from multimodal.compress.calibration import calibration_batches
    from multimodal.data.demo_corpus import make_demo_corpus
    from multimodal.data.make_shards import make_shards
    from multimodal.data.tokenizer import train_tokenizer_from_dataset
    from multimodal.model import MultimodalSLM

    shards = out / "shards"
    if not (shards / "val" / "_dataset.json").exists():
        corpus = make_demo_corpus(out / "corpus", per_modality,
                                  splits={"train": 0.8, "val": 0.2}, seed=1)
        for split, manifest in corpus.items():
            make_shards(str(manifest), str(shards / split), progress=None)
    tokenizer = train_tokenizer_from_dataset(str(shards / "train"), 512)
    data = Data(str(shards / "train"), str(shards / "val"), tokenizer)
    probe = MultimodalSLM(tiny_config(tokenizer.get_vocab_size()))
    probe.tokenizer = tokenizer
    data.train_batches = calibration_batches(probe, data.train_uri, 10**6, batch_size)
    data.val_batches = calibration_batches(probe, data.val_uri, 10**6, 32)
    return data


def tiny_config(vocab_size: int, **core: Any):
    from multimodal.config import preset

    cfg = preset("tiny")
    cfg.core.vocab_size = vocab_size
    for key, value in core.items():
        setattr(cfg.core, key, value)
    return cfg


# --------------------------------------------------------------------------------------------
# Runners: one interface over PyTorch, early exit and ONNX Runtime
# --------------------------------------------------------------------------------------------


class TorchRunner:
    def __init__(self, model):
        self.model = model.eval()

    def logits(self, batch):
        import torch

        with torch.no_grad():
            return self.model(batch).logits

    def generate(self, media: dict, max_new_tokens: int) -> list[list[int]]:
        return [g.token_ids for g in self.model.generate(**media, max_new_tokens=max_new_tokens)]


class EarlyExitRunner(TorchRunner):
    def __init__(self, model, threshold: float):
        super().__init__(model)
        self.threshold = threshold
        self.depths: list[float] = []

    def generate(self, media: dict, max_new_tokens: int) -> list[list[int]]:
        from multimodal.compress.early_exit import generate_early_exit

        result = generate_early_exit(self.model, self.threshold, 1, max_new_tokens, **media)
        self.depths.append(result.average_depth)
        return [g.token_ids for g in result.generations]


class OrtRunner:
    def __init__(self, path: str, text_len: int, threads: int):
        from multimodal.compress.ort_runtime import ort_session

        self.session = ort_session(path, threads)
        self.text_len = text_len

    def logits(self, batch):
        import torch

        from multimodal.compress.ort_runtime import ort_logits

        return torch.from_numpy(ort_logits(self.session, batch))

    def generate(self, media: dict, max_new_tokens: int) -> list[list[int]]:
        from multimodal.compress.ort_runtime import ort_generate

        return ort_generate(self.session, self.text_len, media, max_new_tokens)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def quality(runner, batches, max_new_tokens: int) -> dict[str, Any]:
    """Caption exact match (token ids, from the media alone) per single-modality group and
    the token-weighted text loss over every validation sample."""
    import torch

    from multimodal.batch import EOS_ID, IGNORE_INDEX, MODALITIES, present_key
    from multimodal.model import text_loss

    exact = {m: [0, 0] for m in MODALITIES}
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        _, per_sample, counts = text_loss(runner.logits(batch), batch["labels"])
        loss_sum += float((per_sample * counts).sum())
        tokens += int(counts.sum())
        for modality in MODALITIES:
            others = [m for m in MODALITIES if m != modality]
            only = batch[present_key(modality)].clone()
            for other in others:
                only &= ~batch[present_key(other)]
            rows = torch.nonzero(only)[:, 0]
            if not len(rows):
                continue
            generated = runner.generate({modality: batch[modality][rows]}, max_new_tokens)
            for row, ids in zip(rows.tolist(), generated):
                labels = batch["labels"][row]
                reference = [t for t in labels[labels != IGNORE_INDEX].tolist() if t != EOS_ID]
                exact[modality][0] += int(ids == reference)
                exact[modality][1] += 1
    result = {f"{m}_exact": round(100 * hit / total, 1) if total else None
              for m, (hit, total) in exact.items()}
    result["loss"] = round(loss_sum / max(tokens, 1), 4)
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency(runner, samples: list[dict], max_new_tokens: int, warmup: int = 2) -> dict[str, float]:
    """Batch-1 caption generation: p50/p90 ms over ``samples`` (after ``warmup`` runs)."""
    for media in samples[:warmup]:
        runner.generate(media, max_new_tokens)
    times = []
    for media in samples:
        started = time.perf_counter()
        runner.generate(media, max_new_tokens)
        times.append(1000 * (time.perf_counter() - started))
    return {"latency_p50_ms": round(percentile(times, 0.5), 2),
            "latency_p90_ms": round(percentile(times, 0.9), 2)}


def interleaved_latency(runners: dict[str, Any], samples: list[dict], max_new_tokens: int,
                        warmup: int = 2) -> dict[str, dict[str, float]]:
    """``latency`` for several runners in one round-robin loop (each sample goes through every
    runner before the next sample), so a shared machine's load drifts hit every row alike."""
    for media in samples[:warmup]:
        for runner in runners.values():
            runner.generate(media, max_new_tokens)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for media in samples:
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.generate(media, max_new_tokens)
            times[name].append(1000 * (time.perf_counter() - started))
    return {name: {"latency_p50_ms": round(percentile(t, 0.5), 2),
                   "latency_p90_ms": round(percentile(t, 0.9), 2)} for name, t in times.items()}


def throughput(runner, media: dict, max_new_tokens: int, repeats: int = 3) -> float:
    """Samples/s of batch generation (median of ``repeats`` after one warm-up; no warm-up
    with a single repeat, for the slow rows)."""
    if repeats > 1:
        runner.generate(media, max_new_tokens)
    size = next(iter(media.values())).shape[0]
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner.generate(media, max_new_tokens)
        rates.append(size / (time.perf_counter() - started))
    return round(statistics.median(rates), 2)


def probe_rss(kind: str, model_dir: str, threads: int, max_new_tokens: int) -> dict[str, float]:
    """Peak RSS of a fresh process that loads ``model_dir`` with ``kind`` and generates once."""
    command = [sys.executable, "-m", "jobs.bench_edge", "--probe", kind, model_dir,
               "--threads", str(threads), "--probe-tokens", str(max_new_tokens)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise RuntimeError(f"rss probe {kind} {model_dir} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mb(field_name: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB (else the peak RSS)."""
    value = status_mb(field_name)
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_probe(kind: str, model_dir: str, threads: int, max_new_tokens: int) -> None:
    """The ``--probe`` child: imports, then the peak-RSS mark is reset, then load + one batch-1
    generation; prints peak RSS and the peak over the post-import RSS (JSON line)."""
    import numpy as np

    def imports_done() -> float:
        reset_peak_rss()  # so the import-time peak of the libraries does not hide the model's
        return _status_mb("VmRSS")

    if kind.startswith("ort"):
        from multimodal.compress.ort_runtime import ort_generate, ort_session

        config = json.loads(Path(model_dir, "config.json").read_text())
        imported = imports_done()
        name = "model.int8.onnx" if kind == "ort-int8" else "model.onnx"
        session = ort_session(str(Path(model_dir, name)), threads)
        size = config["media"]["image_size"]
        ort_generate(session, config["media"]["max_text_tokens"],
                     {"image": np.zeros((1, 3, size, size), np.float32)}, max_new_tokens)
    else:
        import torch

        from multimodal.compress.int8_runtime import load_int8_model, torchao_int8
        from multimodal.model import MultimodalSLM

        torch.set_num_threads(threads)
        torch.zeros(1) @ torch.zeros(1)  # first-op allocations belong to the runtime, not the model
        imported = imports_done()
        if kind == "int8":
            model = load_int8_model(model_dir)
        else:
            model = MultimodalSLM.from_pretrained(model_dir)
            if kind == "torchao":
                torchao_int8(model)
        size = model.cfg.media.image_size
        model.generate(image=torch.zeros(1, 3, size, size), max_new_tokens=max_new_tokens)
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "model_rss_mb": round(peak - imported, 1)}))


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    def measure(self, model_name: str, technique: str, runner, model_dir: str, kind: str,
                samples: list[dict], batch32: dict, max_new_tokens: int,
                quality_batches: list | None, extra: dict | None = None,
                throughput_repeats: int = 3, measured_latency: dict | None = None
                ) -> dict[str, Any]:
        from multimodal.compress.report import file_bytes

        say(f"[{model_name}] {technique}: measuring")
        row: dict[str, Any] = {"model": model_name, "technique": technique}
        row.update(measured_latency or latency(runner, samples, max_new_tokens))
        row["throughput_b32"] = throughput(runner, batch32, max_new_tokens, throughput_repeats)
        row.update(probe_rss(kind, model_dir, self.args.threads, max_new_tokens))
        weights = ("model.int8.onnx" if kind == "ort-int8" else
                   "model.onnx" if kind == "ort" else "model.safetensors")
        row["file_mb"] = round(file_bytes(str(Path(model_dir, weights))) / 1e6, 2)
        if quality_batches is not None:
            row.update(quality(runner, quality_batches, max_new_tokens))
        row.update(extra or {})
        row["loadavg_1m"] = round(os.getloadavg()[0], 2)
        say("  " + json.dumps(row))
        self.rows.append(row)
        return row


def params(model) -> int:
    return model.parameter_counts()["total"]


def save(model, path: Path, tokenizer) -> str:
    model.save_pretrained(str(path), tokenizer=tokenizer)
    return str(path)


def compress_cli(src: str, dst: Path, *flags: str) -> str:
    from multimodal.compress import cli

    if cli.main([src, str(dst), *flags]) != 0:
        raise RuntimeError(f"slm-compress {src} {dst} {flags} failed")
    return str(dst)


def export_ort(model, model_dir: str) -> None:
    """``model.onnx`` and ``model.int8.onnx`` (ONNX Runtime dynamic int8) next to the weights."""
    from multimodal.compress.int8_runtime import ort_int8
    from multimodal.compress.onnx_export import export_onnx

    graph = export_onnx(model)
    Path(model_dir, "model.onnx").write_bytes(graph)
    Path(model_dir, "model.int8.onnx").write_bytes(ort_int8(graph))


def trained_rows(bench: Bench, data: Data) -> None:
    """Every technique on the trained tiny teacher, with quality."""
    import copy

    import torch

    from multimodal.compress import prune, share
    from multimodal.compress.finetune import finetune
    from multimodal.compress.int8_runtime import load_int8_model, torchao_int8
    from multimodal.model import MultimodalSLM

    args, out = bench.args, bench.out / "tiny"
    vocab = data.tokenizer.get_vocab_size()
    text_len = tiny_config(vocab).media.max_text_tokens
    new_tokens = text_len - 1
    image_rows = torch.cat([b["image"][b["image_present"]] for b in data.val_batches])
    samples = [{"image": image_rows[i:i + 1]} for i in range(min(args.reps, len(image_rows)))]
    batch32 = {"image": image_rows[:32]}
    val = data.val_batches

    def row(technique, runner, model_dir, kind, extra=None):
        return bench.measure("tiny (trained)", technique, runner, model_dir, kind, samples,
                             batch32, new_tokens, val, extra)

    def recover(model, steps, teacher):
        started = time.monotonic()
        finetune(model, data.train_batches, steps, lr=args.recovery_lr, teacher=teacher,
                 alpha=0.5, temperature=2.0, warmup=10)
        return round(time.monotonic() - started, 1)

    # the teacher ---------------------------------------------------------------------------
    torch.manual_seed(0)
    teacher = MultimodalSLM(tiny_config(vocab))
    say(f"training the tiny teacher: {args.train_steps} steps")
    started = time.monotonic()
    finetune(teacher, data.train_batches, args.train_steps, lr=3e-3, log_every=100)
    teacher_seconds = round(time.monotonic() - started, 1)
    teacher_dir = save(teacher, out / "fp32", data.tokenizer)
    base = row("fp32 (PyTorch)", TorchRunner(teacher), teacher_dir, "torch",
               {"params": params(teacher), "train_s": teacher_seconds})

    # int8 ----------------------------------------------------------------------------------
    int8_dir = compress_cli(teacher_dir, out / "int8", "--quantize", "int8")
    int8_model = load_int8_model(int8_dir)
    row("int8 weight-only (aten kernel)", TorchRunner(int8_model), int8_dir, "int8",
        {"params": params(MultimodalSLM.from_pretrained(int8_dir))})
    ao = torchao_int8(MultimodalSLM.from_pretrained(teacher_dir))
    row("int8 dynamic (torchao)", TorchRunner(ao), teacher_dir, "torchao",
        {"params": base["params"]})
    export_ort(teacher, teacher_dir)
    row("fp32 (ONNX Runtime)", OrtRunner(str(Path(teacher_dir, "model.onnx")), text_len,
                                          args.threads), teacher_dir, "ort",
        {"params": base["params"]})
    row("int8 dynamic (ONNX Runtime)", OrtRunner(str(Path(teacher_dir, "model.int8.onnx")),
                                                 text_len, args.threads), teacher_dir, "ort-int8",
        {"params": base["params"]})

    # pruning ---------------------------------------------------------------------------------
    calibration = data.train_batches[:4]
    for method in ("magnitude", "wanda"):
        pruned = prune.prune_ffn(teacher, 0.3, method, calibration)
        pruned_dir = save(pruned, out / f"pruned-{method}", data.tokenizer)
        row(f"prune 30% FFN ({method}), no recovery", TorchRunner(pruned), pruned_dir, "torch",
            {"params": params(pruned)})
    seconds = recover(pruned, args.recovery_steps, teacher)
    pruned_dir = save(pruned, out / "pruned-wanda-recovered", data.tokenizer)
    row(f"prune 30% (wanda) + {args.recovery_steps}-step distill recovery", TorchRunner(pruned),
        pruned_dir, "torch", {"params": params(pruned), "train_s": seconds})

    # weight sharing ------------------------------------------------------------------------
    tied = share.tie_embeddings(copy.deepcopy(teacher))
    row("tie embeddings, no recovery", TorchRunner(tied),
        save(tied, out / "tied", data.tokenizer), "torch", {"params": params(tied)})
    seconds = recover(tied, args.recovery_steps, teacher)
    row(f"tie embeddings + {args.recovery_steps}-step recovery", TorchRunner(tied),
        save(tied, out / "tied-recovered", data.tokenizer), "torch",
        {"params": params(tied), "train_s": seconds})
    shared = copy.deepcopy(teacher)
    share.share_layers(shared)
    seconds = recover(shared, args.recovery_steps, teacher)
    row(f"share layers (2->1) + {args.recovery_steps}-step recovery", TorchRunner(shared),
        save(shared, out / "shared-recovered", data.tokenizer), "torch",
        {"params": params(shared), "train_s": seconds})

    # early exit ----------------------------------------------------------------------------
    exits = copy.deepcopy(teacher)
    started = time.monotonic()
    finetune(exits, data.train_batches, args.exit_steps, lr=args.recovery_lr, exit_weight=1.0,
             warmup=10)
    seconds = round(time.monotonic() - started, 1)
    exits_dir = save(exits, out / "early-exit", data.tokenizer)
    row(f"exit-loss fine-tune ({args.exit_steps} steps), full depth", TorchRunner(exits),
        exits_dir, "torch", {"params": params(exits), "train_s": seconds})
    early_exit_rows(bench, exits, exits_dir, data.val_batches, samples, batch32, new_tokens)

    # distillation ----------------------------------------------------------------------------
    student_core = {"num_layers": 1, "intermediate_size": 176}
    students = {}
    for label, alpha, use_teacher in (("soft targets only (alpha=1)", 1.0, True),
                                      ("alpha=0.5 with labels", 0.5, True),
                                      ("from scratch, labels only", 0.0, False)):
        torch.manual_seed(1)
        student = MultimodalSLM(tiny_config(vocab, **student_core))
        started = time.monotonic()
        finetune(student, data.train_batches, args.student_steps, lr=3e-3,
                 teacher=teacher if use_teacher else None, alpha=alpha, temperature=2.0)
        seconds = round(time.monotonic() - started, 1)
        student_dir = save(student, out / f"student-{alpha}-{use_teacher}", data.tokenizer)
        row(f"student 1-layer core, {label}, {args.student_steps} steps", TorchRunner(student),
            student_dir, "torch", {"params": params(student), "train_s": seconds})
        students[label] = student

    # best combination: distilled student, pruned 30 %, recovered, int8 --------------------
    best = prune.prune_ffn(students["alpha=0.5 with labels"], 0.3, "wanda", calibration)
    seconds = recover(best, args.recovery_steps, teacher)
    best_fp32 = save(best, out / "best-fp32", data.tokenizer)
    best_dir = compress_cli(best_fp32, out / "best-int8", "--quantize", "int8")
    row("best: distilled student + prune 30% + recovery + int8", TorchRunner(load_int8_model(best_dir)),
        best_dir, "int8", {"params": params(best), "train_s": seconds})


def early_exit_rows(bench: Bench, model, model_dir: str, val_batches: list, samples: list[dict],
                    batch32: dict, max_new_tokens: int) -> None:
    """Early exit at each ``--exit-thresholds`` value against the same model at full depth:
    batch-1 latencies in one interleaved loop, then quality and the average depth used."""
    runners: dict[str, Any] = {"full depth (same model)": TorchRunner(model)}
    for threshold in bench.args.exit_thresholds:
        runners[f"early exit, confidence >= {threshold}"] = EarlyExitRunner(model, threshold)
    latencies = interleaved_latency(runners, samples, max_new_tokens)
    for name, runner in runners.items():
        if isinstance(runner, EarlyExitRunner):
            runner.depths.clear()
        row = bench.measure("tiny (trained)", name, runner, model_dir, "torch", samples, batch32,
                            max_new_tokens, val_batches, {"params": params(model)},
                            measured_latency=latencies[name])
        depths = getattr(runner, "depths", None)
        row["average_depth"] = (round(statistics.mean(depths), 3) if depths
                                else model.cfg.core.num_layers)
        say(f"  average depth {row['average_depth']} of {model.cfg.core.num_layers} layers")


def early_exit_only(bench: Bench, model_dir: str) -> None:
    """``--early-exit-model DIR``: the early-exit rows for an exit-trained model saved by an
    earlier run (validation shards from ``--out``/shards/val)."""
    import torch

    from multimodal.compress.calibration import calibration_batches
    from multimodal.model import MultimodalSLM

    model = MultimodalSLM.from_pretrained(model_dir)
    val = calibration_batches(model, str(bench.out / "shards" / "val"), 10**6, 32)
    image_rows = torch.cat([b["image"][b["image_present"]] for b in val])
    samples = [{"image": image_rows[i:i + 1]} for i in range(min(bench.args.reps, len(image_rows)))]
    early_exit_rows(bench, model, model_dir, val, samples, {"image": image_rows[:32]},
                    model.cfg.media.max_text_tokens - 1)


def slm63m_rows(bench: Bench) -> None:
    """Latency, throughput, memory and size of ``slm-63m`` (random weights) per technique; the
    batch-1 latencies of all rows are taken in one interleaved loop."""
    import torch

    from multimodal.compress.int8_runtime import load_int8_model, torchao_int8
    from multimodal.config import preset
    from multimodal.model import MultimodalSLM

    args, out = bench.args, bench.out / "slm-63m"
    torch.manual_seed(0)
    cfg = preset("slm-63m")
    model = MultimodalSLM(cfg).eval()
    fp32_dir = str(out / "fp32")
    model.save_pretrained(fp32_dir)
    gen = torch.Generator().manual_seed(0)
    size = cfg.media.image_size
    images = torch.randn(32, 3, size, size, generator=gen)
    samples = [{"image": images[i:i + 1]} for i in range(args.reps_63m)]
    text_len = cfg.media.max_text_tokens
    int8_dir = compress_cli(fp32_dir, out / "int8", "--quantize", "int8")
    pruned_dir = compress_cli(fp32_dir, out / "pruned", "--prune-ratio", "0.3")
    shared_dir = compress_cli(fp32_dir, out / "tied-shared", "--tie-embeddings", "--share-layers")
    best_dir = compress_cli(fp32_dir, out / "best", "--prune-ratio", "0.3", "--tie-embeddings",
                            "--quantize", "int8")
    pruned = MultimodalSLM.from_pretrained(pruned_dir)
    shared = MultimodalSLM.from_pretrained(shared_dir)
    best_fp32 = MultimodalSLM.from_pretrained(best_dir)
    # (technique, runner, folder, probe kind, model for the parameter count)
    rows = [("fp32 (PyTorch)", TorchRunner(model), fp32_dir, "torch", model),
            ("int8 weight-only (aten kernel)", TorchRunner(load_int8_model(int8_dir)), int8_dir,
             "int8", model),
            ("int8 dynamic (torchao)",
             TorchRunner(torchao_int8(MultimodalSLM.from_pretrained(fp32_dir))), fp32_dir,
             "torchao", model)]
    if not args.skip_onnx_63m:
        export_ort(model, fp32_dir)
        rows += [("fp32 (ONNX Runtime, no KV cache)",
                  OrtRunner(str(Path(fp32_dir, "model.onnx")), text_len, args.threads), fp32_dir,
                  "ort", model),
                 ("int8 dynamic (ONNX Runtime, no KV cache)",
                  OrtRunner(str(Path(fp32_dir, "model.int8.onnx")), text_len, args.threads),
                  fp32_dir, "ort-int8", model)]
    rows += [("prune 30% FFN", TorchRunner(pruned), pruned_dir, "torch", pruned),
             ("tie embeddings + share layers", TorchRunner(shared), shared_dir, "torch", shared),
             ("prune 30% + tie + int8 weight-only", TorchRunner(load_int8_model(best_dir)),
              best_dir, "int8", best_fp32)]
    say(f"[slm-63m] interleaved batch-1 latency over {len(rows)} rows")
    latencies = interleaved_latency({name: runner for name, runner, *_ in rows}, samples,
                                    SLM_NEW_TOKENS)
    for name, runner, model_dir, kind, counted in rows:
        bench.measure("slm-63m", name, runner, model_dir, kind, samples, {"image": images},
                      SLM_NEW_TOKENS, None, {"params": params(counted)},
                      throughput_repeats=1 if kind.startswith("ort") else 3,
                      measured_latency=latencies[name])


COLUMNS = ("technique", "latency_p50_ms", "latency_p90_ms", "throughput_b32", "peak_rss_mb",
           "model_rss_mb", "file_mb", "params", "image_exact", "audio_exact", "video_exact", "loss",
           "average_depth")


def markdown(rows: list[dict[str, Any]], model_name: str) -> str:
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
    parser.add_argument("--out", default="bench_edge_out", help="work folder (corpus, models)")
    parser.add_argument("--threads", type=int, default=1, help="torch/ORT threads (default 1)")
    parser.add_argument("--train-steps", type=int, default=1500, help="teacher steps (tiny)")
    parser.add_argument("--student-steps", type=int, default=1000, help="each student's steps")
    parser.add_argument("--recovery-steps", type=int, default=200,
                        help="distillation recovery after pruning / sharing")
    parser.add_argument("--recovery-lr", type=float, default=1e-3)
    parser.add_argument("--exit-steps", type=int, default=300, help="early-exit fine-tune steps")
    parser.add_argument("--exit-thresholds", type=float, nargs="+", default=[0.9, 0.7])
    parser.add_argument("--per-modality", type=int, nargs=3, default=[400, 300, 200],
                        metavar=("IMAGE", "AUDIO", "VIDEO"), help="demo corpus sizes")
    parser.add_argument("--reps", type=int, default=20, help="batch-1 latency samples (tiny)")
    parser.add_argument("--reps-63m", type=int, default=10, help="batch-1 latency samples (slm-63m)")
    parser.add_argument("--skip-63m", action="store_true")
    parser.add_argument("--skip-trained", action="store_true")
    parser.add_argument("--skip-onnx-63m", action="store_true")
    parser.add_argument("--early-exit-model", default=None, metavar="DIR",
                        help="only the early-exit rows, for an exit-trained model of an earlier run")
    parser.add_argument("--json", default=None, help="write every row as JSON here")
    parser.add_argument("--probe", nargs=2, metavar=("KIND", "MODEL_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-tokens", type=int, default=16, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    if args.early_exit_model:
        early_exit_only(bench, args.early_exit_model)
    elif not args.skip_trained:
        image, audio, video = args.per_modality
        data = prepare_data(out, {"image": image, "audio": audio, "video": video,
                                  "text": max(8, video // 10)})
        say(f"data: {len(data.train_batches)} train batches, {len(data.val_batches)} val batches")
        trained_rows(bench, data)
    if not args.skip_63m and not args.early_exit_model:
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

"""What ``jobs/bench_edge.py`` measures: caption exact match and loss, batch-1 latency (p50/p90,
optionally interleaved over several runners), batch throughput, and the peak RSS of a fresh
process that loads a model and generates once (``run_probe`` is that child)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster.procs import reset_peak_rss, status_mb

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma")
REPO = Path(__file__).resolve().parents[2]


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
    scores = [v for v in result.values() if v is not None]
    result["mean_exact"] = round(sum(scores) / len(scores), 1) if scores else None
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
    runner before the next sample), so a shared machine's load drifts hit every row alike.

    Also the CPU time of this process per caption (``cpu_p50_ms``): with one compute thread it
    is what the caption costs, and unlike wall time it hardly moves when other processes compete
    for the cores (wall time under a load average of 40 on 2 cores is mostly waiting)."""
    for media in samples[:warmup]:
        for runner in runners.values():
            runner.generate(media, max_new_tokens)
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for media in samples:
        for name, runner in runners.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            runner.generate(media, max_new_tokens)
            times[name].append(1000 * (time.perf_counter() - started))
            cpu[name].append(1000 * (time.process_time() - cpu_started))
    return {name: {"latency_p50_ms": round(percentile(t, 0.5), 2),
                   "latency_p90_ms": round(percentile(t, 0.9), 2),
                   "cpu_p50_ms": round(percentile(cpu[name], 0.5), 2)}
            for name, t in times.items()}


def throughput(runner, media: dict, max_new_tokens: int, repeats: int = 3) -> dict[str, float]:
    """Samples/s of batch generation per wall second and per CPU second of this process
    (medians of ``repeats`` after one warm-up; no warm-up with a single repeat)."""
    if repeats > 1:
        runner.generate(media, max_new_tokens)
    size = next(iter(media.values())).shape[0]
    rates, cpu_rates = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        runner.generate(media, max_new_tokens)
        rates.append(size / (time.perf_counter() - started))
        cpu_rates.append(size / max(time.process_time() - cpu_started, 1e-9))
    return {"throughput_b32": round(statistics.median(rates), 2),
            "throughput_b32_cpu": round(statistics.median(cpu_rates), 2)}


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

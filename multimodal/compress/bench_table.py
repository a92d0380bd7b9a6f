"""Rows of the edge table (``jobs/bench_edge.py``): a group of techniques measured together.

``Bench.group`` takes the batch-1 latencies of every row of a group *and its reference* (fp32, or
the same model at full depth) in one interleaved loop, so the ``speedup`` column compares runs
that saw the same load; then throughput, the peak RSS of a fresh process, the file size, the
parameters (and their change against the reference) and, with quality batches, caption exact
match and loss, one row at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimodal.compress.measure import interleaved_latency, probe_rss, quality, throughput


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Row:
    """One technique: how to run it, where its files are, and what else goes in its row."""
    technique: str
    runner: Any
    model_dir: str
    kind: str  # probe kind: torch, int8, torchao, ort, ort-int8
    model: Any  # the module whose parameters are counted
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every row of one model is measured on."""
    model_name: str
    samples: list[dict]  # batch-1 media for latency
    batch32: dict  # media for throughput
    new_tokens: int
    quality_batches: list | None  # validation batches (None: no quality columns)


@dataclass
class Bench:
    args: argparse.Namespace
    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    probes: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def group(self, ctx: Context, rows: list[Row], reference: Row) -> list[dict[str, Any]]:
        """Measure ``rows`` (the reference is timed in the same loop; it is a row only when it
        is in ``rows``)."""
        runners = {row.technique: row.runner for row in rows}
        runners.setdefault(reference.technique, reference.runner)
        say(f"[{ctx.model_name}] interleaved batch-1 latency over {len(runners)} runners")
        latencies = interleaved_latency(runners, ctx.samples, ctx.new_tokens)
        ref_p50 = latencies[reference.technique]["latency_p50_ms"]
        ref_cpu = latencies[reference.technique]["cpu_p50_ms"]
        measured = []
        for row in rows:
            if hasattr(row.runner, "depths"):
                row.runner.depths.clear()
            result = self.measure(ctx, row, latencies[row.technique])
            result["speedup"] = round(ref_p50 / result["latency_p50_ms"], 2)
            result["cpu_speedup"] = round(ref_cpu / max(result["cpu_p50_ms"], 1e-9), 2)
            result["reference_p50_ms"] = ref_p50
            result.update(changes(row.model, reference.model))
            measured.append(result)
            say("  " + json.dumps(result))
        if getattr(self.args, "json", None):  # a crash later keeps what was measured
            Path(self.args.json).write_text(json.dumps({"rows": self.rows}, indent=1))
        return measured

    def measure(self, ctx: Context, row: Row, latency: dict[str, float]) -> dict[str, Any]:
        from multimodal.compress.report import file_bytes

        say(f"[{ctx.model_name}] {row.technique}: measuring")
        result: dict[str, Any] = {"model": ctx.model_name, "technique": row.technique, **latency}
        repeats = 1 if row.kind.startswith("ort") and ctx.quality_batches is None else \
            getattr(self.args, "throughput_repeats", 3)
        result.update(throughput(row.runner, ctx.batch32, ctx.new_tokens, repeats))
        key = (row.kind, row.model_dir)  # rows that share a model folder share the probe
        if key not in self.probes:
            self.probes[key] = probe_rss(row.kind, row.model_dir, self.args.threads, ctx.new_tokens)
        result.update(self.probes[key])
        weights = ("model.int8.onnx" if row.kind == "ort-int8" else
                   "model.onnx" if row.kind == "ort" else "model.safetensors")
        result["file_mb"] = round(file_bytes(str(Path(row.model_dir, weights))) / 1e6, 2)
        result["params"] = row.model.parameter_counts()["total"]
        if ctx.quality_batches is not None:
            result.update(quality(row.runner, ctx.quality_batches, ctx.new_tokens))
        depths = getattr(row.runner, "depths", None)
        if depths:
            result["average_depth"] = round(sum(depths) / len(depths), 3)
        result.update(row.extra)
        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        self.rows.append(result)
        return result


def changes(model, reference) -> dict[str, float]:
    """Core-layer and whole-model parameter change against the reference (e.g. -0.3)."""
    new, old = model.parameter_counts(), reference.parameter_counts()
    return {"core_change": round(new["core_layers"] / old["core_layers"] - 1, 3),
            "total_change": round(new["total"] / old["total"] - 1, 3)}


def save(model, path: Path, tokenizer=None) -> str:
    """``save_pretrained`` into ``path``; returns it as a string."""
    model.save_pretrained(str(path), tokenizer=tokenizer)
    return str(path)


def compress_cli(src: str, dst: Path, *flags: str) -> str:
    """``slm-compress src dst flags...`` in process; returns ``dst``."""
    from multimodal.compress import cli

    if cli.main([src, str(dst), *flags, "--json"]) != 0:
        raise RuntimeError(f"slm-compress {src} {dst} {flags} failed")
    return str(dst)


def export_ort(model, model_dir: str) -> None:
    """``model.onnx`` and ``model.int8.onnx`` (ONNX Runtime dynamic int8) next to the weights."""
    from multimodal.compress.int8_runtime import ort_int8
    from multimodal.compress.onnx_export import export_onnx

    graph = export_onnx(model)
    Path(model_dir, "model.onnx").write_bytes(graph)
    Path(model_dir, "model.int8.onnx").write_bytes(ort_int8(graph))

"""Benchmark the model's training step: forward + backward throughput, MFU and peak memory.

For each preset, random full-modality batches (every modality present, every text position real)
go through ``forward`` + ``backward`` (no optimizer step). Reported:

* tokens/s -- core positions (media tokens + text tokens) per second, and samples/s;
* MFU -- achieved FLOP/s (``model.estimate_flops_per_sample``, ~6 FLOPs per weight use plus
  attention) over a matrix-multiply peak measured in the same run on the same device and dtype;
* peak memory -- the process's peak RSS on CPU (a high-water mark over the whole run, so
  presets are run smallest first), ``torch.cuda.max_memory_allocated`` on GPU.

CPU (default, fp32, both presets, well under 2 minutes)::

    python -m jobs.bench_model
GPU (bf16 autocast, torch.compile; the peak is a bf16 matmul measured there)::

    python -m jobs.bench_model --device cuda --dtype bf16 --compile --presets slm-63m

Prints a table and a final ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import time

import torch

from multimodal.batch import BOS_ID, EOS_ID, IGNORE_INDEX, MODALITIES, present_key
from multimodal.config import preset
from multimodal.model import MultimodalSLM

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_BATCH = {("cpu", "tiny"): 16, ("cpu", "slm-63m"): 4,
                 ("cuda", "tiny"): 256, ("cuda", "slm-63m"): 128}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    """Best FLOP/s of ``size x size`` matmuls over a few timed rounds of ~``seconds`` in all."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    a @ b
    synchronize(device)
    reps = max(1, int(seconds / 5 / max(time.perf_counter() - start, 1e-6)))
    best = 0.0
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - start))
    return best


def random_batch(model: MultimodalSLM, batch_size: int, device: torch.device) -> dict:
    """Every modality present, every text position a real token with a label."""
    spec, vocab = model.cfg.media, model.cfg.core.vocab_size
    ids = torch.randint(4, vocab, (batch_size, spec.max_text_tokens))
    ids[:, 0], ids[:, -1] = BOS_ID, EOS_ID
    labels = ids.clone()
    labels[:, 0] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "image": torch.randn(batch_size, 3, spec.image_size, spec.image_size),
             "audio": torch.randn(batch_size, spec.audio_n_mels, spec.audio_frames),
             "video": torch.randn(batch_size, spec.video_frames, 3, spec.video_size,
                                  spec.video_size)}
    for name in MODALITIES:
        batch[present_key(name)] = torch.ones(batch_size, dtype=torch.bool)
    return {k: v.to(device) for k, v in batch.items()}


def bench_preset(name: str, args: argparse.Namespace, device: torch.device, peak: float) -> dict:
    torch.manual_seed(0)
    model = MultimodalSLM(preset(name)).to(device).train()
    batch_size = args.batch_size or DEFAULT_BATCH[(device.type, name)]
    batch = random_batch(model, batch_size, device)
    step_model = torch.compile(model) if args.compile else model
    autocast = (torch.autocast(device.type, dtype=DTYPES[args.dtype])
                if args.dtype != "fp32" else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            loss = step_model(batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    synchronize(device)
    steps = args.steps or (10 if name == "tiny" else 3) * (10 if device.type == "cuda" else 1)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    seq = model.num_media_tokens + model.cfg.media.max_text_tokens
    flops = model.estimate_flops_per_sample() * batch_size / seconds
    if device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(device)
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"preset": name, "params": model.parameter_counts()["total"], "batch_size": batch_size,
            "seq_len": seq, "step_s": seconds, "samples_per_s": batch_size / seconds,
            "tokens_per_s": batch_size * seq / seconds, "achieved_tflops": flops / 1e12,
            "mfu": flops / peak, "peak_memory_mib": peak_memory / 2**20}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,slm-63m",
                        help="comma-separated presets, run in this order (default tiny,slm-63m)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="fp32, or bf16 autocast (the peak is measured in the same dtype)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per step (default: per preset and device)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: by preset)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 1, 3 with --compile)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-size", type=int, default=None,
                        help="matmul size for the peak (default 1024 CPU, 8192 GPU)")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 3 if args.compile else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak(device, DTYPES[args.dtype], args.peak_size or
                       (8192 if device.type == "cuda" else 1024), seconds=2.0)
    rows = [bench_preset(name, args, device, peak) for name in args.presets.split(",")]

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} torch threads"
    print(f"device {where}; dtype {args.dtype}; compile {args.compile}; "
          f"measured {args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'preset':<9}{'params':>12}{'batch':>7}{'seq':>5}{'step s':>9}{'tokens/s':>11}"
          f"{'samples/s':>11}{'TFLOP/s':>9}{'MFU':>8}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['preset']:<9}{r['params']:>12,}{r['batch_size']:>7}{r['seq_len']:>5}"
              f"{r['step_s']:>9.3f}{r['tokens_per_s']:>11,.0f}{r['samples_per_s']:>11.1f}"
              f"{r['achieved_tflops']:>9.4f}{r['mfu']:>8.1%}{r['peak_memory_mib']:>10,.0f}")
    result = {"device": where, "dtype": args.dtype, "compile": args.compile,
              "peak_tflops": peak / 1e12, "load_average": os.getloadavg()[0], "presets": rows}
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()

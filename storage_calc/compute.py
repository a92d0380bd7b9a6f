"""What a team decides before launching: shards, tokens, FLOPs, GPU time, memory, checkpoints.

All estimates are first-order and say so:

* training tokens = text bytes / bytes per word × tokens per word, plus a fixed number of tokens
  per image, audio clip and video (what each becomes in the model; ``slm-63m`` pools every
  medium to 4 tokens);
* compute ≈ 6 · N · tokens FLOPs per epoch (forward 2·N·T + backward 4·N·T; Kaplan et al. 2020);
* wall time = FLOPs / (GPUs × peak dense bf16 rate × utilisation);
* worker memory = 16 bytes per parameter (bf16 weights and grads, fp32 master weights and two
  AdamW moments) + activations, per layer ≈ s·b·h·(34 + 5·a·s/h) bytes (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", eq. 1: 16-bit activations,
  no recomputation, no parallelism) + the fp32 logits for the loss, 4·s·b·V bytes;
* checkpoint = 4 bytes per parameter (fp32 weights), 12 with the AdamW moments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from storage_calc.estimate import StorageEstimate

SEED_PARAMS = 63_037_440  # the seed's SLM (multimodal.config defaults)


@dataclass(frozen=True)
class GPU:
    """A GPU type: peak dense bf16 tensor rate (no sparsity) and memory."""

    key: str
    name: str
    bf16_tflops: float
    memory_bytes: int
    source: str


#: Dense (non-sparse) bf16 tensor-core peaks, FP32 accumulate.
GPUS: dict[str, GPU] = {g.key: g for g in (
    GPU("rtx3060", "RTX 3060", 25.5, 12 * 10**9,
        "GA106: 28 SMs x 1.777 GHz x 512 bf16 FLOP/clk/SM (GeForce Ampere half-rate FP32 "
        "accumulate, GA10x whitepaper); NVIDIA's 101 'AI TFLOPS' is FP16-accumulate with sparsity"),
    GPU("a10g", "A10G", 70.0, 24 * 10**9,
        "AWS G5 A10G: 80 SMs x 1.71 GHz x 512 FLOP/clk/SM, the commonly quoted 70 TFLOPS dense bf16"),
    GPU("l4", "L4", 121.0, 24 * 10**9, "NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity, 121 dense"),
    GPU("a100", "A100 80GB", 312.0, 80 * 10**9, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense"),
    GPU("h100", "H100 SXM", 989.0, 80 * 10**9,
        "NVIDIA H100 SXM datasheet: 1,979 TFLOPS bf16 with sparsity, 989 dense"),
    GPU("h200", "H200 SXM", 989.0, 141 * 10**9,
        "NVIDIA H200 datasheet: 1,979 TFLOPS bf16 with sparsity, 989 dense"),
)}


@dataclass(frozen=True)
class PlanInputs:
    """Every assumption behind the planning numbers (all are CLI flags)."""

    shard_bytes: int = 10**9
    tokens_per_word: float = 1.3
    tokens_per_image: int = 4
    tokens_per_audio: int = 4
    tokens_per_video: int = 4
    epochs: float = 1.0
    params: int = SEED_PARAMS
    gpu: str = "rtx3060"
    gpus: int = 1
    utilization: float = 0.40
    hidden: int = 512
    layers: int = 6
    heads: int = 8
    vocab_size: int = 32000
    batch_size: int = 32
    seq_len: int = 256
    bytes_per_param_training: int = 16
    capacity_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """The planning numbers for one storage estimate."""

    inputs: PlanInputs
    shards: int
    avg_shard_bytes: float
    tokens: dict[str, int]
    total_tokens: int
    flops: float
    gpu: GPU
    seconds: float
    gpu_hours: float
    state_bytes: int
    activation_bytes: int
    logits_bytes: int
    worker_bytes: int
    fits_gpu: bool
    checkpoint_weights_bytes: int
    checkpoint_full_bytes: int
    dataset_bytes: int
    fits: bool | None
    capacity_margin_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpu"] = asdict(self.gpu)
        data["gpu"]["bf16_flops"] = self.gpu.bf16_tflops * 1e12
        return data


def text_tokens(text_bytes: float, bytes_per_word: float, tokens_per_word: float) -> int:
    """Tokens of ``text_bytes`` of text: bytes → words → tokens."""
    return int(round(text_bytes / bytes_per_word * tokens_per_word))


def training_flops(params: int, tokens: int, epochs: float = 1.0) -> float:
    """≈ 6 · N · tokens per epoch."""
    return 6.0 * params * tokens * epochs


def activation_bytes_per_layer(seq_len: int, batch: int, hidden: int, heads: int) -> float:
    """Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) bytes (16-bit, no recomputation)."""
    return seq_len * batch * hidden * (34 + 5 * heads * seq_len / hidden)


def logits_bytes(seq_len: int, batch: int, vocab: int) -> int:
    """The fp32 logits the cross-entropy keeps for the backward pass: 4·s·b·V bytes."""
    return 4 * seq_len * batch * vocab


def plan(storage: StorageEstimate, inputs: PlanInputs | None = None) -> Plan:
    """Shards, tokens, FLOPs, wall time, worker memory, checkpoint size and capacity fit."""
    p = inputs or PlanInputs()
    if p.gpu not in GPUS:
        raise ValueError(f"unknown GPU {p.gpu!r}; choose from {', '.join(GPUS)}")
    gpu = GPUS[p.gpu]
    total = storage.total_bytes
    shards = max(1, math.ceil(total / p.shard_bytes)) if total else 0
    tokens = {
        "text": text_tokens(storage.row("text").total_bytes, storage.assumptions.bytes_per_word,
                            p.tokens_per_word),
        "image": storage.row("image").count * p.tokens_per_image,
        "audio": storage.row("audio").count * p.tokens_per_audio,
        "video": storage.row("video").count * p.tokens_per_video,
    }
    total_tokens = sum(tokens.values())
    flops = training_flops(p.params, total_tokens, p.epochs)
    seconds = flops / (p.gpus * gpu.bf16_tflops * 1e12 * p.utilization)
    state = p.bytes_per_param_training * p.params
    activations = int(round(p.layers * activation_bytes_per_layer(p.seq_len, p.batch_size,
                                                                   p.hidden, p.heads)))
    logits = logits_bytes(p.seq_len, p.batch_size, p.vocab_size)
    worker = state + activations + logits
    fits = margin = None
    if p.capacity_bytes is not None:
        fits = total <= p.capacity_bytes
        margin = p.capacity_bytes - total
    return Plan(
        inputs=p, shards=shards, avg_shard_bytes=total / shards if shards else 0.0,
        tokens=tokens, total_tokens=total_tokens, flops=flops, gpu=gpu, seconds=seconds,
        gpu_hours=seconds * p.gpus / 3600, state_bytes=state, activation_bytes=activations,
        logits_bytes=logits, worker_bytes=worker, fits_gpu=worker <= gpu.memory_bytes,
        checkpoint_weights_bytes=4 * p.params, checkpoint_full_bytes=12 * p.params,
        dataset_bytes=total, fits=fits, capacity_margin_bytes=margin,
    )

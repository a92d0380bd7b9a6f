"""Model FLOPs utilisation (MFU), as nanoGPT logs it: model FLOPs per second / the device's peak.

Model FLOPs of one training sample (forward and backward, nanoGPT's ``estimate_mfu``):

- core: ``6 * N_core * T + 12 * L * H * T**2`` for ``T`` core positions (text tokens plus every
  modality's pooled media tokens: the padded sequence the core runs on), ``N_core`` core
  parameters (embeddings included), ``L`` layers, ``H`` hidden size;
- each encoder the sample carries: ``6 * N_enc * n`` for ``n`` encoder input positions (image or
  video patches, audio frames after the convolutions).

The peak is per worker: ``train.peak_tflops`` when set; otherwise the bf16 dense peak of a known
GPU (``GPU_PEAK_TFLOPS``), or on CPU ``CPU_PEAK_TFLOPS_PER_CORE`` times the worker's CPUs. MFU is
``None`` for an unknown GPU without ``peak_tflops``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from multimodal.batch import MODALITIES

# fp32 matmul peak of one core (torch.matmul 1024x1024, one thread) on the development machine,
# an "Intel(R) Xeon(R) Processor" with AVX-512, measured 2026-11-25: 0.171-0.177 TFLOP/s
CPU_PEAK_TFLOPS_PER_CORE = 0.175
# bf16 dense tensor-core peak (no sparsity) from the vendors' data sheets, by name substring
GPU_PEAK_TFLOPS: dict[str, float] = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                                     "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}


def peak_flops(device: torch.device, cpus: float, peak_tflops: float | None = None) -> float | None:
    """The peak FLOP/s of one worker on ``device`` (see the module docstring)."""
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
        return None
    return CPU_PEAK_TFLOPS_PER_CORE * 1e12 * max(1.0, cpus)


class FlopsModel:
    """Model FLOPs per sample of one model, by what the sample carries."""

    def __init__(self, model: torch.nn.Module):
        cfg = model.cfg
        core = sum(p.numel() for p in model.core.parameters()) + sum(p.numel() for p in model.lm_head.parameters()
                                                                    if p is not model.core.embed_tokens.weight)
        positions = cfg.media.max_text_tokens + model.num_media_tokens
        self.per_sample = 6 * core * positions + 12 * cfg.core.num_layers * cfg.core.hidden_size * positions ** 2
        self.per_modality: dict[str, float] = {}
        for modality in MODALITIES:
            encoder = model.encoders[modality]
            params = sum(p.numel() for p in encoder.parameters())
            self.per_modality[modality] = 6 * params * encoder.num_input_tokens

    def flops(self, samples: int, by_modality: Mapping[str, int]) -> float:
        """Model FLOPs of ``samples`` training samples, ``by_modality[m]`` of them carrying ``m``."""
        return samples * self.per_sample + sum(self.per_modality[m] * by_modality.get(m, 0) for m in MODALITIES)


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """The share of ``peak`` FLOP/s that ``flops`` in ``seconds`` reached."""
    if not peak or seconds <= 0:
        return None
    return flops / seconds / peak

"""int8 weight-only quantization, symmetric, one scale per output channel.

``w[c, ...] ~= q[c, ...] * scale[c]`` with ``scale[c] = max|w[c, ...]| / 127`` and ``q`` rounded to
nearest, so every element is off by at most ``scale[c] / 2``. Applied to every weight matrix of
the model (all ``nn.Linear`` layers, the token embedding and the LM head -- for an embedding a
"channel" is one token's row -- the attention in-projections and the conv stems); biases, norms
and learned positions stay fp32 (they are small). Storage keeps the int8 values; loading
dequantizes to fp32 (see ``storage.restore_state``). For int8 *compute* on CPU see
``int8_runtime``.
"""

from __future__ import annotations

import torch
from torch import nn

QMAX = 127
MIN_ELEMENTS = 1024  # smaller weights are not worth a scale vector


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 values, float32 scales [out])`` for a weight whose dim 0 is the output channel."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scales = flat.abs().amax(dim=1) / QMAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-zero rows stay zero
    values = torch.round(flat / scales[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return values.reshape(weight.shape), scales


def dequantize_per_channel(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The fp32 weight back from ``quantize_per_channel``'s output."""
    shape = [values.shape[0]] + [1] * (values.dim() - 1)
    return values.float() * scales.float().reshape(shape)


def quantizable_weights(model: nn.Module) -> list[str]:
    """State-dict names of the weight matrices to store as int8: every parameter named
    ``*weight`` with two or more dims and at least ``MIN_ELEMENTS`` elements, each tensor once."""
    names = []
    for name, param in model.named_parameters():  # shared tensors are listed once
        if name.endswith("weight") and param.dim() >= 2 and param.numel() >= MIN_ELEMENTS:
            names.append(name)
    return names


def quantize_model_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """int8 values and scales for every ``quantizable_weights`` tensor, and the model's weights
    replaced in place by their dequantized values (so the model in memory equals the one that
    ``from_pretrained`` will load from the file)."""
    quantized = {}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in quantizable_weights(model):
            values, scales = quantize_per_channel(params[name])
            quantized[name] = (values, scales)
            params[name].copy_(dequantize_per_channel(values, scales))
    return quantized

"""int8 *compute* on CPU (dynamic activation quantization), for inference only.

Three back ends, all measured by ``jobs/bench_edge.py``:

- ``int8_weight_only`` (kept: fastest here): each ``nn.Linear`` becomes an ``Int8Linear`` that
  holds the int8 weight and per-channel scales of ``quantize.py`` and multiplies with PyTorch's
  CPU int8-weight kernel (``aten._weight_int8pack_mm``, bf16 activations, fp32 out). Weights
  take a quarter of the fp32 memory and batch-1 decoding, which is memory-bound, speeds up.
- ``torchao_int8``: torchao's ``Int8DynamicActivationInt8WeightConfig`` on the model's
  ``nn.Linear`` layers (the embedding stays a lookup), in place, PyTorch kept.
- ``ort_int8``: ONNX Runtime's ``quantize_dynamic`` (int8 weights per channel, uint8 dynamic
  activations, ``MatMulInteger``) on the exported ``model.onnx``; no PyTorch at run time.
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from multimodal.compress.quantize import quantize_per_channel


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with ``q`` int8 ``[out, in]`` and ``scale`` per output
    channel, computed by ``aten._weight_int8pack_mm`` in bf16 (fp32 in and out)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        values, scales = quantize_per_channel(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", values)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The int8 values (callers such as ``generate`` only read ``.device``)."""
        return self.weight_int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales).to(x.dtype)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def int8_weight_only(model: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Linear`` (core, LM head, encoder projections) by an
    ``Int8Linear``, in place; for CPU inference only. A tied LM head gets its own int8 copy
    (the embedding keeps its fp32 lookup)."""
    accept = _outside_multihead_attention(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if accept(child, f"{name}.{child_name}"):
                setattr(module, child_name, Int8Linear(child))
    return model


def _outside_multihead_attention(model: nn.Module):
    """A module filter: plain ``nn.Linear`` layers, not those that ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` read as raw weights (the media encoders, run once per caption,
    keep fp32 there)."""
    inside = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    inside |= {id(child) for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)
               for child in m.modules()}  # its fused fast path reads the raw weights too

    def accept(module: nn.Module, _fqn: str) -> bool:
        return isinstance(module, nn.Linear) and id(module) not in inside
    return accept


def torchao_int8(model: nn.Module) -> nn.Module:
    """``model`` with int8 dynamic-activation, int8-weight linear layers (torchao), in place."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig(),
              filter_fn=_outside_multihead_attention(model))
    return model


def ort_int8(onnx_model: bytes) -> bytes:
    """ONNX Runtime dynamic int8 quantization (per-channel weights) of a ``model.onnx``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
        with open(source, "wb") as handle:
            handle.write(onnx_model)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
        with open(target, "rb") as handle:
            return handle.read()

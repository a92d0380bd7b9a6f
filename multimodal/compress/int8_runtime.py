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
        values, scales = quantize_per_channel(linear.weight)  # meta tensors stay meta
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", values)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The int8 values (callers such as ``generate`` only read ``.device``)."""
        return self.weight_int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_features % 16:  # the kernel needs in_features % 16 == 0 (garbage otherwise)
            weight = self.weight_int8.float() * self.scales.float()[:, None]
            return nn.functional.linear(x, weight.to(x.dtype), self.bias)
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


def _int8_shells(model: nn.Module) -> dict[str, Int8Linear]:
    """``int8_weight_only`` on a meta-device model; returns ``{module name: Int8Linear}``."""
    accept = _outside_multihead_attention(model)
    replaced = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if accept(child, full):
                replaced[full] = Int8Linear(child)
                setattr(module, child_name, replaced[full])
    return replaced


def load_int8_model(uri: str) -> nn.Module:
    """A ``from_pretrained`` for int8 CPU inference that never holds the fp32 copy of the linear
    weights: the model is built on the meta device, its linear layers become ``Int8Linear``
    shells, and the stored int8 values and scales go straight into them (an fp32 file is
    quantized tensor by tensor). Aliased linear weights share one ``Int8Linear``."""
    import json

    import safetensors.torch

    from multimodal import fs
    from multimodal.compress import storage
    from multimodal.config import ModelConfig
    from multimodal.model import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, MultimodalSLM

    cfg = ModelConfig.model_validate_json(fs.read_bytes(fs.join(uri, CONFIG_FILE)))
    raw = fs.read_bytes(fs.join(uri, WEIGHTS_FILE))
    metadata = storage.read_metadata(raw)
    stored = safetensors.torch.load(raw)
    del raw
    int8_names = set(json.loads(metadata.get(storage.INT8_KEY, "[]")))
    aliases: dict[str, str] = json.loads(metadata.get(storage.ALIASES_KEY, "{}"))
    if cfg.core.tie_word_embeddings:
        aliases.setdefault("lm_head.weight", "core.embed_tokens.weight")
    with torch.device("meta"):
        model = MultimodalSLM(cfg)
    shells = _int8_shells(model)
    model.to_empty(device="cpu")
    with torch.device("cpu"):  # non-persistent buffers (rotary frequencies) are not in the file
        model.core.rotary_emb = type(model.core.rotary_emb)(config=model.core.config)

    def values_and_scales(weight_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if weight_name in int8_names:
            return (stored[weight_name + storage.INT8_SUFFIX],
                    stored[weight_name + storage.SCALE_SUFFIX])
        return quantize_per_channel(stored[weight_name])

    state: dict[str, torch.Tensor] = {}
    for module_name in shells:
        source = aliases.get(f"{module_name}.weight", f"{module_name}.weight")
        values, scales = values_and_scales(source)
        state[f"{module_name}.weight_int8"] = values
        state[f"{module_name}.scales"] = scales.to(torch.bfloat16)
    linear_weights = {f"{name}.weight" for name in shells}
    for name in model.state_dict():
        if name in state:
            continue
        source = aliases.get(name, name)
        if source in int8_names:
            from multimodal.compress.quantize import dequantize_per_channel

            state[name] = dequantize_per_channel(stored[source + storage.INT8_SUFFIX],
                                                 stored[source + storage.SCALE_SUFFIX])
        elif source not in linear_weights:
            state[name] = stored[source]
    model.load_state_dict(state, strict=True)
    storage.retie(model, {a: s for a, s in aliases.items() if a not in linear_weights})
    for alias, source in aliases.items():  # shared linear layers: one Int8Linear
        if alias in linear_weights and source in linear_weights:
            owner_name, _, attr = alias.removesuffix(".weight").rpartition(".")
            setattr(model.get_submodule(owner_name), attr,
                    model.get_submodule(source.removesuffix(".weight")))
    if fs.exists(fs.join(uri, TOKENIZER_FILE)):
        from tokenizers import Tokenizer

        model.tokenizer = Tokenizer.from_str(fs.read_bytes(fs.join(uri, TOKENIZER_FILE)).decode())
    return model.eval()

"""The compressed safetensors format: int8 weights + scales, and tensors stored once.

``model.safetensors`` stays a plain safetensors file. Its string metadata may hold:

- ``int8``: JSON list of weight names stored as ``<name>.int8`` (int8, the weight's shape) and
  ``<name>.scale`` (float32, one per output channel = dim 0); ``w ~= int8 * scale``.
- ``aliases``: JSON ``{alias: source}`` for parameters that are the same tensor as ``source``
  (tied embeddings, ALBERT-style shared layers); only ``source`` is stored.

``restore_state`` turns such a file back into an ordinary fp32 state dict and ``retie`` makes
aliased parameters one tensor again after ``load_state_dict``, so shared weights also take memory
once. An uncompressed file has neither key and passes through unchanged.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from torch import nn

INT8_KEY = "int8"
ALIASES_KEY = "aliases"
INT8_SUFFIX = ".int8"
SCALE_SUFFIX = ".scale"


def read_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory (``{}`` when there is none)."""
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    return dict(header.get("__metadata__") or {})


def aliases_of(model: nn.Module) -> dict[str, str]:
    """``{alias: source}`` for every parameter name that refers to an already-named tensor."""
    first_name: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        key = id(param)
        if key in first_name:
            aliases[name] = first_name[key]
        else:
            first_name[key] = name
    return aliases


def pack_state(model: nn.Module, int8: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata to write for ``model``: aliases dropped, ``int8`` weights (name ->
    (int8 values, scales)) stored in place of their float tensor."""
    int8 = int8 or {}
    aliases = aliases_of(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict(keep_vars=False).items():
        if name in aliases:
            continue
        if name in int8:
            values, scales = int8[name]
            tensors[name + INT8_SUFFIX] = values.contiguous()
            tensors[name + SCALE_SUFFIX] = scales.contiguous()
        else:
            tensors[name] = value.detach().to("cpu").contiguous()
    metadata = {"format": "pt"}
    if int8:
        metadata[INT8_KEY] = json.dumps(sorted(int8))
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    return tensors, metadata


def restore_state(state: dict[str, torch.Tensor], metadata: dict[str, str]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An fp32 state dict with every key the model expects, and the aliases to ``retie``."""
    from multimodal.compress.quantize import dequantize_per_channel

    state = dict(state)
    for name in json.loads(metadata.get(INT8_KEY, "[]")):
        values = state.pop(name + INT8_SUFFIX)
        scales = state.pop(name + SCALE_SUFFIX)
        state[name] = dequantize_per_channel(values, scales)
    aliases: dict[str, str] = json.loads(metadata.get(ALIASES_KEY, "{}"))
    for alias, source in aliases.items():
        state[alias] = state[source]
    return state, aliases


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def tie_parameter(model: nn.Module, alias: str, source: str) -> None:
    """Make parameter ``alias`` the very tensor ``source`` (one storage, one gradient)."""
    owner, attr = _owner(model, alias)
    source_owner, source_attr = _owner(model, source)
    setattr(owner, attr, getattr(source_owner, source_attr))


def retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Re-establish ``aliases`` on a freshly loaded model (no-op for an empty map)."""
    for alias, source in aliases.items():
        tie_parameter(model, alias, source)


def file_metadata_summary(metadata: dict[str, str]) -> dict[str, Any]:
    """How many tensors are int8 and how many are aliases (for reports)."""
    return {"int8_tensors": len(json.loads(metadata.get(INT8_KEY, "[]"))),
            "aliased_tensors": len(json.loads(metadata.get(ALIASES_KEY, "{}")))}

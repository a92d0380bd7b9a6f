"""Size and parameter figures of a model folder (what ``compression.json`` records)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from multimodal import fs


def file_bytes(uri: str) -> int:
    """Size of one file (local or S3)."""
    filesystem, path = fs.filesystem_for(uri)
    return int(filesystem.get_file_info(path).size)


def model_figures(model: nn.Module) -> dict[str, Any]:
    """Parameter counts (shared tensors once), the core shape and fp32 bytes in memory."""
    counts = model.parameter_counts()
    core = model.cfg.core
    return {"parameters": counts, "fp32_bytes": 4 * counts["total"],
            "core": {"num_layers": core.num_layers, "hidden_size": core.hidden_size,
                     "num_heads": core.num_heads, "intermediate_size": core.intermediate_size,
                     "tie_word_embeddings": core.tie_word_embeddings}}


CORE_LAYERS = "core.layers."


def tensor_bytes(tensors: dict[str, torch.Tensor], prefix: str = "") -> int:
    """Bytes of the tensors whose name starts with ``prefix``."""
    return sum(t.numel() * t.element_size() for name, t in tensors.items()
               if name.startswith(prefix))


def core_layer_bytes(model: nn.Module, int8: dict | None) -> int:
    """Bytes the core layers take in ``model.safetensors`` as ``slm-compress`` writes it."""
    from multimodal.compress.storage import pack_state

    return tensor_bytes(pack_state(model, int8)[0], CORE_LAYERS)


def changes(report: dict[str, Any]) -> dict[str, float]:
    """Relative change (after / before - 1) of the core layers' and the whole model's parameters
    and file bytes: pruning acts on the core, the embeddings and encoders stay."""
    before, after = report["before"], report["after"]

    def rel(new: float, old: float) -> float:
        return round(new / old - 1, 4) if old else 0.0

    return {"core_layer_parameters": rel(after["parameters"]["core_layers"],
                                         before["parameters"]["core_layers"]),
            "total_parameters": rel(after["parameters"]["total"], before["parameters"]["total"]),
            "core_layer_file_bytes": rel(after["core_layer_bytes"], before["core_layer_bytes"]),
            "total_file_bytes": rel(report["file_bytes"], report["source_file_bytes"])}

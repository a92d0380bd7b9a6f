"""Size and parameter figures of a model folder (what ``compression.json`` records)."""

from __future__ import annotations

from typing import Any

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

"""One pruning ratio over several structures: whole layers, attention heads, FFN channels.

``prune_core(model, 0.3, ("layers", "ffn"))`` removes 30 % of the core layers' parameters, the
structures taking equal shares in the order layers -> heads -> ffn; the last one takes whatever
is left to reach the ratio (layers and heads come in coarse units, FFN channels are fine-grained).
Every structure physically slices the weights (``prune``, ``prune_heads``, ``prune_layers``).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from multimodal.compress import prune, prune_heads, prune_layers

STRUCTURES = ("layers", "heads", "ffn")


def parse_structures(text: str) -> tuple[str, ...]:
    """``"layers,ffn"`` -> ``("layers", "ffn")`` in application order; one-line error otherwise."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in STRUCTURES]
    if unknown or not chosen:
        raise ValueError(f"unknown prune structure {unknown or text!r}; choose from {STRUCTURES}")
    return tuple(s for s in STRUCTURES if s in chosen)


def prune_core(model: nn.Module, ratio: float, structures: Sequence[str] = ("ffn",),
               method: str = "magnitude",
               calibration: Iterable[dict[str, torch.Tensor]] | None = None
               ) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The pruned model and one report entry per structure (what it removed)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"prune ratio must be in (0, 1), got {ratio}")
    if method not in prune.METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {prune.METHODS}")
    calibration = list(calibration) if calibration is not None else None
    base = prune.core_layer_parameters(model)
    target = ratio * base
    steps: list[dict[str, Any]] = []
    for position, structure in enumerate(structures):
        before = prune.core_layer_parameters(model)
        removed_so_far = base - before
        last = position == len(structures) - 1
        share = target - removed_so_far if last else target / len(structures)
        core = model.cfg.core
        if share <= 0:  # the coarse structures before it already removed enough
            steps.append({"structure": structure, "skipped": True,
                          "core_parameters": [before, before]})
            continue
        if structure == "layers":
            model, removed, scores = prune_layers.prune_layers(model, share, calibration)
            entry = {"removed_layers": removed, "block_influence": scores,
                     "num_layers": [core.num_layers, model.cfg.core.num_layers]}
        elif structure == "heads":
            model = prune_heads.prune_heads(model, share, method, calibration)
            entry = {"method": method, "num_heads": [core.num_heads, model.cfg.core.num_heads]}
        else:
            model = prune.prune_ffn(model, share / before, method, calibration)
            entry = {"method": method,
                     "ffn_channels": [core.intermediate_size, model.cfg.core.intermediate_size]}
        after = prune.core_layer_parameters(model)
        steps.append({"structure": structure, **entry,
                      "core_parameters": [before, after]})
    return model, steps

"""Weight sharing: one tensor where there were two.

- ``tie_embeddings``: the LM head becomes the token embedding (``core.tie_word_embeddings``;
  ``save_pretrained`` already stores it once). For a model trained untied the shared matrix
  starts as the mean of the two, and needs a short fine-tune or distillation to recover.
- ``share_layers``: ALBERT-style cross-layer sharing in groups of ``group`` adjacent core layers
  (``group=2``: layers 0-1 share, 2-3 share, ...). Each group's parameters start as the mean of
  its layers and are one tensor afterwards (memory and file once; ``storage`` records the
  aliases). The layers stay separate modules, so each keeps its own KV-cache slot.
"""

from __future__ import annotations

import torch
from torch import nn

from multimodal.compress.storage import tie_parameter


@torch.no_grad()
def tie_embeddings(model: nn.Module) -> nn.Module:
    """Tie the LM head to the token embedding in place (mean of the two as the shared value)."""
    embedding = model.core.embed_tokens.weight
    if model.lm_head.weight is not embedding:
        embedding.copy_((embedding + model.lm_head.weight) / 2)
        model.lm_head.weight = embedding
    model.cfg.core.tie_word_embeddings = True
    model.core.config.tie_word_embeddings = True
    return model


@torch.no_grad()
def share_layers(model: nn.Module, group: int = 2) -> dict[str, str]:
    """Share the parameters of each ``group`` adjacent core layers in place; returns the
    ``{alias: source}`` map of the tied parameter names."""
    if group < 2:
        raise ValueError(f"layer sharing needs groups of 2 or more layers, got {group}")
    layers = model.core.layers
    aliases: dict[str, str] = {}
    for start in range(0, len(layers), group):
        members = list(range(start, min(start + group, len(layers))))
        if len(members) < 2:
            break
        source = layers[members[0]]
        params = dict(source.named_parameters())
        for name, param in params.items():
            param.copy_(torch.stack([dict(layers[i].named_parameters())[name]
                                     for i in members]).mean(0))
        for i in members[1:]:
            for name in params:
                alias = f"core.layers.{i}.{name}"
                aliases[alias] = f"core.layers.{members[0]}.{name}"
                tie_parameter(model, alias, aliases[alias])
    return aliases

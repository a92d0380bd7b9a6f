"""Structured pruning that shrinks, part 2: whole attention heads of the core.

A LLaMA attention layer has ``q_proj`` rows ``[num_heads * head_dim]``, ``k_proj``/``v_proj`` rows
``[num_kv_heads * head_dim]`` and ``o_proj`` columns ``[num_heads * head_dim]``. With grouped
queries (GQA) ``num_heads / num_kv_heads`` query heads read one key/value head, so the unit that
can go is a *group*: its key and value head, its query heads and their ``o_proj`` columns
(``(2 * group + 2) * head_dim * hidden`` weights). Without GQA a group is one head. Every layer
keeps the same number of groups (the config has one ``num_heads``), but each layer its own best;
``head_dim`` is kept and written into the config (it is no longer ``hidden_size // num_heads``).

Importance per group (the FFN scores of ``prune``, read at ``o_proj``):

- ``magnitude``: ``||o_proj[:, group cols]|| * (||q rows|| + ||k rows|| + ||v rows||)``.
- ``wanda``: ``sum_cols sum_i |o_proj[i, c]| * ||x_c||`` with ``x`` the attention output (the
  input of ``o_proj``) over the calibration batches.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from multimodal.compress.prune import check_method, cloned_state, input_square_sums, rebuild

MIN_GROUPS = 1


def head_layout(model: nn.Module) -> tuple[int, int, int]:
    """``(num_heads, num_kv_heads, head_dim)`` of the core."""
    config = model.core.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


def parameters_per_group(model: nn.Module) -> int:
    """Weights one key/value group takes in one layer (q, k, v rows and o columns)."""
    heads, kv_heads, head_dim = head_layout(model)
    return (2 * heads // kv_heads + 2) * head_dim * model.cfg.core.hidden_size


def groups_to_keep(model: nn.Module, remove_parameters: float) -> int:
    """Key/value groups per layer left after removing about ``remove_parameters`` weights."""
    _, kv_heads, _ = head_layout(model)
    per_group = parameters_per_group(model) * model.cfg.core.num_layers
    keep = kv_heads - int(round(remove_parameters / per_group))
    if keep < MIN_GROUPS:
        raise ValueError(f"head pruning would leave {keep} of {kv_heads} attention head groups per "
                         f"layer; at most {(kv_heads - MIN_GROUPS) * per_group:,} core weights "
                         f"can go as heads")
    return keep


def _group_columns(model: nn.Module) -> tuple[int, int]:
    heads, kv_heads, head_dim = head_layout(model)
    return heads // kv_heads * head_dim, head_dim  # q/o columns and k/v rows per group


def magnitude_scores(model: nn.Module) -> list[torch.Tensor]:
    """``[num_kv_heads]`` importance per layer from the weights alone."""
    q_width, kv_width = _group_columns(model)
    scores = []
    for layer in model.core.layers:
        attn = layer.self_attn
        o = attn.o_proj.weight.detach().T.reshape(-1, q_width * attn.o_proj.out_features)
        q = attn.q_proj.weight.detach().reshape(-1, q_width * attn.q_proj.in_features)
        k = attn.k_proj.weight.detach().reshape(-1, kv_width * attn.k_proj.in_features)
        v = attn.v_proj.weight.detach().reshape(-1, kv_width * attn.v_proj.in_features)
        scores.append(o.norm(dim=1) * (q.norm(dim=1) + k.norm(dim=1) + v.norm(dim=1)))
    return scores


@torch.no_grad()
def wanda_scores(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """``[num_kv_heads]`` importance per layer: Wanda's score summed over each group's columns."""
    q_width, _ = _group_columns(model)
    sums = input_square_sums(model, batches, lambda layer: layer.self_attn.o_proj, "wanda head pruning")
    return [(layer.self_attn.o_proj.weight.detach().abs().sum(0).cpu() * total.sqrt())
            .reshape(-1, q_width).sum(1) for layer, total in zip(model.core.layers, sums)]


def pruned_heads_copy(model: nn.Module, kept_groups: list[torch.Tensor]) -> nn.Module:
    """A new model keeping, per layer, the key/value groups ``kept_groups[layer]`` (sorted)."""
    heads, kv_heads, head_dim = head_layout(model)
    q_width, kv_width = _group_columns(model)
    keep = int(kept_groups[0].numel())
    cfg = model.cfg.model_copy(deep=True)
    cfg.core.num_heads = keep * (heads // kv_heads)
    cfg.core.num_kv_heads = keep if kv_heads != heads else None
    cfg.core.head_dim = head_dim
    state = cloned_state(model)
    for index, groups in enumerate(kept_groups):
        q_rows = (groups[:, None] * q_width + torch.arange(q_width)).flatten()
        kv_rows = (groups[:, None] * kv_width + torch.arange(kv_width)).flatten()
        prefix = f"core.layers.{index}.self_attn."
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            state[prefix + name + ".weight"] = state[prefix + name + ".weight"][rows].contiguous()
        state[prefix + "o_proj.weight"] = state[prefix + "o_proj.weight"][:, q_rows].contiguous()
    return rebuild(model, cfg, state)


def prune_heads(model: nn.Module, remove_parameters: float, method: str = "magnitude",
                calibration: Iterable[dict[str, torch.Tensor]] | None = None) -> nn.Module:
    """The model with about ``remove_parameters`` core weights removed as whole head groups."""
    check_method(method, calibration)
    keep = groups_to_keep(model, remove_parameters)
    scores = wanda_scores(model, calibration) if method == "wanda" else magnitude_scores(model)
    return pruned_heads_copy(model, [s.topk(keep).indices.sort().values for s in scores])

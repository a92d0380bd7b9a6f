"""Structured pruning that shrinks, part 3: whole core layers (ShortGPT's block influence).

A layer whose output is nearly its input (the residual stream barely turns) can go: its block
influence ``BI = 1 - mean cos(h_in, h_out)`` over the valid positions of a few calibration
batches (Men et al. 2024, "ShortGPT") is low. The layers with the lowest BI are removed, the rest
renumbered and ``num_layers`` written into the config. On CPU at batch 1 every removed layer also
removes its share of per-token Python and kernel-launch overhead, so layers buy the most latency
per parameter of the three structures.

Without calibration data the score is taken on ``calibration.synthetic_batches`` (random media,
a ``<bos>`` text): enough to rank layers of a model whose media are unknown, but real data ranks
better.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from multimodal.compress.prune import cloned_state, rebuild


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``[num_layers]`` mean ``1 - cos(input, output)`` of each core layer over valid positions."""
    layers = model.core.layers
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_pre_hook(
        lambda _m, args, kwargs: inputs.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for layer in layers]
    hooks += [layer.register_forward_hook(
        lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        for layer in layers]
    was_training = model.training
    model.eval()
    totals, count = torch.zeros(len(layers)), 0
    try:
        for batch in batches:
            inputs.clear()
            outputs.clear()
            _, key_valid, _, _ = model.fuse(batch)
            model(batch)
            valid = key_valid.reshape(-1).cpu()
            for index, (x, y) in enumerate(zip(inputs, outputs)):
                cos = torch.cosine_similarity(x.float(), y.float(), dim=-1).reshape(-1).cpu()
                totals[index] += (1 - cos[valid]).sum()
            count += int(valid.sum())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not count:
        raise ValueError("no calibration positions for layer pruning")
    return totals / count


def layers_to_remove(model: nn.Module, remove_parameters: float) -> int:
    """Whole layers that come closest to ``remove_parameters`` weights (at least one kept)."""
    layers = model.core.layers
    per_layer = sum(p.numel() for p in layers[0].parameters())
    count = int(round(remove_parameters / per_layer))
    if count >= len(layers):
        raise ValueError(f"layer pruning would remove {count} of {len(layers)} core layers; "
                         f"at least one must stay")
    return count


def without_layers(model: nn.Module, removed: list[int]) -> nn.Module:
    """A new model without the core layers ``removed`` (the others renumbered, in order)."""
    kept = [i for i in range(len(model.core.layers)) if i not in set(removed)]
    cfg = model.cfg.model_copy(deep=True)
    cfg.core.num_layers = len(kept)
    state = {}
    for name, value in cloned_state(model).items():
        if not name.startswith("core.layers."):
            state[name] = value
            continue
        index, rest = name[len("core.layers."):].split(".", 1)
        if int(index) in kept:
            state[f"core.layers.{kept.index(int(index))}.{rest}"] = value
    return rebuild(model, cfg, state)


def prune_layers(model: nn.Module, remove_parameters: float,
                 calibration: Iterable[dict[str, torch.Tensor]] | None = None
                 ) -> tuple[nn.Module, list[int], list[float]]:
    """The model without the lowest-influence layers (about ``remove_parameters`` weights), the
    removed indices and every layer's block influence."""
    count = layers_to_remove(model, remove_parameters)
    if calibration is None:
        from multimodal.compress.calibration import synthetic_batches

        calibration = synthetic_batches(model)
    scores = block_influence(model, calibration)
    removed = sorted(scores.argsort()[:count].tolist())
    return without_layers(model, removed), removed, [round(float(s), 5) for s in scores]

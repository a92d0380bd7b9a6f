"""Structured pruning that shrinks, part 1: whole SwiGLU channels of the core's FFNs.

(Attention heads: ``prune_heads``; whole layers: ``prune_layers``; the three combined under one
ratio: ``structured``.)

Channel ``j`` of a LLaMA FFN is row ``j`` of ``gate_proj`` and ``up_proj`` and column ``j`` of
``down_proj``; removing it deletes ``3 * hidden`` weights and changes nothing else. Every layer
keeps the same number of channels (the core config has one ``intermediate_size``, which
``from_pretrained`` uses to rebuild the smaller model), but each layer keeps *its own* most
important ones:

- ``magnitude``: ``||down[:, j]|| * (||gate[j]|| + ||up[j]||)`` -- no data needed.
- ``wanda``: Wanda's score (Sun et al. 2023) for the weights that read channel ``j``,
  ``sum_i |down[i, j]| * ||x_j||`` where ``x_j`` is channel ``j``'s activation (the input of
  ``down_proj``) over a few calibration batches: channels that are large *and* used survive.

``prune_ratio`` is the fraction of the core layers' parameters (attention + FFN + norms) to
remove; FFN channels alone can take at most the FFN share (about 2/3). The kept
count is rounded to a multiple of 16 (``CHANNEL_MULTIPLE``; the int8 CPU kernel needs it), so the
ratio achieved is within 8 channels per layer of the one asked.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

METHODS = ("magnitude", "wanda")
MIN_CHANNELS = 8
CHANNEL_MULTIPLE = 16  # kept channels per layer: a multiple of 16 (the int8 CPU kernel needs it)


def core_layer_parameters(model: nn.Module) -> int:
    """Parameters of the core's decoder layers (what ``prune_ratio`` is a fraction of)."""
    return sum(p.numel() for p in model.core.layers.parameters())


def channels_to_keep(model: nn.Module, prune_ratio: float, base: int | None = None) -> int:
    """FFN channels per layer left after removing ``prune_ratio`` of ``base`` parameters (default:
    the core layers' parameters now)."""
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {prune_ratio}")
    core = model.cfg.core
    per_channel = 3 * core.hidden_size * core.num_layers
    remove = prune_ratio * (base or core_layer_parameters(model)) / per_channel
    keep = int(round((core.intermediate_size - remove) / CHANNEL_MULTIPLE)) * CHANNEL_MULTIPLE
    if keep < MIN_CHANNELS:
        most = (core.intermediate_size - MIN_CHANNELS) * per_channel / core_layer_parameters(model)
        raise ValueError(f"prune ratio {prune_ratio} would leave {keep} FFN channels per layer; "
                         f"at most {most:.2f} of the core can be pruned")
    return keep


def magnitude_scores(model: nn.Module) -> list[torch.Tensor]:
    """``[intermediate]`` importance per layer from the weights alone."""
    scores = []
    for layer in model.core.layers:
        mlp = layer.mlp
        scores.append(mlp.down_proj.weight.norm(dim=0)
                      * (mlp.gate_proj.weight.norm(dim=1) + mlp.up_proj.weight.norm(dim=1)))
    return scores


def input_square_sums(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                      linear_of: Callable[[nn.Module], nn.Linear], what: str) -> list[torch.Tensor]:
    """Per core layer, ``sum ||x_j||^2`` over the calibration ``batches`` of each input column
    ``j`` of the linear layer ``linear_of(layer)``: Wanda's activation statistic."""
    layers = model.core.layers
    sums = [torch.zeros(linear_of(layer).in_features) for layer in layers]

    def recorder(index: int):
        def record(_module, inputs, _output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[index] += (x * x).sum(0).cpu()
        return record

    hooks = [linear_of(layer).register_forward_hook(recorder(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            model(batch)
            seen += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not seen:
        raise ValueError(f"no calibration batches for {what}")
    return sums


@torch.no_grad()
def wanda_scores(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """``[intermediate]`` importance per layer: ``sum_i |down[i, j]| * ||x_j||_2`` over the
    calibration ``batches`` (text padding included; it is a few percent of positions)."""
    sums = input_square_sums(model, batches, lambda layer: layer.mlp.down_proj, "wanda pruning")
    return [layer.mlp.down_proj.weight.detach().abs().sum(0).cpu() * total.sqrt()
            for layer, total in zip(model.core.layers, sums)]


def keep_indices(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Sorted indices of the ``keep`` highest-scoring channels of each layer."""
    return [score.topk(keep).indices.sort().values for score in scores]


def rebuild(model: nn.Module, cfg, state: dict[str, torch.Tensor]) -> nn.Module:
    """A new ``MultimodalSLM`` of config ``cfg`` holding ``state`` (the source model untouched;
    tokenizer and train/eval mode carried over)."""
    from multimodal.model import MultimodalSLM

    smaller = MultimodalSLM(cfg)
    smaller.load_state_dict(state, strict=True)
    smaller.tokenizer = getattr(model, "tokenizer", None)
    return smaller.train(model.training)


def cloned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pruned_copy(model: nn.Module, kept: list[torch.Tensor]) -> nn.Module:
    """A new, smaller model (``intermediate_size = len(kept[0])``) with the kept channels' weights
    and every other weight copied; the source model is left untouched."""
    cfg = model.cfg.model_copy(deep=True)
    cfg.core.intermediate_size = int(kept[0].numel())
    state = cloned_state(model)
    for index, channels in enumerate(kept):
        prefix = f"core.layers.{index}.mlp."
        for name in ("gate_proj", "up_proj"):
            state[prefix + name + ".weight"] = state[prefix + name + ".weight"][channels].contiguous()
        down = prefix + "down_proj.weight"
        state[down] = state[down][:, channels].contiguous()
    return rebuild(model, cfg, state)


def prune_ffn(model: nn.Module, prune_ratio: float, method: str = "magnitude",
              calibration: Iterable[dict[str, torch.Tensor]] | None = None,
              base: int | None = None) -> nn.Module:
    """The model with ``prune_ratio`` of ``base`` (default: its core layers' parameters) removed
    as FFN channels."""
    check_method(method, calibration)
    keep = channels_to_keep(model, prune_ratio, base)
    scores = wanda_scores(model, calibration) if method == "wanda" else magnitude_scores(model)
    return pruned_copy(model, keep_indices(scores, keep))


def check_method(method: str, calibration) -> None:
    """One line for an unknown importance score, or Wanda without calibration batches."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {METHODS}")
    if method == "wanda" and calibration is None:
        raise ValueError("wanda pruning needs calibration batches (--calibration-data)")

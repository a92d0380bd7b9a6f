"""Early exit: the core's intermediate layers predict tokens through the final norm + LM head.

Training (LayerSkip-style, Elhoushi et al. 2024): ``early_exit_loss`` adds to the usual loss the
cross-entropy of every intermediate layer's exit (``lm_head(norm(h_l))``, no new parameters),
weighted by depth ``(l + 1) / sum`` so deep exits count more, times ``weight``.

Generation: ``generate_early_exit`` runs the core layer by layer for each new token and stops
at the first layer (from ``min_layer``) whose exit is confident -- max softmax probability >=
``threshold`` for every unfinished sample. The layers it skipped still need this token's keys
and values for later tokens: they are computed from the exited hidden state (CALM's state
propagation, Schuster et al. 2022), which costs two projections per skipped layer instead of a
whole layer. The first token comes from the full prefill. It reports the average depth used.
The threshold is one number, or one per exit from ``calibrate_thresholds`` (CALM's calibration:
the lowest confidence at which each exit still agrees with the full model on calibration data).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from multimodal.batch import BOS_ID, EOS_ID, IGNORE_INDEX, MODALITIES, PAD_ID
from multimodal.generation import Generation, generations
from multimodal.masks import attention_mask_4d
from multimodal.model import text_loss


@contextmanager
def captured_layer_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect each core layer's output hidden state ``[B, S, H]`` during a forward pass."""
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(
        out[0] if isinstance(out, tuple) else out)) for layer in model.core.layers]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def exit_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of an exit: the final norm and the LM head on an intermediate hidden state."""
    return model.lm_head(model.core.norm(hidden))


def early_exit_loss(model: nn.Module, batch: dict[str, torch.Tensor], weight: float
                    ) -> tuple[torch.Tensor, object]:
    """``final CE + weight * depth-weighted mean of the intermediate exits' CE`` and the output.

    ``model`` may be DDP-wrapped; the hooks sit on the inner model's layers."""
    inner = model.module if hasattr(model, "module") else model
    with captured_layer_outputs(inner) as layer_outputs:
        output = model(batch)
    labels = batch["labels"]
    text_len = labels.shape[1]
    exits = layer_outputs[:-1]  # the last layer's output is the model's own head
    if not exits or weight == 0:
        return output.loss, output
    depth = torch.arange(1, len(exits) + 1, dtype=torch.float32)
    depth = depth / depth.sum()
    extra = sum(d * text_loss(exit_logits(inner, h[:, -text_len:]), labels)[0]
                for d, h in zip(depth.tolist(), exits))
    return output.loss + weight * extra, output


@dataclass
class EarlyExitResult:
    generations: list[Generation]
    average_depth: float  # core layers run per generated token (the prefill token counts fully)
    num_layers: int


def _propagate_kv(model: nn.Module, hidden: torch.Tensor, layers: range, cache: DynamicCache,
                  position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Keys/values of ``layers`` for this step, from the exited hidden state."""
    cos, sin = position_embeddings
    for index in layers:
        layer = model.core.layers[index]
        attention = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (*x.shape[:-1], -1, attention.head_dim)
        keys = attention.k_proj(x).view(shape).transpose(1, 2)
        values = attention.v_proj(x).view(shape).transpose(1, 2)
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
        cache.update(keys, values, index)


def layer_thresholds(threshold: float | Sequence[float], num_layers: int) -> list[float]:
    """One confidence threshold per exit (after layers 1 .. num_layers - 1)."""
    if isinstance(threshold, (int, float)):
        return [float(threshold)] * (num_layers - 1)
    thresholds = [float(t) for t in threshold]
    if len(thresholds) != num_layers - 1:
        raise ValueError(f"need {num_layers - 1} per-layer thresholds, got {len(thresholds)}")
    return thresholds


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                         agreement: float = 0.99,
                         grid: Sequence[float] = tuple(i / 100 for i in range(30, 100))
                         ) -> list[float]:
    """Per-exit thresholds (CALM-style calibration, Schuster et al. 2022): for each layer the
    lowest confidence at which the exit's token agrees with the full model's on at least
    ``agreement`` of the calibration label positions it would exit on (teacher-forced); 1.01
    (never exit) where no threshold of ``grid`` is that reliable."""
    model.eval()
    confidences: list[list[torch.Tensor]] = [[] for _ in range(len(model.core.layers) - 1)]
    agrees: list[list[torch.Tensor]] = [[] for _ in confidences]
    for batch in batches:
        text_len = batch["input_ids"].shape[1]
        with captured_layer_outputs(model) as layer_outputs:
            final = model(batch).logits.argmax(-1)
        keep = batch["labels"][:, 1:] != IGNORE_INDEX
        for index, hidden in enumerate(layer_outputs[:-1]):
            probs = exit_logits(model, hidden[:, -text_len:]).float().softmax(-1)[:, :-1]
            confidence, token = probs.max(-1)
            confidences[index].append(confidence[keep])
            agrees[index].append((token == final[:, :-1])[keep])
    thresholds = []
    for conf, agree in zip(confidences, agrees):
        conf, agree = torch.cat(conf), torch.cat(agree).float()
        chosen = 1.01
        for t in sorted(grid, reverse=True):
            exits = conf >= t
            if not exits.any():
                continue  # nothing that confident: says nothing about this threshold
            if float(agree[exits].mean()) < agreement:
                break
            chosen = t
        thresholds.append(chosen)
    return thresholds


def _exit_step(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
               position: torch.Tensor, cache: DynamicCache, rotary, thresholds: list[float],
               min_layer: int, alive: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One token through the core layer by layer; the logits and the depth it exited at."""
    layers = model.core.layers
    num_layers = len(layers)
    for index, layer in enumerate(layers):
        hidden = layer(hidden, attention_mask=mask, position_ids=position, cache=cache,
                       use_cache=True, position_embeddings=rotary)
        depth = index + 1
        if depth == num_layers:
            break
        if depth < min_layer or thresholds[index] > 1:
            continue
        logits = exit_logits(model, hidden[:, -1]).float()
        confidence = F.softmax(logits, -1).amax(-1)
        if bool((confidence[alive] >= thresholds[index]).all()):
            _propagate_kv(model, hidden, range(depth, num_layers), cache, rotary)
            return logits, depth
    return exit_logits(model, hidden[:, -1]).float(), num_layers


@torch.no_grad()
def generate_early_exit(model: nn.Module, threshold: float | Sequence[float] = 0.9,
                        min_layer: int = 1, max_new_tokens: int = 32,
                        **media: torch.Tensor) -> EarlyExitResult:
    """Greedy captions from ``media`` (image/audio/video tensors) with per-token early exit;
    ``threshold`` is one confidence for every exit or one per exit (``calibrate_thresholds``)."""
    model.eval()
    core = model.core
    num_layers = len(core.layers)
    thresholds = layer_thresholds(threshold, num_layers)
    size = next(iter(media.values())).shape[0]
    device = model.modality_embedding.weight.device
    batch = {"input_ids": torch.full((size, 1), BOS_ID, device=device),
             "attention_mask": torch.ones(size, 1, dtype=torch.long, device=device)}
    batch.update({k: v.to(device) for k, v in media.items() if k in MODALITIES})
    embeds, key_valid, positions, _ = model.fuse(batch)
    cache = DynamicCache(config=core.config)
    hidden = core(inputs_embeds=embeds, attention_mask=attention_mask_4d(key_valid, embeds.shape[1]),
                  position_ids=positions, cache=cache, use_cache=True).last_hidden_state
    logits = model.lm_head(hidden[:, -1]).float()
    finished = torch.zeros(size, dtype=torch.bool, device=device)
    tokens, logprobs, alive, depths = [], [], [], []
    depth = num_layers
    for _ in range(max_new_tokens):
        next_token = logits.argmax(-1)
        logprob = logits.log_softmax(-1).gather(1, next_token[:, None])[:, 0]
        next_token = torch.where(finished, torch.full_like(next_token, PAD_ID), next_token)
        tokens.append(next_token)
        logprobs.append(logprob)
        alive.append(~finished)
        depths.append(depth)
        finished = finished | (next_token == EOS_ID)
        if bool(finished.all()):
            break
        hidden = core.embed_tokens(next_token)[:, None].to(embeds.dtype)
        position = positions[:, -1:] + 1
        positions = torch.cat([positions, position], dim=1)
        key_valid = torch.cat([key_valid, key_valid.new_ones(size, 1)], dim=1)
        mask = create_causal_mask(config=core.config, inputs_embeds=hidden,
                                  attention_mask=attention_mask_4d(key_valid, 1), cache=cache,
                                  position_ids=position)
        rotary = core.rotary_emb(hidden, position_ids=position)
        logits, depth = _exit_step(model, hidden, mask, position, cache, rotary, thresholds,
                                   min_layer, ~finished)
    out = generations(torch.stack(tokens, 1), torch.stack(logprobs, 1), torch.stack(alive, 1),
                      tokenizer=model.tokenizer)
    counted = [d for d, a in zip(depths, alive) for _ in range(int(a.sum()))]
    return EarlyExitResult(out, sum(counted) / max(len(counted), 1), num_layers)

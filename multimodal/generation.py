"""Text generation for ``MultimodalSLM`` (greedy or sampled, with the core's KV cache).

``MultimodalSLM.generate`` and ``generate_text`` call into this module (as ``transformers`` keeps
its ``generation/`` apart from the models): prompts are left-padded behind the media, the first
step runs the whole ``[media | <bos> prompt]`` sequence, every later step feeds one token and
reuses the ``DynamicCache`` (or recomputes everything with ``use_cache=False``; same result).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from multimodal.batch import BOS_ID, EOS_ID, MODALITIES, PAD_ID
from multimodal.masks import attention_mask_4d

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer
    from torch import nn


@dataclass
class Generation:
    token_ids: list[int]  # generated ids, without the closing <eos>
    mean_logprob: float  # confidence: mean log p(token) under the model (incl. <eos>), <= 0
    finished: bool  # True when the model emitted <eos> within max_new_tokens
    text: str | None = None  # decoded token_ids, when a tokenizer is known


def prompt_lists(prompt_ids: Any, media: dict[str, torch.Tensor]) -> list[list[int]]:
    """One id list per sample (empty prompts when only media are given)."""
    if prompt_ids is not None:
        return [list(map(int, row)) for row in prompt_ids]
    if not media:
        raise ValueError("generate needs at least one of image, audio, video or prompt_ids")
    return [[] for _ in range(next(iter(media.values())).shape[0])]


def prompt_batch(prompts: list[list[int]], media: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The model batch: ``[<pad>... <bos> prompt]`` left-padded (masked), plus the media."""
    width = max(len(p) for p in prompts) + 1
    text = torch.full((len(prompts), width), PAD_ID, dtype=torch.long, device=device)
    text_valid = torch.zeros_like(text)
    for row, prompt in enumerate(prompts):
        text[row, width - len(prompt) - 1:] = torch.tensor([BOS_ID, *prompt], device=device)
        text_valid[row, width - len(prompt) - 1:] = 1
    batch = {"input_ids": text, "attention_mask": text_valid}
    batch.update({name: value.to(device) for name, value in media.items()})
    return batch


def choose(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """The next token per row: argmax, or a sample from ``softmax(logits / T)`` within top-k."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / max(temperature, 1e-6)
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def decode(model: nn.Module, batch: dict[str, torch.Tensor], max_new_tokens: int,
           do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
           generator: torch.Generator | None = None, use_cache: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, their log-probabilities and the alive mask, each ``[B, steps]``."""
    embeds, key_valid, positions, _ = model.fuse(batch)
    b = embeds.shape[0]
    core = model.core
    cache = DynamicCache(config=core.config) if use_cache else None
    step_embeds, step_positions = embeds, positions
    finished = torch.zeros(b, dtype=torch.bool, device=embeds.device)
    tokens, logprobs, alive = [], [], []
    for _ in range(max_new_tokens):
        hidden = core(inputs_embeds=step_embeds,
                      attention_mask=attention_mask_4d(key_valid, step_embeds.shape[1]),
                      position_ids=step_positions, cache=cache, use_cache=use_cache
                      ).last_hidden_state
        logits = model.lm_head(hidden[:, -1]).float()
        next_token = choose(logits, do_sample, temperature, top_k, generator)
        logprob = logits.log_softmax(-1).gather(1, next_token[:, None])[:, 0]
        next_token = torch.where(finished, torch.full_like(next_token, PAD_ID), next_token)
        tokens.append(next_token)
        logprobs.append(logprob)
        alive.append(~finished)
        finished = finished | (next_token == EOS_ID)
        if bool(finished.all()):
            break
        new_embed = core.embed_tokens(next_token)[:, None].to(embeds.dtype)
        new_position = positions[:, -1:] + 1
        embeds = torch.cat([embeds, new_embed], dim=1)
        positions = torch.cat([positions, new_position], dim=1)
        key_valid = torch.cat([key_valid, key_valid.new_ones(b, 1)], dim=1)
        step_embeds, step_positions = ((new_embed, new_position) if use_cache
                                       else (embeds, positions))
    return torch.stack(tokens, 1), torch.stack(logprobs, 1), torch.stack(alive, 1)


def generations(tokens: torch.Tensor, logprobs: torch.Tensor, alive: torch.Tensor,
                tokenizer: Tokenizer | None = None) -> list[Generation]:
    """``Generation`` per row: ids up to ``<eos>``, mean log-probability, finished flag, text."""
    out = []
    for row_tokens, row_logprobs, row_alive in zip(tokens.tolist(), logprobs, alive):
        kept = [t for t, a in zip(row_tokens, row_alive.tolist()) if a]
        finished = bool(kept) and kept[-1] == EOS_ID
        ids = kept[:-1] if finished else kept
        mean_logprob = float(row_logprobs[row_alive].mean()) if kept else 0.0
        text = tokenizer.decode(ids) if tokenizer is not None else None
        out.append(Generation(ids, mean_logprob, finished, text))
    return out


@torch.no_grad()
def generate(model: nn.Module, image: torch.Tensor | None = None,
             audio: torch.Tensor | None = None, video: torch.Tensor | None = None,
             prompt_ids: torch.Tensor | list[list[int]] | None = None, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True
             ) -> list[Generation]:
    """``MultimodalSLM.generate`` (see there); the model is in eval mode while it runs."""
    media = {name: value for name, value in zip(MODALITIES, (image, audio, video))
             if value is not None}
    prompts = prompt_lists(prompt_ids, media)
    batch = prompt_batch(prompts, media, model.lm_head.weight.device)
    was_training = model.training
    model.eval()
    try:
        steps = decode(model, batch, max_new_tokens, do_sample, temperature, top_k, generator,
                       use_cache)
    finally:
        model.train(was_training)
    return generations(*steps, tokenizer=model.tokenizer)


def generate_text(model: nn.Module, tokenizer: Tokenizer | None = None,
                  prompt: str | list[str] | None = None, **kwargs: Any) -> list[Generation]:
    """``generate`` with string prompts in and decoded ``.text`` out (``tokenizer`` defaults to
    ``model.tokenizer``). A single string prompt is used for every sample."""
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError("generate_text needs a tokenizer (argument or model.tokenizer)")
    if prompt is not None:
        media = [kwargs.get(name) for name in MODALITIES if kwargs.get(name) is not None]
        prompts = [prompt] * (media[0].shape[0] if media else 1) if isinstance(prompt, str) \
            else list(prompt)
        kwargs["prompt_ids"] = [tokenizer.encode(p, add_special_tokens=False).ids
                                for p in prompts]
    out = generate(model, **kwargs)
    for generation in out:
        generation.text = tokenizer.decode(generation.token_ids)
    return out

"""Attention masks and rotary positions: one place for training, prefill and decoding."""

from __future__ import annotations

import torch

def attention_mask_4d(key_valid: torch.Tensor, query_len: int) -> torch.Tensor:
    """Boolean ``[B, 1, query_len, K]`` mask (True = may attend) for the last ``query_len`` of
    ``K`` positions: causal, never onto an invalid key (absent media, padding), and every query
    always sees itself so no row is empty (an all-masked row would give NaN in SDPA)."""
    total = key_valid.shape[1]
    query_pos = torch.arange(total - query_len, total, device=key_valid.device)[:, None]
    key_pos = torch.arange(total, device=key_valid.device)[None, :]
    allowed = (key_pos <= query_pos)[None] & key_valid[:, None, :]
    allowed = allowed | (key_pos == query_pos)[None]
    return allowed[:, None]


def position_ids(key_valid: torch.Tensor) -> torch.Tensor:
    """Rotary positions that count real tokens only: absent media slots and padding take no
    position, so a sample's text sits right after its present media (a flagged-absent modality
    is then exactly like leaving it out) and left-padded prompts count from the same place."""
    return (key_valid.long().cumsum(1) - 1).clamp(min=0)

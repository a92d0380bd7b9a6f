"""Calibration batches: a few model batches decoded from the training shards (local or S3)."""

from __future__ import annotations

import torch

from multimodal.batch import MODALITIES, TEXT_KEYS, present_key

BATCH_KEYS = (*TEXT_KEYS, *MODALITIES, *(present_key(m) for m in MODALITIES))


def calibration_batches(model, data_uri: str, num_batches: int = 4, batch_size: int = 16
                        ) -> list[dict[str, torch.Tensor]]:
    """Up to ``num_batches`` decoded batches of the shards at ``data_uri`` (written by
    ``slm-make-shards``), tokenized with the model's tokenizer, invalid samples dropped."""
    from multimodal.data.shard_reader import iter_model_batches

    if model.tokenizer is None:
        raise ValueError("calibration needs the model's tokenizer.json next to its weights")
    batches = [{k: read.batch[k].contiguous() for k in BATCH_KEYS}  # absent media: real zeros
               for read in iter_model_batches(data_uri, model.cfg.media, model.tokenizer, batch_size,
                                              max_samples=num_batches * batch_size)]
    if not batches:
        raise ValueError(f"{data_uri}: no decodable samples for calibration")
    return batches

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


def synthetic_batches(model, num_batches: int = 2, batch_size: int = 8, text_len: int = 8,
                      seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches of random media (every modality present) and random text, for scores that need
    activations when no calibration data is given (layer pruning of an untrained model)."""
    from multimodal.batch import BOS_ID

    media, vocab = model.cfg.media, model.cfg.core.vocab_size
    generator = torch.Generator().manual_seed(seed)
    shapes = {"image": (3, media.image_size, media.image_size),
              "audio": (media.audio_n_mels, media.audio_frames),
              "video": (media.video_frames, 3, media.video_size, media.video_size)}
    batches = []
    for _ in range(num_batches):
        ids = torch.randint(4, vocab, (batch_size, text_len), generator=generator)
        ids[:, 0] = BOS_ID
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for name in MODALITIES:
            batch[name] = torch.randn(batch_size, *shapes[name], generator=generator)
            batch[present_key(name)] = torch.ones(batch_size, dtype=torch.bool)
        batches.append(batch)
    return batches

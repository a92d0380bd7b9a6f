"""The batch contract shared by the data pipeline and the model.

A batch is a dict of fixed-shape arrays (numpy out of Ray Data, torch tensors in the model):

| key                | dtype   | shape                       | meaning                                          |
|--------------------|---------|-----------------------------|--------------------------------------------------|
| ``input_ids``      | int64   | ``[B, L]``                  | ``<bos> prompt text <eos>`` then ``<pad>``       |
| ``attention_mask`` | int64   | ``[B, L]``                  | 1 on real tokens, 0 on padding                   |
| ``labels``         | int64   | ``[B, L]``                  | ``input_ids`` where the loss applies, else -100  |
| ``image``          | float32 | ``[B, 3, S, S]``            | normalised RGB, zeros when absent                |
| ``audio``          | float32 | ``[B, n_mels, T]``          | log-mel spectrogram, zeros when absent           |
| ``video``          | float32 | ``[B, F, 3, V, V]``         | normalised RGB frames, zeros when absent         |
| ``<m>_present``    | bool    | ``[B]``                     | the sample really has modality ``m``             |

``L`` = ``MediaSpec.max_text_tokens``; ``S``, ``n_mels``, ``T``, ``F``, ``V`` come from the same
``MediaSpec``. Labels are *not* shifted: the model shifts them, so ``labels[:, t]`` is the target the
model predicts from position ``t - 1``. Only the caption/text tokens (and the closing ``<eos>``) carry
labels; ``<bos>``, the prompt and padding are -100.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from multimodal.config import MediaSpec

MODALITIES: tuple[str, ...] = ("image", "audio", "video")
TEXT_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "labels")

IGNORE_INDEX = -100
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def present_key(modality: str) -> str:
    """Name of the presence-mask column for ``modality``."""
    return f"{modality}_present"


def batch_shapes(spec: "MediaSpec", batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of every array in a batch of ``batch_size`` samples under ``spec``."""
    b = batch_size
    shapes: dict[str, tuple[int, ...]] = {key: (b, spec.max_text_tokens) for key in TEXT_KEYS}
    shapes["image"] = (b, 3, spec.image_size, spec.image_size)
    shapes["audio"] = (b, spec.audio_n_mels, spec.audio_frames)
    shapes["video"] = (b, spec.video_frames, 3, spec.video_size, spec.video_size)
    for modality in MODALITIES:
        shapes[present_key(modality)] = (b,)
    return shapes


def empty_text(spec: "MediaSpec", batch_size: int) -> dict[str, np.ndarray]:
    """The text keys of ``batch_size`` padding samples: all ``PAD_ID``, no attention, labels ignored."""
    shape = (batch_size, spec.max_text_tokens)
    return {"input_ids": np.full(shape, PAD_ID, dtype=np.int64),
            "attention_mask": np.zeros(shape, dtype=np.int64),
            "labels": np.full(shape, IGNORE_INDEX, dtype=np.int64)}


def empty_batch(spec: "MediaSpec", batch_size: int) -> dict[str, np.ndarray]:
    """A batch of text-only padding samples: every modality absent, every label ignored."""
    shapes = batch_shapes(spec, batch_size)
    batch = empty_text(spec, batch_size)
    for modality in MODALITIES:
        batch[modality] = np.zeros(shapes[modality], dtype=np.float32)
        batch[present_key(modality)] = np.zeros(shapes[present_key(modality)], dtype=bool)
    return batch

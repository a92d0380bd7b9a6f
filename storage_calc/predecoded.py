"""Pre-decoded size of a corpus: what ``slm-make-shards --decode PRESET`` would store (pure arithmetic).

A pre-decoded sample's size depends only on the preset's media spec, not on the source file:

- image: uint8 RGB ``3 x S x S`` bytes;
- audio: float16 log-mel ``n_mels x frames`` x 2 bytes;
- video: uint8 RGB ``F x 3 x V x V`` bytes;
- text: the text itself (kept for evaluation) plus int32 token ids of ``<bos> text <eos>``, cut
  to ``max_text_tokens``.

The spec comes from ``multimodal.config`` (pydantic only: no torch or Ray import).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage_calc.estimate import MODALITIES, StorageEstimate

TOKEN_ID_BYTES = 4  # int32
AUDIO_VALUE_BYTES = 2  # float16


@dataclass(frozen=True)
class PredecodedEstimate:
    """Per-modality bytes of one pre-decoded sample and of the whole corpus, for one preset."""

    preset: str
    spec: dict[str, Any]
    per_sample: dict[str, float]
    totals: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.totals.values())

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "media_spec": self.spec, "total_bytes": self.total_bytes,
                "modalities": {m: {"avg_bytes": self.per_sample[m], "bytes": self.totals[m]} for m in MODALITIES}}


def sample_bytes(preset_name: str, text_bytes: float, text_tokens: float) -> tuple[dict[str, Any], dict[str, float]]:
    """``(media spec, bytes of one pre-decoded sample per modality)`` for ``preset_name``."""
    from multimodal.config import PRESETS, preset

    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    spec = preset(preset_name).media
    frames = int(round(spec.audio_sample_rate * spec.audio_seconds)) // spec.audio_hop_length + 1
    ids = min(text_tokens + 2, spec.max_text_tokens)
    return spec.model_dump(), {
        "text": text_bytes + TOKEN_ID_BYTES * ids,
        "image": 3 * spec.image_size ** 2,
        "audio": spec.audio_n_mels * frames * AUDIO_VALUE_BYTES,
        "video": spec.video_frames * 3 * spec.video_size ** 2,
    }


def predecoded_estimate(storage: StorageEstimate, preset_name: str, tokens_per_word: float) -> PredecodedEstimate:
    """The pre-decoded size of ``storage``'s samples under ``preset_name``'s media spec."""
    text = storage.row("text")
    words = text.avg_bytes / storage.assumptions.bytes_per_word if text.count else 0.0
    spec, per_sample = sample_bytes(preset_name, text.avg_bytes, words * tokens_per_word)
    totals = {m: int(round(storage.row(m).count * per_sample[m])) for m in MODALITIES}
    return PredecodedEstimate(preset_name, spec, per_sample, totals)


__all__ = ["PredecodedEstimate", "predecoded_estimate", "sample_bytes"]

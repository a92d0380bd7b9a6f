"""Storage arithmetic: counts per modality times average sizes (pure, no I/O).

The defaults are the seed's: 100 words per text at 4 bytes per word, 500 KB per image, 5 MB per
audio clip and 20 MB per video, in decimal units (1 GB = 10^9 bytes). For the seed's corpus
(1e6 texts, 1e5 images, 5e4 audio clips, 2e4 videos) that is 0.4 + 50 + 250 + 400 = 700.4 GB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from storage_calc.measure import Measurement

MODALITIES: tuple[str, ...] = ("text", "image", "audio", "video")
#: How the table names each modality (the seed's words).
LABELS: dict[str, str] = {"text": "text", "image": "images", "audio": "audio", "video": "video",
                          "other": "other"}


@dataclass(frozen=True)
class Assumptions:
    """Average sizes used when counts are given instead of measured."""

    words_per_text: float = 100.0
    bytes_per_word: float = 4.0
    image_bytes: int = 500 * 10**3
    audio_bytes: int = 5 * 10**6
    video_bytes: int = 20 * 10**6

    @property
    def text_bytes(self) -> float:
        """Bytes of one text sample: words × bytes per word."""
        return self.words_per_text * self.bytes_per_word

    def avg_bytes(self, modality: str) -> float:
        """The assumed average size of one sample of ``modality``."""
        return {"text": self.text_bytes, "image": self.image_bytes,
                "audio": self.audio_bytes, "video": self.video_bytes}[modality]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text_bytes": self.text_bytes, "units": "decimal (1 GB = 10^9 bytes)"}


@dataclass(frozen=True)
class ModalityEstimate:
    """One row of the table: how many samples, their average size and their total."""

    modality: str
    count: int
    avg_bytes: float
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "avg_bytes": self.avg_bytes, "bytes": self.total_bytes}


@dataclass(frozen=True)
class StorageEstimate:
    """Bytes per modality and in total, with where the numbers came from."""

    rows: tuple[ModalityEstimate, ...]
    assumptions: Assumptions
    source: str = "assumed"  # "assumed", or the measured URI's source ("listing", "shard-summary")
    uri: str | None = None
    #: bytes that belong to no modality (other files, shard overhead); counted in the total
    other_bytes: int = 0
    other_count: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        return sum(row.total_bytes for row in self.rows) + self.other_bytes

    @property
    def total_count(self) -> int:
        return sum(row.count for row in self.rows)

    def row(self, modality: str) -> ModalityEstimate:
        for row in self.rows:
            if row.modality == modality:
                return row
        return ModalityEstimate(modality, 0, self.assumptions.avg_bytes(modality), 0)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": self.source,
            "modalities": {row.modality: row.to_dict() for row in self.rows},
            "total_bytes": self.total_bytes,
            "total_count": self.total_count,
            "assumptions": self.assumptions.to_dict(),
        }
        if self.uri is not None:
            data["uri"] = self.uri
        if self.other_bytes or self.other_count:
            data["other"] = {"count": self.other_count, "bytes": self.other_bytes}
        if self.notes:
            data["notes"] = list(self.notes)
        return data


def estimate(text: int = 0, images: int = 0, audio: int = 0, video: int = 0,
             assumptions: Assumptions | None = None) -> StorageEstimate:
    """Storage for the given sample counts at the assumed average sizes."""
    assumptions = assumptions or Assumptions()
    counts = {"text": text, "image": images, "audio": audio, "video": video}
    rows = []
    for modality in MODALITIES:
        count = int(counts[modality])
        if count < 0:
            raise ValueError(f"{modality} count must be non-negative, got {count}")
        avg = assumptions.avg_bytes(modality)
        rows.append(ModalityEstimate(modality, count, float(avg), int(round(count * avg))))
    return StorageEstimate(tuple(rows), assumptions)


def from_measurement(measurement: Measurement,
                     assumptions: Assumptions | None = None) -> StorageEstimate:
    """The same table built from what ``storage_calc.measure.measure`` found at a URI."""
    assumptions = assumptions or Assumptions()
    rows = []
    for modality in MODALITIES:
        stats = measurement.modalities.get(modality)
        count, total = (stats.count, stats.bytes) if stats else (0, 0)
        rows.append(ModalityEstimate(modality, count, total / count if count else 0.0, total))
    modality_bytes = sum(row.total_bytes for row in rows)
    other = measurement.modalities.get("other")
    other_count = other.count if other else 0
    other_bytes = max(0, measurement.total_bytes - modality_bytes)
    return StorageEstimate(tuple(rows), assumptions, source=measurement.source,
                           uri=measurement.uri, other_bytes=other_bytes,
                           other_count=other_count, notes=measurement.notes)

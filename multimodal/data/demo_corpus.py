"""The demo corpus: captions a model can only get right by looking at (or listening to) the media.

- images: a coloured shape, ``"a red circle"`` (6 colours x 3 shapes), JPEG or PNG;
- audio: 1 to 3 tones from a fixed pentatonic scale, ``"notes C E G"``, WAV or FLAC;
- video: a coloured square moving one way, ``"a blue square moving left"`` (6 x 4), MP4;
- text only: short sentences about the same world, so the core also learns plain text.

``make_demo_corpus`` writes the media and one manifest per split (``train.csv``, ``val.csv``,
``test.csv``) that ``slm-make-shards`` packs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from multimodal.data import synthetic

DEMO_SCALE: tuple[str, ...] = ("C", "D", "E", "G", "A")
TEXT_SENTENCES: tuple[str, ...] = (
    "shapes come in many colours", "a square has four sides", "a triangle has three sides",
    "a circle has no corners", "music is made of notes", "a video is a series of frames",
    "the square moves across the frame", "red and blue make purple", "notes rise and fall",
    "every picture shows one shape",
)
MANIFEST_FIELDS = ("id", "text", "image", "audio", "video")


def _sample_rows(kind: str, count: int, start: int, rng: np.random.Generator, media_dir: Path,
                 image_size: int, video_size: int) -> list[dict[str, str]]:
    rows = []
    for index in range(start, start + count):
        sample_id = f"{kind}-{index:05d}"
        row = {"id": sample_id, "text": "", "image": "", "audio": "", "video": ""}
        if kind == "image":
            colour = str(rng.choice(list(synthetic.COLOURS)))
            shape = str(rng.choice(synthetic.SHAPES))
            path = media_dir / f"{sample_id}{'.jpg' if index % 2 else '.png'}"
            synthetic.write_image(path, colour, shape, size=image_size, rng=rng)
            row.update(text=synthetic.image_caption(colour, shape), image=str(path.relative_to(media_dir.parent)))
        elif kind == "audio":
            notes = [str(n) for n in rng.choice(DEMO_SCALE, size=int(rng.integers(1, 4)))]
            path = media_dir / f"{sample_id}{'.flac' if index % 2 else '.wav'}"
            synthetic.write_audio(path, notes, sample_rate=16000, seconds=1.5)
            row.update(text=synthetic.audio_caption(notes), audio=str(path.relative_to(media_dir.parent)))
        elif kind == "video":
            colour = str(rng.choice(list(synthetic.COLOURS)))
            direction = str(rng.choice(synthetic.DIRECTIONS))
            path = media_dir / f"{sample_id}.mp4"
            synthetic.write_video(path, colour, direction, frames=8, size=video_size, fps=8)
            row.update(text=synthetic.video_caption(colour, direction), video=str(path.relative_to(media_dir.parent)))
        else:
            row["text"] = str(rng.choice(TEXT_SENTENCES))
        rows.append(row)
    return rows


def make_demo_corpus(out_dir: str | Path, per_modality: dict[str, int] | None = None,
                     splits: dict[str, float] | None = None, seed: int = 0, image_size: int = 48,
                     video_size: int = 32) -> dict[str, Path]:
    """Write the media and ``<split>.csv`` manifests into ``out_dir``; returns the manifest paths.

    ``per_modality`` gives the sample count per kind over all splits (defaults suit a
    10-minute CPU demo); ``splits`` the share of each split.
    """
    out_dir = Path(out_dir)
    media_dir = out_dir / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    per_modality = per_modality or {"image": 600, "audio": 600, "video": 600, "text": 120}
    splits = splits or {"train": 0.8, "val": 0.1, "test": 0.1}
    rng = np.random.default_rng(seed)
    manifests: dict[str, Path] = {}
    by_split: dict[str, list[dict[str, str]]] = {name: [] for name in splits}
    for kind, total in per_modality.items():
        start = 0
        for split, share in splits.items():
            count = int(round(total * share))
            by_split[split] += _sample_rows(kind, count, start, rng, media_dir, image_size, video_size)
            start += count
    for split, rows in by_split.items():
        order = rng.permutation(len(rows))
        path = out_dir / f"{split}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows[i] for i in order)
        manifests[split] = path
    return manifests

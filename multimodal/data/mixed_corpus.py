"""A corpus like ordinary scraped media, written with ``synthetic.py``'s real encoders.

``make_mixed_corpus(out_dir, per_modality)`` writes a JSONL manifest (``slm-make-shards`` input)
whose media vary as a user's do: images as JPEG / PNG / WebP, RGB / RGBA / grey / CMYK, from
64x64 to 1280x720 with photo-like texture; speech-like tone clips as WAV / FLAC / MP3 / OGG at
8-44.1 kHz, mono and stereo, 1-4 s; videos as MP4 / WebM / AVI / MKV, 64-256 px, 12-24 frames;
text-only rows; and a few corrupt files (empty, random bytes, truncated). Used by
``jobs/bench_data_wait.py`` (issue 13's data-wait goal).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from multimodal.data import synthetic

# (extension, pixel mode, width, height)
IMAGE_KINDS = ((".jpg", "RGB", 640, 480), (".png", "RGBA", 256, 256), (".webp", "RGB", 1280, 720),
               (".jpg", "CMYK", 320, 240), (".png", "L", 64, 64), (".jpg", "RGB", 1280, 720))
# (extension, sample rate, channels, seconds)
AUDIO_KINDS = ((".wav", 16000, 1, 2.0), (".flac", 44100, 2, 4.0), (".mp3", 22050, 1, 3.0),
               (".ogg", 8000, 1, 1.0))
# (extension, side, frames)
VIDEO_KINDS = ((".mp4", 128, 24), (".webm", 64, 12), (".avi", 256, 16), (".mkv", 128, 12))
CORRUPT_EVERY = 25  # one corrupt file per this many media files of a modality
TEXTS = ("a short sentence with no media", "the cat sat on the mat", "notes rise and fall",
         "every picture shows one shape")


def _image(path: Path, index: int, rng: np.random.Generator) -> str:
    suffix, mode, width, height = IMAGE_KINDS[index % len(IMAGE_KINDS)]
    colour, shape = str(rng.choice(list(synthetic.COLOURS))), str(rng.choice(synthetic.SHAPES))
    synthetic.write_image(path.with_suffix(suffix), colour, shape, size=width, height=height, mode=mode,
                          rng=rng, textured=True)
    return synthetic.image_caption(colour, shape)


def _audio(path: Path, index: int, rng: np.random.Generator) -> str:
    suffix, rate, channels, seconds = AUDIO_KINDS[index % len(AUDIO_KINDS)]
    notes = [str(n) for n in rng.choice(list(synthetic.NOTES), size=int(rng.integers(2, 5)))]
    synthetic.write_audio(path.with_suffix(suffix), notes, sample_rate=rate, seconds=seconds,
                          channels=channels, noise=0.02, seed=index)
    return synthetic.audio_caption(notes)


def _video(path: Path, index: int, rng: np.random.Generator) -> str:
    suffix, side, frames = VIDEO_KINDS[index % len(VIDEO_KINDS)]
    colour, direction = str(rng.choice(list(synthetic.COLOURS))), str(rng.choice(synthetic.DIRECTIONS))
    synthetic.write_video(path.with_suffix(suffix), colour, direction, frames=frames, size=side,
                          textured=True, bit_rate=600_000, seed=index)
    return synthetic.video_caption(colour, direction)


WRITERS = {"image": (_image, ".jpg"), "audio": (_audio, ".wav"), "video": (_video, ".mp4")}


def make_mixed_corpus(out_dir: str | Path, per_modality: int = 48, text_rows: int | None = None,
                      seed: int = 0, corrupt_every: int = CORRUPT_EVERY) -> Path:
    """Write the media under ``out_dir/media`` and ``out_dir/train.jsonl``; returns the manifest.

    ``per_modality`` images, audio clips and videos each (every ``corrupt_every``-th one corrupt),
    plus ``text_rows`` text-only rows (default ``per_modality // 5``)."""
    out_dir = Path(out_dir)
    media = out_dir / "media"
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for modality, (writer, corrupt_suffix) in WRITERS.items():
        for index in range(per_modality):
            stem = media / f"{modality}-{index:05d}"
            if index % corrupt_every == corrupt_every - 1:
                kind = ("empty", "random")[index // corrupt_every % 2]
                path = stem.with_suffix(corrupt_suffix)
                path.write_bytes(synthetic.corrupt_bytes(kind, seed=index))
                rows.append({"text": f"a broken {modality} file", modality: path.relative_to(out_dir).as_posix()})
                continue
            caption = writer(stem, index, rng)
            path = next(media.glob(f"{stem.name}.*"))
            rows.append({"text": caption, modality: path.relative_to(out_dir).as_posix()})
    for index in range(per_modality // 5 if text_rows is None else text_rows):
        rows.append({"text": TEXTS[index % len(TEXTS)]})
    order = rng.permutation(len(rows))
    manifest = out_dir / "train.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"s{i:05d}", **rows[j]}) + "\n" for i, j in enumerate(order)))
    return manifest


__all__ = ["make_mixed_corpus", "IMAGE_KINDS", "AUDIO_KINDS", "VIDEO_KINDS"]

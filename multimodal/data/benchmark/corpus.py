"""Generated benchmark corpora: encoded media (``synthetic.py``'s writers), packed raw and
pre-decoded into local shards, cached between runs, and uploaded to a bucket per run.

Every modality's corpus is ``DISTINCT_FILES`` encoded files (photo-like JPEGs, noisy 44.1 kHz
stereo FLAC, textured MPEG-4 MP4) cycled over ``samples`` manifest rows, so decode costs are
those of real files while generation stays quick.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from multimodal import fs
from multimodal.data import synthetic

DISTINCT_FILES = 64  # distinct encoded files per modality; rows cycle through them


@dataclass(frozen=True)
class MediaParams:
    """What the source files look like, and the shard size."""

    image_px: int = 256
    video_px: int = 128
    video_frames: int = 24
    audio_seconds: float = 4.0
    shard_mb: float = 16.0


def write_media(modality: str, index: int, root: Path, params: MediaParams) -> tuple[str, str]:
    """One encoded file (JPEG / 44.1 kHz stereo FLAC / MPEG-4 MP4) under ``root``; (name, caption)."""
    rng = np.random.default_rng(index)
    colour = list(synthetic.COLOURS)[index % len(synthetic.COLOURS)]
    if modality == "image":
        shape = synthetic.SHAPES[index % 3]
        path = synthetic.write_image(root / f"img{index}.jpg", colour, shape, size=params.image_px, rng=rng,
                                     textured=True)
        return path.name, synthetic.image_caption(colour, shape)
    if modality == "audio":
        notes = [list(synthetic.NOTES)[(index + k) % 7] for k in range(4)]
        path = synthetic.write_audio(root / f"aud{index}.flac", notes, 44100, params.audio_seconds, channels=2,
                                     noise=0.02, seed=index)
        return path.name, synthetic.audio_caption(notes)
    direction = synthetic.DIRECTIONS[index % 4]
    path = synthetic.write_video(root / f"vid{index}.mp4", colour, direction, frames=params.video_frames,
                                 size=params.video_px, fps=12, textured=True, bit_rate=600_000, seed=index)
    return path.name, synthetic.video_caption(colour, direction)


def _captions(manifest: Path) -> list[str]:
    return [json.loads(line)["text"] for line in manifest.open()]


def cached_shards(modality: str, samples: int, params: MediaParams, cache_dir: str | Path,
                  say: Callable[[str], None] = print) -> tuple[Path, list[str]]:
    """Local raw Parquet shards (``make_shards``) of ``samples`` rows, made once per parameter
    set under ``cache_dir``; returns (shard dir, captions)."""
    from multimodal.data.make_shards import make_shards

    key = hashlib.sha1(json.dumps({"m": modality, "n": samples, **asdict(params), "distinct": DISTINCT_FILES,
                                   "v": 4}, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() / f"{modality}-{samples}-{key}"
    shards_dir, media_dir = root / "shards", root / "media"
    manifest = media_dir / "manifest.jsonl"
    if (shards_dir / "_dataset.json").exists():
        return shards_dir, _captions(manifest)
    shutil.rmtree(root, ignore_errors=True)
    media_dir.mkdir(parents=True)
    started = time.perf_counter()
    files = [write_media(modality, i, media_dir, params) for i in range(min(samples, DISTINCT_FILES))]
    with manifest.open("w") as handle:
        for i in range(samples):
            name, caption = files[i % len(files)]
            handle.write(json.dumps({"text": caption, modality: name}) + "\n")
    mean_bytes = sum((media_dir / n).stat().st_size for n, _ in files) / len(files)
    target = int(params.shard_mb * 1e6)
    make_shards(str(manifest), str(shards_dir), target_shard_bytes=target,
                row_group_bytes=min(target, 8_000_000), progress=None)
    say(f"generated {modality} corpus in {root} ({time.perf_counter() - started:.1f}s, "
        f"{mean_bytes / 1e3:.1f} kB per encoded file)")
    return shards_dir, _captions(manifest)


def cached_predecoded(raw_dir: Path, preset: str, tok_json: str, params: MediaParams, workers: int = 1,
                      say: Callable[[str], None] = print) -> tuple[Path, float]:
    """Local pre-decoded shards (``slm-make-shards --decode preset``) of the manifest behind
    ``raw_dir`` (``cached_shards``), made once; returns (dir, seconds the pack took)."""
    from multimodal.data.pack_decoded import pack_decoded

    key = hashlib.sha1(f"{preset}\n{tok_json}".encode()).hexdigest()[:10]
    out, record = raw_dir.parent / f"predecoded-{key}", raw_dir.parent / f"predecoded-{key}.json"
    if (out / "_dataset.json").exists() and record.exists():
        return out, json.loads(record.read_text())["pack_s"]
    shutil.rmtree(out, ignore_errors=True)
    target = int(params.shard_mb * 1e6)
    started = time.perf_counter()
    pack_decoded(str(raw_dir.parent / "media" / "manifest.jsonl"), str(out), preset, tokenizer=tok_json,
                 workers=workers, target_shard_bytes=target, row_group_bytes=min(target, 8_000_000),
                 progress=None)
    seconds = time.perf_counter() - started
    record.write_text(json.dumps({"pack_s": seconds}))
    say(f"packed {raw_dir.parent.name} pre-decoded ({preset} spec) in {seconds:.1f}s with {workers} worker(s)")
    return out, seconds


def upload(shards_dir: Path, uri: str) -> tuple[int, int]:
    """Copy the shards + ``_dataset.json`` to ``uri``; returns (files, bytes). The summary goes
    last (readers only trust listed shards)."""
    filesystem, root = fs.filesystem_for(uri)
    names = sorted((p.name for p in shards_dir.iterdir() if p.is_file()), key=lambda n: n == "_dataset.json")
    total = 0
    for name in names:
        data = (shards_dir / name).read_bytes()
        total += len(data)
        with filesystem.open_output_stream(f"{root}/{name}") as out:
            out.write(data)
    return len(names), total


__all__ = ["MediaParams", "DISTINCT_FILES", "write_media", "cached_shards", "cached_predecoded", "upload"]

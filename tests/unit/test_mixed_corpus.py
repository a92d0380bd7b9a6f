"""``data/mixed_corpus.py``: the benchmark corpus holds every format and size it promises, and
each good file decodes with the pipeline's decoders (real codecs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multimodal.config import preset
from multimodal.data.decode import COMPACT_DECODERS, MediaDecodeError
from multimodal.data.mixed_corpus import IMAGE_KINDS, make_mixed_corpus


def test_every_kind_is_written_and_decodes(tmp_path: Path):
    manifest = make_mixed_corpus(tmp_path, per_modality=len(IMAGE_KINDS), text_rows=2)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 3 * len(IMAGE_KINDS) + 2 and len({r["id"] for r in rows}) == len(rows)
    suffixes = {Path(r[m]).suffix for r in rows for m in ("image", "audio", "video") if m in r}
    assert suffixes == {".jpg", ".png", ".webp", ".wav", ".flac", ".mp3", ".ogg", ".mp4", ".webm", ".avi", ".mkv"}
    spec = preset("tiny").media
    for row in rows:
        for modality in ("image", "audio", "video"):
            if modality in row:
                assert COMPACT_DECODERS[modality]((tmp_path / row[modality]).read_bytes(), spec).size > 0


def test_every_corrupt_every_th_file_is_broken(tmp_path: Path):
    manifest = make_mixed_corpus(tmp_path, per_modality=2, text_rows=0, corrupt_every=2)
    broken = [json.loads(line) for line in manifest.read_text().splitlines() if "broken" in line]
    assert len(broken) == 3
    for row in broken:
        modality = next(m for m in ("image", "audio", "video") if m in row)
        with pytest.raises(MediaDecodeError):
            COMPACT_DECODERS[modality]((tmp_path / row[modality]).read_bytes(), preset("tiny").media)

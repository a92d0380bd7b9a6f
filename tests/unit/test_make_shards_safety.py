"""slm-make-shards never damages an existing dataset and reads only what the manifest may name."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from multimodal.data import make_shards as ms
from multimodal.data.media_paths import MediaRefused, read_media, resolve_media
from multimodal.data.schema import read_summary


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "image", "audio", "video"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def corpus(media_dir, tmp_path) -> Path:
    """A manifest folder with a few real media files (copied from the session's media)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("red_circle.jpg", "blue_square.png", "ceg.wav", "blue_left.mp4"):
        shutil.copy(media_dir / name, folder / name)
    return folder


def good_rows(copies: int = 1) -> list[dict]:
    rows = [{"id": "img", "text": "a red circle", "image": "red_circle.jpg"},
            {"id": "png", "text": "a blue square", "image": "blue_square.png"},
            {"id": "aud", "text": "notes", "audio": "ceg.wav"},
            {"id": "vid", "text": "moving", "video": "blue_left.mp4"}]
    return [dict(r, id=f"{r['id']}{i}") for i in range(copies) for r in rows]


def dataset_is_whole(out: Path) -> int:
    """Every shard the summary lists exists and holds the rows it says; returns the row count."""
    summary = read_summary(str(out))
    assert summary is not None
    for shard in summary.shards:
        assert pq.read_metadata(out / shard["path"]).num_rows == shard["rows"]
    return summary.rows


# ------------------------------------------------------------------------------- re-packing

def test_repack_into_a_non_empty_prefix_is_refused(corpus, tmp_path, capsys):
    manifest = write_manifest(corpus / "m.csv", good_rows())
    out = tmp_path / "ds"
    ms.make_shards(str(manifest), str(out), progress=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ms.ManifestError, match="not empty.*--overwrite"):
        ms.make_shards(str(manifest), str(out), progress=None)
    assert ms.main([str(manifest), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_overwrite_leaves_the_old_dataset_whole(corpus, tmp_path):
    out = tmp_path / "ds"
    old = ms.make_shards(str(write_manifest(corpus / "old.csv", good_rows(4))), str(out),
                         target_shard_bytes=20_000, progress=None)
    assert len(old.shards) >= 2
    old_files = {p.name: p.read_bytes() for p in out.iterdir()}
    # the new pack writes several shards, then hits a missing file under --strict
    broken = good_rows(4) + [{"id": "gone", "text": "x", "image": "no_such.jpg"}]
    with pytest.raises(ms.ManifestError, match="missing image"):
        ms.make_shards(str(write_manifest(corpus / "new.csv", broken)), str(out), strict=True,
                       target_shard_bytes=20_000, overwrite=True, progress=None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old_files  # removed only its own files
    assert dataset_is_whole(out) == old.rows


def test_overwrite_publishes_new_names_then_drops_the_old_shards(corpus, tmp_path):
    out = tmp_path / "ds"
    old = ms.make_shards(str(write_manifest(corpus / "old.csv", good_rows(2))), str(out),
                         target_shard_bytes=20_000, progress=None)
    stranger = out / "notes.txt"  # not ours: an overwrite must not delete it
    stranger.write_text("keep me")
    new = ms.make_shards(str(write_manifest(corpus / "new.csv", good_rows(1))), str(out),
                         target_shard_bytes=20_000, overwrite=True, progress=None)
    assert not set(new.shard_names) & set(old.shard_names)
    assert dataset_is_whole(out) == new.rows == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(new.shard_names + ["_dataset.json", "notes.txt"])


# ------------------------------------------------------------------------------ confinement

@pytest.fixture
def secret(tmp_path, monkeypatch) -> Path:
    """A file outside the manifest's folder (also reachable as ~/secret.png)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "secret.png"
    path.write_bytes(b"\x89PNG not really, but private")
    return path


@pytest.mark.parametrize("kind", ["absolute", "tilde", "dotdot", "file-uri", "symlink"])
def test_paths_outside_the_manifest_folder_are_refused(corpus, secret, kind, capsys):
    if kind == "symlink":
        (corpus / "link.png").symlink_to(secret)
    path = {"absolute": str(secret), "tilde": "~/secret.png", "dotdot": "../secret.png",
            "file-uri": f"file://{secret}", "symlink": "link.png"}[kind]
    manifest = write_manifest(corpus / "m.csv", good_rows() + [{"id": "leak", "text": "x", "image": path}])
    summary = ms.make_shards(str(manifest), str(corpus.parent / "out"), progress=None)
    assert summary.rows == 4 and summary.skipped_rows == 1
    assert summary.skipped_by_reason == {"refused": 1}
    with pytest.raises(ms.ManifestError, match=r"m.csv:6: refused image file"):
        ms.make_shards(str(manifest), str(corpus.parent / "strict"), strict=True, progress=None)
    # trusted on request
    trusted = ms.make_shards(str(manifest), str(corpus.parent / "trusted"), allow_outside_paths=True,
                             progress=None)
    assert trusted.rows == 5 and trusted.modalities["image"]["bytes"] > summary.modalities["image"]["bytes"]


def test_an_absolute_path_inside_the_folder_is_fine(corpus, tmp_path):
    manifest = write_manifest(corpus / "m.csv", [{"id": "a", "text": "t", "image": str(corpus / "red_circle.jpg")}])
    assert ms.make_shards(str(manifest), str(tmp_path / "o"), progress=None).rows == 1


@pytest.mark.parametrize("path", ["../other/x.png", "s3://other-bucket/x.png", "s3://bucket/dataset2/x.png",
                                  "/etc/passwd", "~/.aws/credentials", "file:///etc/passwd",
                                  "http://example.com/x.png", "a/../../x.png"])
def test_s3_manifest_paths_stay_in_its_prefix(path):
    with pytest.raises(MediaRefused):
        resolve_media("s3://bucket/dataset", path)


def test_s3_manifest_paths_inside_its_prefix():
    assert resolve_media("s3://bucket/ds", "img/a.png") == "s3://bucket/ds/img/a.png"
    assert resolve_media("s3://bucket/ds", "s3://bucket/ds/img/a.png") == "s3://bucket/ds/img/a.png"
    assert resolve_media("s3://bucket/ds", "img/../b.png") == "s3://bucket/ds/b.png"
    assert resolve_media("s3://bucket/ds", "s3://other/x.png", allow_outside=True) == "s3://other/x.png"


# ----------------------------------------------------------------------------- size, kinds

def test_files_over_max_media_bytes_are_refused_before_reading(corpus, tmp_path, capsys):
    manifest = write_manifest(corpus / "m.csv", good_rows())
    size = (corpus / "blue_left.mp4").stat().st_size
    summary = ms.make_shards(str(manifest), str(tmp_path / "o"), max_media_bytes=size - 1)
    assert summary.skipped_by_reason.get("refused", 0) >= 1
    assert summary.modalities["video"]["count"] == 0
    assert "over the" in capsys.readouterr().err
    code = ms.main([str(manifest), "--out", str(tmp_path / "o2"), "--strict", "--quiet",
                    "--max-media-bytes", str(size - 1)])
    assert code == 2 and not (tmp_path / "o2" / "_dataset.json").exists()


def test_non_regular_files_are_never_read(corpus, tmp_path):
    fifo = corpus / "pipe.wav"
    os.mkfifo(fifo)  # opening a FIFO without a writer would block forever
    rows = good_rows() + [{"id": "zero", "text": "x", "audio": "/dev/zero"},
                          {"id": "fifo", "text": "x", "audio": "pipe.wav"}]
    manifest = write_manifest(corpus / "m.csv", rows)
    summary = ms.make_shards(str(manifest), str(tmp_path / "o"), allow_outside_paths=True, progress=None)
    assert summary.rows == 4 and summary.skipped_by_reason == {"refused": 2}
    with pytest.raises(MediaRefused, match="not a regular file"):
        read_media("/dev/zero")

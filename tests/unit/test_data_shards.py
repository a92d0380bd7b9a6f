"""slm-make-shards to a local folder: summary, splitting, missing files, --strict, atomicity, CLI."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from multimodal.config import preset
from multimodal.data import make_shards as ms
from multimodal.data.loader import CONTRACT_KEYS, STATS_KEYS, batch_stats
from multimodal.data.pipeline import (DatasetBrokenError, ParquetUnitDecoder, SampleProcessor, read_units,
                                      resolve_shards)
from multimodal.data.wire import WireCollate, fill_absent_, normalise_pixels_
from multimodal.data.schema import SCHEMA_VERSION, SHARD_SCHEMA, read_summary
from multimodal.data.tokenizer import train_tokenizer, train_tokenizer_from_dataset
from multimodal.data.webdataset import iter_tar_samples

SPEC = preset("tiny").media


@pytest.fixture(scope="module")
def media(media_dir):
    """The session's folder of real encoded media (tests/conftest.py)."""
    return media_dir


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "prompt", "image", "audio", "video"])
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def sample_rows(media: Path) -> list[dict]:
    return [
        {"id": "img", "text": "a red circle", "image": "red_circle.jpg"},
        {"id": "aud", "text": "notes C E G", "audio": str(media / "ceg.wav")},  # absolute path
        {"id": "vid", "text": "a blue square moving left", "video": "blue_left.mp4", "prompt": "what moves?"},
        {"id": "all", "text": "everything", "image": "blue_square.png", "audio": "da.flac",
         "video": "red_up.webm"},
        {"id": "txt", "text": "only words here"},
        {"id": "bad", "text": "corrupt image", "image": "random.png"},
    ]


def test_csv_manifest_to_local_shards(media, tmp_path, capsys):
    manifest = write_csv(media / "m1.csv", sample_rows(media))
    out = tmp_path / "shards"
    summary = ms.make_shards(str(manifest), str(out))
    assert summary.rows == 6 and summary.schema_version == SCHEMA_VERSION
    assert summary.modalities["image"]["count"] == 3
    assert summary.modalities["audio"]["count"] == 2
    assert summary.modalities["video"]["count"] == 2
    assert summary.modalities["text"]["count"] == 6
    assert summary.modalities["audio"]["bytes"] == (media / "ceg.wav").stat().st_size + \
        (media / "da.flac").stat().st_size
    on_disk = json.loads((out / "_dataset.json").read_text())
    assert set(on_disk) >= {"schema_version", "shards", "rows", "bytes", "modalities"}
    assert on_disk["shards"] == [{"path": "shard-00000.parquet", "rows": 6,
                                  "bytes": (out / "shard-00000.parquet").stat().st_size, "row_groups": 1}]
    assert on_disk["bytes"] == sum(s["bytes"] for s in on_disk["shards"])
    assert read_summary(str(out)).to_dict() == on_disk
    table = pq.read_table(out / "shard-00000.parquet")
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == list(range(6))
    assert rows[0]["image"] == (media / "red_circle.jpg").read_bytes() and rows[0]["image_ext"] == "jpg"
    assert rows[2]["prompt"] == "what moves?" and rows[4]["image"] is None
    assert "done: 6 rows" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["_dataset.json", "shard-00000.parquet"]


def test_jsonl_manifest_and_split(media, tmp_path):
    manifest = media / "m2.jsonl"
    lines = [json.dumps({"text": f"caption {i}", "image": "red_circle.jpg" if i % 2 else None,
                         "audio": "ceg.wav" if i % 3 == 0 else ""}) for i in range(12)]
    manifest.write_text("\n".join(lines[:6]) + "\n\n" + "\n".join(lines[6:]) + "\n")
    out = tmp_path / "split"
    summary = ms.make_shards(str(manifest), str(out), target_shard_bytes=40_000, row_group_bytes=10_000,
                             progress=None)
    assert summary.rows == 12 and len(summary.shards) > 1
    assert sum(s["rows"] for s in summary.shards) == 12
    assert [s["path"] for s in summary.shards] == [f"shard-{i:05d}.parquet" for i in range(len(summary.shards))]
    ids = []
    for shard in summary.shards:
        meta = pq.ParquetFile(out / shard["path"]).metadata
        assert meta.num_rows == shard["rows"]
        if shard["rows"] > 2:
            assert meta.num_row_groups > 1  # row groups are capped, not one per shard
        ids += pq.read_table(out / shard["path"], columns=["id"]).column("id").to_pylist()
    assert ids == [f"m2-{i:08d}" for i in range(12)]  # default ids from the manifest name


def test_missing_file_is_skipped_with_its_line(media, tmp_path, capsys):
    rows = sample_rows(media)[:3] + [{"id": "gone", "text": "missing", "video": "no_such.mp4"}]
    manifest = write_csv(media / "m3.csv", rows)
    summary = ms.make_shards(str(manifest), str(tmp_path / "o"))
    assert summary.rows == 3 and summary.skipped_rows == 1
    err = capsys.readouterr().err
    assert "m3.csv:5: missing video file no_such.mp4" in err


def test_strict_missing_is_fatal_and_leaves_nothing(media, tmp_path, capsys):
    rows = sample_rows(media) * 3 + [{"id": "gone", "text": "missing", "image": "no_such.jpg"}]
    manifest = write_csv(media / "m4.csv", rows)
    out = tmp_path / "strict"
    with pytest.raises(ms.ManifestError, match="m4.csv:20: missing image"):
        ms.make_shards(str(manifest), str(out), target_shard_bytes=30_000, strict=True, progress=None)
    assert list(out.iterdir()) == []  # no half shard, no finished shard, no summary
    assert ms.main([str(manifest), "--out", str(out), "--strict", "--target-shard-size", "30kB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "m4.csv:20" in err[-1]
    assert list(out.iterdir()) == []


def test_failure_mid_shard_leaves_no_visible_files(media, tmp_path, monkeypatch):
    manifest = write_csv(media / "m5.csv", sample_rows(media) * 2)
    out = tmp_path / "crash"
    from multimodal.data import manifest as manifest_module

    real_read = manifest_module.read_media
    calls = {"n": 0}

    def flaky(uri, max_bytes):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt  # the process is interrupted while a shard is open
        return real_read(uri, max_bytes)

    monkeypatch.setattr(manifest_module, "read_media", flaky)
    with pytest.raises(KeyboardInterrupt):
        ms.make_shards(str(manifest), str(out), target_shard_bytes=20_000, progress=None)
    assert [p.name for p in out.iterdir()] == []


@pytest.mark.parametrize("argv", [
    [], ["x.csv"], ["--out", "y"], ["{manifest}", "--out", "{out}", "--target-shard-size", "lots"],
    ["{missing}", "--out", "{out}"], ["{nocol}", "--out", "{out}"], ["{badjson}", "--out", "{out}"],
    ["{empty}", "--out", "{out}"],
])
def test_cli_bad_input_exits_2(media, tmp_path, capsys, argv):
    (tmp_path / "nocol.csv").write_text("caption,image\nhello,red_circle.jpg\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    (tmp_path / "empty.csv").write_text("text,image\n")
    paths = {"manifest": str(write_csv(media / "m6.csv", sample_rows(media))), "out": str(tmp_path / "o"),
             "missing": str(tmp_path / "nope.csv"), "nocol": str(tmp_path / "nocol.csv"),
             "badjson": str(tmp_path / "bad.jsonl"), "empty": str(tmp_path / "empty.csv")}
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(ms.main([a.format(**paths) for a in argv]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_cli_ok(media, tmp_path):
    manifest = write_csv(media / "m7.csv", sample_rows(media))
    assert ms.main([str(manifest), "--out", str(tmp_path / "ok"), "--quiet"]) == 0
    assert read_summary(str(tmp_path / "ok")).rows == 6
    assert read_summary(str(tmp_path / "nothing")) is None


def test_sample_processor_without_ray(media, tmp_path):
    """The decode stage on real shard rows, outside Ray: masks, bad flags, validity."""
    manifest = write_csv(media / "m8.csv", sample_rows(media) + [
        {"id": "allbad", "text": "all broken", "audio": "truncated.wav", "video": "random.mp4"}])
    out = tmp_path / "p"
    ms.make_shards(str(manifest), str(out), progress=None)
    kind, names, paths = resolve_shards(str(out))
    assert kind == "parquet" and names == ["shard-00000.parquet"]
    table = pq.read_table(paths[0])
    batch = {k: np.asarray(table.column(k).to_pylist(), dtype=object) for k in table.column_names}
    batch["path"] = np.asarray([paths[0]] * table.num_rows, dtype=object)
    tok = train_tokenizer(["a red circle", "notes", "everything"] * 5, 300)
    processor = SampleProcessor(SPEC, tok, names)
    wire = processor(batch)  # what the Ray pipeline ships: media as bytes, empty when absent
    sizes = {m: [len(v) for v in wire.column(m).to_pylist()] for m in ("image", "audio", "video")}
    assert sizes["image"] == [3 * 32 * 32, 0, 0, 3 * 32 * 32, 0, 0, 0]
    assert sizes["video"][2] == 4 * 3 * 32 * 32 and sizes["audio"][1] == SPEC.audio_n_mels * SPEC.audio_frames * 4
    keys = (*CONTRACT_KEYS, *STATS_KEYS)  # the training path: collate, fill, normalise on the device
    result = {k: v.numpy() for k, v in normalise_pixels_(fill_absent_(WireCollate(SPEC, keys)(wire), SPEC)).items()}
    assert result["image"].shape == (7, 3, 32, 32) and result["video"].shape == (7, 4, 3, 32, 32)
    assert result["image"].dtype == np.float32 and -1.0 <= result["image"].min() <= result["image"].max() <= 1.0
    assert result["image_present"].tolist() == [True, False, False, True, False, False, False]
    assert result["audio_present"].tolist() == [False, True, False, True, False, False, False]
    assert result["video_present"].tolist() == [False, False, True, True, False, False, False]
    assert result["bad_image"].tolist() == [False] * 5 + [True, False]
    assert result["bad_audio"].tolist() == [False] * 6 + [True]
    assert result["sample_valid"].tolist() == [True] * 5 + [False, False]
    assert (result["image"][1] == 0).all() and result["shard_id"].tolist() == [0] * 7
    stats, valid = batch_stats(result)
    assert stats.valid == 5 and stats.dropped == 2 and stats.bad == {"image": 1, "audio": 1, "video": 1}
    assert stats.samples == {"text": 5, "image": 2, "audio": 2, "video": 2}


def test_row_group_units_cover_every_row_once(media, tmp_path):
    """The decode actors' read units: one per row group, listed in _dataset.json."""
    rows = sample_rows(media) * 3
    manifest = write_csv(media / "m9.csv", rows)
    out = tmp_path / "units"
    summary = ms.make_shards(str(manifest), str(out), target_shard_bytes=60_000,
                             row_group_bytes=20_000, progress=None)
    groups = [s["row_groups"] for s in summary.shards]
    assert len(groups) >= 2 and all(g >= 1 for g in groups) and sum(groups) > len(groups)
    for shard, count in zip(summary.shards, groups):
        assert pq.ParquetFile(str(out / shard["path"])).num_row_groups == count
    names, units = read_units(str(out))
    assert len(units) == sum(groups) and names == summary.shard_names
    decoder = ParquetUnitDecoder(SPEC, train_tokenizer(["a red circle"] * 5, 300), names, batch_size=4)
    seen = []
    for unit in units:
        for wire in decoder.decode_unit(unit["path"], unit["row_group"]):
            assert wire.num_rows <= 4
            seen += list(zip(wire.column("shard_id").to_pylist(), wire.column("sample_id").to_pylist()))
    assert sorted(i for _, i in seen) == list(range(summary.rows))
    whole = [i for w in decoder.decode_unit(units[0]["path"], -1) for i in w.column("sample_id").to_pylist()]
    assert len(whole) == summary.shards[0]["rows"]  # -1 = the whole shard (summaries without row_groups)
    _, subset = read_units(str(out), shards=[names[-1]])
    assert {u["path"] for u in subset} == {str(out / names[-1])}


def test_consecutive_failures_name_the_shard():
    proc = SampleProcessor(SPEC, train_tokenizer(["abc"] * 3, 300), ["a.parquet", "b.parquet"],
                           max_consecutive_failures=3)
    rows = [{"shard_id": 1, "sample_id": i, "text": "x", "image": b"junk"} for i in range(3)]
    proc.decode_compact(rows)  # exactly at the limit: fine
    proc.decode_compact([{"shard_id": 1, "sample_id": 9, "text": "x", "image": b""}] * 0)
    with pytest.raises(DatasetBrokenError, match="b.parquet"):
        proc.decode_compact(rows[:1])


def test_webdataset_tar_mapping_and_tokenizer_from_dataset(media, tmp_path):
    tar_path = tmp_path / "wds" / "00000.tar"
    tar_path.parent.mkdir()
    members = [("k1.jpg", (media / "red_circle.jpg").read_bytes()), ("k1.txt", b"a red circle"),
               ("k2.seg.wav", (media / "ceg.wav").read_bytes()), ("k2.txt", b"notes C E G"),
               ("k3.txt", b"text only"), ("k3.json", b"{}")]
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = list(iter_tar_samples(str(tar_path)))
    assert [r["id"] for r in rows] == ["k1", "k2", "k3"]
    assert rows[0]["image_ext"] == "jpg" and rows[1]["audio_ext"] == "wav" and rows[2]["image"] is None
    assert rows[2]["text"] == "text only"
    tok = train_tokenizer_from_dataset(str(tmp_path / "wds"), 300, str(tmp_path / "tok"))
    assert (tmp_path / "tok" / "tokenizer.json").exists() and tok.token_to_id("<eos>") == 2

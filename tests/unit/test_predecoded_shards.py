"""Pre-decoded shards (slm-make-shards --decode): same batches as the raw path, spec check, resume, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from multimodal.config import preset
from multimodal.data import make_shards as ms
from multimodal.data import predecoded
from multimodal.data.pack_decoded import PROGRESS_NAME, PackInterrupted, pack_decoded
from multimodal.data.pipeline import ParquetUnitDecoder, read_units
from multimodal.data.schema import read_summary
from multimodal.data.tokenizer import load_tokenizer
from multimodal.data.loader import CONTRACT_KEYS, STATS_KEYS
from multimodal.data.wire import WireCollate, fill_absent_, normalise_pixels_

SPEC = preset("tiny").media


def write_manifest(folder: Path, name: str, repeat: int = 1) -> Path:
    rows = [
        {"id": "img", "text": "a red circle", "image": "red_circle.jpg"},
        {"id": "aud", "text": "notes C E G", "audio": "ceg.wav", "prompt": "hear:"},
        {"id": "vid", "text": "a blue square moving left", "video": "blue_left.mp4"},
        {"id": "all", "text": "everything", "image": "blue_square.png", "audio": "da.flac", "video": "red_up.webm"},
        {"id": "txt", "text": "only words here"},
        {"id": "badimg", "text": "corrupt image", "image": "random.png"},
        {"id": "badvid", "text": "corrupt video", "video": "truncated.mp4", "audio": "b.ogg"},
        {"id": "gone", "text": "missing file", "image": "no_such.jpg"},
    ]
    path = folder / name
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "prompt", "image", "audio", "video"])
        writer.writeheader()
        for i in range(repeat):
            for row in rows:
                writer.writerow({**row, "id": f"{row['id']}-{i}"})
    return path


def dense_batches(reader, units) -> dict[str, np.ndarray]:
    """Every row of ``units`` through ``reader`` as one dense contract batch (numpy), made the way
    a training worker makes it (collate, fill absent modalities, normalise pixels)."""
    collate = WireCollate(SPEC, (*CONTRACT_KEYS, *STATS_KEYS, "sample_id"))
    parts = [{k: v.numpy() for k, v in normalise_pixels_(fill_absent_(collate(table), SPEC)).items()}
             for u in units for table in reader(u)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_predecoded_rows_equal_the_raw_pipeline(media_dir, tmp_path, capsys):
    manifest = write_manifest(media_dir, "pre1.csv")
    raw = tmp_path / "raw"
    ms.make_shards(str(manifest), str(raw), progress=None)
    out = tmp_path / "pre"
    summary = pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=300)
    err = capsys.readouterr().err
    assert "done: 7 pre-decoded rows (tiny spec)" in err and "missing image file no_such.jpg" in err

    assert summary.rows == 7 and summary.skipped_rows == 1 and summary.skipped_by_reason == {"missing": 1}
    assert summary.decoded["preset"] == "tiny" and summary.decoded["media_spec"] == SPEC.model_dump()
    assert summary.decoded["bad"] == {"image": 1, "audio": 0, "video": 1}
    on_disk = read_summary(str(out))
    assert predecoded.is_predecoded(on_disk) and on_disk.schema_version == 2
    assert sorted(p.name for p in out.iterdir()) == ["_dataset.json", "shard-00000.parquet", "tokenizer.json"]
    tok = load_tokenizer(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() <= 300

    # the raw pipeline with the same tokenizer gives the same model batches
    names, raw_units = read_units(str(raw))
    raw_reader = ParquetUnitDecoder(SPEC, tok, names)
    want = dense_batches(lambda u: raw_reader.decode_unit(u["path"], u["row_group"]), raw_units)
    names, units = read_units(str(out))
    reader = predecoded.PredecodedUnitReader(SPEC, names)
    got = dense_batches(lambda u: reader.read_unit(u["path"], u["row_group"]), units)
    assert set(got) == set(want)
    for key in got:
        if key == "audio":  # stored as float16
            np.testing.assert_allclose(got[key], want[key], rtol=2e-3, atol=2e-3)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["bad_image"].tolist() == [False] * 5 + [True, False]
    assert got["bad_video"].tolist() == [False] * 6 + [True]
    assert got["sample_valid"].tolist() == [True] * 5 + [False, True]  # the bad video row still has audio

    table = pq.read_table(out / "shard-00000.parquet")
    assert table.schema.equals(predecoded.PREDECODED_SCHEMA, check_metadata=False)
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["image"]) == 3 * SPEC.image_size ** 2 and row["audio"] == b"" and row["video"] == b""
    audio = table.slice(1, 1).to_pylist()[0]["audio"]
    assert len(audio) == SPEC.audio_n_mels * SPEC.audio_frames * 2  # float16


def test_spec_mismatch_names_both_specs(media_dir, tmp_path):
    manifest = write_manifest(media_dir, "pre2.csv")
    out = tmp_path / "pre"
    pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=300, progress=None)
    summary = read_summary(str(out))
    predecoded.check_spec(summary, SPEC, str(out), "tiny")  # the same spec passes
    with pytest.raises(predecoded.SpecMismatchError) as caught:
        predecoded.check_spec(summary, preset("slm-63m").media, str(out), "slm-63m")
    message = str(caught.value)
    assert "\n" not in message
    assert "pre-decoded for preset tiny {image_size=32" in message
    assert "the model slm-63m needs {image_size=64" in message and "--decode slm-63m" in message


def test_a_stopped_pack_resumes_where_it_stopped(media_dir, tmp_path, capsys):
    manifest = write_manifest(media_dir, "pre3.csv", repeat=4)  # 28 usable rows, 4 skipped
    whole = tmp_path / "whole"
    pack_decoded(str(manifest), str(whole), "tiny", workers=1, vocab_size=300, progress=None,
                 target_shard_bytes=40_000)
    out = tmp_path / "resumed"
    with pytest.raises(PackInterrupted):
        pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=300, progress=None,
                     target_shard_bytes=40_000, stop_after_shards=2)
    state = json.loads((out / PROGRESS_NAME).read_text())
    assert len(state["shards"]) == 2 and not (out / "_dataset.json").exists()
    first_two = {s["path"]: (out / s["path"]).stat().st_mtime_ns for s in state["shards"]}
    summary = pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=300,
                           target_shard_bytes=40_000)
    assert "resuming the pack" in capsys.readouterr().err
    assert {p: (out / p).stat().st_mtime_ns for p in first_two} == first_two  # not written again
    expected = read_summary(str(whole))
    assert summary.rows == expected.rows == 28
    assert summary.skipped_rows == expected.skipped_rows == 4
    assert summary.modalities == expected.modalities and summary.decoded["bad"] == expected.decoded["bad"]
    assert [s["rows"] for s in summary.shards] == [s["rows"] for s in expected.shards]

    def column(folder: Path, name: str) -> list:
        return [v for s in read_summary(str(folder)).shards
                for v in pq.read_table(folder / s["path"], columns=[name]).column(name).to_pylist()]

    for name in ("sample_id", "id", "tokens", "image", "audio", "video", "bad_video"):
        assert column(out, name) == column(whole, name), name
    assert not (out / PROGRESS_NAME).exists()


def test_half_done_pack_with_other_settings_is_refused(media_dir, tmp_path):
    manifest = write_manifest(media_dir, "pre4.csv", repeat=2)
    out = tmp_path / "o"
    with pytest.raises(PackInterrupted):
        pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=300, progress=None,
                     target_shard_bytes=40_000, stop_after_shards=1)
    with pytest.raises(ms.ManifestError, match="half-done pack with other settings"):
        pack_decoded(str(manifest), str(out), "slm-63m", workers=1, vocab_size=300, progress=None,
                     target_shard_bytes=40_000)


def test_cli_decode_flags(media_dir, tmp_path, capsys):
    manifest = write_manifest(media_dir, "pre5.csv")
    tok_dir = tmp_path / "tok"
    pack_decoded(str(manifest), str(tok_dir), "tiny", workers=1, vocab_size=280, progress=None)
    out = tmp_path / "cli"
    assert ms.main([str(manifest), "--out", str(out), "--decode", "tiny", "--workers", "1",
                    "--tokenizer", str(tok_dir / "tokenizer.json")]) == 0
    summary = read_summary(str(out))
    assert summary.rows == 7 and summary.decoded["tokenizer_sha256"] == read_summary(str(tok_dir)).decoded[
        "tokenizer_sha256"]
    assert ms.main([str(manifest), "--out", str(out), "--decode", "tiny"]) == 2  # not empty
    assert "is not empty" in capsys.readouterr().err
    for argv, message in (([str(manifest), "--out", str(tmp_path / "x"), "--workers", "2"], "go with --decode"),
                          ([str(manifest), "--out", str(tmp_path / "y"), "--decode", "huge"], "invalid choice")):
        with pytest.raises(SystemExit) as exited:
            ms.main(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_evaluation_scores_predecoded_shards_as_the_raw_ones(media_dir, tmp_path):
    from multimodal.evaluation import evaluate
    from multimodal.model import MultimodalSLM

    manifest = write_manifest(media_dir, "pre6.csv")
    raw, out = tmp_path / "raw", tmp_path / "pre"
    ms.make_shards(str(manifest), str(raw), progress=None)
    pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=300, progress=None)
    cfg = preset("tiny")
    tok = load_tokenizer(str(out / "tokenizer.json"))
    cfg.core.vocab_size = tok.get_vocab_size()
    model = MultimodalSLM(cfg)
    model.tokenizer = tok
    on_raw = evaluate(model, str(raw), max_new_tokens=2)
    on_decoded = evaluate(model, str(out), max_new_tokens=2)
    assert on_decoded["samples"] == on_raw["samples"] == 6  # the all-bad image row is dropped
    assert on_decoded["loss"] == pytest.approx(on_raw["loss"], rel=1e-3)
    cfg_63m = preset("slm-63m")
    cfg_63m.core.vocab_size = tok.get_vocab_size()
    other = MultimodalSLM(cfg_63m)
    other.tokenizer = tok
    with pytest.raises(predecoded.SpecMismatchError, match="the model slm-63m needs"):
        evaluate(other, str(out))


def test_overwrite_replaces_a_predecoded_dataset_and_its_tokenizer(media_dir, tmp_path):
    manifest = write_manifest(media_dir, "pre7.csv")
    out = tmp_path / "o"
    first = pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=300, progress=None)
    assert first.decoded["tokenizer"] == "tokenizer.json"
    second = pack_decoded(str(manifest), str(out), "tiny", workers=1, vocab_size=280, progress=None,
                          overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert second.decoded["tokenizer"] != "tokenizer.json" and second.decoded["tokenizer"] in names
    assert "tokenizer.json" not in names and "shard-00000.parquet" not in names  # the old dataset's files
    assert names == sorted(["_dataset.json", second.decoded["tokenizer"], *second.shard_names])
    assert load_tokenizer(str(out / second.decoded["tokenizer"])).get_vocab_size() <= 280

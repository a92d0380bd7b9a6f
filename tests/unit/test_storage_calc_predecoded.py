"""slm-estimate-storage --decode PRESET (pre-decoded size beside the raw one) and --from's kind."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from multimodal.config import preset
from multimodal.data.make_shards import make_shards
from multimodal.data.pack_decoded import pack_decoded
from storage_calc.cli import main

REPO = Path(__file__).resolve().parents[2]
SEED = ["--text", "1e6", "--images", "1e5", "--audio", "5e4", "--video", "2e4"]


def run_json(argv: list[str], capsys) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["slm-63m", "tiny"])
def test_seed_example_predecoded_size(name, capsys):
    data = run_json([*SEED, "--decode", name], capsys)
    spec = preset(name).media
    frames = spec.audio_samples // spec.audio_hop_length + 1
    text_ids = min(100 * 1.3 + 2, spec.max_text_tokens)  # 100 words x 1.3 tokens, cut to the spec
    expected = {"image": 1e5 * 3 * spec.image_size ** 2, "audio": 5e4 * spec.audio_n_mels * frames * 2,
                "video": 2e4 * spec.video_frames * 3 * spec.video_size ** 2, "text": 1e6 * (400 + 4 * text_ids)}
    got = data["predecoded"]
    assert got["preset"] == name and got["media_spec"] == spec.model_dump()
    for modality, total in expected.items():
        assert got["modalities"][modality]["bytes"] == pytest.approx(total, rel=1e-9), modality
    assert got["total_bytes"] == pytest.approx(sum(expected.values()), rel=1e-9)
    assert data["total_bytes"] == 700_400_000_000  # the raw size is unchanged
    assert main([*SEED, "--decode", name]) == 0
    table = capsys.readouterr().out
    assert f"pre-decoded ({name})" in table.splitlines()[2]
    assert f"Pre-decoded at the {name} spec" in table


def test_without_decode_the_report_is_unchanged(capsys):
    data = run_json(SEED, capsys)
    assert "predecoded" not in data
    assert main(SEED) == 0
    assert "pre-decoded" not in capsys.readouterr().out


def test_from_reports_which_kind_a_prefix_holds(media_dir, tmp_path, capsys):
    manifest = media_dir / "kind.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["text", "image", "video"], ["a red circle", "red_circle.jpg", ""],
                          ["a blue square moving left", "", "blue_left.mp4"]])
    raw, decoded = tmp_path / "raw", tmp_path / "decoded"
    make_shards(str(manifest), str(raw), progress=None)
    pack_decoded(str(manifest), str(decoded), "tiny", workers=1, vocab_size=270, progress=None)

    assert run_json(["--from", str(raw)], capsys)["measurement"]["kind"] == "raw"
    measured = run_json(["--from", str(decoded)], capsys)["measurement"]
    assert measured["kind"] == "predecoded" and measured["decoded_preset"] == "tiny"
    spec = preset("tiny").media
    assert measured["modalities"]["image"]["bytes"] == 3 * spec.image_size ** 2
    assert run_json(["--from", str(media_dir)], capsys)["measurement"]["kind"] == "files"
    assert main(["--from", str(decoded)]) == 0
    assert "Holds pre-decoded shards (tiny spec" in capsys.readouterr().out
    assert main(["--from", str(raw)]) == 0
    assert "Holds raw shards (media stored encoded" in capsys.readouterr().out


def test_decode_flag_keeps_the_estimator_free_of_torch_and_ray():
    code = ("import sys; from storage_calc.cli import main; "
            "main(['--images', '10', '--decode', 'slm-63m']); "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pre-decoded (slm-63m)" in proc.stdout


def test_unknown_preset_is_one_line_exit_2(capsys):
    assert main([*SEED, "--decode", "huge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --decode") and err.count("\n") == 1

"""slm-estimate-storage: the seed table, JSON, --from a local folder, and one-line errors (exit 2)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.net import free_port
from storage_calc.cli import main

REPO = Path(__file__).resolve().parents[2]
SEED_ARGS = ["--text", "1e6", "--images", "1e5", "--audio", "5e4", "--video", "2e4"]


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_seed_table(capsys):
    code, out, err = run_main(capsys, *SEED_ARGS)
    assert code == 0 and err == ""
    rows = {}
    for line in out.splitlines():
        if line.strip():
            rows.setdefault(line.split()[0], line.split())  # the table's row, not later mentions
    assert rows["text"][-2:] == ["0.4", "GB"]
    assert rows["images"][-2:] == ["50", "GB"]
    assert rows["audio"][-2:] == ["250", "GB"]
    assert rows["video"][-2:] == ["400", "GB"]
    assert rows["total"][-2:] == ["700.4", "GB"]
    assert rows["images"][1:4] == ["100,000", "500", "KB"]
    for word in ("shards", "training tokens", "training compute", "GPU time", "worker memory",
                 "checkpoint", "capacity", "130,680,000", "RTX 3060", "4.94e16 FLOPs"):
        assert word in out


def test_seed_json(capsys):
    code, out, _ = run_main(capsys, *SEED_ARGS, "--json", "--capacity", "1TB")
    assert code == 0
    data = json.loads(out)
    assert {k: v["bytes"] for k, v in data["modalities"].items()} == {
        "text": 400_000_000, "image": 50_000_000_000, "audio": 250_000_000_000,
        "video": 400_000_000_000}
    assert data["total_bytes"] == 700_400_000_000
    assert data["assumptions"]["image_bytes"] == 500_000
    plan = data["plan"]
    assert plan["total_tokens"] == 130_680_000
    assert plan["inputs"]["tokens_per_image"] == 4 and plan["inputs"]["utilization"] == 0.4
    assert plan["fits"] is True and plan["capacity_margin_bytes"] == 299_600_000_000
    assert plan["gpu"]["key"] == "rtx3060"


def test_size_overrides_and_units(capsys):
    code, out, _ = run_main(capsys, "--images", "1000", "--image-size", "1MiB", "--json",
                            "--words-per-text", "10")
    assert code == 0
    assert json.loads(out)["modalities"]["image"]["bytes"] == 1000 * 2**20
    code, out, _ = run_main(capsys, "--video", "10", "--video-size", "1.5GB", "--unit", "TB")
    assert code == 0 and "0.015 TB" in out


def test_capacity_does_not_fit(capsys):
    code, out, _ = run_main(capsys, *SEED_ARGS, "--capacity", "500GB")
    assert code == 0
    assert "does NOT fit in 500 GB: short by 200.4 GB" in out


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to estimate"),
    (["--text", "0"], "nothing to estimate"),
    (["--text", "-5"], "negative"),
    (["--text", "-1e6"], "negative"),
    (["--images", "many"], "not a number"),
    (["--audio", "2.5"], "whole number"),
    (["--text", "1", "--image-size", "5XB"], "unknown unit 'XB'"),
    (["--text", "1", "--capacity", "1 tera"], "unknown unit"),
    (["--text", "1", "--utilization", "140%"], "utilisation"),
    (["--text", "1", "--gpu", "tpu"], "invalid choice"),
    (["--text", "1", "--nope"], "unrecognized arguments"),
    (["--from", "/definitely/not/here"], "no such file or folder"),
    (["--from", "ftp://host/x"], "unsupported URI scheme"),
    (["--text", "1", "--from", "/tmp"], "not both"),
])
def test_bad_input_one_line_exit_2(capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err


def test_console_entry_exit_code_via_subprocess():
    proc = subprocess.run([sys.executable, "-m", "storage_calc.cli", "--text", "-3"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "error: argument --text: count '-3' is negative\n"


def test_import_does_not_pull_torch_or_ray():
    code = ("import sys, storage_calc.cli, storage_calc.measure, storage_calc.compute; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_from_local_folder(tmp_path, capsys):
    _write(tmp_path / "a.txt", 400)
    _write(tmp_path / "texts" / "b.jsonl.gz", 800)
    _write(tmp_path / "img" / "x.JPG", 1000)
    _write(tmp_path / "img" / "deep" / "y.png", 3000)
    _write(tmp_path / "aud" / "c.flac", 5000)
    _write(tmp_path / "vid" / "d.mkv", 7000)
    _write(tmp_path / "notes.bin", 11)
    _write(tmp_path / "vid" / "l1" / "l2" / "l3" / "l4" / "deep.webm", 2)  # below the expanded levels
    code, out, err = run_main(capsys, "--from", str(tmp_path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "listing"
    assert data["modalities"]["text"] == {"count": 2, "avg_bytes": 600.0, "bytes": 1200}
    assert data["modalities"]["image"] == {"count": 2, "avg_bytes": 2000.0, "bytes": 4000}
    assert data["modalities"]["audio"]["bytes"] == 5000
    assert data["modalities"]["video"]["count"] == 2
    assert data["other"] == {"count": 1, "bytes": 11}
    assert data["total_bytes"] == 17_213
    assert data["measurement"]["objects"] == 8
    assert data["plan"]["tokens"]["text"] == 390  # 1200 bytes / 4 x 1.3
    code, out, _ = run_main(capsys, "--from", str(tmp_path), "--unit", "auto")
    assert code == 0 and "Measured" in out and "17.21 KB" in out and "other" in out


def test_from_local_single_file_and_empty_folder(tmp_path, capsys):
    _write(tmp_path / "one.wav", 123)
    code, out, _ = run_main(capsys, "--from", str(tmp_path / "one.wav"), "--json")
    assert code == 0 and json.loads(out)["modalities"]["audio"]["bytes"] == 123
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(capsys, "--from", str(tmp_path / "empty"))
    assert code == 2 and "no objects found" in err and err.count("\n") == 1


def test_from_uses_shard_summary(tmp_path, capsys):
    summary = {
        "schema_version": 1,
        "shards": [{"path": "part-00000.parquet", "rows": 30, "bytes": 6_000_000},
                   {"path": "part-00001.parquet", "rows": 20, "bytes": 4_000_000}],
        "rows": 50, "bytes": 10_000_000,
        "modalities": {"text": {"count": 50, "bytes": 20_000}, "image": {"count": 20, "bytes": 9_000_000},
                       "audio": {"count": 5, "bytes": 500_000}, "video": {"count": "bad"}},
    }
    (tmp_path / "_dataset.json").write_text(json.dumps(summary))
    _write(tmp_path / "part-00000.parquet", 10)  # the listing would see only these two
    _write(tmp_path / "part-00001.parquet", 10)
    code, out, err = run_main(capsys, "--from", str(tmp_path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "shard-summary"
    assert data["modalities"]["text"]["count"] == 50
    assert data["modalities"]["image"]["bytes"] == 9_000_000
    assert data["modalities"]["video"] == {"count": 0, "avg_bytes": 0.0, "bytes": 0}
    assert data["total_bytes"] == 10_000_000
    assert data["measurement"]["shards"] == 2 and data["measurement"]["rows"] == 50
    code, out, _ = run_main(capsys, "--from", str(tmp_path))
    assert code == 0 and "shard summary _dataset.json" in out and "overhead" in out


def test_unusable_shard_summary_falls_back_to_listing(tmp_path, capsys):
    (tmp_path / "_dataset.json").write_text('{"schema_version": 1}')
    _write(tmp_path / "a.png", 100)
    code, out, _ = run_main(capsys, "--from", str(tmp_path), "--json")
    data = json.loads(out)
    assert code == 0 and data["source"] == "listing"
    assert data["modalities"]["image"]["count"] == 1
    assert any("_dataset.json" in note for note in data["notes"])


def test_from_s3_connection_refused_fails_fast(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    started = time.monotonic()
    code, out, err = run_main(capsys, "--from", "s3://bucket/prefix")
    assert time.monotonic() - started < 15
    assert code == 2 and out == ""
    assert err.startswith("error: cannot list s3://bucket/prefix") and err.count("\n") == 1

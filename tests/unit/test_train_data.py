"""Preflight data resolution without Ray: a manifest given as training data is packed under the
run once and reused, a changed manifest is refused, and a missing one (the seed config's
``dataset.csv``) gets advice that names the right paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from multimodal.data.demo_corpus import make_demo_corpus
from multimodal.job_config import build_config, read_config_file
from multimodal.train_data import PreflightError, describe_data, storage_estimate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def manifest(tmp_path):
    return make_demo_corpus(tmp_path / "corpus", {"image": 3, "audio": 2, "video": 2, "text": 2},
                            splits={"train": 1.0}, seed=4)["train"]


def test_manifest_is_packed_under_the_run_once(manifest, tmp_path, capsys):
    run = str(tmp_path / "runs" / "r1")
    data = describe_data(str(manifest), run=run)
    assert data.uri == f"{run}/data/train" and data.rows == 9 and data.kind == "shards"
    assert "packing manifest" in capsys.readouterr().out
    shards = sorted(p.name for p in Path(data.uri).glob("*.parquet"))
    stamp = {name: (Path(data.uri) / name).stat().st_mtime_ns for name in shards}
    again = describe_data(str(manifest), run=run)
    assert again.rows == 9 and f"reusing {data.uri}" in capsys.readouterr().out
    assert {name: (Path(data.uri) / name).stat().st_mtime_ns for name in shards} == stamp
    assert storage_estimate(again)["rows"] == 9
    validation = describe_data(str(manifest), "validation", run=run)
    assert validation.uri == f"{run}/data/val"

    with open(manifest, "a", newline="") as handle:
        csv.writer(handle).writerow(["extra", "a circle has no corners", "", "", ""])
    with pytest.raises(PreflightError, match=r"changed since this run packed it .* new --name"):
        describe_data(str(manifest), run=run)


def test_dry_run_counts_the_manifest_and_writes_nothing(manifest, tmp_path):
    run = tmp_path / "runs" / "dry"
    data = describe_data(str(manifest), run=str(run), dry_run=True)
    assert data.kind == "manifest" and data.rows == 9 and not run.exists()


def test_seed_config_missing_dataset_csv_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = build_config(read_config_file(REPO / "jobs" / "configs" / "seed_slm.json"))
    assert job.data.train == "dataset.csv"
    with pytest.raises(PreflightError) as caught:
        describe_data(job.data.train, run=str(tmp_path / "runs" / "seed"))
    message = str(caught.value)
    assert message == "training data dataset.csv: manifest not found" and "--out dataset.csv" not in message


def test_without_a_run_a_manifest_gets_the_right_command(manifest):
    with pytest.raises(PreflightError, match=r"slm-make-shards .*train\.csv --out s3://BUCKET/PREFIX"):
        describe_data(str(manifest))


def test_no_data_at_all_names_the_three_kinds(tmp_path):
    with pytest.raises(PreflightError) as caught:
        describe_data(str(tmp_path), run=str(tmp_path / "runs" / "x"))
    assert "manifest (.csv/.jsonl), a WebDataset tar prefix, or shards packed" in str(caught.value)


def test_bad_manifest_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"caption": "no text key"}) + "\n")
    with pytest.raises(PreflightError, match=r"^training data .*bad\.jsonl:1: no 'text' column"):
        describe_data(str(bad), run=str(tmp_path / "runs" / "b"))

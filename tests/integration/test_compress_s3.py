"""slm-compress from and to the real (moto) S3 server, with calibration shards on S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from multimodal import fs
from multimodal.config import preset
from multimodal.data.demo_corpus import make_demo_corpus
from multimodal.data.make_shards import make_shards
from multimodal.model import MultimodalSLM
from tests.unit.test_model import make_batch, make_tokenizer

pytestmark = pytest.mark.integration


def test_compress_s3_to_s3_with_calibration_shards(s3_server, s3_bucket, tmp_path):
    corpus = make_demo_corpus(tmp_path / "corpus", {"image": 8, "audio": 8, "video": 8, "text": 4},
                              splits={"train": 1.0}, seed=5)
    shards = f"s3://{s3_bucket}/shards/train"
    make_shards(str(corpus["train"]), shards, progress=None)
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.core.vocab_size = 300
    model = MultimodalSLM(cfg).eval()
    src, dst = f"s3://{s3_bucket}/models/full", f"s3://{s3_bucket}/models/edge"
    model.save_pretrained(src, tokenizer=make_tokenizer())

    command = [sys.executable, "-m", "multimodal.compress.cli", src, dst, "--prune-ratio", "0.3",
               "--quantize", "int8", "--tie-embeddings", "--calibration-data", shards,
               "--calibration-batches", "2", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    keys = sorted(k.rsplit("/", 1)[1] for k in s3_server.keys(s3_bucket, "models/edge/"))
    assert keys == ["compression.json", "config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads(fs.read_bytes(f"{dst}/compression.json")) == report
    prune_step = report["steps"][0]
    assert (prune_step["step"], prune_step["method"], prune_step["ratio"]) == ("prune", "wanda", 0.3)
    assert prune_step["structures"][0]["ffn_channels"] == [
        352, report["after"]["core"]["intermediate_size"]]
    assert report["change"]["core_layer_parameters"] == pytest.approx(-0.3, abs=0.05)
    assert report["calibration"]["samples"] > 0
    assert report["calibration"]["loss_after"] > 0 and report["calibration"]["loss_before"] > 0
    assert report["size_ratio"] >= 4  # int8 (3.6x) x pruning x one vocab matrix

    loaded = MultimodalSLM.from_pretrained(dst)
    assert loaded.cfg.core.intermediate_size == report["after"]["core"]["intermediate_size"] < 352
    assert loaded.parameter_counts()["total"] == report["after"]["parameters"]["total"]
    assert loaded.lm_head.weight is loaded.core.embed_tokens.weight
    with torch.no_grad():
        assert torch.isfinite(loaded(make_batch(loaded.cfg)).logits).all()

    bad = subprocess.run([sys.executable, "-m", "multimodal.compress.cli",
                          f"s3://{s3_bucket}/models/nothing-here", f"s3://{s3_bucket}/x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "slm-compress: error:" in bad.stderr

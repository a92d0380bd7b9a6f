"""ONNX export of the whole multimodal model (tiny preset) and generation with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.compress import cli
from multimodal.compress.int8_runtime import ort_int8
from multimodal.compress.onnx_export import ort_generate, ort_logits, ort_session
from multimodal.config import preset
from multimodal.model import MultimodalSLM
from tests.unit.test_model import make_batch

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.core.vocab_size = VOCAB
    yield MultimodalSLM(cfg).eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def onnx_bytes(model, tmp_path_factory):
    """model.onnx as ``slm-compress --onnx`` writes it (one export for the whole module)."""
    root = tmp_path_factory.mktemp("onnx")
    model.save_pretrained(str(root / "src"))
    assert cli.main([str(root / "src"), str(root / "dst"), "--onnx", "--json"]) == 0
    return (root / "dst" / "model.onnx").read_bytes()


@pytest.mark.parametrize("modalities", [("image", "audio", "video"), ("audio",), ()],
                         ids=["all", "audio", "text-only"])
def test_onnx_logits_match_pytorch_within_1e_3(model, onnx_bytes, modalities):
    session = ort_session(onnx_bytes, threads=1)
    batch = make_batch(model.cfg, batch_size=3, modalities=modalities)
    with torch.no_grad():
        expected = model(batch).logits.numpy()
    got = ort_logits(session, batch)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3


def test_onnx_runtime_generation_matches_pytorch_greedy(model, onnx_bytes):
    session = ort_session(onnx_bytes, threads=1)
    media = {k: v for k, v in make_batch(model.cfg, batch_size=2).items()
             if k in ("image", "video")}
    expected = [g.token_ids for g in model.generate(**media, max_new_tokens=6)]
    got = ort_generate(session, model.cfg.media.max_text_tokens,
                       {k: v.numpy() for k, v in media.items()}, max_new_tokens=6)
    assert got == expected and any(got)


def test_the_onnx_runtime_path_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, multimodal.compress.ort_runtime; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_ort_dynamic_int8_graph_is_smaller_and_close(model, onnx_bytes):
    quantized = ort_int8(onnx_bytes)
    assert len(quantized) < len(onnx_bytes) / 2  # MatMul weights only: gathers, convs stay fp32
    batch = make_batch(model.cfg, batch_size=2)
    reference = ort_logits(ort_session(onnx_bytes, 1), batch)
    got = ort_logits(ort_session(quantized, 1), batch)
    assert np.abs(got - reference).max() < 0.1 * np.abs(reference).max()

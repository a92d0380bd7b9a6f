"""slm-compress on the tiny preset: int8 storage, structured pruning, weight sharing, int8
runtime, ONNX parity and the CLI's round trip through from_pretrained (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import torch

from multimodal.compress import cli, prune, quantize, storage
from multimodal.compress.int8_runtime import Int8Linear, int8_weight_only
from multimodal.config import preset
from multimodal.model import WEIGHTS_FILE, MultimodalSLM
from tests.unit.test_model import make_batch, make_tokenizer

VOCAB = 300

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture
def cfg():
    config = preset("tiny")
    config.core.vocab_size = VOCAB
    return config


@pytest.fixture
def model(cfg):
    torch.manual_seed(0)
    built = MultimodalSLM(cfg).eval()
    built.tokenizer = make_tokenizer()
    return built


@pytest.fixture
def saved(model, tmp_path):
    uri = str(tmp_path / "src")
    model.save_pretrained(uri)
    return uri


def logits(model, batch):
    with torch.no_grad():
        return model(batch).logits


def weights_size(folder: str) -> int:
    return (Path(folder) / WEIGHTS_FILE).stat().st_size


def stored_keys(folder: str) -> list[str]:
    with safetensors.safe_open(str(Path(folder) / WEIGHTS_FILE), "pt") as handle:
        return list(handle.keys())


# ---- int8 -------------------------------------------------------------------------------------


def test_per_channel_int8_error_is_at_most_half_a_step_per_channel():
    torch.manual_seed(1)
    weight = torch.randn(64, 48) * torch.logspace(-3, 1, 64)[:, None]  # channels of any scale
    weight[5] = 0.0
    values, scales = quantize.quantize_per_channel(weight)
    assert values.dtype == torch.int8 and scales.shape == (64,)
    error = (quantize.dequantize_per_channel(values, scales) - weight).abs()
    assert (error <= scales[:, None] / 2 + 1e-7).all()
    assert error[5].max() == 0  # an all-zero channel stays exactly zero
    assert values.abs().amax(1)[torch.arange(64) != 5].eq(127).all()  # full range used


def test_int8_covers_every_linear_the_embedding_and_the_lm_head(model):
    names = set(quantize.quantizable_weights(model))
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears <= names
    assert {"core.embed_tokens.weight", "lm_head.weight"} <= names


def test_int8_file_is_3_5x_smaller_and_loads_to_the_quantized_model(model, saved, tmp_path):
    dst = str(tmp_path / "int8")
    assert cli.main([saved, dst, "--quantize", "int8", "--json"]) == 0
    assert weights_size(saved) / weights_size(dst) >= 3.5
    keys = stored_keys(dst)
    assert "lm_head.weight.int8" in keys and "lm_head.weight" not in keys
    loaded = MultimodalSLM.from_pretrained(dst)
    expected = MultimodalSLM.from_pretrained(saved)
    quantize.quantize_model_weights(expected)
    batch = make_batch(loaded.cfg)
    assert torch.equal(logits(loaded, batch), logits(expected, batch))
    drift = (logits(loaded, batch) - logits(model, batch)).abs().max()
    assert 0 < drift < 0.05 * logits(model, batch).abs().max()
    report = json.loads((tmp_path / "int8" / "compression.json").read_text())
    assert report["file_bytes"] == weights_size(dst)
    assert report["steps"][0]["step"] == "quantize"


def test_int8_weight_only_runtime_matches_fp32_closely(model):
    batch = make_batch(model.cfg)
    reference = logits(model, batch)
    int8_weight_only(model)
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.core.layers[0].mlp.down_proj, Int8Linear)
    assert model.lm_head.weight_int8.dtype == torch.int8
    out = logits(model, batch)
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()
    assert model.generate(image=batch["image"], max_new_tokens=3)[0].token_ids is not None


# ---- pruning ----------------------------------------------------------------------------------


def test_pruning_slices_ffn_channels_and_shrinks_parameters_and_file(model, saved, tmp_path):
    core_params = prune.core_layer_parameters(model)
    dst = str(tmp_path / "pruned")
    assert cli.main([saved, dst, "--prune-ratio", "0.3"]) == 0
    loaded = MultimodalSLM.from_pretrained(dst)
    keep = prune.channels_to_keep(model, 0.3)
    assert loaded.cfg.core.intermediate_size == keep < model.cfg.core.intermediate_size
    hidden = model.cfg.core.hidden_size
    for layer in loaded.core.layers:
        assert layer.mlp.gate_proj.weight.shape == (keep, hidden)
        assert layer.mlp.up_proj.weight.shape == (keep, hidden)
        assert layer.mlp.down_proj.weight.shape == (hidden, keep)
    assert keep % prune.CHANNEL_MULTIPLE == 0
    removed = core_params - prune.core_layer_parameters(loaded)
    per_channel = 3 * hidden * model.cfg.core.num_layers
    assert abs(removed - 0.3 * core_params) <= 8 * per_channel
    assert (model.parameter_counts()["total"] - loaded.parameter_counts()["total"]) == removed
    assert weights_size(saved) - weights_size(dst) >= 4 * removed
    batch = make_batch(loaded.cfg)
    assert torch.isfinite(logits(loaded, batch)).all()


def test_pruning_channels_that_contribute_nothing_keeps_the_outputs(model):
    """Zero the down-projection column of the channels pruning will remove: the pruned model
    must then compute exactly what the full one does (the slicing is right)."""
    keep = prune.channels_to_keep(model, 0.25)
    with torch.no_grad():
        for layer in model.core.layers:
            dead = torch.randperm(model.cfg.core.intermediate_size)[:model.cfg.core.intermediate_size - keep]
            layer.mlp.down_proj.weight[:, dead] = 0.0
    smaller = prune.prune_ffn(model, 0.25, "magnitude")
    batch = make_batch(model.cfg)
    torch.testing.assert_close(logits(smaller, batch), logits(model, batch), atol=1e-5, rtol=1e-5)


def test_wanda_keeps_the_channels_calibration_data_uses(model):
    """Two channels with equal weights: wanda keeps the one whose activation is larger."""
    batches = [make_batch(model.cfg, seed=s) for s in range(2)]
    scores = prune.wanda_scores(model, batches)
    assert len(scores) == model.cfg.core.num_layers
    assert all(s.shape == (model.cfg.core.intermediate_size,) and (s >= 0).all() for s in scores)
    magnitude = prune.magnitude_scores(model)
    assert not torch.equal(prune.keep_indices(scores, 100)[0], prune.keep_indices(magnitude, 100)[0])
    with torch.no_grad():  # silence channel 0's activation: its wanda score drops to zero
        model.core.layers[0].mlp.up_proj.weight[0] = 0.0
    assert prune.wanda_scores(model, batches)[0][0] == 0


def test_pruning_refuses_a_ratio_beyond_the_ffn_share(model):
    with pytest.raises(ValueError, match="at most"):
        prune.channels_to_keep(model, 0.9)


# ---- weight sharing ---------------------------------------------------------------------------


def test_tied_embeddings_are_stored_once_and_stay_tied(model, saved, tmp_path):
    dst = str(tmp_path / "tied")
    assert cli.main([saved, dst, "--tie-embeddings"]) == 0
    loaded = MultimodalSLM.from_pretrained(dst)
    assert loaded.cfg.core.tie_word_embeddings
    assert loaded.lm_head.weight is loaded.core.embed_tokens.weight
    assert "lm_head.weight" not in stored_keys(dst)
    vocab_matrix = VOCAB * model.cfg.core.hidden_size
    assert model.parameter_counts()["total"] - loaded.parameter_counts()["total"] == vocab_matrix


def test_shared_layers_are_one_tensor_in_memory_and_in_the_file(model, saved, tmp_path):
    dst = str(tmp_path / "shared")
    assert cli.main([saved, dst, "--share-layers"]) == 0
    loaded = MultimodalSLM.from_pretrained(dst)
    first, second = loaded.core.layers[0], loaded.core.layers[1]
    assert second.mlp.up_proj.weight is first.mlp.up_proj.weight
    assert second.self_attn.q_proj.weight is first.self_attn.q_proj.weight
    assert second is not first and second.self_attn.layer_idx == 1  # own KV-cache slot
    assert not any(k.startswith("core.layers.1.") for k in stored_keys(dst))
    layer_params = sum(p.numel() for p in model.core.layers[1].parameters())
    assert model.parameter_counts()["total"] - loaded.parameter_counts()["total"] == layer_params
    image = make_batch(loaded.cfg)["image"]
    cached = loaded.generate(image=image, max_new_tokens=5)
    recomputed = loaded.generate(image=image, max_new_tokens=5, use_cache=False)
    assert [g.token_ids for g in cached] == [g.token_ids for g in recomputed]
    # save_pretrained of a shared model stores the shared tensors once too
    again = str(tmp_path / "again")
    loaded.save_pretrained(again)
    assert set(stored_keys(again)) == set(stored_keys(dst))


def test_every_technique_in_one_call_round_trips(model, saved, tmp_path):
    dst = str(tmp_path / "all")
    args = [saved, dst, "--prune-ratio", "0.3", "--tie-embeddings", "--share-layers",
            "--quantize", "int8", "--json"]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "all" / "compression.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["prune", "tie_embeddings", "share_layers",
                                                    "quantize"]
    assert report["size_ratio"] >= 5
    loaded = MultimodalSLM.from_pretrained(dst)
    assert loaded.parameter_counts()["total"] == report["after"]["parameters"]["total"]
    assert loaded.tokenizer.to_str() == model.tokenizer.to_str()
    assert torch.isfinite(logits(loaded, make_batch(loaded.cfg))).all()
    header = (tmp_path / "all" / WEIGHTS_FILE).read_bytes()
    assert json.loads(storage.read_metadata(header)["int8"])  # int8 recorded in the metadata


def test_cli_rejects_bad_input_with_one_line_and_exit_2(saved, tmp_path, capsys):
    assert cli.main([saved, str(tmp_path / "x"), "--prune-ratio", "1.5"]) == 2
    assert cli.main([str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
    assert cli.main([saved, str(tmp_path / "z"), "--prune-method", "wanda"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("slm-compress: error:") for e in errors)


def test_int8_loader_never_builds_fp32_linears_and_matches_the_runtime(model, saved, tmp_path):
    from multimodal.compress.int8_runtime import load_int8_model

    dst = str(tmp_path / "all")
    assert cli.main([saved, dst, "--prune-ratio", "0.3", "--share-layers", "--tie-embeddings",
                     "--quantize", "int8"]) == 0
    direct = load_int8_model(dst)
    via_fp32 = int8_weight_only(MultimodalSLM.from_pretrained(dst))
    batch = make_batch(direct.cfg)
    assert torch.equal(logits(direct, batch), logits(via_fp32, batch))
    up = [layer.mlp.up_proj for layer in direct.core.layers]
    assert isinstance(up[0], Int8Linear) and up[1] is up[0]  # shared layers: one int8 module
    assert not any(p.is_meta for p in direct.parameters())


def test_int8_linear_handles_in_features_the_kernel_cannot_take():
    torch.manual_seed(0)
    for in_features in (196, 200, 208):  # the kernel path and the fallback
        linear = torch.nn.Linear(in_features, 24)
        x = torch.randn(3, in_features)
        out = Int8Linear(linear)(x)
        assert (out - linear(x)).abs().max() < 0.05 * linear(x).abs().max()

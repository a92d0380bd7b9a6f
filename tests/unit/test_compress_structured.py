"""Head and layer pruning on the tiny preset: shapes and parameter counts after slicing, the
save/load round trip (safetensors + JSON), and exact outputs when what is removed did nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multimodal.compress import cli, prune, prune_heads, prune_layers, structured
from multimodal.compress.calibration import synthetic_batches
from multimodal.config import preset
from multimodal.model import MultimodalSLM
from tests.unit.test_model import make_batch, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(num_layers: int = 4, num_kv_heads: int | None = None) -> MultimodalSLM:
    cfg = preset("tiny")
    cfg.core.vocab_size = 300
    cfg.core.num_layers = num_layers
    cfg.core.num_kv_heads = num_kv_heads
    torch.manual_seed(0)
    model = MultimodalSLM(cfg).eval()
    model.tokenizer = make_tokenizer()
    return model


def logits(model, batch):
    with torch.no_grad():
        return model(batch).logits


def test_head_pruning_slices_q_k_v_o_and_records_the_shape():
    model = tiny_model()
    hidden, head_dim = 128, 32
    per_group = prune_heads.parameters_per_group(model)
    assert per_group == 4 * head_dim * hidden
    pruned = prune_heads.prune_heads(model, 1.5 * per_group * 4)  # 2 of 4 heads per layer
    assert (pruned.cfg.core.num_heads, pruned.cfg.core.head_dim) == (2, head_dim)
    for layer in pruned.core.layers:
        attn = layer.self_attn
        assert attn.q_proj.weight.shape == attn.k_proj.weight.shape == (2 * head_dim, hidden)
        assert attn.v_proj.weight.shape == (2 * head_dim, hidden)
        assert attn.o_proj.weight.shape == (hidden, 2 * head_dim)
    removed = model.parameter_counts()["total"] - pruned.parameter_counts()["total"]
    assert removed == 2 * per_group * 4
    assert torch.isfinite(logits(pruned, make_batch(pruned.cfg))).all()
    assert pruned.generate(image=make_batch(pruned.cfg)["image"], max_new_tokens=3)


def test_removing_heads_that_write_nothing_keeps_the_logits():
    model = tiny_model()
    with torch.no_grad():  # head 1 of every layer adds nothing to the residual stream
        for layer in model.core.layers:
            layer.self_attn.o_proj.weight[:, 32:64] = 0
    batch = make_batch(model.cfg)
    pruned = prune_heads.prune_heads(model, prune_heads.parameters_per_group(model) * 4)
    assert pruned.cfg.core.num_heads == 3
    torch.testing.assert_close(logits(pruned, batch), logits(model, batch), atol=1e-5, rtol=1e-5)
    unchanged = prune_heads.prune_heads(model, 0.0)  # ratio ~0: every head kept
    assert torch.equal(logits(unchanged, batch), logits(model, batch))


def test_head_pruning_removes_whole_key_value_groups_with_grouped_queries():
    model = tiny_model(num_layers=2, num_kv_heads=2)  # 4 query heads, 2 per key/value head
    assert model.core.layers[0].self_attn.k_proj.weight.shape == (64, 128)
    per_group = prune_heads.parameters_per_group(model)
    assert per_group == (2 * 2 + 2) * 32 * 128
    pruned = prune_heads.prune_heads(model, per_group * 2)
    assert (pruned.cfg.core.num_heads, pruned.cfg.core.num_kv_heads) == (2, 1)
    attn = pruned.core.layers[0].self_attn
    assert attn.q_proj.weight.shape == (64, 128) and attn.k_proj.weight.shape == (32, 128)
    assert torch.isfinite(logits(pruned, make_batch(pruned.cfg))).all()


def test_layer_pruning_drops_the_layer_that_does_nothing():
    model = tiny_model()
    with torch.no_grad():  # layer 2 becomes the identity: both residual branches write zero
        model.core.layers[2].self_attn.o_proj.weight.zero_()
        model.core.layers[2].mlp.down_proj.weight.zero_()
    influence = prune_layers.block_influence(model, synthetic_batches(model, 1, 4))
    assert influence.shape == (4,) and float(influence[2]) == pytest.approx(0.0, abs=1e-6)
    assert float(influence.min()) == float(influence[2])
    per_layer = prune.core_layer_parameters(model) // 4
    pruned, removed, _ = prune_layers.prune_layers(model, per_layer)
    assert removed == [2] and pruned.cfg.core.num_layers == 3 and len(pruned.core.layers) == 3
    assert prune.core_layer_parameters(pruned) == 3 * per_layer
    torch.testing.assert_close(pruned.core.layers[2].mlp.up_proj.weight,
                               model.core.layers[3].mlp.up_proj.weight)
    batch = make_batch(model.cfg)
    torch.testing.assert_close(logits(pruned, batch), logits(model, batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one must stay"):
        prune_layers.prune_layers(model, 4 * per_layer)


def test_one_ratio_over_layers_heads_and_ffn_hits_the_target():
    model = tiny_model()
    base = prune.core_layer_parameters(model)
    pruned, steps = structured.prune_core(model, 0.3, ("layers", "heads", "ffn"))
    assert [s["structure"] for s in steps] == ["layers", "heads", "ffn"]
    assert abs(prune.core_layer_parameters(pruned) - 0.7 * base) <= 8 * 3 * 128 * 4
    with pytest.raises(ValueError, match="unknown prune structure"):
        structured.parse_structures("layers,rows")


@pytest.mark.parametrize("structure", ["heads", "layers", "layers,ffn"])
def test_cli_round_trip_of_head_and_layer_pruning(structure, tmp_path):
    model = tiny_model()
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    model.save_pretrained(src)
    ratio = "0.2" if structure == "heads" else "0.3"
    assert cli.main([src, dst, "--prune-ratio", ratio, "--prune-structure", structure]) == 0
    report = json.loads(Path(dst, "compression.json").read_text())
    change = report["change"]
    assert change["core_layer_parameters"] < -0.15
    assert change["total_parameters"] > change["core_layer_parameters"]  # embeddings stay
    assert change["core_layer_file_bytes"] == pytest.approx(change["core_layer_parameters"],
                                                            abs=0.01)
    config = json.loads(Path(dst, "config.json").read_text())
    loaded = MultimodalSLM.from_pretrained(dst)  # safetensors + JSON only
    assert loaded.cfg.core == MultimodalSLM(loaded.cfg).cfg.core
    assert config["core"]["num_layers"] == len(loaded.core.layers)
    assert loaded.parameter_counts()["total"] == report["after"]["parameters"]["total"]
    pruned, _ = structured.prune_core(model, float(ratio),
                                      structured.parse_structures(structure))
    batch = make_batch(model.cfg)
    torch.testing.assert_close(logits(loaded, batch), logits(pruned, batch))

"""Fine-tuning pieces without Ray: base weights, frozen parts stay bit-identical, LoRA merges exactly."""

from __future__ import annotations

import pytest
import torch

from multimodal.batch import MODALITIES
from multimodal.config import preset
from multimodal.finetune import merged_export, part_parameters, prepare_finetune
from multimodal.job_config import ConfigError, FinetuneSettings, build_config
from multimodal.model import MultimodalSLM
from tests.unit.test_model import VOCAB, make_batch, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def base_uri(tmp_path_factory) -> str:
    cfg = preset("tiny")
    cfg.core.vocab_size = VOCAB
    torch.manual_seed(1)
    uri = str(tmp_path_factory.mktemp("base") / "model")
    MultimodalSLM(cfg).save_pretrained(uri, tokenizer=make_tokenizer())
    return uri


def train_steps(model: MultimodalSLM, steps: int = 3) -> None:
    optimizer = model.configure_optimizer(lr=1e-2)
    batch = make_batch(model.cfg, batch_size=2, modalities=MODALITIES)
    model.train()
    for _ in range(steps):
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def snapshot(model: MultimodalSLM, part: str) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in part_parameters(model, part)}


@pytest.mark.parametrize("freeze", ["encoders", "core"])
def test_frozen_part_stays_bit_identical_and_the_rest_trains(base_uri, freeze):
    base = MultimodalSLM.from_pretrained(base_uri)
    settings = FinetuneSettings(init_from=base_uri, freeze=freeze)
    model = prepare_finetune(MultimodalSLM(base.cfg), settings)
    other = "core" if freeze == "encoders" else "encoders"
    frozen_before, other_before = snapshot(model, freeze), snapshot(model, other)
    assert all(torch.equal(p, base.state_dict()[n]) for n, p in frozen_before.items())
    train_steps(model)
    frozen_after, other_after = snapshot(model, freeze), snapshot(model, other)
    assert all(torch.equal(frozen_before[n], frozen_after[n]) for n in frozen_before)
    assert any(not torch.equal(other_before[n], other_after[n]) for n in other_before)


def test_lora_trains_adapters_only_and_merges_into_plain_weights(base_uri, tmp_path):
    base = MultimodalSLM.from_pretrained(base_uri)
    settings = FinetuneSettings(init_from=base_uri, freeze="encoders", lora_rank=4)
    model = prepare_finetune(MultimodalSLM(base.cfg), settings)
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad == ("lora_" in n or not n.endswith(".base_layer.weight"))
                        for n, p in model.named_parameters() if n.startswith("core.layers."))
    train_steps(model)
    model.eval()
    batch = make_batch(base.cfg, batch_size=2)
    with torch.no_grad():
        expected = model(batch).logits
    exported = merged_export(base.cfg, model.state_dict(), settings)
    assert set(exported.state_dict()) == set(base.state_dict())  # plain keys, no adapters left
    exported.save_pretrained(str(tmp_path / "merged"), tokenizer=base.tokenizer)
    reloaded = MultimodalSLM.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        merged_logits = reloaded(batch).logits
    assert torch.allclose(expected, merged_logits, atol=1e-4)
    q_name = "core.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(reloaded.state_dict()[q_name], base.state_dict()[q_name])
    for name, parameter in part_parameters(reloaded, "encoders"):
        assert torch.equal(parameter, base.state_dict()[name])


def test_freeze_without_init_from_is_a_config_error():
    with pytest.raises(ConfigError, match="need --init-from"):
        build_config({"finetune": {"lora_rank": 4}})

"""The multimodal model: shapes, masking, loss positions, parameter counts, save/load, generation."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from multimodal.batch import BOS_ID, EOS_ID, IGNORE_INDEX, MODALITIES, SPECIAL_TOKENS, empty_batch
from multimodal.config import preset
from multimodal.model import MultimodalSLM, main

SEED_PARAMETERS = 63_037_440
VOCAB = 300

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_tokenizer():
    """A tiny byte-level BPE with <pad> <bos> <eos> <unk> as ids 0..3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["a red square on a blue field", "a dog barks twice", "a ball rolls left"] * 10
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer




@pytest.fixture(scope="module")
def cfg():
    config = preset("tiny")
    config.core.vocab_size = VOCAB
    return config


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return MultimodalSLM(cfg).eval()


def make_batch(cfg, batch_size=3, modalities=MODALITIES, seed=0):
    """Random media for ``modalities`` (others left out of the dict), a short caption per sample."""
    gen = torch.Generator().manual_seed(seed)
    batch = {k: torch.from_numpy(v) for k, v in empty_batch(cfg.media, batch_size).items()}
    for row in range(batch_size):
        length = 5 + row
        caption = torch.randint(4, cfg.core.vocab_size, (length,), generator=gen)
        batch["input_ids"][row, :length + 2] = torch.cat([torch.tensor([BOS_ID]), caption,
                                                          torch.tensor([EOS_ID])])
        batch["attention_mask"][row, :length + 2] = 1
        batch["labels"][row, 1:length + 2] = batch["input_ids"][row, 1:length + 2]
    for name in MODALITIES:  # always drawn, so a sample's media do not depend on `modalities`
        batch[name] = torch.randn(batch[name].shape, generator=gen)
        batch[f"{name}_present"][:] = True
        if name not in modalities:
            del batch[name], batch[f"{name}_present"]
    return batch


COMBINATIONS = [combo for r in range(4) for combo in itertools.combinations(MODALITIES, r)]


@pytest.mark.parametrize("modalities", COMBINATIONS, ids=lambda c: "+".join(c) or "text-only")
def test_every_modality_combination_gives_text_logits_and_a_finite_loss(cfg, model, modalities):
    batch = make_batch(cfg, modalities=modalities)
    with torch.no_grad():
        out = model(batch)
    assert out.logits.shape == (3, cfg.media.max_text_tokens, cfg.core.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.per_sample_loss.shape == (3,)
    assert out.per_sample_tokens.tolist() == [6, 7, 8]


@pytest.mark.parametrize("modalities", COMBINATIONS, ids=lambda c: "+".join(c) or "text-only")
def test_absent_modality_equals_leaving_it_out(cfg, model, modalities):
    """Every key in the dict but flagged absent == those keys not in the dict at all."""
    full = make_batch(cfg, modalities=MODALITIES)
    for name in MODALITIES:
        full[f"{name}_present"][:] = name in modalities
    with torch.no_grad():
        flagged = model(full).logits
        left_out = model(make_batch(cfg, modalities=modalities)).logits
    torch.testing.assert_close(flagged, left_out, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODALITIES)
def test_pixels_of_an_absent_modality_change_nothing(cfg, model, name):
    batch = make_batch(cfg)
    batch[f"{name}_present"][1] = False
    changed = dict(batch)
    changed[name] = batch[name].clone()
    changed[name][1] = torch.randn_like(changed[name][1]) * 10
    changed[name][0] = torch.randn_like(changed[name][0])
    with torch.no_grad():
        before, after = model(batch).logits, model(changed).logits
    assert torch.equal(before[1], after[1])  # absent: not a bit changes
    assert not torch.allclose(before[0], after[0])  # present: the media is used
    assert torch.equal(before[2], after[2])  # samples do not see each other


def test_loss_is_next_token_ce_on_text_labels_only(cfg, model):
    batch = make_batch(cfg)
    with torch.no_grad():
        out = model(batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    # an ignored position's input token or a padding token's id does not matter for the loss
    changed = {k: v.clone() for k, v in batch.items()}
    changed["labels"][:, 0] = IGNORE_INDEX
    changed["input_ids"][0, -1] = 7  # padding (attention_mask 0, label -100)
    with torch.no_grad():
        again = model(changed)
    assert torch.equal(again.loss, out.loss)
    # per-sample losses average to the batch loss with token weights
    weighted = (out.per_sample_loss * out.per_sample_tokens).sum() / out.per_sample_tokens.sum()
    torch.testing.assert_close(weighted, out.loss)
    # a label that counts does change it
    changed["labels"][0, 2] = (changed["labels"][0, 2] + 1) % cfg.core.vocab_size
    with torch.no_grad():
        assert not torch.equal(model(changed).loss, out.loss)


def test_loss_is_zero_without_any_label(cfg, model):
    batch = make_batch(cfg)
    batch["labels"][:] = IGNORE_INDEX
    with torch.no_grad():
        out = model(batch)
    assert out.loss.item() == 0.0 and out.per_sample_tokens.sum() == 0


def test_parameter_counts_of_the_presets():
    big = MultimodalSLM(preset("slm-63m")).parameter_counts()
    assert abs(big["total"] - SEED_PARAMETERS) / SEED_PARAMETERS < 0.02
    parts = [v for k, v in big.items() if k != "total"]
    assert sum(parts) == big["total"]  # untied: the parts add up
    assert big["text_embeddings"] == big["lm_head"] == 32000 * 512
    tiny = MultimodalSLM(preset("tiny")).parameter_counts()
    assert 500_000 <= tiny["total"] <= 2_000_000


def test_cli_prints_json(capsys):
    main(["--preset", "tiny", "--json"])
    counts = json.loads(capsys.readouterr().out)
    assert counts["preset"] == "tiny" and counts["total"] > 0


def test_save_and_load_round_trip_gives_identical_outputs(cfg, model, tmp_path):
    tokenizer = make_tokenizer()
    model.save_pretrained(str(tmp_path / "ckpt"), tokenizer=tokenizer)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json"]
    loaded = MultimodalSLM.from_pretrained(str(tmp_path / "ckpt"))
    assert loaded.cfg == model.cfg and not loaded.training
    assert loaded.tokenizer.to_str() == tokenizer.to_str()
    batch = make_batch(cfg)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, loaded(batch).logits)


def test_tied_embeddings_save_and_load(tmp_path):
    config = preset("tiny")
    config.core.tie_word_embeddings = True
    model = MultimodalSLM(config).eval()
    assert model.lm_head.weight is model.core.embed_tokens.weight
    model.save_pretrained(str(tmp_path))
    loaded = MultimodalSLM.from_pretrained(str(tmp_path))
    assert loaded.lm_head.weight is loaded.core.embed_tokens.weight
    assert loaded.tokenizer is None
    batch = make_batch(config)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, loaded(batch).logits)


def media_inputs(cfg, batch_size=2):
    batch = make_batch(cfg, batch_size=batch_size)
    return {name: batch[name] for name in MODALITIES}


def test_greedy_generation_is_deterministic(cfg, model):
    media = media_inputs(cfg)
    first = model.generate(**media, max_new_tokens=6)
    second = model.generate(**media, max_new_tokens=6)
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    assert [g.mean_logprob for g in first] == [g.mean_logprob for g in second]
    for g in first:
        assert len(g.token_ids) == 6 or g.finished
        assert g.mean_logprob <= 0.0


def test_kv_cache_generation_equals_recomputation(cfg, model):
    media = media_inputs(cfg)
    prompts = [[10, 11, 12], [20]]  # different lengths: left padding is masked
    cached = model.generate(image=media["image"], video=media["video"], prompt_ids=prompts,
                            max_new_tokens=6)
    recomputed = model.generate(image=media["image"], video=media["video"], prompt_ids=prompts,
                                max_new_tokens=6, use_cache=False)
    assert [g.token_ids for g in cached] == [g.token_ids for g in recomputed]
    for a, b in zip(cached, recomputed):
        assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-4)
    # batching with padding gives what each sample gets alone
    alone = model.generate(image=media["image"][1:], video=media["video"][1:], prompt_ids=[[20]],
                           max_new_tokens=6)
    assert alone[0].token_ids == cached[1].token_ids
    assert alone[0].mean_logprob == pytest.approx(cached[1].mean_logprob, abs=1e-4)


def test_sampled_generation_is_reproducible_with_a_seeded_generator(cfg, model):
    media = media_inputs(cfg)

    def sample(seed):
        return [g.token_ids for g in model.generate(
            audio=media["audio"], max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50,
            generator=torch.Generator().manual_seed(seed))]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_generation_stops_at_eos_and_reports_confidence(cfg):
    torch.manual_seed(0)
    model = MultimodalSLM(cfg).eval()
    head = torch.nn.Linear(cfg.core.hidden_size, cfg.core.vocab_size, bias=True)
    with torch.no_grad():  # always say <eos>: its logit is 5, every other logit 0
        head.weight.zero_()
        head.bias.zero_()
        head.bias[EOS_ID] = 5.0
    model.lm_head = head
    out = model.generate(image=media_inputs(cfg)["image"], max_new_tokens=5)
    for g in out:
        assert g.finished and g.token_ids == [] and g.mean_logprob < 0


def test_generate_text_decodes_with_the_tokenizer(cfg, model):
    tokenizer = make_tokenizer()
    out = model.generate_text(tokenizer, prompt="a dog", video=media_inputs(cfg)["video"],
                              max_new_tokens=4)
    assert len(out) == 2
    assert all(g.text == tokenizer.decode(g.token_ids) for g in out)
    with pytest.raises(ValueError):
        model.generate(max_new_tokens=2)


def test_optimizer_groups_and_flops(model):
    optimizer = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    n = model.parameter_counts()["total"]
    assert model.estimate_flops_per_token() > 2 * n  # fwd+bwd is ~6 FLOPs per weight use


def test_dropout_follows_the_seed():
    from multimodal.model import _core_config

    assert preset("slm-63m").core.dropout == 0.1
    assert _core_config(preset("slm-63m")).attention_dropout == 0.1
    model = MultimodalSLM(preset("slm-63m"))
    assert model.embed_dropout.p == 0.1 and model.core.config.attention_dropout == 0.1

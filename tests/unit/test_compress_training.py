"""Early exit (exit loss, per-token exit, KV propagation) and distillation on the tiny preset."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from multimodal.compress import early_exit
from multimodal.compress.distill import (check_teacher, distillation_loss, student_from_teacher,
                                         training_loss_fn)
from multimodal.config import preset
from multimodal.model import MultimodalSLM
from tests.unit.test_model import make_batch, make_tokenizer

VOCAB = 300

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def tiny(num_layers: int = 2, seed: int = 0) -> MultimodalSLM:
    cfg = preset("tiny")
    cfg.core.vocab_size = VOCAB
    cfg.core.num_layers = num_layers
    torch.manual_seed(seed)
    return MultimodalSLM(cfg).eval()


# ---- early exit -------------------------------------------------------------------------------


def test_exit_loss_adds_the_loss_of_the_model_cut_after_the_first_layer():
    """Two layers: the only exit is layer 0's, i.e. a one-layer model with the same weights."""
    two = tiny(2)
    one = tiny(1)
    state = {k: v for k, v in two.state_dict().items() if not k.startswith("core.layers.1.")}
    one.load_state_dict(state)
    batch = make_batch(two.cfg)
    with torch.no_grad():
        plain = two(batch).loss
        loss, output = early_exit.early_exit_loss(two, batch, weight=0.5)
        cut = one(batch).loss
        unweighted, _ = early_exit.early_exit_loss(two, batch, weight=0.0)
    torch.testing.assert_close(loss, plain + 0.5 * cut)
    torch.testing.assert_close(unweighted, plain)
    assert torch.equal(output.loss, plain)


def test_never_confident_exit_generates_exactly_what_generate_does():
    model = tiny(4)
    media = {k: v for k, v in make_batch(model.cfg).items() if k in ("image", "audio")}
    expected = [g.token_ids for g in model.generate(**media, max_new_tokens=8)]
    result = early_exit.generate_early_exit(model, threshold=1.01, max_new_tokens=8, **media)
    assert [g.token_ids for g in result.generations] == expected
    assert result.average_depth == 4 and result.num_layers == 4


def test_calibrated_thresholds_follow_the_agreement_asked_for():
    model = tiny(4)
    with torch.no_grad():  # peaked softmax: every exit is confident
        model.lm_head.weight.mul_(300)
    batch = make_batch(model.cfg)
    lenient = early_exit.calibrate_thresholds(model, [batch], agreement=0.0)
    impossible = early_exit.calibrate_thresholds(model, [batch], agreement=1.01)
    assert len(lenient) == len(impossible) == 3
    assert lenient == [0.3] * 3  # every exit counts as reliable: the lowest grid value
    assert impossible == [1.01] * 3  # never reliable: never exit
    media = {"image": batch["image"]}
    expected = [g.token_ids for g in model.generate(**media, max_new_tokens=6)]
    result = early_exit.generate_early_exit(model, impossible, max_new_tokens=6, **media)
    assert [g.token_ids for g in result.generations] == expected and result.average_depth == 4
    with pytest.raises(ValueError, match="per-layer thresholds"):
        early_exit.generate_early_exit(model, [0.5], max_new_tokens=2, **media)


def test_always_confident_exit_uses_min_layer_after_the_first_token():
    model = tiny(4)
    image = make_batch(model.cfg, batch_size=1)["image"]
    result = early_exit.generate_early_exit(model, threshold=0.0, min_layer=2, max_new_tokens=6,
                                            image=image)
    tokens = 1 + len(result.generations[0].token_ids) - (0 if result.generations[0].finished else 1)
    # first token from the full prefill (4 layers), every later one exits at layer 2
    expected_depth = (4 + 2 * (tokens - 1)) / tokens
    assert result.average_depth == pytest.approx(expected_depth)
    assert result.average_depth < 4


def test_propagated_keys_and_values_equal_what_the_skipped_layer_computes():
    """State propagation feeds a skipped layer the exited state: its K/V must be exactly those
    the layer itself would compute from that same input."""
    model = tiny(2)
    core = model.core
    hidden = torch.randn(1, 1, model.cfg.core.hidden_size)
    position = torch.tensor([[3]])
    rotary = core.rotary_emb(hidden, position_ids=position)
    run, propagated = DynamicCache(config=core.config), DynamicCache(config=core.config)
    with torch.no_grad():
        for index, layer in enumerate(core.layers):
            layer(hidden, attention_mask=None, position_ids=position, cache=run, use_cache=True,
                  position_embeddings=rotary)
        early_exit._propagate_kv(model, hidden, range(2), propagated, rotary)
    for index in range(2):
        torch.testing.assert_close(propagated.layers[index].keys, run.layers[index].keys)
        torch.testing.assert_close(propagated.layers[index].values, run.layers[index].values)


# ---- distillation -----------------------------------------------------------------------------


def test_distillation_loss_is_the_distilbert_mix():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.full((2, 6), -100)
    labels[:, 2:5] = 4
    hard = torch.tensor(1.7)
    assert distillation_loss(teacher, teacher, labels, 0.7, 2.0, hard) == pytest.approx(0.3 * 1.7)
    keep = labels[:, 1:] != -100
    p = (teacher[:, :-1][keep] / 3.0).softmax(-1)
    q = (student[:, :-1][keep] / 3.0).log_softmax(-1)
    kl = (p * (p.log() - q)).sum(-1).mean()
    expected = 0.25 * 9 * kl + 0.75 * hard
    torch.testing.assert_close(distillation_loss(student, teacher, labels, 0.25, 3.0, hard), expected)


def test_a_student_learns_the_teacher_from_soft_targets_alone():
    """alpha = 1 (no labels): the student's next-token choices converge to the teacher's."""
    teacher, student = tiny(2, seed=0), tiny(1, seed=1).train()
    with torch.no_grad():  # a confident teacher (a random one is near uniform: no clear argmax)
        teacher.lm_head.weight.mul_(30)
    batch = make_batch(teacher.cfg, batch_size=4)
    with torch.no_grad():
        teacher_logits = teacher(batch).logits
    keep = batch["labels"][:, 1:] != -100

    def agreement() -> float:
        with torch.no_grad():
            student_logits = student(batch).logits
        same = student_logits[:, :-1].argmax(-1) == teacher_logits[:, :-1].argmax(-1)
        return float(same[keep].float().mean())

    before = agreement()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for _ in range(100):
        output = student(batch)
        loss = distillation_loss(output.logits, teacher_logits, batch["labels"], 1.0, 2.0, output.loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.5 and agreement() >= 0.9


def test_training_loss_fn_without_extras_is_the_model_loss_and_with_a_teacher_distills(tmp_path):
    model = tiny(2)
    batch = make_batch(model.cfg)
    plain = training_loss_fn(type("T", (), {"teacher": None, "early_exit_loss": 0.0})(), "cpu")
    with torch.no_grad():
        assert torch.equal(plain(model, batch), model(batch).loss)
    model.save_pretrained(str(tmp_path / "teacher"), tokenizer=make_tokenizer())
    settings = type("T", (), {"teacher": str(tmp_path / "teacher"), "early_exit_loss": 0.0,
                              "distill_alpha": 1.0, "distill_temperature": 2.0})()
    with torch.no_grad():  # the student is the teacher: nothing to learn, KL = 0
        assert float(training_loss_fn(settings, "cpu")(model, batch)) == pytest.approx(0, abs=1e-6)


def test_teacher_with_another_tokenizer_is_one_clear_error(tmp_path):
    tiny(2).save_pretrained(str(tmp_path / "teacher"), tokenizer=make_tokenizer())
    check_teacher(str(tmp_path / "teacher"), make_tokenizer(), VOCAB)  # same tokenizer: fine
    from tokenizers import Tokenizer, models

    other = Tokenizer(models.WordLevel({"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}, "<unk>"))
    with pytest.raises(ValueError, match="does not share the run's tokenizer; train the student "
                                         "with --tokenizer .*tokenizer.json"):
        check_teacher(str(tmp_path / "teacher"), other, VOCAB)
    with pytest.raises(ValueError, match="vocab"):
        check_teacher(str(tmp_path / "teacher"), make_tokenizer(), VOCAB + 1)


def test_finetune_with_exit_loss_and_a_teacher_lowers_the_loss():
    from multimodal.compress.finetune import finetune

    teacher, model = tiny(2, seed=0), tiny(2, seed=1)
    batches = [make_batch(model.cfg, batch_size=4, seed=s) for s in range(2)]
    losses = finetune(model, batches, steps=30, lr=3e-3, teacher=teacher, alpha=0.5,
                      exit_weight=0.5, warmup=5)
    assert len(losses) == 30 and losses[-1] < 0.7 * losses[0]
    assert not model.training


def test_a_student_initialised_from_the_teacher_keeps_every_other_layer():
    teacher = tiny(4)
    student = student_from_teacher(teacher, 2)
    assert student.cfg.core.num_layers == 2 and teacher.cfg.core.num_layers == 4
    for mine, theirs in ((0, 0), (1, 2)):
        assert torch.equal(student.core.layers[mine].mlp.down_proj.weight,
                           teacher.core.layers[theirs].mlp.down_proj.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert all(p.requires_grad for p in student.parameters())
    student.core.layers[0].mlp.down_proj.weight.data.add_(1.0)  # its own copy
    assert not torch.equal(student.core.layers[0].mlp.down_proj.weight,
                           teacher.core.layers[0].mlp.down_proj.weight)
    with pytest.raises(ValueError):
        student_from_teacher(teacher, 5)

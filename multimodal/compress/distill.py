"""Knowledge distillation (DistilBERT's recipe) and the training job's loss builder.

``distillation_loss``: ``alpha * T^2 * KL(teacher || student)`` on temperature-``T`` softened
next-token distributions, over the text positions that carry a label, plus ``(1 - alpha) * CE``
on the labels. ``alpha = 1`` learns from the teacher's soft targets alone.

``student_from_teacher`` initialises a shallower student from the teacher's layers (DistilBERT).

``training_loss_fn`` is what ``multimodal/training/step.py`` calls for every micro-batch: the plain
model loss, or with ``train.teacher`` the distillation loss against a frozen teacher loaded on
the worker, and/or with ``train.early_exit_loss`` the LayerSkip-style exit loss.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.batch import IGNORE_INDEX

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, alpha: float, temperature: float,
                      hard_loss: torch.Tensor) -> torch.Tensor:
    """``alpha * T^2 * KL + (1 - alpha) * hard_loss`` on the label positions (shifted as in
    ``text_loss``: position ``t`` predicts ``labels[:, t + 1]``)."""
    keep = labels[:, 1:] != IGNORE_INDEX
    student = student_logits[:, :-1][keep].float() / temperature
    teacher = teacher_logits[:, :-1][keep].float() / temperature
    if student.numel() == 0:
        return hard_loss * (1 - alpha)
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                  reduction="batchmean")
    return alpha * temperature ** 2 * kl + (1 - alpha) * hard_loss


def load_teacher(uri: str, device: torch.device | str) -> nn.Module:
    """The frozen teacher (eval mode, no gradients) from a ``save_pretrained`` folder or prefix."""
    from multimodal.model import MultimodalSLM

    teacher = MultimodalSLM.from_pretrained(uri, device=device)
    teacher.requires_grad_(False)
    return teacher.eval()


def check_teacher(teacher_uri: str | None, tokenizer: Any, vocab_size: int) -> None:
    """Raise ``ValueError`` (one line) unless the teacher shares the run's tokenizer."""
    if not teacher_uri:
        return
    from multimodal import fs
    from multimodal.model import CONFIG_FILE, TOKENIZER_FILE

    if not fs.exists(fs.join(teacher_uri, CONFIG_FILE)):
        raise ValueError(f"teacher {teacher_uri} has no {CONFIG_FILE}; give a save_pretrained folder")
    tokenizer_uri = fs.join(teacher_uri, TOKENIZER_FILE)
    same = False
    if fs.exists(tokenizer_uri):
        from tokenizers import Tokenizer

        teacher_tokenizer = Tokenizer.from_str(fs.read_bytes(tokenizer_uri).decode())
        same = teacher_tokenizer.get_vocab() == tokenizer.get_vocab()
    if not same:
        raise ValueError(f"teacher {teacher_uri} does not share the run's tokenizer; train the "
                         f"student with --tokenizer {tokenizer_uri}")
    from multimodal.config import ModelConfig

    teacher_vocab = ModelConfig.model_validate_json(fs.read_bytes(fs.join(teacher_uri, CONFIG_FILE))
                                                    ).core.vocab_size
    if teacher_vocab != vocab_size:
        raise ValueError(f"teacher vocab {teacher_vocab} != student vocab {vocab_size}")


def training_loss_fn(train: Any, device: torch.device | str) -> LossFn:
    """The per-micro-batch loss for the training loop, from ``TrainSettings``."""
    teacher_uri = getattr(train, "teacher", None)
    exit_weight = float(getattr(train, "early_exit_loss", 0.0) or 0.0)
    teacher = load_teacher(teacher_uri, device) if teacher_uri else None

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if exit_weight:
            from multimodal.compress.early_exit import early_exit_loss

            loss, output = early_exit_loss(model, batch, exit_weight)
        else:
            output = model(batch)
            loss = output.loss
        if teacher is None:
            return loss
        with torch.no_grad():
            teacher_logits = teacher(batch).logits
        return distillation_loss(output.logits, teacher_logits, batch["labels"],
                                 train.distill_alpha, train.distill_temperature, loss)
    return loss_fn


def student_from_teacher(teacher: nn.Module, num_layers: int) -> nn.Module:
    """DistilBERT's initialisation: a copy of the teacher keeping ``num_layers`` of its core
    layers, evenly spaced from the first (4 -> 2 keeps layers 0 and 2); encoders, embeddings and
    head copied as they are."""
    from multimodal.compress.prune_layers import without_layers

    total = len(teacher.core.layers)
    if not 1 <= num_layers <= total:
        raise ValueError(f"a student of {num_layers} layers from a {total}-layer teacher")
    kept = {int(i * total / num_layers) for i in range(num_layers)}
    student = without_layers(teacher, [i for i in range(total) if i not in kept])
    return student.requires_grad_(True)

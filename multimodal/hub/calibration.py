"""Confidence that compares across experts: a per-expert temperature on the length-normalised
log-probability, fitted on the expert's validation split when it is registered.

An expert's raw score for an answer is ``mean_logprob`` (mean log p per generated token, <= 0);
its confidence is ``exp(mean_logprob / T)``, read as "the probability that the answer is right".
``T`` minimises the binary cross-entropy between that confidence and exact-match correctness on
the validation samples (a mixed split: the expert should be sure on its own domain and unsure on
the others). ``T = 1`` is the raw geometric-mean token probability. The fit is stored as
``calibration.json`` beside the model's weights.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

from multimodal import fs

CALIBRATION_FILE = "calibration.json"
MIN_GROUP_ACCURACY = 0.25  # an expert is competent on a media group where it is right this often
TEMPERATURES = np.exp(np.linspace(math.log(0.02), math.log(50.0), 400))


@dataclass
class Outcome:
    """One validation sample answered by one expert."""

    group: str  # image, audio, video, multi (evaluation.modality_group)
    reference: str
    text: str
    mean_logprob: float
    score_logprob: float | None = None  # mean log p of the first ``score_tokens`` tokens only

    @property
    def correct(self) -> bool:
        return self.text.strip().lower() == self.reference.strip().lower()


@dataclass
class Calibration:
    temperature: float = 1.0
    samples: int = 0
    accuracy: float | None = None
    ece_before: float | None = None  # expected calibration error of exp(mean_logprob)
    ece_after: float | None = None  # ... of exp(mean_logprob / temperature)
    accuracy_by_group: dict[str, float] = field(default_factory=dict)
    modalities: list[str] | None = None  # media groups it answers well (None: not measured)
    validation: str | None = None
    score_tokens: int | None = None  # the short score's length (None: not fitted)
    score_temperature: float | None = None  # T of exp(score_logprob / T) for the full answer's correctness
    score_ece_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence(mean_logprob: float | np.ndarray, temperature: float) -> float | np.ndarray:
    """``exp(mean_logprob / temperature)`` in [0, 1]."""
    return np.exp(np.minimum(np.asarray(mean_logprob, dtype=np.float64), 0.0) / temperature)


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Sample-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidences, correct = np.asarray(confidences, float), np.asarray(correct, float)
    if confidences.size == 0:
        return 0.0
    index = np.minimum((confidences * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            error += chosen.mean() * abs(correct[chosen].mean() - confidences[chosen].mean())
    return float(error)


def fit_temperature(mean_logprobs: np.ndarray, correct: np.ndarray) -> float:
    """The temperature (on a log grid, 0.02 .. 50) with the lowest binary cross-entropy."""
    logprobs = np.minimum(np.asarray(mean_logprobs, float), 0.0)
    labels = np.asarray(correct, float)
    if logprobs.size == 0:
        return 1.0
    probs = np.clip(np.exp(logprobs[None, :] / TEMPERATURES[:, None]), 1e-6, 1 - 1e-6)
    losses = -(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)).mean(axis=1)
    return float(TEMPERATURES[int(np.argmin(losses))])


def calibrate(outcomes: list[Outcome], validation: str | None = None,
              min_group_accuracy: float = MIN_GROUP_ACCURACY, score_tokens: int | None = None) -> Calibration:
    """Fit the temperature on ``outcomes``, report the calibration error before and after, and
    the media groups the expert is competent on (exact match >= ``min_group_accuracy``); with
    ``score_tokens``, also the temperature of the short score (``Outcome.score_logprob``)."""
    if not outcomes:
        return Calibration(validation=validation)
    short = {}
    if score_tokens:
        scores = np.array([o.score_logprob for o in outcomes], dtype=float)
        hits = np.array([o.correct for o in outcomes])
        short_t = fit_temperature(scores, hits)
        short = {"score_tokens": score_tokens, "score_temperature": short_t,
                 "score_ece_after": expected_calibration_error(confidence(scores, short_t), hits)}
    logprobs = np.array([o.mean_logprob for o in outcomes])
    correct = np.array([o.correct for o in outcomes])
    temperature = fit_temperature(logprobs, correct)
    by_group: dict[str, list[bool]] = defaultdict(list)
    for outcome in outcomes:
        by_group[outcome.group].append(outcome.correct)
    accuracy_by_group = {group: float(np.mean(hits)) for group, hits in sorted(by_group.items())}
    return Calibration(
        accuracy_by_group=accuracy_by_group,
        modalities=[g for g, a in accuracy_by_group.items() if a >= min_group_accuracy],
        temperature=temperature, samples=len(outcomes), accuracy=float(correct.mean()),
        ece_before=expected_calibration_error(confidence(logprobs, 1.0), correct),
        ece_after=expected_calibration_error(confidence(logprobs, temperature), correct),
        validation=validation, **short)


def generate_on_shards(model, data_uri: str, max_samples: int | None = None, batch_size: int = 32,
                       max_new_tokens: int | None = None, score_tokens: int | None = None) -> Iterator[Outcome]:
    """Greedy captions from the media of every sample that has media (text-only rows skipped);
    with ``score_tokens``, also each sample's short score (its first ``score_tokens`` tokens)."""
    import torch

    from multimodal.batch import MODALITIES, present_key
    from multimodal.data.shard_reader import iter_model_batches
    from multimodal.evaluation import modality_group

    for read in iter_model_batches(data_uri, model.cfg.media, model.tokenizer, batch_size, max_samples):
        batch, texts = read.batch, read.texts
        combos: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i in range(len(texts)):
            combo = tuple(m for m in MODALITIES if bool(batch[present_key(m)][i]))
            if combo:
                combos[combo].append(i)
        for combo, indices in combos.items():
            media = {m: batch[m][torch.tensor(indices)] for m in combo}
            generations = model.generate(**media, max_new_tokens=max_new_tokens or model.cfg.media.max_text_tokens)
            short = (model.generate(**media, max_new_tokens=score_tokens) if score_tokens
                     else [None] * len(generations))
            for i, generation, score in zip(indices, generations, short):
                group = modality_group({m: m in combo for m in MODALITIES})
                yield Outcome(group, texts[i], (generation.text or "").strip(), generation.mean_logprob,
                              score.mean_logprob if score is not None else None)


def calibration_uri(model_uri: str) -> str:
    return fs.join(model_uri, CALIBRATION_FILE)


def load_calibration(model_uri: str) -> Calibration | None:
    """The stored calibration of the model at ``model_uri``, if any."""
    uri = calibration_uri(model_uri)
    if not fs.exists(uri):
        return None
    return Calibration(**json.loads(fs.read_bytes(uri)))


def store_calibration(model_uri: str, calibration: Calibration) -> None:
    fs.write_bytes_atomic(calibration_uri(model_uri), json.dumps(calibration.to_dict(), indent=1).encode())


def register_expert(model_uri: str, validation: str | None, max_samples: int | None = 400,
                    refit: bool = False, score_tokens: int | None = None) -> Calibration:
    """The expert's calibration: the stored one (when it has the short score for
    ``score_tokens``), else fitted on ``validation`` and stored (no validation data: temperature
    1, not stored)."""
    stored = None if refit else load_calibration(model_uri)
    if stored is not None and (not score_tokens or stored.score_tokens == score_tokens or not validation):
        return stored
    if not validation:
        return Calibration()
    from multimodal.model import MultimodalSLM

    model = MultimodalSLM.from_pretrained(model_uri)
    outcomes = list(generate_on_shards(model, validation, max_samples, score_tokens=score_tokens))
    calibration = calibrate(outcomes, validation, score_tokens=score_tokens)
    store_calibration(model_uri, calibration)
    return calibration

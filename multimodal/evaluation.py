"""Evaluate a trained model on shards: loss, perplexity and caption accuracy per modality.

Samples are grouped by what they carry: ``image``, ``audio``, ``video`` (one medium), ``multi``
(several) and ``text`` (text only). For every group: mean next-token loss over the text tokens and
its perplexity; for groups with media, the exact-match accuracy of the greedy caption generated
from the media alone against the sample's text (case and surrounding space ignored).
This runs in one process (no Ray cluster), reading the shards from disk or S3 through the training
path (``data/shard_reader.py``: decoders → wire rows → ``training_collate`` → ``model_batch``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from multimodal.batch import MODALITIES, present_key
from multimodal.data.shard_reader import check_model_matches, iter_model_batches

GROUPS = ("image", "audio", "video", "multi", "text")


def modality_group(present: dict[str, bool]) -> str:
    carried = [m for m in MODALITIES if present[m]]
    if not carried:
        return "text"
    return carried[0] if len(carried) == 1 else "multi"


@dataclass
class GroupScore:
    samples: int = 0
    loss_sum: float = 0.0
    tokens: int = 0
    captions: int = 0
    exact: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        loss = self.loss_sum / self.tokens if self.tokens else None
        return {"samples": self.samples, "loss": loss,
                "perplexity": math.exp(loss) if loss is not None and loss < 50 else None,
                "caption_samples": self.captions,
                "caption_accuracy": self.exact / self.captions if self.captions else None,
                "examples": self.examples}


def evaluate(model, data_uri: str, batch_size: int = 32, max_samples: int | None = None,
             max_new_tokens: int | None = None, examples_per_group: int = 3) -> dict[str, Any]:
    """Score ``model`` (with its tokenizer) on the shards at ``data_uri`` (raw or pre-decoded)."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; export it with save_pretrained(..., tokenizer=...)")
    check_model_matches(data_uri, model)
    spec = model.cfg.media
    max_new_tokens = max_new_tokens or spec.max_text_tokens
    scores: dict[str, GroupScore] = defaultdict(GroupScore)
    model.eval()
    for read in iter_model_batches(data_uri, spec, model.tokenizer, batch_size, max_samples):
        batch, texts = read.batch, read.texts
        with torch.no_grad():
            output = model(batch)
        groups = [modality_group({m: bool(batch[present_key(m)][i]) for m in MODALITIES})
                  for i in range(len(texts))]
        for i, group in enumerate(groups):
            score = scores[group]
            score.samples += 1
            tokens = int(output.per_sample_tokens[i])
            score.loss_sum += float(output.per_sample_loss[i]) * tokens
            score.tokens += tokens
        _score_captions(model, batch, texts, groups, scores, max_new_tokens, examples_per_group)
    result = {group: scores[group].to_dict() for group in GROUPS if group in scores}
    total_tokens = sum(s.tokens for s in scores.values())
    overall = sum(s.loss_sum for s in scores.values()) / total_tokens if total_tokens else None
    return {"groups": result, "loss": overall,
            "perplexity": math.exp(overall) if overall is not None and overall < 50 else None,
            "samples": sum(s.samples for s in scores.values())}


def _score_captions(model, batch, texts, groups, scores, max_new_tokens, examples_per_group) -> None:
    """Greedy captions from the media alone, one generate call per combination of modalities."""
    combos: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        if group != "text":
            combos[tuple(m for m in MODALITIES if bool(batch[present_key(m)][i]))].append(i)
    for combo, indices in combos.items():
        index = torch.tensor(indices)
        media = {m: batch[m][index] for m in combo}
        generations = model.generate(**media, max_new_tokens=max_new_tokens)
        for i, generation in zip(indices, generations):
            score = scores[groups[i]]
            predicted = (generation.text or "").strip()
            score.captions += 1
            correct = predicted.lower() == texts[i].strip().lower()
            score.exact += int(correct)
            if len(score.examples) < examples_per_group:
                score.examples.append({"reference": texts[i], "generated": predicted,
                                       "confidence": round(generation.mean_logprob, 4), "correct": correct})


def format_table(report: dict[str, Any]) -> str:
    """A readable table of the evaluation report."""
    lines = [f"{'group':<8} {'samples':>8} {'loss':>8} {'ppl':>9} {'captions':>9} {'accuracy':>9}"]
    for group, score in report["groups"].items():
        loss = f"{score['loss']:.4f}" if score["loss"] is not None else "-"
        ppl = f"{score['perplexity']:.3f}" if score["perplexity"] is not None else "-"
        acc = f"{100 * score['caption_accuracy']:.1f}%" if score["caption_accuracy"] is not None else "-"
        lines.append(f"{group:<8} {score['samples']:>8} {loss:>8} {ppl:>9} {score['caption_samples']:>9} {acc:>9}")
    if report["loss"] is not None:
        lines.append(f"{'all':<8} {report['samples']:>8} {report['loss']:>8.4f} {report['perplexity'] or 0:>9.3f}")
    return "\n".join(lines)

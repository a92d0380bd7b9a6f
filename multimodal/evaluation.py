"""Evaluate a trained model on shards: loss, perplexity and caption accuracy per modality.

Samples are grouped by what they carry: ``image``, ``audio``, ``video`` (one medium), ``multi``
(several) and ``text`` (text only). For every group: mean next-token loss over the text tokens and
its perplexity; for groups with media, the exact-match accuracy of the greedy caption generated
from the media alone against the sample's text (case and surrounding space ignored).
This runs in one process (no Ray needed), reading the shards with pyarrow from disk or S3.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from multimodal import fs
from multimodal.batch import MODALITIES, present_key
from multimodal.data import schema
from multimodal.data.pipeline import SampleProcessor

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


def iter_shard_batches(uri: str, summary: schema.DatasetSummary, batch_size: int,
                       max_samples: int | None = None) -> Iterator[list[dict]]:
    """Rows in the shard schema, ``batch_size`` at a time, streamed one Parquet batch after another
    (a whole shard is never held in memory)."""
    root = schema.dataset_root(uri)
    seen = 0
    for shard_id, name in enumerate(summary.shard_names):
        filesystem, path = fs.filesystem_for(fs.join(root, name))
        with filesystem.open_input_file(path) as handle:
            for record_batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_size):
                rows = record_batch.to_pylist()
                if max_samples is not None:
                    rows = rows[:max_samples - seen]
                for row in rows:
                    seen += 1
                    row.update(shard_id=shard_id, sample_id=seen)
                if rows:
                    yield rows
                if max_samples is not None and seen >= max_samples:
                    return


def _predecoded_arrays(summary, data_uri: str, model):
    """For pre-decoded shards: a function from their rows to dense contract arrays (after
    checking they were made for this model's spec and tokenizer); None for raw shards."""
    import pyarrow as pa

    from multimodal.data import predecoded
    from multimodal.data.wire import wire_to_dense

    if not predecoded.is_predecoded(summary):
        return None
    spec = model.cfg.media
    predecoded.check_spec(summary, spec, data_uri, model.cfg.preset)
    if predecoded.tokenizer_sha256(model.tokenizer.to_str()) != summary.decoded["tokenizer_sha256"]:
        raise ValueError(f"{data_uri} was tokenized with another tokenizer than the model's; evaluate on "
                         "raw shards or re-pack with --tokenizer <model>/tokenizer.json")

    def arrays(rows: list[dict]) -> dict:
        table = pa.Table.from_pylist(rows, schema=predecoded.PREDECODED_SCHEMA)
        return wire_to_dense(predecoded.to_wire(table, spec, shard_id=-1), spec)

    return arrays


def evaluate(model, data_uri: str, batch_size: int = 32, max_samples: int | None = None,
             max_new_tokens: int | None = None, examples_per_group: int = 3) -> dict[str, Any]:
    """Score ``model`` (with its tokenizer) on the shards at ``data_uri``."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; export it with save_pretrained(..., tokenizer=...)")
    summary = schema.read_summary(data_uri)
    if summary is None:
        raise FileNotFoundError(f"{data_uri}: no _dataset.json; pack the data with slm-make-shards first")
    spec = model.cfg.media
    to_arrays = _predecoded_arrays(summary, data_uri, model)  # None for raw shards
    processor = SampleProcessor(spec, model.tokenizer, summary.shard_names,
                                max_consecutive_failures=10**9, torch_threads=None, max_failure_rate=1.0)
    max_new_tokens = max_new_tokens or spec.max_text_tokens
    scores: dict[str, GroupScore] = defaultdict(GroupScore)
    model.eval()
    for rows in iter_shard_batches(data_uri, summary, batch_size, max_samples):
        texts = [row.get("text") or "" for row in rows]
        arrays = to_arrays(rows) if to_arrays else processor.process_rows(rows)
        valid = arrays["sample_valid"]
        batch = {k: torch.from_numpy(np.ascontiguousarray(v[valid])) for k, v in arrays.items()
                 if k in ("input_ids", "attention_mask", "labels", *MODALITIES,
                          *(present_key(m) for m in MODALITIES))}
        texts = [t for t, ok in zip(texts, valid) if ok]
        if not texts:
            continue
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

"""The small demo corpus ``jobs/bench_edge.py`` trains its teacher on: shards, a tokenizer and
decoded batches held in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Data:
    train_uri: str
    val_uri: str
    tokenizer: Any
    train_batches: list = field(default_factory=list)
    val_batches: list = field(default_factory=list)


def prepare_data(out: Path, per_modality: dict[str, int], batch_size: int = 16) -> Data:
    from multimodal.compress.calibration import calibration_batches
    from multimodal.data.demo_corpus import make_demo_corpus
    from multimodal.data.make_shards import make_shards
    from multimodal.data.tokenizer import train_tokenizer_from_dataset
    from multimodal.model import MultimodalSLM

    shards = out / "shards"
    if not (shards / "val" / "_dataset.json").exists():
        corpus = make_demo_corpus(out / "corpus", per_modality,
                                  splits={"train": 0.8, "val": 0.2}, seed=1)
        for split, manifest in corpus.items():
            make_shards(str(manifest), str(shards / split), progress=None)
    tokenizer = train_tokenizer_from_dataset(str(shards / "train"), 512)
    data = Data(str(shards / "train"), str(shards / "val"), tokenizer)
    probe = MultimodalSLM(tiny_config(tokenizer.get_vocab_size()))
    probe.tokenizer = tokenizer
    data.train_batches = calibration_batches(probe, data.train_uri, 10**6, batch_size)
    data.val_batches = calibration_batches(probe, data.val_uri, 10**6, 32)
    return data


def tiny_config(vocab_size: int, **core: Any):
    from multimodal.config import preset

    cfg = preset("tiny")
    cfg.core.vocab_size = vocab_size
    for key, value in core.items():
        setattr(cfg.core, key, value)
    return cfg

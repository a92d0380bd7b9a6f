"""Tiny domain experts for the hub tests: one caption domain each, trained in this process.

(The fine-tuning job itself is tested in tests/integration/test_finetune_job.py; here the point
is the serving, so the experts are trained with a plain loop over decoded shards, a few seconds each.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from multimodal.batch import MODALITIES, TEXT_KEYS, present_key
from multimodal.config import preset
from multimodal.data import synthetic
from multimodal.data.demo_corpus import MANIFEST_FIELDS
from multimodal.data.make_shards import make_shards
from multimodal.data.tokenizer import train_tokenizer
from multimodal.data.shard_reader import iter_model_batches
from multimodal.model import MultimodalSLM

DOMAINS = {"shapes": "image", "notes": "audio", "motion": "video"}


# three captions per domain: learnable in a few hundred CPU steps, so an expert is sure on its own
# domain and unsure elsewhere
CLASSES = {"shapes": [("red", "circle"), ("blue", "square"), ("green", "triangle")],
           "notes": [["C"], ["E", "G"], ["A", "D", "C"]],
           "motion": [("red", "left"), ("blue", "up"), ("green", "right")]}


def write_sample(domain: str, index: int, folder: Path, rng: np.random.Generator) -> dict[str, str]:
    """One media file of class ``index % 3`` and its manifest row."""
    label = CLASSES[domain][index % 3]
    row = {"id": f"{domain}-{index:04d}", "text": "", "image": "", "audio": "", "video": ""}
    if domain == "shapes":
        path = synthetic.write_image(folder / f"{row['id']}.png", *label, size=32, rng=rng)
        row.update(text=synthetic.image_caption(*label), image=str(path))
    elif domain == "notes":
        path = synthetic.write_audio(folder / f"{row['id']}.wav", list(label), sample_rate=8000, seconds=1.5)
        row.update(text=synthetic.audio_caption(list(label)), audio=str(path))
    else:
        path = synthetic.write_video(folder / f"{row['id']}.mp4", *label, frames=4, size=32, fps=4)
        row.update(text=synthetic.video_caption(*label), video=str(path))
    return row


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def domain_data(root: Path, domains: list[str], count: int, seed: int = 0) -> dict:
    """Per domain: train shards and raw test rows; plus one mixed validation split (shards).

    Returns ``{"train": {domain: uri}, "val": mixed_uri, "test": {domain: [row, ...]}}``.
    """
    rng = np.random.default_rng(seed)
    (root / "media").mkdir(parents=True, exist_ok=True)
    data: dict = {"train": {}, "test": {}}
    val_rows = []
    for domain in domains:
        rows = {split: [write_sample(domain, offset * count + i, root / "media", rng) for i in range(count)]
                for offset, split in enumerate(("train", "val", "test"))}
        data["train"][domain] = str(root / "shards" / domain / "train")
        make_shards(str(write_manifest(root / f"{domain}-train.csv", rows["train"])), data["train"][domain],
                    progress=None)
        val_rows += rows["val"]
        data["test"][domain] = rows["test"]
    data["val"] = str(root / "shards" / "val")
    make_shards(str(write_manifest(root / "val.csv", val_rows)), data["val"], progress=None)
    return data


def decoded_batches(uri: str, model: MultimodalSLM, batch_size: int) -> list[dict[str, torch.Tensor]]:
    keys = (*TEXT_KEYS, *MODALITIES, *(present_key(m) for m in MODALITIES))
    return [{k: read.batch[k] for k in keys}
            for read in iter_model_batches(uri, model.cfg.media, model.tokenizer, batch_size)]


def train_expert(train_uri: str, out_uri: str, tokenizer, steps: int, seed: int = 0) -> str:
    """A ``tiny`` model trained on one domain's shards for ``steps`` steps, saved at ``out_uri``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models on shared cores: one thread is far faster
    try:
        return _train(train_uri, out_uri, tokenizer, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(train_uri: str, out_uri: str, tokenizer, steps: int, seed: int) -> str:
    cfg = preset("tiny")
    cfg.core.vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(seed)
    model = MultimodalSLM(cfg)
    model.tokenizer = tokenizer
    batches = decoded_batches(train_uri, model, batch_size=8)
    optimizer = model.configure_optimizer(lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        loss = model(batches[step % len(batches)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval().save_pretrained(out_uri, tokenizer=tokenizer)
    return out_uri


def demo_tokenizer():
    from multimodal.data.demo_corpus import DEMO_SCALE

    texts = [synthetic.image_caption(c, s) for c in synthetic.COLOURS for s in synthetic.SHAPES]
    texts += [synthetic.video_caption(c, d) for c in synthetic.COLOURS for d in synthetic.DIRECTIONS]
    texts += ["notes " + " ".join(DEMO_SCALE[i:i + 3]) for i in range(len(DEMO_SCALE))]
    return train_tokenizer(texts * 3, 300)

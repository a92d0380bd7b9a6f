"""Shards read in one process through the training path (evaluation, calibration, local training)."""

from __future__ import annotations

import pyarrow.parquet as pq
import torch

from multimodal.config import preset
from multimodal.data import make_shards as ms
from multimodal.data.shard_reader import iter_model_batches, iter_shard_rows
from multimodal.data.tokenizer import train_tokenizer
from tests.unit.test_predecoded_shards import write_manifest

SPEC = preset("tiny").media


def test_model_batches_are_training_batches_with_their_texts(media_dir, tmp_path):
    manifest = write_manifest(media_dir, "reader.csv", repeat=2)
    raw = tmp_path / "raw"
    summary = ms.make_shards(str(manifest), str(raw), progress=None)
    stored = pq.read_table(str(raw / summary.shard_names[0])).to_pylist()
    text_of = {row["sample_id"]: row["text"] for row in stored}
    assert sorted(text_of) == list(range(14))  # the pipeline's ids: from 0
    tok = train_tokenizer([row["text"] for row in stored], 300)
    reads = list(iter_model_batches(str(raw), SPEC, tok, batch_size=4))
    ids = [int(i) for read in reads for i in read.batch["sample_id"]]
    # the two rows whose only medium is corrupt are dropped, as a training worker drops them
    assert len(ids) == 12 and ids == sorted(ids) and ids[0] == 0
    assert sum(read.stats.dropped for read in reads) == 2
    for read in reads:
        assert read.texts == [text_of[int(i)] for i in read.batch["sample_id"]]
        image = read.batch["image"]
        assert image.dtype == torch.float32 and -1.0 <= float(image.min()) <= float(image.max()) <= 1.0
    first = list(iter_model_batches(str(raw), SPEC, tok, batch_size=4, max_samples=5))
    assert [int(i) for read in first for i in read.batch["sample_id"]] == [0, 1, 2, 3, 4]
    rows = [row for batch in iter_shard_rows(str(raw), 4, max_samples=6) for row in batch]
    assert [row["sample_id"] for row in rows] == list(range(6)) and rows[0]["image"]  # encoded bytes

"""``loader.EpochBatches``: epochs read ahead by a thread, over a real ``streaming_split`` of the
pipeline (two consumers, as two Train workers), every sample once per epoch, errors raised where
the batches are consumed."""

from __future__ import annotations

import json
import threading

import pytest

from multimodal.config import preset
from multimodal.data.loader import EpochBatches
from multimodal.data.make_shards import make_shards
from multimodal.data.pipeline import build_dataset
from multimodal.data.tokenizer import train_tokenizer_from_dataset
from tests.media import GOOD_AUDIO, GOOD_IMAGES

pytestmark = pytest.mark.integration
SPEC = preset("tiny").media


@pytest.fixture(scope="module")
def packed(media_dir, tmp_path_factory):
    names = [("image", n) for n in GOOD_IMAGES] + [("audio", n) for n in GOOD_AUDIO]
    manifest = media_dir / "epoch_batches.jsonl"
    manifest.write_text("".join(json.dumps({"text": f"{m} {n} {i}", m: n}) + "\n"
                                for i in range(3) for m, n in names))
    folder = tmp_path_factory.mktemp("epoch_batches")
    shards = str(folder / "shards")
    summary = make_shards(str(manifest), shards, target_shard_bytes=30_000, row_group_bytes=10_000, progress=None)
    tokenizer = str(folder / "tokenizer.json")
    train_tokenizer_from_dataset(shards, 300, tokenizer)
    return shards, tokenizer, summary.rows


def test_each_consumer_reads_every_epoch_and_together_every_sample_once(ray_cluster, packed):
    shards, tokenizer, total = packed
    split = build_dataset(shards, SPEC, tokenizer, concurrency=(1, 2), num_cpus=0.5).streaming_split(2, equal=True)
    seen: list[dict[int, list[int]]] = [{}, {}]
    errors: list[BaseException] = []

    def consume(rank: int) -> None:
        try:
            with EpochBatches(lambda _epoch: split[rank], range(3), 4, SPEC, "cpu", ahead=4, keep_ids=True) as batches:
                for epoch in range(3):
                    for batch, _ in batches.epoch(epoch):
                        seen[rank].setdefault(epoch, []).extend(batch["sample_id"].tolist())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors
    for epoch in range(3):
        ids = seen[0].get(epoch, []) + seen[1].get(epoch, [])
        assert len(seen[0][epoch]) == len(seen[1][epoch])  # equal split: the same steps on both
        assert len(set(ids)) == len(ids) <= total and len(ids) >= total - 1


def test_an_error_of_the_pipeline_is_raised_where_the_batches_are_read():
    def broken(_epoch):
        raise RuntimeError("shard s3://b/x.parquet is broken")

    batches = EpochBatches(broken, range(2), 4, SPEC)
    with pytest.raises(RuntimeError, match="is broken"):
        next(batches.epoch(0))
    with pytest.raises(ValueError, match="outside"):
        next(batches.epoch(5))
    batches.close()


def test_an_autoscaling_actor_pool_decodes_the_same_rows_as_the_default_tasks(ray_cluster, packed):
    shards, tokenizer, total = packed

    def ids(**kwargs) -> list[int]:
        dataset = build_dataset(shards, SPEC, tokenizer, num_cpus=0.5, **kwargs)
        return sorted(int(i) for batch in dataset.iter_batches(batch_size=None) for i in batch["sample_id"])

    tasks = ids(concurrency=(1, 2))
    assert tasks == list(range(total))
    assert ids(concurrency=(1, 2), decode_actors=True) == tasks

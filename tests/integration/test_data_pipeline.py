"""Pack real media to the S3 test server, stream them through Ray Data, check what arrives.

One manifest (several formats per modality, corrupt files, text-only and multi-modal rows) is
packed once per module into small shards on S3; the tests then stream it with two consumers,
read a shard subset, trip the consecutive-failure stop, and read WebDataset tars.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading

import numpy as np
import pytest
import torch

from multimodal import fs
from multimodal.batch import MODALITIES, batch_shapes, present_key
from multimodal.config import preset
from multimodal.data.loader import BatchStats, iter_training_batches
from multimodal.data.make_shards import make_shards
from multimodal.data.pipeline import build_dataset
from multimodal.data.schema import read_summary
from multimodal.data.tokenizer import load_tokenizer, train_tokenizer_from_dataset
from tests.media import CORRUPT, GOOD_AUDIO, GOOD_IMAGES, GOOD_VIDEO

pytestmark = pytest.mark.integration
SPEC = preset("tiny").media
CORRUPT_MODALITY = {"jpg": "image", "png": "image", "wav": "audio", "flac": "audio", "mp4": "video"}


def manifest_rows() -> list[dict]:
    """Rows plus what each should become: ``expect`` = modalities that decode, ``bad`` = that fail."""
    rows = []
    for name in GOOD_IMAGES:
        rows.append({"text": f"image {name}", "image": name, "expect": {"image"}, "bad": set()})
    for name in GOOD_AUDIO:
        rows.append({"text": f"audio {name}", "audio": name, "expect": {"audio"}, "bad": set()})
    for name in GOOD_VIDEO:
        rows.append({"text": f"video {name}", "video": name, "expect": {"video"}, "bad": set()})
    rows.append({"text": "all three", "image": "red_circle.jpg", "audio": "ceg.wav", "video": "blue_left.mp4",
                 "prompt": "describe:", "expect": {"image", "audio", "video"}, "bad": set()})
    rows.append({"text": "image and a broken clip", "image": "blue_square.png", "audio": "truncated.wav",
                 "expect": {"image"}, "bad": {"audio"}})
    for i in range(3):
        rows.append({"text": f"just words number {i}", "expect": set(), "bad": set()})
    for name in CORRUPT:
        modality = CORRUPT_MODALITY[name.rsplit(".", 1)[1]]
        rows.append({"text": f"broken {name}", modality: name, "expect": set(), "bad": {modality}})
    for i, row in enumerate(rows):
        row["id"] = f"s{i:03d}"
        row["valid"] = bool(row["expect"]) or not row["bad"]
    return rows


@pytest.fixture(scope="module")
def packed(s3_server, media_dir, tmp_path_factory):
    bucket = s3_server.new_bucket("data")
    rows = manifest_rows()
    manifest = media_dir / "integration.jsonl"
    keep = ("id", "text", "prompt", "image", "audio", "video")
    manifest.write_text("".join(json.dumps({k: r[k] for k in keep if k in r}) + "\n" for r in rows))
    uri = f"s3://{bucket}/shards"
    summary = make_shards(str(manifest), uri, target_shard_bytes=60_000, row_group_bytes=20_000, progress=None)
    tok_uri = f"s3://{bucket}/tokenizer"
    train_tokenizer_from_dataset(uri, 400, tok_uri)
    return {"uri": uri, "rows": rows, "summary": summary, "tokenizer": load_tokenizer(tok_uri),
            "bucket": bucket}


def consume_split(dataset, n: int = 2, epochs: int = 1):
    """Consume ``streaming_split(n)`` concurrently (one thread per consumer), ``epochs`` times."""
    iterators = dataset.streaming_split(n, equal=False)
    results = [[] for _ in range(n)]
    errors = []

    def run(index):
        try:
            for epoch in range(epochs):
                seen, total = [], BatchStats()
                for batch, stats in iter_training_batches(iterators[index], 4, SPEC, device="cpu", keep_ids=True):
                    seen.append({k: v.numpy() for k, v in batch.items()})
                    total.merge(stats)
                results[index].append((seen, total))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def test_stream_two_consumers_exactly_once(ray_cluster, packed):
    summary, rows = packed["summary"], packed["rows"]
    assert len(summary.shards) >= 3 and summary.rows == len(rows)
    assert summary.modalities["image"]["count"] == sum(1 for r in rows if "image" in r)
    assert fs.exists(packed["uri"] + "/_dataset.json")
    dataset = build_dataset(packed["uri"], SPEC, packed["tokenizer"], concurrency=1, batch_size=8)
    results = consume_split(dataset, 2, epochs=2)
    by_id = {i: r for i, r in enumerate(rows)}  # sample_id is the manifest row number here
    expected_good = {i for i, r in by_id.items() if r["valid"]}
    for epoch in range(2):
        ids, epoch_stats = [], BatchStats()
        for consumer in results:
            seen, stats = consumer[epoch]
            epoch_stats.merge(stats)
            for batch in seen:
                n = batch["input_ids"].shape[0]
                shapes = batch_shapes(SPEC, n)
                for key, shape in shapes.items():
                    assert batch[key].shape == shape, key
                assert batch["image"].dtype == np.float32 and batch["input_ids"].dtype == np.int64
                assert batch["image_present"].dtype == bool
                for j in range(n):
                    row = by_id[int(batch["sample_id"][j])]
                    for modality in MODALITIES:
                        assert bool(batch[present_key(modality)][j]) == (modality in row["expect"])
                        if modality not in row["expect"]:
                            assert not batch[modality][j].any()
                    assert batch["input_ids"][j][0] == 1 and 2 in batch["input_ids"][j].tolist()
                ids += batch["sample_id"].tolist()
        assert sorted(ids) == sorted(expected_good), f"epoch {epoch}: not exactly once"
        assert epoch_stats.rows == len(rows)
        assert epoch_stats.dropped == len(rows) - len(expected_good)
        for modality in MODALITIES:
            assert epoch_stats.samples[modality] == sum(modality in r["expect"] for r in rows if r["valid"])
            assert epoch_stats.bad[modality] == sum(modality in r["bad"] for r in rows)
        assert epoch_stats.bad == {"image": 3, "audio": 5, "video": 3}
        assert epoch_stats.samples["text"] == len(expected_good)
        assert epoch_stats.rows_per_shard == {i: s["rows"] for i, s in enumerate(summary.shards)}


def test_read_parquet_tasks_give_the_same_rows(ray_cluster, packed):
    """build_dataset(read_in_decoder=False): ray.data.read_parquet tasks feed the decode actors."""
    columns = ["shard_id", "sample_id", "sample_valid", "image_present", "audio_present",
               "video_present", "bad_image", "bad_audio", "bad_video"]

    def rows(**kwargs):
        dataset = build_dataset(packed["uri"], SPEC, packed["tokenizer"], concurrency=1, **kwargs)
        return sorted(tuple(r[c] for c in columns) for r in dataset.select_columns(columns).take_all())

    in_decoder = rows()
    assert len(in_decoder) == len(packed["rows"])
    assert rows(read_in_decoder=False) == in_decoder


def test_shard_subset_keeps_shard_ids(ray_cluster, packed):
    summary = read_summary(packed["uri"])
    names = summary.shard_names
    chosen = [names[1], names[-1]]
    dataset = build_dataset(packed["uri"], SPEC, packed["tokenizer"], shards=chosen, concurrency=1)
    rows = dataset.select_columns(["shard_id", "sample_id"]).take_all()
    assert sorted({r["shard_id"] for r in rows}) == [1, len(names) - 1]
    assert len(rows) == summary.shards[1]["rows"] + summary.shards[-1]["rows"]
    with pytest.raises(ValueError, match="unknown shard"):
        build_dataset(packed["uri"], SPEC, packed["tokenizer"], shards=["shard-99999.parquet"])


def test_consecutive_failures_stop_with_shard_name(ray_cluster, s3_server, media_dir, packed):
    bucket = packed["bucket"]
    manifest = media_dir / "broken.csv"
    manifest.write_text("text,image\n" + "".join(f"broken {i},random.png\n" for i in range(8)))
    uri = f"s3://{bucket}/broken"
    make_shards(str(manifest), uri, progress=None)
    dataset = build_dataset(uri, SPEC, packed["tokenizer"], max_consecutive_failures=5, concurrency=1)
    with pytest.raises(Exception) as excinfo:
        dataset.take_all()
    assert "shard-00000.parquet" in str(excinfo.value) and "consecutive" in str(excinfo.value)
    # under the threshold the same shard streams, every row flagged bad and invalid
    rows = build_dataset(uri, SPEC, packed["tokenizer"], max_consecutive_failures=100,
                         concurrency=1).take_all()
    assert len(rows) == 8 and all(r["bad_image"] and not r["sample_valid"] for r in rows)


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_webdataset_tars_read_into_the_same_schema(ray_cluster, s3_server, media_dir, packed):
    bucket = packed["bucket"]
    read = lambda name: (media_dir / name).read_bytes()  # noqa: E731
    shards = {
        "000000.tar": [("a1.jpg", read("red_circle.jpg")), ("a1.txt", b"a red circle"),
                       ("a2.flac", read("da.flac")), ("a2.txt", b"notes D A"),
                       ("a3.txt", b"words only")],
        "000001.tar": [("b1.mp4", read("blue_left.mp4")), ("b1.txt", b"a blue square moving left"),
                       ("b2.png", read("random.png")), ("b2.txt", b"broken"),
                       ("b3.webp", read("green_triangle.webp")), ("b3.wav", read("ceg.wav")),
                       ("b3.txt", b"two")],
    }
    for name, members in shards.items():
        fs.write_bytes_atomic(f"s3://{bucket}/wds/{name}", _tar_bytes(members))
    dataset = build_dataset(f"s3://{bucket}/wds", SPEC, packed["tokenizer"], concurrency=1)
    rows = sorted(dataset.take_all(), key=lambda r: (r["shard_id"], r["sample_id"]))
    assert len(rows) == 6
    by_presence = sorted((int(r["shard_id"]), bool(r["image_present"]), bool(r["audio_present"]),
                          bool(r["video_present"]), bool(r["bad_image"]), bool(r["sample_valid"]))
                         for r in rows)
    assert by_presence == sorted([(0, True, False, False, False, True), (0, False, True, False, False, True),
                                  (0, False, False, False, False, True), (1, False, False, True, False, True),
                                  (1, False, False, False, True, False), (1, True, True, False, False, True)])
    for row in rows:  # wire rows: uint8 pixel bytes when present, empty when not
        assert len(row["image"]) == (3 * SPEC.image_size ** 2 if row["image_present"] else 0)
        assert len(row["video"]) == (SPEC.video_frames * 3 * SPEC.video_size ** 2 if row["video_present"] else 0)
    subset = build_dataset(f"s3://{bucket}/wds", SPEC, packed["tokenizer"], shards=["000001.tar"],
                           concurrency=1).select_columns(["shard_id"]).take_all()
    assert sorted(r["shard_id"] for r in subset) == [1, 1, 1]


def test_a_batch_of_only_invalid_rows_still_yields_one_empty_batch(ray_cluster):
    """Data-parallel workers must take one step per pipeline batch, even when every row failed."""
    import ray

    from multimodal.batch import empty_batch
    from multimodal.data.wire import wire_table

    rows = empty_batch(SPEC, 8)
    rows.update(sample_valid=np.array([False] * 4 + [True] * 4), shard_id=np.zeros(8, np.int64),
                bad_image=np.array([True] * 4 + [False] * 4), bad_audio=np.zeros(8, bool),
                bad_video=np.zeros(8, bool))
    rows["image_present"][4:] = True
    pixels = np.full((3, SPEC.image_size, SPEC.image_size), 255, np.uint8)
    media = {"image": [None] * 4 + [pixels] * 4, "audio": [None] * 8, "video": [None] * 8}
    columns = {k: v for k, v in rows.items() if k not in MODALITIES}
    dataset = ray.data.from_arrow(wire_table(columns, media))
    batches = list(iter_training_batches(dataset.iterator(), 4, SPEC, device="cpu"))
    assert [b["input_ids"].shape[0] for b, _ in batches] == [0, 4]
    assert batches[0][1].dropped == 4 and batches[0][1].bad["image"] == 4
    assert batches[1][1].samples["image"] == 4
    image, video = batches[1][0]["image"], batches[1][0]["video"]
    assert image.dtype == video.dtype == torch.float32 and bool((image == 1.0).all())  # 255 -> +1
    assert video.shape == (4, SPEC.video_frames, 3, SPEC.video_size, SPEC.video_size) and not video.any()

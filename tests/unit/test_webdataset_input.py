"""WebDataset tars written by the ``webdataset`` package's own ShardWriter from real media: the
index counts them, the storage estimate reads them, and ``slm-make-shards`` packs them (raw and
pre-decoded) into the same samples and bad-sample counts as the same corpus's manifest."""

from __future__ import annotations

import json

import pytest

from multimodal.data.demo_corpus import make_demo_corpus
from multimodal.data.make_shards import main as make_shards_main
from multimodal.data.make_shards import make_shards
from multimodal.data.pack_decoded import pack_decoded
from multimodal.data.schema import read_summary
from multimodal.data.tar_index import TarIndexError, index_prefix
from tests.media import add_corrupt_rows
from tests.wds_corpus import img2dataset_stats, write_wds_from_manifest

PER_MODALITY = {"image": 6, "audio": 4, "video": 4, "text": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The demo corpus plus a corrupt image, a truncated video and an empty row, as a manifest and
    as tars (8 samples each) written by ``webdataset.ShardWriter``."""
    folder = tmp_path_factory.mktemp("wds")
    manifest = make_demo_corpus(folder, PER_MODALITY, splits={"train": 1.0}, seed=2)["train"]
    media = folder / "media"
    add_corrupt_rows(manifest, media, ["nothing", "", "", "", ""])
    tars = write_wds_from_manifest(manifest, folder / "tars", maxcount=8)
    return manifest, folder / "tars", tars


def test_index_counts_samples_modalities_and_shards(corpus, tmp_path):
    _, prefix, tars = corpus
    summary = index_prefix(str(prefix), progress=None)
    assert summary.format == "webdataset" and [s["path"] for s in summary.shards] == [t.name for t in tars]
    assert [s["rows"] for s in summary.shards] == [8, 8, 5]
    assert summary.rows == 21  # every key, the empty one included (the pipeline reads it too)
    counts = {m: summary.modalities[m]["count"] for m in ("text", "image", "audio", "video")}
    # text from .txt and from img2dataset-style .json captions alike
    assert counts == {"text": 20, "image": 7, "audio": 4, "video": 5}
    assert summary.skipped_by_reason == {"empty": 1}
    assert summary.bytes == sum(t.stat().st_size for t in tars)
    assert summary.modalities["audio"]["bytes"] > summary.modalities["image"]["bytes"] > 0


def test_index_cache_is_reused_until_a_tar_changes(corpus, tmp_path):
    _, prefix, _ = corpus
    cache = tmp_path / "run" / "data" / "train-wds-index.json"
    first = index_prefix(str(prefix), str(cache), progress=None)
    document = json.loads(cache.read_text())
    assert document["index"]["prefix"] == str(prefix) and document["rows"] == first.rows
    document["created_by"] = "marker"
    cache.write_text(json.dumps(document))
    assert index_prefix(str(prefix), str(cache), progress=None).created_by == "marker"
    copy = tmp_path / "copy"
    copy.mkdir()
    for tar in sorted(prefix.glob("*.tar"))[:2]:
        (copy / tar.name).write_bytes(tar.read_bytes())
    assert index_prefix(str(copy), str(cache), progress=None).rows == 16  # other tars: indexed again


def test_img2dataset_stats_are_used_instead_of_reading(tmp_path, corpus):
    _, prefix, tars = corpus
    folder = tmp_path / "img2dataset"
    folder.mkdir()
    for tar, successes in zip(tars, (7, 6, 5)):
        (folder / tar.name).write_bytes(tar.read_bytes())
        img2dataset_stats(folder / tar.name, successes)
    summary = index_prefix(str(folder), progress=None)
    assert summary.rows == 18 and summary.created_by.endswith("(img2dataset stats)")
    assert summary.modalities["image"]["count"] == 18
    (folder / f"{tars[0].stem}_stats.json").unlink()  # one tar without stats: all are read
    assert index_prefix(str(folder), progress=None).rows == 21


def test_no_tars_is_one_line(tmp_path):
    with pytest.raises(TarIndexError, match="no .tar shards"):
        index_prefix(str(tmp_path), progress=None)


def test_estimate_from_a_tar_prefix(corpus, capsys):
    from storage_calc.cli import main

    _, prefix, _ = corpus
    assert main(["--from", str(prefix), "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["measurement"]
    assert measured["kind"] == "webdataset" and measured["rows"] == 21
    assert measured["modalities"]["video"]["count"] == 5
    assert main(["--from", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "Holds WebDataset tars" in out and "(3 tars indexed in" in out


def test_raw_pack_from_tars_matches_the_manifest(corpus, tmp_path):
    manifest, prefix, _ = corpus
    from_manifest = make_shards(str(manifest), str(tmp_path / "m"), progress=None)
    assert make_shards_main([str(prefix), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    from_tars = read_summary(str(tmp_path / "t"))
    assert from_tars.rows == from_manifest.rows == 20
    assert from_tars.skipped_by_reason == from_manifest.skipped_by_reason == {"empty": 1}
    for modality in ("text", "image", "audio", "video"):
        assert from_tars.modalities[modality] == from_manifest.modalities[modality]


def test_decoded_pack_from_tars_counts_the_same_bad_samples(corpus, tmp_path):
    manifest, prefix, _ = corpus
    options = dict(workers=1, vocab_size=270, progress=None)
    from_manifest = pack_decoded(str(manifest), str(tmp_path / "m"), "tiny", **options)
    from_tars = pack_decoded(str(prefix), str(tmp_path / "t"), "tiny", **options)
    assert from_tars.decoded["bad"] == from_manifest.decoded["bad"] == {"image": 1, "audio": 0, "video": 1}
    assert from_tars.rows == from_manifest.rows == 20
    assert from_tars.skipped_rows == from_manifest.skipped_rows == 1
    assert from_tars.decoded["tokenizer_sha256"] == from_manifest.decoded["tokenizer_sha256"]


def test_oversized_member_is_refused_and_counted(corpus, tmp_path):
    manifest, prefix, _ = corpus
    sizes = sorted(p.stat().st_size for p in (manifest.parent / "media").iterdir())
    limit = sizes[-3]  # the two largest media files are over it
    summary = make_shards(str(prefix), str(tmp_path / "o"), progress=None, max_media_bytes=limit)
    assert summary.skipped_by_reason == {"refused": 2, "empty": 1}
    assert summary.rows == 18


def test_index_counts_the_samples_rays_reader_yields(corpus, tmp_path):
    """Members without a sample key (macOS ``._x`` files, a README) are not samples for Ray's
    WebDataset reader; the index must count the same samples, or the step plan and resume drift."""
    import io
    import tarfile

    from ray.data._internal.datasource.webdataset_datasource import _group_by_keys, _tar_file_iterator

    from multimodal.data.tar_index import index_tar

    _, _, tars = corpus
    mixed = tmp_path / "mixed.tar"
    with tarfile.open(tars[0]) as source, tarfile.open(mixed, "w") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        for name in ("._000099.jpg", "README"):
            info = tarfile.TarInfo(name)
            info.size = 3
            out.addfile(info, io.BytesIO(b"abc"))
    with open(mixed, "rb") as handle:
        ray_keys = [s["__key__"] for s in _group_by_keys(_tar_file_iterator(handle))]
    assert index_tar(str(mixed))["rows"] == len(ray_keys) == 8


def test_decoded_pack_from_tars_resumes_where_it_stopped(corpus, tmp_path):
    import pyarrow.parquet as pq

    from multimodal.data.pack_decoded import PackInterrupted

    _, prefix, _ = corpus
    out = tmp_path / "resumed"
    options = dict(workers=1, vocab_size=270, progress=None, target_shard_bytes=20_000)
    with pytest.raises(PackInterrupted):
        pack_decoded(str(prefix), str(out), "tiny", stop_after_shards=1, **options)
    summary = pack_decoded(str(prefix), str(out), "tiny", **options)
    assert summary.rows == 20 and summary.skipped_rows == 1 and len(summary.shards) > 1
    ids = [i for s in summary.shards for i in pq.read_table(out / s["path"], columns=["sample_id"])["sample_id"].to_pylist()]
    assert ids == list(range(20))  # nothing lost or packed twice

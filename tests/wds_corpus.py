"""WebDataset tars written by the ``webdataset`` package's own ``ShardWriter`` from a manifest's
real media (the LAION / img2dataset layout: ``000000.jpg``, ``000000.txt``, ``000000.json`` ...)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def write_wds_from_manifest(manifest: Path, out_dir: Path, maxcount: int = 8, json_every: int = 3) -> list[Path]:
    """One sample per manifest row (its media bytes under their own extension, the text as ``txt``,
    or every ``json_every``-th sample as img2dataset's ``json`` caption instead), ``maxcount``
    samples per tar; returns the tars written."""
    import webdataset as wds

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with wds.ShardWriter(str(out_dir / "%06d.tar"), maxcount=maxcount, verbose=0) as sink:
        for index, row in enumerate(rows):
            sample = {"__key__": f"{index:06d}"}
            if row.get("text"):
                if index % json_every == 0:
                    sample["json"] = {"caption": row["text"], "key": f"{index:06d}"}
                else:
                    sample["txt"] = row["text"]
            for modality in ("image", "audio", "video"):
                if row.get(modality):
                    path = manifest.parent / row[modality]
                    sample[path.suffix.lstrip(".").lower()] = path.read_bytes()
            if len(sample) == 1:
                sample["cls"] = 0  # a sample with neither text nor media still has a member
            sink.write(sample)
    return sorted(out_dir.glob("*.tar"))


def img2dataset_stats(tar: Path, successes: int) -> Path:
    """The ``<shard>_stats.json`` img2dataset writes beside each tar."""
    path = tar.with_name(tar.stem + "_stats.json")
    path.write_text(json.dumps({"count": successes, "successes": successes, "failed_to_download": 0}))
    return path

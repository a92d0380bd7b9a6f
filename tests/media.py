"""Real encoded media for tests: several formats per modality plus corrupt files."""

from __future__ import annotations

import csv
from pathlib import Path

from multimodal.data import synthetic

GOOD_IMAGES = {"red_circle.jpg": ("red", "circle", "RGB"), "blue_square.png": ("blue", "square", "RGBA"),
               "green_triangle.webp": ("green", "triangle", "RGB"), "grey_circle.png": ("red", "circle", "L"),
               "cmyk_square.jpg": ("yellow", "square", "CMYK"), "palette_circle.png": ("purple", "circle", "P")}
GOOD_AUDIO = {"ceg.wav": (["C", "E", "G"], 16000, 1), "da.flac": (["D", "A"], 44100, 2),
              "b.ogg": (["B"], 22050, 1), "fg.mp3": (["F", "G"], 24000, 2)}
GOOD_VIDEO = {"blue_left.mp4": ("blue", "left"), "red_up.webm": ("red", "up"),
              "green_right.avi": ("green", "right"), "orange_down.mkv": ("orange", "down")}
CORRUPT = {"empty.jpg": "empty", "random.png": "random", "truncated.jpg": "truncated",
           "empty.wav": "empty", "random.flac": "random", "truncated.wav": "truncated",
           "empty.mp4": "empty", "random.mp4": "random", "truncated.mp4": "truncated",
           "wrong_ext.wav": "image-bytes"}


def make_media_set(root: Path) -> dict[str, list[Path]]:
    """Write every file above into ``root``; returns paths grouped as good_<modality> / corrupt."""
    root = Path(root)
    out: dict[str, list[Path]] = {"good_image": [], "good_audio": [], "good_video": [], "corrupt": []}
    for name, (colour, shape, mode) in GOOD_IMAGES.items():
        out["good_image"].append(synthetic.write_image(root / name, colour, shape, size=48, mode=mode))
    for name, (notes, rate, channels) in GOOD_AUDIO.items():
        out["good_audio"].append(synthetic.write_audio(root / name, notes, sample_rate=rate, seconds=1.0,
                                                       channels=channels))
    for name, (colour, direction) in GOOD_VIDEO.items():
        out["good_video"].append(synthetic.write_video(root / name, colour, direction, frames=8, size=32))
    valid = {".jpg": (root / "red_circle.jpg").read_bytes(), ".wav": (root / "ceg.wav").read_bytes(),
             ".mp4": (root / "blue_left.mp4").read_bytes()}
    for name, kind in CORRUPT.items():
        path = root / name
        if kind == "image-bytes":
            data = valid[".jpg"]  # a JPEG named .wav
        else:
            data = synthetic.corrupt_bytes(kind, valid.get(path.suffix), seed=len(name))
        path.write_bytes(data)
        out["corrupt"].append(path)
    return out


def demo_shards_on_s3(s3_server, folder: Path, bucket_prefix: str, per_modality: dict[str, int],
                      splits: dict[str, float] | None = None, seed: int = 0,
                      shard_bytes: dict[str, int] | int | None = None) -> tuple[str, dict[str, str]]:
    """A demo corpus packed into shards on the test S3 server: ``(bucket, {split: s3 uri})``.

    ``shard_bytes``: target shard size, one for all splits or per split (default: one shard)."""
    from multimodal.data.demo_corpus import make_demo_corpus
    from multimodal.data.make_shards import make_shards

    bucket = s3_server.new_bucket(bucket_prefix)
    corpus = make_demo_corpus(folder, per_modality, splits=splits or {"train": 0.75, "val": 0.25}, seed=seed)
    uris = {}
    for split, manifest in corpus.items():
        uris[split] = f"s3://{bucket}/shards/{split}"
        target = shard_bytes.get(split) if isinstance(shard_bytes, dict) else shard_bytes
        make_shards(str(manifest), uris[split], progress=None, **({"target_shard_bytes": target} if target else {}))
    return bucket, uris


def add_corrupt_rows(manifest: Path, media_folder: Path, last_row: list[str]) -> None:
    """Append two samples whose media do not decode (a random-bytes PNG, a truncated MP4 made
    from a good one in ``media_folder``) and ``last_row`` to a demo-corpus manifest."""
    good_video = next(media_folder.glob("*.mp4")).read_bytes()
    (media_folder / "broken.png").write_bytes(synthetic.corrupt_bytes("random", None, seed=1))
    (media_folder / "broken.mp4").write_bytes(synthetic.corrupt_bytes("truncated", good_video, seed=2))
    with open(manifest, "a", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["bad-image", "a red circle", "media/broken.png", "", ""])
        writer.writerow(["bad-video", "a red square moving up", "", "", "media/broken.mp4"])
        writer.writerow(last_row)

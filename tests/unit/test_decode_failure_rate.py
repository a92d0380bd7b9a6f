"""A decoder that fails on every sample of a modality stops the data, naming the modality and its
first error; a few corrupt files do not; a MemoryError is never mistaken for a corrupt file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from multimodal.config import preset
from multimodal.data.failure_rate import ModalityFailureRate
from multimodal.data.pipeline import DatasetBrokenError, SampleProcessor
from multimodal.data.tokenizer import train_tokenizer

SPEC = preset("tiny").media


@pytest.fixture(scope="module")
def processor_factory():
    tokenizer = train_tokenizer(["a picture of a thing", "a sound"] * 4, 300)
    return lambda: SampleProcessor(SPEC, tokenizer, ["a.parquet"], max_consecutive_failures=100)


def rows(media_dir, count: int, corrupt_every: int) -> list[dict]:
    """Image rows (every ``corrupt_every``-th one undecodable) interleaved with good audio rows, so
    no run of consecutive failures ever builds up."""
    good_image = (media_dir / "red_circle.jpg").read_bytes()
    bad_image = (media_dir / "random.png").read_bytes()
    audio = (media_dir / "ceg.wav").read_bytes()
    out = []
    for i in range(count):
        image = bad_image if i % corrupt_every == 0 else good_image
        out.append({"shard_id": 0, "sample_id": 2 * i, "text": "a picture", "image": image})
        out.append({"shard_id": 0, "sample_id": 2 * i + 1, "text": "a sound", "audio": audio})
    return out


def test_a_modality_failing_on_every_sample_stops_with_its_name(processor_factory, media_dir):
    processor = processor_factory()
    with pytest.raises(DatasetBrokenError) as excinfo:
        for start in range(0, 80, 16):  # batches, as the pipeline calls it
            processor.decode_compact(rows(media_dir, 40, corrupt_every=1)[start:start + 16])
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("image decoding failed on 32 of 32 samples")
    assert "First error: MediaDecodeError: undecodable image" in message


def test_a_few_corrupt_files_do_not_stop_the_data(processor_factory, media_dir):
    processor = processor_factory()
    out, _ = processor.decode_compact(rows(media_dir, 60, corrupt_every=10))
    assert int(out["bad_image"].sum()) == 6 and int(out["image_present"].sum()) == 54


def test_rate_limit_arithmetic():
    rate = ModalityFailureRate(max_rate=0.5, min_samples=4)
    for error in (ValueError("x"), None, ValueError("y")):
        rate.note("video", error)
    with pytest.raises(DatasetBrokenError, match=r"video decoding failed on 3 of 4 .*First error: ValueError: x"):
        rate.note("video", ValueError("z"))
    with pytest.raises(ValueError):
        ModalityFailureRate(max_rate=0.0)


MEMORY_PROBE = r"""
import io, resource
from PIL import Image
from multimodal.config import preset
from multimodal.data import decode
image = Image.new("L", (7000, 7000))
buffer = io.BytesIO()
image.save(buffer, "PNG", compress_level=1)
raw, image = buffer.getvalue(), None
from cluster.procs import status_mb
size = int(status_mb("VmSize") * 1024**2)
resource.setrlimit(resource.RLIMIT_AS, (size + 40 * 1024**2, resource.RLIM_INFINITY))
try:
    decode.decode_image(raw, preset("tiny").media)  # 49 MB of pixels, 147 MB as RGB: over the cap
    print("decoded")
except MemoryError:
    print("MemoryError")
except decode.MediaDecodeError as exc:
    print("MediaDecodeError", exc)
"""


def test_memory_error_is_not_a_corrupt_file():
    """With the address space capped, decoding a valid 7000 x 7000 PNG runs out of memory: that
    must surface as MemoryError (a worker problem), not count as one more bad image."""
    completed = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True,
                               timeout=120, check=False)
    assert completed.stdout.strip().splitlines()[-1] == "MemoryError", completed.stdout + completed.stderr

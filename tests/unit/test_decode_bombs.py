"""Small files that decode to huge arrays: each limit is enforced before decoding, so the peak
memory of decoding one stays low. Peak memory is the resident-set high-water mark (VmHWM) of a
separate Python process, reset before each decode (/proc/self/clear_refs), so Pillow's, libsndfile's
and FFmpeg's own C allocations count too."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from multimodal.config import MediaSpec, preset

LOW_PEAK_MB = 30  # what decoding one of these may add to the process's peak memory (measured: <= 13 MB)

PROBE = r"""
import json, sys
import numpy as np
from multimodal.config import MediaSpec
from multimodal.data import decode
from cluster.procs import reset_peak_rss, status_mb

results = {}
for name, path, spec_json in json.loads(sys.argv[1]):
    spec = MediaSpec.model_validate_json(spec_json)
    raw = open(path, "rb").read()
    assert reset_peak_rss()  # the high-water mark is now the current RSS
    before = status_mb("VmRSS")
    kind = name.split("_")[0]
    try:
        decode.DECODERS[kind](raw, spec)
        outcome = "decoded"
    except decode.MediaDecodeError as exc:
        outcome = f"MediaDecodeError: {exc}"
    results[name] = {"peak_mb": status_mb("VmHWM") - before, "outcome": outcome}
print(json.dumps(results))
"""


def png_bomb(path: Path, side: int) -> Path:
    """A ``side x side`` 8-bit grayscale PNG of zeros (~170 kB for 13000 x 13000), written without
    ever holding the pixels."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    packer = zlib.compressobj(9)
    row_block = b"\x00" * ((side + 1) * 256)  # 256 rows: filter byte + pixels
    data = b"".join(packer.compress(row_block) for _ in range(side // 256))
    data += packer.compress(b"\x00" * ((side + 1) * (side % 256))) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def long_flac(path: Path, seconds: int, channels: int, rate: int) -> Path:
    """A quiet multi-channel FLAC: small on disk, ``seconds x rate x channels x 4`` bytes decoded."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = (rng.standard_normal((rate, channels)) * 1e-3).astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format="FLAC") as handle:
        for _ in range(seconds):
            handle.write(block)
    return path


def video(path: Path, container_format: str, codec: str, frames: int, side: int) -> Path:
    import av

    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        picture = np.zeros((side, side, 3), np.uint8)
        for i in range(frames):
            picture[:8, :8] = i % 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bomb_cases(folder: Path) -> list[tuple[str, Path, MediaSpec]]:
    """The files of this module (and of benchmarks/bench_decode_bombs.py): ``(name, path, spec)``,
    the small ones first: they load the codecs and torch (not part of a decode's peak)."""
    tiny = preset("tiny").media
    big_frames = tiny.model_copy(update={"video_size": 256})  # 196 kB per kept frame
    return [
        ("image_small", png_bomb(folder / "small.png", 300), tiny),
        ("audio_short", long_flac(folder / "short.flac", seconds=1, channels=1, rate=16000), tiny),
        ("video_small", video(folder / "small.mp4", "mp4", "mpeg4", frames=4, side=32), tiny),
        ("image_13000", png_bomb(folder / "bomb.png", 13000), tiny),
        ("audio_long_8ch", long_flac(folder / "long.flac", seconds=240, channels=8, rate=16000), tiny),
        ("video_huge_frames", video(folder / "huge.mp4", "mp4", "mpeg4", frames=2, side=4000), tiny),
        ("video_unknown_count", video(folder / "many.mkv", "matroska", "mpeg4", frames=800, side=16),
         big_frames),
    ]


def decode_in_fresh_process(cases: list[tuple[str, Path, MediaSpec]]) -> dict[str, dict]:
    """Decode each case in one new Python process; per case its peak memory growth and outcome."""
    argument = json.dumps([(name, str(path), spec.model_dump_json()) for name, path, spec in cases])
    completed = subprocess.run([sys.executable, "-c", PROBE, argument], capture_output=True, text=True,
                               timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bomb_results(tmp_path_factory) -> dict[str, dict]:
    return decode_in_fresh_process(bomb_cases(tmp_path_factory.mktemp("bombs")))


def test_a_13000_square_png_is_bad_without_being_decoded(bomb_results):
    result = bomb_results["image_13000"]
    assert result["outcome"].startswith("MediaDecodeError: image too large") and "169000000" in result["outcome"]
    assert result["peak_mb"] < LOW_PEAK_MB  # decoding it would take 169 MB (L) + 507 MB (RGB)
    assert all(bomb_results[n]["outcome"] == "decoded" for n in ("image_small", "audio_short", "video_small"))


def test_long_multichannel_audio_decodes_only_the_clip(bomb_results):
    result = bomb_results["audio_long_8ch"]
    assert result["outcome"] == "decoded"
    assert result["peak_mb"] < LOW_PEAK_MB  # the whole file is 240 s x 8 ch x 16 kHz x 4 B = 123 MB


def test_oversized_video_frames_are_refused_before_decoding(bomb_results):
    result = bomb_results["video_huge_frames"]
    assert result["outcome"].startswith("MediaDecodeError: video frames too large (4000x4000")
    assert result["peak_mb"] < LOW_PEAK_MB


def test_video_without_a_frame_count_holds_few_frames(bomb_results):
    result = bomb_results["video_unknown_count"]
    assert result["outcome"] == "decoded"
    assert result["peak_mb"] < LOW_PEAK_MB  # keeping all 800 frames at 256 x 256 would be 157 MB


def test_truncated_audio_matches_the_full_decode(media_dir):
    """Reading only the clip's frames gives the same log-mel as decoding the whole file."""
    from multimodal.data import decode

    spec = preset("tiny").media.model_copy(update={"audio_seconds": 0.5})
    raw = (media_dir / "da.flac").read_bytes()
    samples, rate = decode.read_audio(raw)
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    assert samples.shape[0] > (spec.audio_seconds + 0.1) * rate  # longer than what is read: the cut matters
    np.testing.assert_allclose(decode.decode_audio(raw, spec), decode.waveform_to_log_mel(mono, rate, spec),
                               rtol=1e-5, atol=1e-5)

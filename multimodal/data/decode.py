"""Decoders from encoded media bytes to the fixed-shape float32 arrays of the batch contract.

- images: Pillow (any mode: RGB, RGBA/LA/PA and transparent palettes are composited on white,
  grayscale, CMYK, palette, 16-bit), resized (squashed, bilinear) to ``S x S``, ``[3, S, S]``;
- audio: soundfile (WAV/FLAC/MP3/OGG ...), any rate and channel count, mixed down to mono,
  resampled with torchaudio to ``audio_sample_rate``, padded with zeros or cut to
  ``audio_samples``, then a log-mel spectrogram ``log(mel + 1e-6)`` ``[n_mels, T]``;
- video: PyAV (MP4/WebM/AVI/MKV/MOV ...), ``video_frames`` frames sampled evenly over the whole
  clip (frames repeat when the clip is shorter), each resized to ``V x V``, ``[F, 3, V, V]``.

Pixels are normalised to ``[-1, 1]`` (``(x / 255 - 0.5) / 0.5``). ``decode_image_uint8`` and
``decode_video_uint8`` stop before that step and return the same layout as ``uint8`` (a quarter
of the bytes): the Ray pipeline ships those and normalises in the trainer (``data/wire.py``). Anything that cannot be decoded
(empty, truncated, random bytes, a JPEG named ``.wav`` ...) raises ``MediaDecodeError`` and only
that; callers never need to catch anything else. Each function also accepts a local path (``str``
or ``Path``) instead of bytes, for inference on single files.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from pathlib import Path

import numpy as np

from multimodal.config import MediaSpec

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5
# (x / 255 - mean) / std == x * PIXEL_SCALE - PIXEL_OFFSET: one multiply and one subtract
PIXEL_SCALE = 1.0 / (255.0 * PIXEL_STD)
PIXEL_OFFSET = PIXEL_MEAN / PIXEL_STD
LOG_MEL_EPS = 1e-6
# Decompression-bomb limits, checked from the headers before anything is decoded (docs/data-safety.md)
MAX_IMAGE_PIXELS = 64_000_000  # ours, below Pillow's 89M warning band: a larger image counts as bad
MAX_AUDIO_SECONDS = 3600.0  # a longer file is refused (only ``audio_seconds`` are ever decoded)
MAX_AUDIO_CHANNELS = 64
MAX_AUDIO_SAMPLE_RATE = 384_000
MAX_VIDEO_PIXELS = 3840 * 2160  # per frame (4K UHD)
MAX_VIDEO_FRAMES_DECODED = 20000  # decoding stops here
VIDEO_FRAMES_KEPT_PER_OUTPUT = 4  # unknown frame count: at most 4 x video_frames frames held at once

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"})
AUDIO_EXTENSIONS = frozenset({"wav", "flac", "mp3", "ogg", "oga", "opus", "aiff", "aif"})
VIDEO_EXTENSIONS = frozenset({"mp4", "webm", "avi", "mkv", "mov", "m4v", "mpg", "mpeg"})


class MediaDecodeError(ValueError):
    """The bytes are not a decodable image/audio clip/video of a supported kind."""


def _as_bytes(data: bytes | str | Path) -> bytes:
    if isinstance(data, (str, Path)):
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise MediaDecodeError(f"cannot read {data}: {exc}") from None
    if data is None or len(data) == 0:
        raise MediaDecodeError("empty media")
    return bytes(data) if not isinstance(data, bytes) else data


def normalise_pixels(array_uint8: np.ndarray) -> np.ndarray:
    """uint8 pixels → float32 in ``[-1, 1]`` (any shape): ``(x / 255 - mean) / std`` as one
    multiply-subtract (``data/wire.py`` does the same float32 arithmetic in torch)."""
    out = array_uint8.astype(np.float32)
    out *= np.float32(PIXEL_SCALE)
    out -= np.float32(PIXEL_OFFSET)
    return out


# ----------------------------------------------------------------------------------------- images

def _to_rgb(image) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, P without transparency


def decode_image(data: bytes | str | Path, spec: MediaSpec) -> np.ndarray:
    """Encoded image → float32 ``[3, S, S]`` in ``[-1, 1]``; raises ``MediaDecodeError``."""
    return normalise_pixels(decode_image_uint8(data, spec))


def decode_image_uint8(data: bytes | str | Path, spec: MediaSpec) -> np.ndarray:
    """Encoded image → uint8 RGB ``[3, S, S]``; raises ``MediaDecodeError``."""
    from PIL import Image

    raw = _as_bytes(data)
    size = spec.image_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Pillow's own bomb check warns (or raises) in Image.open; ours (lower) decides instead
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:  # from the header, before decoding
                    raise MediaDecodeError(f"image too large ({image.width}x{image.height} > "
                                           f"{MAX_IMAGE_PIXELS} pixels)")
                if image.format == "JPEG":
                    image.draft("RGB", (size, size))  # decode at a reduced scale: much faster
                image.seek(0)
                image.load()
                rgb = _to_rgb(image)
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
                array = np.asarray(rgb, dtype=np.uint8)
    except (MediaDecodeError, MemoryError):
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:  # over ours too
        raise MediaDecodeError(f"image too large (over {MAX_IMAGE_PIXELS} pixels; {exc})") from None
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError ...)
        raise MediaDecodeError(f"undecodable image: {type(exc).__name__}: {exc}") from None
    if array.shape != (size, size, 3):
        raise MediaDecodeError(f"unexpected image array shape {array.shape}")
    return np.ascontiguousarray(array.transpose(2, 0, 1))


# ------------------------------------------------------------------------------------------ audio

@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft,
                                                hop_length=hop_length, n_mels=n_mels, center=True)


@functools.lru_cache(maxsize=32)
def _resampler(orig: int, new: int):
    import torchaudio

    return torchaudio.transforms.Resample(orig, new)


def _check_chunked_length(raw: bytes) -> None:
    """RIFF (WAV) / RIFX / AIFF state their length up front; libsndfile quietly reads a cut file."""
    import struct

    magic = raw[:4]
    if magic in (b"RIFF", b"RIFX", b"FORM") and len(raw) >= 8:
        order = "<" if magic == b"RIFF" else ">"
        (declared,) = struct.unpack(order + "I", raw[4:8])
        if 0 < declared < 0xFFFFFFFF and declared + 8 > len(raw):
            raise MediaDecodeError(f"truncated audio: header says {declared + 8} bytes, got {len(raw)}")


def read_audio(data: bytes | str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Encoded audio → (float32 ``[samples, channels]``, sample rate) with soundfile.

    ``max_seconds``: decode only the file's first ``max_seconds`` (the rest is never decoded).
    """
    import soundfile as sf

    raw = _as_bytes(data)
    _check_chunked_length(raw)
    try:
        with sf.SoundFile(io.BytesIO(raw)) as handle:
            rate, channels = int(handle.samplerate), int(handle.channels)
            if rate <= 0 or channels <= 0:
                raise MediaDecodeError(f"bad audio header (rate={rate}, channels={channels})")
            if rate > MAX_AUDIO_SAMPLE_RATE or channels > MAX_AUDIO_CHANNELS:
                raise MediaDecodeError(f"audio header out of range (rate={rate}, channels={channels}; "
                                       f"limits {MAX_AUDIO_SAMPLE_RATE} Hz, {MAX_AUDIO_CHANNELS})")
            if handle.frames > MAX_AUDIO_SECONDS * rate:
                raise MediaDecodeError(f"audio longer than {MAX_AUDIO_SECONDS:.0f}s")
            frames = -1 if max_seconds is None else max(1, math.ceil(max_seconds * rate))
            samples = handle.read(frames=frames, dtype="float32", always_2d=True)
    except (MediaDecodeError, MemoryError):
        raise
    except Exception as exc:  # soundfile.LibsndfileError, RuntimeError, EOFError ...
        raise MediaDecodeError(f"undecodable audio: {type(exc).__name__}: {exc}") from None
    if samples.size == 0:
        raise MediaDecodeError("audio has no samples")
    if not np.isfinite(samples).all():
        raise MediaDecodeError("audio has NaN/inf samples")
    return samples, rate


def waveform_to_log_mel(mono: np.ndarray, rate: int, spec: MediaSpec) -> np.ndarray:
    """Mono float32 samples at ``rate`` → ``[n_mels, audio_frames]`` log-mel (resample, pad/cut)."""
    import torch

    wave = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if rate != spec.audio_sample_rate:
        wave = _resampler(rate, spec.audio_sample_rate)(wave)
    target = spec.audio_samples
    if wave.shape[0] >= target:
        wave = wave[:target]
    else:
        wave = torch.nn.functional.pad(wave, (0, target - wave.shape[0]))
    mel = _mel_transform(spec.audio_sample_rate, spec.audio_n_fft, spec.audio_hop_length,
                         spec.audio_n_mels)(wave)
    out = torch.log(mel + LOG_MEL_EPS).numpy().astype(np.float32, copy=False)
    expected = (spec.audio_n_mels, spec.audio_frames)
    if out.shape != expected:  # pragma: no cover - guards the MediaSpec.audio_frames formula
        raise MediaDecodeError(f"log-mel shape {out.shape} != {expected}")
    return out


def decode_audio(data: bytes | str | Path, spec: MediaSpec) -> np.ndarray:
    """Encoded audio → float32 log-mel ``[n_mels, T]``; raises ``MediaDecodeError``.

    Only the first ``spec.audio_seconds`` (plus a little, for the resampler) are decoded."""
    samples, rate = read_audio(data, max_seconds=spec.audio_seconds + 0.1)
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    try:
        return waveform_to_log_mel(mono, rate, spec)
    except (MediaDecodeError, MemoryError):
        raise
    except Exception as exc:
        raise MediaDecodeError(f"audio preprocessing failed: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------------------ video

def decode_video(data: bytes | str | Path, spec: MediaSpec) -> np.ndarray:
    """Encoded video → float32 ``[F, 3, V, V]`` in ``[-1, 1]``; raises ``MediaDecodeError``."""
    return normalise_pixels(decode_video_uint8(data, spec))


def decode_video_uint8(data: bytes | str | Path, spec: MediaSpec) -> np.ndarray:
    """Encoded video → uint8 RGB frames ``[F, 3, V, V]``; raises ``MediaDecodeError``.

    Frames are picked at evenly spaced indices over the whole clip. The frame size is checked
    against ``MAX_VIDEO_PIXELS`` before any frame is decoded. When the container states the frame
    count, only the picked frames are converted and decoding stops after the last one; when it does
    not, at most ``VIDEO_FRAMES_KEPT_PER_OUTPUT x video_frames`` frames are held (every other one is
    dropped, and the stride doubled, whenever that many are held). Decoding stops after
    ``MAX_VIDEO_FRAMES_DECODED`` frames.
    """
    import av

    raw = _as_bytes(data)
    n_out, size = spec.video_frames, spec.video_size
    try:
        with av.open(io.BytesIO(raw), mode="r") as container:
            if not container.streams.video:
                raise MediaDecodeError("no video stream")
            if container.format.name.endswith("_pipe") or container.format.name == "image2":
                raise MediaDecodeError(f"a still image ({container.format.name}), not a video")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
            if width * height > MAX_VIDEO_PIXELS:
                raise MediaDecodeError(f"video frames too large ({width}x{height} > {MAX_VIDEO_PIXELS} pixels)")
            declared = int(stream.frames or 0)
            if declared > MAX_VIDEO_FRAMES_DECODED:  # sample within the part that will be decoded
                declared = MAX_VIDEO_FRAMES_DECODED
            wanted: set[int] | None = None
            if declared > 0:
                wanted = set(_even_indices(declared, n_out).tolist())
            kept: dict[int, np.ndarray] = {}
            stride, hold = 1, max(2, VIDEO_FRAMES_KEPT_PER_OUTPUT * n_out)
            index = -1
            for index, frame in enumerate(container.decode(stream)):
                if frame.width * frame.height > MAX_VIDEO_PIXELS:  # a stream may change size
                    raise MediaDecodeError(f"video frame too large ({frame.width}x{frame.height})")
                if wanted is None:
                    if index % stride == 0:
                        kept[index] = frame.to_ndarray(format="rgb24", width=size, height=size)
                        if len(kept) >= hold:  # thin out: keep every other frame, double the stride
                            stride *= 2
                            kept = {k: v for k, v in kept.items() if k % stride == 0}
                elif index in wanted:
                    kept[index] = frame.to_ndarray(format="rgb24", width=size, height=size)
                if wanted is not None and index >= max(wanted):
                    break
                if index + 1 >= MAX_VIDEO_FRAMES_DECODED:
                    break
    except (MediaDecodeError, MemoryError):
        raise
    except Exception as exc:  # av.error.*, ValueError, OSError ...
        raise MediaDecodeError(f"undecodable video: {type(exc).__name__}: {exc}") from None
    total = index + 1
    if total <= 0 or not kept:
        raise MediaDecodeError("video has no decodable frames")
    if wanted is not None and total < declared:  # the stated count was wrong: resample what we have
        wanted = None
    if wanted is None:
        ordered = sorted(kept)
        picks = [ordered[i] for i in _even_indices(len(ordered), n_out)]
    else:
        picks = [min(kept, key=lambda k, i=i: abs(k - i)) for i in _even_indices(declared, n_out)]
    frames = np.stack([kept[i] for i in picks])  # [F, V, V, 3]
    if frames.shape != (n_out, size, size, 3):
        raise MediaDecodeError(f"unexpected frame shape {frames.shape}")
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


def _even_indices(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (repeats when total < count)."""
    if total <= 0:
        return np.zeros(count, dtype=np.int64)
    return np.floor((np.arange(count) + 0.5) * total / count).astype(np.int64).clip(0, total - 1)


DECODERS = {"image": decode_image, "audio": decode_audio, "video": decode_video}
# what the Ray pipeline ships: pixels stay uint8 (normalised later, on the training device)
COMPACT_DECODERS = {"image": decode_image_uint8, "audio": decode_audio, "video": decode_video_uint8}


def modality_for_extension(ext: str | None) -> str | None:
    """``image``/``audio``/``video`` for a file extension (with or without the dot), else None."""
    if not ext:
        return None
    ext = ext.lower().lstrip(".").rsplit(".", 1)[-1]
    for name, table in (("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS),
                        ("video", VIDEO_EXTENSIONS)):
        if ext in table:
            return name
    return None


__all__ = ["MediaDecodeError", "decode_image", "decode_audio", "decode_video", "read_audio",
           "decode_image_uint8", "decode_video_uint8", "normalise_pixels", "COMPACT_DECODERS",
           "waveform_to_log_mel", "modality_for_extension", "DECODERS", "IMAGE_EXTENSIONS",
           "PIXEL_SCALE", "PIXEL_OFFSET",
           "AUDIO_EXTENSIONS", "VIDEO_EXTENSIONS", "PIXEL_MEAN", "PIXEL_STD"]

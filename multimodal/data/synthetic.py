"""Real encoded media made from scratch: the demo corpus and the tests' fixtures.

Every writer encodes with a real codec library (Pillow for images, soundfile for WAV/FLAC/OGG,
PyAV for MP4/WebM/AVI and MP3), so what the pipeline decodes is what a user's files would be.
The content is learnable from the pixels/samples alone: a coloured shape, a few tones from a
fixed scale, a coloured square moving in one direction.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# One octave of the C major scale (Hz), far enough apart to separate on a mel scale.
NOTES: dict[str, float] = {
    "C": 523.25, "D": 587.33, "E": 659.26, "F": 698.46, "G": 783.99, "A": 880.00, "B": 987.77,
}

IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
VIDEO_CODECS = {".mp4": ("mp4", "mpeg4"), ".webm": ("webm", "libvpx"), ".avi": ("avi", "mpeg4"),
                ".mkv": ("matroska", "mpeg4")}


def textured_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Photo-like ``[H, W, 3]`` uint8 texture (smooth gradients + grain), so encoded sizes and
    decode costs are those of real photos rather than of flat colour."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6.28 * (xx * rng.uniform(1, 4) + rng.uniform())),
                     np.cos(6.28 * (yy * rng.uniform(1, 4) + rng.uniform())),
                     np.sin(6.28 * ((xx + yy) * rng.uniform(1, 3)))], axis=-1)
    image = 127 + 70 * base + rng.normal(0, 18, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def shape_image(colour: str, shape: str, size: int = 64, mode: str = "RGB",
                rng: np.random.Generator | None = None, height: int | None = None,
                textured: bool = False) -> "PIL.Image.Image":  # noqa: F821
    """A ``colour`` ``shape`` on a light (or, ``textured``, photo-like) background, ``size`` wide
    and ``height`` (default ``size``) high, jittered in position and size by ``rng``."""
    from PIL import Image, ImageDraw

    rng = rng or np.random.default_rng(0)
    width, height = size, height or size
    image = (Image.fromarray(textured_background(width, height, rng)) if textured
             else Image.new("RGB", (width, height), (235, 235, 235)))
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    radius = side * rng.uniform(0.22, 0.32)
    cx, cy = width / 2 + rng.uniform(-0.12, 0.12) * side, height / 2 + rng.uniform(-0.12, 0.12) * side
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return image.convert(mode) if mode != "RGB" else image


def write_image(path: str | Path, colour: str = "red", shape: str = "circle", size: int = 64,
                mode: str = "RGB", rng: np.random.Generator | None = None, height: int | None = None,
                textured: bool = False) -> Path:
    """Encode a shape image to ``path``; the format follows the extension (jpg/png/webp), ``mode``
    the pixels (RGB, RGBA, L, CMYK for JPEG ...)."""
    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported image extension {path.suffix!r}; use one of {sorted(IMAGE_FORMATS)}")
    image = shape_image(colour, shape, size, mode="RGB", rng=rng, height=height, textured=textured)
    if mode != "RGB":
        image = image.convert(mode)
    if fmt == "JPEG" and image.mode in ("RGBA", "P", "LA"):
        image = image.convert("RGB")
    image.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def tone_clip(notes: list[str], sample_rate: int = 16000, seconds: float = 1.5,
              channels: int = 1) -> np.ndarray:
    """Notes played one after another, each a sine with a short fade; shape ``[samples, channels]``."""
    total = int(sample_rate * seconds)
    per_note = total // max(len(notes), 1)
    t = np.arange(per_note) / sample_rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    pieces = [0.5 * np.sin(2 * np.pi * NOTES[n] * t) * fade for n in notes]
    signal = np.concatenate(pieces) if pieces else np.zeros(0)
    signal = np.pad(signal, (0, total - len(signal))).astype(np.float32)
    return np.repeat(signal[:, None], channels, axis=1)


def write_audio(path: str | Path, notes: list[str] | None = None, sample_rate: int = 16000,
                seconds: float = 1.5, channels: int = 1, noise: float = 0.0, seed: int = 0) -> Path:
    """Encode a tone clip to ``path`` (wav/flac/ogg with soundfile, mp3 with PyAV); ``noise``: the
    std of added Gaussian noise (realistic FLAC sizes)."""
    path = Path(path)
    notes = notes or ["C", "E", "G"]
    clip = tone_clip(notes, sample_rate, seconds, channels)
    if noise:
        clip = clip + np.random.default_rng(seed).normal(0, noise, clip.shape).astype(np.float32)
    suffix = path.suffix.lower()
    if suffix in AUDIO_FORMATS:
        import soundfile as sf

        sf.write(path, clip, sample_rate, format=AUDIO_FORMATS[suffix])
    elif suffix == ".mp3":
        _write_mp3(path, clip, sample_rate)
    else:
        raise ValueError(f"unsupported audio extension {suffix!r}; use .wav, .flac, .ogg or .mp3")
    return path


def _write_mp3(path: Path, clip: np.ndarray, sample_rate: int) -> None:
    import av

    layout = "mono" if clip.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(clip.T), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def moving_square_frames(colour: str, direction: str, frames: int = 12, size: int = 64) -> np.ndarray:
    """``frames`` RGB frames ``[T, H, W, 3]`` of a ``colour`` square crossing the frame."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {DIRECTIONS}")
    side = size // 4
    video = np.full((frames, size, size, 3), 235, dtype=np.uint8)
    span = size - side
    for i in range(frames):
        step = int(round(span * i / max(frames - 1, 1)))
        x, y = {"right": (step, (size - side) // 2), "left": (span - step, (size - side) // 2),
                "down": ((size - side) // 2, step), "up": ((size - side) // 2, span - step)}[direction]
        video[i, y:y + side, x:x + side] = COLOURS[colour]
    return video


def write_video(path: str | Path, colour: str = "blue", direction: str = "left", frames: int = 12,
                size: int = 64, fps: int = 12, textured: bool = False, bit_rate: int | None = None,
                seed: int = 0) -> Path:
    """Encode a moving-square clip with PyAV; container and codec follow the extension.
    ``textured``: a moving photo-like background with grain (realistic sizes and decode costs)."""
    import av

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_CODECS:
        raise ValueError(f"unsupported video extension {suffix!r}; use one of {sorted(VIDEO_CODECS)}")
    container_format, codec = VIDEO_CODECS[suffix]
    rng = np.random.default_rng(seed)
    background = textured_background(size, size, rng).astype(np.int16) if textured else None
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=Fraction(fps, 1))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        for t, array in enumerate(moving_square_frames(colour, direction, frames, size)):
            if background is not None:
                moving = np.where(array == 235, np.roll(background, t, axis=1), array) + rng.normal(0, 10, array.shape)
                array = np.clip(moving, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def encoded_bytes(writer, suffix: str, tmp_dir: str | Path, **kwargs) -> bytes:
    """Run one of the ``write_*`` functions into ``tmp_dir`` and return the file's bytes."""
    path = Path(tmp_dir) / f"media{suffix}"
    writer(path, **kwargs)
    return path.read_bytes()


def image_caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def audio_caption(notes: list[str]) -> str:
    return "notes " + " ".join(notes)


def video_caption(colour: str, direction: str) -> str:
    return f"a {colour} square moving {direction}"


def corrupt_bytes(kind: str, valid: bytes | None = None, seed: int = 0) -> bytes:
    """Broken media for robustness tests: ``empty``, ``random`` or ``truncated`` (needs ``valid``)."""
    if kind == "empty":
        return b""
    if kind == "random":
        return np.random.default_rng(seed).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    if kind == "truncated":
        if not valid:
            raise ValueError("truncated needs the valid bytes to cut")
        return valid[: max(len(valid) // 3, 1)]
    raise ValueError(f"unknown corruption {kind!r}; use empty, random or truncated")


__all__ = [
    "COLOURS", "SHAPES", "DIRECTIONS", "NOTES", "textured_background", "write_image", "write_audio", "write_video",
    "tone_clip", "moving_square_frames", "shape_image", "image_caption", "audio_caption",
    "video_caption", "corrupt_bytes", "encoded_bytes",
]

"""Decoders on real encoded media of every format, and on every kind of corrupt file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multimodal.config import MediaSpec, preset
from multimodal.data import synthetic
from multimodal.data.decode import (
    MediaDecodeError, decode_audio, decode_image, decode_video, modality_for_extension,
)
from tests.media import CORRUPT, GOOD_AUDIO, GOOD_IMAGES, GOOD_VIDEO

SPEC = preset("tiny").media


@pytest.fixture(scope="module")
def media(media_dir):
    """The session's folder of real encoded media (tests/conftest.py)."""
    return media_dir


@pytest.mark.parametrize("name", sorted(GOOD_IMAGES))
def test_images_every_mode(media, name):
    out = decode_image((media / name).read_bytes(), SPEC)
    assert out.shape == (3, SPEC.image_size, SPEC.image_size) and out.dtype == np.float32
    assert -1.0 <= out.min() and out.max() <= 1.0
    assert out.std() > 0.05  # a shape on a background, not a flat colour


def test_image_modes_and_sizes(tmp_path):
    for mode in ("RGB", "RGBA", "L", "CMYK", "P", "LA", "I;16", "1"):
        image = synthetic.shape_image("red", "square", 40).convert(mode) if mode != "I;16" else \
            Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16))
        path = tmp_path / f"x_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        image.save(path)
        out = decode_image(path, SPEC)  # a local path works too
        assert out.shape == (3, 32, 32), mode
    big = MediaSpec(image_size=96)
    assert decode_image(media_bytes(tmp_path), big).shape == (3, 96, 96)


def media_bytes(tmp_path):
    return synthetic.encoded_bytes(synthetic.write_image, ".jpg", tmp_path, size=50)


def test_rgba_transparent_becomes_white(tmp_path):
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(tmp_path / "t.png")
    out = decode_image(tmp_path / "t.png", SPEC)
    assert np.allclose(out, 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(GOOD_AUDIO))
def test_audio_every_format(media, name):
    out = decode_audio((media / name).read_bytes(), SPEC)
    assert out.shape == (SPEC.audio_n_mels, SPEC.audio_frames) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.max() > 0  # tones, not silence
    # the 1.0 s clip is padded to 1.5 s: the last frames are silent (log of the floor)
    assert out[:, -3:].max() < -10


def test_audio_stereo_44k_equals_its_mono(tmp_path):
    stereo = synthetic.write_audio(tmp_path / "s.wav", ["A"], sample_rate=44100, seconds=1.0, channels=2)
    mono = synthetic.write_audio(tmp_path / "m.wav", ["A"], sample_rate=44100, seconds=1.0, channels=1)
    assert np.allclose(decode_audio(stereo, SPEC), decode_audio(mono, SPEC), atol=1e-3)


def test_audio_long_clip_is_cut(tmp_path):
    path = synthetic.write_audio(tmp_path / "long.flac", ["C"] * 4, sample_rate=16000, seconds=4.0)
    out = decode_audio(path, SPEC)
    assert out.shape == (SPEC.audio_n_mels, SPEC.audio_frames)
    assert out[:, -3:].max() > 0  # not padded: the cut keeps sound to the end


@pytest.mark.parametrize("name", sorted(GOOD_VIDEO))
def test_video_every_container(media, name):
    out = decode_video((media / name).read_bytes(), SPEC)
    assert out.shape == (SPEC.video_frames, 3, SPEC.video_size, SPEC.video_size)
    assert out.dtype == np.float32 and -1.0 <= out.min() and out.max() <= 1.0
    # the square moves: first and last sampled frames differ
    assert np.abs(out[0] - out[-1]).mean() > 0.01


def test_video_fewer_frames_than_asked(tmp_path):
    path = synthetic.write_video(tmp_path / "short.mp4", frames=2, size=32)
    out = decode_video(path, MediaSpec(video_frames=6, video_size=16))
    assert out.shape == (6, 3, 16, 16)


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_files_raise_decode_error(media, name):
    data = (media / name).read_bytes()
    modality = modality_for_extension(name.rsplit(".", 1)[1])
    decoder = {"image": decode_image, "audio": decode_audio, "video": decode_video}[modality]
    with pytest.raises(MediaDecodeError):
        decoder(data, SPEC)


@pytest.mark.parametrize("decoder", [decode_image, decode_audio, decode_video])
def test_garbage_raises_only_decode_error(decoder, media):
    for data in (b"", b"\x00", b"RIFF\xff\xff\x00\x00WAVE", np.random.default_rng(1).bytes(5000),
                 (media / "ceg.wav").read_bytes()[:44]):
        with pytest.raises(MediaDecodeError):
            decoder(data, SPEC)
    with pytest.raises(MediaDecodeError):
        decoder("/nonexistent/file.bin", SPEC)


def test_wrong_modality_is_an_error(media):
    with pytest.raises(MediaDecodeError):
        decode_video((media / "red_circle.jpg").read_bytes(), SPEC)  # a still image
    with pytest.raises(MediaDecodeError):
        decode_audio((media / "blue_left.mp4").read_bytes(), SPEC)


def test_modality_for_extension():
    assert modality_for_extension(".JPG") == "image"
    assert modality_for_extension("seg.flac") == "audio"
    assert modality_for_extension("mkv") == "video"
    assert modality_for_extension("txt") is None and modality_for_extension(None) is None

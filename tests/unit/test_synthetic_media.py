"""The synthetic media writers produce files real decoders read back."""

import av
import numpy as np
import soundfile as sf
from PIL import Image

from multimodal.data import synthetic
from tests.media import CORRUPT, GOOD_AUDIO, GOOD_IMAGES, GOOD_VIDEO, make_media_set


def test_media_set_decodes_with_real_libraries(tmp_path):
    files = make_media_set(tmp_path)
    assert len(files["good_image"]) == len(GOOD_IMAGES)
    for path in files["good_image"]:
        with Image.open(path) as image:
            assert image.size == (48, 48)
    for path in files["good_audio"]:
        samples, rate = sf.read(path)
        assert rate == GOOD_AUDIO[path.name][1]
        assert abs(len(samples) - rate) < rate * 0.1
    for path in files["good_video"]:
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 8
    assert len(files["corrupt"]) == len(CORRUPT)
    assert (tmp_path / "empty.jpg").stat().st_size == 0


def test_moving_square_moves_in_its_direction():
    frames = synthetic.moving_square_frames("red", "right", frames=5, size=32)
    red = (frames[..., 0] > 200) & (frames[..., 1] < 100)
    first_x = np.nonzero(red[0])[1].mean()
    last_x = np.nonzero(red[-1])[1].mean()
    assert last_x > first_x + 10


def test_tone_clip_has_the_note_frequency():
    clip = synthetic.tone_clip(["A"], sample_rate=8000, seconds=1.0)[:, 0]
    spectrum = np.abs(np.fft.rfft(clip))
    peak_hz = np.argmax(spectrum) * 8000 / len(clip)
    assert abs(peak_hz - synthetic.NOTES["A"]) < 5

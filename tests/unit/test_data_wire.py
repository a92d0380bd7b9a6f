"""The compact wire rows between decode actors and trainer: pack, unpack, normalise, collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.batch import MODALITIES, batch_shapes, present_key
from multimodal.config import preset
from multimodal.data.decode import normalise_pixels
from multimodal.data.wire import (WIRE_DTYPES, WireCollate, media_shape, normalise_pixels_, pack_media,
                                  unpack_media, wire_to_dense)

SPEC = preset("tiny").media


def _random_media(modality: str, rng) -> np.ndarray:
    shape = media_shape(SPEC, modality)
    if WIRE_DTYPES[modality] is np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.normal(size=shape).astype(np.float32)


def test_pack_unpack_round_trip_with_absent_rows():
    rng = np.random.default_rng(0)
    for modality in MODALITIES:
        arrays = [_random_media(modality, rng), None, _random_media(modality, rng)]
        column = pack_media(arrays, modality)
        assert column.dtype == object and column[1] == b""
        dense = unpack_media(column, SPEC, modality)
        assert dense.shape == batch_shapes(SPEC, 3)[modality] and dense.dtype == WIRE_DTYPES[modality]
        np.testing.assert_array_equal(dense[0], arrays[0])
        np.testing.assert_array_equal(dense[2], arrays[2])
        assert not dense[1].any()
        full = unpack_media(pack_media([arrays[0], arrays[2]], modality), SPEC, modality)  # no gaps
        np.testing.assert_array_equal(full, np.stack([arrays[0], arrays[2]]))


def test_a_value_of_the_wrong_size_names_the_modality():
    with pytest.raises(ValueError, match="image value of 5 bytes.*mismatched MediaSpec"):
        unpack_media(np.array([b"12345"], dtype=object), SPEC, "image")


def test_normalise_on_torch_matches_numpy_and_zeroes_absent_rows():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, *media_shape(SPEC, "image")), dtype=np.uint8)
    pixels[0, 0, 0, :2] = (0, 255)
    batch = {"image": torch.from_numpy(pixels.copy()),
             "image_present": torch.tensor([True, False, True, True]),
             "video": torch.zeros((4, *media_shape(SPEC, "video")), dtype=torch.uint8),
             "video_present": torch.zeros(4, dtype=torch.bool)}
    normalise_pixels_(batch)
    image = batch["image"].numpy()
    assert image.dtype == np.float32 and image[0, 0, 0, 0] == -1.0 and image[0, 0, 0, 1] == 1.0
    expected = normalise_pixels(pixels)
    expected[1] = 0.0
    np.testing.assert_array_equal(image, expected)
    assert batch["video"].dtype == torch.float32 and not batch["video"].any()
    again = normalise_pixels_(dict(batch))  # already float: untouched
    assert again["image"] is batch["image"]


def test_collate_gives_dense_tensors_that_normalise_to_the_dense_path():
    rng = np.random.default_rng(2)
    media = {m: [_random_media(m, rng) if (i + k) % 2 else None for i in range(4)]
             for k, m in enumerate(MODALITIES)}
    wire = {m: pack_media(media[m], m) for m in MODALITIES}
    for m in MODALITIES:
        wire[present_key(m)] = np.array([a is not None for a in media[m]])
    wire["input_ids"] = np.arange(4 * SPEC.max_text_tokens).reshape(4, -1)
    keys = ("input_ids", *MODALITIES, *(present_key(m) for m in MODALITIES))
    out = WireCollate(SPEC, keys)(wire)
    assert set(out) == set(keys) and all(isinstance(v, torch.Tensor) for v in out.values())
    assert out["image"].dtype == torch.uint8 and out["audio"].dtype == torch.float32
    out["image"][0] = 7  # writable, not a view of read-only Arrow memory
    out = WireCollate(SPEC, keys)(wire)
    normalise_pixels_(out)
    dense = wire_to_dense(wire, SPEC)
    for key in keys:
        np.testing.assert_array_equal(out[key].numpy(), dense[key], err_msg=key)

"""The compact wire rows between decode actors and trainer: pack, unpack, normalise, collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.batch import MODALITIES, batch_shapes, present_key
from multimodal.config import preset
from multimodal.data.decode import normalise_pixels
import pyarrow as pa

from multimodal.data.wire import (WIRE_DTYPES, WireCollate, absent_zeros, fill_absent_, media_array,
                                  media_shape, normalise_pixels_, unpack_arrow_media, wire_table)

SPEC = preset("tiny").media


def _dense(arrays: list, modality: str) -> np.ndarray:
    """What a wire column of ``arrays`` must unpack to: the arrays, zeros where None."""
    zeros = np.zeros(media_shape(SPEC, modality), WIRE_DTYPES[modality])
    return np.stack([zeros if a is None else a for a in arrays])


def _random_media(modality: str, rng) -> np.ndarray:
    shape = media_shape(SPEC, modality)
    if WIRE_DTYPES[modality] is np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.normal(size=shape).astype(np.float32)


def test_media_array_round_trip_with_absent_rows():
    rng = np.random.default_rng(0)
    for modality in MODALITIES:
        arrays = [_random_media(modality, rng), None, _random_media(modality, rng)]
        column = media_array(arrays, modality)
        assert column.to_pylist()[1] == b""
        dense = unpack_arrow_media(column, SPEC, modality)
        assert dense.shape == batch_shapes(SPEC, 3)[modality] and dense.dtype == WIRE_DTYPES[modality]
        np.testing.assert_array_equal(dense, _dense(arrays, modality))
        assert not dense[1].any()


def test_a_value_of_the_wrong_size_names_the_modality():
    with pytest.raises(ValueError, match="image value of 5 bytes.*mismatched MediaSpec"):
        unpack_arrow_media(pa.array([b"12345"], pa.binary()), SPEC, "image")


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


def test_arrow_media_column_is_one_buffer_and_unpacks_through_slices_and_chunks():
    rng = np.random.default_rng(3)
    for modality in MODALITIES:
        arrays = [_random_media(modality, rng) if i % 3 else None for i in range(7)]
        column = media_array(arrays, modality)
        assert column.type == pa.binary() and column.to_pylist()[0] == b""
        assert len(column.buffers()[2]) == sum(a.nbytes for a in arrays if a is not None)
        expected = _dense(arrays, modality)
        np.testing.assert_array_equal(unpack_arrow_media(column, SPEC, modality), expected)
        # a slice (non-zero offset) and a two-chunk column, as Ray's batching hands them over
        np.testing.assert_array_equal(unpack_arrow_media(column.slice(2, 4), SPEC, modality), expected[2:6])
        chunked = pa.chunked_array([column.slice(0, 3), column.slice(3)])
        np.testing.assert_array_equal(unpack_arrow_media(chunked, SPEC, modality), expected)
        present = [a for a in arrays if a is not None]
        full = unpack_arrow_media(media_array(present, modality), SPEC, modality)
        assert full.flags.writeable
        np.testing.assert_array_equal(full, np.stack(present))
        assert unpack_arrow_media(media_array([None, None], modality), SPEC, modality) is None
    nulls = pa.array([None, b"", None], pa.binary())  # nulls count as absent
    assert unpack_arrow_media(nulls, SPEC, "image") is None
    with pytest.raises(ValueError, match="image value of 5 bytes"):
        unpack_arrow_media(pa.array([b"", b"12345"]), SPEC, "image")


def test_absent_zeros_cost_nothing_and_cannot_be_written():
    zeros = absent_zeros((8, *media_shape(SPEC, "video")))
    assert zeros.shape == (8, *media_shape(SPEC, "video")) and zeros.dtype == torch.float32
    assert not zeros.any() and set(zeros.stride()) == {0}  # one element, no memory per row
    with pytest.raises(RuntimeError):
        zeros.add_(1.0)
    batch = {"input_ids": torch.zeros((3, SPEC.max_text_tokens), dtype=torch.int64),
             "image": torch.ones((3, *media_shape(SPEC, "image")))}
    fill_absent_(batch, SPEC)
    assert batch["image"].eq(1).all() and batch["audio"].shape == (3, *media_shape(SPEC, "audio"))
    assert batch["video"].shape == (3, *media_shape(SPEC, "video")) and not batch["video"].any()
    # what the encoders do with it: flatten frames, convolve
    conv = torch.nn.Conv2d(3, 4, 4, stride=4)
    assert conv(batch["video"].flatten(0, 1)).shape[0] == 3 * SPEC.video_frames


def test_collate_gives_dense_tensors_that_normalise_to_the_contract():
    rng = np.random.default_rng(2)
    media = {m: [_random_media(m, rng) if (i + k) % 2 else None for i in range(4)]
             for k, m in enumerate(MODALITIES)}
    media["video"] = [None] * 4  # a modality no row has: left out by the collate
    columns = {present_key(m): np.array([a is not None for a in media[m]]) for m in MODALITIES}
    columns["input_ids"] = np.arange(4 * SPEC.max_text_tokens).reshape(4, -1)
    table = wire_table(columns, media)
    assert [table.schema.field(m).type for m in MODALITIES] == [pa.binary()] * 3
    keys = ("input_ids", *MODALITIES, *(present_key(m) for m in MODALITIES))
    out = WireCollate(SPEC, keys)(table)
    assert set(out) == set(keys) - {"video"} and all(isinstance(v, torch.Tensor) for v in out.values())
    assert out["image"].dtype == torch.uint8 and out["audio"].dtype == torch.float32
    out["image"][0] = 7  # writable, not a view of read-only Arrow memory
    out = WireCollate(SPEC, keys)(table.slice(1, 3))  # Ray hands over slices of blocks
    assert out["input_ids"].shape[0] == 3
    out = WireCollate(SPEC, keys)(table)
    normalise_pixels_(fill_absent_(out, SPEC))
    for modality in MODALITIES:  # the dense contract: float32, pixels in [-1, 1], zeros when absent
        expected = _dense(media[modality], modality)
        if modality != "audio":
            expected = normalise_pixels(expected)
            expected[~columns[present_key(modality)]] = 0.0
        assert out[modality].dtype == torch.float32
        np.testing.assert_array_equal(out[modality].numpy(), expected, err_msg=modality)
    np.testing.assert_array_equal(out["input_ids"].numpy(), columns["input_ids"])

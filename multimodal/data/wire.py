"""The compact row format between the decode actors and the trainer ("wire rows").

Decoded rows travel from the Ray Data decode actors through Arrow and the object store to the
training workers. Dense contract batches (``multimodal/batch.py``) hold every modality as float32
and zeros when absent: ~0.48 MB per row at the ``slm-63m`` spec, mostly zeros, and moving that
cost more than decoding it on a 2-core machine (``jobs/bench_data.py``). A wire row instead holds
each modality as **one binary value**, empty when the sample does not have it:

| column              | wire value                                   | dense contract tensor            |
|---------------------|----------------------------------------------|----------------------------------|
| ``image``           | raw bytes of uint8 RGB ``[3, S, S]``         | float32 ``[3, S, S]`` in [-1, 1] |
| ``audio``           | raw bytes of float32 log-mel ``[n_mels, T]`` | the same, float32                |
| ``video``           | raw bytes of uint8 RGB ``[F, 3, V, V]``      | float32 ``[F, 3, V, V]``         |

Text keys and the ``<m>_present`` masks are ordinary fixed-shape columns. A video row is ~100 kB
instead of 480 kB, an image row 14 kB instead of 480 kB.

``WireCollate(spec)`` (a Ray ``NumpyBatchCollateFn`` for ``iter_torch_batches``; it runs in Ray's
prefetch threads) turns a wire batch into dense torch tensors, zero-filled where a modality is
absent, pixels still uint8. ``normalise_pixels_(batch)`` converts pixels to float32 after the
host-to-device copy, so a GPU receives a quarter of the bytes and does the arithmetic itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from multimodal.batch import MODALITIES, batch_shapes, present_key
from multimodal.config import MediaSpec
from multimodal.data.decode import PIXEL_OFFSET, PIXEL_SCALE

WIRE_DTYPES: dict[str, type] = {"image": np.uint8, "audio": np.float32, "video": np.uint8}
PIXEL_MODALITIES: tuple[str, ...] = ("image", "video")


def media_shape(spec: MediaSpec, modality: str) -> tuple[int, ...]:
    """Per-sample shape of ``modality`` under ``spec`` (without the batch dimension)."""
    return batch_shapes(spec, 1)[modality][1:]


def pack_media(arrays: Sequence[np.ndarray | None], modality: str) -> np.ndarray:
    """One wire column: an object array of ``bytes`` (``b""`` where the array is None)."""
    dtype = WIRE_DTYPES[modality]
    column = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        column[i] = b"" if array is None else np.ascontiguousarray(array, dtype=dtype).tobytes()
    return column


def unpack_media(column: Sequence, spec: MediaSpec, modality: str) -> np.ndarray:
    """A wire column → ``[B, *shape]`` array of the wire dtype, zeros where the value is empty."""
    shape, dtype = media_shape(spec, modality), WIRE_DTYPES[modality]
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    sizes = [0 if value is None else len(value) for value in column]
    wrong = [size for size in sizes if size not in (0, expected)]
    if wrong:
        raise ValueError(f"{modality} value of {wrong[0]} bytes in a wire row; the spec "
                         f"{shape} {np.dtype(dtype).name} needs {expected} (mismatched MediaSpec?)")
    if sizes and all(sizes):  # every row has it: one join, one copy
        return np.frombuffer(b"".join(column), dtype=dtype).reshape(len(sizes), *shape)
    out = np.zeros((len(sizes), *shape), dtype=dtype)
    for i, value in enumerate(column):
        if sizes[i]:
            out[i] = np.frombuffer(value, dtype=dtype).reshape(shape)
    return out


def _zeros(shape, device):
    import torch

    if device.type == "cpu":  # calloc'd pages: free until something reads them
        return torch.from_numpy(np.zeros(tuple(shape), dtype=np.float32))
    return torch.zeros(shape, dtype=torch.float32, device=device)


def normalise_pixels_(batch: dict) -> dict:
    """In place: uint8 ``image``/``video`` tensors → float32 in ``[-1, 1]`` on their device, and
    exactly 0 in rows whose ``<m>_present`` is False (the dense contract's "absent")."""
    import torch

    for modality in PIXEL_MODALITIES:
        value = batch.get(modality)
        if value is None or value.dtype != torch.uint8:
            continue
        present = batch.get(present_key(modality))
        if present is not None and not bool(present.any()):  # nothing to convert
            batch[modality] = _zeros(value.shape, value.device)
            continue
        # the float32 arithmetic of decode.normalise_pixels
        pixels = value.to(torch.float32).mul_(PIXEL_SCALE).sub_(PIXEL_OFFSET)
        if present is not None and not bool(present.all()):
            absent = ~present.to(torch.bool).view(-1, *([1] * (pixels.dim() - 1)))
            pixels.masked_fill_(absent, 0.0)
        batch[modality] = pixels
    return batch


def wire_to_dense(batch: dict, spec: MediaSpec) -> dict[str, np.ndarray]:
    """A numpy wire batch → the numpy dense contract batch (float32, normalised pixels)."""
    from multimodal.data.decode import normalise_pixels

    out = dict(batch)
    for modality in MODALITIES:
        dense = unpack_media(batch[modality], spec, modality)
        if modality in PIXEL_MODALITIES:
            absent = np.array([value is None or len(value) == 0 for value in batch[modality]], dtype=bool)
            dense = normalise_pixels(dense)
            dense[absent] = 0.0
        out[modality] = dense
    return out


@functools.cache
def _collate_class():
    from ray.data.collate_fn import NumpyBatchCollateFn

    class _WireCollate(NumpyBatchCollateFn):
        """Wire batch (numpy) → dict of CPU torch tensors; media dense, pixels uint8."""

        def __init__(self, spec: MediaSpec, keys: Sequence[str]):
            self.spec = spec
            self.keys = tuple(keys)

        def __call__(self, batch: dict[str, np.ndarray]) -> dict:
            import torch

            out = {}
            for key in self.keys:
                if key in MODALITIES:
                    # writable copy: frombuffer views of Arrow memory are read-only
                    dense = unpack_media(batch[key], self.spec, key)
                    out[key] = torch.from_numpy(dense if dense.flags.writeable else dense.copy())
                elif key in batch:
                    # Arrow-backed arrays are read-only; torch wants writable memory
                    out[key] = torch.from_numpy(np.array(batch[key], copy=True))
            return out

    return _WireCollate


def WireCollate(spec: MediaSpec, keys: Sequence[str]):  # noqa: N802 - a class factory
    """A ``NumpyBatchCollateFn`` for ``iter_torch_batches`` that densifies ``keys`` of wire rows."""
    return _collate_class()(spec, keys)


__all__ = ["WIRE_DTYPES", "media_shape", "pack_media", "unpack_media", "normalise_pixels_",
           "wire_to_dense", "WireCollate"]

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

The decode stage builds each media column with ``media_array``: one contiguous Arrow binary
array (a single buffer plus offsets; no Python ``bytes`` per row). ``WireCollate(spec, keys)`` (a
Ray ``ArrowBatchCollateFn`` for ``iter_torch_batches``; it runs in Ray's prefetch threads) reads
those buffers directly and copies them once into dense torch tensors, pixels still uint8; a
modality that no row of the batch has is **left out** (nothing is allocated or copied to the
device for it). ``fill_absent_`` then adds it as zeros on the device (on CPU a read-only
zero-stride view, which costs nothing), and ``normalise_pixels_`` converts pixels to float32
after the host-to-device copy, so a GPU receives a quarter of the bytes and does the arithmetic
itself.
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


def media_array(arrays: Sequence[np.ndarray | None], modality: str):
    """One wire column as an Arrow ``binary`` array over one contiguous buffer (empty where None)."""
    import pyarrow as pa

    dtype = WIRE_DTYPES[modality]
    offsets = np.zeros(len(arrays) + 1, np.int64)
    parts = []
    for i, array in enumerate(arrays):
        if array is not None:
            parts.append(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))
            offsets[i + 1] = parts[-1].size
    np.cumsum(offsets, out=offsets)
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{modality}: {offsets[-1]} bytes in one batch is over Arrow's 2 GiB binary "
                         "limit; decode fewer rows per step (unit_batch_rows / batch_size)")
    data = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return pa.Array.from_buffers(pa.binary(), len(arrays),
                                 [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def wire_table(columns: dict[str, np.ndarray], media: dict[str, Sequence[np.ndarray | None]]):
    """A wire batch as a ``pyarrow.Table``: ``columns`` (numpy, converted as Ray Data converts
    them: n-d arrays become its tensor columns) plus one ``media_array`` per modality (or the
    wire column itself, when ``media[m]`` already is an Arrow binary array)."""
    from ray.data.block import BlockAccessor

    import pyarrow as pa

    table = BlockAccessor.batch_to_block(columns)
    for modality in MODALITIES:
        values = media[modality]  # a ready Arrow binary column passes through (pre-decoded shards)
        column = values if isinstance(values, pa.Array) else media_array(values, modality)
        table = table.append_column(modality, column)
    return table


def _binary_chunks(column) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(offsets, data)`` numpy views of each chunk of an Arrow binary array; null = empty."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views = []
    for chunk in chunks:
        if chunk.null_count:  # rare: rebuild so that a null is an empty value
            chunk = pa.array([b"" if v is None else v for v in chunk.to_pylist()], pa.binary())
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        _, offsets, data = chunk.buffers()
        offsets = np.frombuffer(offsets, offset_type)[chunk.offset:chunk.offset + len(chunk) + 1]
        views.append((offsets, np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)))
    return views


def unpack_arrow_media(column, spec: MediaSpec, modality: str) -> np.ndarray | None:
    """An Arrow binary wire column → writable ``[B, *shape]`` array of the wire dtype, zeros where
    the value is empty; ``None`` when no row has a value. One copy, straight from Arrow's buffers."""
    shape, dtype = media_shape(spec, modality), WIRE_DTYPES[modality]
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    chunks = _binary_chunks(column)
    sizes = [np.diff(offsets) for offsets, _ in chunks]
    wrong = [size for s in sizes for size in s[(s != 0) & (s != expected)][:1]]
    if wrong:
        raise ValueError(f"{modality} value of {int(wrong[0])} bytes in a wire row; the spec "
                         f"{shape} {np.dtype(dtype).name} needs {expected} (mismatched MediaSpec?)")
    present = sum(int(np.count_nonzero(s)) for s in sizes)
    total = sum(len(s) for s in sizes)
    if not present:
        return None
    out = (np.empty if present == total else np.zeros)((total, *shape), dtype)
    row = 0
    for (offsets, data), size in zip(chunks, sizes):
        # absent rows are empty, so the present rows' bytes are contiguous and in order
        values = data[offsets[0]:offsets[-1]].view(dtype).reshape(-1, *shape)
        if len(values) == len(size):
            out[row:row + len(size)] = values
        elif len(values):
            out[row + np.flatnonzero(size)] = values
        row += len(size)
    return out


def absent_zeros(shape: Sequence[int], device=None):
    """float32 zeros of ``shape`` for a modality no row of a batch has: on CPU a zero-stride view
    of one element (no memory, no memset; writing into it raises), elsewhere ``torch.zeros``."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cpu":
        return torch.zeros((), dtype=torch.float32).expand(*shape)
    return torch.zeros(tuple(shape), dtype=torch.float32, device=device)


def fill_absent_(batch: dict, spec: MediaSpec) -> dict:
    """In place: add each modality missing from ``batch`` (``WireCollate`` leaves out those no
    row has) as ``absent_zeros`` on the device of ``batch["input_ids"]``."""
    rows, device = batch["input_ids"].shape[0], batch["input_ids"].device
    for modality in MODALITIES:
        if modality not in batch:
            batch[modality] = absent_zeros((rows, *media_shape(spec, modality)), device)
    return batch


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
            batch[modality] = absent_zeros(value.shape, value.device)
            continue
        # the float32 arithmetic of decode.normalise_pixels
        pixels = value.to(torch.float32).mul_(PIXEL_SCALE).sub_(PIXEL_OFFSET)
        if present is not None and not bool(present.all()):
            absent = ~present.to(torch.bool).view(-1, *([1] * (pixels.dim() - 1)))
            pixels.masked_fill_(absent, 0.0)
        batch[modality] = pixels
    return batch


def _numpy_columns(table, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``names`` (non-media columns) of a wire ``pyarrow.Table`` as numpy, the way Ray Data
    converts them (its tensor columns become n-d arrays)."""
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(table.select(list(names))).to_batch_format("numpy") if names else {}


@functools.cache
def _collate_class():
    from ray.data.collate_fn import ArrowBatchCollateFn

    class _WireCollate(ArrowBatchCollateFn):
        """Wire batch (``pyarrow.Table``) → dict of CPU torch tensors; media dense, pixels uint8,
        modalities that no row has left out."""

        def __init__(self, spec: MediaSpec, keys: Sequence[str]):
            self.spec = spec
            self.keys = tuple(keys)

        def __call__(self, batch) -> dict:
            import torch

            names = set(batch.column_names)
            columns = _numpy_columns(batch, [k for k in self.keys if k not in MODALITIES and k in names])
            out = {}
            for key in self.keys:
                if key in MODALITIES:
                    dense = unpack_arrow_media(batch.column(key), self.spec, key) if key in names else None
                    if dense is not None:
                        out[key] = torch.from_numpy(dense)
                elif key in columns:
                    # Arrow-backed arrays are read-only; torch wants writable memory
                    out[key] = torch.from_numpy(np.array(columns[key], copy=True))
            return out

    return _WireCollate


def WireCollate(spec: MediaSpec, keys: Sequence[str]):  # noqa: N802 - a class factory
    """An ``ArrowBatchCollateFn`` for ``iter_torch_batches`` that densifies ``keys`` of wire rows
    (media modalities that no row of the batch has are left out: see ``fill_absent_``)."""
    return _collate_class()(spec, keys)


__all__ = ["WIRE_DTYPES", "media_shape", "media_array", "wire_table", "unpack_arrow_media", "absent_zeros",
           "fill_absent_", "normalise_pixels_", "WireCollate"]

"""ONNX export of the whole multimodal model and greedy generation with ONNX Runtime on CPU.

The graph (``model.onnx``) takes the batch contract's arrays -- ``input_ids``, ``attention_mask``,
``image``, ``audio``, ``video`` and the three ``*_present`` flags -- and returns the text logits
``[B, L, V]``: encoders, fusion and core in one graph, batch size dynamic, text length fixed at
export (``media.max_text_tokens``).

No KV cache is exported: generation feeds a fixed-width text window (``<bos>`` + tokens so far,
right-padded and masked) and reads the logits at the last real position, recomputing the prefix
each step. Reason: the core's cache is ``transformers``' ``DynamicCache`` object, whose export
needs per-layer past/present tensors and a second decode graph; with captions of at most
``max_text_tokens`` (24 / 64) tokens behind 12 media tokens the recomputed prefix is short, and one
static graph is what an edge runtime without PyTorch runs most simply. The cost is in
``docs/benchmarks.md`` (ONNX Runtime row).
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import torch
from torch import nn

from multimodal.batch import BOS_ID, EOS_ID, MODALITIES, PAD_ID, empty_batch, present_key

INPUT_NAMES = ("input_ids", "attention_mask", *MODALITIES, *(present_key(m) for m in MODALITIES))


class LogitsGraph(nn.Module):
    """``MultimodalSLM`` with positional tensor inputs and the logits as the only output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, image, audio, video, image_present,
                audio_present, video_present):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "image": image,
                 "audio": audio, "video": video, "image_present": image_present,
                 "audio_present": audio_present, "video_present": video_present}
        return self.model(batch).logits


def example_inputs(cfg, batch_size: int = 2) -> dict[str, torch.Tensor]:
    """A padding batch of the contract's shapes (every modality present) for tracing."""
    batch = {k: torch.from_numpy(v) for k, v in empty_batch(cfg.media, batch_size).items()}
    batch["input_ids"][:, 0] = BOS_ID
    batch["attention_mask"][:, 0] = 1
    for modality in MODALITIES:
        batch[present_key(modality)][:] = True
    return {name: batch[name] for name in INPUT_NAMES}


def export_onnx(model: nn.Module) -> bytes:
    """The fp32 ``model.onnx`` bytes (weights embedded) of ``model``, batch size dynamic."""
    model = model.eval()
    inputs = example_inputs(model.cfg)
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    dynamic = {name: {0: batch_dim} for name in INPUT_NAMES}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = os.path.join(tmp, "model.onnx")
        program = torch.onnx.export(LogitsGraph(model).eval(), tuple(inputs.values()), dynamo=True,
                                    input_names=list(INPUT_NAMES), output_names=["logits"],
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
        program.save(path, external_data=False)
        with open(path, "rb") as handle:
            return handle.read()


def ort_session(onnx_model: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session for a ``model.onnx`` (bytes or path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def ort_logits(session, batch: dict[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """Logits from the session for a batch in the contract (missing modalities: absent)."""
    size = batch["input_ids"].shape[0]
    feeds = {}
    for meta in session.get_inputs():
        value = batch.get(meta.name)
        if value is None:  # a modality left out of the dict: zeros, flagged absent
            shape = [size, *meta.shape[1:]]
            dtype = bool if meta.name.endswith("_present") else np.float32
            value = np.zeros(shape, dtype=dtype)
        value = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feeds[meta.name] = value
    return session.run(["logits"], feeds)[0]


def ort_generate(session, text_len: int, media: dict[str, np.ndarray | torch.Tensor],
                 max_new_tokens: int | None = None) -> list[list[int]]:
    """Greedy token ids (without ``<eos>``) per sample from ``media`` alone, with ONNX Runtime."""
    size = next(iter(media.values())).shape[0]
    max_new_tokens = min(max_new_tokens or text_len - 1, text_len - 1)
    ids = np.full((size, text_len), PAD_ID, dtype=np.int64)
    mask = np.zeros((size, text_len), dtype=np.int64)
    ids[:, 0], mask[:, 0] = BOS_ID, 1
    batch = {name: np.asarray(value) for name, value in media.items()}
    for name in media:
        batch[present_key(name)] = np.ones(size, dtype=bool)
    finished = np.zeros(size, dtype=bool)
    tokens: list[list[int]] = [[] for _ in range(size)]
    for step in range(max_new_tokens):
        logits = ort_logits(session, {**batch, "input_ids": ids, "attention_mask": mask})
        next_token = logits[:, step].argmax(-1)
        for row in np.flatnonzero(~finished):
            if next_token[row] == EOS_ID:
                finished[row] = True
            else:
                tokens[row].append(int(next_token[row]))
        if finished.all() or step + 1 >= text_len:
            break
        ids[:, step + 1] = np.where(finished, PAD_ID, next_token)
        mask[:, step + 1] = (~finished).astype(np.int64)
    return tokens

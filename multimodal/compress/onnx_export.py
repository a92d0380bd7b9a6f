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
``docs/benchmarks.md`` (ONNX Runtime row). Running the graph needs no PyTorch: see
``ort_runtime.py`` (numpy + onnxruntime only).
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from multimodal.batch import BOS_ID, MODALITIES, empty_batch, present_key
from multimodal.compress.ort_runtime import ort_generate, ort_logits, ort_session  # noqa: F401

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

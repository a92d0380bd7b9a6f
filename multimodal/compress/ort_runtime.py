"""Run ``model.onnx`` with ONNX Runtime on CPU: logits and greedy captions, with numpy and
``onnxruntime`` only (no PyTorch import), as a device without PyTorch would.

Generation feeds a fixed-width text window (``<bos>`` + tokens so far, right-padded and masked)
and reads the logits at the last real position: the graph has no KV cache (see
``onnx_export.py`` for why), so each step recomputes the prefix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from multimodal.batch import BOS_ID, EOS_ID, PAD_ID, present_key


def ort_session(onnx_model: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session for a ``model.onnx`` (bytes or path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def ort_logits(session, batch: dict[str, Any]) -> np.ndarray:
    """Logits from the session for a batch in the contract (missing modalities: absent)."""
    size = batch["input_ids"].shape[0]
    feeds = {}
    for meta in session.get_inputs():
        value = batch.get(meta.name)
        if value is None:  # a modality left out of the dict: zeros, flagged absent
            shape = [size, *meta.shape[1:]]
            dtype = bool if meta.name.endswith("_present") else np.float32
            value = np.zeros(shape, dtype=dtype)
        value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)  # torch or numpy
        feeds[meta.name] = value
    return session.run(["logits"], feeds)[0]


def ort_generate(session, text_len: int, media: dict[str, Any],
                 max_new_tokens: int | None = None) -> list[list[int]]:
    """Greedy token ids (without ``<eos>``) per sample from ``media`` alone, with ONNX Runtime."""
    size = next(iter(media.values())).shape[0]
    max_new_tokens = min(max_new_tokens or text_len - 1, text_len - 1)
    ids = np.full((size, text_len), PAD_ID, dtype=np.int64)
    mask = np.zeros((size, text_len), dtype=np.int64)
    ids[:, 0], mask[:, 0] = BOS_ID, 1
    batch = {name: value.numpy() if hasattr(value, "numpy") else np.asarray(value)
             for name, value in media.items()}
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

"""One interface over PyTorch, early-exit and ONNX Runtime generation, for ``jobs/bench_edge.py``:
``logits(batch)`` for the loss and ``generate(media, max_new_tokens)`` -> token id lists."""

from __future__ import annotations


class TorchRunner:
    """A ``MultimodalSLM`` in PyTorch (greedy ``generate`` with the KV cache)."""

    def __init__(self, model):
        self.model = model.eval()

    def logits(self, batch):
        import torch

        with torch.no_grad():
            return self.model(batch).logits

    def generate(self, media: dict, max_new_tokens: int) -> list[list[int]]:
        return [g.token_ids for g in self.model.generate(**media, max_new_tokens=max_new_tokens)]


class EarlyExitRunner(TorchRunner):
    """``generate_early_exit`` at one threshold or per-exit thresholds; keeps the depths used."""

    def __init__(self, model, threshold: float | list[float], min_layer: int = 1):
        super().__init__(model)
        self.threshold = threshold
        self.min_layer = min_layer
        self.depths: list[float] = []

    def generate(self, media: dict, max_new_tokens: int) -> list[list[int]]:
        from multimodal.compress.early_exit import generate_early_exit

        result = generate_early_exit(self.model, self.threshold, self.min_layer, max_new_tokens,
                                     **media)
        self.depths.append(result.average_depth)
        return [g.token_ids for g in result.generations]


class OrtRunner:
    """An exported ``model.onnx`` in ONNX Runtime (fixed text window, no KV cache)."""

    def __init__(self, path: str, text_len: int, threads: int):
        from multimodal.compress.ort_runtime import ort_session

        self.session = ort_session(path, threads)
        self.text_len = text_len

    def logits(self, batch):
        import torch

        from multimodal.compress.ort_runtime import ort_logits

        return torch.from_numpy(ort_logits(self.session, batch))

    def generate(self, media: dict, max_new_tokens: int) -> list[list[int]]:
        from multimodal.compress.ort_runtime import ort_generate

        return ort_generate(self.session, self.text_len, media, max_new_tokens)

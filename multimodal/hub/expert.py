"""The Serve deployment that holds expert models and answers queries with them.

One class serves both layouts: a deployment per expert (it holds one model), or one pool
deployment for all experts, multiplexed (``@serve.multiplexed``: each replica keeps the
``models_per_replica`` most recently used experts and Serve routes a request to a replica that
already has its expert loaded). Either way the caller names the expert with
``handle.options(multiplexed_model_id=name)``. ``@serve.batch`` gathers concurrent requests for
the same expert into one ``generate`` call (Serve splits batches by model id).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np

from multimodal.hub.calibration import confidence


def _load_model(uri: str):
    from multimodal.model import MultimodalSLM

    return MultimodalSLM.from_pretrained(uri)


def make_expert_deployment(models_per_replica: int, max_batch_size: int, batch_wait_timeout_s: float):
    """The deployment class, with the multiplexing and batching limits baked in."""
    from ray import serve

    class ExpertServer:
        """``experts``: name -> {"model": URI, "temperature": T}."""

        def __init__(self, experts: dict[str, dict[str, Any]]):
            import torch

            torch.set_num_threads(1)
            self.experts = experts
            self.preloaded = {}
            if len(experts) == 1:  # a deployment per expert: ready with its model, no first-call load
                [(name, expert)] = experts.items()
                try:
                    self.preloaded[name] = _load_model(expert["model"])
                except Exception as exc:  # unreadable now: the first call retries (and fails alone)
                    logging.getLogger("ray.serve").warning(
                        "expert %s: model not loaded at start: %s: %s", name, type(exc).__name__, exc)

        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def load(self, name: str):
            if name not in self.experts:
                raise KeyError(f"unknown expert {name!r}")
            if name in self.preloaded:
                return self.preloaded.pop(name)  # the multiplexer caches it from now on
            return _load_model(self.experts[name]["model"])

        async def ping(self) -> str:
            """Ready when the expert's model is loaded (the ingress's health probe)."""
            await self.load(serve.get_multiplexed_model_id())
            return "ok"

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def generate(self, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            """Answer a batch of queries for one expert (Serve groups a batch by model id)."""
            name = serve.get_multiplexed_model_id()
            model = await self.load(name)
            temperatures = {False: float(self.experts[name]["temperature"]),  # whole answer
                            True: float(self.experts[name].get("score_temperature")  # short score
                                        or self.experts[name]["temperature"])}
            groups: dict[tuple, list[int]] = defaultdict(list)
            for index, query in enumerate(queries):
                groups[(tuple(sorted(query["media"])), query["max_new_tokens"], bool(query.get("score")))].append(index)
            results: list[dict[str, Any] | None] = [None] * len(queries)
            for (modalities, max_new_tokens, score), indices in groups.items():
                temperature = temperatures[score]
                started = time.perf_counter()
                generations = self._generate(model, [queries[i] for i in indices], modalities, max_new_tokens)
                generate_ms = (time.perf_counter() - started) * 1000
                for index, generation in zip(indices, generations):
                    results[index] = {"text": (generation.text or "").strip(),
                                      "mean_logprob": generation.mean_logprob,
                                      "confidence": float(confidence(generation.mean_logprob, temperature)),
                                      "finished": generation.finished,  # <eos> within max_new_tokens
                                      "batch_size": len(queries), "generate_ms": generate_ms}
            return results

        @staticmethod
        def _generate(model, queries, modalities, max_new_tokens):
            import torch

            media = {m: torch.from_numpy(np.stack([q["media"][m] for q in queries])) for m in modalities}
            prompts = [model.tokenizer.encode(q["prompt"], add_special_tokens=False).ids if q["prompt"] else []
                       for q in queries]
            return model.generate(**media, prompt_ids=prompts if (not media or any(prompts)) else None,
                                  max_new_tokens=max_new_tokens)

    return serve.deployment(ExpertServer)

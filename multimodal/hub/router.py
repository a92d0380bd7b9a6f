"""Pick the answer: the most confident expert above the threshold, or say that none is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ExpertAnswer:
    """One expert's greedy answer to a query."""

    text: str
    mean_logprob: float
    confidence: float
    generate_ms: float = 0.0  # the expert's model.generate call (its batch's)
    finished: bool = True  # it emitted <eos>: the text is whole


def candidates(request_modalities: tuple[str, ...], expert_modalities: dict[str, list[str] | None],
               prefilter: str) -> list[str]:
    """The experts to ask: with the ``modalities`` pre-filter, those competent on every medium of
    the request (unmeasured experts always); everyone for text-only requests, for ``none``, or
    when nobody qualifies."""
    everyone = list(expert_modalities)
    if prefilter == "none" or not request_modalities:
        return everyone
    wanted = set(request_modalities) if len(request_modalities) == 1 else {"multi"}
    chosen = [name for name, known in expert_modalities.items()
              if known is None or wanted <= set(known) or set(request_modalities) <= set(known)]
    return chosen or everyone


def choose(answers: dict[str, ExpertAnswer], failed: dict[str, str], threshold: float,
           latency_ms: float, skipped: list[str] | None = None) -> dict[str, Any]:
    """The response body: the best expert's answer, every asked expert's confidence, the
    failures and the experts the pre-filter skipped."""
    scores = {name: round(answer.confidence, 6) for name, answer in sorted(answers.items())}
    body: dict[str, Any] = {"expert": None, "text": None, "confidence": 0.0, "scores": scores,
                            "mean_logprob": {n: round(a.mean_logprob, 6) for n, a in sorted(answers.items())},
                            "failed": dict(sorted(failed.items())), "skipped": sorted(skipped or []),
                            "latency_ms": round(latency_ms, 2)}
    if not answers:
        body["answer"] = "no expert answered"
        return body
    best = max(sorted(answers), key=lambda name: answers[name].confidence)
    body["confidence"] = scores[best]
    if answers[best].confidence < threshold:
        body["answer"] = (f"no expert confident: the best, {best}, has confidence "
                          f"{answers[best].confidence:.3f} < threshold {threshold:g}")
        return body
    body.update(expert=best, text=answers[best].text, answer=answers[best].text)
    return body

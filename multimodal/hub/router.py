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


def choose(answers: dict[str, ExpertAnswer], failed: dict[str, str], threshold: float,
           latency_ms: float) -> dict[str, Any]:
    """The response body: the best expert's answer, every expert's confidence, the failures."""
    scores = {name: round(answer.confidence, 6) for name, answer in sorted(answers.items())}
    body: dict[str, Any] = {"expert": None, "text": None, "confidence": 0.0, "scores": scores,
                            "mean_logprob": {n: round(a.mean_logprob, 6) for n, a in sorted(answers.items())},
                            "failed": dict(sorted(failed.items())), "latency_ms": round(latency_ms, 2)}
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

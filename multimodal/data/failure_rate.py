"""Tell a broken decoder from a few corrupt files: per-modality decode failure rates.

A corpus has some corrupt files (a few percent); a decoder that fails on every sample (a codec
library missing on the workers, say) turns every sample of its modality into a "bad" one and,
unchecked, the run trains on text alone and exits 0. ``ModalityFailureRate`` counts decode attempts
and failures per modality and, once ``min_samples`` of a modality were tried, raises
``DatasetBrokenError`` when more than ``max_rate`` of them failed; the message names the modality
and the first error seen, so one line says what to fix.
"""

from __future__ import annotations

DEFAULT_MAX_FAILURE_RATE = 0.5  # well above any real corpus's share of corrupt files
DEFAULT_MIN_SAMPLES = 32  # attempts of one modality before its rate is judged


class DatasetBrokenError(RuntimeError):
    """The data cannot be trained on: a shard or a whole modality fails to decode."""


class ModalityFailureRate:
    """Counts decode attempts and failures per modality (one decode actor's share of the data)."""

    def __init__(self, max_rate: float = DEFAULT_MAX_FAILURE_RATE, min_samples: int = DEFAULT_MIN_SAMPLES):
        if not 0.0 < max_rate <= 1.0:
            raise ValueError(f"max_rate must be in (0, 1], got {max_rate}")
        self.max_rate, self.min_samples = float(max_rate), max(1, int(min_samples))
        self.attempts: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.first_error: dict[str, str] = {}

    def note(self, modality: str, error: BaseException | None = None) -> None:
        """Record one decode of ``modality`` (``error`` None: it worked); raises
        ``DatasetBrokenError`` when the modality's failure rate is over the limit."""
        attempts = self.attempts[modality] = self.attempts.get(modality, 0) + 1
        if error is None:
            return
        failures = self.failures[modality] = self.failures.get(modality, 0) + 1
        self.first_error.setdefault(modality, f"{type(error).__name__}: {error}")
        if attempts >= self.min_samples and failures > self.max_rate * attempts:
            raise DatasetBrokenError(
                f"{modality} decoding failed on {failures} of {attempts} samples (limit "
                f"{self.max_rate:.0%}): the {modality} decoder looks broken, not a few corrupt files. "
                f"First error: {self.first_error[modality]}")


__all__ = ["DatasetBrokenError", "ModalityFailureRate", "DEFAULT_MAX_FAILURE_RATE", "DEFAULT_MIN_SAMPLES"]

"""Training metrics exported through Ray (``ray.util.metrics``) so that they reach Prometheus.

Ray prefixes every name with ``ray_`` (counters also get ``_total``): ``slm_train_loss`` is
scraped as ``ray_slm_train_loss``. The Grafana dashboard in ``cluster/grafana/`` plots these.
"""

from __future__ import annotations

from typing import Mapping


class TrainMetrics:
    """Gauges and counters for one training worker, tagged with the run name and rank."""

    def __init__(self, run_name: str, rank: int):
        from ray.util.metrics import Counter, Gauge

        tags = ("run", "rank")
        self._tags = {"run": run_name, "rank": str(rank)}
        self.loss = Gauge("slm_train_loss", "training loss (last step)", tags)
        self.val_loss = Gauge("slm_val_loss", "validation loss (last validation)", tags)
        self.learning_rate = Gauge("slm_learning_rate", "learning rate", tags)
        self.tokens_per_second = Gauge("slm_tokens_per_second", "text tokens trained per second", tags)
        self.step = Gauge("slm_step", "optimizer steps done", tags)
        self.data_wait = Gauge("slm_data_wait_fraction", "share of step time spent waiting for data", tags)
        self.gpu_utilization = Gauge("slm_gpu_utilization", "GPU utilisation percent", tags)
        self.samples = Counter("slm_samples", "samples trained, by modality", tags + ("modality",))
        self.bad_samples = Counter("slm_bad_samples", "undecodable media, by modality", tags + ("modality",))

    def record_step(self, *, step: int, loss: float, learning_rate: float, tokens_per_second: float,
                    data_wait_fraction: float, gpu_utilization: float | None = None) -> None:
        self.step.set(step, self._tags)
        self.loss.set(loss, self._tags)
        self.learning_rate.set(learning_rate, self._tags)
        self.tokens_per_second.set(tokens_per_second, self._tags)
        self.data_wait.set(data_wait_fraction, self._tags)
        if gpu_utilization is not None:
            self.gpu_utilization.set(gpu_utilization, self._tags)

    def record_samples(self, samples: Mapping[str, int], bad: Mapping[str, int]) -> None:
        for modality, count in samples.items():
            if count > 0:
                self.samples.inc(count, {**self._tags, "modality": modality})
        for modality, count in bad.items():
            if count > 0:
                self.bad_samples.inc(count, {**self._tags, "modality": modality})

    def record_validation(self, val_loss: float) -> None:
        self.val_loss.set(val_loss, self._tags)


def gpu_utilization() -> float | None:
    """GPU utilisation in percent (needs NVML); None on CPU or without it."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return float(torch.cuda.utilization())
    except Exception:  # NVML missing or unsupported: not worth failing a step for
        return None

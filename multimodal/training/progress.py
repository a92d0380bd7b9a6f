"""The progress line and throughput windows: tokens/s, samples/s, data wait and MFU per window."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from multimodal.training.mfu import FlopsModel, mfu


def say(message: str) -> None:
    """One line to the job log. Ray Train patches ``print`` to tee into its logger, which shows
    every line twice in ``ray job logs``; writing to stdout directly shows it once."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class Progress:
    """What one worker trained since the last progress line."""

    def __init__(self, flops: FlopsModel, peak_flops: float | None, world_size: int):
        self.flops, self.peak, self.world_size = flops, peak_flops, world_size
        self.windows: list[dict[str, float | None]] = []  # one per progress line
        self.epoch_start_waits: list[float] = []  # this worker's wait for each epoch's first batch
        self.tokens_per_s = 0.0
        self.attempt_flops, self.attempt_seconds = 0.0, 0.0  # this attempt, this worker
        self._reset()

    def _reset(self) -> None:
        self.tokens, self.samples, self.seconds, self.wait = 0, 0, 0.0, 0.0
        self.by_modality: dict[str, int] = {}

    def add_batch(self, tokens: int, samples: int, wait_s: float, by_modality: Mapping[str, int]) -> None:
        self.tokens += tokens
        self.samples += samples
        self.wait += wait_s
        for modality, count in by_modality.items():
            self.by_modality[modality] = self.by_modality.get(modality, 0) + count
        self.attempt_flops += self.flops.flops(samples, by_modality)

    def add_time(self, seconds: float) -> None:
        self.seconds += seconds
        self.attempt_seconds += seconds

    def attempt_mfu(self) -> float | None:
        """MFU over this attempt's training time (rank 0's worker; all are alike)."""
        value = mfu(self.attempt_flops, self.attempt_seconds, self.peak)
        return None if value is None else round(value, 5)

    def close_window(self) -> dict[str, float | None]:
        """Close this window: its tokens/s, samples/s (all workers), data wait and MFU."""
        seconds = max(self.seconds, 1e-9)
        self.tokens_per_s = self.tokens * self.world_size / seconds
        window_mfu = mfu(self.flops.flops(self.samples, self.by_modality), seconds, self.peak)
        window = {"tokens_per_s": round(self.tokens_per_s, 1), "data_wait": round(self.wait / seconds, 3),
                  "samples_per_s": round(self.samples * self.world_size / seconds, 2),
                  "mfu": None if window_mfu is None else round(window_mfu, 5)}
        self.windows.append(window)
        self._reset()
        return window


def progress_line(step: int, total_steps: int, epoch: int, loss: float, lr: float,
                  window: Mapping[str, float | None]) -> str:
    """``step 40/200 | epoch 0 | loss 3.2100 | lr 1.00e-03 | 1,234 tok/s | 80.0 samples/s | data wait 3% | MFU 1.20%``"""
    mfu_text = "-" if window["mfu"] is None else f"{100 * window['mfu']:.2f}%"
    return (f"step {step}/{total_steps} | epoch {epoch} | loss {loss:.4f} | lr {lr:.2e}"
            f" | {window['tokens_per_s']:,.0f} tok/s | {window['samples_per_s']:.1f} samples/s"
            f" | data wait {100 * window['data_wait']:.0f}% | MFU {mfu_text}")

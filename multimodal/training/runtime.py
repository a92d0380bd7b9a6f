"""The loop's only contact with what runs it: ``Runtime``, with a Ray Train implementation.

The loop (``loop.py``) asks a runtime for its rank, device, data iterators, the checkpoint to
resume from, and to commit a checkpoint. ``RayRuntime`` answers with ``ray.train``;
``local.LocalRuntime`` with local shards and a local folder, so the same loop runs in one plain
process (no Ray cluster) for tests and single-machine runs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch


class Runtime(Protocol):
    """What the training loop needs from whatever runs it."""

    rank: int
    world_size: int
    device: torch.device
    run_name: str

    def dataset(self, name: str) -> Any:
        """A data iterator with Ray's ``iter_torch_batches(...)`` for the dataset ``name``."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """The checkpoint to resume from as a local folder (``None``: a fresh start)."""

    def commit_checkpoint(self, metrics: dict[str, Any], directory: str, dir_name: str) -> None:
        """Store the checkpoint folder ``directory`` (every rank's) as ``dir_name`` with ``metrics``."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train (wrapped for data parallelism where there is more than one worker)."""

    def node_id(self) -> str:
        """The machine this worker runs on."""

    def metrics(self) -> Any:
        """A recorder with ``TrainMetrics``' methods."""


class RayRuntime:
    """``Runtime`` over ``ray.train``: a Ray Train worker."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        self._train = ray.train
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.run_name = context.get_experiment_name()
        self.device = ray.train.torch.get_device()

    def dataset(self, name: str) -> Any:
        return self._train.get_dataset_shard(name)

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        checkpoint = self._train.get_checkpoint()
        return nullcontext(None) if checkpoint is None else checkpoint.as_directory()

    def commit_checkpoint(self, metrics: dict[str, Any], directory: str, dir_name: str) -> None:
        # Ray uploads every rank's folder into one, then publishes it (checkpoint.py)
        self._train.report(metrics, checkpoint=self._train.Checkpoint.from_directory(directory),
                           checkpoint_dir_name=dir_name)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        kwargs = {"find_unused_parameters": True} if self.world_size > 1 else None
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def metrics(self) -> Any:
        from multimodal.metrics import TrainMetrics

        return TrainMetrics(self.run_name, self.rank)

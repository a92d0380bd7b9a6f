"""Training checkpoints: what a resume needs, written so that nothing is lost.

A checkpoint directory holds

| file                  | content                                                             |
|-----------------------|---------------------------------------------------------------------|
| ``model.safetensors`` | model weights (safetensors: no pickle)                              |
| ``optimizer.pt``      | AdamW state (tensors only; loaded with ``weights_only=True``)       |
| ``rng.pt``            | torch CPU (and CUDA) RNG states of rank 0 (checkpoints before ranks) |
| ``rng-rank-<r>.pt``   | the same for each rank ``r``: every worker resumes its own stream   |
| ``trainer_state.json``| step, epoch, data position, best validation loss, counters, time used |

Ray Train uploads the directory to ``storage_path/name/checkpoint_step_<N>`` and records it in
its internal ``checkpoint_manager_snapshot.json`` only once the upload is complete, so a
half-written checkpoint is never the one a resume picks (write, then publish). Rank 0 then
records it in the run's own ``_checkpoint_index.json`` (step, folder, metrics with the data
position). A resume plans its data from the checkpoint Ray will restore: the latest folder named
in Ray's snapshot, read from its own ``trainer_state.json`` (``latest_data_position``).

The *data position* is the number of rows of each shard consumed in the current epoch, summed
over all workers. A resume rebuilds the epoch's dataset from the shards that were not fully
consumed (``remaining_shards``): fully read shards are never repeated; partly read ones are read
again from their start (the only place repeats can happen).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from multimodal import fs

TRAINER_STATE = "trainer_state.json"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray's internal file: only for runs without our index
CHECKPOINT_INDEX = "_checkpoint_index.json"


@dataclass
class DataPosition:
    """Rows consumed per shard id in ``epoch`` (over all workers)."""

    epoch: int = 0
    rows_per_shard: dict[int, int] = field(default_factory=dict)

    def remaining_shards(self, shard_rows: list[int]) -> list[int]:
        """Shard ids not fully consumed in this epoch (unread or partly read)."""
        return [i for i, rows in enumerate(shard_rows) if self.rows_per_shard.get(i, 0) < rows]

    def is_fresh(self) -> bool:
        return not any(self.rows_per_shard.values())

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "rows_per_shard": {str(k): v for k, v in self.rows_per_shard.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DataPosition":
        if not data:
            return cls()
        return cls(epoch=int(data.get("epoch", 0)),
                    rows_per_shard={int(k): int(v) for k, v in data.get("rows_per_shard", {}).items()})


@dataclass
class TrainerState:
    """Everything besides weights and optimizer moments that a resume restores."""

    step: int = 0
    epoch: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    best_val_loss: float | None = None
    best_step: int | None = None  # the step whose checkpoint holds the best_val_loss weights
    validations_without_improvement: int = 0
    first_train_loss: float | None = None
    last_train_loss: float | None = None
    samples_by_modality: dict[str, int] = field(default_factory=dict)
    bad_samples_by_modality: dict[str, int] = field(default_factory=dict)
    dropped_samples: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    data_wait_seconds: float = 0.0  # waiting for batches, mean over workers (older checkpoints: 0)
    resumed_from_steps: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["position"] = self.position.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerState":
        data = dict(data)
        data["position"] = DataPosition.from_dict(data.get("position"))
        return cls(**data)


def close_finished_epoch(state: TrainerState, shard_rows: list[int]) -> bool:
    """When the checkpoint says every shard of its epoch was read, move ``state`` to the start of
    the next epoch (the epoch ended right after that checkpoint); True if it did. Without this, a
    resume would read the whole finished epoch again under the same epoch number."""
    if state.position.is_fresh() or state.position.remaining_shards(shard_rows):
        return False
    state.epoch += 1
    state.position = DataPosition(epoch=state.epoch)
    return True


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainerState) -> None:
    """Write a checkpoint into a local ``directory`` (Ray Train uploads and publishes it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / "model.safetensors"))
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(_rng_state(), directory / "rng.pt")
    (directory / TRAINER_STATE).write_text(json.dumps(state.to_dict(), indent=1))


def _rng_state() -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def rng_file(rank: int) -> str:
    return f"rng-rank-{rank}.pt"


def save_rng_state(directory: str | Path, rank: int) -> None:
    """Write this rank's RNG states as ``rng-rank-<rank>.pt`` (every rank, into the same checkpoint)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), Path(directory) / rng_file(rank))


def load_checkpoint(directory: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, rank: int = 0) -> TrainerState:
    """Restore weights (and optimizer, this ``rank``'s RNG) from a local checkpoint directory.

    A rank without its own RNG file (an older checkpoint, or more workers than before) takes rank 0's.
    """
    directory = Path(directory)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    own = directory / rng_file(rank)
    rng = torch.load(own if own.exists() else directory / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainerState.from_dict(json.loads((directory / TRAINER_STATE).read_text()))


def checkpoint_dir_name(step: int) -> str:
    """The folder name of the checkpoint taken at ``step`` (under ``storage_path/name/``)."""
    return f"checkpoint_step_{step:07d}"


def load_checkpoint_weights(run_uri: str, step: int) -> dict[str, torch.Tensor]:
    """The model weights of the run's checkpoint at ``step`` (local or S3; safetensors)."""
    from safetensors.torch import load

    return load(fs.read_bytes(fs.join(run_uri, checkpoint_dir_name(step), "model.safetensors")))


def write_checkpoint_index(run_uri: str, step: int, metrics: dict[str, Any]) -> None:
    """Record the checkpoint just committed at ``step`` (rank 0, after ``ray.train.report`` has
    uploaded it) in the run's own ``_checkpoint_index.json``: what a resume reads, so it does not
    depend on the layout of Ray's internal snapshot file."""
    index = {"version": 1, "latest": {"step": int(step), "dir": checkpoint_dir_name(step), "metrics": metrics}}
    fs.write_bytes_atomic(fs.join(run_uri, CHECKPOINT_INDEX), json.dumps(index, indent=1).encode())


def latest_checkpoint_metrics(run_uri: str) -> dict[str, Any] | None:
    """Metrics of the latest committed checkpoint of a run: from the run's own index, or (runs
    written before the index existed) from Ray Train's snapshot file."""
    index_uri = fs.join(run_uri, CHECKPOINT_INDEX)
    if fs.exists(index_uri):
        return json.loads(fs.read_bytes(index_uri))["latest"]["metrics"]
    snapshot_uri = fs.join(run_uri, SNAPSHOT_FILE)
    if not fs.exists(snapshot_uri):
        return None
    snapshot = json.loads(fs.read_bytes(snapshot_uri))
    latest = snapshot.get("latest_checkpoint_result")
    return latest.get("metrics") if latest else None


def committed_steps(run_uri: str) -> list[int]:
    """Steps of the checkpoints Ray Train has committed for this run, found by their folder names
    in its snapshot file (whatever the file's layout); empty without one (a plain-process run)."""
    import re

    snapshot_uri = fs.join(run_uri, SNAPSHOT_FILE)
    if not fs.exists(snapshot_uri):
        return []
    text = fs.read_bytes(snapshot_uri).decode(errors="replace")
    return sorted({int(step) for step in re.findall(r"checkpoint_step_(\d{7})", text)})


def latest_data_position(run_uri: str) -> DataPosition:
    """The data position of the checkpoint a resume restores (fresh if none).

    Under Ray Train that is Ray's latest *committed* checkpoint: rank 0 writes our index right
    after its own ``report``, but Ray commits only once every rank has reported, so a worker lost
    in between leaves the index one checkpoint ahead of what Ray restores. The position is then
    read from that checkpoint's own ``trainer_state.json``, so model and data always agree; the
    index serves runs without Ray's snapshot (the plain-process runtime)."""
    steps = committed_steps(run_uri)
    if steps:
        state_uri = fs.join(run_uri, checkpoint_dir_name(steps[-1]), TRAINER_STATE)
        if fs.exists(state_uri):
            return TrainerState.from_dict(json.loads(fs.read_bytes(state_uri))).position
    metrics = latest_checkpoint_metrics(run_uri) or {}
    raw = metrics.get("data_position")
    return DataPosition.from_dict(json.loads(raw) if isinstance(raw, str) else raw)

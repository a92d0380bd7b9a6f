"""Resume, validation bookkeeping, checkpoints and the export, for one worker.

Checkpoint safety (``multimodal/checkpoint.py``): every rank writes its RNG state into the same
checkpoint folder, rank 0 the weights, optimizer and ``TrainerState``; the runtime commits the
folder (Ray Train uploads, then publishes it), and only then rank 0 records it in the run's
``_checkpoint_index.json``. The best weights by validation loss are kept in memory for the export
(or read back from the best checkpoint when that came before this attempt).
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import torch

from multimodal import fs
from multimodal.checkpoint import (DataPosition, TrainerState, checkpoint_dir_name, close_finished_epoch,
                                   load_checkpoint, load_checkpoint_weights, save_checkpoint, save_rng_state,
                                   write_checkpoint_index)
from multimodal.training.runtime import Runtime


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a data-parallel wrapper."""
    return model.module if hasattr(model, "module") else model


class Checkpointer:
    """One worker's view of the run's checkpoints."""

    def __init__(self, runtime: Runtime, run_uri: str):
        self.runtime, self.run_uri, self.rank = runtime, run_uri, runtime.rank
        self.best_weights: dict[str, torch.Tensor] | None = None  # best seen by this attempt
        self.resumed = False

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               shard_rows: list[int]) -> tuple[TrainerState, DataPosition | None]:
        """The state to start from (fresh, or the latest checkpoint's, weights and RNG loaded)
        and, when the checkpoint was taken mid-epoch, where in that epoch it was."""
        with self.runtime.latest_checkpoint() as directory:
            if directory is None:
                return TrainerState(), None
            state = load_checkpoint(directory, model, optimizer, rank=self.rank)
        self.resumed = True
        state.resumed_from_steps.append(state.step)
        close_finished_epoch(state, shard_rows)  # every shard read: go on with the next epoch
        position = None
        if not state.position.is_fresh():
            position = DataPosition(state.position.epoch, dict(state.position.rows_per_shard))
        return state, position

    def note_validation(self, state: TrainerState, val_loss: float | None, model: torch.nn.Module) -> bool:
        """Track the best validation loss and its weights; True when ``val_loss`` improved on it."""
        if val_loss is None:
            return False
        improved = state.best_val_loss is None or val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step = val_loss, state.step
            state.validations_without_improvement = 0
            self.best_weights = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        else:
            state.validations_without_improvement += 1
        return improved

    def save(self, state: TrainerState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             val_loss: float | None, extra: dict[str, Any]) -> dict[str, Any]:
        """Write and commit a checkpoint of ``state``; returns the metrics reported with it."""
        report = {"step": state.step, "epoch": state.epoch, "train_loss": state.last_train_loss,
                  "val_loss": val_loss if val_loss is not None else float("nan"),
                  "data_position": json.dumps(state.position.to_dict()), **extra}
        with tempfile.TemporaryDirectory() as directory:
            save_rng_state(directory, self.rank)  # every rank's own RNG; the folders are merged
            if self.rank == 0:
                save_checkpoint(directory, unwrap(model), optimizer, state)
            self.runtime.commit_checkpoint(report, directory, checkpoint_dir_name(state.step))
            if self.rank == 0:
                write_checkpoint_index(self.run_uri, state.step, report)  # committed: publish it
        return report

    def export_weights(self, state: TrainerState, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The weights to export: the best by validation loss, else the last."""
        if self.best_weights is None and state.best_step is not None:  # the best came before this attempt
            self.best_weights = load_checkpoint_weights(self.run_uri, state.best_step)
        return self.best_weights if self.best_weights is not None else unwrap(model).state_dict()


def export_model(model_cfg, weights: dict[str, torch.Tensor], finetune, tokenizer_uri: str,
                 run_uri: str) -> str:
    """Save the trained model (LoRA merged) under ``<run>/model``; returns its URI."""
    from multimodal.data.tokenizer import load_tokenizer
    from multimodal.finetune import merged_export

    model_uri = fs.join(run_uri, "model")
    export = merged_export(model_cfg, weights, finetune if finetune.init_from else None)
    export.save_pretrained(model_uri, tokenizer=load_tokenizer(tokenizer_uri))
    return model_uri

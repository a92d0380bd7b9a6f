"""The training loop every worker runs, over a ``Runtime`` (Ray Train or one plain process).

``Trainer`` wires the parts, each in its own module: ``schedule`` (learning rate), ``step``
(micro-batches, accumulation, clipping), ``validate``, ``checkpointing`` (resume, best weights,
commit, export), ``position`` (which shards an epoch reads, mid-epoch resume), ``counts`` (what
was read, summed over workers), ``progress`` and ``mfu`` (the progress line). Read ``fit`` top to
bottom: epochs, batches, optimizer steps, validation and checkpoints, export.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from multimodal.config import ModelConfig
from multimodal.job_config import JobConfig
from multimodal.run_stop import guard_batches, stopped_result
from multimodal.training.checkpointing import Checkpointer, export_model
from multimodal.training.counts import Collectives, Counts
from multimodal.training.mfu import FlopsModel, peak_flops
from multimodal.training.position import VAL, DataCursor
from multimodal.training.progress import Progress, progress_line, say
from multimodal.training.runtime import Runtime
from multimodal.training.schedule import LRSchedule
from multimodal.training.step import TrainStep
from multimodal.training.validate import validation_loss


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's entry point: train on this worker's share; rank 0 returns the result dict."""
    from multimodal.training.runtime import RayRuntime

    return run_training(loop_config, RayRuntime())


def run_training(loop_config: dict[str, Any], runtime: Runtime) -> dict[str, Any] | None:
    """Train with ``runtime``; rank 0 returns the run's result dict, other ranks ``None``.

    ``loop_config``: ``job`` and ``model`` (dumped ``JobConfig``/``ModelConfig``), ``run_uri``,
    ``shard_rows`` (rows per training shard), ``total_steps``, ``tokenizer_uri``, ``datasets``
    (the dataset names the runtime has).
    """
    stopped = stopped_result(loop_config["run_uri"])  # an earlier attempt met broken data
    if stopped is not None:
        return stopped if runtime.rank == 0 else None
    return Trainer(loop_config, runtime).fit()


def build_model(job: JobConfig, model_cfg: ModelConfig, device: torch.device, rank: int) -> torch.nn.Module:
    """The model to train: fresh, or the fine-tuning base with its frozen part and LoRA."""
    from multimodal.finetune import prepare_finetune, trainable_summary
    from multimodal.model import MultimodalSLM

    model = MultimodalSLM(model_cfg)
    if job.finetune.init_from:  # base weights, frozen part, LoRA (multimodal/finetune.py)
        model = prepare_finetune(model, job.finetune)
        if rank == 0:
            say(f"fine-tuning from {job.finetune.init_from}: {trainable_summary(model)}")
    return model.to(device)


class Trainer:
    """One worker's training run (see the module docstring)."""

    def __init__(self, loop_config: dict[str, Any], runtime: Runtime):
        from multimodal.compress.distill import training_loss_fn  # plain, distillation, early exit

        self.config, self.runtime = loop_config, runtime
        self.job = JobConfig.model_validate(loop_config["job"])
        self.model_cfg = ModelConfig.model_validate(loop_config["model"])
        self.run_uri, self.shard_rows = loop_config["run_uri"], list(loop_config["shard_rows"])
        self.total_steps, self.train = int(loop_config["total_steps"]), self.job.train
        self.rank, self.world, self.device = runtime.rank, runtime.world_size, runtime.device
        self.comm = Collectives(self.device)
        torch.manual_seed(self.train.seed + self.rank)  # per-rank RNG (a resume restores each rank's)
        # one intra-op thread per reserved CPU: oversubscribed threads make small models several
        # times slower (measured in jobs/bench_model.py), and Ray Data decodes on the same cores
        cpus = float(self.job.run.cpus_per_worker or 1)
        torch.set_num_threads(max(1, int(cpus)))
        model = build_model(self.job, self.model_cfg, self.device, self.rank)
        self.optimizer = model.configure_optimizer(lr=self.train.learning_rate,
                                                   weight_decay=self.train.weight_decay, betas=(0.9, 0.95))
        self.checkpoints = Checkpointer(runtime, self.run_uri)
        self.state, resumed = self.checkpoints.resume(model, self.optimizer, self.shard_rows)
        if self.checkpoints.resumed:
            self._say(f"resumed from step {self.state.step} (epoch {self.state.epoch}; "
                      f"{len(self.state.position.remaining_shards(self.shard_rows))} of "
                      f"{len(self.shard_rows)} shards left in this epoch)")
        self.cursor = DataCursor(self.state, resumed, self.shard_rows)
        self.epoch_batches = self._read_ahead()
        self.progress = Progress(FlopsModel(model), peak_flops(self.device, cpus, self.train.peak_tflops),
                                 self.world)
        self.model = runtime.prepare_model(model)
        schedule = LRSchedule(self.optimizer, self.train.learning_rate, self.total_steps, self.train.warmup_steps,
                              self.train.min_lr_ratio, self.train.max_train_minutes)
        self.step = TrainStep(self.model, self.optimizer, training_loss_fn(self.train, self.device), schedule,
                              self.model_cfg.media, self.device, self.train.grad_accum_steps, self.train.grad_clip)
        self.metrics = runtime.metrics()
        self.counts = Counts()
        self.last_checkpoint_step = self.state.step if self.checkpoints.resumed else -1

    def _say(self, message: str) -> None:
        if self.rank == 0:
            say(message)

    def _read_ahead(self):
        """This attempt's training epochs, each read ahead while the one before it ends, so the
        pipeline's start-up at an epoch start overlaps training (``loader.EpochBatches``)."""
        from multimodal.data.loader import EpochBatches

        return EpochBatches(lambda epoch: self.runtime.dataset(self.cursor.dataset_for(epoch)),
                            range(self.cursor.first_epoch, self.train.num_epochs), self.train.batch_size,
                            self.model_cfg.media, self.device)

    def _batches(self, name: str):
        from multimodal.data.loader import iter_training_batches

        return guard_batches(iter_training_batches(self.runtime.dataset(name), self.train.batch_size,
                                                   self.model_cfg.media, device=self.device), self.run_uri)

    # --- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any] | None:
        """Train until the epochs, ``max_steps``, the time budget or early stopping end it."""
        self.model.train()
        self.started = time.monotonic() - self.state.train_seconds
        stop_reason = None
        with self.epoch_batches:  # stops reading ahead when training ends, however it ends
            for epoch in range(self.state.epoch, self.train.num_epochs):
                stop_reason = self._train_epoch(epoch)
                if stop_reason:
                    break
                self._sync_counts()
                self.cursor.end_epoch(self.state, epoch)
            else:
                stop_reason = "num_epochs"
        if self.last_checkpoint_step != self.state.step:
            self._checkpoint(self._validate())
        return self._finish(stop_reason)

    def _train_epoch(self, epoch: int) -> str | None:
        """One epoch (or what is left of it); the stop reason when the run ends inside it."""
        self.cursor.start_epoch(self.state, epoch)
        step_started = time.monotonic()
        for batch, stats in guard_batches(self.epoch_batches.epoch(epoch), self.run_uri):
            if len(self.progress.epoch_start_waits) < epoch - self.cursor.first_epoch + 1:
                self.progress.epoch_start_waits.append(round(stats.wait_s, 3))
            tokens, due = self.step.micro_step(batch)
            self.counts.add_batch(stats, tokens)
            self.metrics.record_samples(stats.samples, stats.bad)
            self.progress.add_batch(tokens, stats.valid, stats.wait_s, stats.samples)
            if not due:
                continue
            stop_reason = self._optimizer_step(epoch, time.monotonic() - step_started)
            step_started = time.monotonic()
            if stop_reason:
                return stop_reason
        return None

    def _optimizer_step(self, epoch: int, step_seconds: float) -> str | None:
        """Step, log, and validate/checkpoint when due; the stop reason when the run ends here."""
        now = time.monotonic()
        # the time budget uses the workers' mean elapsed time, so every rank agrees on it
        elapsed = (self.comm.sum([now - self.started])[0] / self.world if self.train.max_train_minutes
                   else now - self.started)
        lr = self.step.optimizer_step(self.state.step, elapsed)
        state = self.state
        state.step += 1
        state.last_train_loss = self.step.loss
        if state.first_train_loss is None:
            state.first_train_loss = state.last_train_loss
        self.progress.add_time(time.monotonic() - now + step_seconds)
        state.train_seconds = time.monotonic() - self.started
        if state.step % self.train.log_every_steps == 0:
            self._log(epoch, lr)
        stop_reason = None
        if self.train.max_steps is not None and state.step >= self.train.max_steps:
            stop_reason = "max_steps"
        elif self.train.max_train_minutes and elapsed > 60 * self.train.max_train_minutes:
            stop_reason = "time_budget"
        if state.step % self.train.val_every_steps == 0 or stop_reason:
            val_loss = self._validate()
            self._checkpoint(val_loss)
            patience = self.train.early_stopping.patience
            if stop_reason is None and val_loss is not None and state.validations_without_improvement >= patience:
                stop_reason = "early_stopping"
                if self.train.early_stopping.verbose:
                    self._say(f"early stopping: no val_loss improvement in {patience} validations")
        return stop_reason

    def _log(self, epoch: int, lr: float) -> None:
        from multimodal.metrics import gpu_utilization

        window = self.progress.close_window()
        self.metrics.record_step(step=self.state.step, loss=self.state.last_train_loss, learning_rate=lr,
                                 tokens_per_second=window["tokens_per_s"], data_wait_fraction=window["data_wait"],
                                 gpu_utilization=gpu_utilization())
        self._say(progress_line(self.state.step, self.total_steps, epoch, self.state.last_train_loss, lr, window))

    # --- validation, checkpoints, counts --------------------------------------------------
    def _validate(self) -> float | None:
        if VAL not in self.config["datasets"]:
            return None
        return validation_loss(self.model, self._batches(VAL), self.comm, self.device)

    def _sync_counts(self) -> None:
        """Sum every worker's counts into the run's totals (a collective: every rank joins)."""
        total = self.comm.sum_counts(self.counts)
        total.add_to(self.state, len(self.shard_rows))
        self.cursor.note_rows(self.state.epoch, total.rows_per_shard)
        self.counts = Counts()

    def _checkpoint(self, val_loss: float | None) -> None:
        self._sync_counts()
        self.checkpoints.note_validation(self.state, val_loss, self.model)
        self.checkpoints.save(self.state, self.model, self.optimizer, val_loss,
                              {"tokens_per_second": self.progress.tokens_per_s})
        self.last_checkpoint_step = self.state.step
        if val_loss is not None:
            self.metrics.record_validation(val_loss)

    # --- the end ----------------------------------------------------------------------------
    def _finish(self, stop_reason: str) -> dict[str, Any] | None:
        """Export the best weights (rank 0) and return the run's result."""
        nodes = self.comm.gather(self.runtime.node_id())  # a collective: every rank joins
        if self.rank != 0:
            return None
        weights = self.checkpoints.export_weights(self.state, self.model)
        model_uri = export_model(self.model_cfg, weights, self.job.finetune, self.config["tokenizer_uri"],
                                 self.run_uri)
        return self._result(stop_reason, model_uri, nodes)

    def _result(self, stop_reason: str, model_uri: str, nodes: list[str]) -> dict[str, Any]:
        state = self.state
        elapsed = max(state.train_seconds, 1e-9)
        return {
            "steps": state.step, "epochs_completed": state.epoch, "stop_reason": stop_reason,
            "first_train_loss": state.first_train_loss, "last_train_loss": state.last_train_loss,
            "best_val_loss": state.best_val_loss, "best_step": state.best_step,
            "samples_by_modality": state.samples_by_modality,
            "bad_samples_by_modality": state.bad_samples_by_modality,
            "dropped_samples": state.dropped_samples, "tokens_seen": state.tokens_seen,
            "tokens_per_second": state.tokens_seen / elapsed,
            "throughput_windows": self.progress.windows,
            "mfu": self.progress.attempt_mfu(),  # model FLOPs/s over the peak (training/mfu.py)
            "peak_tflops": None if self.progress.peak is None else self.progress.peak / 1e12,
            "train_seconds": state.train_seconds,
            # time the loop waited for a batch / training time (mean over workers, all attempts)
            "data_wait_fraction": round(state.data_wait_seconds / elapsed, 4),
            "epoch_start_wait_seconds": self.progress.epoch_start_waits,  # rank 0, this attempt
            "resumed": bool(state.resumed_from_steps), "resumed_from_steps": state.resumed_from_steps,
            "resume_shards": self.cursor.report(),
            "model_uri": model_uri, "world_size": self.world, "nodes": sorted(set(nodes)),
        }

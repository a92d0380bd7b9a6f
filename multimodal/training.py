"""The per-worker training loop: what every Ray Train worker runs.

It is a plain PyTorch loop that talks to Ray Train only through ``ray.train`` calls: with
``ScalingConfig(num_workers=0)`` (Ray Train's local mode) it runs in one process, which is how the
benchmarks and single-GPU runs use it. Read it top to bottom: settings, model, optimizer,
resume, data, loop (accumulate, clip, step, log), validate, checkpoint, export.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any, Iterator

import torch
import torch.distributed as dist

from multimodal import fs
from multimodal.batch import BOS_ID, EOS_ID, MODALITIES, empty_batch
from multimodal.checkpoint import (DataPosition, TrainerState, checkpoint_dir_name, close_finished_epoch,
                                   load_checkpoint, load_checkpoint_weights, save_checkpoint, save_rng_state,
                                   write_checkpoint_index)
from multimodal.config import ModelConfig
from multimodal.finetune import merged_export, prepare_finetune, trainable_summary
from multimodal.job_config import JobConfig
from multimodal.metrics import ALL_MODALITIES, TrainMetrics, gpu_utilization
from multimodal.run_stop import guard_batches, stopped_result

TRAIN, TRAIN_RESUME, VAL = "train", "train_resume", "val"


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float,
              time_fraction: float = 0.0) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_ratio``.

    Cosine progress is the larger of the steps done and ``time_fraction`` (time used of a time
    budget), so a run stopped by its time budget still ends on a decayed learning rate.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = max((step - warmup_steps) / max(1, total_steps - warmup_steps), time_fraction)
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Distributed:
    """Collectives that degrade to no-ops in a single process."""

    def __init__(self, device: torch.device):
        self.device = device
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def sum(self, values: list[float] | list[int]) -> list[float]:
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def gather(self, value: str) -> list[str]:
        """Every worker's ``value``, in rank order."""
        if not self.active:
            return [value]
        values: list[str] = [""] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return values


class _Counts:
    """Per-worker counters since the last sync; summed over workers into the TrainerState."""

    def __init__(self, num_shards: int):
        self.num_shards = num_shards
        self.reset()

    def reset(self) -> None:
        self.rows_per_shard = [0] * self.num_shards
        self.samples = {m: 0 for m in ALL_MODALITIES}
        self.bad = {m: 0 for m in MODALITIES}
        self.dropped = 0
        self.tokens = 0
        self.wait_s = 0.0  # seconds this worker waited for batches

    def add(self, stats, tokens: int) -> None:
        for shard, rows in stats.rows_per_shard.items():
            if 0 <= shard < self.num_shards:
                self.rows_per_shard[shard] += rows
        for modality, count in stats.samples.items():
            self.samples[modality] = self.samples.get(modality, 0) + count
        for modality, count in stats.bad.items():
            self.bad[modality] = self.bad.get(modality, 0) + count
        self.dropped += stats.dropped
        self.tokens += tokens
        self.wait_s += stats.wait_s

    def flush_into(self, state: TrainerState, comm: _Distributed) -> list[int]:
        """Add every worker's counts to ``state``; returns the summed rows per shard."""
        samples_keys, bad_keys = sorted(self.samples), sorted(self.bad)
        flat = (self.rows_per_shard + [self.samples[k] for k in samples_keys]
                + [self.bad[k] for k in bad_keys] + [self.dropped, self.tokens])
        *totals, waited = comm.sum(flat + [self.wait_s])
        summed = [int(round(v)) for v in totals]
        state.data_wait_seconds += waited / (dist.get_world_size() if comm.active else 1)  # mean worker
        n = self.num_shards
        rows = summed[:n]
        for i, key in enumerate(samples_keys):
            state.samples_by_modality[key] = state.samples_by_modality.get(key, 0) + summed[n + i]
        offset = n + len(samples_keys)
        for i, key in enumerate(bad_keys):
            state.bad_samples_by_modality[key] = state.bad_samples_by_modality.get(key, 0) + summed[offset + i]
        state.dropped_samples += summed[-2]
        state.tokens_seen += summed[-1]
        for shard, count in enumerate(rows):
            if count:
                state.position.rows_per_shard[shard] = state.position.rows_per_shard.get(shard, 0) + count
        self.reset()
        return rows


def _say(message: str) -> None:
    """One line to the job log. Ray Train patches ``print`` to tee into its logger, which shows
    every line twice in ``ray job logs``; writing to stdout directly shows it once."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _placeholder_batch(cfg: ModelConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """One text-only ``<bos> <eos>`` sample: a finite loss to multiply by zero, so a worker whose
    batch lost every row still joins the collective backward pass."""
    batch = {k: torch.from_numpy(v).to(device) for k, v in empty_batch(cfg.media, 1).items()}
    batch["input_ids"][0, :2] = torch.tensor([BOS_ID, EOS_ID])
    batch["attention_mask"][0, :2] = 1
    batch["labels"][0, 1] = EOS_ID
    return batch


def _text_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != -100).sum().item())


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Train on this worker's share of the data; rank 0 returns the run's result dict."""
    import ray.train
    import ray.train.torch

    from multimodal.data.loader import EpochBatches, iter_training_batches
    from multimodal.data.tokenizer import load_tokenizer
    from multimodal.model import MultimodalSLM

    # --- settings -------------------------------------------------------------------------
    job = JobConfig.model_validate(loop_config["job"])
    model_cfg = ModelConfig.model_validate(loop_config["model"])
    run_uri: str = loop_config["run_uri"]
    shard_rows: list[int] = loop_config["shard_rows"]
    total_steps: int = loop_config["total_steps"]
    train = job.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    comm = _Distributed(device)
    stopped = stopped_result(run_uri)  # an earlier attempt met broken data: retrying cannot help
    if stopped is not None:
        return stopped if rank == 0 else None
    torch.manual_seed(train.seed + rank)
    # one intra-op thread per reserved CPU: oversubscribed threads make small models several
    # times slower (measured in jobs/bench_model.py), and Ray Data decodes on the same cores
    torch.set_num_threads(max(1, int(job.run.cpus_per_worker or 1)))
    shards = {name: ray.train.get_dataset_shard(name) for name in (TRAIN_RESUME, TRAIN)}

    def read_ahead(first: int) -> EpochBatches:  # epoch `first` reads TRAIN_RESUME (see batches_for_epoch)
        return EpochBatches(lambda e: shards[TRAIN_RESUME if e == first else TRAIN], range(first, train.num_epochs),
                            train.batch_size, model_cfg.media, device)
    # a fresh start reads epoch 0 while the model is built; a resumed one once its epoch is known
    early_batches = read_ahead(0) if ray.train.get_checkpoint() is None else None

    # --- model and optimizer --------------------------------------------------------------
    model = MultimodalSLM(model_cfg)
    if job.finetune.init_from:  # base weights, frozen part, LoRA (multimodal/finetune.py)
        model = prepare_finetune(model, job.finetune)
        if rank == 0:
            _say(f"fine-tuning from {job.finetune.init_from}: {trainable_summary(model)}")
    model = model.to(device)
    optimizer = model.configure_optimizer(lr=train.learning_rate, weight_decay=train.weight_decay,
                                          betas=(0.9, 0.95))
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    from multimodal.compress.distill import training_loss_fn  # plain, distillation, early exit

    compute_loss = training_loss_fn(train, device)

    def set_learning_rate(step: int, elapsed_seconds: float) -> float:
        """``elapsed`` is averaged over workers, so every rank sets the same rate."""
        budget = 60 * train.max_train_minutes if train.max_train_minutes else None
        factor = lr_factor(step, total_steps, train.warmup_steps, train.min_lr_ratio,
                           elapsed_seconds / budget if budget else 0.0)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        return base_lrs[0] * factor

    # --- resume ---------------------------------------------------------------------------
    state = TrainerState()
    checkpoint = ray.train.get_checkpoint()
    resumed_position: DataPosition | None = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, model, optimizer, rank=rank)
        state.resumed_from_steps.append(state.step)
        close_finished_epoch(state, shard_rows)  # every shard read: go on with the next epoch
        if not state.position.is_fresh():
            resumed_position = DataPosition(state.position.epoch, dict(state.position.rows_per_shard))
        if rank == 0:
            _say(f"resumed from step {state.step} (epoch {state.epoch}; "
                  f"{len(state.position.remaining_shards(shard_rows))} of {len(shard_rows)} shards "
                  f"left in this epoch)")
    # the best weights seen by this attempt; before that, the best checkpoint's (state.best_step)
    best_weights: dict[str, torch.Tensor] | None = None
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True} if world > 1 else None)
    use_autocast = device.type == "cuda"
    metrics = TrainMetrics(context.get_experiment_name(), rank)
    counts = _Counts(len(shard_rows))
    shards_read_after_resume: set[int] = set()

    # --- validation and checkpoints -------------------------------------------------------
    def validate() -> float | None:
        if VAL not in loop_config["datasets"]:
            return None
        model.eval()
        loss_sum, token_sum = 0.0, 0
        with torch.no_grad():
            for batch, _ in guard_batches(iter_training_batches(ray.train.get_dataset_shard(VAL), train.batch_size,
                                                                model_cfg.media, device=device), run_uri):
                if batch["input_ids"].shape[0] == 0:
                    continue
                with torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else nullcontext():
                    loss = model(batch).loss
                tokens = _text_tokens(batch)
                loss_sum += float(loss) * tokens
                token_sum += tokens
        model.train()
        loss_sum, token_sum = comm.sum([loss_sum, token_sum])
        return loss_sum / token_sum if token_sum else None

    def flush_counts() -> None:
        """Sum every worker's counts into ``state``; remember which shards the resumed epoch read."""
        rows = counts.flush_into(state, comm)
        if resumed_position is not None and state.epoch == resumed_position.epoch:
            shards_read_after_resume.update(i for i, r in enumerate(rows) if r)

    def checkpoint_now(val_loss: float | None, extra: dict[str, Any]) -> None:
        nonlocal best_weights
        flush_counts()
        improved = val_loss is not None and (state.best_val_loss is None or val_loss < state.best_val_loss)
        if improved:
            state.best_val_loss = val_loss
            state.validations_without_improvement = 0
            state.best_step = state.step
            best_weights = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
        elif val_loss is not None:
            state.validations_without_improvement += 1
        report = {"step": state.step, "epoch": state.epoch, "train_loss": state.last_train_loss,
                  "val_loss": val_loss if val_loss is not None else float("nan"),
                  "data_position": json.dumps(state.position.to_dict()), **extra}
        with tempfile.TemporaryDirectory() as directory:
            save_rng_state(directory, rank)  # every rank's own RNG; Ray merges the folders
            if rank == 0:
                save_checkpoint(directory, _unwrap(model), optimizer, state)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=checkpoint_dir_name(state.step))
            if rank == 0:
                write_checkpoint_index(run_uri, state.step, report)  # uploaded: publish it
        if val_loss is not None:
            metrics.record_validation(val_loss)

    # --- the loop -------------------------------------------------------------------------
    model.train()
    started = time.monotonic() - state.train_seconds
    stop_reason = None
    last_checkpoint_step = state.step if checkpoint is not None else -1
    window_tokens, window_seconds, window_wait, window_samples = 0, 0.0, 0.0, 0
    tokens_per_s = 0.0
    windows: list[dict[str, float]] = []  # tokens/s and data wait of each logging window
    epoch_start_waits: list[float] = []  # this worker's wait for each epoch's first batch (pipeline start)
    accumulated = 0
    last_batch: dict[str, torch.Tensor] | None = None
    ddp = hasattr(model, "no_sync")

    first_epoch = state.epoch
    # The first epoch of every attempt reads TRAIN_RESUME: the driver's dataset factory builds
    # it from the shards the latest checkpoint had not finished (all shards on a fresh start).
    # EpochBatches reads the next epoch ahead, so its pipeline start-up overlaps this one's end.
    epoch_batches = early_batches or read_ahead(first_epoch)

    def batches_for_epoch(epoch: int) -> Iterator:
        if epoch != first_epoch or resumed_position is None:
            state.position = DataPosition(epoch=epoch)
        return guard_batches(epoch_batches.epoch(epoch), run_uri)

    for epoch in range(state.epoch, train.num_epochs):
        state.epoch = epoch
        step_started = time.monotonic()
        for batch, stats in batches_for_epoch(epoch):
            if len(epoch_start_waits) < epoch - first_epoch + 1:
                epoch_start_waits.append(round(stats.wait_s, 3))
            window_wait += stats.wait_s
            scale = 1.0
            if batch["input_ids"].shape[0] == 0:  # every row was undecodable: keep DDP in step
                batch, scale = (last_batch if last_batch is not None
                                else _placeholder_batch(model_cfg, device)), 0.0
            last_batch = batch
            tokens = _text_tokens(batch) if scale else 0  # a zero-weighted placeholder trains nothing
            counts.add(stats, tokens)
            metrics.record_samples(stats.samples, stats.bad)
            accumulated += 1
            final_micro_step = accumulated == train.grad_accum_steps
            sync = nullcontext() if (final_micro_step or not ddp) else model.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else nullcontext():
                    loss = compute_loss(model, batch)
                (loss * scale / train.grad_accum_steps).backward()
            window_tokens += tokens
            window_samples += batch["input_ids"].shape[0]
            if not final_micro_step:
                continue
            accumulated = 0
            # the time budget uses the workers' mean elapsed time, so every rank agrees on it
            elapsed = (comm.sum([time.monotonic() - started])[0] / world if train.max_train_minutes
                       else time.monotonic() - started)
            lr = set_learning_rate(state.step, elapsed)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.last_train_loss = float(loss)
            if state.first_train_loss is None:
                state.first_train_loss = state.last_train_loss
            now = time.monotonic()
            window_seconds += now - step_started
            step_started = now
            state.train_seconds = now - started

            if state.step % train.log_every_steps == 0:
                tokens_per_s = window_tokens * world / max(window_seconds, 1e-9)
                wait_fraction = window_wait / max(window_seconds, 1e-9)
                windows.append({"tokens_per_s": round(tokens_per_s, 1), "data_wait": round(wait_fraction, 3)})
                metrics.record_step(step=state.step, loss=state.last_train_loss, learning_rate=lr,
                                    tokens_per_second=tokens_per_s, data_wait_fraction=wait_fraction,
                                    gpu_utilization=gpu_utilization())
                if rank == 0:
                    _say(f"step {state.step}/{total_steps} | epoch {epoch} | loss {state.last_train_loss:.4f}"
                          f" | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s"
                          f" | {window_samples * world / max(window_seconds, 1e-9):.1f} samples/s"
                          f" | data wait {100 * wait_fraction:.0f}%")
                window_tokens, window_seconds, window_wait, window_samples = 0, 0.0, 0.0, 0

            if train.max_steps is not None and state.step >= train.max_steps:
                stop_reason = "max_steps"
            elif train.max_train_minutes and elapsed > 60 * train.max_train_minutes:
                stop_reason = "time_budget"
            if state.step % train.val_every_steps == 0 or stop_reason:
                val_loss = validate()
                checkpoint_now(val_loss, {"tokens_per_second": tokens_per_s})
                last_checkpoint_step = state.step
                if (stop_reason is None and val_loss is not None
                        and state.validations_without_improvement >= train.early_stopping.patience):
                    stop_reason = "early_stopping"
                    if rank == 0 and train.early_stopping.verbose:
                        _say(f"early stopping: no val_loss improvement in "
                              f"{train.early_stopping.patience} validations")
            if stop_reason:
                break
        if stop_reason:
            break
        # the epoch is complete: the next one reads every shard again
        flush_counts()
        state.position = DataPosition(epoch=epoch + 1)
        state.epoch = epoch + 1
    else:
        stop_reason = "num_epochs"
    epoch_batches.close()

    if last_checkpoint_step != state.step:
        checkpoint_now(validate(), {"tokens_per_second": tokens_per_s})

    # --- export ---------------------------------------------------------------------------
    import ray

    nodes = comm.gather(ray.get_runtime_context().get_node_id())  # a collective: every rank joins
    if rank != 0:
        return None
    model_uri = fs.join(run_uri, "model")
    if best_weights is None and state.best_step is not None:  # the best came before this attempt
        best_weights = load_checkpoint_weights(run_uri, state.best_step)
    export = merged_export(model_cfg, best_weights if best_weights is not None else _unwrap(model).state_dict(),
                           job.finetune if job.finetune.init_from else None)
    export.save_pretrained(model_uri, tokenizer=load_tokenizer(loop_config["tokenizer_uri"]))
    elapsed = max(state.train_seconds, 1e-9)
    return {
        "steps": state.step,
        "epochs_completed": state.epoch,
        "stop_reason": stop_reason,
        "first_train_loss": state.first_train_loss,
        "last_train_loss": state.last_train_loss,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "samples_by_modality": state.samples_by_modality,
        "bad_samples_by_modality": state.bad_samples_by_modality,
        "dropped_samples": state.dropped_samples,
        "tokens_seen": state.tokens_seen,
        "tokens_per_second": state.tokens_seen / elapsed,
        "throughput_windows": windows,
        "train_seconds": state.train_seconds,
        # time the loop waited for a batch / training time (mean over workers, all attempts)
        "data_wait_fraction": round(state.data_wait_seconds / elapsed, 4),
        "epoch_start_wait_seconds": epoch_start_waits,  # rank 0, this attempt: the gap before each epoch
        "resumed": bool(state.resumed_from_steps),
        "resumed_from_steps": state.resumed_from_steps,
        "resume_shards": None if resumed_position is None else {
            "epoch": resumed_position.epoch,
            "fully_read_at_checkpoint": [i for i, n in enumerate(shard_rows)
                                         if resumed_position.rows_per_shard.get(i, 0) >= n],
            "read_after_resume": sorted(shards_read_after_resume),
        },
        "model_uri": model_uri,
        "world_size": world,
        "nodes": sorted(set(nodes)),
    }

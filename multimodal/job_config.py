"""The training job's one source of truth: a pydantic ``JobConfig``.

Loaded from JSON or YAML (our own layout, or the seed's ``main`` / ``SLM`` / ``SLMOtak`` /
``SLMTrainLoad`` sections, accepted as they are), then overridden by command-line flags.
Every error names the key: ``config error: train.batch_size: Input should be greater than 0``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from multimodal.config import ModelConfig, StrictModel, preset

SEED_SECTIONS = {"main", "SLM", "SLMOtak", "SLMTrainLoad"}
SEED_API_ENDPOINT = "https://API_ENDPOINT"  # the seed template's placeholder: means "not set"


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key."""


class ModelSettings(StrictModel):
    """Which model to train: a preset, with the seed's core settings applied on top."""

    preset: str = "slm-63m"
    hidden_size: int | None = Field(None, ge=8, description="SLMOtak.input_dim")
    num_heads: int | None = Field(None, ge=1)
    num_layers: int | None = Field(None, ge=1)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)

    def resolve(self, vocab_size: int | None = None) -> ModelConfig:
        """The full ``ModelConfig``: the preset, these overrides, and the tokenizer's vocab."""
        cfg = preset(self.preset)
        if self.hidden_size is not None:
            cfg.core.hidden_size = self.hidden_size
        if self.num_heads is not None:
            cfg.core.num_heads = self.num_heads
        if self.num_layers is not None:
            cfg.core.num_layers = self.num_layers
        if self.dropout is not None:
            cfg.core.dropout = self.dropout
        if cfg.core.hidden_size % cfg.core.num_heads:
            raise ConfigError(f"config error: model.num_heads: {cfg.core.num_heads} does not divide "
                              f"hidden_size {cfg.core.hidden_size}")
        if vocab_size is not None:
            cfg.core.vocab_size = vocab_size
        return cfg


class DataSettings(StrictModel):
    train: str | None = Field(None, description="shard prefix (Parquet + _dataset.json, or WebDataset tars)")
    val: str | None = Field(None, description="validation shards; none = no validation")
    tokenizer: str | None = Field(None, description="tokenizer.json to use; none = train one on the data")
    vocab_size: int | None = Field(None, ge=260, description="BPE vocabulary when the tokenizer is trained "
                                   "here (default: the preset's, 32000 for slm-63m)")
    max_consecutive_failures: int = Field(100, ge=1)
    decode_concurrency: int = Field(1, ge=1, description="Ray Data decode actors (the pool's minimum)")
    decode_max_concurrency: int | None = Field(None, ge=1, description="most decode actors; default: as "
                                               "many as the CPUs the trainers leave free (or the CPU nodes) hold")
    decode_cpus: float | None = Field(None, gt=0, description="logical CPUs per decode actor "
                                      "(default: sized to the cluster at preflight)")
    cache_decoded: bool = Field(False, description="decode once and keep the decoded rows in Ray's object "
                                "store for later epochs (small corpora only: ~80 KB per tiny-preset row)")


class EarlyStopping(StrictModel):
    """Stop when ``monitor`` has not improved in ``patience`` validations. The one monitor,
    ``val_loss``, is minimised: ``mode: max`` is refused (it would stop on a loss that is falling)."""

    patience: int = Field(7, ge=1, description="validations without improvement before stopping")
    monitor: Literal["val_loss"] = "val_loss"
    mode: Literal["min", "max"] = "min"
    verbose: bool = False

    @field_validator("mode")
    @classmethod
    def _minimise(cls, mode: str) -> str:
        if mode != "min":
            raise ValueError("max is not supported: the monitor val_loss is minimised; use min")
        return mode


class TrainSettings(StrictModel):
    batch_size: int = Field(32, ge=1, description="per worker, per optimizer micro-step")
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    grad_accum_steps: int = Field(1, ge=1)
    num_epochs: int = Field(100, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_train_minutes: float | None = Field(None, gt=0, description="stop after this much training time")
    val_every_steps: int = Field(100, ge=1, description="validate (and checkpoint) every N steps")
    keep_checkpoints: int = Field(3, ge=1, description="best N by validation loss (plus the latest)")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    seed: int = 0
    log_every_steps: int = Field(10, ge=1)
    peak_tflops: float | None = Field(None, gt=0, description="peak FLOP/s of one worker's device in TFLOP/s, "
                                      "for MFU (default: known GPUs' bf16 peak, or the CPU constant "
                                      "in multimodal/training/mfu.py times the worker's CPUs)")
    # distillation and early exit (multimodal/compress/distill.py, docs/compression.md)
    teacher: str | None = Field(None, description="frozen teacher model (save_pretrained URI)")
    distill_alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft-target KL term")
    distill_temperature: float = Field(2.0, gt=0, description="softmax temperature for distillation")
    early_exit_loss: float = Field(0.0, ge=0, description="weight of the intermediate exits' loss")


class RunSettings(StrictModel):
    name: str = Field("slm-run", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage_path: str = Field("./runs", description="local folder or s3://bucket/prefix")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs per Train worker (default: "
                                          "sized to the cluster at preflight)")
    max_failures: int = Field(3, ge=-1, description="worker-group restarts allowed (-1 = unlimited)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray Train places its workers on nodes")
    scale_timeout_s: float = Field(600.0, gt=0, description="on an autoscaling cluster, how long the "
                                   "preflight waits for the nodes the job needs")


class FinetuneSettings(StrictModel):
    """Start from an exported model (its config and tokenizer); see multimodal/finetune.py."""

    init_from: str | None = Field(None, description="model folder or s3:// prefix from save_pretrained")
    freeze: Literal["encoders", "core", "none"] = "none"
    lora_rank: int | None = Field(None, ge=1, description="LoRA on the core's linear layers, merged at export")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scale numerator (default 2 x rank)")


class JobConfig(StrictModel):
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)

    @model_validator(mode="after")
    def _check(self) -> "JobConfig":
        if self.model.preset not in ("tiny", "slm-63m"):
            raise ValueError(f"model.preset: unknown preset {self.model.preset!r}; use tiny or slm-63m")
        if (self.finetune.freeze != "none" or self.finetune.lora_rank) and not self.finetune.init_from:
            raise ValueError("finetune: --freeze and --lora-rank need --init-from")
        return self


def from_seed(seed: dict[str, Any]) -> dict[str, Any]:
    """Map the seed's sections onto our layout (a plain dict, validated by the caller)."""
    unknown = set(seed) - SEED_SECTIONS
    if unknown:
        raise ConfigError(f"config error: {sorted(unknown)[0]}: unknown key (seed files have "
                          f"{sorted(SEED_SECTIONS)})")
    out: dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    main = dict(seed.get("main", {}))
    for key, target in (("batch_size", "batch_size"), ("learning_rate", "learning_rate"),
                        ("num_epochs", "num_epochs")):
        if key in main:
            out["train"][target] = main.pop(key)
    if "patience" in main:
        out["train"].setdefault("early_stopping", {})["patience"] = main.pop("patience")
    _reject_leftovers("main", main)

    slm = dict(seed.get("SLM", {}))
    if "training_dataset_filename" in slm:
        out["data"]["train"] = slm.pop("training_dataset_filename")
    _check_api_endpoint(slm.pop("api_endpoint", SEED_API_ENDPOINT))
    _reject_leftovers("SLM", slm)

    otak = dict(seed.get("SLMOtak", {}))
    if otak:
        out["model"]["preset"] = "slm-63m"
    if "input_dim" in otak:
        out["model"]["hidden_size"] = otak.pop("input_dim")
    output_dim = otak.pop("output_dim", None)
    if output_dim is not None and output_dim != out["model"].get("hidden_size", output_dim):
        raise ConfigError("config error: SLMOtak.output_dim: must equal input_dim (the core's width)")
    for key in ("num_heads", "num_layers", "dropout"):
        if key in otak:
            out["model"][key] = otak.pop(key)
    _reject_leftovers("SLMOtak", otak)

    load = dict(seed.get("SLMTrainLoad", {}))
    stopping = dict(load.pop("early_stopping", {}))
    _reject_leftovers("SLMTrainLoad", load)
    mapping = {"early_stopping_patience": "patience", "early_stopping_verbose": "verbose",
               "early_stopping_monitor": "monitor", "early_stopping_mode": "mode"}
    for key in list(stopping):
        if key not in mapping:
            raise ConfigError(f"config error: SLMTrainLoad.early_stopping.{key}: unknown key")
        out["train"].setdefault("early_stopping", {})[mapping[key]] = stopping.pop(key)
    return out


def _check_api_endpoint(endpoint: Any) -> None:
    """The seed's ``SLM.api_endpoint`` names where a model is served; training serves nothing.
    The seed template's placeholder is accepted (the seed file trains as it is); a real endpoint
    is refused, so that nobody expects the job to publish there."""
    if endpoint != SEED_API_ENDPOINT:
        raise ConfigError(f"config error: SLM.api_endpoint: {endpoint!r} is not used by training; remove it "
                          "and serve the exported model with slm-hub (docs/hub.md)")


def _reject_leftovers(section: str, rest: dict[str, Any]) -> None:
    if rest:
        raise ConfigError(f"config error: {section}.{sorted(rest)[0]}: unknown key")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML file into our layout (seed files are recognised by their sections)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: {path}: no such file")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config error: {path}: not valid {path.suffix.lstrip('.') or 'YAML'}: "
                          f"{str(exc).splitlines()[0]}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: {path}: the top level must be a mapping")
    if set(raw) & SEED_SECTIONS:
        return from_seed(raw)
    return raw


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(file_values: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None) -> JobConfig:
    """Validate file values + flag overrides into a ``JobConfig``; errors become one line."""
    values = deep_merge(file_values or {}, overrides or {})
    try:
        return JobConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "config"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"config error: {key}: {message}") from None


def dotted_override(assignment: str) -> dict[str, Any]:
    """``train.learning_rate=3e-4`` → ``{"train": {"learning_rate": 3e-4}}`` (value parsed as JSON, else YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"config error: --set {assignment!r}: use KEY=VALUE, e.g. train.batch_size=16")
    try:  # JSON first: YAML 1.1 reads "3e-4" as a string
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value

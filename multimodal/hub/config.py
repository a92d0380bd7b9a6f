"""The hub's YAML config: experts (name, model URI, resources), routing, and the HTTP server.

At its smallest::

    experts:
      - name: shapes
        model: s3://bucket/runs/shapes/model
      - name: notes
        model: ./runs/notes/model

Relative model paths are resolved against the config file's folder. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from multimodal import fs
from multimodal.config import StrictModel

APP_NAME = "slm-hub"


class HubConfigError(ValueError):
    """A bad hub config: the message is one line naming the key."""


class Autoscaling(StrictModel):
    """Serve's autoscaling for one deployment (replaces a fixed replica count)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)


class ExpertConfig(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str = Field(min_length=1, description="folder or s3:// prefix written by save_pretrained")
    validation: str | None = Field(None, description="shards to fit the confidence temperature on "
                                   "(when the model folder has no calibration.json yet)")
    replicas: int = Field(1, ge=1)
    autoscaling: Autoscaling | None = None
    num_cpus: float = Field(1.0, gt=0, description="CPUs per replica (fractions allowed)")
    num_gpus: float = Field(0.0, ge=0)
    modalities: list[Literal["image", "audio", "video"]] | None = Field(
        None, description="media it answers (default: measured on its validation split)")


class RoutingConfig(StrictModel):
    prefilter: Literal["modalities", "none"] = Field(
        "modalities", description="ask only the experts competent on the request's media "
        "(none: broadcast every request to every expert)")
    threshold: float = Field(0.3, ge=0, le=1, description="below this best confidence: no answer")
    score_tokens: int = Field(3, ge=0, description="when several experts are asked, each scores "
                              "only its first N tokens and the winner alone generates the answer "
                              "(0: every asked expert generates the whole answer)")
    expert_timeout_s: float = Field(20.0, gt=0, description="an expert slower than this counts as failed")
    max_batch_size: int = Field(8, ge=1, description="requests one replica decodes together (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="how long a lone request waits for "
                                        "company (0: batch what queued while the last batch ran)")
    probe_interval_s: float = Field(1.0, gt=0, description="how often a down expert is pinged")
    health_check_period_s: float = Field(2.0, gt=0, description="Serve's replica health check "
                                         "period for the experts (how soon a dead replica is replaced)")


class PoolConfig(StrictModel):
    """All experts in one multiplexed deployment (for more experts than replicas should hold)."""

    replicas: int = Field(1, ge=1)
    models_per_replica: int = Field(2, ge=1)
    num_cpus: float = Field(1.0, gt=0)


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_new_tokens: int = Field(64, ge=1, description="the most a request may ask for")
    api_key_env: str | None = Field(None, description="name of an environment variable holding the "
                                    "API key; when set, requests need 'X-API-Key: <key>'")
    ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(0.5, gt=0)


class HubConfig(StrictModel):
    experts: list[ExpertConfig] = Field(min_length=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    pool: PoolConfig | None = Field(None, description="multiplex the experts over one deployment")
    server: ServerConfig = Field(default_factory=ServerConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> "HubConfig":
        names = [e.name for e in self.experts]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ValueError(f"experts: the name {duplicate!r} is used twice")
        return self


def _resolve(uri: str, base: Path) -> str:
    if fs.is_s3(uri) or Path(uri).is_absolute():
        return uri
    return str((base / uri).resolve())


def parse_hub_config(values: dict[str, Any], base_dir: str | Path = ".") -> HubConfig:
    """Validate a mapping into a ``HubConfig``; relative paths are taken from ``base_dir``."""
    try:
        config = HubConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "config"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise HubConfigError(f"hub config error: {key}: {message}") from None
    base = Path(base_dir)
    for expert in config.experts:
        expert.model = _resolve(expert.model, base)
        if expert.validation:
            expert.validation = _resolve(expert.validation, base)
    return config


def load_hub_config(path: str | Path) -> HubConfig:
    """Read and validate the YAML (or JSON) file at ``path`` (a local path or an ``s3://`` URI)."""
    path = str(path)
    if fs.is_s3(path):
        if not fs.exists(path):
            raise HubConfigError(f"hub config error: {path}: no such object")
        text, base = fs.read_bytes(path).decode(), Path(".")
    else:
        if not Path(path).is_file():
            raise HubConfigError(f"hub config error: {path}: no such file")
        text, base = Path(path).read_text(), Path(path).parent
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HubConfigError(f"hub config error: {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise HubConfigError(f"hub config error: {path}: the top level must be a mapping with 'experts'")
    return parse_hub_config(raw, base)

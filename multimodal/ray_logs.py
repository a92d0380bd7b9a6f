"""Quiet jobs: Ray's own detail stays in Ray's log files, the job log shows the project's lines.

A job runs quietly when its environment has ``SLM_QUIET_RAY=1``; ``quiet_job_env()`` gives that
and Ray's own logging settings for the job's runtime env (``make demo`` submits with them,
``python -m jobs.demo --verbose`` without). Nothing is grepped out of the output: each source is
turned down where it is configured.

* the driver: ``ray.init(logging_level=WARNING, logging_config=LoggingConfig(log_level=WARNING))``
  (``ray_init_kwargs``), which also sets the level of every worker of the job;
* Ray Train's controller and workers: ``RunConfig(logging_config=...)`` (``train_logging_config``);
* Ray Data: ``DataContext.print_on_execution_start`` off (``quiet_data_context``) and its
  console handler at ERROR (``RAY_DATA_LOGGING_CONFIG`` = ``jobs/configs/ray-data-logging.yaml``,
  relative to the job's working dir, which is every job worker's cwd);
* three lines of Ray's that no user can act on and no setting reaches, dropped by Ray's own
  driver-side log filter ``RAY_DEDUP_LOGS_SKIP_REGEX``: the core worker's error "constructor
  arguments in the object store" for every Ray Data actor pool (Ray Data ``ray.put``s its own map
  transformer and DataContext for its actors: ray-project/ray#57733), the raylet's warning "worker
  processes have been started" when logical CPUs are overcommitted, as the demo does on purpose,
  and Ray Train's "Reporting training result" (logged through a logger named after its file, so
  Train's log level misses it);
* torch's C++ warnings (``TORCH_CPP_LOG_LEVEL``) and Ray's deprecation warnings about its own
  internal calls (``PYTHONWARNINGS``).

Everything still goes to the session's log files (``ray-data.log``, ``worker-*.err``, the Train
logs under the Ray temp dir), which the dashboard shows.
"""

from __future__ import annotations

import logging
import os
from typing import Any

QUIET_ENV = "SLM_QUIET_RAY"
RAY_DATA_LOGGING_CONFIG = "jobs/configs/ray-data-logging.yaml"
SKIPPED_RAY_LINES = (
    "has constructor arguments in the object store",  # ray-project/ray#57733, every Ray Data actor pool
    "PYTHON worker processes have been started",  # raylet, overcommitted logical CPUs
    # Ray Train 2.60 logs each report at INFO through a logger named after its source file
    # (train/v2/_internal/execution/context.py), which RunConfig's log level does not reach
    "Reporting training result",
)


def quiet_job_env() -> dict[str, str]:
    """Environment variables for a job's runtime env that make it quiet (see the module doc)."""
    return {
        QUIET_ENV: "1",
        "RAY_DATA_LOGGING_CONFIG": RAY_DATA_LOGGING_CONFIG,
        "RAY_DEDUP_LOGS_SKIP_REGEX": "|".join(SKIPPED_RAY_LINES),
        "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
        "TORCH_CPP_LOG_LEVEL": "ERROR",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }


def is_quiet() -> bool:
    """True inside a job submitted with ``quiet_job_env()``."""
    return os.environ.get(QUIET_ENV) == "1"


def ray_init_kwargs() -> dict[str, Any]:
    """Extra ``ray.init`` arguments of a quiet job (none otherwise)."""
    if not is_quiet():
        return {}
    import ray

    return {"logging_level": logging.WARNING,
            "logging_config": ray.LoggingConfig(encoding="TEXT", log_level="WARNING")}


def train_logging_config():
    """``RunConfig(logging_config=...)`` of a quiet job; None keeps Ray Train's default (INFO)."""
    if not is_quiet():
        return None
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="WARNING")


def quiet_data_context(context) -> None:
    """No execution-plan lines from Ray Data in a quiet job (call where datasets are built)."""
    if is_quiet():
        context.print_on_execution_start = False

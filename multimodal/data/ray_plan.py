"""Ray Data plumbing for ``pipeline.build_dataset``: compute strategies (decode tasks or an
actor pool), each decoder's CPUs, the read-unit items, and ``read_parquet``/``read_webdataset``
tasks."""

from __future__ import annotations

import os
from collections.abc import Sequence

from multimodal import fs


def task_runtime_env(s3: bool) -> dict | None:
    """The S3 endpoint and region for the read and decode tasks, or None when the job's runtime
    env already carries them: the tasks then run in the job's own (prestarted, reusable) worker
    processes, where another runtime env would start fresh ones, seconds each."""
    import ray

    wanted = fs.aws_public_env_vars() if s3 else {}
    job_env = ((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}) if ray.is_initialized() else {}
    if all(job_env.get(k) == v for k, v in wanted.items()):
        return None
    return {"env_vars": wanted}


def decode_cpus(num_cpus: float, concurrency: int | tuple[int, int]) -> float:
    """``num_cpus`` per decode actor, lowered when the pool's minimum would take every CPU of the
    cluster (that leaves the file-listing and read tasks unschedulable and hangs the pipeline;
    a range grows only into CPUs that are free)."""
    import ray

    if not ray.is_initialized():
        return num_cpus
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
    actors = concurrency[0] if isinstance(concurrency, tuple) else concurrency
    reserve = 1.0  # Ray Data's ListFiles step asks for one whole CPU
    if cluster_cpus and actors * num_cpus > cluster_cpus - reserve:
        return max((cluster_cpus - reserve) / actors, 0.01)
    return num_cpus


def compute(concurrency: int | tuple[int, int], actors: bool = True):
    """Ray Data's compute strategy: an actor pool of ``concurrency`` (a ``(min, max)`` range
    autoscales), or tasks, at most ``max(concurrency)`` at once."""
    import ray

    if not actors:
        return ray.data.TaskPoolStrategy(size=max(1, int(max(concurrency) if isinstance(concurrency, tuple)
                                                         else concurrency)))
    if isinstance(concurrency, tuple):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    return ray.data.ActorPoolStrategy(size=concurrency)


def unit_items(units: list[dict], max_blocks: int):
    """One block (= one task) per read unit, so the decoders share even a small dataset; capped
    (``max_blocks``) so a huge dataset does not become hundreds of thousands of tiny objects."""
    import ray

    return ray.data.from_items(units, override_num_blocks=min(len(units), max_blocks))


def with_bin_bytes(runtime_env: dict | None, read_bin_bytes: int) -> dict:
    # Ray packs up to 128 MiB of Parquet into one read task, so a small dataset became one block
    # that only one decode actor could work on; smaller bins spread the decode over all actors
    # (measured in jobs/bench_data.py: 236-400 -> 868 images/s with 2 actors).
    bin_bytes = str(int(read_bin_bytes))
    os.environ.setdefault("RAY_DATA_PARQUET_BIN_PACKING_BYTES", bin_bytes)
    runtime_env = runtime_env or {}
    return {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}),
                                        "RAY_DATA_PARQUET_BIN_PACKING_BYTES": bin_bytes}}


def read_tasks(kind: str, paths: list[str], columns: Sequence[str], runtime_env: dict | None,
               override_num_blocks: int | None, read_num_cpus: float, read_bin_bytes: int):
    """``read_parquet`` / ``read_webdataset`` tasks over ``paths`` (encoded rows, not decoded)."""
    import ray

    filesystem, _ = fs.filesystem_for(paths[0])
    read_paths = [fs.filesystem_for(p)[1] for p in paths]
    remote = {"runtime_env": with_bin_bytes(runtime_env, read_bin_bytes), "num_cpus": read_num_cpus,
              "override_num_blocks": override_num_blocks}
    if kind == "parquet":
        dataset = ray.data.read_parquet(read_paths, filesystem=filesystem, include_paths=True, **remote)
        return dataset.select_columns([*columns, "path"])  # pushed down into the read
    return ray.data.read_webdataset(read_paths, filesystem=filesystem, decoder=None, **remote)


__all__ = ["task_runtime_env", "compute", "decode_cpus", "unit_items", "with_bin_bytes", "read_tasks"]

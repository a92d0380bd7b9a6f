"""What the cluster can hold, now and once the autoscaler has added nodes; the job's resource plan.

The preflight asks three questions before any training starts:

1. *What could this cluster ever provide?* A fixed-size cluster provides what is up now
   (``ray.cluster_resources()``). An autoscaling cluster provides its node types up to their
   maximum counts, read from the autoscaler's own view: the cluster config that autoscaler v2
   publishes in the GCS (KubeRay, Anyscale, ``RAY_enable_autoscaler_v2=1``), or, for the v1
   autoscaler (``ray up`` on AWS, ``slm-cluster up --autoscale-nodes``), the config file its
   monitor process was started with.
2. *Does the job fit?* The job's bundles (one per Train worker, one per decode actor) are packed
   first-fit-decreasing onto the nodes that are up and the nodes the node types could add. A
   bundle that no node type can hold, or a total beyond every maximum, fails at once.
3. *How many nodes must start?* Those bundles go to ``ray.autoscaler.sdk.request_resources``
   and the preflight waits, with one progress line, until the nodes are up or ``--scale-timeout``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Resources = dict[str, float]
# resources that describe a node but are not asked for by bundles
_IGNORED = ("memory", "object_store_memory")


@dataclass
class NodeType:
    """One kind of node the autoscaler may start: resources per node and the most it will run."""

    name: str
    resources: Resources
    max_count: int  # -1: no limit

    def holds(self, bundle: Resources) -> bool:
        return all(self.resources.get(k, 0.0) >= v for k, v in bundle.items() if v > 0)


@dataclass
class Capacity:
    """The cluster as the preflight sees it."""

    autoscaling: bool
    source: str
    nodes: list[Resources]  # total resources of each alive node
    node_types: list[NodeType] | None = None  # None: autoscales, but the limits are unknown

    def total(self) -> Resources:
        out: Resources = {}
        for node in self.nodes:
            for key, value in node.items():
                out[key] = out.get(key, 0.0) + value
        return out


@dataclass
class ResourcePlan:
    """The job's bundles and where they go."""

    worker: Resources
    num_workers: int
    decoder: Resources
    num_decoders: int
    new_nodes: dict[str, int] = field(default_factory=dict)  # node type -> nodes to start

    def bundles(self) -> list[Resources]:
        return [dict(self.worker)] * self.num_workers + [dict(self.decoder)] * self.num_decoders


class CapacityError(RuntimeError):
    """The job can never fit this cluster, or the autoscaler did not deliver in time."""


# --- reading the cluster -----------------------------------------------------------------------
def _node_resources(raw: dict[str, Any]) -> Resources:
    return {k: float(v) for k, v in raw.items()
            if k not in _IGNORED and not k.startswith("node:") and "_group_" not in k}


def alive_nodes() -> list[Resources]:
    import ray

    return [_node_resources(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _types_from_gcs() -> list[NodeType] | None:
    """Node groups of the cluster config autoscaler v2 publishes in the GCS (None when absent)."""
    from ray._private.state import state

    try:
        config = state.get_cluster_config()
    except Exception:  # an older GCS without the key
        return None
    if config is None or not config.node_group_configs:
        return None
    return [NodeType(group.name, _node_resources(dict(group.resources)), int(group.max_count))
            for group in config.node_group_configs]


def _autoscaler_v1_running() -> bool:
    """The v1 monitor reports node types; on a fixed-size cluster its read-only provider names
    each node's type ``node_<node id>``, while an autoscaling config names real types."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return False
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    try:
        report = json.loads(raw).get("autoscaler_report") if raw else None
    except ValueError:
        return False
    mapping = (report or {}).get("node_type_mapping") or {}
    return any(node_type != f"node_{node_id}" for node_id, node_type in mapping.items())


def monitor_config_path(gcs_address: str, proc: Path = Path("/proc")) -> Path | None:
    """The ``--autoscaling-config`` of this cluster's v1 monitor, found among this machine's
    processes (a job's driver runs on the head node, where the monitor runs)."""
    port = gcs_address.rsplit(":", 1)[-1]
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("autoscaler/_private/monitor.py") for a in args):
            continue
        if not any(a.startswith("--gcs-address=") and a.rsplit(":", 1)[-1] == port for a in args):
            continue
        for arg in args:
            if arg.startswith("--autoscaling-config="):
                return Path(arg.split("=", 1)[1]).expanduser()
    return None


def types_from_launcher_config(config: dict[str, Any]) -> list[NodeType]:
    """Worker node types of a cluster-launcher config (the head type is counted as a live node)."""
    head = config.get("head_node_type")
    cap = int(config.get("max_workers", -1))
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        count = int(spec.get("max_workers", cap))
        types.append(NodeType(name, _node_resources(spec.get("resources") or {}),
                              min(count, cap) if cap >= 0 else count))
    return types


def discover() -> Capacity:
    """The connected cluster's capacity (needs ``ray.init`` first)."""
    import ray
    import yaml

    nodes = alive_nodes()
    types = _types_from_gcs()
    if types is not None:
        return Capacity(True, "GCS cluster config (autoscaler v2)", nodes, types)
    path = monitor_config_path(ray.get_runtime_context().gcs_address)
    if path is not None and path.exists():
        return Capacity(True, f"autoscaler v1 config {path}", nodes,
                        types_from_launcher_config(yaml.safe_load(path.read_text())))
    if _autoscaler_v1_running():
        return Capacity(True, "autoscaler v1 (its config is not readable from this node)", nodes, None)
    return Capacity(False, "fixed size", nodes)


# --- planning ------------------------------------------------------------------------------------
def _fits(bundle: Resources, free: Resources) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0)


def _take(bundle: Resources, free: Resources) -> None:
    for key, value in bundle.items():
        free[key] = free.get(key, 0.0) - value


def pack(bundles: list[Resources], nodes: list[Resources],
         node_types: list[NodeType] | None = None) -> dict[str, int] | None:
    """First-fit-decreasing: place ``bundles`` on ``nodes``, opening nodes of ``node_types``
    (the smallest that holds a bundle, within its max count) when none has room.

    Returns the nodes opened per type, or None when the bundles cannot all be placed.
    """
    free = [dict(n) for n in nodes]
    opened: dict[str, int] = {}
    order = sorted(bundles, key=lambda b: (b.get("GPU", 0.0), b.get("CPU", 0.0)), reverse=True)
    for bundle in order:
        target = next((f for f in free if _fits(bundle, f)), None)
        if target is None:
            candidates = [t for t in node_types or [] if t.holds(bundle)
                          and (t.max_count < 0 or opened.get(t.name, 0) < t.max_count)]
            if not candidates:
                return None
            chosen = min(candidates, key=lambda t: (t.resources.get("GPU", 0.0), t.resources.get("CPU", 0.0)))
            opened[chosen.name] = opened.get(chosen.name, 0) + 1
            target = dict(chosen.resources)
            free.append(target)
        _take(bundle, target)
    return opened


def _describe(bundle: Resources) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(bundle.items()) if v > 0) or "nothing"


def plan(capacity: Capacity, worker: Resources, num_workers: int, decoder: Resources,
         num_decoders: int) -> ResourcePlan:
    """Check the job against the cluster; raise CapacityError when it can never fit."""
    job = ResourcePlan(worker, num_workers, decoder, num_decoders)
    if capacity.autoscaling and capacity.node_types is None:
        return job  # limits unknown: ask, and let the wait time out
    types = capacity.node_types if capacity.autoscaling else None
    for bundle, what in ((worker, "a Train worker"), (decoder, "a decode actor")):
        if any(_fits(bundle, n) for n in capacity.nodes) or any(t.holds(bundle) for t in types or []):
            continue
        largest = ([f"{t.name} ({_describe(t.resources)})" for t in types or []]
                   or [_describe(n) for n in capacity.nodes])
        raise CapacityError(f"{what} needs {_describe(bundle)}, more than any node "
                            f"{'type ' if types else ''}of this cluster has "
                            f"({'; '.join(largest) or 'no nodes'}); lower --cpus-per-worker or drop --use-gpu")
    opened = pack(job.bundles(), capacity.nodes, types)
    if opened is None:
        total = _describe(_sum(job.bundles()))
        where = ("at the node types' maximum counts" if types else
                 f"({_describe(capacity.total())} up, fixed size)")
        raise CapacityError(f"{num_workers} workers x ({_describe(worker)}) and {num_decoders} decode "
                            f"actor(s) x ({_describe(decoder)}) need {total}; the cluster cannot hold them "
                            f"{where}; lower --num-workers or --cpus-per-worker (e.g. 0.5)")
    job.new_nodes = opened
    return job


def _sum(bundles: list[Resources]) -> Resources:
    out: Resources = {}
    for bundle in bundles:
        for key, value in bundle.items():
            out[key] = out.get(key, 0.0) + value
    return out


def default_cpus(cluster_cpus: float, num_workers: int, num_decoders: int, use_gpu: bool) -> float:
    """CPUs per worker and per decode actor when none were asked for: 1 each where that fits,
    else an equal share of the cluster in steps of 0.25 (2 CPUs, 2 workers, 1 decoder: 0.5)."""
    wanted = num_workers + num_decoders
    if use_gpu or cluster_cpus >= wanted:
        return 1.0
    share = int(cluster_cpus / wanted * 4) / 4
    return max(share, 0.25)


DECODE_RESOURCE = "decode"  # offered by CPU-only nodes (ray-config.yaml's cpu_worker): decoders go there


@dataclass
class DecoderPool:
    """The decode actors a job asks for: each actor's bundle and the pool's size range."""

    bundle: Resources
    min_size: int
    max_size: int

    @property
    def on_cpu_nodes(self) -> bool:
        return DECODE_RESOURCE in self.bundle


def _decode_cpus_offered(capacity: Capacity) -> float:
    """CPUs of the nodes that offer ``DECODE_RESOURCE``: up now, plus declared types at their maximum."""
    up = sum(n.get("CPU", 0.0) for n in capacity.nodes if n.get(DECODE_RESOURCE, 0.0) > 0)
    declared = sum(t.resources.get("CPU", 0.0) * max(t.max_count, 1) for t in capacity.node_types or []
                   if t.resources.get(DECODE_RESOURCE, 0.0) > 0) if capacity.autoscaling else 0.0
    return up + declared


def decoder_pool(capacity: Capacity, worker: Resources, num_workers: int, decoder_cpus: float,
                 min_decoders: int, max_decoders: int | None = None) -> DecoderPool:
    """Where the decode actors run and how far their pool may grow (Ray Data autoscales it).

    With CPU-only nodes (nodes or node types offering ``DECODE_RESOURCE``) each actor asks for
    ``decoder_cpus`` of it too, so decoders run there and never take a trainer node's CPUs; the
    pool may grow over those nodes' CPUs. Otherwise it grows over the CPUs the Train workers
    leave free. ``max_decoders`` caps it; the pool never shrinks below ``min_decoders``.
    """
    offered = _decode_cpus_offered(capacity)
    if offered > 0:
        bundle, free = {"CPU": decoder_cpus, DECODE_RESOURCE: decoder_cpus}, offered
    else:
        cpus = capacity.total().get("CPU", 0.0)
        if capacity.autoscaling and capacity.node_types:
            cpus += sum(t.resources.get("CPU", 0.0) * max(t.max_count, 1) for t in capacity.node_types)
        bundle, free = {"CPU": decoder_cpus}, cpus - num_workers * worker.get("CPU", 0.0)
    fits = int(free / decoder_cpus + 1e-9) if decoder_cpus > 0 else min_decoders
    largest = max(min_decoders, fits)
    if max_decoders is not None:
        largest = max(min_decoders, min(largest, max_decoders))
    return DecoderPool(bundle, min_decoders, largest)


# --- waiting for the autoscaler -------------------------------------------------------------------
def wait_for_nodes(job: ResourcePlan, timeout_s: float, say: Callable[[str], None] = print,
                   poll_s: float = 1.0, report_every_s: float = 15.0) -> float:
    """Ask the autoscaler for the job's bundles and wait until alive nodes can hold them.

    Returns the seconds waited; raises CapacityError after ``timeout_s``. The request stays in
    place (so a lost node is replaced) until :func:`release` is called.
    """
    from ray.autoscaler.sdk import request_resources

    bundles = job.bundles()
    request_resources(bundles=bundles)
    wanted = sum(job.new_nodes.values())
    started = time.monotonic()
    before = len(alive_nodes())
    last_report = -report_every_s
    while True:
        nodes = alive_nodes()
        waited = time.monotonic() - started
        if pack(bundles, nodes) is not None:
            if waited >= poll_s:
                say(f"cluster ready: {len(nodes) - before} node(s) started in {waited:.0f} s")
            return waited
        up = max(0, len(nodes) - before)
        kinds = "+".join(sorted(job.new_nodes)) or "worker"
        if waited - last_report >= report_every_s:
            say(f"waiting for {wanted or '?'} {kinds} node(s): {up}/{wanted or '?'} up, {waited:.0f} s")
            last_report = waited
        if waited > timeout_s:
            raise CapacityError(f"the autoscaler did not provide {wanted or 'the'} {kinds} node(s) in "
                                f"{timeout_s:.0f} s ({up} up); see `ray status` and the autoscaler's "
                                f"monitor.log, or raise --scale-timeout")
        time.sleep(poll_s)


def release() -> None:
    """Withdraw the resource request, so the autoscaler may remove idle nodes again."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[])
    except Exception as exc:  # the cluster may be gone already; nothing is left to release then
        print(f"note: could not withdraw the resource request: {exc}", file=sys.stderr)


__all__ = ["Capacity", "NodeType", "ResourcePlan", "CapacityError", "discover", "plan", "pack",
           "default_cpus", "wait_for_nodes", "release", "types_from_launcher_config", "monitor_config_path"]

"""Worker nodes that Ray's own autoscaler starts and stops on this machine.

``slm-cluster up --autoscale-nodes N`` starts the head with ``--autoscaling-config`` pointing
at a config written here, whose provider is Ray's ``fake_multinode``: when work is pending,
Ray's real (v1) autoscaler "launches" a worker node by starting another raylet on this host,
and terminates it after ``idle_timeout_minutes``. The keys are the cluster launcher's (the same
ones ``ray-config.yaml`` uses on AWS), so the autoscaling logic under test is Ray's, not ours.

Three traps this module handles (Ray 2.60):

* Ray's ``AutoscalingCluster`` helper cannot be used: the ``example.yaml`` it loads is not in
  the wheel, and its ``start()``/``shutdown()`` run ``ray stop --force``.
* ``provider.gcs_address`` must name the head's GCS, or new nodes look for it on port 6379.
* Node updaters must be off (``disable_node_updaters``): the fake provider's tags are read-only
  and every launch would otherwise be reported as failed.

Autoscaler v2 is not used: its config loader reads the missing ``example.yaml`` for this
provider. v1 keeps the node types in its own config only, which is why
:mod:`multimodal.capacity` reads that config through the monitor process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HEAD_TYPE = "ray.head.default"
WORKER_TYPE = "cpu_worker"
# RAY_FAKE_CLUSTER lets the fake provider load; the update interval makes the demo snappy
FAKE_CLUSTER_ENV = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}


@dataclass
class FakeNodeType:
    """One worker node type: the resources of each node and how many may run."""

    name: str = WORKER_TYPE
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1})
    min_workers: int = 0
    max_workers: int = 3


def autoscaling_config(gcs_address: str, head_resources: dict[str, float],
                       node_types: list[FakeNodeType], idle_timeout_minutes: float = 1.0,
                       cluster_name: str = "slm-local") -> dict[str, Any]:
    """The cluster-launcher config for a fake multi-node cluster (see the module docstring)."""
    types: dict[str, Any] = {HEAD_TYPE: {"resources": dict(head_resources), "node_config": {},
                                         "max_workers": 0}}
    for node_type in node_types:
        types[node_type.name] = {"resources": dict(node_type.resources), "node_config": {},
                                 "min_workers": node_type.min_workers,
                                 "max_workers": node_type.max_workers}
    empty_lists = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                   "setup_commands", "head_setup_commands", "worker_setup_commands",
                   "head_start_ray_commands", "worker_start_ray_commands")
    return {
        "cluster_name": cluster_name,
        "max_workers": sum(t.max_workers for t in node_types),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "launch_multiple": True,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


def write_autoscaling_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path`` and return it."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


__all__ = ["FakeNodeType", "autoscaling_config", "write_autoscaling_config", "FAKE_CLUSTER_ENV"]

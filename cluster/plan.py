"""What ``slm-cluster up`` will start: ports, commands and the nodes' environment, decided before
anything runs (``slm-cluster up --dry-run`` prints it)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cluster.fake_nodes import FAKE_CLUSTER_ENV, FakeNodeType, autoscaling_config
from cluster.net import free_port
from cluster.s3_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY, moto_command
from cluster.state import MARKER_ENV, TOKEN_FILE, ClusterLayout, ClusterState, cluster_home, ray_temp_dir

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_S3_PORT = 9000
DEFAULT_BUCKET = "slm-demo"
# On Linux, Ray replaces 127.0.0.1 by the machine's routable IP (services.resolve_ip_for_localhost)
# unless multi-node mode is off. With it off, the node IP is 127.0.0.1 and *every* Ray port
# (GCS, raylet, agents, client server, metrics) listens on loopback only. Drivers that call
# ray.init(address=...) outside of a job need the same variable *before* `import ray`, or
# they resolve 127.0.0.1 to the routable IP and wait forever for a GCS that is not there.
LOOPBACK_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclasses.dataclass
class ClusterPlan(ClusterLayout):
    """The layout of one ``up`` plus what it will run."""

    secret_key: str = TEST_SECRET_KEY  # the S3 secret the nodes get
    autoscaling: dict[str, Any] | None = None  # the autoscaler's config (written to autoscaling_config)
    ray_cmd: list[str] = dataclasses.field(default_factory=list)
    moto_cmd: list[str] = dataclasses.field(default_factory=list)

    def new_state(self, moto_pid: int) -> ClusterState:
        """The state recorded once moto runs (Ray's session and pids are filled in later)."""
        layout = {f.name: getattr(self, f.name) for f in dataclasses.fields(ClusterLayout)}
        return ClusterState(**layout, moto_pid=moto_pid, moto_cmdline=self.moto_cmd, started_at=time.time())


def host_warning(host: str) -> str | None:
    """The warning printed when the cluster is bound to a non-loopback address."""
    if host in LOOPBACK_HOSTS:
        return None
    return (
        f"WARNING: binding the local cluster to {host} instead of 127.0.0.1. The Ray dashboard "
        "(which accepts job submissions = arbitrary code execution), the Ray client port and "
        "the S3 test server become reachable from the network. Ray token auth is on, but the "
        "S3 server accepts the fixed test credentials 'testing'/'testing' from anyone. Use "
        "this only on a trusted network."
    )


def ray_executable() -> str:
    """The ``ray`` CLI next to this interpreter (else the one on PATH)."""
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else (shutil.which("ray") or "ray")


def node_env(p: ClusterPlan) -> dict[str, str]:
    """Environment of ``ray start`` (inherited by every Ray process, worker and job)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update({
        MARKER_ENV: p.cluster_id,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": p.token_path,
        "AWS_ENDPOINT_URL": p.s3_endpoint,
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": p.secret_key,
        "AWS_REGION": TEST_REGION,
        "AWS_DEFAULT_REGION": TEST_REGION,
        "SLM_BUCKET": p.bucket,
        "SLM_METRICS_PORT": str(p.metrics_port),
        # Ray-internal actors that call ray.init() (e.g. Ray Train's PlacementGroupCleaner) must
        # join this cluster even when other Ray clusters run on the same machine
        "RAY_ADDRESS": f"{p.node_ip}:{p.gcs_port}",
        # Ray's fixed defaults (44217/44227) would collide with any other Ray head here
        "AUTOSCALER_METRIC_PORT": str(p.autoscaler_metric_port),
        "DASHBOARD_METRIC_PORT": str(p.dashboard_metric_port),
        # `python` in job entrypoints must be this interpreter (the one with ray installed)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    })
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    if p.autoscaling_config:
        env.update(FAKE_CLUSTER_ENV)  # worker raylets inherit this environment from the monitor
    if p.host in LOOPBACK_HOSTS:
        env.update(LOOPBACK_RAY_ENV)
    return env


def _ray_start_command(p: ClusterPlan) -> list[str]:
    cmd = [
        ray_executable(), "start", "--head",
        f"--port={p.gcs_port}",
        f"--dashboard-host={p.host}", f"--dashboard-port={p.dashboard_port}",
        f"--metrics-export-port={p.metrics_port}",
        f"--ray-client-server-port={p.client_server_port}",
        f"--dashboard-agent-listen-port={p.dashboard_agent_port}",
        f"--temp-dir={p.temp_dir}",
        "--disable-usage-stats",
    ]
    if p.host not in ("0.0.0.0", "::"):
        cmd.append(f"--node-ip-address={p.node_ip}")
    for flag, value in (("num-cpus", p.num_cpus), ("num-gpus", p.num_gpus),
                        ("object-store-memory", p.object_store_memory),
                        ("autoscaling-config", p.autoscaling_config)):
        if value is not None:
            cmd.append(f"--{flag}={value}")
    return cmd


def plan(
    *, host: str = DEFAULT_HOST, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    s3_port: int = DEFAULT_S3_PORT, num_cpus: int | None = None, num_gpus: int | None = None,
    object_store_memory: int | None = None, bucket: str = DEFAULT_BUCKET,
    gcs_port: int | None = None, metrics_port: int | None = None,
    home: str | os.PathLike | None = None, autoscale: FakeNodeType | None = None,
    idle_timeout_minutes: float = 1.0, secret_key: str = TEST_SECRET_KEY,
) -> ClusterPlan:
    """The commands and ports ``up`` would use (no side effects besides picking free ports).

    With ``autoscale``, Ray's autoscaler starts and stops worker nodes of that type on this
    machine (:mod:`cluster.fake_nodes`); ``num_cpus`` is then the head's (0 = no work on the head).
    ``secret_key`` is the S3 secret the nodes get (any value works with the local moto server).
    """
    home_path = cluster_home(home)
    if autoscale is not None and num_cpus is None:
        num_cpus = 0  # the head only coordinates; work goes to the autoscaled nodes
    bind = "127.0.0.1" if host == "localhost" else host
    node_ip = "127.0.0.1" if bind in LOOPBACK_HOSTS else bind
    p = ClusterPlan(
        cluster_id=uuid.uuid4().hex, home=str(home_path), host=bind, node_ip=node_ip,
        dashboard_port=dashboard_port, s3_port=s3_port, gcs_port=gcs_port or free_port(),
        metrics_port=metrics_port or free_port(), client_server_port=free_port(),
        dashboard_agent_port=free_port(), autoscaler_metric_port=free_port(),
        dashboard_metric_port=free_port(), temp_dir=ray_temp_dir(home_path),
        token_path=str(home_path / TOKEN_FILE), bucket=bucket, num_cpus=num_cpus,
        num_gpus=num_gpus, object_store_memory=object_store_memory, secret_key=secret_key,
    )
    if autoscale is not None:
        p.autoscaling_config = str(home_path / "autoscaling.yaml")
        p.autoscaling = autoscaling_config(
            f"{node_ip}:{p.gcs_port}", {"CPU": num_cpus or 0, "GPU": num_gpus or 0}, [autoscale],
            idle_timeout_minutes=idle_timeout_minutes)
    p.ray_cmd = _ray_start_command(p)
    p.moto_cmd = moto_command(bind, s3_port)
    return p


__all__ = ["ClusterPlan", "plan", "node_env", "host_warning", "LOOPBACK_HOSTS",
           "LOOPBACK_RAY_ENV", "DEFAULT_HOST", "DEFAULT_DASHBOARD_PORT", "DEFAULT_S3_PORT",
           "DEFAULT_BUCKET"]

"""The local cluster's recorded state: where it lives, what ``up`` started, how to read it back.

``up`` records everything it started in ``$SLM_CLUSTER_HOME/state.json`` (default
``~/.slm-cluster``) so that ``down`` stops exactly those processes and nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cluster.net import dial_host

MARKER_ENV = "SLM_CLUSTER_ID"
STATE_FILE = "state.json"
TOKEN_FILE = "auth_token"


class ClusterError(RuntimeError):
    """up/down/status could not do what was asked."""


def cluster_home(home: str | os.PathLike | None = None) -> Path:
    """The state dir: ``home`` if given, else ``$SLM_CLUSTER_HOME``, else ``~/.slm-cluster``."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = os.environ.get("SLM_CLUSTER_HOME")
    return Path(env).expanduser().resolve() if env else Path.home() / ".slm-cluster"


def ray_temp_dir(home: Path) -> str:
    """A short Ray temp dir unique to the state dir (AF_UNIX socket paths max ~107 bytes)."""
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:8]
    return f"/tmp/slm-ray-{digest}"


@dataclasses.dataclass
class ClusterLayout:
    """Addresses, ports and paths of one local cluster: what ``plan`` decides and ``up`` records."""

    cluster_id: str
    home: str
    host: str
    node_ip: str
    dashboard_port: int
    gcs_port: int
    s3_port: int
    metrics_port: int
    client_server_port: int
    dashboard_agent_port: int
    temp_dir: str
    token_path: str
    bucket: str
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_memory: int | None = None
    autoscaler_metric_port: int = 0
    dashboard_metric_port: int = 0
    autoscaling_config: str | None = None  # set when worker nodes are started by Ray's autoscaler

    @property
    def client_host(self) -> str:
        """Where clients on this machine connect (0.0.0.0 is not an address to dial)."""
        return dial_host(self.host)

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.client_host}:{self.dashboard_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.client_host}:{self.s3_port}"

    @property
    def gcs_address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"


@dataclasses.dataclass
class ClusterState(ClusterLayout):
    """What ``up`` started; saved as JSON in the state dir."""

    ray_session_id: int = 0
    ray_pids: list[int] = dataclasses.field(default_factory=list)
    moto_pid: int = 0
    moto_cmdline: list[str] = dataclasses.field(default_factory=list)
    started_at: float = 0.0

    def token(self) -> str:
        return Path(self.token_path).read_text().strip()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})



def load_state(home: str | os.PathLike | None = None) -> ClusterState | None:
    """The recorded state, or None when nothing is up (no state file)."""
    path = cluster_home(home) / STATE_FILE
    if not path.exists():
        return None
    return ClusterState.from_dict(json.loads(path.read_text()))


def save_state(state: ClusterState) -> None:
    """Write ``state`` atomically to its state dir."""
    path = Path(state.home) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to a file that is mode 0600 from its creation (no moment readable by others,
    whatever the umask); an existing file is narrowed to 0600 before it is truncated."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)

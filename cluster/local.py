"""A local, single-machine Ray cluster plus an S3-compatible server for the demo.

``up()`` starts

* a Ray head node (``ray start --head``) with the dashboard on ``host:dashboard_port``
  (127.0.0.1:8265 by default), token authentication on, its own short temp dir and fixed,
  recorded ports (GCS, metrics export, Ray client, dashboard agent);
* a moto S3 server (``python -m moto.server``) on ``host:s3_port`` with one bucket.

Everything ``up`` started is recorded in ``$SLM_CLUSTER_HOME/state.json`` (default
``~/.slm-cluster``) so that ``down()`` stops exactly those processes and nothing else. This
matters: a bare ``ray stop`` kills *every* Ray process of the machine.

Token auth (Ray >= 2.59 turns it on by default for new local clusters): ``up`` writes a
fresh random token to ``$SLM_CLUSTER_HOME/auth_token`` (mode 0600) and starts Ray with
``RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<that file>``; ``~/.ray/auth_token`` is neither
read nor written. Clients (``ray job submit``, ``ray status``, the dashboard REST API) need
the same two variables, which ``env_vars()`` / ``slm-cluster env`` print.

How ``down`` finds "our" processes: ``ray start`` is launched in a new session
(``setsid``), every Ray process it spawns inherits that session id and the environment
marker ``SLM_CLUSTER_ID=<uuid>``; job drivers (which Ray puts in their own sessions) keep
the marker. ``down`` signals only processes that carry the session id, the marker, or
descend from one that does (raylet first, then the rest, GCS last, as ``ray stop`` does),
then SIGKILLs what is left after a grace period. moto is stopped by its recorded pid after
checking its command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from cluster.fake_nodes import FAKE_CLUSTER_ENV, FakeNodeType, autoscaling_config, write_autoscaling_config

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_S3_PORT = 9000
DEFAULT_BUCKET = "slm-demo"
TEST_ACCESS_KEY = "testing"  # fixed, fake credentials of the local moto server
TEST_SECRET_KEY = "testing"
TEST_REGION = "us-east-1"
MARKER_ENV = "SLM_CLUSTER_ID"
STATE_FILE = "state.json"
TOKEN_FILE = "auth_token"
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0
# On Linux, Ray replaces 127.0.0.1 by the machine's routable IP (services.resolve_ip_for_localhost)
# unless multi-node mode is off. With it off, the node IP is 127.0.0.1 and *every* Ray port
# (GCS, raylet, agents, client server, metrics) listens on loopback only. Drivers that call
# ray.init(address=...) outside of a job need the same variable *before* `import ray`, or
# they resolve 127.0.0.1 to the routable IP and wait forever for a GCS that is not there.
LOOPBACK_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class ClusterError(RuntimeError):
    """up/down/status could not do what was asked."""


# ---------------------------------------------------------------------------------------
# state


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
class ClusterState:
    """What ``up`` started; saved as JSON in the state dir."""

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
    ray_session_id: int
    ray_pids: list[int]
    moto_pid: int
    moto_cmdline: list[str]
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_memory: int | None = None
    started_at: float = 0.0
    autoscaler_metric_port: int = 0
    dashboard_metric_port: int = 0
    autoscaling_config: str | None = None  # set when worker nodes are started by Ray's autoscaler

    @property
    def client_host(self) -> str:
        """Where clients on this machine connect (0.0.0.0 is not an address to dial)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "localhost") else self.host

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.client_host}:{self.dashboard_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.client_host}:{self.s3_port}"

    @property
    def gcs_address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"

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


def _save_state(state: ClusterState) -> None:
    path = Path(state.home) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# processes (Linux /proc; no psutil needed)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of a live process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3])


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running (non-zombie) process."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _has_marker(pid: int, cluster_id: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER_ENV}={cluster_id}".encode() in environ.split(b"\0")


def find_cluster_pids(cluster_id: str, session_id: int | None = None) -> list[int]:
    """Live processes of the cluster: in its session, carrying its marker, or descending from
    one of those. Never this process or its ancestors."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is not None and stat[0] not in ("Z", "X"):
            table[int(entry)] = (stat[1], stat[2])
    protected = set()
    pid = os.getpid()
    while pid > 1 and pid in table:
        protected.add(pid)
        pid = table[pid][0]
    ours = {p for p, (_, sid) in table.items() if session_id is not None and sid == session_id}
    ours |= {p for p in table if p not in ours and _has_marker(p, cluster_id)}
    changed = True
    while changed:  # descendants (e.g. job drivers that started their own session)
        changed = False
        for p, (ppid, _) in table.items():
            if p not in ours and ppid in ours:
                ours.add(p)
                changed = True
    return sorted(ours - protected - {1})


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def _stop_ray(state: ClusterState, log: Callable[[str], None]) -> None:
    """raylet first, then everything else, GCS last (ray stop's order), SIGKILL leftovers."""
    pids = find_cluster_pids(state.cluster_id, state.ray_session_id)
    pids += [p for p in state.ray_pids if p not in pids and pid_alive(p)
             and _has_marker(p, state.cluster_id)]
    if not pids:
        return
    names = {p: " ".join(_cmdline(p)) for p in pids}
    raylet = [p for p in pids if "/raylet/raylet" in names[p]]
    gcs = [p for p in pids if "/gcs/gcs_server" in names[p]]
    rest = [p for p in pids if p not in raylet and p not in gcs]
    for bucket in (raylet, rest, gcs):
        _signal(bucket, signal.SIGTERM)
        _wait_gone(bucket, STOP_GRACE_S / 3)
    # whatever is still there, including workers the raylet spawned meanwhile
    left = set(_wait_gone(pids, 1.0)) | set(find_cluster_pids(state.cluster_id,
                                                              state.ray_session_id))
    if left:
        log(f"force-killing {len(left)} Ray process(es) that ignored SIGTERM")
        _signal(left, signal.SIGKILL)
        still = _wait_gone(left, 5.0)
        if still:
            raise ClusterError(f"Ray processes still alive after SIGKILL: {still}")


def _stop_moto(state: ClusterState) -> None:
    pid = state.moto_pid
    if not pid_alive(pid) or _cmdline(pid) != state.moto_cmdline:
        return  # gone, or the pid now belongs to someone else: leave it alone
    _signal([pid], signal.SIGTERM)
    if _wait_gone([pid], 5.0):
        _signal([pid], signal.SIGKILL)
        _wait_gone([pid], 5.0)


# ---------------------------------------------------------------------------------------
# ports and HTTP


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("localhost",) else "127.0.0.1", 0))
        return sock.getsockname()[1]


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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts connections on host:port or the port cannot be bound."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "localhost") else host,
                            port)) == 0:
            return True
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like the servers do
        try:
            sock.bind(("0.0.0.0" if host in ("0.0.0.0",) else host, port))
        except OSError:
            return True
    return False


def _wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise ClusterError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _http_json(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())


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


# ---------------------------------------------------------------------------------------
# up / down / status / env


def _ray_executable() -> str:
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else (shutil.which("ray") or "ray")


def _node_env(state_like: dict[str, Any]) -> dict[str, str]:
    """Environment of ``ray start`` (inherited by every Ray process, worker and job)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update({
        MARKER_ENV: state_like["cluster_id"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state_like["token_path"],
        "AWS_ENDPOINT_URL": state_like["s3_endpoint"],
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": state_like.get("secret_key", TEST_SECRET_KEY),
        "AWS_REGION": TEST_REGION,
        "AWS_DEFAULT_REGION": TEST_REGION,
        "SLM_BUCKET": state_like["bucket"],
        "SLM_METRICS_PORT": str(state_like["metrics_port"]),
        # Ray-internal actors that call ray.init() (e.g. Ray Train's PlacementGroupCleaner) must
        # join this cluster even when other Ray clusters run on the same machine
        "RAY_ADDRESS": f"{state_like['node_ip']}:{state_like['gcs_port']}",
        # Ray's fixed defaults (44217/44227) would collide with any other Ray head here
        "AUTOSCALER_METRIC_PORT": str(state_like["autoscaler_metric_port"]),
        "DASHBOARD_METRIC_PORT": str(state_like["dashboard_metric_port"]),
        # `python` in job entrypoints must be this interpreter (the one with ray installed)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    })
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    if state_like.get("autoscaling_config"):
        env.update(FAKE_CLUSTER_ENV)  # worker raylets inherit this environment from the monitor
    if state_like["host"] in LOOPBACK_HOSTS:
        env.update(LOOPBACK_RAY_ENV)
    return env


def plan(
    *, host: str = DEFAULT_HOST, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    s3_port: int = DEFAULT_S3_PORT, num_cpus: int | None = None, num_gpus: int | None = None,
    object_store_memory: int | None = None, bucket: str = DEFAULT_BUCKET,
    gcs_port: int | None = None, metrics_port: int | None = None,
    home: str | os.PathLike | None = None, autoscale: FakeNodeType | None = None,
    idle_timeout_minutes: float = 1.0, secret_key: str = TEST_SECRET_KEY,
) -> dict[str, Any]:
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
    p: dict[str, Any] = {
        "cluster_id": uuid.uuid4().hex,
        "home": str(home_path),
        "host": bind,
        "node_ip": node_ip,
        "dashboard_port": dashboard_port,
        "s3_port": s3_port,
        "gcs_port": gcs_port or free_port(),
        "metrics_port": metrics_port or free_port(),
        "client_server_port": free_port(),
        "dashboard_agent_port": free_port(),
        "autoscaler_metric_port": free_port(),
        "dashboard_metric_port": free_port(),
        "temp_dir": ray_temp_dir(home_path),
        "token_path": str(home_path / TOKEN_FILE),
        "bucket": bucket,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "object_store_memory": object_store_memory,
        "secret_key": secret_key,
        "autoscaling_config": None,
    }
    if autoscale is not None:
        p["autoscaling_config"] = str(home_path / "autoscaling.yaml")
        p["autoscaling"] = autoscaling_config(
            f"{node_ip}:{p['gcs_port']}", {"CPU": num_cpus or 0, "GPU": num_gpus or 0}, [autoscale],
            idle_timeout_minutes=idle_timeout_minutes)
    client_host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    p["s3_endpoint"] = f"http://{client_host}:{s3_port}"
    ray_cmd = [
        _ray_executable(), "start", "--head",
        f"--port={p['gcs_port']}",
        f"--dashboard-host={bind}", f"--dashboard-port={dashboard_port}",
        f"--metrics-export-port={p['metrics_port']}",
        f"--ray-client-server-port={p['client_server_port']}",
        f"--dashboard-agent-listen-port={p['dashboard_agent_port']}",
        f"--temp-dir={p['temp_dir']}",
        "--disable-usage-stats",
    ]
    if bind not in ("0.0.0.0", "::"):
        ray_cmd.append(f"--node-ip-address={node_ip}")
    if num_cpus is not None:
        ray_cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        ray_cmd.append(f"--num-gpus={num_gpus}")
    if object_store_memory is not None:
        ray_cmd.append(f"--object-store-memory={object_store_memory}")
    if p["autoscaling_config"]:
        ray_cmd.append(f"--autoscaling-config={p['autoscaling_config']}")
    p["ray_cmd"] = ray_cmd
    p["moto_cmd"] = [sys.executable, "-m", "moto.server", "-H", bind, "-p", str(s3_port)]
    return p


def up(
    *, host: str = DEFAULT_HOST, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    s3_port: int = DEFAULT_S3_PORT, num_cpus: int | None = None, num_gpus: int | None = None,
    object_store_memory: int | None = None, bucket: str = DEFAULT_BUCKET,
    gcs_port: int | None = None, metrics_port: int | None = None,
    home: str | os.PathLike | None = None, log: Callable[[str], None] = print,
    autoscale: FakeNodeType | None = None, idle_timeout_minutes: float = 1.0,
    secret_key: str = TEST_SECRET_KEY,
) -> ClusterState:
    """Start the Ray head and the S3 server; return the recorded state.

    Idempotent: if the state dir records a running cluster, that state is returned and
    nothing is started. Raises ClusterError if a port is taken or a start fails (whatever
    was already started is stopped again).
    """
    existing = load_state(home)
    if existing is not None:
        if _ray_alive(existing):
            log(f"already up (state in {existing.home}); dashboard {existing.dashboard_url}")
            return existing
        log("found a stale state file (its processes are gone); cleaning up and starting anew")
        down(home=home, log=lambda _msg: None)

    warning = host_warning(host)
    if warning:
        log(warning)
    p = plan(host=host, dashboard_port=dashboard_port, s3_port=s3_port, num_cpus=num_cpus,
             num_gpus=num_gpus, object_store_memory=object_store_memory, bucket=bucket,
             gcs_port=gcs_port, metrics_port=metrics_port, home=home, autoscale=autoscale,
             idle_timeout_minutes=idle_timeout_minutes, secret_key=secret_key)
    for name in ("dashboard_port", "s3_port", "gcs_port", "metrics_port"):
        if port_in_use(p[name], p["host"]):
            raise ClusterError(f"{name.replace('_', ' ')} {p[name]} is already in use; "
                               f"pick another with --{name.replace('_', '-')}")
    home_path = Path(p["home"])
    home_path.mkdir(parents=True, exist_ok=True)
    # same format as `ray get-auth-token --generate`; created 0600, never readable by others
    write_private_file(Path(p["token_path"]), secrets.token_hex(32))
    if p["autoscaling_config"]:
        write_autoscaling_config(Path(p["autoscaling_config"]), p["autoscaling"])

    moto_log = open(home_path / "moto.log", "ab")
    moto = subprocess.Popen(p["moto_cmd"], stdout=moto_log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    moto_log.close()
    state = ClusterState(
        cluster_id=p["cluster_id"], home=p["home"], host=p["host"], node_ip=p["node_ip"],
        dashboard_port=dashboard_port, gcs_port=p["gcs_port"], s3_port=s3_port,
        metrics_port=p["metrics_port"], client_server_port=p["client_server_port"],
        dashboard_agent_port=p["dashboard_agent_port"],
        autoscaler_metric_port=p["autoscaler_metric_port"],
        dashboard_metric_port=p["dashboard_metric_port"], temp_dir=p["temp_dir"],
        token_path=p["token_path"], bucket=bucket, ray_session_id=0, ray_pids=[],
        moto_pid=moto.pid, moto_cmdline=p["moto_cmd"], num_cpus=num_cpus, num_gpus=num_gpus,
        object_store_memory=object_store_memory, started_at=time.time(),
        autoscaling_config=p["autoscaling_config"],
    )
    _save_state(state)  # from here on, `down` can clean up a half-started cluster
    try:
        _wait_port(state.client_host, s3_port, 60)
        _create_bucket(state)
        log(f"S3 server (moto) on {state.s3_endpoint}, bucket s3://{bucket}")

        ray_log = open(home_path / "ray-start.log", "ab")
        starter = subprocess.Popen(p["ray_cmd"], env=_node_env(p), stdout=ray_log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        ray_log.close()
        state.ray_session_id = starter.pid  # session leader: its pid is the session id
        _save_state(state)
        try:
            rc = starter.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"`ray start` did not finish in {START_TIMEOUT_S:.0f}s; "
                               f"see {home_path / 'ray-start.log'}")
        if rc != 0:
            raise ClusterError(f"`ray start` failed (exit {rc}); see {home_path / 'ray-start.log'}")
        _wait_dashboard(state, timeout=120)
        state.ray_pids = find_cluster_pids(state.cluster_id, state.ray_session_id)
        _save_state(state)
    except BaseException:
        log("start failed; stopping what was started")
        down(home=home, log=lambda _msg: None)
        raise
    log(f"Ray head up: dashboard {state.dashboard_url}, GCS {state.gcs_address}, "
        f"metrics :{state.metrics_port}, token auth on ({state.token_path})")
    return state


def _create_bucket(state: ClusterState) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=state.s3_endpoint, region_name=TEST_REGION,
                          aws_access_key_id=TEST_ACCESS_KEY,
                          aws_secret_access_key=TEST_SECRET_KEY)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket=state.bucket)
            return
        except Exception as exc:  # moto may need a moment after binding the port
            if "BucketAlreadyOwnedByYou" in str(exc) or time.monotonic() > deadline:
                if "BucketAlreadyOwnedByYou" in str(exc):
                    return
                raise ClusterError(f"could not create bucket {state.bucket}: {exc}") from exc
            time.sleep(0.5)


def _wait_dashboard(state: ClusterState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            _http_json(f"{state.dashboard_url}/api/version", state.token(), timeout=3)
            return
        except Exception as exc:  # not ready yet
            last = exc
            time.sleep(0.5)
    raise ClusterError(f"dashboard {state.dashboard_url} not ready after {timeout:.0f}s: {last}")


def _ray_alive(state: ClusterState) -> bool:
    return bool(find_cluster_pids(state.cluster_id, state.ray_session_id or None))


def down(*, home: str | os.PathLike | None = None, purge: bool = False,
         log: Callable[[str], None] = print) -> bool:
    """Stop what ``up`` started. Returns False (and does nothing) when nothing is up.

    ``purge`` also deletes Ray's temp dir (session logs) and the state dir's logs/token.
    """
    state = load_state(home)
    if state is None:
        log(f"nothing is up (no state in {cluster_home(home)})")
        return False
    _stop_ray(state, log)
    _stop_moto(state)
    home_path = Path(state.home)
    (home_path / STATE_FILE).unlink(missing_ok=True)
    Path(state.token_path).unlink(missing_ok=True)  # a new token per `up`
    if purge:
        shutil.rmtree(state.temp_dir, ignore_errors=True)
        for name in ("moto.log", "ray-start.log"):
            (home_path / name).unlink(missing_ok=True)
    log(f"stopped the Ray head (dashboard :{state.dashboard_port}, GCS :{state.gcs_port}) "
        f"and the S3 server (:{state.s3_port})")
    return True


def env_vars(home: str | os.PathLike | None = None,
             state: ClusterState | None = None) -> dict[str, str]:
    """The variables a client shell needs (``slm-cluster env`` prints them as ``export``)."""
    state = state or load_state(home)
    if state is None:
        raise ClusterError("the local cluster is not up (run `slm-cluster up`)")
    return {
        "RAY_ADDRESS": state.dashboard_url,  # jobs API; a Python driver uses SLM_RAY_GCS_ADDRESS
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state.token_path,
        "SLM_RAY_GCS_ADDRESS": state.gcs_address,
        "SLM_METRICS_PORT": str(state.metrics_port),
        "AWS_ENDPOINT_URL": state.s3_endpoint,
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_REGION": TEST_REGION,
        "AWS_DEFAULT_REGION": TEST_REGION,
        "SLM_BUCKET": state.bucket,
        **(LOOPBACK_RAY_ENV if state.host in LOOPBACK_HOSTS else {}),
    }


def format_env(variables: dict[str, str]) -> str:
    """Paste-able shell lines. ``RAY_AUTH_TOKEN`` would override the token file, so unset it."""
    lines = ["unset RAY_AUTH_TOKEN RAY_API_SERVER_ADDRESS AWS_SESSION_TOKEN AWS_PROFILE"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in variables.items()]
    return "\n".join(lines) + "\n"


def status(home: str | os.PathLike | None = None) -> dict[str, Any]:
    """A snapshot: ``{"up": False, ...}`` or nodes, resources, S3 and jobs of the cluster."""
    state = load_state(home)
    if state is None:
        return {"up": False, "home": str(cluster_home(home))}
    result: dict[str, Any] = {
        "up": True, "home": state.home, "host": state.host,
        "dashboard_url": state.dashboard_url, "gcs_address": state.gcs_address,
        "metrics_port": state.metrics_port, "temp_dir": state.temp_dir,
        "token_path": state.token_path, "ray_processes": len(_safe_pids(state)),
        "nodes": [], "resources": {}, "jobs": [], "errors": [],
    }
    token = state.token() if Path(state.token_path).exists() else None
    try:
        nodes = _http_json(f"{state.dashboard_url}/api/v0/nodes?limit=100", token)
        total: dict[str, float] = {}
        for node in nodes["data"]["result"]["result"]:
            resources = {k: v for k, v in node.get("resources_total", {}).items()
                         if not k.startswith("node:")}
            result["nodes"].append({
                "node_id": node.get("node_id"), "ip": node.get("node_ip"),
                "state": node.get("state"), "is_head": node.get("is_head_node"),
                "resources": resources,
            })
            if node.get("state") == "ALIVE":
                for k, v in resources.items():
                    total[k] = total.get(k, 0) + v
        result["resources"] = total
    except Exception as exc:
        result["errors"].append(f"nodes: {exc}")
    try:
        text = _http_json(f"{state.dashboard_url}/api/cluster_status?format=1", token)
        result["cluster_status"] = text["data"]["clusterStatus"]
    except Exception as exc:
        result["errors"].append(f"cluster_status: {exc}")
    try:
        jobs = _http_json(f"{state.dashboard_url}/api/jobs/", token)
        result["jobs"] = [{"submission_id": j.get("submission_id"), "status": j.get("status"),
                           "entrypoint": j.get("entrypoint")} for j in jobs]
    except Exception as exc:
        result["errors"].append(f"jobs: {exc}")
    result["s3"] = _s3_status(state)
    return result


def _safe_pids(state: ClusterState) -> list[int]:
    try:
        return find_cluster_pids(state.cluster_id, state.ray_session_id or None)
    except OSError:
        return []


def _s3_status(state: ClusterState) -> dict[str, Any]:
    info: dict[str, Any] = {"endpoint": state.s3_endpoint, "bucket": state.bucket,
                            "pid": state.moto_pid, "reachable": False, "bucket_exists": False}
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=state.s3_endpoint, region_name=TEST_REGION,
            aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY,
            config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}))
        names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        info["reachable"] = True
        info["bucket_exists"] = state.bucket in names
    except Exception as exc:
        info["error"] = str(exc)
    return info


def format_status(info: dict[str, Any]) -> str:
    """Human-readable ``slm-cluster status`` output."""
    if not info.get("up"):
        return f"local cluster: down (state dir {info['home']})\n"
    out = [
        "local cluster: up",
        f"  dashboard:    {info['dashboard_url']}  (token auth; token file {info['token_path']})",
        f"  GCS address:  {info['gcs_address']}",
        f"  metrics:      http://127.0.0.1:{info['metrics_port']}/metrics  (SLM_METRICS_PORT)",
        f"  Ray temp dir: {info['temp_dir']}  ({info['ray_processes']} Ray processes)",
        f"Nodes ({len(info['nodes'])}):",
    ]
    for node in info["nodes"]:
        res = ", ".join(f"{k}={_fmt_amount(k, v)}" for k, v in sorted(node["resources"].items()))
        head = " head" if node.get("is_head") else ""
        out.append(f"  {node['node_id'][:12]} {node['ip']} {node['state']}{head}: {res}")
    out.append("Resources (total): " + ", ".join(
        f"{k}={_fmt_amount(k, v)}" for k, v in sorted(info["resources"].items())))
    if info.get("cluster_status"):
        usage = info["cluster_status"].split("Total Usage:")[-1].split("\n\n")[0]
        out.append("Usage:")
        out += [f"  {line.strip()}" for line in usage.strip().splitlines() if line.strip()]
    s3 = info["s3"]
    reach = "reachable" if s3["reachable"] else f"NOT reachable ({s3.get('error', '?')})"
    bucket = "exists" if s3["bucket_exists"] else "missing"
    out.append(f"S3 endpoint: {s3['endpoint']} {reach}; bucket s3://{s3['bucket']} {bucket}")
    out.append(f"Jobs ({len(info['jobs'])}):")
    for job in info["jobs"]:
        out.append(f"  {job['submission_id']} {job['status']}: {job['entrypoint']}")
    for err in info["errors"]:
        out.append(f"error: {err}")
    return "\n".join(out) + "\n"


def _fmt_amount(name: str, value: float) -> str:
    if "memory" in name:
        return f"{value / 1024**3:.2f}GiB"
    return f"{value:g}"

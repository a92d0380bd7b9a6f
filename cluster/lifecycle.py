"""``up`` and ``down`` of the local cluster: start the S3 server and the Ray head, record them,
and stop exactly what was recorded.

How ``down`` finds "our" processes: ``ray start`` is launched in a new session (``setsid``);
every Ray process it spawns inherits that session id and the environment marker
``SLM_CLUSTER_ID=<uuid>``; job drivers (which Ray puts in their own sessions) keep the marker.
``down`` signals only processes that carry the session id, the marker, or descend from one that
does (raylet first, then the rest, GCS last, as ``ray stop`` does), then SIGKILLs what is left
after a grace period. moto is stopped by its recorded pid after checking its command line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from cluster import procs, s3_server
from cluster.fake_nodes import FakeNodeType, write_autoscaling_config
from cluster.net import http_json, port_in_use, wait_port
from cluster.plan import (DEFAULT_BUCKET, DEFAULT_DASHBOARD_PORT, DEFAULT_HOST, DEFAULT_S3_PORT,
                          ClusterPlan, host_warning, node_env, plan)
from cluster.state import (MARKER_ENV, STATE_FILE, ClusterError, ClusterState, cluster_home, load_state,
                           save_state, write_private_file)

START_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0
Log = Callable[[str], None]


def find_cluster_pids(cluster_id: str, session_id: int | None = None) -> list[int]:
    """Live processes of the cluster: in its session, carrying its marker, or descending from
    one of those. Never this process or its ancestors."""
    return procs.find_pids(session_id, (MARKER_ENV, cluster_id))


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if procs.pid_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def _stop_ray(state: ClusterState, log: Log) -> None:
    """raylet first, then everything else, GCS last (ray stop's order), SIGKILL leftovers."""
    pids = find_cluster_pids(state.cluster_id, state.ray_session_id)
    pids += [p for p in state.ray_pids if p not in pids and procs.pid_alive(p)
             and procs.has_env(p, MARKER_ENV, state.cluster_id)]
    if not pids:
        return
    names = {p: " ".join(procs.cmdline(p)) for p in pids}
    raylet = [p for p in pids if "/raylet/raylet" in names[p]]
    gcs = [p for p in pids if "/gcs/gcs_server" in names[p]]
    rest = [p for p in pids if p not in raylet and p not in gcs]
    for group in (raylet, rest, gcs):
        procs.signal_all(group, signal.SIGTERM)
        _wait_gone(group, STOP_GRACE_S / 3)
    # whatever is still there, including workers the raylet spawned meanwhile
    left = set(_wait_gone(pids, 1.0)) | set(find_cluster_pids(state.cluster_id, state.ray_session_id))
    if left:
        log(f"force-killing {len(left)} Ray process(es) that ignored SIGTERM")
        procs.signal_all(left, signal.SIGKILL)
        still = _wait_gone(left, 5.0)
        if still:
            raise ClusterError(f"Ray processes still alive after SIGKILL: {still}")


def _stop_moto(state: ClusterState) -> None:
    pid = state.moto_pid
    if not procs.pid_alive(pid) or procs.cmdline(pid) != state.moto_cmdline:
        return  # gone, or the pid now belongs to someone else: leave it alone
    procs.signal_all([pid], signal.SIGTERM)
    if _wait_gone([pid], 5.0):
        procs.signal_all([pid], signal.SIGKILL)
        _wait_gone([pid], 5.0)


def _wait_dashboard(state: ClusterState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            http_json(f"{state.dashboard_url}/api/version", state.token(), timeout=3)
            return
        except Exception as exc:  # not ready yet
            last = exc
            time.sleep(0.5)
    raise ClusterError(f"dashboard {state.dashboard_url} not ready after {timeout:.0f}s: {last}")


def ray_alive(state: ClusterState) -> bool:
    """True while any process of the recorded cluster runs."""
    return bool(find_cluster_pids(state.cluster_id, state.ray_session_id or None))


def _start_moto(p: ClusterPlan, home: Path, log: Log) -> ClusterState:
    """Start moto, record the state (from here on ``down`` can clean up), create the bucket."""
    with open(home / "moto.log", "ab") as moto_log:
        moto = subprocess.Popen(p.moto_cmd, stdout=moto_log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    state = p.new_state(moto.pid)
    save_state(state)
    try:
        wait_port(p.s3_port, state.client_host, 60, process=moto)
        s3_server.create_bucket(state.bucket, state.s3_endpoint)
    except Exception as exc:
        raise ClusterError(f"S3 server on {state.s3_endpoint}: {exc}; see {home / 'moto.log'}") from exc
    log(f"S3 server (moto) on {state.s3_endpoint}, bucket s3://{state.bucket}")
    return state


def _start_ray(p: ClusterPlan, state: ClusterState, home: Path) -> None:
    """``ray start --head`` in its own session; wait for the dashboard; record the pids."""
    with open(home / "ray-start.log", "ab") as ray_log:
        starter = subprocess.Popen(p.ray_cmd, env=node_env(p), stdout=ray_log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    state.ray_session_id = starter.pid  # session leader: its pid is the session id
    save_state(state)
    try:
        rc = starter.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`ray start` did not finish in {START_TIMEOUT_S:.0f}s; "
                           f"see {home / 'ray-start.log'}")
    if rc != 0:
        raise ClusterError(f"`ray start` failed (exit {rc}); see {home / 'ray-start.log'}")
    _wait_dashboard(state, timeout=120)
    state.ray_pids = find_cluster_pids(state.cluster_id, state.ray_session_id)
    save_state(state)


def up(
    *, host: str = DEFAULT_HOST, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    s3_port: int = DEFAULT_S3_PORT, num_cpus: int | None = None, num_gpus: int | None = None,
    object_store_memory: int | None = None, bucket: str = DEFAULT_BUCKET,
    gcs_port: int | None = None, metrics_port: int | None = None,
    home: str | os.PathLike | None = None, log: Log = print,
    autoscale: FakeNodeType | None = None, idle_timeout_minutes: float = 1.0,
    secret_key: str = s3_server.TEST_SECRET_KEY,
) -> ClusterState:
    """Start the Ray head and the S3 server; return the recorded state.

    Idempotent: if the state dir records a running cluster, that state is returned and
    nothing is started. Raises ClusterError if a port is taken or a start fails (whatever
    was already started is stopped again).
    """
    existing = load_state(home)
    if existing is not None:
        if ray_alive(existing):
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
        if port_in_use(getattr(p, name), p.host):
            raise ClusterError(f"{name.replace('_', ' ')} {getattr(p, name)} is already in use; "
                               f"pick another with --{name.replace('_', '-')}")
    home_path = Path(p.home)
    home_path.mkdir(parents=True, exist_ok=True)
    # same format as `ray get-auth-token --generate`; created 0600, never readable by others
    write_private_file(Path(p.token_path), secrets.token_hex(32))
    if p.autoscaling_config:
        write_autoscaling_config(Path(p.autoscaling_config), p.autoscaling or {})
    try:
        state = _start_moto(p, home_path, log)
        _start_ray(p, state, home_path)
    except BaseException:
        log("start failed; stopping what was started")
        down(home=home, log=lambda _msg: None)
        raise
    log(f"Ray head up: dashboard {state.dashboard_url}, GCS {state.gcs_address}, "
        f"metrics :{state.metrics_port}, token auth on ({state.token_path})")
    return state


def down(*, home: str | os.PathLike | None = None, purge: bool = False, log: Log = print) -> bool:
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

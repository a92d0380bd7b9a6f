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

The modules behind it, one job each: :mod:`cluster.state` (the state file),
:mod:`cluster.plan` (ports and commands, ``--dry-run``), :mod:`cluster.lifecycle` (``up``/``down``),
:mod:`cluster.status` (``status``/``env``), on the shared helpers :mod:`cluster.procs` (``/proc``),
:mod:`cluster.net` (ports) and :mod:`cluster.s3_server` (moto). This module is their public face.

How ``down`` finds "our" processes: ``ray start`` is launched in a new session
(``setsid``), every Ray process it spawns inherits that session id and the environment
marker ``SLM_CLUSTER_ID=<uuid>``; job drivers (which Ray puts in their own sessions) keep
the marker. ``down`` signals only processes that carry the session id, the marker, or
descend from one that does (raylet first, then the rest, GCS last, as ``ray stop`` does),
then SIGKILLs what is left after a grace period. moto is stopped by its recorded pid after
checking its command line.
"""

from __future__ import annotations

from cluster.lifecycle import START_TIMEOUT_S, STOP_GRACE_S, down, find_cluster_pids, ray_alive, up
from cluster.net import free_port, port_in_use
from cluster.plan import (DEFAULT_BUCKET, DEFAULT_DASHBOARD_PORT, DEFAULT_HOST, DEFAULT_S3_PORT,
                          LOOPBACK_HOSTS, LOOPBACK_RAY_ENV, ClusterPlan, host_warning, node_env, plan)
from cluster.procs import pid_alive
from cluster.s3_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY
from cluster.state import (MARKER_ENV, STATE_FILE, TOKEN_FILE, ClusterError, ClusterState, cluster_home,
                           load_state, ray_temp_dir, save_state, write_private_file)
from cluster.status import env_vars, format_env, format_status, status

__all__ = [
    "up", "down", "status", "format_status", "env_vars", "format_env", "plan", "ClusterPlan",
    "ClusterState", "ClusterError", "load_state", "save_state", "cluster_home", "ray_temp_dir",
    "host_warning", "node_env", "find_cluster_pids", "ray_alive", "pid_alive", "free_port",
    "port_in_use", "write_private_file", "DEFAULT_HOST", "DEFAULT_DASHBOARD_PORT", "DEFAULT_S3_PORT",
    "DEFAULT_BUCKET", "LOOPBACK_HOSTS", "LOOPBACK_RAY_ENV", "MARKER_ENV", "STATE_FILE", "TOKEN_FILE",
    "TEST_ACCESS_KEY", "TEST_SECRET_KEY", "TEST_REGION", "START_TIMEOUT_S", "STOP_GRACE_S",
]

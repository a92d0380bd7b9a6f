"""What the local cluster looks like: ``slm-cluster status`` (nodes, resources, S3, jobs) and
``slm-cluster env`` (the variables a client shell needs)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from cluster.lifecycle import find_cluster_pids
from cluster.net import http_json
from cluster.plan import LOOPBACK_HOSTS, LOOPBACK_RAY_ENV
from cluster.s3_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY, s3_client
from cluster.state import ClusterError, ClusterState, cluster_home, load_state


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
    for name, fetch in (("nodes", _nodes), ("cluster_status", _cluster_status), ("jobs", _jobs)):
        try:
            result.update(fetch(state.dashboard_url, token))
        except Exception as exc:
            result["errors"].append(f"{name}: {exc}")
    result["s3"] = _s3_status(state)
    return result


def _nodes(url: str, token: str | None) -> dict[str, Any]:
    """The nodes and the total resources of the alive ones (dashboard state API)."""
    nodes, total = [], {}
    for node in http_json(f"{url}/api/v0/nodes?limit=100", token)["data"]["result"]["result"]:
        resources = {k: v for k, v in node.get("resources_total", {}).items() if not k.startswith("node:")}
        nodes.append({"node_id": node.get("node_id"), "ip": node.get("node_ip"), "state": node.get("state"),
                      "is_head": node.get("is_head_node"), "resources": resources})
        if node.get("state") == "ALIVE":
            for k, v in resources.items():
                total[k] = total.get(k, 0) + v
    return {"nodes": nodes, "resources": total}


def _cluster_status(url: str, token: str | None) -> dict[str, Any]:
    return {"cluster_status": http_json(f"{url}/api/cluster_status?format=1", token)["data"]["clusterStatus"]}


def _jobs(url: str, token: str | None) -> dict[str, Any]:
    return {"jobs": [{"submission_id": j.get("submission_id"), "status": j.get("status"),
                      "entrypoint": j.get("entrypoint")} for j in http_json(f"{url}/api/jobs/", token)]}


def _safe_pids(state: ClusterState) -> list[int]:
    try:
        return find_cluster_pids(state.cluster_id, state.ray_session_id or None)
    except OSError:
        return []


def _s3_status(state: ClusterState) -> dict[str, Any]:
    info: dict[str, Any] = {"endpoint": state.s3_endpoint, "bucket": state.bucket,
                            "pid": state.moto_pid, "reachable": False, "bucket_exists": False}
    try:
        client = s3_client(state.s3_endpoint, connect_timeout=3, read_timeout=5,
                           retries={"max_attempts": 1})
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

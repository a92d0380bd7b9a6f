"""`slm-cluster up` → `status` → `ray job submit` from a shell (only the env that
`slm-cluster env` prints) → `down`; afterwards nothing `up` started is alive and no port is bound.

Runs on this machine next to other Ray clusters (e.g. the session fixture): its own state dir,
temp dir and free ports, and `down` stops only its own processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import local
from cluster.net import free_port, listening

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent


def _cli(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env["SLM_CLUSTER_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_up_status_submit_down(tmp_path):
    home = tmp_path / "slm home"  # a space in the path: env quoting must hold
    dash, s3, metrics = free_port(), free_port(), free_port()
    up = _cli(home, "up", "--dashboard-port", str(dash), "--s3-port", str(s3),
              "--metrics-port", str(metrics), "--num-cpus", "2", "--num-gpus", "0",
              "--object-store-memory", str(200 * 1024**2), "--bucket", "slm-demo-test")
    state_file = home / local.STATE_FILE
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = local.load_state(home)
        assert state is not None and state.dashboard_port == dash and state.s3_port == s3
        assert state.host == "127.0.0.1" and state.metrics_port == metrics
        assert len(state.temp_dir) < 40 and os.stat(state.token_path).st_mode & 0o077 == 0

        again = _cli(home, "up", "--dashboard-port", str(dash), "--s3-port", str(s3))
        assert again.returncode == 0 and "already up" in again.stdout

        status = _cli(home, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        out = status.stdout
        assert "local cluster: up" in out
        assert "Nodes (1):" in out and "ALIVE head" in out and "CPU=2" in out
        assert f"S3 endpoint: http://127.0.0.1:{s3} reachable; bucket s3://slm-demo-test exists" in out
        assert f":{metrics}/metrics" in out
        assert "error:" not in out

        env_out = _cli(home, "env")
        assert env_out.returncode == 0
        assert f"export RAY_ADDRESS=http://127.0.0.1:{dash}" in env_out.stdout
        assert f"export SLM_METRICS_PORT={metrics}" in env_out.stdout

        # A bare shell: no RAY_*/AWS_* inherited, and a HOME without ~/.ray/auth_token, so the
        # job can only succeed through what `slm-cluster env` printed.
        shell_home = tmp_path / "home"
        shell_home.mkdir()
        script = (
            f'eval "$({BIN}/slm-cluster env)" && '
            f"ray job submit --address http://127.0.0.1:{dash} -- "
            "python -c \"import os; print('hello-from-job', os.environ['AWS_ENDPOINT_URL'])\""
        )
        submit = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=180,
            env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(shell_home),
                 "SLM_CLUSTER_HOME": str(home)})
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert f"hello-from-job http://127.0.0.1:{s3}" in submit.stdout
        assert not (shell_home / ".ray" / "auth_token").exists()

        # without the token the dashboard refuses the same request
        denied = subprocess.run(
            ["bash", "-c", f"ray job list --address http://127.0.0.1:{dash}"],
            capture_output=True, text=True, timeout=60,
            env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(shell_home)})
        assert denied.returncode != 0

        info = json.loads(_cli(home, "status", "--json").stdout)
        assert [j["status"] for j in info["jobs"]] == ["SUCCEEDED"]
        assert info["resources"]["CPU"] == 2
    finally:
        saved = local.load_state(home)
        down = _cli(home, "down", "--purge")
    assert down.returncode == 0, down.stdout + down.stderr
    assert saved is not None
    assert not state_file.exists()
    alive = [p for p in saved.ray_pids + [saved.moto_pid] if local.pid_alive(p)]
    assert not alive, f"processes left: {alive}"
    assert local.find_cluster_pids(saved.cluster_id, saved.ray_session_id) == []
    ports = [saved.dashboard_port, saved.s3_port, saved.gcs_port, saved.metrics_port,
             saved.client_server_port, saved.dashboard_agent_port,
             saved.autoscaler_metric_port, saved.dashboard_metric_port]
    assert [p for p in ports if listening(p)] == []
    assert not Path(saved.temp_dir).exists()

    again = _cli(home, "down")
    assert again.returncode == 0 and "nothing is up" in again.stdout

"""The shared infrastructure helpers (cluster/procs.py, net.py, plan.py) and the
quiet-job settings (multimodal/ray_logs.py), on real processes and sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from cluster import net, procs
from cluster.local import ClusterPlan, ClusterState, plan
from multimodal import ray_logs


@pytest.fixture
def marked_child():
    """A sleeping child (with a grandchild) that carries a unique environment marker."""
    marker = uuid.uuid4().hex
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TEST_MARKER": marker},
                             start_new_session=True)
    yield child, marker
    procs.signal_all(procs.find_pids(env=("TEST_MARKER", marker)), 9)
    child.wait(timeout=10)


def test_find_pids_by_marker_and_session_includes_descendants(marked_child):
    child, marker = marked_child
    for _ in range(100):  # the grandchild needs a moment to start
        found = procs.find_pids(env=("TEST_MARKER", marker))
        if len(found) == 2:
            break
        import time

        time.sleep(0.05)
    assert child.pid in found and len(found) == 2
    assert procs.find_pids(session=child.pid) == found  # start_new_session: its pid is the session
    assert os.getpid() not in procs.find_pids(session=os.getsid(0))  # never this process
    assert procs.has_env(child.pid, "TEST_MARKER", marker)
    assert not procs.has_env(child.pid, "TEST_MARKER", "other")
    tree = procs.descendants(child.pid, procs.children_map())
    assert sorted(tree) == found


def test_proc_readers_on_this_process_and_a_gone_one():
    me = os.getpid()
    stat = procs.proc_stat(me)
    assert stat is not None and stat.alive and stat.ppid == os.getppid()
    assert procs.cmdline(me)[0] == sys.executable or "python" in procs.cmdline(me)[0]
    sum(range(2_000_000))
    assert procs.cpu_seconds(me) > 0
    rss, pss = procs.mem_mb(me)
    assert rss > 10 and pss > 0
    busy, idle = procs.host_cpu_seconds()
    assert busy > 0 and idle > 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not procs.pid_alive(gone.pid) and procs.cmdline(gone.pid) == []
    assert procs.cpu_seconds(gone.pid) == 0.0 and procs.process_role(gone.pid) == "gone"
    assert procs.process_role(me) == "driver"


def test_ports_free_listening_and_waiting():
    port = net.free_port()
    assert not net.listening(port) and not net.port_in_use(port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert net.listening(port) and net.port_in_use(port)
        net.wait_port(port, timeout=2)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    with pytest.raises(TimeoutError, match="exited"):
        net.wait_port(net.free_port(), timeout=30, process=exited)  # no 30 s wait: the server is gone


def test_plan_is_typed_and_becomes_the_state(tmp_path):
    p = plan(home=tmp_path, num_cpus=3, gcs_port=16380, s3_port=19000)
    assert isinstance(p, ClusterPlan)
    assert "--num-cpus=3" in p.ray_cmd and "--port=16380" in p.ray_cmd
    assert p.moto_cmd[-2:] == ["-p", "19000"] and p.s3_endpoint == "http://127.0.0.1:19000"
    state = p.new_state(moto_pid=1234)
    assert isinstance(state, ClusterState)
    assert (state.gcs_port, state.num_cpus, state.moto_pid, state.moto_cmdline) == (16380, 3, 1234, p.moto_cmd)
    assert state.gcs_address == "127.0.0.1:16380" and state.ray_pids == []


def test_quiet_job_settings(monkeypatch):
    env = ray_logs.quiet_job_env()
    assert env[ray_logs.QUIET_ENV] == "1"
    assert "constructor arguments in the object store" in env["RAY_DEDUP_LOGS_SKIP_REGEX"]
    assert (os.path.exists(env["RAY_DATA_LOGGING_CONFIG"]))  # relative to the repo (the job's working dir)
    monkeypatch.delenv(ray_logs.QUIET_ENV, raising=False)
    assert not ray_logs.is_quiet() and ray_logs.ray_init_kwargs() == {} and ray_logs.train_logging_config() is None
    monkeypatch.setenv(ray_logs.QUIET_ENV, "1")
    assert ray_logs.ray_init_kwargs()["logging_config"].log_level == "WARNING"
    assert ray_logs.train_logging_config().log_level == "WARNING"

    class Context:
        print_on_execution_start = True

    context = Context()
    ray_logs.quiet_data_context(context)
    assert context.print_on_execution_start is False

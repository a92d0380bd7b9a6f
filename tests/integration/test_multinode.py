"""The training job on a multi-node cluster that Ray's own autoscaler grows and shrinks.

`slm-cluster up --autoscale-nodes 3` on this machine: a 0-CPU head and no worker nodes; Ray's
real (v1) autoscaler with its fake multi-node provider starts worker raylets when work is pending
and removes them when idle (cluster/fake_nodes.py). The job is submitted with `ray job submit`,
as a user would. The nodes' S3 secret is a random sentinel, so the tests can prove it never
reaches Ray's logs or job records. Stopped by `down`, which kills only this cluster's processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster import local
from cluster.fake_nodes import FakeNodeType
from multimodal.data.demo_corpus import make_demo_corpus
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = f"sentinel-secret-{uuid.uuid4().hex}"
NODE_CPUS = 1
# one Train worker per 1-CPU node (2 x 0.75 do not fit one), the decode actor beside one of them
JOB_FLAGS = ["--preset", "tiny", "--num-workers", "2", "--cpus-per-worker", "0.75",
             "--set", "data.decode_cpus=0.25", "--set", "data.vocab_size=300",
             "--batch-size", "4", "--val-every", "4", "--max-failures", "3"]


class FakeCluster:
    """The running cluster, and a shell environment that reaches it (as `slm-cluster env` prints)."""

    def __init__(self, state: local.ClusterState):
        self.state = state
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))},
                    **local.env_vars(state=state), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        self.bucket = state.bucket

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO)

    def submit(self, name: str, *extra: str, wait: bool = True) -> subprocess.CompletedProcess:
        command = ["ray", "job", "submit", "--working-dir", ".", "--submission-id", name]
        command += [] if wait else ["--no-wait"]
        command += ["--", "python", "jobs/train_multimodal.py",
                    "--data", f"s3://{self.bucket}/shards/train", "--val-data", f"s3://{self.bucket}/shards/val",
                    "--storage-path", f"s3://{self.bucket}/runs", "--name", name, *JOB_FLAGS, *extra]
        return self.run(*command)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.state.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="x", aws_secret_access_key="x")

    def result(self, name: str) -> dict:
        body = self.s3().get_object(Bucket=self.bucket, Key=f"runs/{name}/result.json")["Body"].read()
        return json.loads(body)

    def checkpoints(self, name: str) -> list[str]:
        listing = self.s3().list_objects_v2(Bucket=self.bucket, Prefix=f"runs/{name}/checkpoint_step_")
        return sorted({o["Key"].split("/")[2] for o in listing.get("Contents", [])
                       if o["Key"].endswith("model.safetensors")})

    def python(self, code: str) -> str:
        """Run ``code`` in a driver connected to the cluster's GCS; returns its last output line."""
        out = subprocess.run([sys.executable, "-c", code], env={**self.env, "RAY_ADDRESS": self.state.gcs_address},
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    def alive_worker_nodes(self) -> list[dict]:
        nodes = json.loads(self.python(
            "import json, ray; ray.init(log_to_driver=False); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))"))
        return [n for n in nodes if "node:__internal_head__" not in n["Resources"]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("fake-cluster")
    state = local.up(home=home, dashboard_port=free_port(), s3_port=free_port(), bucket="fake-multinode",
                     object_store_memory=200 * 1024**2, secret_key=SECRET, idle_timeout_minutes=0.25,
                     autoscale=FakeNodeType(resources={"CPU": NODE_CPUS, "object_store_memory": 200 * 1024**2},
                                            max_workers=3),
                     log=lambda _msg: None)
    try:
        fake = FakeCluster(state)
        corpus = make_demo_corpus(tmp_path_factory.mktemp("corpus"), {"image": 16, "audio": 16, "video": 16,
                                                                       "text": 8},
                                  splits={"train": 0.75, "val": 0.25}, seed=5)
        for split, manifest in corpus.items():
            packed = fake.run(sys.executable, "-m", "multimodal.data.make_shards", str(manifest), "--out",
                              f"s3://{fake.bucket}/shards/{split}", "--target-shard-size", "40000", "--quiet")
            assert packed.returncode == 0, packed.stderr
        yield fake
    finally:
        local.down(home=home, purge=False, log=lambda _msg: None)
        assert local.find_cluster_pids(state.cluster_id, state.ray_session_id) == []


def _wait(predicate, timeout: float, what: str, poll: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_job_scales_out_from_zero_trains_on_two_nodes_and_scales_back(cluster):
    assert cluster.alive_worker_nodes() == []  # a 0-CPU head and no worker nodes
    done = cluster.submit("scale-out", "--max-steps", "8")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "waiting for 2 cpu_worker node(s)" in log and "cluster ready" in log
    result = cluster.result("scale-out")
    assert result["steps"] == 8 and result["world_size"] == 2
    assert len(result["nodes"]) >= 2  # one Train worker on each of two autoscaled nodes
    assert "checkpoint_step_0000008" in cluster.checkpoints("scale-out")

    # the request was withdrawn: the autoscaler removes the idle nodes (idle timeout 15 s)
    _wait(lambda: cluster.alive_worker_nodes() == [], 120, "idle worker nodes to be removed", poll=5)


def test_preflight_refuses_what_no_node_type_holds_and_gives_up_after_the_scale_timeout(cluster):
    too_big = cluster.submit("too-big", "--max-steps", "4", "--cpus-per-worker", "2")
    assert too_big.returncode != 0
    assert "a Train worker needs 2 CPU, more than any node type of this cluster has (cpu_worker (1 CPU" \
        in too_big.stdout + too_big.stderr
    assert cluster.checkpoints("too-big") == []

    assert cluster.alive_worker_nodes() == []  # scaled back in by the first test
    impatient = cluster.submit("impatient", "--max-steps", "4", "--scale-timeout", "1")
    log = impatient.stdout + impatient.stderr
    assert impatient.returncode != 0
    # nodes take several seconds to start: one second is not enough
    assert "the autoscaler did not provide 2 cpu_worker node(s) in 1 s" in log, log[-3000:]
    assert cluster.checkpoints("impatient") == []


def test_no_secret_in_rays_logs_or_job_records(cluster):
    """Runs after a job: the S3 secret the nodes hold appears nowhere Ray writes or serves."""
    hits = []
    for path in Path(cluster.state.temp_dir).rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and SECRET.encode() in path.read_bytes():
                hits.append(str(path))
        except OSError:
            continue
    assert hits == []
    jobs = cluster.run("ray", "job", "list", "--address", cluster.state.dashboard_url)
    assert jobs.returncode == 0 and "scale-out" in jobs.stdout
    assert SECRET not in jobs.stdout
    import urllib.request

    request = urllib.request.Request(f"{cluster.state.dashboard_url}/api/jobs/",
                                     headers={"Authorization": f"Bearer {cluster.state.token()}"})
    records = urllib.request.urlopen(request, timeout=30).read().decode()
    assert "scale-out" in records and SECRET not in records


def _raylet_pid(node_id: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet/raylet") and f"--node_id={node_id}".encode() in args:
            return int(entry.name)
    raise AssertionError(f"no raylet process for node {node_id}")


def test_a_lost_node_is_replaced_and_the_run_resumes_from_its_checkpoint(cluster):
    name = "lose-a-node"
    started = cluster.submit(name, "--max-steps", "16", wait=False)
    assert started.returncode == 0, started.stderr
    first = _wait(lambda: cluster.checkpoints(name), 400, "the first checkpoint")
    # a node that runs a Train worker, found through Ray's state API
    found = cluster.python(
        "import json, ray; from ray.util.state import list_actors; ray.init(log_to_driver=False); "
        "print(json.dumps([a.node_id for a in list_actors(filters=[('class_name', '=', 'RayTrainWorker'), "
        "('state', '=', 'ALIVE')])]))")
    victim = json.loads(found)[0]
    os.kill(_raylet_pid(victim), signal.SIGKILL)

    finished = cluster.run("ray", "job", "logs", "--follow", name, timeout=700)
    status = cluster.run("ray", "job", "status", name)
    assert "succeeded" in status.stdout.lower(), (status.stdout + finished.stdout)[-4000:]
    result = cluster.result(name)
    assert result["steps"] == 16
    assert victim not in result["nodes"]  # the restarted group ran on a replacement node
    resumed = result["resumed_from_steps"]
    # resumed from the checkpoint seen before the kill, or a later one: no step lost beyond it
    assert resumed and resumed[0] >= int(first[-1].rsplit("_", 1)[1])

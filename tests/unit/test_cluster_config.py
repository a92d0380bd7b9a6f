"""Offline checks of the cluster configs: ray-config.yaml (Ray's own validation), the KubeRay
manifests (required fields), and the local cluster CLI's pure parts (env output, host warning)."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster import cli, local

ROOT = Path(__file__).resolve().parents[2]
RAY_CONFIG = ROOT / "ray-config.yaml"
KUBERAY = ROOT / "cluster" / "kuberay"
RAY_VERSION = "2.60.0"


# ------------------------------------------------------------------ ray-config.yaml (AWS)

@pytest.fixture(scope="module")
def ray_config() -> dict:
    return yaml.safe_load(RAY_CONFIG.read_text())


def test_ray_config_passes_ray_validation(ray_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(ray_config))
    validate_config(prepared)  # raises on schema / head_node_type / min-max errors
    assert prepared["provider"]["type"] == "aws"


def test_ray_config_gpu_workers_scale_from_zero(ray_config):
    types = ray_config["available_node_types"]
    head = ray_config["head_node_type"]
    gpu_types = [name for name, spec in types.items() if spec["resources"].get("GPU", 0) >= 1]
    assert gpu_types and head not in gpu_types
    for name in gpu_types:
        assert types[name]["min_workers"] == 0
        assert types[name]["max_workers"] >= 1
        assert types[name]["node_config"]["InstanceType"].startswith("g5.")
        assert "IamInstanceProfile" in types[name]["node_config"]  # S3 via instance profile


def test_ray_config_image_matches_pinned_ray(ray_config):
    import ray

    image = ray_config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "ray-ml" not in image
    assert image.split(":")[1].startswith(f"{ray.__version__}-") and image.endswith("-gpu")


def test_ray_config_installs_project_and_syncs_it(ray_config):
    assert "." in ray_config["file_mounts"].values()
    assert any("pip install" in cmd and "slm-cluster" in cmd for cmd in ray_config["setup_commands"])
    assert "**/.venv" in ray_config["rsync_exclude"]


def test_ray_config_token_auth_and_private_dashboard(ray_config):
    head_start = " ".join(ray_config["head_start_ray_commands"])
    worker_start = " ".join(ray_config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (SSH)
    assert "~/.ray/auth_token" in ray_config["file_mounts"]


def test_ray_config_has_no_aws_keys():
    text = RAY_CONFIG.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for key in ("aws_access_key_id", "aws_secret_access_key", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "aws_session_token"):
        assert key not in text


# ------------------------------------------------------------------ KubeRay manifests

def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def _check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams", {}), dict)
    containers = head["template"]["spec"]["containers"]
    assert containers and all(c["name"] and c["image"] for c in containers)
    images = [c["image"] for c in containers]
    groups = spec["workerGroupSpecs"]
    assert groups
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names))
    gpu_groups = 0
    for group in groups:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", group["groupName"])
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        wcontainers = group["template"]["spec"]["containers"]
        assert wcontainers and all(c["name"] and c["image"] for c in wcontainers)
        images += [c["image"] for c in wcontainers]
        limits = wcontainers[0]["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            gpu_groups += 1
            assert wcontainers[0]["image"].endswith("-gpu")
        for pod_spec in (head["template"]["spec"], group["template"]["spec"]):
            assert pod_spec["serviceAccountName"] == "slm-s3-access"  # S3 via IRSA
    assert gpu_groups >= 1
    for image in images:  # image tags consistent with rayVersion
        repo, tag = image.rsplit(":", 1)
        assert repo == "rayproject/ray" and tag.startswith(f"{RAY_VERSION}-py311")


def test_rayjob_manifest():
    docs = _docs("rayjob.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "RayJob"}
    sa = kinds["ServiceAccount"]
    assert sa["apiVersion"] == "v1"
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    job = kinds["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/train_multimodal.py"]
    for flag in ("--data", "--storage-path", "--name", "--num-workers", "--use-gpu"):
        assert flag in argv
    assert argv[argv.index("--data") + 1].startswith("s3://")
    assert argv[argv.index("--storage-path") + 1].startswith("s3://")
    assert int(argv[argv.index("--num-workers") + 1]) <= sum(
        g["maxReplicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and "working_dir" in runtime_env
    _check_cluster_spec(spec["rayClusterSpec"])


def test_raycluster_manifest_matches_rayjob():
    (cluster,) = _docs("raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    _check_cluster_spec(cluster["spec"])
    job = next(d for d in _docs("rayjob.yaml") if d["kind"] == "RayJob")
    assert cluster["spec"] == job["spec"]["rayClusterSpec"]


def test_manifests_have_no_aws_keys():
    for path in KUBERAY.glob("*.yaml"):
        text = path.read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
        assert not re.search(r"AKIA[0-9A-Z]{16}", text)


# ------------------------------------------------------------------ local cluster CLI (no processes)

def _state(tmp_path: Path, host: str = "127.0.0.1") -> local.ClusterState:
    return local.ClusterState(
        cluster_id="x", home=str(tmp_path), host=host, node_ip="127.0.0.1",
        dashboard_port=8265, gcs_port=6380, s3_port=9000, metrics_port=8081,
        client_server_port=10002, dashboard_agent_port=52366, temp_dir="/tmp/slm-ray-x",
        token_path=str(tmp_path / "auth token"), bucket="slm-demo", ray_session_id=0,
        ray_pids=[], moto_pid=0, moto_cmdline=[])


def test_env_vars_and_format(tmp_path):
    variables = local.env_vars(state=_state(tmp_path))
    assert variables["RAY_ADDRESS"] == "http://127.0.0.1:8265"
    assert variables["RAY_AUTH_MODE"] == "token"
    assert variables["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "auth token")
    assert variables["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert variables["AWS_ACCESS_KEY_ID"] == "testing"
    assert variables["SLM_BUCKET"] == "slm-demo" and variables["SLM_METRICS_PORT"] == "8081"
    text = local.format_env(variables)
    lines = text.splitlines()
    assert lines[0].startswith("unset RAY_AUTH_TOKEN")
    assert all(re.fullmatch(r"export [A-Z_]+=.+", line) for line in lines[1:])
    # the lines are valid shell: sourcing them reproduces the values (incl. the space)
    out = subprocess.run(["bash", "-c", text + 'printf %s "$RAY_AUTH_TOKEN_PATH"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == str(tmp_path / "auth token")


def test_env_when_down(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "env"]) == 1
    assert "not up" in capsys.readouterr().err


def test_token_prints_this_clusters_token(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "token"]) == 1
    assert "not up" in capsys.readouterr().err
    state = _state(tmp_path)
    Path(state.token_path).write_text("abc123\n")
    (tmp_path / local.STATE_FILE).write_text(state.to_json())
    assert cli.main(["--home", str(tmp_path), "token"]) == 0
    assert capsys.readouterr().out == "abc123\n"


def test_status_and_down_when_nothing_is_up(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "status"]) == 3
    assert "down" in capsys.readouterr().out
    assert cli.main(["--home", str(tmp_path), "down"]) == 0
    assert "nothing is up" in capsys.readouterr().out


def test_host_warning():
    assert local.host_warning("127.0.0.1") is None
    assert local.host_warning("localhost") is None
    warning = local.host_warning("0.0.0.0")
    assert warning and warning.startswith("WARNING") and "0.0.0.0" in warning


def test_up_dry_run_warns_for_non_loopback(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "up", "--host", "0.0.0.0", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err
    assert "--dashboard-host=0.0.0.0" in captured.out and "-H 0.0.0.0" in captured.out
    assert not (tmp_path / local.STATE_FILE).exists()


def test_up_dry_run_loopback_plan(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "up", "--dry-run", "--dashboard-port", "18265",
                     "--s3-port", "19000", "--num-cpus", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "--dashboard-host=127.0.0.1" in captured.out
    assert "--dashboard-port=18265" in captured.out and "--num-cpus=2" in captured.out
    assert "--node-ip-address=127.0.0.1" in captured.out
    temp_dir = local.ray_temp_dir(tmp_path.resolve())
    assert f"--temp-dir={temp_dir}" in captured.out and len(temp_dir) < 30


# ------------------------------------------------------------------ scale-out shape (issue: multi-node)

def test_ray_config_worker_types_and_least_privilege_profile(ray_config):
    import json

    types = ray_config["available_node_types"]
    head = ray_config["head_node_type"]
    assert types[head]["resources"].get("CPU", 1) == 0  # no training work on the head
    workers = {name: spec for name, spec in types.items() if name != head}
    gpu = [n for n, s in workers.items() if s["resources"].get("GPU", 0) >= 1]
    cpu = [n for n, s in workers.items() if not s["resources"].get("GPU") and s["resources"].get("CPU", 0) >= 1]
    assert gpu and cpu  # Ray Train on GPU nodes, Ray Data decoding on CPU nodes
    for spec in workers.values():
        assert spec["min_workers"] == 0 and spec["max_workers"] >= 1
        assert spec["node_config"]["IamInstanceProfile"]["Name"] == "slm-worker"
    assert sum(s["max_workers"] for s in workers.values()) >= ray_config["max_workers"] > 0
    assert 0 < ray_config["idle_timeout_minutes"] <= 30
    policy = json.loads((ROOT / "cluster" / "iam" / "slm-worker-policy.json").read_text())
    actions = {a for st in policy["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str)
                                                         else st["Action"])}
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    writes = [st for st in policy["Statement"] if "s3:PutObject" in st["Action"]]
    assert writes and all(r.endswith("/runs/*") for st in writes for r in [st["Resource"]])
    reads = {st["Resource"] for st in policy["Statement"] if st["Action"] == "s3:GetObject"}
    assert any(r.endswith("/shards/*") for r in reads)


def _cluster_specs() -> list[dict]:
    job = next(d for d in _docs("rayjob.yaml") if d["kind"] == "RayJob")
    (cluster,) = _docs("raycluster.yaml")
    return [job["spec"]["rayClusterSpec"], cluster["spec"]]


def test_kuberay_autoscales_a_gpu_and_a_cpu_group_from_zero():
    for spec in _cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["autoscalerOptions"]["version"] == "v2"  # node groups readable by the preflight
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        limits = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"] for name, g in groups.items()}
        gpu = [n for n, lim in limits.items() if int(lim.get("nvidia.com/gpu", 0)) >= 1]
        cpu = [n for n, lim in limits.items() if "nvidia.com/gpu" not in lim]
        assert gpu and cpu
        for group in groups.values():
            assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] >= 1


def test_kuberay_manifests_pass_the_kubernetes_schema():
    """Built-in kinds (ServiceAccount) and every Ray pod template (as a v1 PodTemplate) are checked
    by kubernetes-validate against Kubernetes' own OpenAPI schema, strictly (unknown fields fail).
    The RayJob/RayCluster fields around them are checked by the tests above: no package on the
    registries ships KubeRay's CRD schema."""
    import kubernetes_validate

    version = "1.33"
    for doc in _docs("rayjob.yaml") + _docs("raycluster.yaml"):
        if doc["apiVersion"] == "v1":
            kubernetes_validate.validate(doc, version, strict=True)
    for spec in _cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray-pod"},
                            "template": group["template"]}
            kubernetes_validate.validate(pod_template, version, strict=True)
    broken = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
              "template": {"spec": {"containers": [{"name": "c", "image": "i", "resource": {}}]}}}
    with pytest.raises(kubernetes_validate.ValidationError):  # the check does catch a typo
        kubernetes_validate.validate(broken, version, strict=True)

"""The preflight's capacity planning: packing bundles onto nodes and node types, sizing defaults,
and reading the v1 autoscaler's node types (pure functions; no Ray cluster)."""

from __future__ import annotations

import pytest

from multimodal.capacity import (DECODE_RESOURCE, Capacity, CapacityError, NodeType, decoder_pool, default_cpus,
                                 monitor_config_path, pack, plan, types_from_launcher_config)

HEAD = {"CPU": 0.0}
GPU_NODE = NodeType("gpu_worker", {"CPU": 4.0, "GPU": 1.0}, 4)
CPU_NODE = NodeType("cpu_worker", {"CPU": 8.0}, 2)


def test_pack_opens_one_gpu_node_per_gpu_worker_and_puts_decoders_in_the_room_left():
    bundles = [{"CPU": 1.0, "GPU": 1.0}] * 2 + [{"CPU": 1.0}] * 3
    assert pack(bundles, [HEAD], [GPU_NODE, CPU_NODE]) == {"gpu_worker": 2}


def test_pack_prefers_the_cheapest_node_type_for_cpu_bundles():
    assert pack([{"CPU": 2.0}] * 3, [HEAD], [GPU_NODE, CPU_NODE]) == {"cpu_worker": 1}


def test_pack_respects_max_counts_and_what_is_already_up():
    assert pack([{"CPU": 1.0, "GPU": 1.0}] * 5, [HEAD], [GPU_NODE]) is None  # at most 4 GPU nodes
    up = [HEAD, {"CPU": 4.0, "GPU": 1.0}]
    assert pack([{"CPU": 1.0, "GPU": 1.0}] * 2, up, [GPU_NODE]) == {"gpu_worker": 1}
    assert pack([{"CPU": 0.5}] * 4, [{"CPU": 2.0}]) == {}  # fits what is up: nothing to start


def test_plan_on_an_autoscaling_cluster_counts_the_nodes_to_start():
    capacity = Capacity(True, "test", [HEAD], [GPU_NODE, CPU_NODE])
    job = plan(capacity, {"CPU": 1.0, "GPU": 1.0}, 2, {"CPU": 1.0}, 1)
    assert job.new_nodes == {"gpu_worker": 2}
    assert job.bundles() == [{"CPU": 1.0, "GPU": 1.0}] * 2 + [{"CPU": 1.0}]


def test_a_worker_no_node_type_can_hold_fails_at_once():
    capacity = Capacity(True, "test", [HEAD], [GPU_NODE, CPU_NODE])
    with pytest.raises(CapacityError, match=r"needs 1 CPU, 8 GPU, more than any node type .*gpu_worker"):
        plan(capacity, {"CPU": 1.0, "GPU": 8.0}, 1, {"CPU": 1.0}, 1)


def test_more_workers_than_the_maximum_fails_at_once():
    capacity = Capacity(True, "test", [HEAD], [GPU_NODE])
    with pytest.raises(CapacityError, match="at the node types' maximum counts"):
        plan(capacity, {"CPU": 1.0, "GPU": 1.0}, 6, {"CPU": 1.0}, 1)


def test_fixed_cluster_is_judged_by_what_is_up_per_node():
    two_nodes = Capacity(False, "fixed size", [{"CPU": 2.0}, {"CPU": 2.0}])
    assert plan(two_nodes, {"CPU": 1.5}, 2, {"CPU": 0.5}, 2).new_nodes == {}
    # 4 CPUs in total, but a 3-CPU worker fits on neither node
    with pytest.raises(CapacityError, match="more than any node of this cluster"):
        plan(two_nodes, {"CPU": 3.0}, 1, {"CPU": 0.5}, 1)
    with pytest.raises(CapacityError, match=r"\(4 CPU up, fixed size\)"):
        plan(two_nodes, {"CPU": 1.0}, 4, {"CPU": 1.0}, 1)


def test_unknown_limits_are_left_to_the_wait():
    job = plan(Capacity(True, "autoscaler v1", [HEAD], None), {"CPU": 64.0}, 8, {"CPU": 1.0}, 1)
    assert job.new_nodes == {} and len(job.bundles()) == 9


@pytest.mark.parametrize("cpus, workers, decoders, gpu, expected", [
    (2, 2, 1, False, 0.5),    # `slm-cluster up` on this 2-core machine + the README's --num-workers 2
    (4, 2, 1, False, 1.0),    # room for one CPU each
    (1, 2, 2, False, 0.25),   # never below a quarter CPU
    (0.5, 2, 1, True, 1.0),   # GPU workers keep one CPU each
])
def test_default_cpus(cpus, workers, decoders, gpu, expected):
    assert default_cpus(cpus, workers, decoders, gpu) == expected


def test_types_from_launcher_config_skips_the_head_and_caps_by_max_workers():
    config = {"max_workers": 3, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 0}},
                                       "gpu_worker": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 4},
                                       "cpu_worker": {"resources": {"CPU": 8}, "max_workers": 2}}}
    types = {t.name: t for t in types_from_launcher_config(config)}
    assert set(types) == {"gpu_worker", "cpu_worker"}
    assert types["gpu_worker"].max_count == 3 and types["gpu_worker"].resources == {"CPU": 4.0, "GPU": 1.0}
    assert types["cpu_worker"].max_count == 2


def test_monitor_config_path_matches_this_clusters_gcs_port(tmp_path):
    def process(pid: int, *args: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(args).encode() + b"\0")

    monitor = "/venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py"
    process(10, "python", monitor, "--gcs-address=127.0.0.1:6379", "--autoscaling-config=/other.yaml")
    process(11, "python", monitor, "--gcs-address=127.0.0.1:41000", "--autoscaling-config=/ours.yaml")
    process(12, "python", "train.py", "--gcs-address=127.0.0.1:41000", "--autoscaling-config=/no.yaml")
    assert str(monitor_config_path("10.0.0.5:41000", tmp_path)) == "/ours.yaml"
    assert monitor_config_path("10.0.0.5:5000", tmp_path) is None


def test_fake_cluster_config_passes_rays_launcher_schema():
    import json
    from pathlib import Path

    import jsonschema
    import ray

    from cluster.fake_nodes import FakeNodeType, autoscaling_config

    config = autoscaling_config("127.0.0.1:41000", {"CPU": 0}, [FakeNodeType(resources={"CPU": 1}, max_workers=3)],
                                idle_timeout_minutes=0.25)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["gcs_address"] == "127.0.0.1:41000"  # else new nodes look on :6379
    assert config["provider"]["disable_node_updaters"] is True
    assert {t.name: t.max_count for t in types_from_launcher_config(config)} == {"cpu_worker": 3}


DECODE_NODE = NodeType("cpu_worker", {"CPU": 16.0, DECODE_RESOURCE: 16.0}, 4)


def test_decoder_pool_grows_over_the_cpus_the_trainers_leave_free():
    capacity = Capacity(False, "fixed size", [{"CPU": 4.0}])
    pool = decoder_pool(capacity, {"CPU": 0.5}, 2, 1.0, 1)
    assert (pool.min_size, pool.max_size, pool.bundle) == (1, 3, {"CPU": 1.0})
    assert not pool.on_cpu_nodes
    assert decoder_pool(capacity, {"CPU": 0.5}, 2, 1.0, 1, max_decoders=2).max_size == 2
    assert decoder_pool(capacity, {"CPU": 2.0}, 2, 1.0, 1).max_size == 1  # none free: the minimum


def test_decoders_ask_for_cpu_nodes_when_the_cluster_declares_them():
    capacity = Capacity(True, "test", [HEAD], [GPU_NODE, DECODE_NODE])
    pool = decoder_pool(capacity, {"CPU": 1.0, "GPU": 1.0}, 2, 1.0, 2)
    assert pool.on_cpu_nodes and pool.bundle == {"CPU": 1.0, DECODE_RESOURCE: 1.0}
    assert (pool.min_size, pool.max_size) == (2, 64)  # 4 nodes x 16 CPUs, none on the GPU nodes
    job = plan(capacity, {"CPU": 1.0, "GPU": 1.0}, 2, pool.bundle, pool.min_size)
    assert job.new_nodes == {"gpu_worker": 2, "cpu_worker": 1}  # the decoders open a CPU node


def test_the_clusters_cpu_worker_type_offers_the_decode_resource():
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "ray-config.yaml").read_text())
    types = types_from_launcher_config(config)
    assert any(t.resources.get(DECODE_RESOURCE) for t in types if not t.resources.get("GPU"))

"""The decoders of raw shards: a pool that grows by default, on CPU-only nodes when the cluster
has them. A two-node cluster (``ray.cluster_utils.Cluster``: a head without the decode
resource, a "CPU node" with it) runs in a child process, apart from the session's Ray; its
removal stops only its own two nodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from multimodal.data.make_shards import make_shards
from multimodal.data.tokenizer import train_tokenizer_from_dataset
from tests.media import GOOD_IMAGES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]
REPO = Path(__file__).resolve().parents[2]

CHILD = r'''
import json, sys, time
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_tasks
from multimodal import capacity as cap
from multimodal.config import preset
from multimodal.data.loader import iter_training_batches
from multimodal.data.pipeline import build_dataset

shards, tokenizer, temp_dir = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "temp_dir": temp_dir, "include_dashboard": True,
                                                        "dashboard_host": "127.0.0.1"})
try:
    cluster.add_node(num_cpus=2, resources={cap.DECODE_RESOURCE: 2})
    ray.init(address=cluster.address, log_to_driver=False)
    decode_node = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get(cap.DECODE_RESOURCE))
    pool = cap.decoder_pool(cap.discover(), {"CPU": 1.0}, 1, 1.0, 1)
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = build_dataset(shards, preset("tiny").media, tokenizer, concurrency=(pool.min_size, pool.max_size),
                            num_cpus=pool.bundle["CPU"], resources={cap.DECODE_RESOURCE: pool.bundle[cap.DECODE_RESOURCE]})
    rows = sum(stats.rows for _, stats in iter_training_batches(dataset.iterator(), 4, preset("tiny").media, device="cpu"))
    time.sleep(3)  # task events reach the state API about a second after the tasks end
    tasks = [t for t in list_tasks(detail=True, limit=1000, raise_on_missing_output=False)
             if "decode_units" in t.name]
    print("RESULT " + json.dumps({"min": pool.min_size, "max": pool.max_size, "bundle": pool.bundle, "rows": rows,
                                  "tasks": len(tasks), "on_decode_node": sum(t.node_id == decode_node for t in tasks)}))
finally:
    ray.shutdown()
    cluster.shutdown()
'''


def test_decoders_autoscale_and_run_on_the_cpu_node(media_dir, tmp_path):
    manifest = media_dir / "decode_nodes.jsonl"
    manifest.write_text("".join(json.dumps({"text": f"image {n}", "image": n}) + "\n"
                                for n in list(GOOD_IMAGES) * 4))
    shards = tmp_path / "shards"
    make_shards(str(manifest), str(shards), target_shard_bytes=20_000, row_group_bytes=5_000, progress=None)
    tokenizer = str(tmp_path / "tokenizer.json")
    train_tokenizer_from_dataset(str(shards), 300, tokenizer)
    temp_dir = f"/tmp/rdn{uuid.uuid4().hex[:6]}"  # this cluster's own session dir (AF_UNIX path limit)
    try:
        env = {**os.environ, "RAY_raylet_start_wait_time_s": "120"}  # a loaded machine registers slowly
        done = subprocess.run([sys.executable, "-c", CHILD, str(shards), tokenizer, temp_dir], cwd=REPO,
                              capture_output=True, text=True, timeout=420, env=env)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    # the default pool is a range over the CPU node's CPUs, and every decode task ran on that node
    assert (result["min"], result["max"]) == (1, 2)
    assert result["bundle"] == {"CPU": 1.0, "decode": 1.0}
    assert result["rows"] == 4 * len(GOOD_IMAGES)
    assert result["tasks"] >= 1 and result["on_decode_node"] == result["tasks"]

"""Benchmark the hub: routing accuracy, exact match through the hub, calibration, latency, load.

    python jobs/bench_hub.py --config demo_out/hub/hub.yaml --test demo_out/hub/shards/mixed/test

Deploys the config to Ray Serve on a free port of 127.0.0.1 (the running cluster at --address /
$SLM_RAY_GCS_ADDRESS, else a private local Ray), then on the held-out mixed test split, all over
HTTP through the hub's ingress:

- every expert answers every sample (``POST /v1/experts/<name>/generate``): caption exact match of
  the oracle (the expert trained on the sample's domain), of random routing (expected), of the best
  single expert, and of routing by confidence alone over all experts, calibrated and raw;
- every sample through the hub (``POST /v1/generate``): the expert it routes to (the best score,
  answered or refused) and its exact match, the answers above the threshold and the refusals;
  95 % intervals (Wilson for rates, a paired bootstrap for the ratio to the oracle);
- expected calibration error per expert before/after the temperature (validation and test);
- one request at a time, hub and direct call to the oracle's expert *interleaved* (the same HTTP
  path and ingress, no routing for the direct one; the order alternates per sample) so load drifts
  on a shared machine hit both alike: p50 of each and the overhead;
- p50/p99 and requests/s of ``--requests`` requests at ``--concurrency``; failures;
- each bad input answered 4xx with the next good request served.
Prints one JSON report (also to ``--json``) with ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.net import free_port  # noqa: E402

MEDIA = ("image", "audio", "video")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_hub", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="hub YAML (e.g. from jobs/hub_demo.py)")
    parser.add_argument("--test", required=True, help="held-out mixed test shards")
    parser.add_argument("--oracle", default="image=shapes,audio=notes,video=motion",
                        help="the right expert per media group (default: the hub demo's)")
    parser.add_argument("--prefilter", choices=("config", "modalities", "none"), default="config",
                        help="override routing.prefilter (none: broadcast every request)")
    parser.add_argument("--score-tokens", type=int, default=None,
                        help="override routing.score_tokens (0: every asked expert generates the whole answer)")
    parser.add_argument("--max-samples", type=int, default=120, help="test samples (default 120)")
    parser.add_argument("--requests", type=int, default=300, help="requests in the load test")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients in the load test")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--address", default=os.environ.get("SLM_RAY_GCS_ADDRESS"),
                        help="Ray GCS address (default: $SLM_RAY_GCS_ADDRESS from `slm-cluster env`, else a private local Ray)")
    parser.add_argument("--json", default=None, help="also write the report here")
    return parser


def post(url: str, body: bytes, timeout: float = 120) -> tuple[int, dict, float]:
    """(status, JSON answer, client-side milliseconds)."""
    started = time.perf_counter()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, payload = error.code, json.loads(error.read() or b"{}")
    return status, payload, (time.perf_counter() - started) * 1000


def test_samples(uri: str, max_samples: int) -> list[dict]:
    """Rows of the test shards that carry exactly one medium: bytes, caption, group."""
    from multimodal.data.shard_reader import iter_shard_rows

    samples = []
    for rows in iter_shard_rows(uri, 64, max_samples):
        for row in rows:
            present = [m for m in MEDIA if row.get(m)]
            if len(present) == 1:
                samples.append({"group": present[0], "media": row[present[0]], "text": row["text"]})
    return samples


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def wilson(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a rate."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre, half = (p + z * z / (2 * n)), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(float((centre - half) / (1 + z * z / n)), 4), round(float((centre + half) / (1 + z * z / n)), 4)]


def ratio_interval(hub: np.ndarray, oracle: np.ndarray, rounds: int = 2000) -> list[float]:
    """95 % paired-bootstrap interval of mean(hub) / mean(oracle) over the samples."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(hub), size=(rounds, len(hub)))
    ratios = hub[picks].mean(1) / np.maximum(oracle[picks].mean(1), 1e-9)
    return [round(float(np.percentile(ratios, 2.5)), 4), round(float(np.percentile(ratios, 97.5)), 4)]


def matches(answer: dict, sample: dict) -> bool:
    return (answer.get("text") or "").strip().lower() == sample["text"].strip().lower()


def expert_matrix(url: str, samples: list[dict], names: list[str], body) -> tuple[np.ndarray, np.ndarray]:
    """Every expert on every sample through ``/v1/experts/<name>/generate``: correct, mean_logprob."""
    correct = np.zeros((len(samples), len(names)), bool)
    logprob = np.zeros((len(samples), len(names)))
    for i, sample in enumerate(samples):
        for j, name in enumerate(names):
            status, answer, _ = post(f"{url}/v1/experts/{name}/generate", body(sample))
            if status != 200:
                raise RuntimeError(f"expert {name} failed on sample {i}: {status} {answer}")
            correct[i, j], logprob[i, j] = matches(answer, sample), answer["mean_logprob"][name]
    return correct, logprob


def offline_routing(correct: np.ndarray, logprob: np.ndarray, right: np.ndarray, names: list[str],
                    temperatures: dict[str, float]) -> tuple[dict, np.ndarray]:
    """Exact match of the routing policies computed from the matrix; and the calibrated scores."""
    from multimodal.hub.calibration import confidence

    rows = np.arange(len(right))
    calibrated = np.stack([confidence(logprob[:, j], temperatures[n]) for j, n in enumerate(names)], 1)
    raw = np.exp(np.minimum(logprob, 0))
    best = int(correct.mean(0).argmax())
    return {"oracle": float(correct[rows, right].mean()), "random": float(correct.mean()),
            "best_single_expert": float(correct[:, best].mean()), "best_single_expert_name": names[best],
            "broadcast_calibrated_confidence": float(correct[rows, calibrated.argmax(1)].mean()),
            "broadcast_raw_confidence": float(correct[rows, raw.argmax(1)].mean()),
            "broadcast_picks_oracle_expert": float((calibrated.argmax(1) == right).mean())}, calibrated


def calibration_report(config, names, correct, logprob, calibrated) -> dict:
    from multimodal.hub.calibration import expected_calibration_error, load_calibration

    report = {}
    for j, (name, expert) in enumerate(zip(names, config.experts)):
        stored = load_calibration(expert.model)
        report[name] = {
            "temperature": stored.temperature if stored else 1.0,
            "validation_samples": stored.samples if stored else 0,
            "validation_ece_before": stored.ece_before if stored else None,
            "validation_ece_after": stored.ece_after if stored else None,
            "test_ece_before": expected_calibration_error(np.exp(np.minimum(logprob[:, j], 0)), correct[:, j]),
            "test_ece_after": expected_calibration_error(calibrated[:, j], correct[:, j]),
            "modalities": stored.modalities if stored else None}
    return report


def through_hub(url: str, samples: list[dict], names: list[str], oracle: dict[str, str],
                correct: np.ndarray, body) -> dict:
    """Each sample through the hub and, interleaved, directly to its oracle expert (same path)."""
    routed, answered, picked, hub_ms, direct_ms, asked = [], [], [], [], [], []
    profile: dict[str, list[dict]] = {"hub": [], "direct": []}
    for i, sample in enumerate(samples):
        calls = [("hub", f"{url}/v1/generate"), ("direct", f"{url}/v1/experts/{oracle[sample['group']]}/generate")]
        for kind, address in (calls if i % 2 == 0 else calls[::-1]):
            status, answer, ms = post(address, body(sample))
            if status != 200:
                raise RuntimeError(f"{kind} call failed on sample {i}: {status} {answer}")
            (hub_ms if kind == "hub" else direct_ms).append(ms)
            profile[kind].append({"client": ms, "http_proxy": ms - answer["latency_ms"], **answer["timing_ms"],
                                  "serve_hops": answer["timing_ms"]["experts"] - answer["timing_ms"]["generate_max"]})
            if kind == "hub":
                hub = answer
        choice = max(sorted(hub["scores"]), key=lambda n: hub["scores"][n])  # the routing decision
        routed.append(bool(correct[i, names.index(choice)]))
        picked.append(choice == oracle[sample["group"]])
        asked.append(len(hub["scores"]))
        if hub["expert"] is not None:
            answered.append(matches(hub, sample))
    hub_p50, direct_p50 = percentile(hub_ms, 50), percentile(direct_ms, 50)
    return {"routed": np.array(routed), "picks_oracle_expert": float(np.mean(picked)),
            "answered_exact_match": float(np.mean(answered)) if answered else None,
            "answered": len(answered), "refused": len(samples) - len(answered),
            "experts_asked_mean": float(np.mean(asked)),
            "latency": {"hub_p50_ms": hub_p50, "direct_p50_ms": direct_p50,
                        "hub_p99_ms": percentile(hub_ms, 99), "direct_p99_ms": percentile(direct_ms, 99),
                        "hub_overhead_p50": hub_p50 / direct_p50 - 1,
                        "paired_overhead_median": float(np.median(np.array(hub_ms) / np.array(direct_ms)) - 1),
                        "profile_p50_ms": {kind: {key: round(percentile([p[key] for p in rows], 50), 3)
                                                  for key in rows[0]} for kind, rows in profile.items()}}}


def load_test(url: str, bodies: list[bytes], concurrency: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda b: post(url + "/v1/generate", b), bodies))
    wall = time.perf_counter() - started
    latencies = [ms for _, _, ms in results]
    return {"requests": len(bodies), "concurrency": concurrency,
            "failed": sum(1 for status, answer, _ in results if status != 200 or answer.get("failed")),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "requests_per_s": len(bodies) / wall}


def post_oversized(url: str, size: int) -> tuple[int, dict, float]:
    """Declare a ``size``-byte body and send only its start: the hub must refuse from the header
    (sending it all would race the server's early 413 and close)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(size))
        connection.endheaders(b'{"prompt": "' + b"x" * 1000)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}"), 0.0
    finally:
        connection.close()


def bad_inputs(url: str, good: bytes, max_body_bytes: int) -> dict:
    cases = {"malformed_json": b'{"prompt": ', "bad_base64": b'{"image": "@@"}',
             "undecodable_media": json.dumps({"video": base64.b64encode(os.urandom(900)).decode()}).encode(),
             "oversized_body": None, "unknown_field": good[:-1] + b', "beam": 4}'}
    faults = {}
    for case, payload in cases.items():
        status, answer, _ = (post(url + "/v1/generate", payload) if payload is not None
                             else post_oversized(url + "/v1/generate", max_body_bytes + 10))
        next_status, _, _ = post(url + "/v1/generate", good)
        faults[case] = {"status": status, "error": answer.get("error"), "next_good_status": next_status}
    return faults


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray

    from multimodal.hub.calibration import load_calibration
    from multimodal.hub.config import load_hub_config
    from multimodal.hub.service import deploy, down

    oracle = dict(pair.split("=") for pair in args.oracle.split(","))
    config = load_hub_config(args.config)
    if args.prefilter != "config":
        config.routing.prefilter = args.prefilter
    if args.score_tokens is not None:
        config.routing.score_tokens = args.score_tokens
    ray.init(**({"address": args.address} if args.address else {"num_cpus": 4, "include_dashboard": False}),
             log_to_driver=False)
    loadavg_before = os.getloadavg()
    url = deploy(config, port=free_port(), say=lambda m: print(m, flush=True))
    names = [e.name for e in config.experts]
    stored = {e.name: load_calibration(e.model) for e in config.experts}
    temperatures = {name: c.temperature if c else 1.0 for name, c in stored.items()}
    samples = test_samples(args.test, args.max_samples)
    print(f"{len(samples)} test samples; experts {names}", flush=True)

    def body(sample: dict) -> bytes:
        return json.dumps({sample["group"]: base64.b64encode(sample["media"]).decode(),
                           "max_new_tokens": args.max_new_tokens}).encode()

    correct, logprob = expert_matrix(url, samples, names, body)
    right = np.array([names.index(oracle[s["group"]]) for s in samples])
    routing, calibrated = offline_routing(correct, logprob, right, names, temperatures)
    hub = through_hub(url, samples, names, oracle, correct, body)
    oracle_hits = correct[np.arange(len(samples)), right]
    routing.update({
        "hub_routed_exact_match": float(hub["routed"].mean()),
        "hub_routed_vs_oracle": float(hub["routed"].mean() / max(oracle_hits.mean(), 1e-9)),
        "hub_routed_vs_oracle_ci95": ratio_interval(hub["routed"].astype(float), oracle_hits.astype(float)),
        "oracle_ci95": wilson(int(oracle_hits.sum()), len(samples)),
        "hub_routed_ci95": wilson(int(hub["routed"].sum()), len(samples)),
        "hub_picks_oracle_expert": hub["picks_oracle_expert"], "experts_asked_mean": hub["experts_asked_mean"],
        "threshold": config.routing.threshold, "hub_answered": hub["answered"], "hub_refused": hub["refused"],
        "hub_answered_exact_match": hub["answered_exact_match"]})
    load = load_test(url, [body(samples[i % len(samples)]) for i in range(args.requests)], args.concurrency)
    report = {
        "date": time.strftime("%Y-%m-%d"), "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(), "experts": names, "prefilter": config.routing.prefilter,
        "score_tokens": config.routing.score_tokens,
        "samples": len(samples), "routing": routing,
        "calibration": calibration_report(config, names, correct, logprob, calibrated),
        "latency_one_at_a_time": hub["latency"], "load": load,
        "bad_inputs": bad_inputs(url, body(samples[0]), config.server.max_body_bytes)}
    down()
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

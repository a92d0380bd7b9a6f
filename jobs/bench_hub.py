"""Benchmark the hub: routing accuracy, exact match through the hub, calibration, latency, load.

    python jobs/bench_hub.py --config demo_out/hub/hub.yaml --test demo_out/hub/shards/mixed/test

Deploys the config to Ray Serve on a free port of 127.0.0.1 (the running cluster at --address /
RAY_ADDRESS, else a private local Ray), then on the held-out mixed test split:

- every expert answers every sample (Serve handle calls): caption exact match of the oracle (the
  expert trained on the sample's domain), of random routing (expected), of the best single expert,
  and of routing by confidence alone over all experts (broadcast), calibrated and raw;
- every sample through the hub over HTTP: exact match, and how often it picked the oracle's expert;
- expected calibration error per expert before/after the temperature (validation and test);
- p50/p99 latency and requests/s of ``--requests`` requests at ``--concurrency``; failures;
- p50 of one request at a time through the hub vs decoding + calling the right expert directly;
- each bad input answered 4xx with the next good request served.
Prints one JSON report (also to ``--json``) with ``os.getloadavg()``: the machine may be shared.
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

MEDIA = ("image", "audio", "video")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_hub", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="hub YAML (e.g. from jobs/hub_demo.py)")
    parser.add_argument("--test", required=True, help="held-out mixed test shards")
    parser.add_argument("--oracle", default="image=shapes,audio=notes,video=motion",
                        help="the right expert per media group (default: the hub demo's)")
    parser.add_argument("--max-samples", type=int, default=120, help="test samples (default 120)")
    parser.add_argument("--requests", type=int, default=300, help="requests in the load test")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients in the load test")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--address", default=os.environ.get("SLM_RAY_GCS_ADDRESS"),
                        help="Ray GCS address (default: $SLM_RAY_GCS_ADDRESS from `slm-cluster env`, else a private local Ray)")
    parser.add_argument("--json", default=None, help="also write the report here")
    return parser


def post(url: str, body: bytes, timeout: float = 120) -> tuple[int, dict, float]:
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray
    from ray import serve

    from multimodal.hub.calibration import confidence, expected_calibration_error, load_calibration
    from multimodal.hub.config import APP_NAME, load_hub_config
    from multimodal.hub.requests import GenerateRequest, decode_query, spec_key
    from multimodal.hub.service import deploy, register_experts

    oracle = dict(pair.split("=") for pair in args.oracle.split(","))
    config = load_hub_config(args.config)
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    url = deploy(config, port=port, say=lambda m: print(m, flush=True))
    names = [e.name for e in config.experts]
    specs = register_experts(config, say=lambda m: None)["specs"]
    temperatures = {n: load_calibration(e.model).temperature if load_calibration(e.model) else 1.0
                    for n, e in zip(names, config.experts)}
    samples = test_samples(args.test, args.max_samples)
    print(f"{len(samples)} test samples; experts {names}", flush=True)

    def body(sample: dict, **extra) -> bytes:
        return json.dumps({sample["group"]: base64.b64encode(sample["media"]).decode(),
                           "max_new_tokens": args.max_new_tokens, **extra}).encode()

    # --- every expert on every sample, directly through its Serve handle ---------------------
    handles = {n: serve.get_deployment_handle(f"expert-{n}", app_name=APP_NAME).options(multiplexed_model_id=n)
               for n in names}

    def direct(sample: dict, name: str) -> dict:
        request = GenerateRequest.model_validate({sample["group"]: base64.b64encode(sample["media"]).decode(),
                                                  "max_new_tokens": args.max_new_tokens})
        query = decode_query(request, {spec_key(specs[name]): specs[name]})
        payload = {"prompt": None, "max_new_tokens": args.max_new_tokens,
                   "media": query.for_spec(spec_key(specs[name]))}
        return handles[name].generate.remote(payload).result()

    correct = np.zeros((len(samples), len(names)), bool)
    logprob = np.zeros((len(samples), len(names)))
    for i, sample in enumerate(samples):
        for j, name in enumerate(names):
            answer = direct(sample, name)
            correct[i, j] = answer["text"].strip().lower() == sample["text"].strip().lower()
            logprob[i, j] = answer["mean_logprob"]
    right = np.array([names.index(oracle[s["group"]]) for s in samples])
    rows = np.arange(len(samples))
    calibrated = np.stack([confidence(logprob[:, j], temperatures[n]) for j, n in enumerate(names)], 1)
    raw = np.exp(np.minimum(logprob, 0))
    routing = {
        "oracle": float(correct[rows, right].mean()),
        "random": float(correct.mean()),
        "best_single_expert": float(correct.mean(0).max()),
        "best_single_expert_name": names[int(correct.mean(0).argmax())],
        "broadcast_calibrated_confidence": float(correct[rows, calibrated.argmax(1)].mean()),
        "broadcast_raw_confidence": float(correct[rows, raw.argmax(1)].mean()),
        "broadcast_picks_oracle_expert": float((calibrated.argmax(1) == right).mean()),
    }
    calibration = {}
    for j, (name, expert) in enumerate(zip(names, config.experts)):
        stored = load_calibration(expert.model)
        calibration[name] = {
            "temperature": temperatures[name],
            "validation_ece_before": stored.ece_before if stored else None,
            "validation_ece_after": stored.ece_after if stored else None,
            "test_ece_before": expected_calibration_error(raw[:, j], correct[:, j]),
            "test_ece_after": expected_calibration_error(calibrated[:, j], correct[:, j]),
            "modalities": stored.modalities if stored else None}

    # --- through the hub, one at a time: exact match, expert picked, latency vs direct -------
    hub_correct, hub_picked, hub_ms, direct_ms, unanswered = [], [], [], [], 0
    for i, sample in enumerate(samples):
        status, answer, ms = post(url + "/v1/generate", body(sample))
        hub_ms.append(ms)
        if status != 200 or answer["expert"] is None:
            unanswered += 1
            hub_correct.append(False)
            hub_picked.append(False)
            continue
        hub_correct.append((answer["text"] or "").strip().lower() == sample["text"].strip().lower())
        hub_picked.append(answer["expert"] == oracle[sample["group"]])
        started = time.perf_counter()
        direct(sample, oracle[sample["group"]])
        direct_ms.append((time.perf_counter() - started) * 1000)
    routing["hub_exact_match"] = float(np.mean(hub_correct))
    routing["hub_picks_oracle_expert"] = float(np.mean(hub_picked))
    routing["hub_unanswered"] = unanswered
    routing["hub_vs_oracle"] = routing["hub_exact_match"] / routing["oracle"] if routing["oracle"] else None

    # --- bounded concurrent load ----------------------------------------------------------
    bodies = [body(samples[i % len(samples)]) for i in range(args.requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda b: post(url + "/v1/generate", b), bodies))
    wall = time.perf_counter() - started
    latencies = [ms for _, _, ms in results]
    load = {"requests": args.requests, "concurrency": args.concurrency,
            "failed": sum(1 for status, answer, _ in results if status != 200 or answer.get("failed")),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "requests_per_s": args.requests / wall}

    # --- bad inputs, each followed by a good request ----------------------------------------
    good = body(samples[0])
    bad_inputs = {"malformed_json": b'{"prompt": ', "bad_base64": b'{"image": "@@"}',
                  "undecodable_media": json.dumps({"video": base64.b64encode(os.urandom(900)).decode()}).encode(),
                  "oversized_body": b'{"prompt": "' + b"x" * (config.server.max_body_bytes + 10) + b'"}',
                  "unknown_field": good[:-1] + b', "beam": 4}'}
    faults = {}
    for case, payload in bad_inputs.items():
        status, answer, _ = post(url + "/v1/generate", payload)
        next_status, _, _ = post(url + "/v1/generate", good)
        faults[case] = {"status": status, "error": answer.get("error"), "next_good_status": next_status}

    report = {
        "date": time.strftime("%Y-%m-%d"), "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
        "experts": names, "samples": len(samples), "routing": routing, "calibration": calibration,
        "latency_one_at_a_time": {"hub_p50_ms": percentile(hub_ms, 50), "direct_p50_ms": percentile(direct_ms, 50),
                                  "hub_overhead_p50": percentile(hub_ms, 50) / percentile(direct_ms, 50) - 1},
        "load": load, "bad_inputs": faults,
    }
    serve.delete(APP_NAME)
    serve.shutdown()
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

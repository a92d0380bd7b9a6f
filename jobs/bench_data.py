"""Data pipeline benchmark: samples/s per modality, Ray Data pipeline vs plain-Python readers.

Every reader takes the *same* Parquet shards from the same S3 server through the *same* code
(``ParquetUnitDecoder``: pyarrow reads, Pillow / soundfile+torchaudio / PyAV + tokenizer, then
``loader.training_collate`` + ``loader.model_batch``; torch intra-op threads = 1 everywhere) to
model-ready batches (dense float32, normalised pixels); ``multimodal/data/benchmark/readers.py``:

- baseline: one process, row group after row group, no Ray, no transport;
- DataLoader: a plain ``torch.utils.data.DataLoader`` with ``--loader-workers`` processes (an
  ``IterableDataset`` splitting the read units over them), start-up included;
- Ray: ``build_dataset(...)`` with ``--concurrency`` decoders, consumed on the driver with
  ``loader.iter_training_batches``; steady state (after the first ``--warmup`` of the rows) and
  end to end (build_dataset to last batch: actor start-up included) are both reported;
- ``--predecoded``: one process reading the same corpus packed by ``slm-make-shards --decode``.

The readers run one after another per modality (baseline, DataLoader, Ray), so each row of the
table shares its moment's machine load. CPU: the CPU seconds every process of this Ray session,
the driver and the S3 server used during Ray's measured window, by role, plus the host's busy
and idle seconds. Memory: every 2 s the RSS/PSS of this driver plus this Ray session's processes
and the object store bytes in use; a flat curve means Ray Data's backpressure works.

    python jobs/bench_data.py                       # starts moto S3 + a 2-CPU local Ray itself
    python jobs/bench_data.py --modalities image,video --samples 6000 --loader-workers 2,3
    ray job submit --working-dir . -- python jobs/bench_data.py --samples 3000

Without ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` it starts ``python -m moto.server`` on a free
loopback port (test credentials) and stops it at the end. Generated corpora are cached in
``--cache-dir``; each run uploads them to a fresh bucket. Under ``ray job submit`` it joins that
cluster. Output: a table on stdout, progress on stderr, and a final ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import s3_server  # noqa: E402
from cluster.procs import cpu_seconds as _cpu_seconds, session_raylet_pid  # noqa: E402
from cluster.s3_server import ensure_s3  # noqa: E402
from multimodal import fs  # noqa: E402
from multimodal.config import MediaSpec, preset  # noqa: E402
from multimodal.data.benchmark import corpus, readers  # noqa: E402
from multimodal.data.benchmark.sampler import MemorySampler  # noqa: E402

MODALITY_CHOICES = ("image", "audio", "video")
# default samples per modality: sized so the Ray measured window is tens of seconds on 2 cores
DEFAULT_SAMPLES = {"image": 40000, "audio": 2000, "video": 4800}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--samples", type=int, default=None, help="rows per modality (default: image %(image)d, audio "
        "%(audio)d, video %(video)d)" % DEFAULT_SAMPLES)
    add("--modalities", default="image,audio,video", help="comma list of image,audio,video (default all three)")
    add("--num-cpus", type=int, default=2, help="logical CPUs of the local Ray cluster started here (default 2)")
    add("--concurrency", default="3", help="Ray decoders at most at once: N, or MIN,MAX (an autoscaling pool with "
        "--decode-actors; default 3: one more than the cores, as a PyAV decoder leaves ~20-25%% of its core idle)")
    add("--decode-actors", action="store_true", help="decode in an actor pool (build_dataset(decode_actors=True)) "
        "instead of tasks in Ray's reusable workers")
    add("--actor-cpus", type=float, default=1.0, help="num_cpus per decode actor (build_dataset lowers it so one "
        "logical CPU stays free; default 1.0)")
    add("--loader-workers", default="2,3", help="DataLoader worker counts to time, comma list; '' = none (default 2,3)")
    add("--ray-read", action="store_true", help="read with ray.data.read_parquet tasks instead of in the decode "
        "actors (build_dataset(read_in_decoder=False))")
    add("--decode-batch", type=int, default=None, help="rows decoded per step (unit_batch_rows, default 256)")
    add("--read-cpus", type=float, default=None, help="num_cpus per Parquet read task (with --ray-read)")
    add("--batch-size", type=int, default=32, help="rows per training batch on every side (default 32)")
    add("--object-store-mb", type=int, default=256, help="object store of the local Ray cluster (default 256)")
    add("--warmup", type=float, default=0.1, help="fraction of rows before Ray's steady clock starts (default 0.1)")
    add("--cache-dir", default=os.path.join(tempfile.gettempdir(), "slm-bench-data-cache"),
        help="generated media + local shards, cached between runs (default %(default)s)")
    add("--preset", default="slm-63m", help="MediaSpec of this model preset (default slm-63m)")
    add("--image-px", type=int, default=256, help="source JPEG side (default 256)")
    add("--video-px", type=int, default=128, help="source video side (default 128)")
    add("--video-frames", type=int, default=24, help="frames per source MP4 (default 24)")
    add("--audio-seconds", type=float, default=4.0, help="source clip length (default 4.0)")
    add("--shard-mb", type=float, default=16.0, help="target shard MB (default 16: moto copies the whole object "
        "for every ranged GET, so its CPU cost grows with the shard size; real S3 serves ranges off-box)")
    add("--bucket", default=None, help="S3 bucket to use (default: a new one)")
    add("--skip-baseline", action="store_true", help="skip the single-process baseline")
    add("--read-blocks", type=int, default=None, help="override_num_blocks for --ray-read (default: one per "
        "shard; 0 = Ray's default, which reads a small dataset in ONE task)")
    add("--read-bin-mb", type=int, default=8, help="RAY_DATA_PARQUET_BIN_PACKING_BYTES in MiB for --ray-read "
        "(Ray's 128 MiB packs a small dataset into one block); 0 = Ray's default (default 8)")
    add("--block-mb", type=int, default=16, help="DataContext.target_max_block_size in MiB; 0 = Ray's (default 16)")
    add("--stats", action="store_true", help="print Ray Data's per-operator stats to stderr")
    add("--skip-ray", action="store_true", help="only the Ray-free readers")
    add("--warm-ray-data", action="store_true", help="run one tiny dataset before timing, so Ray Data's "
        "per-cluster actors are up, as on a cluster that has run a job before (Ray e2e then excludes them)")
    add("--predecoded", action="store_true", help="also time one process reading the corpus packed with "
        "slm-make-shards --decode PRESET (cached)")
    add("--pack-workers", type=int, default=1, help="decode processes for the pre-decoded pack (default 1)")
    args = parser.parse_args(argv)
    try:
        args.concurrency = tuple(int(x) for x in str(args.concurrency).split(","))
        args.loader_workers = [int(x) for x in str(args.loader_workers).split(",") if x.strip()]
    except ValueError:
        parser.error("--concurrency and --loader-workers take integers (N or MIN,MAX; a comma list)")
    if len(args.concurrency) not in (1, 2) or min(args.concurrency + tuple(args.loader_workers) or (1,)) < 1:
        parser.error("--concurrency is N or MIN,MAX >= 1; --loader-workers counts are >= 1")
    args.concurrency = args.concurrency[0] if len(args.concurrency) == 1 else args.concurrency
    return args


# --------------------------------------------------------------------------------- S3 and data

def create_bucket(name: str) -> None:
    import boto3

    s3_server.create_bucket(name, client=boto3.client("s3", endpoint_url=fs.s3_endpoint(),
                                                      region_name=fs.s3_region()))



def ray_pipeline(uri: str, spec: MediaSpec, tok_json: str, samples: int, raylet_pid, gcs_address,
                 args, extra_pids: tuple[int, ...] = ()) -> dict:
    """``build_dataset`` consumed into model-ready batches, with memory and CPU sampled."""
    from multimodal.data.pipeline import build_dataset, resolve_shards

    sampler = MemorySampler(raylet_pid, gcs_address, extra_pids=extra_pids)
    sampler.start()
    start = time.perf_counter()
    blocks = args.read_blocks if args.read_blocks is not None else len(resolve_shards(uri)[2])
    env = dict(fs.aws_public_env_vars())
    if args.read_bin_mb:
        env["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = str(args.read_bin_mb * 1024**2)
    optional = {k: v for k, v in (("unit_batch_rows", args.decode_batch), ("read_num_cpus", args.read_cpus)) if v}
    dataset = build_dataset(uri, spec, tok_json, concurrency=args.concurrency, num_cpus=args.actor_cpus,
                            batch_size=args.batch_size, override_num_blocks=blocks or None,
                            runtime_env={"env_vars": env} if args.ray_read else None, read_in_decoder=not args.ray_read,
                            decode_actors=args.decode_actors, **optional)
    warm_rows = max(int(samples * args.warmup), args.batch_size)
    out = readers.stream_ray(dataset, spec, args.batch_size, warm_rows, lambda t: setattr(sampler, "mark", t))
    sampler.stop()
    if args.stats:
        log("Ray Data stats:\n" + dataset.stats())
    return {**out, "total_s": out["end"] - start, "first_batch_s": out["first_at"] - start,
            "mem": sampler.summary(), "cpu": sampler.cpu_breakdown()}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def start_ray(args) -> dict:
    """Join ``RAY_ADDRESS``'s cluster or start a local one; what the report needs to know of it."""
    import ray
    from ray.data import DataContext

    info = {"started": False, "temp_dir": None}
    env = dict(fs.aws_public_env_vars())
    if args.read_bin_mb:  # read on the driver (planning) and in the listing/read tasks
        os.environ["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = env["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = \
            str(args.read_bin_mb * 1024**2)
    if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        info["temp_dir"] = tempfile.mkdtemp(prefix="rbd", dir="/tmp")  # short: AF_UNIX path limit
        ray.init(num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * 1024**2, include_dashboard=False,
                 log_to_driver=False, _temp_dir=info["temp_dir"], runtime_env={"env_vars": env})
        info["started"] = True
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("BENCH_PROGRESS") == "1"
    if args.block_mb:
        ctx.target_max_block_size = args.block_mb * 1024**2
    if args.warm_ray_data:  # Ray Data's per-cluster actors (stats, autoscaling), as after a first job
        started = time.perf_counter()
        ray.data.range(4, override_num_blocks=2).map_batches(lambda b: b).materialize()
        info["ray_data_warmup_s"] = round(time.perf_counter() - started, 1)
        log(f"Ray Data's session actors started in {info['ray_data_warmup_s']}s (--warm-ray-data)")
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    info.update(cpus=ray.cluster_resources().get("CPU", 0),
                store_mb=ray.cluster_resources().get("object_store_memory", 0) / 1024**2,
                raylet_pid=session_raylet_pid(session_dir), gcs_address=ray.get_runtime_context().gcs_address)
    log(f"Ray: {info['cpus']:g} logical CPUs, object store {info['store_mb']:.0f} MiB, session {session_dir}, "
        f"raylet pid {info['raylet_pid']} ({'started here' if info['started'] else 'existing cluster'})")
    return info


def _cpu_of(fn, moto) -> tuple[tuple, dict]:
    """``fn()``'s result and the CPU seconds this process (and the S3 server) used meanwhile."""
    before = (_cpu_seconds(os.getpid()), _cpu_seconds(moto.pid) if moto else 0.0)
    out = fn()
    cpu = {"driver": round(_cpu_seconds(os.getpid()) - before[0], 2)}
    if moto is not None:
        cpu["s3 server"] = round(_cpu_seconds(moto.pid) - before[1], 2)
    return out, cpu


def measure(m: str, uri: str, raw_dir: Path, samples: int, spec: MediaSpec, tok: str, args, ray_info, moto,
            bucket: str) -> dict:
    """Every reader over one modality's corpus, one after another."""
    r: dict = {"samples": samples}
    if not args.skip_baseline:
        (rows, secs), r["baseline_cpu_s"] = _cpu_of(lambda: readers.raw_decode(uri, spec, tok, args.batch_size,
                                                                                args.decode_batch), moto)
        r.update(baseline_rows=rows, baseline_s=round(secs, 2), baseline_per_s=round(rows / secs, 1))
        log(f"{m}: baseline {rows} rows in {secs:.1f}s = {rows / secs:.1f}/s, CPU s {r['baseline_cpu_s']}")
    for workers in args.loader_workers:
        rows, secs = readers.dataloader_read(uri, spec, tok, args.batch_size, workers, args.decode_batch)
        r[f"dataloader{workers}_per_s"] = round(rows / secs, 1)
        log(f"{m}: DataLoader x{workers}: {rows} rows in {secs:.1f}s = {rows / secs:.1f}/s (start-up included)")
    if args.predecoded:
        pre_dir, pack_s = corpus.cached_predecoded(raw_dir, args.preset, tok, _params(args), args.pack_workers, log)
        pre_uri = f"s3://{bucket}/bench/{m}-predecoded"
        _, nbytes = corpus.upload(pre_dir, pre_uri)
        (rows, secs), r["predecoded_cpu_s"] = _cpu_of(lambda: readers.predecoded_read(pre_uri, spec, args.batch_size),
                                                      moto)
        r.update(predecoded_per_s=round(rows / secs, 1), predecoded_mb=round(nbytes / 1e6, 1),
                 raw_mb=round(sum(p.stat().st_size for p in raw_dir.iterdir()) / 1e6, 1), predecoded_pack_s=round(pack_s, 1))
        if r.get("baseline_per_s"):
            r["predecoded_vs_raw"] = round(r["predecoded_per_s"] / r["baseline_per_s"], 1)
            per_cpu = rows / max(r["predecoded_cpu_s"]["driver"], 1e-3)  # robust on a shared machine
            r["predecoded_vs_raw_cpu"] = round(per_cpu / (r["baseline_rows"] / max(r["baseline_cpu_s"]["driver"], 1e-3)), 1)
        log(f"{m}: pre-decoded read {rows} rows in {secs:.2f}s = {rows / secs:.1f}/s ({r.get('predecoded_vs_raw', '-')}x)")
    if not args.skip_ray:
        p = ray_pipeline(uri, spec, tok, samples, ray_info["raylet_pid"], ray_info["gcs_address"], args,
                         extra_pids=(moto.pid,) if moto is not None else ())
        r.update(ray_rows=p["rows"], ray_valid=p["valid"], ray_steady_per_s=round(p["steady_per_s"], 1),
                 ray_steady_rows=p["steady_rows"], ray_steady_s=round(p["steady_s"], 2),
                 ray_first_batch_s=round(p["first_batch_s"], 1), ray_total_s=round(p["total_s"], 1),
                 ray_end_to_end_per_s=round(p["rows"] / p["total_s"], 1),
                 decoded_mb_streamed=round(p["decoded_mb"]), **p["mem"], ray_cpu_s=p["cpu"])
        log(f"{m}: Ray steady {p['steady_per_s']:.1f}/s, end to end {r['ray_end_to_end_per_s']}/s (first batch "
            f"after {p['first_batch_s']:.1f}s), CPU s by role {p['cpu']}, memory {p['mem']}")
        if p["valid"] != samples:
            log(f"WARNING {m}: {p['valid']} valid rows of {samples}")
    for key in ("ray_steady_per_s", "ray_end_to_end_per_s", *(f"dataloader{w}_per_s" for w in args.loader_workers)):
        if r.get("baseline_per_s") and r.get(key):
            r[key.replace("_per_s", "_x")] = round(r[key] / r["baseline_per_s"], 2)
    return r


def _params(args) -> corpus.MediaParams:
    return corpus.MediaParams(args.image_px, args.video_px, args.video_frames, args.audio_seconds, args.shard_mb)


def report(results: dict, args, ray_info: dict, loads: tuple[list, list]) -> None:
    """The tables on stdout and the ``RESULT {json}`` line."""
    print(f"\nData pipeline benchmark: {os.cpu_count()} cores, load average {loads[0]} at start, {loads[1]} at end; "
          f"Ray {ray_info.get('cpus', 0):g} logical CPUs, {args.concurrency} decode {'actors' if args.decode_actors else 'tasks'}, batch {args.batch_size}, "
          f"spec {args.preset}. samples/s (x = / baseline); e2e = start-up included; steady = after the first "
          f"{args.warmup:.0%} of rows")
    loaders = [f"DL x{w} e2e" for w in args.loader_workers]
    print(f"{'modality':<8} {'rows':>6} {'baseline':>9} " + " ".join(f"{h:>14}" for h in loaders)
          + f" {'Ray e2e':>14} {'Ray steady':>14} {'PSS MB start/peak':>18} {'store MB':>8} {'flat':>5}")
    for m, r in results.items():
        cell = lambda key: (f"{r[key + '_per_s']} ({r.get(key + '_x', '-')}x)" if key + "_per_s" in r else "-")  # noqa: E731
        print(f"{m:<8} {r['samples']:>6} {r.get('baseline_per_s', '-'):>9} "
              + " ".join(f"{cell(f'dataloader{w}'):>14}" for w in args.loader_workers)
              + f" {cell('ray_end_to_end'):>14} {cell('ray_steady'):>14} "
              f"{str(r.get('pss_mb_start', '-')) + '/' + str(r.get('pss_mb_peak', '-')):>18} "
              f"{r.get('store_mb_peak', '-'):>8} {str(r.get('flat', '-')):>5}")
    if args.predecoded:
        print(f"\nPre-decoded shards ({args.preset} spec), one process, S3 read -> model-ready batches:")
        print(f"{'modality':<8} {'raw decode/s':>12} {'pre-decoded/s':>13} {'ratio':>6} {'ratio/CPU-s':>11} "
              f"{'raw MB':>7} {'pre MB':>7} {'pack s':>7}")
        for m, r in results.items():
            print(f"{m:<8} {r.get('baseline_per_s', '-'):>12} {r['predecoded_per_s']:>13} "
                  f"{str(r.get('predecoded_vs_raw', '-')):>6} {str(r.get('predecoded_vs_raw_cpu', '-')):>11} "
                  f"{r['raw_mb']:>7} {r['predecoded_mb']:>7} {r['predecoded_pack_s']:>7}")
    print("RESULT " + json.dumps({"cores": os.cpu_count(), "loadavg_start": loads[0], "loadavg_end": loads[1],
                                  "ray_cpus": ray_info.get("cpus", 0), "concurrency": args.concurrency,
                                  "ray_data_warmup_s": ray_info.get("ray_data_warmup_s"),
                                  "loader_workers": args.loader_workers, "batch_size": args.batch_size,
                                  "preset": args.preset, "warmup_fraction": args.warmup, "modalities": results}))


def main(argv=None) -> int:
    args = parse_args(argv)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    bad = sorted(set(modalities) - set(MODALITY_CHOICES))
    if bad or not modalities:
        print(f"error: unknown modality {bad}; choose from {MODALITY_CHOICES}", file=sys.stderr)
        return 2
    spec = preset(args.preset).media
    counts = {m: args.samples or DEFAULT_SAMPLES[m] for m in modalities}
    import torch

    torch.set_num_threads(1)  # every reader: the baseline loop, the DataLoader's consumer, the Ray consumer
    load_start = loadavg()
    moto = ensure_s3()
    ray_info: dict = {}
    try:
        from multimodal.data.tokenizer import train_tokenizer

        shards = {m: corpus.cached_shards(m, counts[m], _params(args), args.cache_dir, log) for m in modalities}
        bucket = args.bucket or f"bench-{int(time.time())}-{os.getpid()}"
        create_bucket(bucket)
        uris = {m: f"s3://{bucket}/bench/{m}" for m in modalities}
        for m in modalities:
            files, nbytes = corpus.upload(shards[m][0], uris[m])
            log(f"{m}: {counts[m]} rows, {files - 1} shards, {nbytes / 1e6:.1f} MB uploaded to {uris[m]}")
        if not args.skip_ray:
            ray_info = start_ray(args)
        results = {m: measure(m, uris[m], shards[m][0], counts[m], spec, train_tokenizer(iter(shards[m][1]), 512).to_str(),
                              args, ray_info, moto, bucket) for m in modalities}
        report(results, args, ray_info, (load_start, loadavg()))
        return 0
    finally:
        if ray_info.get("started"):
            import ray

            ray.shutdown()
        if ray_info.get("temp_dir"):
            shutil.rmtree(ray_info["temp_dir"], ignore_errors=True)
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(timeout=10)
            except subprocess.TimeoutExpired:
                moto.kill()


if __name__ == "__main__":
    sys.exit(main())

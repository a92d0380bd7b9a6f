"""Data pipeline benchmark: samples/s per modality, Ray Data pipeline vs a single-process loop.

Both sides read the *same* Parquet shards from S3 and run the *same* code
(``multimodal.data.pipeline.ParquetUnitDecoder``: pyarrow reads, Pillow / soundfile+torchaudio /
PyAV + tokenizer, then ``loader.training_collate`` + ``loader.model_batch``; torch intra-op
threads = 1 on both sides, so the comparison is per core), and both end with model-ready batches
(dense float32, normalised pixels):

- baseline: one Python process runs that code row group after row group, with no Ray and no
  object store in between; timed end to end (S3 reads included);
- Ray: ``build_dataset(...)`` with ``--concurrency`` decode actors, consumed on the driver with
  ``loader.iter_training_batches`` (wire rows densified and normalised, as a trainer gets them).
  The clock starts after a warm-up (the first ``--warmup`` fraction of the rows), so Ray
  start-up, actor start-up and imports are **excluded**; the end-to-end rate is printed too.

CPU: the CPU seconds every process of this Ray session, the driver and the S3 server used during
the measured window, by role (decode actors, read tasks, driver, raylet, s3 server ...), plus the
whole host's busy and idle seconds from /proc/stat: where the two cores went.

Memory: every 2 s while the Ray side streams, the RSS of this driver plus every process of
*this* Ray session (the raylet of this session's session dir and all its descendants: workers,
decode actors, read tasks) is summed, and the plasma (object store) bytes in use are read from the
raylet. The decoded stream (wire rows: ~14 kB per image, ~100 kB per video, ~33 kB per audio clip
under ``slm-63m``) is larger than the object store, so a flat curve means Ray Data's
backpressure works.

    python jobs/bench_data.py                       # starts moto S3 + a 2-CPU local Ray itself
    python jobs/bench_data.py --modalities image,video --samples 20000
    ray job submit --working-dir . -- python jobs/bench_data.py --samples 3000

Without ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` it starts ``python -m moto.server`` on a free
loopback port (test credentials) and stops it at the end. Generated corpora (encoded media packed
into local Parquet shards by ``make_shards``) are cached in ``--cache-dir``; each run uploads them to
a fresh bucket. Under ``ray job submit`` (``RAY_ADDRESS`` set) it joins that cluster instead of
starting one; ``--num-cpus``/``--object-store-mb`` then do not apply. Output: a table on stdout,
progress on stderr, and a final ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import s3_server  # noqa: E402
from cluster.procs import cpu_seconds as _cpu_seconds, children_map as _children_map  # noqa: E402
from cluster.procs import descendants as _descendants, host_cpu_seconds as _host_cpu_seconds  # noqa: E402
from cluster.procs import mem_mb as _mem_mb, process_role as _process_role, session_raylet_pid  # noqa: E402,F401
from cluster.s3_server import ensure_s3  # noqa: E402
from multimodal import fs  # noqa: E402
from multimodal.config import MediaSpec, preset  # noqa: E402

MODALITY_CHOICES = ("image", "audio", "video")
# default samples per modality: sized so the Ray measured window is tens of seconds on 2 cores
DEFAULT_SAMPLES = {"image": 40000, "audio": 2000, "video": 4800}
DISTINCT_FILES = 64  # distinct encoded files per modality; rows cycle through them
FLAT_SLACK_MB = 150.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Samples/s per modality from S3 shards through decode + preprocess: Ray Data "
                    "pipeline (steady state, start-up excluded) vs a plain single-process loop over "
                    "the same shards and the same SampleProcessor code.")
    parser.add_argument("--samples", type=int, default=None,
                        help="rows per modality (default: image %(image)d, audio %(audio)d, video %(video)d)"
                        % DEFAULT_SAMPLES)
    parser.add_argument("--modalities", default="image,audio,video",
                        help="comma list of image,audio,video (default all three)")
    parser.add_argument("--num-cpus", type=int, default=2,
                        help="logical CPUs of the local Ray cluster this script starts (default 2 = cores here)")
    parser.add_argument("--concurrency", type=int, default=3,
                        help="Ray decode actors (default 3: one more than the cores here, because a PyAV "
                             "decoding process leaves ~20-25%% of its core idle; measured in the README)")
    parser.add_argument("--actor-cpus", type=float, default=1.0,
                        help="num_cpus asked per decode actor; build_dataset lowers it so one logical CPU "
                             "stays free for listing/read tasks (default 1.0)")
    parser.add_argument("--ray-read", action="store_true",
                        help="read the Parquet shards with ray.data.read_parquet tasks instead of in the "
                             "decode actors (build_dataset(read_in_decoder=False))")
    parser.add_argument("--decode-batch", type=int, default=None,
                        help="rows the decode actors (and the baseline) read and decode per step "
                             "(build_dataset(unit_batch_rows=...), default 256)")
    parser.add_argument("--read-cpus", type=float, default=None,
                        help="num_cpus per Parquet read task (default: build_dataset's)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="rows per training batch on both sides (and per decode batch with --ray-read; default 32)")
    parser.add_argument("--object-store-mb", type=int, default=256,
                        help="object store of the local Ray cluster this script starts (default 256)")
    parser.add_argument("--warmup", type=float, default=0.1,
                        help="fraction of rows consumed before the Ray clock starts (default 0.1)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "slm-bench-data-cache"),
                        help="where generated media + local shards are cached between runs "
                             "(default %(default)s)")
    parser.add_argument("--preset", default="slm-63m", help="MediaSpec of this model preset (default slm-63m)")
    parser.add_argument("--image-px", type=int, default=256, help="source JPEG side (default 256)")
    parser.add_argument("--video-px", type=int, default=128, help="source video side (default 128)")
    parser.add_argument("--video-frames", type=int, default=24, help="frames per source MP4 (default 24)")
    parser.add_argument("--audio-seconds", type=float, default=4.0, help="source clip length (default 4.0)")
    parser.add_argument("--shard-mb", type=float, default=16.0,
                        help="target shard size in MB (default 16; small because moto copies the "
                             "whole object for every ranged GET, so its CPU cost on the shared cores "
                             "grows with the shard size; real S3 serves ranges off-box)")
    parser.add_argument("--bucket", default=None, help="S3 bucket to use (default: a new one)")
    parser.add_argument("--skip-baseline", action="store_true", help="only run the Ray pipeline")
    parser.add_argument("--read-blocks", type=int, default=None,
                        help="override_num_blocks for the Parquet read (default: one per shard; 0 = Ray's "
                             "default, which on 2.60 reads every shard in ONE task into ONE block, so only one "
                             "decode actor gets work)")
    parser.add_argument("--read-bin-mb", type=int, default=8,
                        help="RAY_DATA_PARQUET_BIN_PACKING_BYTES in MiB: bytes of Parquet per read task "
                             "(Ray 2.60 default 128 MiB packs a whole small dataset into ONE read task and ONE "
                             "block, so one decode actor does all the work); 0 = Ray's default (default 8)")
    parser.add_argument("--block-mb", type=int, default=16,
                        help="DataContext.target_max_block_size in MiB (Ray default 128: ~270 decoded rows "
                             "per block, half a small object store); 0 = Ray's default (default 16)")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's per-operator stats to stderr")
    parser.add_argument("--skip-ray", action="store_true", help="only run the single-process baseline")
    parser.add_argument("--predecoded", action="store_true",
                        help="also pack the corpus as pre-decoded shards (slm-make-shards --decode PRESET, "
                             "cached) and time one process reading them into model-ready batches")
    parser.add_argument("--pack-workers", type=int, default=1,
                        help="decode processes for the pre-decoded pack (default 1)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------- S3 and data

def create_bucket(name: str) -> None:
    import boto3

    s3_server.create_bucket(name, client=boto3.client("s3", endpoint_url=fs.s3_endpoint(),
                                                      region_name=fs.s3_region()))


def _textured(size: int, rng) -> "np.ndarray":  # noqa: F821
    """Photo-like texture (smooth gradients + grain) so JPEG/MPEG-4 sizes and decode costs are realistic."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6.28 * (xx * rng.uniform(1, 4) + rng.uniform())),
                     np.cos(6.28 * (yy * rng.uniform(1, 4) + rng.uniform())),
                     np.sin(6.28 * ((xx + yy) * rng.uniform(1, 3)))], axis=-1)
    img = 127 + 70 * base + rng.normal(0, 18, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_media(modality: str, index: int, root: Path, args) -> tuple[str, str]:
    """One encoded file (JPEG / 44.1 kHz stereo FLAC / MPEG-4 MP4) and its caption."""
    import numpy as np

    from multimodal.data import synthetic

    rng = np.random.default_rng(index)
    colour = list(synthetic.COLOURS)[index % len(synthetic.COLOURS)]
    if modality == "image":
        from PIL import Image, ImageDraw

        shape = synthetic.SHAPES[index % 3]
        image = Image.fromarray(_textured(args.image_px, rng))
        r, c = args.image_px * 0.25, args.image_px / 2
        box = (c - r, c - r, c + r, c + r)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=synthetic.COLOURS[colour])
        path = root / f"img{index}.jpg"
        image.save(path, format="JPEG", quality=90)
        return path.name, synthetic.image_caption(colour, shape)
    if modality == "audio":
        import soundfile as sf

        notes = [list(synthetic.NOTES)[(index + k) % 7] for k in range(4)]
        clip = synthetic.tone_clip(notes, 44100, args.audio_seconds, channels=2)
        clip = clip + rng.normal(0, 0.02, clip.shape).astype(np.float32)
        path = root / f"aud{index}.flac"
        sf.write(path, clip, 44100, format="FLAC")
        return path.name, synthetic.audio_caption(notes)
    import av
    from fractions import Fraction

    direction = synthetic.DIRECTIONS[index % 4]
    frames = synthetic.moving_square_frames(colour, direction, args.video_frames, args.video_px)
    background = _textured(args.video_px, rng).astype(np.int16)
    path = root / f"vid{index}.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(12, 1))
        stream.width = stream.height = args.video_px
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 600_000
        for t, frame in enumerate(frames):
            grain = rng.normal(0, 10, frame.shape)
            moving = np.where(frame == 235, np.roll(background, t, axis=1), frame) + grain
            array = np.clip(moving, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path.name, synthetic.video_caption(colour, direction)


def local_shards(modality: str, samples: int, args) -> tuple[Path, list[str]]:
    """Cached local Parquet shards (``make_shards``) of ``samples`` rows; returns (dir, captions)."""
    from multimodal.data.make_shards import make_shards

    params = {"m": modality, "n": samples, "img": args.image_px, "vpx": args.video_px,
              "vf": args.video_frames, "as": args.audio_seconds, "distinct": DISTINCT_FILES, "v": 3,
              "shard_mb": args.shard_mb}
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(args.cache_dir).expanduser() / f"{modality}-{samples}-{key}"
    shards_dir, media_dir = root / "shards", root / "media"
    manifest = media_dir / "manifest.jsonl"
    if (shards_dir / "_dataset.json").exists():
        captions = [json.loads(line)["text"] for line in open(manifest)]
        return shards_dir, captions
    shutil.rmtree(root, ignore_errors=True)
    media_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    files = [write_media(modality, i, media_dir, args) for i in range(min(samples, DISTINCT_FILES))]
    with open(manifest, "w") as handle:
        for i in range(samples):
            name, caption = files[i % len(files)]
            handle.write(json.dumps({"text": caption, modality: name}) + "\n")
    mean_bytes = sum((media_dir / n).stat().st_size for n, _ in files) / len(files)
    target = int(args.shard_mb * 1e6)
    make_shards(str(manifest), str(shards_dir), target_shard_bytes=target,
                row_group_bytes=min(target, 8_000_000), progress=None)
    log(f"generated {modality} corpus in {root} ({time.perf_counter() - t0:.1f}s, "
        f"{mean_bytes / 1e3:.1f} kB per encoded file)")
    captions = [json.loads(line)["text"] for line in open(manifest)]
    return shards_dir, captions


def upload(shards_dir: Path, uri: str) -> tuple[int, int]:
    """Copy the cached shards + ``_dataset.json`` to ``uri``; returns (files, bytes)."""
    import pyarrow.fs as pafs

    filesystem, root = fs.filesystem_for(uri)
    names = sorted(p.name for p in shards_dir.iterdir() if p.is_file())
    total = 0
    for name in names:  # shards first, the summary last (readers only trust listed shards)
        data = (shards_dir / name).read_bytes()
        total += len(data)
        with filesystem.open_output_stream(f"{root}/{name}") as out:
            out.write(data)
    assert isinstance(filesystem, pafs.FileSystem)
    return len(names), total


# ------------------------------------------------------------------------------------ measuring

GENERIC_ROLES = ("gone", "starting worker", "idle workers", "other ray")


def _more_specific(old: str, new: str) -> str:
    """Workers rename themselves (starting -> ray::IDLE -> ray::ReadFiles...): keep the most telling."""
    return old if new in GENERIC_ROLES and old not in ("gone",) else new


class MemorySampler(threading.Thread):
    """Every ``every`` s: RSS of this driver + this session's raylet and all its descendants, and
    the object store bytes in use (plasma, from the raylet)."""

    def __init__(self, raylet_pid: int | None, gcs_address: str | None, every: float = 2.0,
                 extra_pids: tuple[int, ...] = ()):
        super().__init__(daemon=True)
        self.extra_pids = list(extra_pids)  # e.g. the moto S3 server: its CPU is part of the cost
        self.cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (role, cpu s at mark, latest cpu s)
        self.born_in_window: list[int] = []  # processes started during the measured window
        self.host_at_mark: tuple[float, float] | None = None
        self.host_at_stop: tuple[float, float] | None = None
        self.raylet_pid = raylet_pid
        self.gcs_address = gcs_address
        self._state = None
        self.every = every
        self.samples: list[tuple[float, float, float, float, int]] = []  # (t, rss, pss, store MB, #procs)
        self._halt = threading.Event()
        self.mark: float | None = None  # perf_counter when the measured window starts

    def pids(self, children: dict[int, list[int]] | None = None) -> list[int]:
        """This driver, this session's raylet and all its descendants (the memory we account)."""
        pids = [os.getpid()]
        if self.raylet_pid:
            children = children if children is not None else _children_map()
            pids += _descendants(self.raylet_pid, children)
        return pids

    def cpu_pids(self, children: dict[int, list[int]]) -> list[int]:
        """Memory pids plus the driver's own children (GCS, dashboard ... when Ray started here)
        and the S3 server: everything that competes for the cores."""
        pids = set(self.pids(children)) | set(_descendants(os.getpid(), children))
        for extra in self.extra_pids:
            pids |= set(_descendants(extra, children))
        return sorted(pids)

    def store_mb(self) -> float:
        if not self.gcs_address:
            return -1.0
        try:
            from ray._private import internal_api

            if self._state is None:  # this cluster's GCS, never "any cluster on the host"
                self._state = internal_api.get_state_from_address(self.gcs_address)
            text = internal_api.store_stats_summary(internal_api.get_memory_info_reply(self._state))
        except Exception:  # noqa: BLE001 - best effort; reported as -1
            return -1.0
        for line in text.splitlines():  # "Plasma memory usage 12 MiB, 3 objects, 4.6% full, ..."
            if "Plasma memory usage" in line:
                try:
                    return float(line.split("usage", 1)[1].split("MiB", 1)[0]) * 1.048576
                except ValueError:
                    return -1.0
        return -1.0

    def run(self):
        while not self._halt.is_set():
            children = _children_map()
            pids = self.pids(children)
            mems = [_mem_mb(p) for p in pids]
            marked = self.mark is not None
            if marked and self.host_at_mark is None:
                self.host_at_mark = _host_cpu_seconds()
            for pid in self.cpu_pids(children):
                seconds = _cpu_seconds(pid)
                if pid not in self.cpu:
                    # a process born inside the window counts from 0; one alive at the mark from then
                    self.cpu[pid] = (_process_role(pid), 0.0 if marked else seconds, seconds)
                    if marked:
                        self.born_in_window.append(pid)
                else:
                    role, base, _ = self.cpu[pid]
                    if not marked:
                        base = seconds
                    self.cpu[pid] = (_more_specific(role, _process_role(pid)), base,
                                     seconds if seconds else self.cpu[pid][2])
            self.samples.append((time.perf_counter(), sum(m[0] for m in mems), sum(m[1] for m in mems),
                                 self.store_mb(), len(pids)))
            self._halt.wait(self.every)

    def stop(self):
        self.host_at_stop = _host_cpu_seconds()
        self._halt.set()
        self.join(timeout=10)
        for pid, (role, base, latest) in list(self.cpu.items()):  # a last reading at the window's end
            # workers rename themselves (ray::IDLE -> ray::MapWorker...): take the latest name
            self.cpu[pid] = (_more_specific(role, _process_role(pid)), base, _cpu_seconds(pid) or latest)

    def cpu_breakdown(self) -> dict[str, float]:
        """CPU seconds used per process role during the measured window (sampled every 2 s)."""
        roles: dict[str, float] = {}
        for role, base, latest in self.cpu.values():
            roles[role] = roles.get(role, 0.0) + max(latest - base, 0.0)
        out = {k: round(v, 1) for k, v in sorted(roles.items(), key=lambda kv: -kv[1]) if v >= 0.05}
        born: dict[str, int] = {}
        for pid in self.born_in_window:
            born[self.cpu[pid][0]] = born.get(self.cpu[pid][0], 0) + 1
        if born:
            out["processes started in the window"] = born
        if self.host_at_mark and self.host_at_stop:
            out["host busy"] = round(self.host_at_stop[0] - self.host_at_mark[0], 1)
            out["host idle"] = round(self.host_at_stop[1] - self.host_at_mark[1], 1)
        return out

    def summary(self) -> dict:
        window = [s for s in self.samples if self.mark is None or s[0] >= self.mark] or self.samples
        if not window:
            return {}
        rss = [s[1] for s in window]
        pss = [s[2] for s in window]
        store = [s[3] for s in window]
        return {"rss_mb_start": round(rss[0]), "rss_mb_peak": round(max(rss)), "rss_mb_end": round(rss[-1]),
                "pss_mb_start": round(pss[0]), "pss_mb_peak": round(max(pss)), "pss_mb_end": round(pss[-1]),
                "store_mb_start": round(store[0]), "store_mb_peak": round(max(store)),
                "processes": window[-1][4], "mem_samples": len(window),
                "pss_mb_peak_incl_warmup": round(max(s[2] for s in self.samples)),
                "flat": bool(max(pss) - pss[0] < FLAT_SLACK_MB)}


def consume_units(units: list[dict], spec: MediaSpec, batch_size: int, read_unit) -> int:
    """One process turning read units into model-ready batches: ``read_unit(path, row_group)``
    yields wire tables (what the pipeline's actors produce), then each ``batch_size`` slice goes
    through ``training_collate`` + ``model_batch`` (what the consumer does). Returns valid rows."""
    from multimodal.data.loader import model_batch, training_collate

    collate = training_collate(spec)
    rows = 0
    for unit in units:
        for table in read_unit(unit["path"], unit["row_group"]):
            for offset in range(0, table.num_rows, batch_size):
                _, stats = model_batch(collate(table.slice(offset, batch_size)), spec)
                rows += stats.valid
    return rows


def baseline(uri: str, spec: MediaSpec, tok_json: str, batch_size: int, decode_rows: int | None = None
             ) -> tuple[int, float]:
    """One process running the Ray side's code without Ray: ``ParquetUnitDecoder`` reads and
    decodes each row group from S3 into wire tables (what the decode actors do), then the same
    consumer steps: model-ready batches, the same work, no transport."""
    from multimodal.data.pipeline import DEFAULT_UNIT_BATCH_ROWS, ParquetUnitDecoder, read_units

    start = time.perf_counter()
    names, units = read_units(uri)
    decoder = ParquetUnitDecoder(spec, tok_json, names, batch_size=decode_rows or DEFAULT_UNIT_BATCH_ROWS)
    rows = consume_units(units, spec, batch_size, decoder.decode_unit)
    return rows, time.perf_counter() - start


def local_predecoded(modality: str, samples: int, args, tok_json: str) -> tuple[Path, float]:
    """Cached local pre-decoded shards (``slm-make-shards --decode``) of the same manifest as
    ``local_shards``; returns (dir, seconds the pack took when it was made)."""
    from multimodal.data.pack_decoded import pack_decoded

    raw_dir, _ = local_shards(modality, samples, args)
    key = hashlib.sha1(f"{args.preset}\n{tok_json}".encode()).hexdigest()[:10]
    out, record = raw_dir.parent / f"predecoded-{key}", raw_dir.parent / f"predecoded-{key}.json"
    if (out / "_dataset.json").exists() and record.exists():
        return out, json.loads(record.read_text())["pack_s"]
    shutil.rmtree(out, ignore_errors=True)
    target = int(args.shard_mb * 1e6)
    t0 = time.perf_counter()
    pack_decoded(str(raw_dir.parent / "media" / "manifest.jsonl"), str(out), args.preset, tokenizer=tok_json,
                 workers=args.pack_workers, target_shard_bytes=target, row_group_bytes=min(target, 8_000_000),
                 progress=None)
    seconds = time.perf_counter() - t0
    record.write_text(json.dumps({"pack_s": seconds}))
    log(f"packed {modality} pre-decoded ({args.preset} spec) in {seconds:.1f}s with {args.pack_workers} worker(s)")
    return out, seconds


def predecoded_read(uri: str, spec: MediaSpec, batch_size: int) -> tuple[int, float]:
    """One process reading pre-decoded shards into model-ready batches: ``PredecodedUnitReader``
    (what the pipeline's actors run for such shards), then the same consumer steps as ``baseline``."""
    from multimodal.data.pipeline import read_units
    from multimodal.data.predecoded import PredecodedUnitReader

    start = time.perf_counter()
    names, units = read_units(uri)
    reader = PredecodedUnitReader(spec, names)
    rows = consume_units(units, spec, batch_size, reader.read_unit)
    return rows, time.perf_counter() - start


def shard_count(uri: str) -> int:
    from multimodal.data.pipeline import resolve_shards

    return len(resolve_shards(uri)[2])


def ray_pipeline(uri: str, spec: MediaSpec, tok_json: str, samples: int, raylet_pid, gcs_address,
                 args, extra_pids: tuple[int, ...] = ()) -> dict:
    from multimodal.data.loader import iter_training_batches
    from multimodal.data.pipeline import build_dataset

    sampler = MemorySampler(raylet_pid, gcs_address, extra_pids=extra_pids)
    sampler.start()
    start = time.perf_counter()
    blocks = args.read_blocks if args.read_blocks is not None else shard_count(uri)
    env = dict(fs.aws_public_env_vars())
    if args.read_bin_mb:
        env["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = str(args.read_bin_mb * 1024**2)
    dataset = build_dataset(uri, spec, tok_json, concurrency=args.concurrency, num_cpus=args.actor_cpus,
                            batch_size=args.batch_size, override_num_blocks=blocks or None,
                            **({"unit_batch_rows": args.decode_batch} if args.decode_batch else {}),
                            runtime_env={"env_vars": env}, read_in_decoder=not args.ray_read,
                            **({"read_num_cpus": args.read_cpus} if args.read_cpus is not None else {}))
    warm_rows = max(int(samples * args.warmup), args.batch_size)
    rows = valid = 0
    decoded_bytes = 0
    first_at = mark_at = None
    mark_rows = 0
    # the consumer makes model-ready batches (dense float32, normalised pixels), as the baseline does
    # (the baseline runs the same training_collate + model_batch in its own process)
    for batch, stats in iter_training_batches(dataset.iterator(), args.batch_size, spec, device="cpu",
                                              prefetch_batches=2):
        if first_at is None:
            first_at = time.perf_counter()
        rows += stats.rows
        valid += stats.valid
        decoded_bytes += sum(v.nbytes for v in batch.values())
        if mark_at is None and rows >= warm_rows:
            mark_at, mark_rows = time.perf_counter(), rows
            sampler.mark = mark_at
    end = time.perf_counter()
    sampler.stop()
    if args.stats:
        log("Ray Data stats:\n" + dataset.stats())
    steady_rows = rows - mark_rows
    steady_s = end - mark_at if mark_at else 0.0
    return {"rows": rows, "valid": valid, "total_s": end - start,
            "first_batch_s": (first_at or end) - start, "warmup_rows": mark_rows,
            "steady_rows": steady_rows, "steady_s": steady_s,
            "steady_per_s": steady_rows / steady_s if steady_s > 0 else 0.0,
            "decoded_mb": decoded_bytes / 1e6, "mem": sampler.summary(), "cpu": sampler.cpu_breakdown()}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


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

    torch.set_num_threads(1)  # both sides: the baseline loop and the Ray consumer (pixel normalising)
    load_start = loadavg()
    moto = ensure_s3()
    started_ray = False
    temp_dir = None
    try:
        import ray

        from multimodal.data.tokenizer import train_tokenizer

        shards = {m: local_shards(m, counts[m], args) for m in modalities}
        bucket = args.bucket or f"bench-{int(time.time())}-{os.getpid()}"
        create_bucket(bucket)
        uris = {}
        for m in modalities:
            uris[m] = f"s3://{bucket}/bench/{m}"
            files, nbytes = upload(shards[m][0], uris[m])
            log(f"{m}: {counts[m]} rows, {files - 1} shards, {nbytes / 1e6:.1f} MB uploaded to {uris[m]}")

        cpus = store_mb = 0
        job_env = dict(fs.aws_public_env_vars())
        if args.read_bin_mb:  # read on the driver (planning) and in the listing/read tasks
            os.environ["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = str(args.read_bin_mb * 1024**2)
            job_env["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = str(args.read_bin_mb * 1024**2)
        raylet_pid = gcs_address = None
        if not args.skip_ray:
            if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
                ray.init(ignore_reinit_error=True, log_to_driver=False)
            else:
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                if args.read_bin_mb:
                    job_env["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = str(args.read_bin_mb * 1024**2)
                temp_dir = tempfile.mkdtemp(prefix="rbd", dir="/tmp")  # short: AF_UNIX path limit
                ray.init(num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * 1024**2,
                         include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir,
                         runtime_env={"env_vars": job_env})
                started_ray = True
            from ray.data import DataContext

            ctx = DataContext.get_current()
            ctx.enable_progress_bars = os.environ.get("BENCH_PROGRESS") == "1"
            if args.block_mb:
                ctx.target_max_block_size = args.block_mb * 1024**2
            cpus = ray.cluster_resources().get("CPU", 0)
            store_mb = ray.cluster_resources().get("object_store_memory", 0) / 1024**2
            session_dir = ray._private.worker._global_node.get_session_dir_path()
            raylet_pid = session_raylet_pid(session_dir)
            gcs_address = ray.get_runtime_context().gcs_address
            log(f"Ray: {cpus:g} logical CPUs, object store {store_mb:.0f} MiB, session {session_dir}, "
                f"raylet pid {raylet_pid} ({'started here' if started_ray else 'existing cluster'})")
        log(f"host cores {os.cpu_count()}; spec {args.preset}: image {spec.image_size}px, audio "
            f"{spec.audio_seconds}s@{spec.audio_sample_rate}Hz {spec.audio_n_mels} mels, video "
            f"{spec.video_frames}x{spec.video_size}px")

        results = {}
        for m in modalities:
            captions = shards[m][1]
            tok = train_tokenizer(iter(captions), 512).to_str()
            r = {"samples": counts[m]}
            if not args.skip_baseline:
                log(f"{m}: baseline (single process) ...")
                cpu0 = {"driver": _cpu_seconds(os.getpid()), "s3 server": _cpu_seconds(moto.pid) if moto else 0.0}
                rows, secs = baseline(uris[m], spec, tok, args.batch_size, args.decode_batch)
                r["baseline_cpu_s"] = {"driver": round(_cpu_seconds(os.getpid()) - cpu0["driver"], 1)}
                if moto is not None:
                    r["baseline_cpu_s"]["s3 server"] = round(_cpu_seconds(moto.pid) - cpu0["s3 server"], 1)
                r.update(baseline_rows=rows, baseline_s=round(secs, 2), baseline_per_s=round(rows / secs, 1))
                log(f"{m}: baseline {rows} rows in {secs:.1f}s = {rows / secs:.1f}/s, CPU s {r['baseline_cpu_s']}")
            if args.predecoded:
                pre_dir, pack_s = local_predecoded(m, counts[m], args, tok)
                pre_uri = f"s3://{bucket}/bench/{m}-predecoded"
                files, nbytes = upload(pre_dir, pre_uri)
                cpu0 = {"driver": _cpu_seconds(os.getpid()), "s3 server": _cpu_seconds(moto.pid) if moto else 0.0}
                rows, secs = predecoded_read(pre_uri, spec, args.batch_size)
                r["predecoded_cpu_s"] = {"driver": round(_cpu_seconds(os.getpid()) - cpu0["driver"], 2)}
                if moto is not None:
                    r["predecoded_cpu_s"]["s3 server"] = round(_cpu_seconds(moto.pid) - cpu0["s3 server"], 2)
                r.update(predecoded_rows=rows, predecoded_s=round(secs, 2), predecoded_per_s=round(rows / secs, 1),
                         predecoded_mb=round(nbytes / 1e6, 1), raw_mb=round(sum(
                             p.stat().st_size for p in shards[m][0].iterdir()) / 1e6, 1),
                         predecoded_pack_s=round(pack_s, 1))
                if r.get("baseline_per_s"):
                    r["predecoded_vs_raw"] = round(r["predecoded_per_s"] / r["baseline_per_s"], 1)
                    # per CPU second of this process (the loop's own work; robust on a shared machine)
                    r["predecoded_vs_raw_cpu"] = round((rows / max(r["predecoded_cpu_s"]["driver"], 1e-3))
                                                       / (r["baseline_rows"] / max(r["baseline_cpu_s"]["driver"], 1e-3)), 1)
                log(f"{m}: pre-decoded read {rows} rows in {secs:.2f}s = {rows / secs:.1f}/s "
                    f"({r.get('predecoded_vs_raw', '-')}x the raw decode), {r['predecoded_mb']} MB vs "
                    f"{r['raw_mb']} MB raw")
            if not args.skip_ray:
                log(f"{m}: Ray pipeline ...")
                p = ray_pipeline(uris[m], spec, tok, counts[m], raylet_pid, gcs_address, args,
                                 extra_pids=(moto.pid,) if moto is not None else ())
                r.update(ray_rows=p["rows"], ray_valid=p["valid"], ray_steady_per_s=round(p["steady_per_s"], 1),
                         ray_steady_rows=p["steady_rows"], ray_steady_s=round(p["steady_s"], 2),
                         ray_warmup_rows=p["warmup_rows"], ray_first_batch_s=round(p["first_batch_s"], 1),
                         ray_total_s=round(p["total_s"], 1),
                         ray_end_to_end_per_s=round(p["rows"] / p["total_s"], 1),
                         decoded_mb_streamed=round(p["decoded_mb"]), **p["mem"], ray_cpu_s=p["cpu"])
                log(f"{m}: Ray steady {p['steady_rows']} rows in {p['steady_s']:.1f}s = "
                    f"{p['steady_per_s']:.1f}/s (first batch after {p['first_batch_s']:.1f}s, "
                    f"total {p['total_s']:.1f}s), memory {p['mem']}")
                log(f"{m}: CPU seconds in the {p['steady_s']:.1f}s window by role: {p['cpu']}")
                if p["valid"] != counts[m]:
                    log(f"WARNING {m}: {p['valid']} valid rows of {counts[m]}")
            if r.get("baseline_per_s") and r.get("ray_steady_per_s"):
                r["ratio"] = round(r["ray_steady_per_s"] / r["baseline_per_s"], 2)
                r["ratio_end_to_end"] = round(r["ray_end_to_end_per_s"] / r["baseline_per_s"], 2)
            results[m] = r
        load_end = loadavg()

        print(f"\nData pipeline benchmark: {os.cpu_count()} cores, load average {load_start} at start, "
              f"{load_end} at end; Ray {cpus:g} logical CPUs, object store {store_mb:.0f} MiB, "
              f"{args.concurrency} decode actors, batch {args.batch_size}, spec {args.preset}")
        print("Ray samples/s = steady state: counted after the first "
              f"{args.warmup:.0%} of rows, so Ray/actor start-up and imports are excluded "
              "(e2e = including them). Baseline = one process, S3 read + decode, end to end.")
        header = (f"{'modality':<8} {'rows':>6} {'base/s':>8} {'ray/s':>8} {'ratio':>6} {'ray e2e/s':>9} "
                  f"{'window s':>8} {'streamed MB':>11} {'PSS MB start/peak/end':>22} {'RSS MB peak':>11} {'store MB':>8} {'flat':>5}")
        print(header)
        for m, r in results.items():
            pss = f"{r.get('pss_mb_start', '-')}/{r.get('pss_mb_peak', '-')}/{r.get('pss_mb_end', '-')}"
            print(f"{m:<8} {r['samples']:>6} {r.get('baseline_per_s', '-'):>8} {r.get('ray_steady_per_s', '-'):>8} "
                  f"{str(r.get('ratio', '-')):>6} {r.get('ray_end_to_end_per_s', '-'):>9} "
                  f"{r.get('ray_steady_s', '-'):>8} {r.get('decoded_mb_streamed', '-'):>11} {pss:>22} "
                  f"{r.get('rss_mb_peak', '-'):>11} "
                  f"{r.get('store_mb_peak', '-'):>8} {str(r.get('flat', '-')):>5}")
        if args.predecoded:
            print(f"\nPre-decoded shards ({args.preset} spec), one process, S3 read -> model-ready batches:")
            print(f"{'modality':<8} {'rows':>6} {'raw decode/s':>12} {'pre-decoded/s':>13} {'ratio':>6} "
                  f"{'ratio/CPU-s':>11} {'raw MB':>7} {'pre MB':>7} {'pack s':>7}")
            for m, r in results.items():
                print(f"{m:<8} {r['samples']:>6} {r.get('baseline_per_s', '-'):>12} {r['predecoded_per_s']:>13} "
                      f"{str(r.get('predecoded_vs_raw', '-')):>6} {str(r.get('predecoded_vs_raw_cpu', '-')):>11} "
                      f"{r['raw_mb']:>7} {r['predecoded_mb']:>7} {r['predecoded_pack_s']:>7}")
            print("ratio = wall-clock samples/s; ratio/CPU-s = samples per CPU second of this process "
                  "(the S3 server's CPU is in the RESULT line)")
        print(f"Memory = this driver + this Ray session's raylet and all its descendant processes, sampled "
              f"every 2 s during the measured window. PSS counts the shared object-store pages once (RSS "
              f"counts them in every process that maps them); flat = PSS peak - start < {FLAT_SLACK_MB:.0f} MB; "
              f"store = plasma MB in use (peak).")
        print("RESULT " + json.dumps({"cores": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
                                      "ray_cpus": cpus, "object_store_mb": round(store_mb),
                                      "concurrency": args.concurrency, "batch_size": args.batch_size,
                                      "preset": args.preset, "warmup_fraction": args.warmup,
                                      "modalities": results}))
        return 0
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(timeout=10)
            except subprocess.TimeoutExpired:
                moto.kill()


if __name__ == "__main__":
    sys.exit(main())

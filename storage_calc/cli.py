"""``slm-estimate-storage``: storage, shards, tokens, compute, memory and capacity for a corpus.

    slm-estimate-storage --text 1e6 --images 1e5 --audio 5e4 --video 2e4
    slm-estimate-storage --from s3://bucket/prefix --capacity 1TB --json

Bad input prints one line ``error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from storage_calc import units
from storage_calc.compute import GPUS, SEED_PARAMS, Plan, PlanInputs, plan
from storage_calc.estimate import LABELS, Assumptions, StorageEstimate, estimate, from_measurement
from storage_calc.predecoded import PredecodedEstimate, predecoded_estimate

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: reported as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # let "--text -1e6" reach the count parser (and its clear message) instead of being
        # taken for an option; argparse only recognises "-5" and "-.5" by default
        self._negative_number_matcher = re.compile(r"^-(\d[\d_,]*\.?\d*|\.\d+)([eE][+-]?\d+)?$")

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` that turns a ``UnitError`` into a clean argparse message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except units.UnitError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _positive_int(text: str) -> int:
    value = units.parse_count(text)
    if value < 1:
        raise units.UnitError(f"{text!r} must be at least 1")
    return value


def _positive(text: str) -> float:
    return units.parse_positive(text)


def _positive_size(text: str) -> int:
    value = units.parse_size(text)
    if value <= 0:
        raise units.UnitError(f"size {text!r} must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (every flag has help; defaults are the seed's)."""
    d, p = Assumptions(), PlanInputs()
    parser = _Parser(
        prog="slm-estimate-storage",
        description="Estimate (or measure) the storage of a multimodal corpus and what training "
                    "on it takes: shards, tokens, FLOPs, GPU time, worker memory, checkpoint "
                    "size, capacity fit. Sizes are decimal (1 GB = 10^9 bytes); KiB/MiB/GiB "
                    "are binary. Counts accept 1e6-style numbers.",
    )
    _add_inputs(parser, d)
    _add_planning(parser, p)
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true",
                        help="print machine-readable JSON instead of the table")
    output.add_argument("--unit", default="GB",
                        choices=["auto", *units.UNIT_NAMES.values()],
                        help="unit of the table's totals (default: %(default)s, like the seed)")
    return parser


def _add_inputs(parser: argparse.ArgumentParser, d: Assumptions) -> None:
    """The counts (or ``--from``) and the average sizes."""
    counts = parser.add_argument_group("counts (or --from)")
    counts.add_argument("--text", type=_arg(units.parse_count), metavar="N",
                        help="number of text samples")
    counts.add_argument("--images", type=_arg(units.parse_count), metavar="N",
                        help="number of images")
    counts.add_argument("--audio", type=_arg(units.parse_count), metavar="N",
                        help="number of audio clips")
    counts.add_argument("--video", type=_arg(units.parse_count), metavar="N",
                        help="number of videos")
    counts.add_argument("--from", dest="from_uri", metavar="URI",
                        help="measure instead of assume: a local folder or s3://bucket/prefix "
                             "(endpoint and credentials from the AWS_* environment); uses "
                             "_dataset.json if slm-make-shards wrote one, indexes WebDataset .tar "
                             "shards (img2dataset's *_stats.json where present), else groups "
                             "objects by extension")

    sizes = parser.add_argument_group("average sizes (used with counts)")
    sizes.add_argument("--words-per-text", type=_arg(_positive), default=d.words_per_text,
                       metavar="N", help="words per text sample (default: %(default)g)")
    sizes.add_argument("--bytes-per-word", type=_arg(_positive), default=d.bytes_per_word,
                       metavar="N", help="bytes per word of text; also turns measured text bytes "
                                         "into words (default: %(default)g)")
    sizes.add_argument("--image-size", type=_arg(units.parse_size), default=d.image_bytes,
                       metavar="SIZE", help="average image size (default: 500KB)")
    sizes.add_argument("--audio-size", type=_arg(units.parse_size), default=d.audio_bytes,
                       metavar="SIZE", help="average audio clip size (default: 5MB)")
    sizes.add_argument("--video-size", type=_arg(units.parse_size), default=d.video_bytes,
                       metavar="SIZE", help="average video size (default: 20MB)")

    sizes.add_argument("--decode", metavar="PRESET", choices=["tiny", "slm-63m"],
                       help="also show the size as pre-decoded shards (slm-make-shards --decode "
                            "PRESET) at this preset's media spec: tiny or slm-63m")


def _add_planning(parser: argparse.ArgumentParser, p: PlanInputs) -> None:
    """Shards, tokens, compute, memory and capacity."""
    planning = parser.add_argument_group("planning")
    planning.add_argument("--shard-size", type=_arg(_positive_size), default=p.shard_bytes,
                          metavar="SIZE", help="target shard size (default: 1GB)")
    planning.add_argument("--tokens-per-word", type=_arg(_positive), default=p.tokens_per_word,
                          metavar="X", help="text tokens per word (default: %(default)g)")
    planning.add_argument("--tokens-per-image", type=_arg(units.parse_count),
                          default=p.tokens_per_image, metavar="N",
                          help="tokens each image becomes in the model (default: %(default)s, "
                               "as slm-63m's image encoder)")
    planning.add_argument("--tokens-per-audio", type=_arg(units.parse_count),
                          default=p.tokens_per_audio, metavar="N",
                          help="tokens each audio clip becomes (default: %(default)s)")
    planning.add_argument("--tokens-per-video", type=_arg(units.parse_count),
                          default=p.tokens_per_video, metavar="N",
                          help="tokens each video becomes (default: %(default)s)")
    planning.add_argument("--epochs", type=_arg(_positive), default=p.epochs, metavar="X",
                          help="passes over the corpus (default: %(default)g)")
    planning.add_argument("--params", type=_arg(_positive_int), default=SEED_PARAMS, metavar="N",
                          help="model parameters (default: %(default)s, the seed's SLM)")
    planning.add_argument("--gpu", choices=sorted(GPUS), default=p.gpu,
                          help="GPU type for the wall-time estimate (default: %(default)s)")
    planning.add_argument("--gpus", type=_arg(_positive_int), default=p.gpus, metavar="N",
                          help="number of GPUs (default: %(default)s)")
    planning.add_argument("--utilization", "--utilisation", type=_arg(units.parse_fraction),
                          default=p.utilization, metavar="F",
                          help="model FLOPs utilisation, 0.4 or 40%% (default: 0.4)")
    planning.add_argument("--hidden", type=_arg(_positive_int), default=p.hidden, metavar="H",
                          help="hidden size, for activation memory (default: %(default)s)")
    planning.add_argument("--layers", type=_arg(_positive_int), default=p.layers, metavar="L",
                          help="transformer layers (default: %(default)s)")
    planning.add_argument("--heads", type=_arg(_positive_int), default=p.heads, metavar="A",
                          help="attention heads (default: %(default)s)")
    planning.add_argument("--vocab-size", type=_arg(_positive_int), default=p.vocab_size,
                          metavar="V", help="vocabulary size, for the logits (default: %(default)s)")
    planning.add_argument("--batch-size", type=_arg(_positive_int), default=p.batch_size,
                          metavar="B", help="per-worker batch size (default: %(default)s)")
    planning.add_argument("--seq-len", type=_arg(_positive_int), default=p.seq_len, metavar="S",
                          help="sequence length in tokens (default: %(default)s)")
    planning.add_argument("--capacity", type=_arg(units.parse_size), metavar="SIZE",
                          help="disk or storage budget to check the dataset against, e.g. 1TB")


def _fmt(n_bytes: float, unit: str) -> str:
    return units.format_size(n_bytes, None if unit == "auto" else unit)


def render_table(storage: StorageEstimate, result: Plan, unit: str = "GB",
                 measurement: Any = None, decoded: PredecodedEstimate | None = None) -> str:
    """The human-readable report: the per-modality table (with a pre-decoded column when
    ``decoded`` is given), the total and the planning section."""
    a = storage.assumptions
    lines: list[str] = []
    if measurement is not None:
        how = {"shard-summary": "shard summary _dataset.json",
               "tar-index": f"{units.format_count(measurement.objects)} tars indexed"}.get(
            measurement.source, f"{units.format_count(measurement.objects)} objects listed")
        lines.append(f"Measured {measurement.uri} ({how} in "
                     f"{units.format_duration(measurement.seconds)})")
        lines.append(f"Holds {measurement.describe_kind()}")
    else:
        lines.append("Estimated from counts x average sizes (1 GB = 10^9 bytes)")
    lines += ["", *_modality_table(storage, unit, decoded), ""]
    if decoded is not None:
        lines.append(_decoded_note(decoded, storage.total_bytes))
    if measurement is None:
        lines.append(f"Assumed: text {units.format_number(a.words_per_text)} words x "
                     f"{units.format_number(a.bytes_per_word)} bytes/word, image "
                     f"{units.format_size(a.image_bytes)}, audio {units.format_size(a.audio_bytes)}, "
                     f"video {units.format_size(a.video_bytes)}")
    for note in storage.notes:
        lines.append(f"Note: {note}")
    if lines[-1]:
        lines.append("")
    lines.append("Planning")
    items = _planning_items(storage, result, unit)
    width = max(len(k) for k, _ in items)
    for key, value in items:
        lines.append(f"  {key:<{width}}  {value}")
    return "\n".join(lines)


def _modality_table(storage: StorageEstimate, unit: str, decoded: PredecodedEstimate | None) -> list[str]:
    """The per-modality rows (count, average size, total; pre-decoded total when given)."""
    rows = [("modality", "count", "avg size", "total")]
    for row in storage.rows:
        rows.append((LABELS[row.modality], units.format_count(row.count),
                     units.format_size(row.avg_bytes) if row.count else "-",
                     _fmt(row.total_bytes, unit)))
    if storage.other_bytes or storage.other_count:
        label = "other" if storage.other_count else "overhead"
        rows.append((label, units.format_count(storage.other_count) if storage.other_count else "",
                     "", _fmt(storage.other_bytes, unit)))
    rows.append(("total", units.format_count(storage.total_count + storage.other_count), "",
                 _fmt(storage.total_bytes, unit)))
    if decoded is not None:
        extra = {LABELS[m]: _fmt(decoded.totals[m], unit) for m in decoded.totals}
        extra["total"] = _fmt(decoded.total_bytes, unit)
        rows = [rows[0] + (f"pre-decoded ({decoded.preset})",)] + [r + (extra.get(r[0], ""),) for r in rows[1:]]
    columns = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(columns)]
    lines = []
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * (sum(widths) + 2 * (columns - 1)))
        cells = [f"{r[0]:<{widths[0]}}"] + [f"{r[k]:>{widths[k]}}" for k in range(1, columns)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _planning_items(storage: StorageEstimate, result: Plan, unit: str) -> list[tuple[str, str]]:
    """The planning section's ``(label, text)`` lines."""
    a, p = storage.assumptions, result.inputs
    gpu = result.gpu
    epochs = units.format_number(p.epochs)
    t = result.tokens
    if p.capacity_bytes is None:
        capacity = "give --capacity SIZE to check"
    elif result.fits:
        capacity = (f"fits in {units.format_size(p.capacity_bytes)}: "
                    f"{_fmt(result.capacity_margin_bytes, unit)} to spare")
    else:
        capacity = (f"does NOT fit in {units.format_size(p.capacity_bytes)}: "
                    f"short by {_fmt(-result.capacity_margin_bytes, unit)}")
    items = [
        ("shards", f"{units.format_count(result.shards)} at a {units.format_size(p.shard_bytes)} "
                   f"target (average {units.format_size(result.avg_shard_bytes)})"),
        ("training tokens", f"{units.format_count(result.total_tokens)} per epoch"),
        ("", f"text {units.format_count(t['text'])} "
             f"({units.format_number(p.tokens_per_word)} per word, "
             f"{units.format_number(a.bytes_per_word)} bytes per word)"),
        ("", f"images {units.format_count(t['image'])} ({p.tokens_per_image} each), "
             f"audio {units.format_count(t['audio'])} ({p.tokens_per_audio} each), "
             f"video {units.format_count(t['video'])} ({p.tokens_per_video} each)"),
        ("training compute", f"{units.format_flops(result.flops)} = 6 x "
                             f"{units.format_count(p.params)} params x "
                             f"{units.format_count(result.total_tokens)} tokens x {epochs} epoch"
                             f"{'' if p.epochs == 1 else 's'}"),
        ("GPU time", f"{units.format_duration(result.seconds)} on {p.gpus} x {gpu.name} "
                     f"({units.format_number(gpu.bf16_tflops)} TFLOPS dense bf16 at "
                     f"{units.format_number(p.utilization * 100)}% utilisation) = "
                     f"{units.format_number(result.gpu_hours)} GPU-hours"),
        ("worker memory", f"{units.format_size(result.worker_bytes)} "
                          f"({'fits' if result.fits_gpu else 'does NOT fit'} in {gpu.name}'s "
                          f"{units.format_size(gpu.memory_bytes)}; plus CUDA context)"),
        ("", f"{units.format_size(result.state_bytes)} weights+grads+AdamW "
             f"({p.bytes_per_param_training} B/param, mixed precision)"),
        ("", f"{units.format_size(result.activation_bytes)} activations ({p.layers} layers, "
             f"batch {p.batch_size}, seq {p.seq_len}, hidden {p.hidden}, {p.heads} heads)"),
        ("", f"{units.format_size(result.logits_bytes)} fp32 logits "
             f"(vocab {units.format_count(p.vocab_size)})"),
        ("checkpoint", f"{units.format_size(result.checkpoint_weights_bytes)} weights (fp32), "
                       f"{units.format_size(result.checkpoint_full_bytes)} with AdamW state"),
        ("capacity", capacity),
    ]
    return items


def _decoded_note(decoded: PredecodedEstimate, raw_bytes: int) -> str:
    spec, per = decoded.spec, decoded.per_sample
    ratio = raw_bytes / decoded.total_bytes if decoded.total_bytes else 0.0
    return (f"Pre-decoded at the {decoded.preset} spec: image {spec['image_size']}px uint8 "
            f"({units.format_size(per['image'])}), audio {spec['audio_n_mels']} mels float16 "
            f"({units.format_size(per['audio'])}), video {spec['video_frames']} x {spec['video_size']}px uint8 "
            f"({units.format_size(per['video'])}), text + int32 ids (at most {spec['max_text_tokens']}); "
            f"{ratio:,.1f}x smaller than stored now, but fixed to this spec (another preset needs a re-pack)")


def run(argv: Sequence[str] | None = None) -> tuple[StorageEstimate, Plan, Any, argparse.Namespace]:
    """Parse ``argv`` and compute everything; raises ``UsageError`` on bad input."""
    args = build_parser().parse_args(argv)
    assumptions = Assumptions(words_per_text=args.words_per_text,
                              bytes_per_word=args.bytes_per_word, image_bytes=args.image_size,
                              audio_bytes=args.audio_size, video_bytes=args.video_size)
    given = {k: getattr(args, k) for k in ("text", "images", "audio", "video")}
    measurement = None
    if args.from_uri is not None:
        if any(v is not None for v in given.values()):
            raise UsageError("give either counts (--text/--images/--audio/--video) or --from, "
                             "not both")
        from storage_calc.measure import MeasureError, measure

        try:
            measurement = measure(args.from_uri)
        except MeasureError as exc:
            raise UsageError(str(exc)) from None
        storage = from_measurement(measurement, assumptions)
    else:
        if not any(given.values()):
            raise UsageError("nothing to estimate: give at least one count "
                             "(--text/--images/--audio/--video) or --from URI")
        storage = estimate(**{k: v or 0 for k, v in given.items()}, assumptions=assumptions)
    inputs = PlanInputs(
        shard_bytes=args.shard_size, tokens_per_word=args.tokens_per_word,
        tokens_per_image=args.tokens_per_image, tokens_per_audio=args.tokens_per_audio,
        tokens_per_video=args.tokens_per_video, epochs=args.epochs, params=args.params,
        gpu=args.gpu, gpus=args.gpus, utilization=args.utilization, hidden=args.hidden,
        layers=args.layers, heads=args.heads, vocab_size=args.vocab_size,
        batch_size=args.batch_size, seq_len=args.seq_len, capacity_bytes=args.capacity,
    )
    return storage, plan(storage, inputs), measurement, args


def to_json(storage: StorageEstimate, result: Plan, measurement: Any = None,
            decoded: PredecodedEstimate | None = None) -> dict[str, Any]:
    """The JSON document: bytes per modality and total, assumptions, planning, measurement,
    and (with ``--decode``) ``predecoded``."""
    data = storage.to_dict()
    data["plan"] = result.to_dict()
    if measurement is not None:
        data["measurement"] = measurement.to_dict()
    if decoded is not None:
        data["predecoded"] = decoded.to_dict()
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0, or 2 for bad input)."""
    try:
        storage, result, measurement, args = run(argv)
    except UsageError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    decoded = predecoded_estimate(storage, args.decode, args.tokens_per_word) if args.decode else None
    if args.json:
        print(json.dumps(to_json(storage, result, measurement, decoded), indent=2))
    else:
        print(render_table(storage, result, args.unit, measurement, decoded))
    return 0


if __name__ == "__main__":
    sys.exit(main())

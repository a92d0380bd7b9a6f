"""``slm-compress SRC DST``: prune, share, quantize (and export to ONNX) a saved model.

SRC and DST are folders or ``s3://`` prefixes in ``save_pretrained``'s format; DST loads with
``MultimodalSLM.from_pretrained`` and carries ``compression.json`` (steps, sizes, parameters,
and the calibration loss before/after when ``--calibration-data`` is given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import safetensors.torch
import torch

from multimodal import fs
from multimodal.compress import prune, quantize, share, storage, structured
from multimodal.compress.report import (CORE_LAYERS, changes, core_layer_bytes, file_bytes,
                                        model_figures, tensor_bytes)

COMPRESSION_FILE = "compression.json"
ONNX_FILE = "model.onnx"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-compress",
        description="Compress a model saved by save_pretrained (folder or s3:// prefix) for the "
                    "edge. Steps run in this order: prune, tie embeddings, share layers, int8, ONNX.")
    parser.add_argument("src", help="model folder or s3:// prefix (config.json + model.safetensors)")
    parser.add_argument("dst", help="where to write the compressed model (folder or s3:// prefix)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="store weight matrices as int8 + one fp32 scale per output channel")
    parser.add_argument("--prune-ratio", type=float, default=0.0, metavar="R",
                        help="fraction of the core layers' parameters to remove (0 = no pruning)")
    parser.add_argument("--prune-structure", default="ffn", metavar="S[,S...]",
                        help="what is removed: ffn (channels), heads (attention head groups), "
                             "layers (lowest block influence), or a comma list sharing the ratio, "
                             "e.g. layers,ffn (default ffn)")
    parser.add_argument("--prune-method", choices=prune.METHODS, default=None,
                        help="channel/head importance: wanda (needs --calibration-data; the default "
                             "when it is given) or magnitude")
    parser.add_argument("--tie-embeddings", action="store_true",
                        help="one matrix for the token embedding and the LM head")
    parser.add_argument("--share-layers", action="store_true",
                        help="ALBERT-style: adjacent core layers share one set of weights")
    parser.add_argument("--share-group", type=int, default=2,
                        help="layers per shared group with --share-layers (default 2)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (fp32 graph)")
    parser.add_argument("--calibration-data", metavar="URI", default=None,
                        help="shards (slm-make-shards) for wanda pruning and the loss check")
    parser.add_argument("--calibration-batches", type=int, default=4,
                        help="batches of 16 samples read from --calibration-data (default 4)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


@torch.no_grad()
def calibration_loss(model, batches) -> float:
    """Mean text loss over the calibration batches (token-weighted)."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        output = model(batch)
        total += float((output.per_sample_loss * output.per_sample_tokens).sum())
        tokens += int(output.per_sample_tokens.sum())
    return total / max(tokens, 1)


def save_compressed(model, uri: str, int8: dict | None) -> int:
    """Weights (int8 and aliases per ``storage``), tokenizer and config, config last; returns
    the bytes the core layers' tensors take in the file."""
    from multimodal.model import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

    tensors, metadata = storage.pack_state(model, int8)
    fs.write_bytes_atomic(fs.join(uri, WEIGHTS_FILE), safetensors.torch.save(tensors, metadata))
    if model.tokenizer is not None:
        fs.write_bytes_atomic(fs.join(uri, TOKENIZER_FILE), model.tokenizer.to_str().encode())
    fs.write_bytes_atomic(fs.join(uri, CONFIG_FILE), model.cfg.model_dump_json(indent=2).encode())
    return tensor_bytes(tensors, CORE_LAYERS)


def compress(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested steps from ``args.src`` to ``args.dst``; returns the report."""
    from multimodal.model import WEIGHTS_FILE, MultimodalSLM

    quiet = args.json
    started = time.monotonic()
    model = MultimodalSLM.from_pretrained(args.src)
    report: dict[str, Any] = {"source": args.src, "destination": args.dst, "steps": [],
                              "before": {**model_figures(model),
                                         "core_layer_bytes": core_layer_bytes(model, None)},
                              "source_file_bytes": file_bytes(fs.join(args.src, WEIGHTS_FILE))}
    _say(f"loaded {args.src}: {report['before']['parameters']['total']:,} parameters", quiet)
    batches = None
    if args.calibration_data:
        from multimodal.compress.calibration import calibration_batches

        batches = calibration_batches(model, args.calibration_data, args.calibration_batches)
        report["calibration"] = {"data": args.calibration_data, "batches": len(batches),
                                 "samples": sum(len(b["input_ids"]) for b in batches),
                                 "loss_before": calibration_loss(model, batches)}
    if args.prune_ratio > 0:
        method = args.prune_method or ("wanda" if batches else "magnitude")
        structures = structured.parse_structures(args.prune_structure)
        model, parts = structured.prune_core(model, args.prune_ratio, structures, method, batches)
        report["steps"].append({"step": "prune", "method": method, "ratio": args.prune_ratio,
                                "structures": parts})
        _say(f"pruned {','.join(structures)}: core layers {parts[0]['core_parameters'][0]:,} -> "
             f"{parts[-1]['core_parameters'][1]:,} parameters ({method})", quiet)
    if args.tie_embeddings:
        share.tie_embeddings(model)
        report["steps"].append({"step": "tie_embeddings"})
        _say("tied the token embedding and the LM head", quiet)
    if args.share_layers:
        aliases = share.share_layers(model, args.share_group)
        report["steps"].append({"step": "share_layers", "group": args.share_group,
                                "shared_tensors": len(aliases)})
        _say(f"shared core layers in groups of {args.share_group}", quiet)
    int8 = None
    if args.quantize == "int8":
        int8 = quantize.quantize_model_weights(model)
        report["steps"].append({"step": "quantize", "scheme": "int8 weight-only per output channel",
                                "tensors": len(int8),
                                "int8_parameters": sum(v.numel() for v, _ in int8.values())})
        _say(f"quantized {len(int8)} weight tensors to int8", quiet)
    report["after"] = model_figures(model)
    report["after"]["core_layer_bytes"] = save_compressed(model, args.dst, int8)
    report["file_bytes"] = file_bytes(fs.join(args.dst, WEIGHTS_FILE))
    report["size_ratio"] = report["source_file_bytes"] / report["file_bytes"]
    report["change"] = changes(report)
    if batches is not None:
        report["calibration"]["loss_after"] = calibration_loss(model, batches)
    if args.onnx:
        from multimodal.compress.onnx_export import export_onnx

        _say("exporting model.onnx", quiet)
        onnx_bytes = export_onnx(model)
        fs.write_bytes_atomic(fs.join(args.dst, ONNX_FILE), onnx_bytes)
        report["steps"].append({"step": "onnx", "file": ONNX_FILE, "bytes": len(onnx_bytes)})
    report["seconds"] = round(time.monotonic() - started, 2)
    fs.write_bytes_atomic(fs.join(args.dst, COMPRESSION_FILE),
                          json.dumps(report, indent=2).encode())
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prune_ratio and not 0 < args.prune_ratio < 1:
        print(f"slm-compress: error: --prune-ratio must be in (0, 1), got {args.prune_ratio}",
              file=sys.stderr)
        return 2
    if args.prune_method == "wanda" and not args.calibration_data:
        print("slm-compress: error: --prune-method wanda needs --calibration-data", file=sys.stderr)
        return 2
    try:
        report = compress(args)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"slm-compress: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        total = (report["before"]["parameters"]["total"], report["after"]["parameters"]["total"])
        print(f"{args.dst}: parameters {total[0]:,} -> {total[1]:,}, weights file "
              f"{report['source_file_bytes'] / 1e6:.2f} MB -> {report['file_bytes'] / 1e6:.2f} MB "
              f"({report['size_ratio']:.2f}x smaller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The hub demo: fine-tune three domain experts from one base model and write the hub's config.

1. a demo corpus per caption domain (``shapes``: images, ``notes``: audio, ``motion``: video) and
   one mixed validation and test split, packed into shards;
2. the base model: ``--base URI`` (e.g. the model ``make demo`` exported), or a short base run
   on the mixed corpus with ``jobs/train_multimodal.py``'s code;
3. one fine-tune per domain: ``--init-from`` the base (LoRA on the core, ``--freeze none``);
4. ``hub.yaml`` listing the experts, each calibrated on the mixed validation split.

Then ``slm-hub serve OUT/hub.yaml`` deploys them (needs the cluster from ``slm-cluster up``).
Runs on the cluster at ``--address``/``RAY_ADDRESS`` when there is one, else on a private local
Ray that ends with this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

DOMAINS = {"shapes": "image", "notes": "audio", "motion": "video"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub_demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "demo_out" / "hub"), help="local folder for everything")
    parser.add_argument("--base", default=None, help="base model URI (default: train a short one here)")
    parser.add_argument("--per-domain", type=int, default=400, help="samples per domain over all splits")
    parser.add_argument("--base-minutes", type=float, default=6.0, help="base run time budget")
    parser.add_argument("--expert-minutes", type=float, default=3.0, help="time budget per fine-tune")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank of the fine-tunes")
    parser.add_argument("--address", default=os.environ.get("SLM_RAY_GCS_ADDRESS"),
                        help="Ray GCS address (default: $SLM_RAY_GCS_ADDRESS from `slm-cluster env`, else a private local Ray)")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of a private local Ray")
    return parser


def say(message: str) -> None:
    print(message, flush=True)


def make_corpus(out: Path, per_domain: int) -> dict:
    """Shards per domain (train) and mixed val/test; returns their URIs."""
    import csv

    from multimodal.data.demo_corpus import MANIFEST_FIELDS, make_demo_corpus
    from multimodal.data.make_shards import make_shards

    shards = out / "shards"
    uris: dict = {"train": {}, "mixed": {}}
    mixed: dict[str, list] = {"train": [], "val": [], "test": []}
    for seed, (domain, modality) in enumerate(DOMAINS.items()):
        corpus = make_demo_corpus(out / "corpus" / domain, {modality: per_domain}, seed=seed)
        for split, manifest in corpus.items():
            with open(manifest, newline="") as handle:
                rows = list(csv.DictReader(handle))
            base = manifest.parent
            for row in rows:  # absolute media paths, so the mixed manifests can live elsewhere
                row.update({m: str(base / row[m]) for m in ("image", "audio", "video") if row[m]})
            mixed[split] += rows
            if split == "train":
                path = out / "corpus" / f"{domain}-train.csv"
                _write(path, rows, MANIFEST_FIELDS, csv)
                uris["train"][domain] = str(shards / domain / "train")
                make_shards(str(path), uris["train"][domain], progress=None)
    for split, rows in mixed.items():
        path = out / "corpus" / f"mixed-{split}.csv"
        _write(path, rows, MANIFEST_FIELDS, csv)
        uris["mixed"][split] = str(shards / "mixed" / split)
        make_shards(str(path), uris["mixed"][split], progress=None)
    return uris


def _write(path: Path, rows: list, fields, csv) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def train(name: str, data: str, val: str, runs: Path, minutes: float, **finetune) -> str:
    """One run of the training job (Ray Train, 2 workers); returns the exported model's URI."""
    from multimodal.job_config import build_config
    from multimodal.launch import run

    values = {
        "model": {"preset": "tiny"},
        "data": {"train": data, "val": val, "vocab_size": 300, "decode_cpus": 0.5, "cache_decoded": True},
        "train": {"batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 20, "val_every_steps": 50,
                  "log_every_steps": 25, "num_epochs": 1000, "max_train_minutes": minutes},
        "run": {"name": name, "storage_path": str(runs), "num_workers": 2, "cpus_per_worker": 0.5},
    }
    if finetune:
        values["finetune"] = finetune
        values["train"].update(learning_rate=2e-3, warmup_steps=5)
    started = time.time()
    result = run(build_config(values))
    say(f"{name}: {result['steps']} steps in {time.time() - started:.0f}s, best val loss "
        f"{result['best_val_loss']:.4f} -> {result['model_uri']}")
    return result["model_uri"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray
    import yaml

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    say(f"=== 1/4 corpus: {args.per_domain} samples per domain ({', '.join(DOMAINS)}) in {out}")
    uris = make_corpus(out, args.per_domain)
    runs = out / "runs"
    say("=== 2/4 base model")
    base = args.base or train("base", uris["mixed"]["train"], uris["mixed"]["val"], runs, args.base_minutes)
    experts = []
    for domain in DOMAINS:
        say(f"=== 3/4 fine-tune {domain} from {base} (LoRA rank {args.lora_rank})")
        model = train(domain, uris["train"][domain], uris["mixed"]["val"], runs, args.expert_minutes,
                      init_from=base, freeze="none", lora_rank=args.lora_rank)
        experts.append({"name": domain, "model": model, "validation": uris["mixed"]["val"],
                        "num_cpus": 0.25})
    config = {"experts": experts, "routing": {"threshold": 0.2},
              "server": {"ingress_num_cpus": 0.25}}
    path = out / "hub.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    say("=== 4/4 calibrate the experts on the mixed validation split")
    from multimodal.hub.config import load_hub_config
    from multimodal.hub.service import register_experts

    register_experts(load_hub_config(path), say)
    (out / "demo.json").write_text(json.dumps({"base": base, "test": uris["mixed"]["test"],
                                               "experts": experts}, indent=1))
    say(f"\nwrote {path}\nserve it:  .venv/bin/slm-hub serve {path}\n"
        f"benchmark: .venv/bin/python jobs/bench_hub.py --config {path} --test {uris['mixed']['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A fine-tune through the real training job: --init-from an S3 model, a new caption domain, LoRA."""

from __future__ import annotations

import pytest
import torch

from multimodal.config import preset
from multimodal.data.tokenizer import train_tokenizer
from multimodal.evaluation import evaluate
from multimodal.finetune import part_parameters
from multimodal.job_config import build_config
from multimodal.model import MultimodalSLM
from tests.media import demo_shards_on_s3

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def notes_domain(tmp_path_factory, s3_server):
    """A base model on S3 (tiny, its own tokenizer) and shards of a caption domain it never saw."""
    bucket, uris = demo_shards_on_s3(s3_server, tmp_path_factory.mktemp("notes"), "finetune", {"audio": 40},
                                     seed=5)
    cfg = preset("tiny")
    tokenizer = train_tokenizer(["a red circle", "notes C D E G A", "a blue square moving left"] * 20, 300)
    cfg.core.vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    base_uri = f"s3://{bucket}/base/model"
    MultimodalSLM(cfg).save_pretrained(base_uri, tokenizer=tokenizer)
    return bucket, uris, base_uri


def test_lora_finetune_learns_the_new_domain_and_keeps_frozen_encoders(ray_cluster, notes_domain):
    from multimodal.launch import run

    bucket, uris, base_uri = notes_domain
    job = build_config({
        "data": {"train": uris["train"], "val": uris["val"], "decode_cpus": 0.5},
        "train": {"batch_size": 6, "learning_rate": 5e-3, "warmup_steps": 1, "val_every_steps": 5,
                  "log_every_steps": 5, "num_epochs": 50, "max_steps": 10},
        "run": {"name": "notes", "storage_path": f"s3://{bucket}/runs", "num_workers": 1,
                "cpus_per_worker": 0.5, "max_failures": 0},
        "finetune": {"init_from": base_uri, "freeze": "encoders", "lora_rank": 4},
    })
    result = run(job)
    assert result["steps"] == 10

    base = MultimodalSLM.from_pretrained(base_uri)
    tuned = MultimodalSLM.from_pretrained(result["model_uri"])  # plain weights: LoRA merged
    assert tuned.cfg == base.cfg
    assert tuned.tokenizer.to_str() == base.tokenizer.to_str()
    base_state = base.state_dict()
    for name, parameter in part_parameters(tuned, "encoders"):
        assert torch.equal(parameter, base_state[name]), name
    assert not torch.equal(tuned.state_dict()["core.layers.1.mlp.up_proj.weight"],
                           base_state["core.layers.1.mlp.up_proj.weight"])
    base_loss = evaluate(base, uris["val"], max_new_tokens=4)["loss"]
    tuned_loss = evaluate(tuned, uris["val"], max_new_tokens=4)["loss"]
    assert tuned_loss < base_loss

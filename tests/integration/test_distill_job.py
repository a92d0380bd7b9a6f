"""The training job with a teacher (distillation) and the early-exit loss, on the session's Ray
cluster and S3 server (tiny preset, CPU, a few steps)."""

from __future__ import annotations

import pytest
import torch

from multimodal.config import preset
from multimodal.model import MultimodalSLM
from tests.integration.test_train_job import demo_shards, job_config  # noqa: F401 (fixture)
from tests.unit.test_model import make_tokenizer

pytestmark = pytest.mark.integration


def save_teacher(uri: str, tokenizer) -> None:
    cfg = preset("tiny")
    cfg.core.vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    MultimodalSLM(cfg).save_pretrained(uri, tokenizer=tokenizer)


def test_distilled_run_with_exit_loss_trains_and_exports(ray_cluster, s3_server, demo_shards):
    from multimodal.launch import run

    bucket, uris = demo_shards
    teacher = f"s3://{bucket}/teachers/t1"
    save_teacher(teacher, make_tokenizer())
    job = job_config(bucket, uris, "distilled", max_steps=4, teacher=teacher, distill_alpha=0.5,
                     distill_temperature=2.0, early_exit_loss=0.3)
    job.data.tokenizer = f"{teacher}/tokenizer.json"
    job.run.num_workers = 1
    result = run(job)
    assert result["steps"] == 4
    assert result["first_train_loss"] > 0 and result["last_train_loss"] > 0
    student = MultimodalSLM.from_pretrained(result["model_uri"])
    assert student.cfg.core.vocab_size == 300


def test_teacher_with_another_tokenizer_fails_preflight_in_one_line(ray_cluster, s3_server,
                                                                    demo_shards):
    from multimodal.launch import PreflightError, run

    bucket, uris = demo_shards
    teacher = f"s3://{bucket}/teachers/other"
    save_teacher(teacher, make_tokenizer())
    job = job_config(bucket, uris, "mismatch", max_steps=2, teacher=teacher)  # trains its own
    with pytest.raises(PreflightError, match="does not share the run's tokenizer") as error:
        run(job)
    assert "\n" not in str(error.value)

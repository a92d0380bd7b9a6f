"""save_pretrained / from_pretrained through the real (moto) S3 server."""

from __future__ import annotations

import pytest
import torch

from multimodal.config import preset
from multimodal.model import MultimodalSLM
from tests.unit.test_model import make_batch, make_tokenizer

pytestmark = pytest.mark.integration


def test_s3_round_trip_gives_identical_outputs(s3_server, s3_bucket):
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.core.vocab_size = 300
    model = MultimodalSLM(cfg).eval()
    tokenizer = make_tokenizer()
    uri = f"s3://{s3_bucket}/runs/demo/final"
    model.save_pretrained(uri, tokenizer=tokenizer)
    assert sorted(s3_server.keys(s3_bucket)) == [
        "runs/demo/final/config.json", "runs/demo/final/model.safetensors",
        "runs/demo/final/tokenizer.json"]
    loaded = MultimodalSLM.from_pretrained(uri)
    assert loaded.cfg == cfg
    assert loaded.tokenizer.to_str() == tokenizer.to_str()
    batch = make_batch(cfg)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, loaded(batch).logits)
    prompt = [tokenizer.encode("a dog", add_special_tokens=False).ids]
    assert (loaded.generate(prompt_ids=prompt, max_new_tokens=4)[0].token_ids
            == model.generate(prompt_ids=prompt, max_new_tokens=4)[0].token_ids)

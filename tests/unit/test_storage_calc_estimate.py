"""storage_calc.estimate and storage_calc.compute: the seed example exactly, and the planning maths."""

import math

import pytest

from storage_calc.compute import GPUS, SEED_PARAMS, PlanInputs, activation_bytes_per_layer, plan
from storage_calc.estimate import Assumptions, estimate, from_measurement
from storage_calc.measure import Measurement, ModalityStats

SEED = dict(text=1_000_000, images=100_000, audio=50_000, video=20_000)


def test_seed_example_bytes_exactly():
    result = estimate(**SEED)
    assert {r.modality: r.total_bytes for r in result.rows} == {
        "text": 400_000_000, "image": 50_000_000_000,
        "audio": 250_000_000_000, "video": 400_000_000_000,
    }
    assert result.total_bytes == 700_400_000_000
    assert result.total_count == 1_170_000
    assert result.row("text").avg_bytes == 400  # 100 words x 4 bytes


def test_assumption_overrides():
    a = Assumptions(words_per_text=50, bytes_per_word=5, image_bytes=2**20, audio_bytes=10**6,
                    video_bytes=10**8)
    result = estimate(text=10, images=3, audio=2, video=1, assumptions=a)
    assert [r.total_bytes for r in result.rows] == [2500, 3 * 2**20, 2 * 10**6, 10**8]


def test_missing_modalities_are_zero_and_negative_rejected():
    result = estimate(images=2)
    assert result.total_bytes == 1_000_000
    assert result.row("text").count == 0
    with pytest.raises(ValueError):
        estimate(text=-1)


def test_to_dict_has_bytes_and_assumptions():
    data = estimate(**SEED).to_dict()
    assert data["total_bytes"] == 700_400_000_000
    assert data["modalities"]["audio"] == {"count": 50_000, "avg_bytes": 5_000_000,
                                           "bytes": 250_000_000_000}
    assert data["assumptions"]["words_per_text"] == 100
    assert data["assumptions"]["bytes_per_word"] == 4
    assert data["assumptions"]["image_bytes"] == 500_000
    assert data["source"] == "assumed"


def test_plan_seed_numbers():
    storage = estimate(**SEED)
    p = plan(storage, PlanInputs(capacity_bytes=10**12))
    # tokens: 1e6 texts x 100 words x 1.3 tokens/word + 4 tokens per image, clip and video
    assert p.tokens == {"text": 130_000_000, "image": 400_000, "audio": 200_000, "video": 80_000}
    assert p.total_tokens == 130_680_000
    assert p.flops == 6 * SEED_PARAMS * 130_680_000
    assert p.seconds == pytest.approx(p.flops / (25.5e12 * 0.4))
    assert p.gpu_hours == pytest.approx(p.seconds / 3600)
    assert p.shards == 701  # ceil(700.4 GB / 1 GB)
    assert p.state_bytes == 16 * SEED_PARAMS
    # Korthikanti et al.: s*b*h*(34 + 5*a*s/h) per layer, 6 layers
    assert p.activation_bytes == 6 * 256 * 32 * 512 * (34 + 5 * 8 * 256 // 512)
    assert p.logits_bytes == 4 * 256 * 32 * 32000
    assert p.worker_bytes == p.state_bytes + p.activation_bytes + p.logits_bytes
    assert p.fits_gpu  # 3.4 GB < 12 GB
    assert p.checkpoint_weights_bytes == 4 * SEED_PARAMS
    assert p.checkpoint_full_bytes == 12 * SEED_PARAMS
    assert p.fits is True and p.capacity_margin_bytes == 299_600_000_000


def test_plan_scales_with_gpus_epochs_and_utilisation():
    storage = estimate(**SEED)
    base = plan(storage)
    more = plan(storage, PlanInputs(gpu="h100", gpus=8, epochs=3, utilization=0.5))
    assert more.flops == 3 * base.flops
    assert more.seconds == pytest.approx(more.flops / (8 * 989e12 * 0.5))
    assert more.gpu_hours == pytest.approx(8 * more.seconds / 3600)


def test_plan_capacity_does_not_fit_and_shard_size():
    p = plan(estimate(**SEED), PlanInputs(capacity_bytes=500 * 10**9, shard_bytes=256 * 10**6))
    assert p.fits is False
    assert p.capacity_margin_bytes == -200_400_000_000
    assert p.shards == math.ceil(700_400_000_000 / 256_000_000)


def test_activation_formula_and_gpu_table():
    assert activation_bytes_per_layer(2048, 1, 4096, 32) == 2048 * 4096 * (34 + 5 * 32 * 2048 / 4096)
    for key in ("rtx3060", "a100", "h100", "l4", "a10g", "h200"):
        assert GPUS[key].bf16_tflops > 0
    assert GPUS["a100"].bf16_tflops == 312 and GPUS["h100"].bf16_tflops == 989
    with pytest.raises(ValueError):
        plan(estimate(text=1), PlanInputs(gpu="tpu"))


def test_from_measurement_uses_real_averages_and_text_bytes_for_tokens():
    m = Measurement(uri="x", source="listing", objects=6, seconds=0.0, total_bytes=1_200,
                    modalities={"text": ModalityStats(2, 800), "image": ModalityStats(2, 300),
                                "audio": ModalityStats(0, 0), "video": ModalityStats(1, 50),
                                "other": ModalityStats(1, 50)})
    s = from_measurement(m)
    assert s.row("text").avg_bytes == 400 and s.row("image").avg_bytes == 150
    assert s.total_bytes == 1_200 and s.other_bytes == 50 and s.other_count == 1
    p = plan(s)
    assert p.tokens["text"] == 260  # 800 bytes / 4 bytes per word x 1.3
    assert p.tokens["image"] == 8 and p.tokens["video"] == 4

"""The hub's pieces without Ray: config, calibration, request decoding, routing."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from multimodal.config import MediaSpec, preset
from multimodal.data import synthetic
from multimodal.hub.calibration import (Outcome, calibrate, confidence, expected_calibration_error,
                                        fit_temperature)
from multimodal.hub.cli import build_parser
from multimodal.hub.config import HubConfigError, load_hub_config, parse_hub_config
from multimodal.hub.requests import BadRequest, decode_query, parse_body, spec_key
from multimodal.hub.router import ExpertAnswer, candidates, choose


def test_smallest_config_resolves_relative_paths(tmp_path):
    path = tmp_path / "hub.yaml"
    path.write_text("experts:\n  - name: shapes\n    model: s3://bucket/runs/shapes/model\n"
                    "  - name: notes\n    model: ./runs/notes/model\n")
    config = load_hub_config(path)
    assert [e.model for e in config.experts] == ["s3://bucket/runs/shapes/model",
                                                 str((tmp_path / "runs/notes/model").resolve())]
    assert config.server.host == "127.0.0.1" and config.server.port == 8000
    assert config.routing.prefilter == "modalities"


@pytest.mark.parametrize("values, message", [
    ({"experts": []}, "experts: List should have at least 1 item"),
    ({"experts": [{"name": "a", "model": "m", "gpu": 1}]}, "experts.0.gpu: unknown key"),
    ({"experts": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}, "used twice"),
    ({"experts": [{"name": "a", "model": "m"}], "routing": {"threshold": 2}}, "routing.threshold"),
])
def test_bad_configs_are_one_line_errors(values, message):
    with pytest.raises(HubConfigError, match=message) as caught:
        parse_hub_config(values)
    assert "\n" not in str(caught.value)


def test_every_command_has_help(capsys):
    parser = build_parser()
    for command in ("serve", "status", "down", "calibrate"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: slm-hub " + command in capsys.readouterr().out


def test_temperature_fit_lowers_calibration_error():
    rng = np.random.default_rng(0)
    # an over-confident expert: raw confidence ~0.9, but right only half the time
    logprobs = np.log(rng.uniform(0.85, 0.95, 400))
    correct = rng.uniform(size=400) < 0.5
    temperature = fit_temperature(logprobs, correct)
    assert temperature < 0.5
    before = expected_calibration_error(confidence(logprobs, 1.0), correct)
    after = expected_calibration_error(confidence(logprobs, temperature), correct)
    assert after < before / 2


def test_calibrate_measures_competence_per_media_group():
    outcomes = [Outcome("image", "a red circle", "a red circle", -0.01)] * 6
    outcomes += [Outcome("audio", "notes C", "a red circle", -0.2)] * 6
    calibration = calibrate(outcomes, "val")
    assert calibration.accuracy_by_group == {"audio": 0.0, "image": 1.0}
    assert calibration.modalities == ["image"] and calibration.samples == 12
    assert calibration.ece_after <= calibration.ece_before
    assert calibration.score_tokens is None and calibration.score_temperature is None


def test_calibrate_fits_the_short_score_for_the_whole_answer():
    # the first tokens are surer than the whole answer: the short score needs its own temperature
    outcomes = [Outcome("image", "a red circle", "a red circle", -0.05, score_logprob=-0.01)] * 8
    outcomes += [Outcome("image", "a red circle", "a blue square", -0.6, score_logprob=-0.1)] * 8
    calibration = calibrate(outcomes, "val", score_tokens=3)
    assert calibration.score_tokens == 3
    assert 0 < calibration.score_temperature < calibration.temperature
    right, wrong = confidence(np.array([-0.01, -0.1]), calibration.score_temperature)
    assert right > 0.5 > wrong and calibration.score_ece_after < 0.3


def test_request_errors_are_one_line_4xx():
    cases = [(b"{", 400), (b"[]", 400), (b'{"prompt": "a", "seed": 1}', 422), (b"{}", 422),
             (b'{"prompt": "a", "max_new_tokens": 99}', 422), (b'{"prompt": 3}', 422)]
    for body, status in cases:
        with pytest.raises(BadRequest) as caught:
            parse_body(body, max_new_tokens_limit=64)
        assert caught.value.status == status and "\n" not in caught.value.reason


def test_media_decoded_once_per_spec_by_the_pipeline_decoders(tmp_path):
    tiny, default = preset("tiny").media, MediaSpec()
    image = synthetic.encoded_bytes(synthetic.write_image, ".png", tmp_path)
    request = parse_body(f'{{"image": "{base64.b64encode(image).decode()}"}}'.encode(), 64)
    query = decode_query(request, {spec_key(tiny): tiny, spec_key(default): default})
    assert query.modalities == ("image",)
    assert query.for_spec(spec_key(tiny))["image"].shape == (3, tiny.image_size, tiny.image_size)
    assert query.for_spec(spec_key(default))["image"].shape == (3, default.image_size, default.image_size)
    broken = parse_body(f'{{"image": "{base64.b64encode(image[:40]).decode()}"}}'.encode(), 64)
    with pytest.raises(BadRequest, match="image: cannot decode") as caught:
        decode_query(broken, {spec_key(tiny): tiny})
    assert caught.value.status == 422


def test_router_prefilters_by_modality_and_refuses_below_threshold():
    known = {"shapes": ["image"], "notes": ["audio"], "new": None}
    assert candidates(("image",), known, "modalities") == ["shapes", "new"]
    assert candidates((), known, "modalities") == ["shapes", "notes", "new"]
    assert candidates(("video",), {"shapes": ["image"]}, "modalities") == ["shapes"]
    assert candidates(("image",), known, "none") == ["shapes", "notes", "new"]
    answers = {"shapes": ExpertAnswer("a red circle", -0.05, 0.9), "new": ExpertAnswer("x", -1.0, 0.2)}
    body = choose(answers, {"notes": "TimeoutError"}, threshold=0.5, latency_ms=3.0, skipped=[])
    assert (body["expert"], body["text"], body["confidence"]) == ("shapes", "a red circle", 0.9)
    assert body["failed"] == {"notes": "TimeoutError"}
    refused = choose(answers, {}, threshold=0.95, latency_ms=3.0)
    assert refused["expert"] is None and refused["answer"].startswith("no expert confident")


def test_rayservice_manifest_is_a_valid_serve_config_for_the_hub():
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[2] / "cluster" / "kuberay" / "rayservice-hub.yaml"
    [service] = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "RayService"]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.parse_obj(serve_config)
    [app] = schema.applications
    module, _, attribute = app.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert app.args["config"].startswith("s3://") and "api" not in str(app.runtime_env).lower()
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    assert "peft==0.21.2" in app.runtime_env["pip"]


def test_cli_bad_config_is_a_one_line_error_with_exit_2(tmp_path, capsys):
    from multimodal.hub.cli import main

    assert main(["serve", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("experts:\n  - name: a\n")
    assert main(["calibrate", str(tmp_path / "bad.yaml")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [f"error: hub config error: {tmp_path / 'missing.yaml'}: no such file",
                      "error: hub config error: experts.0.model: Field required"]


def test_health_keeps_a_failed_expert_down_until_a_probe_answers():
    import asyncio

    from multimodal.hub.health import ExpertHealth, probe_down_experts

    health = ExpertHealth(["shapes", "notes"])
    health.mark_down("notes", "ActorDiedError: the actor died")
    health.mark_down("notes", "TimeoutError: later")  # the first reason is kept
    assert health.snapshot() == {"shapes": "up", "notes": "down: ActorDiedError: the actor died"}
    assert health.reason("notes").startswith("unavailable for ")
    pinged, loadable = [], {"notes": False}

    async def ping(name: str) -> None:
        pinged.append(name)
        if not loadable[name]:
            raise FileNotFoundError("model.safetensors")

    async def scenario() -> None:
        probes = asyncio.create_task(probe_down_experts(health, ping, interval_s=0.01, timeout_s=1.0))
        while len(pinged) < 3:  # failing probes leave it down
            await asyncio.sleep(0.01)
        assert not health.is_up("notes")
        loadable["notes"] = True
        while not health.is_up("notes"):
            await asyncio.sleep(0.01)
        probes.cancel()

    asyncio.run(scenario())
    assert set(pinged) == {"notes"}  # an expert that is up is never probed
    assert health.snapshot() == {"shapes": "up", "notes": "up"}

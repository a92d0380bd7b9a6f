"""The hub on the session's Ray cluster: tiny experts behind Ray Serve, over real HTTP on 127.0.0.1.

One deployment serves the whole module (Serve apps take seconds to start); it is removed at the end.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from multimodal.hub.config import parse_hub_config
from tests.conftest import free_port
from tests.hub_experts import demo_tokenizer, domain_data, train_expert

pytestmark = pytest.mark.integration

DOMAIN_MEDIA = {"shapes": "image", "notes": "audio"}
API_KEY = "test-hub-key"


@pytest.fixture(scope="module")
def hub(ray_cluster, tmp_path_factory, monkeypatch_module):
    """Two tiny experts (shapes: images, notes: audio), calibrated on a mixed validation split,
    served by the hub with an API key; yields (url, test rows by domain)."""
    from multimodal.hub import service

    root = tmp_path_factory.mktemp("hub")
    data = domain_data(root, list(DOMAIN_MEDIA), count=12)
    tokenizer = demo_tokenizer()
    experts = [{"name": name, "validation": data["val"], "num_cpus": 0.1,
                "model": train_expert(data["train"][name], str(root / "experts" / name), tokenizer, steps=150)}
               for name in DOMAIN_MEDIA]
    monkeypatch_module.setenv("HUB_TEST_KEY", API_KEY)
    config = parse_hub_config({
        "experts": experts,
        "routing": {"threshold": 0.05, "expert_timeout_s": 8.0},
        "server": {"port": free_port(), "max_body_bytes": 200_000, "api_key_env": "HUB_TEST_KEY",
                   "ingress_num_cpus": 0.1},
    })
    url = service.deploy(config, say=lambda message: None)
    yield url, data["test"], config
    assert service.down() is True  # what `slm-hub down` does: the app is deleted, Serve stopped
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(url + "/healthz", timeout=5)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def call(url: str, path: str, body: bytes | dict | None = None, key: str | None = API_KEY,
         timeout: float = 60) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json",
                                              **({"X-API-Key": key} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def media_request(row: dict[str, str], **extra) -> dict:
    modality = next(m for m in ("image", "audio", "video") if row[m])
    return {modality: base64.b64encode(Path(row[modality]).read_bytes()).decode(), "max_new_tokens": 12, **extra}


def test_routes_each_domain_to_its_expert(hub):
    from multimodal.hub import service

    url, test_rows, _ = hub
    state = service.status()  # what `slm-hub status` prints
    assert state["status"] == "RUNNING"
    assert set(state["deployments"]) == {"ingress", "expert-shapes", "expert-notes"}
    assert state["deployments"]["expert-notes"]["replicas"] == {"RUNNING": 1}
    status, health = call(url, "/healthz", key=None)
    assert status == 200 and health == {"status": "ok", "experts": 2,
                                        "health": {"shapes": "up", "notes": "up"}}
    status, listing = call(url, "/v1/experts")
    assert status == 200
    calibration = {e["name"]: e["calibration"] for e in listing["experts"]}
    assert {e["name"]: e["modalities"] for e in listing["experts"]} == {"shapes": ["image"], "notes": ["audio"]}
    assert all(c["samples"] == 24 and c["temperature"] > 0 for c in calibration.values())
    for domain, rows in test_rows.items():
        for row in rows[:3]:
            status, answer = call(url, "/v1/generate", media_request(row))
            assert status == 200, json.dumps(answer)
            assert answer["expert"] == domain, answer
            assert answer["text"] == row["text"], answer
            assert 0.05 <= answer["confidence"] <= 1.0 and answer["failed"] == {}
            assert answer["skipped"] == [d for d in DOMAIN_MEDIA if d != domain]


def test_a_named_expert_answers_without_routing(hub):
    url, test_rows, _ = hub
    image = media_request(test_rows["shapes"][0])
    status, answer = call(url, "/v1/experts/notes/generate", image)  # the wrong expert, by request
    assert status == 200 and answer["expert"] == "notes" and set(answer["scores"]) == {"notes"}, answer
    assert answer["skipped"] == ["shapes"] and answer["failed"] == {}
    status, answer = call(url, "/v1/experts/shapes/generate", image)
    assert status == 200 and answer["text"] == test_rows["shapes"][0]["text"], answer
    status, answer = call(url, "/v1/experts/nobody/generate", image)
    assert status == 404 and answer["error"] == "unknown expert 'nobody'; known: shapes, notes"
    assert call(url, "/v1/experts/shapes/generate", {"image": "@@"})[0] == 400


def test_text_prompt_is_broadcast_to_every_expert(hub):
    url, _, _ = hub
    status, answer = call(url, "/v1/generate", {"prompt": "a red", "max_new_tokens": 4})
    assert status == 200, answer
    assert set(answer["scores"]) == set(DOMAIN_MEDIA) and answer["skipped"] == []
    assert answer["expert"] is None or answer["confidence"] >= 0.05


def test_each_bad_input_is_a_4xx_and_the_hub_keeps_serving(hub):
    url, test_rows, _ = hub
    image_row = test_rows["shapes"][0]
    good = media_request(image_row)
    bad = {
        "malformed JSON": (b'{"prompt": "a", ', 400, "malformed JSON"),
        "not an object": (b'["a"]', 400, "JSON object"),
        "bad base64": ({"image": "@@not base64@@"}, 400, "image: not valid base64"),
        "undecodable media": ({"audio": base64.b64encode(b"RIFF" + bytes(300)).decode()}, 422,
                              "audio: cannot decode"),
        "oversized body": ({"prompt": "x" * 300_000}, 413, "over the limit"),
        "unknown field": ({**good, "temperature": 2}, 422, "unknown field 'temperature'"),
        "nothing to answer": ({"max_new_tokens": 3}, 422, "nothing to answer"),
        "too many tokens": ({"prompt": "a", "max_new_tokens": 10_000}, 422, "max_new_tokens"),
    }
    for case, (body, expected_status, reason) in bad.items():
        status, answer = call(url, "/v1/generate", body)
        assert status == expected_status, (case, answer)
        assert reason in answer["error"] and "\n" not in answer["error"], (case, answer)
        status, answer = call(url, "/v1/generate", good)
        assert status == 200 and answer["expert"] == "shapes", (case, answer)
    assert call(url, "/v1/generate", good, key=None)[0] == 401
    assert call(url, "/v1/generate", good, key="wrong")[0] == 401
    assert call(url, "/v1/experts", key=None)[0] == 401


def test_a_dead_expert_is_named_by_every_answer_until_serve_replaces_it(hub, ray_cluster):
    """Kill notes' only replica and hide its model, so that neither it nor Serve's replacement can
    answer whatever the timing of the replacement: every request is answered by shapes and names
    notes as failed. With the model back, the replacement answers again."""
    import ray
    from ray.util.state import list_actors

    url, test_rows, config = hub
    address = f"http://{ray_cluster.dashboard_url}"

    def notes_replicas() -> list[str]:
        actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
        return [a.name for a in actors if "expert-notes" in (a.class_name or "")]

    model = Path(next(e.model for e in config.experts if e.name == "notes"))
    hidden = model.with_name(model.name + ".hidden")
    [victim] = notes_replicas()
    model.rename(hidden)
    try:
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 60  # ray.kill is asynchronous: ask only once it is dead
        while victim in notes_replicas() and time.monotonic() < deadline:
            time.sleep(0.2)
        # first: a call to the dead replica (or to its replacement, which cannot load the model)
        status, answer = call(url, "/v1/generate", {"prompt": "a", "max_new_tokens": 3})
        assert status == 200 and set(answer["scores"]) == {"shapes"}, answer
        assert set(answer["failed"]) == {"notes"}, answer
        assert call(url, "/healthz", key=None)[1]["health"]["notes"].startswith("down: "), answer
        # then, while notes is down: its own medium goes to the others at once, naming it
        status, answer = call(url, "/v1/generate", media_request(test_rows["notes"][0]))
        assert status == 200 and set(answer["scores"]) == {"shapes"}, answer
        assert answer["failed"]["notes"].startswith("unavailable for "), answer
    finally:
        hidden.rename(model)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the probe finds Serve's replacement able to answer
        if call(url, "/healthz", key=None)[1]["health"]["notes"] == "up":
            break
        time.sleep(0.5)
    else:
        pytest.fail("notes was not back up within 120 s")
    assert victim not in notes_replicas() and len(notes_replicas()) == 1
    status, answer = call(url, "/v1/generate", {"prompt": "a", "max_new_tokens": 3})
    assert status == 200 and set(answer["scores"]) == {"shapes", "notes"} and answer["failed"] == {}, answer
    status, answer = call(url, "/v1/generate", media_request(test_rows["notes"][0]))
    assert status == 200 and answer["expert"] == "notes" and answer["failed"] == {}, answer


def test_pool_multiplexes_more_experts_than_a_replica_holds(hub):
    """Last in this module: it replaces the app with one multiplexed deployment whose single
    replica keeps one expert at a time, so alternating domains swaps experts in and out."""
    from multimodal.hub import service

    url, test_rows, config = hub
    values = config.model_dump()
    values["pool"] = {"replicas": 1, "models_per_replica": 1, "num_cpus": 0.1}
    values["routing"]["expert_timeout_s"] = 60.0  # a swap loads a model on a busy shared CPU
    pooled = type(config).model_validate(values)
    assert service.deploy(pooled, port=config.server.port, say=lambda message: None) == url
    assert set(service.status()["deployments"]) == {"ingress", "experts"}
    for row in [test_rows["shapes"][0], test_rows["notes"][0], test_rows["shapes"][1]]:
        status, answer = call(url, "/v1/generate", media_request(row))
        assert status == 200 and answer["text"] == row["text"], answer
        assert answer["expert"] == ("shapes" if row["image"] else "notes")

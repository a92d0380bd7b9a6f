"""Deploy the hub to the running Ray cluster, report on it, take it down (what ``slm-hub`` calls)."""

from __future__ import annotations

import os
from typing import Any, Callable

from multimodal.hub.config import APP_NAME, HubConfig, HubConfigError


def register_experts(config: HubConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Each expert's calibration (fitted and stored now when missing) and its ``MediaSpec``."""
    from multimodal.finetune import base_model_config
    from multimodal.hub.calibration import register_expert

    calibrations, specs = {}, {}
    for expert in config.experts:
        try:
            specs[expert.name] = base_model_config(expert.model).media
        except (OSError, ValueError) as exc:
            raise HubConfigError(f"expert {expert.name}: {str(exc).splitlines()[0]}") from None
        say(f"registering {expert.name} ({expert.model})")
        calibrations[expert.name] = register_expert(expert.model, expert.validation,
                                                    score_tokens=config.routing.score_tokens or None)
        c = calibrations[expert.name]
        say(f"  temperature {c.temperature:.3f} from {c.samples} validation samples"
            + (f" (ECE {c.ece_before:.3f} -> {c.ece_after:.3f})" if c.ece_before is not None else "")
            + (f"; {c.score_tokens}-token score: temperature {c.score_temperature:.3f} (ECE {c.score_ece_after:.3f})"
               if c.score_temperature is not None else ""))
    return {"calibrations": calibrations, "specs": specs}


def api_key_from_env(config: HubConfig) -> str | None:
    name = config.server.api_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise HubConfigError(f"hub config error: server.api_key_env: the variable {name} is not set")
    return key


def deploy(config: HubConfig, port: int | None = None, say: Callable[[str], None] = print) -> str:
    """Register the experts and run the hub as the Serve application ``slm-hub``; returns its URL.
    Needs ``ray.init`` done (the caller's cluster)."""
    from ray import serve

    from multimodal.hub.app import build_app

    registered = register_experts(config, say)
    api_key = api_key_from_env(config)
    port = port or config.server.port
    serve.start(http_options={"host": config.server.host, "port": port})
    say(f"deploying {len(config.experts)} experts to Ray Serve ...")
    serve.run(build_app(config, registered["calibrations"], registered["specs"], api_key),
              name=APP_NAME, route_prefix="/")
    return f"http://{config.server.host}:{port}"


def application(args: dict[str, str]):
    """Serve's application builder, for a ``serveConfigV2`` / ``serve run`` import path
    (``multimodal.hub.service:application`` with ``args: {config: <path or s3:// URI>}``): the
    experts must have their calibration.json already (``slm-hub calibrate``)."""
    from multimodal.hub.app import build_app
    from multimodal.hub.config import load_hub_config

    if "config" not in args:
        raise HubConfigError("hub application: pass args: {config: <hub.yaml path or s3:// URI>}")
    config = load_hub_config(args["config"])
    registered = register_experts(config, say=lambda message: None)
    return build_app(config, registered["calibrations"], registered["specs"], api_key_from_env(config))


def status() -> dict[str, Any]:
    """The hub application's status and its deployments' replica counts (Serve's view)."""
    from ray import serve

    applications = serve.status().applications
    app = applications.get(APP_NAME)
    if app is None:
        return {"app": APP_NAME, "status": "NOT_DEPLOYED", "deployments": {}}
    deployments = {name: {"status": str(d.status.value if hasattr(d.status, "value") else d.status),
                          "replicas": {str(k.value if hasattr(k, "value") else k): v
                                       for k, v in d.replica_states.items()}}
                   for name, d in app.deployments.items()}
    return {"app": APP_NAME, "status": str(app.status.value if hasattr(app.status, "value") else app.status),
            "deployments": deployments}


def down() -> bool:
    """Delete the hub application; stop Serve when nothing else runs on it. False if not deployed."""
    from ray import serve

    if APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()
    return True

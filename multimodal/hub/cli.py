"""``slm-hub``: serve domain experts behind one HTTP endpoint on the running Ray cluster.

    slm-hub serve hub.yaml [--port 8000]    register the experts and deploy the hub
    slm-hub status                           the hub's deployments and replicas
    slm-hub down                             remove the hub from the cluster
    slm-hub calibrate hub.yaml [--refit]     fit and store each expert's confidence temperature

Exit codes: 0 done, 2 bad input (config, no cluster), 1 deployment failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-hub", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See docs/hub.md for the config and the HTTP API.")
    parser.add_argument("--address", default=os.environ.get("SLM_RAY_GCS_ADDRESS"),
                        help="Ray GCS address host:port (default: $SLM_RAY_GCS_ADDRESS, set by "
                             "`eval \"$(slm-cluster env)\"`, else the running local cluster)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="register the experts and deploy the hub",
                                description="Register the experts (fit missing calibrations) and deploy "
                                            "the hub as the Serve application 'slm-hub'.")
    serve.add_argument("config", metavar="CONFIG", help="hub YAML: experts, routing, server")
    serve.add_argument("--port", type=int, default=None, help="HTTP port on the head (default: the config's, 8000)")
    commands.add_parser("status", help="show the hub's deployments and replicas",
                        description="Show the hub application's status and replicas per deployment.")
    commands.add_parser("down", help="remove the hub from the cluster",
                        description="Delete the 'slm-hub' Serve application (and Serve, if it runs nothing else).")
    calibrate = commands.add_parser("calibrate", help="fit each expert's confidence temperature",
                                    description="Fit and store calibration.json for each expert that "
                                                "has validation data.")
    calibrate.add_argument("config", metavar="CONFIG", help="hub YAML")
    calibrate.add_argument("--refit", action="store_true", help="fit again even when calibration.json exists")
    return parser


def _connect(address: str | None) -> None:
    import ray

    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level="ERROR")
    except ConnectionError as exc:
        raise SystemExit(_fail(f"no running Ray cluster ({str(exc).splitlines()[0]}); "
                               f"start one with 'slm-cluster up' or pass --address", 2))


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from multimodal.hub.config import HubConfigError, load_hub_config

    args = build_parser().parse_args(argv)
    try:
        config = load_hub_config(args.config) if args.command in ("serve", "calibrate") else None
        if args.command == "calibrate":
            from multimodal.hub.calibration import register_expert

            for expert in config.experts:
                print(f"{expert.name}: fitting on {expert.validation} ..." if expert.validation
                      else f"{expert.name}: no validation data, temperature 1", flush=True)
                result = register_expert(expert.model, expert.validation, refit=args.refit,
                                         score_tokens=config.routing.score_tokens or None)
                print(json.dumps({"expert": expert.name, **result.to_dict()}), flush=True)
            return 0
        _connect(args.address)
        from multimodal.hub import service

        if args.command == "serve":
            url = service.deploy(config, port=args.port, say=lambda m: print(m, flush=True))
            print(f"hub ready at {url}  (POST /v1/generate, GET /v1/experts, GET /healthz)")
            return 0
        if args.command == "status":
            print(json.dumps(service.status(), indent=1))
            return 0
        if args.command == "down":
            print("hub removed" if service.down() else "hub was not deployed")
            return 0
    except HubConfigError as exc:
        return _fail(str(exc), 2)
    except FileNotFoundError as exc:
        return _fail(str(exc).splitlines()[0], 2)
    except RuntimeError as exc:
        return _fail(f"deployment failed: {str(exc).splitlines()[0]}", 1)
    return 2


if __name__ == "__main__":
    sys.exit(main())

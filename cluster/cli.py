"""``slm-cluster up | down | status | env``: the local Ray + S3 cluster (see cluster/local.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from cluster import local
from cluster.fake_nodes import FakeNodeType


def _log(message: str) -> None:
    print(message, file=sys.stderr if message.startswith("WARNING") else sys.stdout, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-cluster",
        description="Local Ray head (dashboard, token auth) + S3-compatible server for the demo. "
                    "State lives in $SLM_CLUSTER_HOME (default ~/.slm-cluster).",
    )
    parser.add_argument("--home", help="state dir (overrides $SLM_CLUSTER_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="start the Ray head and the S3 server")
    p_up.add_argument("--host", default=local.DEFAULT_HOST,
                      help="address to bind the dashboard, Ray node and S3 server "
                           "(default 127.0.0.1; anything else prints a warning)")
    p_up.add_argument("--dashboard-port", type=int, default=local.DEFAULT_DASHBOARD_PORT)
    p_up.add_argument("--s3-port", type=int, default=local.DEFAULT_S3_PORT)
    p_up.add_argument("--gcs-port", type=int, default=None, help="default: a free port")
    p_up.add_argument("--metrics-port", type=int, default=None,
                      help="Ray's --metrics-export-port (default: a free port; see `env`)")
    p_up.add_argument("--num-cpus", type=int, default=None)
    p_up.add_argument("--num-gpus", type=int, default=None)
    p_up.add_argument("--object-store-memory", type=int, default=None, help="bytes")
    p_up.add_argument("--bucket", default=local.DEFAULT_BUCKET)
    p_up.add_argument("--autoscale-nodes", type=int, default=None, metavar="N",
                      help="let Ray's autoscaler start up to N worker nodes on this machine when work "
                           "is pending (Ray's fake multi-node provider); the head then gets 0 CPUs "
                           "unless --num-cpus is given")
    p_up.add_argument("--node-cpus", type=int, default=1,
                      help="logical CPUs of each autoscaled worker node (default 1)")
    p_up.add_argument("--idle-timeout-minutes", type=float, default=1.0,
                      help="the autoscaler removes a worker node idle this long (default 1)")
    p_up.add_argument("--dry-run", action="store_true",
                      help="print the commands `up` would run and exit")

    p_down = sub.add_parser("down", help="stop what `up` started (and nothing else)")
    p_down.add_argument("--purge", action="store_true",
                        help="also delete Ray's temp dir (logs) and the state dir's logs")

    p_status = sub.add_parser("status", help="nodes, resources, S3 endpoint, jobs")
    p_status.add_argument("--json", action="store_true")

    sub.add_parser("env", help="print `export` lines for RAY_ADDRESS, token auth, S3")
    sub.add_parser("token", help="print the dashboard's auth token (paste it where the dashboard asks; "
                                 "`ray get-auth-token` reads ~/.ray/auth_token, not this cluster's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            kwargs = dict(host=args.host, dashboard_port=args.dashboard_port,
                          s3_port=args.s3_port, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                          object_store_memory=args.object_store_memory, bucket=args.bucket,
                          gcs_port=args.gcs_port, metrics_port=args.metrics_port,
                          home=args.home)
            if args.autoscale_nodes is not None:
                if args.autoscale_nodes < 1 or args.node_cpus <= 0:
                    print("slm-cluster up: --autoscale-nodes must be >= 1 and --node-cpus > 0",
                          file=sys.stderr)
                    return 2
                kwargs.update(autoscale=FakeNodeType(resources={"CPU": args.node_cpus},
                                                     max_workers=args.autoscale_nodes),
                              idle_timeout_minutes=args.idle_timeout_minutes)
            if args.dry_run:
                warning = local.host_warning(args.host)
                if warning:
                    print(warning, file=sys.stderr)
                plan = local.plan(**kwargs)
                print("would run:")
                print("  " + shlex.join(plan.moto_cmd))
                print("  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="
                      f"{shlex.quote(plan.token_path)} " + shlex.join(plan.ray_cmd))
                return 0
            state = local.up(log=_log, **kwargs)
            print(f"run `eval \"$(slm-cluster env)\"` to use it "
                  f"(state: {state.home})")
            return 0
        if args.command == "down":
            local.down(home=args.home, purge=args.purge, log=_log)
            return 0
        if args.command == "status":
            info = local.status(home=args.home)
            if args.json:
                print(json.dumps(info, indent=2, default=str))
            else:
                sys.stdout.write(local.format_status(info))
            return 0 if info["up"] else 3
        if args.command == "env":
            sys.stdout.write(local.format_env(local.env_vars(home=args.home)))
            return 0
        if args.command == "token":
            state = local.load_state(args.home)
            if state is None:
                raise local.ClusterError(f"not up (no state in {local.cluster_home(args.home)}); "
                                         "run `slm-cluster up` first")
            print(state.token())
            return 0
    except local.ClusterError as exc:
        print(f"slm-cluster {args.command}: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""`glmops`: the operator's command line.

    glmops crds [--dir crds] [--check]    write (or check) the CRDs generated from the API models
    glmops run [kopf options]             run the operator (needs the `operator` extra)
    glmops connect NAME [-n NS] --client claude-code|cline|aider|openai [--show-key]
                                          print what a coding agent sets to use a ModelDeployment
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _cmd_crds(args: argparse.Namespace) -> int:
    from glmops.crdgen import SchemaError, stale_crds, write_crds

    directory = Path(args.dir)
    try:
        if args.check:
            stale = stale_crds(directory)
            if stale:
                print("CRDs differ from the API models: " + ", ".join(stale), file=sys.stderr)
                print("Run `glmops crds` and commit the result.", file=sys.stderr)
                return 1
            print(f"{directory}: up to date")
            return 0
        for path in write_crds(directory):
            print(f"wrote {path}")
    except SchemaError as exc:
        print(f"cannot express the API models as a CRD: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    import kopf

    import glmops.handlers  # noqa: F401  (registers the handlers)
    from glmops.health import HealthServer

    namespaces = args.namespace or []
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.FULL)
    elector = None
    if args.leader_elect:
        from glmops.leader import Election, LeaderElector, default_identity

        try:
            election = Election(args.lease_duration, args.renew_deadline, args.retry_period)
        except ValueError as exc:
            print(f"glmops run: {exc}", file=sys.stderr)
            return 2
        elector = LeaderElector(
            _leader_api_client(), args.lease_namespace or _own_namespace(), args.lease_name, args.identity or default_identity(), election
        )
    health = None
    if args.health_port is not None:
        health = HealthServer(
            args.health_port,
            role=lambda: "leader" if elector is None or elector.leading.is_set() else "standby",
            last_contact_s=(lambda: elector.last_contact_s) if elector is not None else None,
        )
        health.start()
    try:
        if elector is not None:
            # A standby waits here; SIGTERM ends the wait (kopf installs its own handlers later).
            stop = threading.Event()
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
            leading = elector.acquire(stop)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if not leading:
                logging.getLogger("glmops").info("stopped while standing by")
                return 0
            elector.start_renewing()
        kopf.run(
            clusterwide=not namespaces,
            namespaces=namespaces,
            # One active replica: alone, or the leader of the Lease. kopf's peering is not used
            # (glmops.leader says why).
            standalone=True,
            liveness_endpoint=args.liveness,
        )
    finally:
        if elector is not None:
            elector.release()  # after kopf stopped: a standby takes over at once
        if health is not None:
            health.stop()
    return 0


def _leader_api_client() -> Any:
    from kubernetes import client, config

    from glmops import kube

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return kube.TimedApiClient(client.Configuration.get_default_copy(), timeout_s=10.0)


def _own_namespace() -> str:
    """The pod's namespace (POD_NAMESPACE, else the service account's), for the Lease."""
    import os

    namespace = os.environ.get("POD_NAMESPACE")
    if namespace:
        return namespace
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as stream:
            return stream.read().strip()
    except OSError:
        return "default"


def _cmd_connect(args: argparse.Namespace) -> int:
    from glmops.cli.connect import ConnectError, run_connect

    try:
        text = run_connect(args.name, args.namespace, args.client, args.show_key, args.model, args.url, args.local_port)
    except ConnectError as exc:
        print(f"glmops connect: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `glmops`."""
    parser = argparse.ArgumentParser(prog="glmops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    crds = commands.add_parser("crds", help="generate the CRDs from the API models")
    crds.add_argument("--dir", default="crds", help="output directory (default: crds)")
    crds.add_argument("--check", action="store_true", help="only check that the files are up to date")
    crds.set_defaults(func=_cmd_crds)
    run = commands.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append", help="watch only this namespace (repeatable); default: all")
    run.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--verbose", "-v", action="store_true", help="log every handler call")
    run.add_argument("--health-port", type=int, default=None, help="serve /healthz and /readyz on this port (leader and standby)")
    election = run.add_argument_group("leader election (one active replica of several)")
    election.add_argument("--leader-elect", action="store_true", help="act only while holding the Lease; stand by otherwise")
    election.add_argument("--lease-name", default="glmops", help="the Lease (default: glmops)")
    election.add_argument("--lease-namespace", default=None, help="its namespace (default: POD_NAMESPACE, else the pod's own)")
    election.add_argument("--identity", default=None, help="this replica's name in the Lease (default: POD_NAME, else host-pid)")
    election.add_argument("--lease-duration", type=float, default=15.0, help="seconds a standby waits after the last renewal (15)")
    election.add_argument("--renew-deadline", type=float, default=10.0, help="seconds without renewal after which the leader exits (10)")
    election.add_argument("--retry-period", type=float, default=2.0, help="seconds between renewals and attempts (2)")
    run.set_defaults(func=_cmd_run)
    from glmops.cli.connect import CLIENTS

    connect = commands.add_parser("connect", help="print the settings that point a coding agent at a ModelDeployment")
    connect.add_argument("name", help="the ModelDeployment")
    connect.add_argument("--namespace", "-n", default=None, help="its namespace (default: the kubeconfig context's)")
    connect.add_argument("--client", required=True, choices=CLIENTS, help="the agent or client to configure")
    connect.add_argument("--show-key", action="store_true", help="print the API key itself (read from the Secret)")
    connect.add_argument("--model", default=None, help="one of the served models (an adapter's name); default: servedModelName")
    connect.add_argument("--url", default=None, help="base URL to use instead of the in-cluster endpoint (an ingress), ending in /v1")
    connect.add_argument("--local-port", type=int, default=None, help="reach the Service through kubectl port-forward on this local port")
    connect.set_defaults(func=_cmd_connect)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `glmops` command."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

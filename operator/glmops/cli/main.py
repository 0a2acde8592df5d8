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
    import kopf

    import glmops.handlers  # noqa: F401  (registers the handlers)

    namespaces = args.namespace or []
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.FULL)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,  # one replica; no peering objects to create
        liveness_endpoint=args.liveness,
    )
    return 0


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

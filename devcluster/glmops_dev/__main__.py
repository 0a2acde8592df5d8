"""Command line of the local development cluster.

python -m glmops_dev build                 build (or reuse) the control plane's binaries
python -m glmops_dev up [--state-dir DIR]  start cluster + GPU nodes + CRDs until Ctrl-C
python -m glmops_dev demo [--exit]         `up`, node agent, operator; a tiny Flash model fine-tuned, served, and asked
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import yaml

from glmops_dev.binaries import BinariesNotFoundError, build_binaries, find_binaries, repo_root
from glmops_dev.cluster import ClusterStartError, KubeCluster
from glmops_dev.environment import DevEnvironment, describe, start_environment


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glmops_dev", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "build", help="build (or reuse) kube-apiserver, controller-manager, scheduler, kubectl"
    )
    for name, text in (
        ("up", "start the local cluster with GPU nodes and CRDs; runs until Ctrl-C"),
        ("demo", "like up, plus node agent and operator: a tiny Flash model fine-tuned, served with llama.cpp and asked"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--state-dir", type=Path, help="folder for certificates, logs and etcd data (default: temp)"
        )
        sub.add_argument("--keep-state", action="store_true", help="keep the state folder after exit")
        sub.add_argument("--exit", action="store_true", help="stop and clean up when done instead of running on")
        sub.add_argument(
            "--use-existing",
            action="store_true",
            help="use the cluster named by KUBECONFIG instead of starting one",
        )
    return parser


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _print_connection(env: DevEnvironment) -> None:
    print(describe(env))
    print()
    print("Use it from another shell with:")
    print(f"  export KUBECONFIG={env.cluster.kubeconfig}", flush=True)


def _example_namespaces(files: list[Path]) -> set[str]:
    namespaces: set[str] = set()
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                namespace = (doc.get("metadata") or {}).get("namespace")
                if isinstance(namespace, str) and doc.get("kind") != "Namespace":
                    namespaces.add(namespace)
    return namespaces


def apply_examples(cluster: KubeCluster, examples_dir: Path) -> None:
    """Apply every YAML file of ``examples/`` (creating the namespaces they name) and list the results."""
    files = (
        sorted([*examples_dir.glob("*.yaml"), *examples_dir.glob("*.yml")]) if examples_dir.is_dir() else []
    )
    if not files:
        print(f"No examples in {examples_dir}.")
        return
    for namespace in sorted(_example_namespaces(files)):
        if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            cluster.kubectl("create", "namespace", namespace)
    for path in files:
        result = cluster.kubectl("apply", "-f", str(path), check=False)
        print((result.stdout + result.stderr).strip())
    shown = cluster.kubectl("get", "ftj,mdep", "-A", check=False)
    print(shown.stdout.strip() or shown.stderr.strip())


def _run_until_interrupted() -> None:
    print("\nRunning; press Ctrl-C to stop and clean up.", flush=True)
    threading.Event().wait()


def _up(args: argparse.Namespace, demo: bool) -> int:
    _stop_on_sigterm()
    stoppers: list[Callable[[], None]] = []
    clock = None
    if demo:
        from glmops_dev.demo import StageClock

        clock = StageClock()
        clock.stage("cluster", "Starting the local control plane, simulated GPU nodes, pod network, kube-proxy and DNS")
    try:
        env = start_environment(
            args.state_dir,
            use_existing=True if args.use_existing else None,
            build=True,
            keep_state=args.keep_state,
        )
    except (BinariesNotFoundError, ClusterStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status = 0
    try:
        _print_connection(env)
        if clock is not None:
            from glmops_dev.demo import DemoError, run_demo

            try:
                run_demo(env.cluster, repo_root() / ".state" / "demo-run", apply_examples, clock, stoppers)
            except DemoError as exc:
                print(f"\ndemo failed: {exc}", file=sys.stderr)
                status = 1
                if not args.exit:
                    print("The cluster stays up for a look; Ctrl-C stops and cleans up.", file=sys.stderr)
        if not getattr(args, "exit", False):
            _run_until_interrupted()
    except KeyboardInterrupt:
        print("\nStopping...", file=sys.stderr)
    finally:
        for stop in reversed(stoppers):
            stop()
        env.close()
        if clock is not None:
            print("Stopped: the operator, the node agent and its pods, the control plane and the pod network are gone.", file=sys.stderr)
    return status


def _build() -> int:
    try:
        build_binaries()
        binaries = find_binaries()
    except BinariesNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in vars(binaries).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m glmops_dev``."""
    args = _parser().parse_args(argv)
    if args.command == "build":
        return _build()
    return _up(args, demo=args.command == "demo")


if __name__ == "__main__":
    sys.exit(main())

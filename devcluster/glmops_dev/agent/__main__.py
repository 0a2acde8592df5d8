"""Command line of the node agent: run the pods of the simulated nodes of a cluster until Ctrl-C.

python -m glmops_dev.agent --kubeconfig FILE --state-dir DIR [--images FILE] [--node-selector SELECTOR]

Pods get the pod network of the environment serving that cluster (``python -m glmops_dev up``
prints it); the agent refuses to start when there is none.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from glmops_dev.agent.agent import DEFAULT_NODE_SELECTOR, AgentConflictError, AgentStartError, NodeAgent
from glmops_dev.agent.images import ImageMap, ImageMapError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glmops_dev.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig of the cluster (default: $KUBECONFIG)",
    )
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="folder for pod logs and volumes (kept)"
    )
    parser.add_argument(
        "--images", type=Path, help="YAML/JSON file mapping image repositories to local commands"
    )
    parser.add_argument(
        "--node-selector",
        default=DEFAULT_NODE_SELECTOR,
        help=f"label selector of the nodes to run (default {DEFAULT_NODE_SELECTOR})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every container start and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m glmops_dev.agent``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s"
    )
    if not args.kubeconfig:
        print("error: give --kubeconfig or set KUBECONFIG", file=sys.stderr)
        return 2
    try:
        images = ImageMap.load(args.images)
    except ImageMapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def client():  # type: ignore[no-untyped-def]
        from kubernetes import config

        return config.new_client_from_config(config_file=str(args.kubeconfig))  # type: ignore[no-untyped-call]

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    agent = NodeAgent(client, args.state_dir, images, args.node_selector)
    try:
        agent.start()
        print(
            f"node agent running nodes {', '.join(sorted(agent.node_names)) or '(none yet)'}; "
            f"logs under {agent.state_dir}/pods; Ctrl-C stops it",
            flush=True,
        )
        threading.Event().wait()
    except (AgentConflictError, AgentStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the node agent...", file=sys.stderr)
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

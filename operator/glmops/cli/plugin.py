"""`kubectl glmops`: fine-tuning jobs and model deployments at a glance (a kubectl plugin).

    kubectl glmops status [-n NS | -A]            jobs (a progress bar per running one) and deployments
    kubectl glmops watch NAME [-n NS]             a live progress bar with loss and ETA until the job ends
    kubectl glmops plot NAME [-n NS] [-o FILE]    the loss curve as a PNG, from the job's progress.jsonl
    kubectl glmops logs NAME [-n NS] [-f]         the log of the job's newest trainer (or --export) pod
    kubectl glmops connect NAME --client ...      what a coding agent sets to use a ModelDeployment
    kubectl glmops demo                           the local demo (from a source checkout)

Installed as the console script `kubectl-glmops`, which kubectl finds on PATH. It reads the
cluster with the user's own kubeconfig (KUBECONFIG, the current context and its namespace).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from glmops.cli.progress import (
    TERMINAL_PHASES,
    deployment_rows,
    job_message,
    job_rows,
    progress_text,
    table,
)

GROUP, VERSION = "glmops.io", "v1alpha1"
FTJ, MDEP = "finetunejobs", "modeldeployments"


class PluginError(RuntimeError):
    """What the user asked for cannot be done; the message says why and what to do."""


@dataclass
class Cluster:
    """The API client and the namespace to use, from the user's kubeconfig."""

    api: Any
    namespace: str

    def get(self, plural: str, name: str) -> dict[str, Any]:
        from glmops import kube

        body = kube.get_custom(self.api, plural, self.namespace, name)
        if body is None:
            kind = "FineTuneJob" if plural == FTJ else "ModelDeployment"
            raise PluginError(f"no {kind} {name!r} in namespace {self.namespace} (kubectl get {plural} -A lists them)")
        return dict(body)

    def list(self, plural: str, all_namespaces: bool) -> list[dict[str, Any]]:
        from glmops import kube

        path = f"/apis/{GROUP}/{VERSION}/" + (plural if all_namespaces else f"namespaces/{self.namespace}/{plural}")
        items = list((kube.request(self.api, "GET", path) or {}).get("items", []))
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def connect_cluster(namespace: str | None) -> Cluster:
    """The cluster of the kubeconfig (or of the pod this runs in) and the namespace to use."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        current = "default"
    except config.ConfigException:
        try:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise PluginError(f"no cluster to talk to: {exc}; set KUBECONFIG or a current context") from exc
        _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        current = str((active or {}).get("context", {}).get("namespace") or "default")
    return Cluster(client.ApiClient(), namespace or current)


# --- status ----------------------------------------------------------------------------------


def render_status(jobs: list[dict[str, Any]], deployments: list[dict[str, Any]], all_namespaces: bool) -> str:
    """The `status` page: a table of jobs with their progress, then one of deployments."""
    ns = ["NAMESPACE"] if all_namespaces else []
    parts = []
    if jobs:
        parts.append(table([*ns, "FINETUNEJOB", "PHASE", "PROGRESS"], job_rows(jobs, all_namespaces)))
    else:
        parts.append("No FineTuneJobs.")
    if deployments:
        headers = [*ns, "MODELDEPLOYMENT", "PHASE", "READY", "RUNTIME", "ENDPOINT"]
        parts.append(table(headers, deployment_rows(deployments, all_namespaces)))
    else:
        parts.append("No ModelDeployments.")
    return "\n\n".join(parts) + "\n"


def cmd_status(args: argparse.Namespace, out: IO[str]) -> int:
    cluster = connect_cluster(args.namespace)
    page = render_status(cluster.list(FTJ, args.all_namespaces), cluster.list(MDEP, args.all_namespaces), args.all_namespaces)
    out.write(page)
    return 0


# --- watch -----------------------------------------------------------------------------------


def watch_job(
    read: Callable[[], dict[str, Any]],
    out: IO[str],
    interactive: bool,
    interval_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Draw a job's progress until it ends: redrawn in place on a terminal, a line per change
    otherwise. Returns 0 when it Succeeded, 1 when it Failed or was Cancelled."""
    name = ""
    last = ""
    while True:
        job = read()
        name = str(job["metadata"]["name"])
        phase = str((job.get("status") or {}).get("phase") or "Pending")
        line = f"{name}  {phase:<10} {progress_text(job)}"
        if interactive:
            out.write("\r\033[K" + line)  # back to the line's start, clear it, draw again
            out.flush()
        elif line != last:
            out.write(line + "\n")
            out.flush()
        last = line
        if phase in TERMINAL_PHASES:
            if interactive:
                out.write("\n")
            message = job_message(job)
            if message and phase != "Succeeded":
                out.write(f"{message}\n")
            out.flush()
            return 0 if phase == "Succeeded" else 1
        sleep(interval_s)


def cmd_watch(args: argparse.Namespace, out: IO[str]) -> int:
    cluster = connect_cluster(args.namespace)
    try:
        return watch_job(lambda: cluster.get(FTJ, args.name), out, out.isatty(), args.interval)
    except KeyboardInterrupt:
        out.write("\n")
        return 130


# --- plot ------------------------------------------------------------------------------------


PROGRESS_FILE = "progress.jsonl"


def progress_lines(job: dict[str, Any]) -> list[str]:
    """The lines of the job's `progress.jsonl`, read where its output lives."""
    from glmops.contract.uris import UriError, UriRole, parse_uri

    spec_output = (job.get("spec") or {}).get("output") or {}
    destination = str(spec_output.get("destination") or "")
    name = job["metadata"]["name"]
    try:
        uri = parse_uri(destination, "spec.output.destination", UriRole.output)
    except UriError as exc:
        raise PluginError(f"{name}: {exc}") from exc
    if uri.scheme == "file":
        path = Path(uri.path) / PROGRESS_FILE
        if not path.is_file():
            raise PluginError(f"{path} does not exist yet: {name} has not trained a step (or its output is on another machine)")
        return path.read_text(encoding="utf-8").splitlines()
    if uri.scheme == "s3":
        try:
            import fsspec  # type: ignore[import-untyped]
        except ImportError as exc:
            raise PluginError("reading s3:// needs s3fs: pip install 'glmops[trainer-s3]'") from exc
        remote = destination.rstrip("/") + "/" + PROGRESS_FILE
        options = {"endpoint_url": spec_output["endpointUrl"]} if spec_output.get("endpointUrl") else {}
        try:
            with fsspec.open(remote, "r", **({"client_kwargs": options} if options else {})) as handle:
                return str(handle.read()).splitlines()
        except (OSError, ValueError) as exc:
            raise PluginError(f"{remote}: {exc} (credentials come from the AWS_* environment)") from exc
    inside = f"{uri.path.strip('/')}/{PROGRESS_FILE}".lstrip("/")
    raise PluginError(
        f"{name} writes to PVC {uri.claim}, which this machine cannot read. Copy {inside} from a pod that "
        f"mounts the claim (kubectl cp NAMESPACE/POD:/mnt/{uri.claim}/{inside} progress.jsonl) and run "
        f"kubectl glmops plot {name} --from progress.jsonl"
    )


def cmd_plot(args: argparse.Namespace, out: IO[str]) -> int:
    from glmops.losscurve import parse_loss_history, plot_loss_curve

    if args.from_file:
        lines = Path(args.from_file).read_text(encoding="utf-8").splitlines()
    else:
        lines = progress_lines(connect_cluster(args.namespace).get(FTJ, args.name))
    history = parse_loss_history(lines)
    if not history.train:
        raise PluginError(f"{args.name}: no train loss recorded yet; try again after its first step")
    target = Path(args.output or f"{args.name}-loss.png")
    plot_loss_curve(history, target, title=args.name)
    last_step, last_loss = history.train[-1]
    out.write(f"wrote {target}: {len(history.train)} steps, loss {history.train[0][1]:.4f} -> {last_loss:.4f} at step {last_step}\n")
    return 0


# --- logs ------------------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace, out: IO[str]) -> int:
    from glmops import kube

    cluster = connect_cluster(args.namespace)
    job = cluster.get(FTJ, args.name)
    status = job.get("status") or {}
    which = "exportJob" if args.export else "trainerJob"
    job_name = status.get(which)
    if not job_name:
        what = "export" if args.export else "trainer"
        raise PluginError(f"{args.name} has no {what} Job yet (phase {status.get('phase') or 'Pending'}: {job_message(job) or 'just created'})")
    pods = kube.job_pods(cluster.api, cluster.namespace, str(job_name))
    if not pods:
        raise PluginError(f"Job {job_name} has no pod (yet); kubectl describe job -n {cluster.namespace} {job_name} says why")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise PluginError("kubectl is not on PATH")
    argv = [kubectl, "logs", "-n", cluster.namespace, pods[0]["metadata"]["name"]]
    argv += ["-f"] if args.follow else []
    argv += [f"--tail={args.tail}"] if args.tail is not None else []
    out.flush()
    os.execv(kubectl, argv)  # kubectl streams the log (and follows it) as it always does


# --- connect, demo ---------------------------------------------------------------------------


def cmd_connect(args: argparse.Namespace, out: IO[str]) -> int:
    from glmops.cli.connect import ConnectError, run_connect

    try:
        out.write(run_connect(args.name, args.namespace, args.client, args.show_key, args.model, args.url, args.local_port))
    except ConnectError as exc:
        raise PluginError(str(exc)) from exc
    return 0


def cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    import importlib

    try:  # the local cluster ships with a source checkout, not with the operator
        dev = importlib.import_module("glmops_dev.__main__")
    except ImportError as exc:
        raise PluginError("the demo runs from a source checkout of glmops: make demo") from exc
    return int(dev.main(["demo", *(["--exit"] if args.exit else [])]))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `kubectl glmops`."""
    from glmops.cli.connect import CLIENTS

    parser = argparse.ArgumentParser(prog="kubectl glmops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def named(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("name", help="the FineTuneJob" if name != "connect" else "the ModelDeployment")
        sub.add_argument("--namespace", "-n", default=None, help="its namespace (default: the kubeconfig context's)")
        return sub

    status = commands.add_parser("status", help="jobs with their progress, and deployments")
    status.add_argument("--namespace", "-n", default=None, help="namespace (default: the kubeconfig context's)")
    status.add_argument("--all-namespaces", "-A", action="store_true", help="every namespace")
    status.set_defaults(func=cmd_status)
    watch = named("watch", "a live progress bar with loss and ETA until the job ends")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between reads (default 2)")
    watch.set_defaults(func=cmd_watch)
    plot = named("plot", "draw the loss curve (PNG) from the job's progress.jsonl")
    plot.add_argument("--output", "-o", default=None, help="PNG to write (default NAME-loss.png)")
    plot.add_argument("--from", dest="from_file", default=None, help="a progress.jsonl copied from the job's output")
    plot.set_defaults(func=cmd_plot)
    logs = named("logs", "the log of the job's newest trainer pod")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming")
    logs.add_argument("--export", action="store_true", help="the export pod's log instead")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")
    logs.set_defaults(func=cmd_logs)
    connect = named("connect", "print what a coding agent sets to use a ModelDeployment")
    connect.add_argument("--client", required=True, choices=CLIENTS, help="the agent or client to configure")
    connect.add_argument("--show-key", action="store_true", help="print the API key itself (read from the Secret)")
    connect.add_argument("--model", default=None, help="one of the served models; default: servedModelName")
    connect.add_argument("--url", default=None, help="base URL instead of the in-cluster endpoint, ending in /v1")
    connect.add_argument("--local-port", type=int, default=None, help="reach the Service through kubectl port-forward")
    connect.set_defaults(func=cmd_connect)
    demo = commands.add_parser("demo", help="run the local demo (needs a source checkout: make demo)")
    demo.add_argument("--exit", action="store_true", help="stop after the answer instead of running until Ctrl-C")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `kubectl-glmops`."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args, sys.stdout)
    except PluginError as exc:
        print(f"kubectl glmops {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the API refused or did not answer: one line, not a traceback
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if not isinstance(exc, (ApiException, HTTPError)):
            raise
        from glmops import kube

        print(f"kubectl glmops {args.command}: the API failed: {kube.describe_error(exc)}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())

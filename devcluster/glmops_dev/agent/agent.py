"""The node agent: a kubelet stand-in that runs the pods bound to simulated GPU nodes as local processes.

:class:`NodeAgent` lists and watches every pod, and gives each pod bound to one of its nodes
(nodes labelled ``glmops.io/simulated=true`` by default) a :class:`~glmops_dev.agent.podworker.PodWorker`.
It serves container logs like a kubelet (:mod:`~glmops_dev.agent.logs_server`), points each
node's ``kubeletEndpoint`` at that server and keeps the nodes' ``Ready`` heartbeat fresh.

Pods get their network from the environment's pod network (:mod:`glmops_dev.network`): a
namespace and IP each on the slot's bridge. Every node's InternalIP (each pod's ``hostIP``) is
the host's end of the slot's link, where this agent's log server listens; containers find the
API server through the ``kubernetes`` Service, as in any cluster. An agent given no network
finds the one an environment runs for its API server (:func:`glmops_dev.network.slots.find_slot`).

After a restart the agent cannot re-attach to processes an earlier run started: pods it finds
Running (or with a started container) on its nodes are marked Failed with reason
``NodeAgentRestarted`` and any process the earlier run left is killed. Pending pods start normally.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from glmops_dev.agent.env import service_env
from glmops_dev.agent.images import ImageMap
from glmops_dev.agent.kube import AgentApi
from glmops_dev.agent.logs_server import HEALTH_BODY_PREFIX, KubeletLogServer, LogNotFound, LogTarget
from glmops_dev.agent.podstatus import FAILED, TERMINAL_PHASES, timestamp
from glmops_dev.agent.podworker import PodWorker, WorkerContext
from glmops_dev.agent.runtime import kill_recorded_process, mount_namespaces_available
from glmops_dev.agent.volumes import PodPaths, cleanup_pod_dir, pod_dir_name
from glmops_dev.network.sandbox import PodNetwork
from glmops_dev.network.slots import find_slot
from glmops_dev.nodes import LABEL_SIMULATED, heartbeat
from glmops_dev.rawapi import WatchExpired

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from glmops_dev.cluster import KubeCluster

log = logging.getLogger("glmops_dev.agent")

DEFAULT_NODE_SELECTOR = f"{LABEL_SIMULATED}=true"
REASON_AGENT_RESTARTED = "NodeAgentRestarted"


class AgentConflictError(RuntimeError):
    """Another node agent serves the same nodes; only one may run them."""


class AgentStartError(RuntimeError):
    """The agent could not reach the API server or list its pods; the message says why."""


def was_started(pod: Mapping[str, Any]) -> bool:
    """Whether some node agent already started a container of this pod (so a new one cannot adopt it)."""
    status = pod.get("status") or {}
    if status.get("phase") == "Running":
        return True
    for item in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        state = item.get("state") or {}
        if item.get("containerID") or "running" in state or "terminated" in state or item.get("lastState"):
            return True
    return False


def orphan_status(pod: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status that ends a pod a previous agent run started: Failed, ``NodeAgentRestarted``."""
    message = (
        "the node agent restarted and cannot re-attach to the processes it started before; "
        "the pod's containers were stopped"
    )
    status = pod.get("status") or {}
    moment = timestamp(now)

    def ended(item: Mapping[str, Any]) -> dict[str, Any]:
        entry = dict(item)
        state = item.get("state") or {}
        if "terminated" not in state:
            started = (state.get("running") or {}).get("startedAt")
            terminated: dict[str, Any] = {
                "exitCode": 137,
                "reason": REASON_AGENT_RESTARTED,
                "finishedAt": moment,
            }
            if started:
                terminated["startedAt"] = started
            entry["state"] = {"terminated": terminated}
        entry["ready"] = False
        entry["started"] = False
        return entry

    conditions = []
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Ready", "ContainersReady") and condition.get("status") != "False":
            condition = {
                **condition,
                "status": "False",
                "reason": REASON_AGENT_RESTARTED,
                "lastTransitionTime": moment,
            }
        conditions.append(condition)
    result: dict[str, Any] = {
        "phase": FAILED,
        "reason": REASON_AGENT_RESTARTED,
        "message": message,
        "conditions": conditions,
        "containerStatuses": [ended(c) for c in status.get("containerStatuses") or []],
    }
    if status.get("initContainerStatuses"):
        result["initContainerStatuses"] = [ended(c) for c in status["initContainerStatuses"]]
    return result


def _api_address(api_client: ApiClient) -> tuple[str | None, int | None]:
    url = urllib.parse.urlsplit(str(api_client.configuration.host))
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname, port


def _needed_paths() -> tuple[str, ...]:
    """The project's Python environment (venv and base install) and its source tree."""
    import glmops_dev

    source_tree = Path(glmops_dev.__file__).resolve().parents[2]
    paths = {sys.prefix, sys.base_prefix, str(Path(sys.executable).parent), str(source_tree)}
    return tuple(sorted(p for p in paths if p and p != "/"))


def _kubelet_port(node: Mapping[str, Any]) -> int:
    endpoints = (node.get("status") or {}).get("daemonEndpoints") or {}
    return int((endpoints.get("kubeletEndpoint") or {}).get("Port") or 0)


def _internal_ip(node: Mapping[str, Any]) -> str:
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return str(address["address"])
    return "127.0.0.1"


def _other_agent_at(address: str, port: int, own_id: str) -> str | None:
    """The health line of another node agent listening on ``address:port``, else None."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"https://{address}:{port}/healthz", context=context, timeout=2
        ) as response:
            body = str(response.read(200).decode(errors="replace")).strip()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if body.startswith(HEALTH_BODY_PREFIX) and body.split()[-1] != own_id:
        return body
    return None


class NodeAgent:
    """Runs the pods of the simulated nodes; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        api_client_factory: Callable[[], ApiClient],
        state_dir: Path,
        images: ImageMap | Path | None = None,
        node_selector_label: str = DEFAULT_NODE_SELECTOR,
        *,
        heartbeat_interval_s: float | None = 10.0,
        termination_grace_cap_s: float = 10.0,
        fail_pods_on_stop: bool = True,
        watch_timeout_s: int = 30,
        pod_network: PodNetwork | None = None,
    ) -> None:
        """``api_client_factory`` makes a new ``ApiClient`` (e.g. ``cluster.api_client``).

        ``state_dir``: pods' folders and logs, and volumes (PVCs live on across pods).
        ``images``: an :class:`ImageMap`, a YAML/JSON file of rules, or None for the built-in rules.
        ``node_selector_label``: label selector of the nodes this agent runs.
        ``heartbeat_interval_s``: how often node heartbeats and node endpoints are refreshed (None: never).
        ``termination_grace_cap_s``: the longest grace period containers get when the agent stops
        (a deleted pod gets its whole ``terminationGracePeriodSeconds``, as from a kubelet).
        ``fail_pods_on_stop``: mark pods still running when the agent stops as Failed (``NodeAgentStopped``).
        ``pod_network``: gives pods their namespace and IP; None: the network an environment runs
        for this API server (the agent does not start without one).
        """
        self.state_dir = Path(state_dir).resolve()
        self.images = images if isinstance(images, ImageMap) else ImageMap.load(images)
        self.node_selector_label = node_selector_label
        self.heartbeat_interval_s = heartbeat_interval_s
        self.termination_grace_cap_s = termination_grace_cap_s
        self.fail_pods_on_stop = fail_pods_on_stop
        self.watch_timeout_s = watch_timeout_s
        self.agent_id = secrets.token_hex(8)
        self.errors: list[str] = []
        """Recent errors of the watch and node loops (kept short), for diagnosis."""
        self._factory = api_client_factory
        self._clients: list[ApiClient] = []
        self._lock = threading.RLock()
        self._workers: dict[str, PodWorker] = {}
        self._by_name: dict[tuple[str, str], str] = {}
        self._gone: set[str] = set()
        self._node_names: frozenset[str] = frozenset()
        self._stopping = threading.Event()
        self._listed = threading.Event()
        self._relist = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: KubeletLogServer | None = None
        self._started = False
        self.pod_network = pod_network
        """The pod network pods get their namespace and address from (known once started)."""

    # -- public API ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port of the kubelet log endpoint (each node's ``kubeletEndpoint.Port``)."""
        if self._server is None:
            raise RuntimeError("the node agent is not started")
        return self._server.port

    @property
    def node_names(self) -> frozenset[str]:
        """The nodes this agent runs pods for."""
        return self._node_names

    def start(self, timeout_s: float = 60.0) -> NodeAgent:
        """Start serving logs, claim the nodes and run their pods; returns once the first pod list is in."""
        if self._started:
            raise RuntimeError("NodeAgent.start() called twice")
        self._started = True
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every container (SIGTERM, SIGKILL after the capped grace period) and every thread."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._interrupt_watch()
        with self._lock:
            workers = [w for w in self._workers.values() if w.alive]
        for worker in workers:
            worker.stop(self.fail_pods_on_stop)
        for worker in workers:
            worker.join(self.termination_grace_cap_s + 15)
        for thread in self._threads:
            thread.join(timeout=self.watch_timeout_s + 20)
        if self._server is not None:
            self._release_nodes()
            self._server.stop()
        for client in self._clients:
            client.close()  # type: ignore[no-untyped-call]
        self._clients.clear()

    def __enter__(self) -> Self:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        """The worker of the pod of that name (the latest one), if this agent runs or ran it."""
        with self._lock:
            uid = self._by_name.get((namespace, name))
            return self._workers.get(uid) if uid else None

    @property
    def node_ip(self) -> str:
        """Every node's InternalIP: the pods' ``hostIP``, where the log endpoint listens."""
        if self.pod_network is None:
            raise RuntimeError("the node agent is not started")
        return self.pod_network.node_ip

    def pod_ip(self, namespace: str, name: str) -> str | None:
        """The address of the pod of that name while this agent runs it (``status.podIP`` says the same)."""
        worker = self.worker(namespace, name)
        return worker.pod_ip if worker is not None else None

    def pod_paths(self, namespace: str, name: str, uid: str) -> PodPaths:
        """Where a pod's files (logs, volumes) live."""
        return PodPaths(self.state_dir, namespace, name, uid)

    # -- start-up ------------------------------------------------------------------------------

    def _client(self) -> ApiClient:
        client = self._factory()
        self._clients.append(client)
        return client

    def _start(self, timeout_s: float) -> None:
        (self.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "volumes").mkdir(parents=True, exist_ok=True)
        mount_problem = mount_namespaces_available()
        if mount_problem:
            log.warning("containers cannot get mount namespaces; every pod will fail: %s", mount_problem)
        self._api = AgentApi(self._client())
        self._watch_api = AgentApi(self._client())
        network = self._find_network()
        self._server = KubeletLogServer(
            self, self.state_dir / "agent-tls", self.agent_id, address=network.node_ip
        ).start()
        self._claim_nodes(check_conflicts=True)
        host, port = self._api.kubernetes_service() or _api_address(self._api.api_client)
        self._ctx = WorkerContext(
            state_dir=self.state_dir,
            api=self._api,
            images=self.images,
            python_bin_dir=str(Path(sys.executable).parent),
            home=os.environ.get("HOME", "/root"),
            services=service_env(host, port),
            grace_cap_s=self.termination_grace_cap_s,
            mount_problem=mount_problem,
            needed_paths=_needed_paths(),
            network=network,
            host_ip=network.node_ip,
        )
        self._threads.append(threading.Thread(target=self._watch_loop, name="node-agent-watch", daemon=True))
        if self.heartbeat_interval_s is not None:
            self._node_api_client = self._client()
            self._threads.append(
                threading.Thread(target=self._node_loop, name="node-agent-nodes", daemon=True)
            )
        for thread in self._threads:
            thread.start()
        if not self._listed.wait(timeout_s):
            raise AgentStartError(
                f"the node agent could not list pods within {timeout_s:.0f} s: {'; '.join(self.errors[-3:])}"
            )
        log.info(
            "node agent %s runs nodes %s; kubelet endpoint %s:%d",
            self.agent_id,
            ", ".join(sorted(self._node_names)),
            network.node_ip,
            self.port,
        )

    def _find_network(self) -> PodNetwork:
        """The given pod network, else the one an environment runs for this API server."""
        network = self.pod_network
        if network is None:
            server = str(self._api.api_client.configuration.host)
            plan = find_slot(server)
            if plan is None:
                raise AgentStartError(
                    f"no pod network serves the API server at {server}: start the cluster with "
                    "glmops_dev.environment.start_environment() or `python -m glmops_dev up`, or pass "
                    "pod_network= (a glmops_dev.network.PodNetwork)"
                )
            network = PodNetwork(plan)
        problem = network.available()
        if problem:
            raise AgentStartError(f"the pod network is not usable: {problem}")
        self.pod_network = network
        return network

    def _interrupt_watch(self) -> None:
        """End the blocking read of the current watch now instead of at its timeout."""
        response = getattr(getattr(self, "_watch_api", None), "watch_response", None)
        if response is not None:
            try:
                response.shutdown()
            except Exception as exc:  # noqa: BLE001 - the watch ends at its timeout anyway
                log.debug("interrupting the pod watch failed: %s", exc)

    def _claim_nodes(self, check_conflicts: bool = False) -> None:
        """Point every selected node's kubelet endpoint and addresses at this agent."""
        nodes = self._api.list_nodes(self.node_selector_label)
        if check_conflicts:
            for node in nodes:
                port, address = _kubelet_port(node), _internal_ip(node)
                other = _other_agent_at(address, port, self.agent_id) if port and port != self.port else None
                if other:
                    raise AgentConflictError(
                        f"node {node['metadata']['name']} is run by another node agent at {address}:{port} "
                        f"({other}); stop it first: only one agent may run a node"
                    )
        for node in nodes:
            name = str(node["metadata"]["name"])
            status = node.get("status") or {}
            wanted_addresses = [
                {"type": "InternalIP", "address": self.node_ip},
                {"type": "Hostname", "address": name},
            ]
            if _kubelet_port(node) != self.port or status.get("addresses") != wanted_addresses:
                self._api.patch_node_status(
                    name,
                    {
                        "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                        "addresses": wanted_addresses,
                    },
                )
        names = frozenset(str(n["metadata"]["name"]) for n in nodes)
        grew = not names <= self._node_names
        self._node_names = names
        if grew and self._listed.is_set():
            # Pods may already be bound to the new nodes: list everything again.
            self._relist.set()
            self._interrupt_watch()

    def _release_nodes(self) -> None:
        """Set the nodes' kubelet port back to 0 (best effort), so nobody calls a closed port."""
        if not self._node_names:
            return
        try:
            for node in self._api.list_nodes(self.node_selector_label):
                if _kubelet_port(node) == self.port:
                    self._api.patch_node_status(
                        str(node["metadata"]["name"]), {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}}
                    )
        except Exception as exc:  # noqa: BLE001 - the API server may already be gone
            log.debug("resetting the nodes' kubelet port failed: %s", exc)

    def _note_error(self, what: str, exc: BaseException) -> None:
        self.errors = [*self.errors[-9:], f"{time.strftime('%H:%M:%S')} {what}: {exc}"]
        log.warning("%s: %s", what, exc)

    # -- loops ---------------------------------------------------------------------------------

    def _node_loop(self) -> None:
        interval = self.heartbeat_interval_s or 10.0
        while not self._stopping.wait(interval):
            try:
                self._claim_nodes()
                heartbeat(self._node_api_client, sorted(self._node_names))
            except Exception as exc:  # noqa: BLE001 - retried at the next beat
                self._note_error("node heartbeat", exc)

    def _watch_loop(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                pods, version = self._watch_api.list_pods()
                self._sync(pods)
                self._listed.set()
                delay = 0.5
                self._relist.clear()
                while not self._stopping.is_set() and not self._relist.is_set():
                    for kind, pod in self._watch_api.watch_pods(version, self.watch_timeout_s):
                        version = str((pod.get("metadata") or {}).get("resourceVersion") or version)
                        if kind != "BOOKMARK":
                            self._handle(kind, pod)
            except WatchExpired:
                continue
            except Exception as exc:  # noqa: BLE001 - list again after a pause
                if self._stopping.is_set():
                    return
                if self._relist.is_set():
                    continue
                self._note_error("pod watch", exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _sync(self, pods: list[dict[str, Any]]) -> None:
        present = set()
        for pod in pods:
            present.add(str(pod["metadata"]["uid"]))
            self._handle("SYNC", pod)
        with self._lock:
            for uid in [uid for uid in self._workers if uid not in present]:
                # Deleted while the watch was down: end it, or forget it when it already ended.
                self._gone.add(uid)
                self._workers[uid].deleted()
                if not self._workers[uid].alive:
                    self._forget(uid)

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        if self._stopping.is_set():
            return
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        with self._lock:
            worker = self._workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    self._gone.add(uid)
                    worker.deleted()
                    if not worker.alive:
                        self._forget(uid)
                return
            if (pod.get("spec") or {}).get("nodeName") not in self._node_names:
                return
            if worker is not None:
                if worker.alive:
                    worker.update(pod)
                elif meta.get("deletionTimestamp"):
                    self._api.delete_pod_now(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in TERMINAL_PHASES or was_started(pod):
                if phase not in TERMINAL_PHASES:
                    self._end_orphan(pod)
                if meta.get("deletionTimestamp"):
                    self._api.delete_pod_now(pod)
                return
            if meta.get("deletionTimestamp"):
                self._api.delete_pod_now(pod)
                return
            worker = PodWorker(pod, self._ctx, self._worker_finished)
            self._workers[uid] = worker
            self._by_name[(str(meta["namespace"]), str(meta["name"]))] = uid
            worker.start()

    def _worker_finished(self, uid: str) -> None:
        with self._lock:
            if uid in self._gone:
                self._forget(uid)

    def _forget(self, uid: str) -> None:
        worker = self._workers.pop(uid, None)
        self._gone.discard(uid)
        if worker is not None and self._by_name.get((worker.namespace, worker.name)) == uid:
            del self._by_name[(worker.namespace, worker.name)]

    def _end_orphan(self, pod: dict[str, Any]) -> None:
        """Fail a pod an earlier agent run started, killing what that run may have left."""
        meta = pod["metadata"]
        paths = self.pod_paths(meta["namespace"], meta["name"], meta["uid"])
        containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
        killed = [c["name"] for c in containers if kill_recorded_process(paths.record_path(c["name"]))]
        if self.pod_network is not None and not (pod.get("spec") or {}).get("hostNetwork"):
            try:
                self.pod_network.teardown(str(meta["uid"]))
            except Exception as exc:  # noqa: BLE001 - the environment's teardown sweeps the slot
                self._note_error(f"removing the network of pod {meta['namespace']}/{meta['name']}", exc)
        log.warning(
            "pod %s/%s was started by an earlier node agent run; marking it Failed (%s)%s",
            meta["namespace"],
            meta["name"],
            REASON_AGENT_RESTARTED,
            f", killed leftover processes of {', '.join(killed)}" if killed else "",
        )
        cleanup_pod_dir(paths.pod_dir)
        try:
            self._api.patch_pod_status(pod, orphan_status(pod, datetime.now(UTC)))
        except Exception as exc:  # noqa: BLE001 - the next list retries
            self._note_error(f"failing pod {meta['namespace']}/{meta['name']}", exc)

    # -- logs (the LogSource protocol of the log server) ---------------------------------------

    def find_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        """The log file of a container, for the kubelet log endpoint."""
        worker = self.worker(namespace, pod)
        if worker is None:
            return self._find_log_on_disk(namespace, pod, container, previous)
        runtime = worker.container(container)
        if runtime is None:
            raise LogNotFound(400, f"container {container} is not valid for pod {pod}")
        if previous:
            path = worker.paths.previous_log_path(container)
            if not path.exists():
                raise LogNotFound(
                    400, f'previous terminated container "{container}" in pod "{pod}" not found'
                )
            return LogTarget(path, lambda: False)
        path = worker.paths.log_path(container)
        if not path.exists():
            reason = runtime.state.waiting_reason or "ContainerCreating"
            raise LogNotFound(400, f'container "{container}" in pod "{pod}" is waiting to start: {reason}')
        return LogTarget(path, lambda: worker.container_running(container))

    def _find_log_on_disk(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        prefix = pod_dir_name(namespace, pod, "")
        candidates = [d for d in (self.state_dir / "pods").glob(f"{prefix}*") if d.is_dir()]
        name = f"{container}.previous.log" if previous else f"{container}.log"
        files = sorted((d / name for d in candidates if (d / name).exists()), key=lambda p: p.stat().st_mtime)
        if not files:
            raise LogNotFound(
                404,
                f'no log of container "{container}" in pod "{pod}" (namespace {namespace}) on this node agent',
            )
        return LogTarget(files[-1], lambda: False)


def start_agent(
    cluster: KubeCluster,
    state_dir: Path,
    images_file: Path | None = None,
    **options: Any,
) -> NodeAgent:
    """Start a node agent for a cluster's simulated nodes (for fixtures and ``python -m glmops_dev``).

    Pods get the cluster's pod network (``cluster.network``, set by ``start_environment``).
    ``options`` go to :class:`NodeAgent` (``heartbeat_interval_s``, ``termination_grace_cap_s``, ...).
    """
    if cluster.network is not None:
        options.setdefault("pod_network", cluster.network.pods)
    return NodeAgent(cluster.api_client, state_dir, ImageMap.load(images_file), **options).start()

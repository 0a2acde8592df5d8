"""One pod's life on a simulated node: network, volumes, init containers, containers, restarts, probes,
status, deletion.

A :class:`PodWorker` owns a thread that alone changes the pod's state; the watch loop, the probes
and the agent only post messages to it. Each change of the computed status is written through
the status subresource, as the kubelet's status manager does.

Like the kubelet, the worker first gives the pod its sandbox (a network namespace and IP from the
agent's :class:`~glmops_dev.network.PodNetwork`, plus resolv.conf, hosts and hostname files),
and ends a deleted pod gracefully: each running container's ``preStop`` hook runs, then
SIGTERM, then SIGKILL once ``terminationGracePeriodSeconds`` (or the deletion's own grace
period) is spent. Only when the node agent itself stops is the grace period capped.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from glmops_dev.agent.env import ContainerConfigError, base_env, container_env, expand_all
from glmops_dev.agent.images import NOT_RUNNABLE_REASON, ImageMap, ImageNotRunnableError, image_repository
from glmops_dev.agent.kube import AgentApi, PodGone
from glmops_dev.agent.launcher import Bind
from glmops_dev.agent.logfiles import plain_text
from glmops_dev.agent.podstatus import (
    TERMINAL_PHASES,
    ConditionMemory,
    ContainerState,
    PodAddresses,
    Terminated,
    build_status,
)
from glmops_dev.agent.probes import LIVENESS, READINESS, STARTUP, Prober, run_probe
from glmops_dev.agent.runtime import ContainerProcess, LaunchSpec, PodNamespaces, StartError, run_exec
from glmops_dev.agent.volumes import (
    PodPaths,
    PreparedVolume,
    VolumeError,
    VolumeUnsupportedError,
    cleanup_pod_dir,
    container_binds,
    hidden_paths,
    prepare_volumes,
    reset_termination_file,
)
from glmops_dev.network.podfiles import PodDnsError, hosts_file, pod_hostname, resolv_conf
from glmops_dev.network.sandbox import PodNetwork, PodSandbox, SandboxError

log = logging.getLogger("glmops_dev.agent")

TERMINATION_MESSAGE_MAX_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 600.0
"""A container that ran this long without failing starts its back-off afresh (as the kubelet)."""
DEFAULT_GRACE_S = 30
MINIMUM_GRACE_S = 2.0
"""What a container gets after SIGTERM even when its preStop hook used the whole grace period (kubelet rule)."""
LOOP_TICK_S = 0.2
STATUS_RETRY_S = 1.0

REASON_MOUNT_NAMESPACE = "MountNamespaceUnavailable"
REASON_VOLUME = "VolumeNotSupportedLocally"
REASON_AGENT_STOPPED = "NodeAgentStopped"
REASON_AGENT_ERROR = "NodeAgentError"
REASON_DEADLINE = "DeadlineExceeded"
REASON_HIDDEN = "MountPathHidesLocalRuntime"
REASON_SANDBOX = "FailedCreatePodSandBox"
REASON_DNS = "DNSConfigForming"


@dataclass(frozen=True)
class WorkerContext:
    """What every pod worker of one node agent shares."""

    state_dir: Path
    api: AgentApi
    images: ImageMap
    python_bin_dir: str
    home: str
    services: Mapping[str, str]
    grace_cap_s: float
    """The longest grace period containers get when the node agent itself stops."""
    mount_problem: str | None
    """Why containers cannot get mount namespaces (None when they can)."""
    needed_paths: tuple[str, ...] = ()
    """Host paths every process needs (the project's Python and sources): no mount may cover them."""
    network: PodNetwork | None = None
    """Gives pods their namespace and address; None runs every pod on the host's network."""
    host_ip: str = "127.0.0.1"
    """The node's address (every pod's ``hostIP``)."""


class Backoff:
    """1 s, 2 s, 4 s, ... capped at 30 s; reset after a long healthy run."""

    def __init__(self) -> None:
        self._next = BACKOFF_INITIAL_S

    def next(self, ran_for_s: float = 0.0) -> float:
        """The delay before the next try."""
        if ran_for_s >= BACKOFF_RESET_AFTER_S:
            self._next = BACKOFF_INITIAL_S
        delay = self._next
        self._next = min(self._next * 2, BACKOFF_MAX_S)
        return delay


@dataclass
class ContainerRuntime:
    """A container of the pod: its spec, state, current process and probes."""

    spec: Mapping[str, Any]
    init: bool
    state: ContainerState
    process: ContainerProcess | None = None
    next_start_at: float = 0.0
    runs: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    probers: dict[str, Prober] = field(default_factory=dict)
    kill_reason: str = ""
    binds: list[Bind] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self.spec["name"])


class PodWorker:
    """Runs one pod; see the module docstring."""

    def __init__(
        self, pod: Mapping[str, Any], ctx: WorkerContext, on_finished: Callable[[str], None]
    ) -> None:
        """``on_finished(uid)`` is called from the worker's thread when it ends."""
        meta = pod["metadata"]
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.name = str(meta["name"])
        self.pod: Mapping[str, Any] = pod
        self.ctx = ctx
        self.paths = PodPaths(ctx.state_dir, self.namespace, self.name, self.uid)
        self.start_time = datetime.now(UTC)
        self.pod_failure: tuple[str, str] | None = None
        self.phase = "Pending"
        spec = pod["spec"]
        self.restart_policy = str(spec.get("restartPolicy") or "Always")
        self.init = [self._runtime(c, True) for c in spec.get("initContainers") or []]
        self.app = [self._runtime(c, False) for c in spec["containers"]]
        if self.init:
            for runtime in self.app:
                runtime.state.set_waiting("PodInitializing")
        self._image_ids = {
            r.name: f"local://{image_repository(str(r.spec.get('image', '')))}" for r in self.all
        }
        self._memory = ConditionMemory()
        self.host_network = bool(spec.get("hostNetwork"))
        self.sandbox: PodSandbox | None = None
        """The pod's network namespace and address while it has them."""
        self.pod_ip: str | None = ctx.host_ip if self.host_network or ctx.network is None else None
        """The pod's address once it has one (kept after the sandbox is gone, as the kubelet reports it)."""
        self._network_files: list[Bind] = []
        self._sandbox_backoff = Backoff()
        self._next_sandbox_try = 0.0
        self._volumes: dict[str, PreparedVolume] = {}
        self._volume_backoff = Backoff()
        self._next_volume_try = 0.0
        self._last_status: dict[str, Any] | None = None
        self._next_status_try = 0.0
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._wake = threading.Event()
        self._on_finished = on_finished
        self._thread = threading.Thread(
            target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    @staticmethod
    def _runtime(spec: Mapping[str, Any], init: bool) -> ContainerRuntime:
        return ContainerRuntime(
            spec=spec, init=init, state=ContainerState(str(spec["name"]), str(spec.get("image", "")))
        )

    @property
    def all(self) -> list[ContainerRuntime]:
        """Init containers, then containers."""
        return [*self.init, *self.app]

    # -- messages from other threads -----------------------------------------------------------

    def start(self) -> PodWorker:
        """Start the pod's thread; returns self."""
        self._thread.start()
        return self

    def _post(self, kind: str, payload: Any) -> None:
        self._inbox.put((kind, payload))
        self._wake.set()

    def update(self, pod: Mapping[str, Any]) -> None:
        """A newer version of the pod object (from the watch)."""
        self._post("pod", pod)

    def deleted(self) -> None:
        """The pod object is gone from the API: stop everything, write nothing back."""
        self._post("deleted", None)

    def stop(self, fail_pod: bool) -> None:
        """The agent stops: end the containers; ``fail_pod``: mark the pod Failed (``NodeAgentStopped``)."""
        self._post("stop", fail_pod)

    def join(self, timeout_s: float) -> None:
        """Wait for the worker's thread to end."""
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """True while the worker's thread runs."""
        return self._thread.is_alive()

    def container(self, name: str) -> ContainerRuntime | None:
        """The container (or init container) of that name."""
        return next((r for r in self.all if r.name == name), None)

    def container_running(self, name: str) -> bool:
        """True while the container's current run may still add to its log (for ``follow``)."""
        runtime = self.container(name)
        process = runtime.process if runtime is not None else None
        return process is not None and not process.drained

    def _on_probe(self, container: str) -> Callable[[str, bool, str], None]:
        def report(kind: str, result: bool, message: str) -> None:
            self._post("probe", (container, kind, result, message))

        return report

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._lifecycle()
        except Exception as exc:
            log.exception("pod %s/%s: node agent error", self.namespace, self.name)
            self._kill_all(grace_s=0)
            self.pod_failure = (REASON_AGENT_ERROR, f"the node agent failed running this pod: {exc}")
            try:
                self._push_status(force=True)
            except Exception as push_error:  # noqa: BLE001 - the API may be gone as well
                log.warning(
                    "pod %s/%s: could not report the failure: %s", self.namespace, self.name, push_error
                )
            self._teardown_sandbox()
            cleanup_pod_dir(self.paths.pod_dir)
        finally:
            self._on_finished(self.uid)

    def _lifecycle(self) -> None:
        self.paths.pod_dir.mkdir(parents=True, exist_ok=True)
        self._push_status()
        if self.ctx.mount_problem:
            self._fail_pod(
                REASON_MOUNT_NAMESPACE,
                "the node agent cannot give containers their own mount namespace, which it needs to show "
                f"volumes at their mountPath: {self.ctx.mount_problem}. Run the node agent as root on Linux.",
            )
        else:
            for runtime in self.all:
                try:
                    self.ctx.images.rule_for(str(runtime.spec.get("image", "")))
                except ImageNotRunnableError as exc:
                    self._fail_pod(NOT_RUNNABLE_REASON, f"container {runtime.name}: {exc}")
                    break
        while True:
            stop = self._drain_inbox()
            if stop is not None:
                self._shutdown(stop)
                return
            if self.pod_failure is None:
                self._check_deadline()
            if self.pod_failure is None:
                self._step()
            if self.pod_failure is not None and any(r.process is not None for r in self.all):
                self._kill_all(self._grace_s(), pre_stop=True)
            self._push_status()
            if self._last_status is not None and self._last_status["phase"] in TERMINAL_PHASES:
                self._stop_probes()
                self._teardown_sandbox()
                cleanup_pod_dir(self.paths.pod_dir)
                return
            self._wake.wait(LOOP_TICK_S)
            self._wake.clear()

    def _drain_inbox(self) -> str | None:
        """Apply queued messages; returns 'deleted', 'deleting', 'stop' or 'stop-fail' when the pod must end."""
        verdict: str | None = None
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return verdict
            if kind == "pod":
                self.pod = payload
                if payload["metadata"].get("deletionTimestamp") and verdict is None:
                    verdict = "deleting"
            elif kind == "deleted":
                verdict = "deleted"
            elif kind == "stop":
                verdict = verdict or ("stop-fail" if payload else "stop")
            elif kind == "probe":
                self._apply_probe(*payload)

    def _apply_probe(self, container: str, kind: str, result: bool, message: str) -> None:
        runtime = self.container(container)
        if runtime is None or runtime.process is None or kind not in runtime.probers:
            return
        if not result:
            self.ctx.api.emit_event(
                self.pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {message}", container
            )
        if kind == STARTUP and result:
            runtime.state.started = True
            runtime.state.ready = READINESS not in runtime.probers
        elif kind == READINESS:
            runtime.state.ready = result and runtime.state.started
        if runtime.probers[kind].gave_up:
            runtime.kill_reason = f"Container {container} failed {kind} probe, will be restarted"

    # -- one pass over the containers ----------------------------------------------------------

    def _step(self) -> None:
        if not self._sandbox_ready() or not self._volumes_ready():
            return
        pending_init = next((r for r in self.init if not r.state.succeeded), None)
        if pending_init is not None:
            self._advance(pending_init)
            return
        for runtime in self.app:
            self._advance(runtime)

    # -- the network sandbox -------------------------------------------------------------------

    def _sandbox_ready(self) -> bool:
        """Give the pod its network namespace, address and network files (retried with back-off, as the kubelet)."""
        network = self.ctx.network
        if self.host_network or network is None or self.sandbox is not None:
            return True
        if time.monotonic() < self._next_sandbox_try:
            return False
        try:
            sandbox = network.setup(self.uid)
        except SandboxError as exc:
            message = f"Failed to create pod sandbox: {exc}"
            for runtime in self.all:
                if runtime.process is None and runtime.state.terminated is None:
                    runtime.state.set_waiting("ContainerCreating", message)
            self.ctx.api.emit_event(self.pod, "Warning", REASON_SANDBOX, message)
            self._next_sandbox_try = time.monotonic() + self._sandbox_backoff.next()
            return False
        self.sandbox, self.pod_ip = sandbox, sandbox.ip
        try:
            self._network_files = self._write_network_files(network, sandbox)
        except PodDnsError as exc:
            self._fail_pod(REASON_DNS, str(exc))
            return False
        return True

    def _write_network_files(self, network: PodNetwork, sandbox: PodSandbox) -> list[Bind]:
        """resolv.conf, hosts and hostname of the pod, and the binds that show them in every container."""
        folder = self.paths.pod_dir / "network"
        folder.mkdir(parents=True, exist_ok=True)
        contents = {
            "resolv.conf": resolv_conf(self.pod, network.dns_ip),
            "hosts": hosts_file(self.pod, sandbox.ip),
            "hostname": pod_hostname(self.pod) + "\n",
        }
        binds = []
        for name, text in contents.items():
            path = folder / name
            path.write_text(text)
            path.chmod(0o644)
            binds.append(Bind(str(path), f"/etc/{name}"))
        return binds

    def _teardown_sandbox(self) -> None:
        """Remove the pod's network namespace and give its address back (its containers have ended)."""
        network = self.ctx.network
        if network is None or self.host_network:
            return
        try:
            network.teardown(self.uid)
        except Exception as exc:  # noqa: BLE001 - the next environment's sweep removes what is left
            log.warning("pod %s/%s: removing its network failed: %s", self.namespace, self.name, exc)
        self.sandbox = None

    @property
    def addresses(self) -> PodAddresses:
        """The node's address and the pod's (once it has one)."""
        return PodAddresses(host_ip=self.ctx.host_ip, pod_ip=self.pod_ip)

    def _pod_view(self) -> Mapping[str, Any]:
        """The pod object with the addresses the agent knows in its status (for the downward API)."""
        status = dict(self.pod.get("status") or {})
        status["hostIP"] = self.ctx.host_ip
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        return {**self.pod, "status": status}

    def _namespaces(self) -> PodNamespaces:
        """The namespaces every process of the pod enters (the host's network for hostNetwork pods)."""
        if self.sandbox is None:
            return PodNamespaces(netns_path=None, hostname=None if self.host_network else pod_hostname(self.pod))
        return PodNamespaces(netns_path=self.sandbox.netns_path, hostname=pod_hostname(self.pod))

    def _volumes_ready(self) -> bool:
        if self._volumes or not (self.pod["spec"].get("volumes") or []):
            return True
        if time.monotonic() < self._next_volume_try:
            return False
        try:
            self._volumes = prepare_volumes(self._pod_view(), self.paths, self.ctx.api)
            return True
        except (VolumeUnsupportedError, ContainerConfigError) as exc:
            self._fail_pod(REASON_VOLUME, str(exc))
        except VolumeError as exc:
            message = f"MountVolume.SetUp failed for {exc}"
            for runtime in self.all:
                runtime.state.set_waiting("ContainerCreating", message)
            self.ctx.api.emit_event(self.pod, "Warning", "FailedMount", message)
            self._next_volume_try = time.monotonic() + self._volume_backoff.next()
        return False

    def _advance(self, runtime: ContainerRuntime) -> None:
        if runtime.process is not None:
            if runtime.kill_reason:
                self.ctx.api.emit_event(self.pod, "Normal", "Killing", runtime.kill_reason, runtime.name)
                runtime.kill_reason = ""
                grace_s = self._grace_s()
                deadline = time.monotonic() + grace_s
                self._run_pre_stop([runtime], deadline)
                runtime.process.terminate(max(deadline - time.monotonic(), min(grace_s, MINIMUM_GRACE_S)))
            code = runtime.process.poll()
            if code is not None:
                self._ended(runtime, code)
            return
        if runtime.state.terminated is not None and not self._restarts(runtime):
            return
        if runtime.state.waiting_reason is not None and time.monotonic() >= runtime.next_start_at:
            self._start(runtime)

    def _restarts(self, runtime: ContainerRuntime) -> bool:
        """Whether an ended container runs again (init containers must succeed; app ones follow the policy)."""
        terminated = runtime.state.terminated
        failed = terminated is not None and terminated.exit_code != 0
        if runtime.init:
            return failed and self.restart_policy != "Never"
        return self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and failed)

    def _ended(self, runtime: ContainerRuntime, code: int) -> None:
        process = runtime.process
        assert process is not None
        process.finish()
        self._stop_probes(runtime)
        runtime.process = None
        message = self._termination_message(runtime, code)
        result = Terminated(
            exit_code=code,
            reason="Completed" if code == 0 else "Error",
            message=message,
            started_at=process.started_at,
            finished_at=process.finished_at or datetime.now(UTC),
            container_id=f"local://{process.pid}",
        )
        log.info("pod %s/%s container %s exited with code %d", self.namespace, self.name, runtime.name, code)
        self._after_run(runtime, result, ran_for_s=(result.finished_at - process.started_at).total_seconds())

    def _after_run(self, runtime: ContainerRuntime, result: Terminated, ran_for_s: float) -> None:
        runtime.state.set_terminated(result)
        if not self._restarts(runtime) or self.pod_failure is not None:
            return
        delay = runtime.backoff.next(ran_for_s)
        runtime.state.last_terminated = result
        runtime.state.set_waiting(
            "CrashLoopBackOff",
            f"back-off {delay:g}s restarting failed container={runtime.name} "
            f"pod={self.name}_{self.namespace}({self.uid})",
        )
        runtime.next_start_at = time.monotonic() + delay
        self.ctx.api.emit_event(
            self.pod, "Warning", "BackOff", "Back-off restarting failed container", runtime.name
        )

    def _termination_message(self, runtime: ContainerRuntime, code: int) -> str:
        try:
            with self.paths.termination_file(runtime.name).open("rb") as handle:
                message = handle.read(TERMINATION_MESSAGE_MAX_BYTES).decode(errors="replace")
        except OSError:
            message = ""
        if (
            not message
            and code != 0
            and runtime.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = plain_text(self.paths.log_path(runtime.name), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
        return message

    def _start(self, runtime: ContainerRuntime) -> None:
        spec = runtime.spec
        image = str(spec.get("image", ""))
        try:
            env = container_env(self._pod_view(), spec, self.ctx.api, self.ctx.services)
            argv = self.ctx.images.command_for(
                image,
                expand_all([str(x) for x in spec.get("command") or []], env),
                expand_all([str(x) for x in spec.get("args") or []], env),
            )
            binds = [*self._network_files, *container_binds(spec, self._volumes, self.paths, env)]
            needed = [*self.ctx.needed_paths, *([os.path.dirname(argv[0])] if os.path.isabs(argv[0]) else [])]
            hidden = hidden_paths(binds, needed)
        except ContainerConfigError as exc:
            runtime.state.set_waiting("CreateContainerConfigError", str(exc))
            runtime.next_start_at = time.monotonic() + runtime.backoff.next()
            self.ctx.api.emit_event(self.pod, "Warning", "Failed", f"Error: {exc}", runtime.name)
            return
        except ImageNotRunnableError as exc:
            self._fail_pod(NOT_RUNNABLE_REASON, f"container {runtime.name}: {exc}")
            return
        if hidden:
            mount_path, needed_path = hidden[0]
            self._fail_pod(
                REASON_HIDDEN,
                f"container {runtime.name}: the volume mounted at {mount_path} would hide {needed_path}, which "
                "the process needs on this machine (containers of simulated nodes share its file system); "
                "mount the volume elsewhere, e.g. under /mnt",
            )
            return
        process_env = {
            **base_env(self.pod, self.ctx.python_bin_dir, self.ctx.home),
            **self.ctx.images.local_env(image),
            **env,
        }
        reset_termination_file(self.paths, runtime.name)
        log_path = self.paths.log_path(runtime.name)
        if runtime.runs > 0 and log_path.exists():
            log_path.replace(self.paths.previous_log_path(runtime.name))
        runtime.runs += 1
        runtime.state.restart_count = runtime.runs - 1
        runtime.binds, runtime.env = binds, process_env
        workdir = str(spec["workingDir"]) if spec.get("workingDir") else None
        try:
            process = ContainerProcess.start(
                LaunchSpec(
                    argv=argv,
                    env=process_env,
                    cwd=self.paths.work_dir,
                    log_path=log_path,
                    binds=binds,
                    workdir=workdir,
                    record_path=self.paths.record_path(runtime.name),
                    pod=self._namespaces(),
                )
            )
        except StartError as exc:
            now = datetime.now(UTC)
            self.ctx.api.emit_event(self.pod, "Warning", "Failed", f"Error: {exc}", runtime.name)
            self._after_run(runtime, Terminated(128, "StartError", str(exc), None, now), ran_for_s=0.0)
            return
        runtime.process = process
        runtime.state.set_running(process.started_at, f"local://{process.pid}")
        self._start_probes(runtime, workdir)
        runtime.state.started = STARTUP not in runtime.probers
        runtime.state.ready = runtime.state.started and READINESS not in runtime.probers
        log.info(
            "pod %s/%s container %s started (pid %d)", self.namespace, self.name, runtime.name, process.pid
        )
        self.ctx.api.emit_event(
            self.pod, "Normal", "Started", f"Started container {runtime.name}", runtime.name
        )

    # -- probes --------------------------------------------------------------------------------

    def _start_probes(self, runtime: ContainerRuntime, workdir: str | None) -> None:
        if runtime.init:
            return
        spec = runtime.spec

        exec_runner = self._exec_runner(runtime, workdir)

        def started() -> bool:
            prober = runtime.probers.get(STARTUP)
            return prober is None or prober.result

        for kind in (STARTUP, READINESS, LIVENESS):
            probe = spec.get(f"{kind}Probe")
            if not probe:
                continue
            gate = None if kind == STARTUP else started
            runtime.probers[kind] = Prober(
                kind, probe, spec, exec_runner, self._on_probe(runtime.name), gate, self.pod_ip or self.ctx.host_ip
            ).start()

    def _exec_runner(
        self, runtime: ContainerRuntime, workdir: str | None
    ) -> Callable[[list[str], float], tuple[int, str]]:
        """Runs a command as the container's process runs: its mounts, environment and network."""
        namespaces = self._namespaces()

        def run(argv: list[str], timeout_s: float) -> tuple[int, str]:
            return run_exec(argv, runtime.env, self.paths.work_dir, runtime.binds, workdir, timeout_s, namespaces)

        return run

    def _stop_probes(self, runtime: ContainerRuntime | None = None) -> None:
        for item in [runtime] if runtime is not None else self.all:
            for prober in item.probers.values():
                prober.stop()
            item.probers.clear()

    # -- failures, deadlines, ending -----------------------------------------------------------

    def _fail_pod(self, reason: str, message: str) -> None:
        """Fail the whole pod (no retry): every container that has not run is marked with the reason."""
        if self.pod_failure is not None:
            return
        log.warning("pod %s/%s failed: %s: %s", self.namespace, self.name, reason, message)
        self.pod_failure = (reason, message)
        for runtime in self.all:
            if runtime.process is None and runtime.state.terminated is None:
                runtime.state.set_waiting(reason, message)
        self.ctx.api.emit_event(self.pod, "Warning", reason, message)

    def _check_deadline(self) -> None:
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and (datetime.now(UTC) - self.start_time).total_seconds() > float(deadline):
            self._fail_pod(
                REASON_DEADLINE,
                f"Pod was active on the node longer than the specified deadline ({deadline} s)",
            )

    def _grace_s(self, capped: bool = False) -> float:
        """The pod's grace period: the deletion's, else ``terminationGracePeriodSeconds``, else 30 s.

        ``capped``: at most the agent's cap (when the node agent itself stops).
        """
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        spec_grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        grace = float(
            meta_grace
            if meta_grace is not None
            else spec_grace
            if spec_grace is not None
            else DEFAULT_GRACE_S
        )
        return min(grace, self.ctx.grace_cap_s) if capped else grace

    def _run_pre_stop(self, runtimes: list[ContainerRuntime], deadline: float) -> None:
        """Run the ``preStop`` hooks of these containers at once; wait for them until ``deadline`` at most."""
        hooks = [
            (runtime, runtime.spec["lifecycle"]["preStop"])
            for runtime in runtimes
            if not runtime.init and runtime.process is not None
            and ((runtime.spec.get("lifecycle") or {}).get("preStop"))
        ]
        threads = []
        for runtime, handler in hooks:
            thread = threading.Thread(
                target=self._pre_stop, args=(runtime, handler, deadline), name=f"prestop-{runtime.name}", daemon=True
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _pre_stop(self, runtime: ContainerRuntime, handler: Mapping[str, Any], deadline: float) -> None:
        where = f"container {runtime.name}: lifecycle.preStop"
        if "exec" not in handler and "httpGet" not in handler:
            message = f"{where}: only exec and httpGet handlers run here (got {sorted(handler)})"
            self.ctx.api.emit_event(self.pod, "Warning", "FailedPreStopHook", message, runtime.name)
            return
        workdir = str(runtime.spec["workingDir"]) if runtime.spec.get("workingDir") else None
        timed = {**handler, "timeoutSeconds": max(deadline - time.monotonic(), 0.1)}
        ok, message = run_probe(
            timed, runtime.spec, self._exec_runner(runtime, workdir), where, self.pod_ip or self.ctx.host_ip
        )
        if not ok:
            self.ctx.api.emit_event(
                self.pod, "Warning", "FailedPreStopHook", f"PreStopHook failed: {message}", runtime.name
            )

    def _kill_all(self, grace_s: float, pre_stop: bool = False) -> None:
        """End every running container as the kubelet does: ``preStop`` hooks (when asked), then SIGTERM
        to all at once, then SIGKILL to what is left when ``grace_s`` is spent."""
        running = [r for r in self.all if r.process is not None]
        deadline = time.monotonic() + grace_s
        for runtime in running:
            self.ctx.api.emit_event(
                self.pod, "Normal", "Killing", f"Stopping container {runtime.name}", runtime.name
            )
        if pre_stop and grace_s > 0:
            self._run_pre_stop(running, deadline)
            # A hook that used the whole grace period still leaves the process a moment after SIGTERM.
            deadline = max(deadline, time.monotonic() + min(grace_s, MINIMUM_GRACE_S))
        for runtime in running:
            assert runtime.process is not None
            runtime.process.send(signal.SIGTERM)
        for runtime in running:
            process = runtime.process
            assert process is not None
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            code = process.terminate(0)
            self._stop_probes(runtime)
            runtime.process = None
            runtime.state.set_terminated(
                Terminated(
                    exit_code=code,
                    reason="Completed" if code == 0 else "Error",
                    message=self._termination_message(runtime, code),
                    started_at=process.started_at,
                    finished_at=process.finished_at or datetime.now(UTC),
                    container_id=f"local://{process.pid}",
                )
            )

    def _shutdown(self, why: str) -> None:
        if why == "deleted":
            self._kill_all(0)
        elif why == "deleting":
            self._kill_all(self._grace_s(), pre_stop=True)
        else:
            self._kill_all(self._grace_s(capped=True))
        self._teardown_sandbox()
        if why == "stop-fail" and self.phase not in TERMINAL_PHASES:
            self._fail_pod(REASON_AGENT_STOPPED, "the node agent stopped; it ended the pod's containers")
        try:
            if why in ("deleting", "stop-fail"):
                self._push_status(force=True)
            if why == "deleting":
                self.ctx.api.delete_pod_now(self.pod)
        except PodGone:
            pass
        except Exception as exc:  # noqa: BLE001 - the API server may be going away with the agent
            log.warning("pod %s/%s: final update failed: %s", self.namespace, self.name, exc)
        cleanup_pod_dir(self.paths.pod_dir)

    def _push_status(self, force: bool = False) -> None:
        status = build_status(
            self.pod,
            [r.state for r in self.init],
            [r.state for r in self.app],
            self._memory,
            self.start_time,
            self._image_ids,
            self.pod_failure,
            addresses=self.addresses,
        )
        self.phase = str(status["phase"])
        if status == self._last_status:
            return
        if not force and time.monotonic() < self._next_status_try:
            return
        try:
            self.ctx.api.patch_pod_status(self.pod, status)
        except PodGone:
            # Deleted behind our back: the DELETED event follows; stop without writing more.
            self._inbox.put(("deleted", None))
            self._last_status = status
            return
        except Exception as exc:
            log.warning("pod %s/%s: status update failed (will retry): %s", self.namespace, self.name, exc)
            self._next_status_try = time.monotonic() + STATUS_RETRY_S
            if force:
                raise
            return
        self._last_status = status

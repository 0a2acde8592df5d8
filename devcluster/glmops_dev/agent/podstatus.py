"""A pod's status as the kubelet writes it, computed from what the node agent knows (pure, no I/O).

The phase follows the kubelet's ``getPhase``: a waiting container that never ran keeps the pod
Pending; running containers make it Running; when all have stopped, the restart policy decides
between Running (they will restart), Succeeded and Failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TERMINAL_PHASES = (SUCCEEDED, FAILED)


def timestamp(moment: datetime) -> str:
    """metav1.Time's wire format (whole seconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Terminated:
    """How one run of a container ended."""

    exit_code: int
    reason: str
    message: str
    started_at: datetime | None
    finished_at: datetime
    container_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ``state.terminated`` object."""
        body: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason}
        if self.message:
            body["message"] = self.message
        if self.started_at is not None:
            body["startedAt"] = timestamp(self.started_at)
        body["finishedAt"] = timestamp(self.finished_at)
        if self.container_id:
            body["containerID"] = self.container_id
        return body


@dataclass
class ContainerState:
    """What the node agent knows about one container; exactly one of waiting/running/terminated holds."""

    name: str
    image: str
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str = ""
    running_since: datetime | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""

    def set_waiting(self, reason: str, message: str = "") -> None:
        """Waiting (for a start, a retry or a back-off)."""
        self.waiting_reason, self.waiting_message = reason, message
        self.running_since, self.terminated = None, None
        self.ready = self.started = False

    def set_running(self, since: datetime, container_id: str) -> None:
        """Running since ``since``."""
        self.waiting_reason, self.waiting_message = None, ""
        self.running_since, self.terminated = since, None
        self.container_id = container_id

    def set_terminated(self, result: Terminated) -> None:
        """Ended."""
        self.waiting_reason, self.waiting_message = None, ""
        self.running_since, self.terminated = None, result
        self.ready = self.started = False

    @property
    def succeeded(self) -> bool:
        """Ended with exit code 0."""
        return self.terminated is not None and self.terminated.exit_code == 0

    def to_json(self, image_id: str) -> dict[str, Any]:
        """One entry of ``containerStatuses``."""
        state: dict[str, Any]
        if self.terminated is not None:
            state = {"terminated": self.terminated.to_json()}
        elif self.running_since is not None:
            state = {"running": {"startedAt": timestamp(self.running_since)}}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason or "ContainerCreating"}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        body: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": image_id,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": state,
            "lastState": {"terminated": self.last_terminated.to_json()} if self.last_terminated else {},
        }
        if self.running_since is not None and self.container_id:
            body["containerID"] = self.container_id
        elif self.terminated is not None and self.terminated.container_id:
            body["containerID"] = self.terminated.container_id
        return body


def compute_phase(
    restart_policy: str, init: Sequence[ContainerState], app: Sequence[ContainerState], pod_failed: bool
) -> str:
    """The pod phase (the kubelet's ``getPhase``, plus failed init containers and pod-level failures)."""
    if pod_failed:
        return FAILED
    for container in init:
        if container.succeeded:
            continue
        if container.terminated is not None and restart_policy == "Never":
            return FAILED
        return PENDING
    running = waiting = stopped = succeeded = failed = 0
    for container in app:
        if container.running_since is not None:
            running += 1
        elif container.terminated is not None:
            stopped += 1
            if container.terminated.exit_code == 0:
                succeeded += 1
            else:
                failed += 1
        elif container.last_terminated is not None:
            # Waiting to restart after a run: stopped, but neither succeeded nor failed (as the kubelet counts).
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return PENDING
    if running > 0:
        return RUNNING
    if restart_policy == "Always":
        return RUNNING
    if restart_policy == "OnFailure":
        return SUCCEEDED if stopped == succeeded else RUNNING
    return FAILED if failed > 0 else SUCCEEDED


@dataclass(frozen=True)
class PodAddresses:
    """Where a pod runs on the network: the node's address and, once its sandbox exists, the pod's."""

    host_ip: str
    pod_ip: str | None = None


@dataclass
class ConditionMemory:
    """Last status and transition time of each condition, so transitions keep their times."""

    seen: dict[str, tuple[str, str]] = field(default_factory=dict)

    def condition(self, kind: str, ok: bool, now: str, reason: str = "", message: str = "") -> dict[str, Any]:
        """A condition whose ``lastTransitionTime`` moves only when its status does."""
        status = "True" if ok else "False"
        previous = self.seen.get(kind)
        transition = previous[1] if previous and previous[0] == status else now
        self.seen[kind] = (status, transition)
        body: dict[str, Any] = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": transition,
        }
        if reason:
            body["reason"] = reason
        if message:
            body["message"] = message
        return body


def build_status(
    pod: Mapping[str, Any],
    init: Sequence[ContainerState],
    app: Sequence[ContainerState],
    memory: ConditionMemory,
    start_time: datetime,
    image_ids: Mapping[str, str],
    pod_failure: tuple[str, str] | None = None,
    now: datetime | None = None,
    addresses: PodAddresses | None = None,
) -> dict[str, Any]:
    """The whole ``status`` of a pod (every field the kubelet owns; null clears reason/message).

    ``podIP``/``podIPs`` appear once the pod has an address (as the kubelet reports them after
    the sandbox is up); ``hostIP`` is the node's address.
    """
    spec = pod.get("spec") or {}
    moment = timestamp(now or datetime.now(UTC))
    phase = compute_phase(str(spec.get("restartPolicy") or "Always"), init, app, pod_failure is not None)
    completed = phase == SUCCEEDED or (phase == FAILED and all(c.terminated is not None for c in app))
    incomplete_init = [c.name for c in init if not c.succeeded]
    unready = [c.name for c in app if not c.ready]
    gates = [str(g["conditionType"]) for g in spec.get("readinessGates") or []]
    existing = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    gates_open = all(existing.get(g, {}).get("status") == "True" for g in gates)

    scheduled = existing.get("PodScheduled") or {}
    conditions: list[dict[str, Any]] = [
        {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": scheduled.get("lastTransitionTime") or timestamp(start_time),
        }
    ]
    if completed and not incomplete_init:
        conditions.append(memory.condition("Initialized", True, moment, "PodCompleted"))
    elif incomplete_init:
        conditions.append(
            memory.condition(
                "Initialized",
                False,
                moment,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete_init)}]",
            )
        )
    else:
        conditions.append(memory.condition("Initialized", True, moment))
    if completed:
        conditions.append(memory.condition("ContainersReady", False, moment, "PodCompleted"))
        conditions.append(memory.condition("Ready", False, moment, "PodCompleted"))
    elif unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        conditions.append(memory.condition("ContainersReady", False, moment, "ContainersNotReady", message))
        conditions.append(memory.condition("Ready", False, moment, "ContainersNotReady", message))
    else:
        conditions.append(memory.condition("ContainersReady", True, moment))
        if gates_open:
            conditions.append(memory.condition("Ready", True, moment))
        else:
            closed = [g for g in gates if existing.get(g, {}).get("status") != "True"]
            conditions.append(
                memory.condition(
                    "Ready",
                    False,
                    moment,
                    "ReadinessGatesNotReady",
                    f'corresponding condition of pod readiness gate "{closed[0]}" does not exist or is not True',
                )
            )
    ours = {c["type"] for c in conditions}
    # Conditions others own (readiness gates, DisruptionTarget...) survive the merge patch.
    conditions.extend(c for kind, c in existing.items() if kind not in ours)

    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "startTime": timestamp(start_time),
        "containerStatuses": [c.to_json(image_ids.get(c.name, "")) for c in app],
        "reason": pod_failure[0] if pod_failure else None,
        "message": pod_failure[1] if pod_failure else None,
    }
    if addresses is not None:
        status["hostIP"] = addresses.host_ip
        if addresses.pod_ip:
            status["podIP"] = addresses.pod_ip
            status["podIPs"] = [{"ip": addresses.pod_ip}]
    if init:
        status["initContainerStatuses"] = [c.to_json(image_ids.get(c.name, "")) for c in init]
    return status

"""ModelDeployment status from what its Deployment, ReplicaSets and pods show. Pure.

`rollout_status` is the one place that turns observations into `phase`, `replicas`,
`readyReplicas`, `servedArtifact` and the Ready / Progressing / Degraded conditions. It reads
the objects as the API returns them (plain JSON), so its tests feed it exactly that.

Versions are ReplicaSets: the Deployment controller gives the one of the current pod template
the highest `deployment.kubernetes.io/revision` (a rollback renumbers the old one), and each
carries the `glmops.io/served-artifact` annotation of its pod template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from glmops.api.common import ConditionStatus
from glmops.api.modeldeployment import DeploymentPhase, ModelDeploymentStatus, ServedArtifact
from glmops.conditions import ConditionType, Reason, set_condition
from glmops.plan.problems import Problem
from glmops.plan.serving import ARTIFACT_ANNOTATION, CONTAINER

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
# Container states that no waiting fixes (the kubelet backs off and retries, but the cause stays).
FAILING_WAITS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "ImageNotRunnableLocally",
    }
)


@dataclass(frozen=True)
class ConditionValue:
    """One condition as decided: type, status, reason, message."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutStatus:
    """What the status says about the running replicas."""

    phase: DeploymentPhase
    replicas: int
    ready_replicas: int
    served_artifact: ServedArtifact | None
    conditions: tuple[ConditionValue, ...]
    ready_text: str = ""
    events: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)
    """(type, reason, message) worth an event when they are new."""


@dataclass(frozen=True)
class Version:
    """One ReplicaSet of the Deployment: a version of the pod template."""

    name: str
    revision: int
    replicas: int
    ready: int
    artifact: ServedArtifact | None
    pods: tuple[Mapping[str, Any], ...]


def _artifact(annotations: Mapping[str, Any]) -> ServedArtifact | None:
    raw = annotations.get(ARTIFACT_ANNOTATION)
    if not raw:
        return None
    try:
        value = json.loads(str(raw))
        return ServedArtifact(uri=str(value["uri"]), sha256=value.get("sha256"))
    except (ValueError, KeyError, TypeError):
        return None


def versions(replica_sets: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> list[Version]:
    """The Deployment's ReplicaSets as versions, newest first, each with its pods."""
    found = []
    for rs in replica_sets:
        meta = rs.get("metadata") or {}
        uid = meta.get("uid")
        owned = tuple(
            p
            for p in pods
            if any(ref.get("uid") == uid for ref in (p.get("metadata") or {}).get("ownerReferences") or [])
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        )
        template = ((rs.get("spec") or {}).get("template") or {}).get("metadata") or {}
        status = rs.get("status") or {}
        found.append(
            Version(
                name=str(meta.get("name", "")),
                revision=int((meta.get("annotations") or {}).get(REVISION_ANNOTATION) or 0),
                replicas=int(status.get("replicas") or 0),
                ready=int(status.get("readyReplicas") or 0),
                artifact=_artifact(template.get("annotations") or {}),
                pods=owned,
            )
        )
    return sorted(found, key=lambda v: v.revision, reverse=True)


def pod_trouble(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a pod cannot be placed or its server keeps failing; None otherwise."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and condition.get("reason") == "Unschedulable":
            return "Unschedulable", str(condition.get("message") or "no node fits")
    for container in status.get("containerStatuses") or []:
        if container.get("name") != CONTAINER:
            continue
        waiting = (container.get("state") or {}).get("waiting") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        reason = str(waiting.get("reason") or "")
        if reason in FAILING_WAITS:
            detail = str(waiting.get("message") or "")
            if last:
                detail = f"{detail} (last exit: {last.get('reason') or 'Error'}, code {last.get('exitCode')}" + (
                    f": {str(last['message'])[-300:]}" if last.get("message") else ""
                ) + ")"
            return reason, detail.strip() or reason
        if int(container.get("restartCount") or 0) > 0 and not container.get("ready"):
            return "ContainerRestarting", (
                f"the server restarted {container['restartCount']} time(s), last exit {last.get('reason') or 'Error'} "
                f"(code {last.get('exitCode')}); see kubectl logs --previous"
            )
    if status.get("phase") == "Failed":
        return "PodFailed", str(status.get("message") or status.get("reason") or "the pod failed")
    return None


def _loading(pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a pod's server runs but its startup probe has not passed yet (the model is loading)."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            if container.get("name") == CONTAINER and (container.get("state") or {}).get("running") and not container.get("started"):
                return True
    return False


def _first_trouble(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    for pod in pods:
        trouble = pod_trouble(pod)
        if trouble is not None:
            name = (pod.get("metadata") or {}).get("name", "")
            return trouble[0], f"pod {name}: {trouble[1]}"
    return None


def _uri(artifact: ServedArtifact | None) -> str:
    return artifact.uri if artifact else "an unknown artifact"


def rollout_status(
    deployment: Mapping[str, Any] | None,
    replica_sets: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    desired_replicas: int,
    recreate: bool,
) -> RolloutStatus:
    """Phase, counts, served artifact and the Ready/Progressing/Degraded conditions, from observations."""
    if deployment is None:
        message = "the Deployment does not exist (yet); the operator creates it"
        return RolloutStatus(
            DeploymentPhase.progressing,
            0,
            0,
            None,
            (
                ConditionValue(ConditionType.ready, ConditionStatus.false, Reason.deployment_missing, message),
                ConditionValue(ConditionType.progressing, ConditionStatus.true, Reason.deployment_missing, message),
                ConditionValue(ConditionType.degraded, ConditionStatus.false, Reason.healthy, "nothing to report"),
            ),
            f"0/{desired_replicas}",
        )
    meta = deployment.get("metadata") or {}
    dep_status = deployment.get("status") or {}
    stale = int(dep_status.get("observedGeneration") or 0) < int(meta.get("generation") or 1)
    all_versions = versions(replica_sets, pods)
    newest = all_versions[0] if all_versions else None
    older = [v for v in all_versions[1:] if v.replicas or v.ready or v.pods]
    ready = sum(v.ready for v in all_versions)
    replicas = int(dep_status.get("replicas") or sum(v.replicas for v in all_versions))
    serving = next((v for v in all_versions if v.ready), None)
    served = serving.artifact if serving else None
    deadline_exceeded = any(
        c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in dep_status.get("conditions") or []
    )
    new_ready = newest.ready if newest else 0
    new_pods = newest.pods if newest else ()
    trouble = _first_trouble(new_pods)
    complete = not stale and newest is not None and new_ready >= desired_replicas and not older
    old_serving = [v for v in older if v.ready]
    ready_text = f"{ready}/{desired_replicas}"

    conditions: list[ConditionValue] = []
    events: list[tuple[str, str, str]] = []
    # Ready: some replica answers.
    if desired_replicas == 0:
        conditions.append(
            ConditionValue(ConditionType.ready, ConditionStatus.false, Reason.scaled_to_zero, "spec.replicas is 0: no replica serves")
        )
    elif ready:
        versions_text = (
            f"; {sum(v.ready for v in old_serving)} still serve the previous version ({_uri(old_serving[0].artifact)})"
            if old_serving
            else ""
        )
        conditions.append(
            ConditionValue(
                ConditionType.ready,
                ConditionStatus.true,
                Reason.replicas_ready,
                f"{ready} of {desired_replicas} replica(s) ready, serving {_uri(served)}{versions_text}",
            )
        )
    else:
        why = trouble[1] if trouble else ("the model is loading" if _loading(new_pods) else "waiting for the pods to start")
        conditions.append(ConditionValue(ConditionType.ready, ConditionStatus.false, Reason.no_ready_replicas, f"no replica is ready: {why}"))

    # Progressing and Degraded: is a rollout under way, finished, or stuck?
    degraded: ConditionValue | None = None
    if complete or (desired_replicas == 0 and not older and not stale):
        progressing = ConditionValue(
            ConditionType.progressing,
            ConditionStatus.false,
            Reason.rollout_complete,
            f"all {desired_replicas} replica(s) run the current version ({_uri(newest.artifact if newest else None)})",
        )
    elif trouble and trouble[0] == "Unschedulable" and old_serving and not recreate:
        message = (
            f"the extra pod of the new version cannot be placed ({trouble[1]}); the previous version keeps serving and "
            "the rollout waits. With no spare GPU node, set spec.strategy: Recreate (old pods stop first: a short "
            "outage) or add capacity"
        )
        progressing = ConditionValue(ConditionType.progressing, ConditionStatus.false, Reason.surge_unschedulable, message)
        degraded = ConditionValue(ConditionType.degraded, ConditionStatus.true, Reason.surge_unschedulable, message)
    elif (trouble or deadline_exceeded) and old_serving:
        detail = trouble[1] if trouble else "it did not become ready within the Deployment's progress deadline"
        message = (
            f"the new version ({_uri(newest.artifact if newest else None)}) does not become ready: {detail}. The "
            f"previous version ({_uri(old_serving[0].artifact)}) keeps serving; fix the cause, or set spec.source back "
            "to roll back"
        )
        progressing = ConditionValue(ConditionType.progressing, ConditionStatus.false, Reason.new_version_not_ready, message)
        degraded = ConditionValue(ConditionType.degraded, ConditionStatus.true, Reason.new_version_not_ready, message)
    elif trouble:
        reason = Reason.unschedulable if trouble[0] == "Unschedulable" else Reason.container_failing
        fix = (
            "check spec.gpusPerReplica, gpuMemoryGiB and placement against the cluster's nodes"
            if reason == Reason.unschedulable
            else "see kubectl logs and kubectl describe pod"
        )
        message = f"{trouble[1]}; {fix}"
        progressing = ConditionValue(ConditionType.progressing, ConditionStatus.true, reason, message)
        degraded = ConditionValue(ConditionType.degraded, ConditionStatus.true, reason, message)
    else:
        if stale:
            what = "the Deployment controller has not seen the new spec yet"
        elif _loading(new_pods):
            what = f"{new_ready} of {desired_replicas} new replica(s) ready; the model is loading"
        else:
            what = f"{new_ready} of {desired_replicas} new replica(s) ready"
        if older:
            what += f"; {sum(v.replicas for v in older)} replica(s) of the previous version remain"
        progressing = ConditionValue(ConditionType.progressing, ConditionStatus.true, Reason.rolling_out, what)
    conditions.append(progressing)
    conditions.append(
        degraded or ConditionValue(ConditionType.degraded, ConditionStatus.false, Reason.healthy, "nothing to report")
    )
    if degraded is not None:
        events.append(("Warning", degraded.reason, degraded.message))

    ready_condition = conditions[0]
    if degraded is not None:
        phase = DeploymentPhase.degraded
    elif ready_condition.status is ConditionStatus.true and progressing.status is ConditionStatus.false:
        phase = DeploymentPhase.ready
    elif desired_replicas == 0:
        phase = DeploymentPhase.pending
    else:
        phase = DeploymentPhase.progressing
    return RolloutStatus(phase, replicas, ready, served, tuple(conditions), ready_text, tuple(events))


# --- the whole status ---------------------------------------------------------------------------

WAIT_REASONS = frozenset(
    {
        Reason.fine_tune_job_not_found,
        Reason.fine_tune_job_not_succeeded,
        Reason.secret_not_found,
        Reason.pvc_not_found,
        Reason.model_downloading,
        Reason.api_error,
    }
)
"""Resolved=False reasons that may clear up without a spec change: the deployment waits, it is not refused."""


def resolution_condition(problems: Sequence[Problem], waits: Sequence[Problem], notes: Sequence[str], served: str) -> ConditionValue:
    """The Resolved condition from what the planner decided: every problem, else every wait, else what is served."""
    if problems:
        return ConditionValue(ConditionType.resolved, ConditionStatus.false, problems[0].reason, "; ".join(map(str, problems)))
    if waits:
        return ConditionValue(ConditionType.resolved, ConditionStatus.false, waits[0].reason, "; ".join(map(str, waits)))
    message = f"serving {served}" + "".join(f"; {note}" for note in notes)
    return ConditionValue(ConditionType.resolved, ConditionStatus.true, Reason.resolved, message)


def deployment_status(
    previous: ModelDeploymentStatus,
    generation: int,
    resolved: ConditionValue,
    rollout: RolloutStatus | None,
    desired_replicas: int,
    now: datetime | None = None,
) -> ModelDeploymentStatus:
    """The ModelDeployment's status: the resolution (from the planner) over the rollout (from the pods).

    A spec that cannot be served, or waits for a FineTuneJob, never takes down what already
    serves: the Deployment keeps its previous version and the conditions say why it stays.
    """
    status = previous.model_copy(deep=True)
    waiting = resolved.status is not ConditionStatus.true and resolved.reason in WAIT_REASONS
    refused = resolved.status is not ConditionStatus.true and not waiting
    serving = rollout is not None and rollout.ready_replicas > 0

    def put(value: ConditionValue) -> None:
        status.conditions = set_condition(
            status.conditions, value.type, value.status, value.reason, value.message, generation, now
        )

    put(resolved)
    if rollout is not None:
        for value in rollout.conditions:
            put(value)
        status.replicas = rollout.replicas
        status.ready_replicas = rollout.ready_replicas
        status.served_artifact = rollout.served_artifact
        phase = rollout.phase
    else:
        status.replicas = status.ready_replicas = 0
        status.served_artifact = None
        phase = DeploymentPhase.pending
    status.ready = f"{status.ready_replicas}/{desired_replicas}"
    if refused:
        keeps = "; the running version keeps serving" if serving else ""
        put(ConditionValue(ConditionType.degraded, ConditionStatus.true, resolved.reason, resolved.message + keeps))
        put(ConditionValue(ConditionType.progressing, ConditionStatus.false, resolved.reason, "the spec cannot be served as written"))
        if not serving:
            put(ConditionValue(ConditionType.ready, ConditionStatus.false, resolved.reason, resolved.message))
        phase = DeploymentPhase.degraded if serving else DeploymentPhase.failed
    elif waiting:
        keeps = "; the running version keeps serving until then" if serving else ""
        put(ConditionValue(ConditionType.progressing, ConditionStatus.true, resolved.reason, resolved.message + keeps))
        if not serving:
            put(ConditionValue(ConditionType.ready, ConditionStatus.false, resolved.reason, resolved.message))
            put(ConditionValue(ConditionType.degraded, ConditionStatus.false, Reason.healthy, "nothing to report"))
        phase = DeploymentPhase.progressing if serving else DeploymentPhase.pending
    status.phase = phase
    status.observed_generation = generation
    return status

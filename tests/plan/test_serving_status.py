"""ModelDeployment status from the Deployment, its ReplicaSets and pods, as the API returns them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from glmops.api.common import ConditionStatus
from glmops.api.modeldeployment import DeploymentPhase, ModelDeploymentStatus
from glmops.conditions import find_condition
from glmops.plan.problems import Problem
from glmops.plan.serving_status import (
    ConditionValue,
    RolloutStatus,
    deployment_status,
    pod_trouble,
    resolution_condition,
    rollout_status,
)

Q4 = "pvc://models/coder/gguf/Q4_K_M/coder-Q4_K_M.gguf"
Q8 = "pvc://models/coder/gguf/Q8_0/coder-Q8_0.gguf"


def deployment(generation: int = 2, observed: int = 2, replicas: int = 1, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "coder", "generation": generation, "uid": "dep"},
        "status": {"observedGeneration": observed, "replicas": replicas, "conditions": conditions or []},
    }


def replica_set(name: str, revision: int, artifact: str, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "annotations": {"deployment.kubernetes.io/revision": str(revision)}},
        "spec": {"template": {"metadata": {"annotations": {"glmops.io/served-artifact": json.dumps({"uri": artifact, "sha256": "ab"})}}}},
        "status": {"replicas": replicas, "readyReplicas": ready},
    }


def pod(rs: str, state: str = "ready", restarts: int = 0, name: str = "") -> dict[str, Any]:
    """A serving pod of ReplicaSet `rs`: ready, loading, crashing, unschedulable or pulling."""
    status: dict[str, Any] = {"phase": "Running", "conditions": []}
    container: dict[str, Any] = {"name": "server", "ready": False, "started": False, "restartCount": restarts, "state": {}}
    if state == "ready":
        container.update(ready=True, started=True, state={"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    elif state == "loading":
        container["state"] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    elif state == "crashing":
        container["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}
        container["lastState"] = {"terminated": {"reason": "Error", "exitCode": 1, "message": "gguf_init_from_file: invalid magic"}}
    elif state == "unschedulable":
        status = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."}
            ],
        }
        container = {}
    elif state == "pulling":
        container["state"] = {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}}
    if container:
        status["containerStatuses"] = [container]
    return {"metadata": {"name": name or f"{rs}-{state}", "ownerReferences": [{"uid": f"uid-{rs}"}]}, "status": status}


def condition(result: RolloutStatus, type_: str) -> tuple[str, str, str]:
    found = next(c for c in result.conditions if c.type == type_)
    return found.status.value, found.reason, found.message


def test_all_replicas_ready_on_one_version_is_ready() -> None:
    result = rollout_status(
        deployment(replicas=2), [replica_set("a", 1, Q4, 2, 2)], [pod("a", name="a-1"), pod("a", name="a-2")], 2, False
    )
    assert result.phase is DeploymentPhase.ready
    assert (result.replicas, result.ready_replicas, result.ready_text) == (2, 2, "2/2")
    assert result.served_artifact is not None and result.served_artifact.uri == Q4 and result.served_artifact.sha256 == "ab"
    assert condition(result, "Ready")[:2] == ("True", "ReplicasReady")
    assert condition(result, "Progressing")[:2] == ("False", "RolloutComplete")
    assert condition(result, "Degraded")[0] == "False"


def test_a_first_replica_that_loads_its_model_is_progressing() -> None:
    result = rollout_status(deployment(), [replica_set("a", 1, Q4, 1, 0)], [pod("a", "loading")], 1, False)
    assert result.phase is DeploymentPhase.progressing and result.served_artifact is None
    status, reason, message = condition(result, "Ready")
    assert (status, reason) == ("False", "NoReadyReplicas") and "loading" in message
    assert condition(result, "Progressing")[0] == "True"


def test_during_a_surge_the_old_version_serves_until_a_new_pod_is_ready() -> None:
    sets = [replica_set("old", 1, Q4, 2, 2), replica_set("new", 2, Q8, 1, 0)]
    result = rollout_status(deployment(replicas=3), sets, [pod("old"), pod("old"), pod("new", "loading")], 2, False)
    assert result.phase is DeploymentPhase.progressing
    assert result.served_artifact is not None and result.served_artifact.uri == Q4
    assert condition(result, "Ready")[0] == "True"
    assert "loading" in condition(result, "Progressing")[2]
    # once a new pod is ready, the newest ready version is what status reports as served
    sets = [replica_set("old", 1, Q4, 1, 1), replica_set("new", 2, Q8, 2, 1)]
    result = rollout_status(deployment(replicas=3), sets, [pod("old"), pod("new"), pod("new", "loading")], 2, False)
    assert result.served_artifact is not None and result.served_artifact.uri == Q8
    assert "previous version" in condition(result, "Ready")[2]


def test_a_finished_rollout_serves_the_new_artifact() -> None:
    sets = [replica_set("old", 1, Q4, 0, 0), replica_set("new", 2, Q8, 2, 2)]
    result = rollout_status(deployment(replicas=2), sets, [pod("new"), pod("new")], 2, False)
    assert result.phase is DeploymentPhase.ready and result.served_artifact is not None and result.served_artifact.uri == Q8


def test_a_new_version_that_never_becomes_ready_leaves_the_old_one_serving_degraded() -> None:
    sets = [replica_set("old", 1, Q4, 1, 1), replica_set("new", 2, Q8, 1, 0)]
    result = rollout_status(deployment(replicas=2), sets, [pod("old"), pod("new", "crashing", restarts=3)], 1, False)
    assert result.phase is DeploymentPhase.degraded
    assert condition(result, "Ready")[0] == "True"
    assert result.served_artifact is not None and result.served_artifact.uri == Q4
    status, reason, message = condition(result, "Degraded")
    assert (status, reason) == ("True", "NewVersionNotReady")
    assert Q8 in message and Q4 in message and "invalid magic" in message and "roll back" in message
    assert condition(result, "Progressing")[:2] == ("False", "NewVersionNotReady")
    assert result.events and result.events[0][0] == "Warning"


def test_a_progress_deadline_exceeded_also_means_the_new_version_failed() -> None:
    stuck = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    sets = [replica_set("old", 1, Q4, 1, 1), replica_set("new", 2, Q8, 1, 0)]
    result = rollout_status(deployment(replicas=2, conditions=stuck), sets, [pod("old"), pod("new", "loading")], 1, False)
    assert condition(result, "Degraded")[:2] == ("True", "NewVersionNotReady")


def test_a_surge_pod_that_cannot_be_placed_says_so_and_advises_recreate() -> None:
    sets = [replica_set("old", 1, Q4, 1, 1), replica_set("new", 2, Q8, 1, 0)]
    result = rollout_status(deployment(replicas=2), sets, [pod("old"), pod("new", "unschedulable")], 1, False)
    status, reason, message = condition(result, "Degraded")
    assert (status, reason) == ("True", "SurgeUnschedulable")
    assert "Recreate" in message and "Insufficient nvidia.com/gpu" in message
    assert condition(result, "Ready")[0] == "True" and result.phase is DeploymentPhase.degraded


def test_an_unplaceable_pod_without_an_old_version_is_unschedulable() -> None:
    result = rollout_status(deployment(), [replica_set("a", 1, Q4, 1, 0)], [pod("a", "unschedulable")], 1, True)
    assert condition(result, "Ready")[0] == "False"
    status, reason, message = condition(result, "Degraded")
    assert (status, reason) == ("True", "Unschedulable") and "gpusPerReplica" in message


def test_an_image_that_cannot_be_pulled_is_a_failing_container() -> None:
    result = rollout_status(deployment(), [replica_set("a", 1, Q4, 1, 0)], [pod("a", "pulling")], 1, False)
    assert condition(result, "Degraded")[:2] == ("True", "ContainerFailing")
    assert "manifest unknown" in condition(result, "Ready")[2]


def test_a_spec_the_controller_has_not_seen_is_still_rolling_out() -> None:
    result = rollout_status(deployment(generation=3, observed=2), [replica_set("a", 1, Q4, 1, 1)], [pod("a")], 1, False)
    assert condition(result, "Progressing")[:2] == ("True", "RollingOut") and result.phase is DeploymentPhase.progressing


def test_rolling_back_makes_the_old_replica_set_the_newest_again() -> None:
    # The Deployment controller renumbers the ReplicaSet of a template it reuses.
    sets = [replica_set("q4", 3, Q4, 1, 1), replica_set("q8", 2, Q8, 1, 0)]
    result = rollout_status(deployment(replicas=2), sets, [pod("q4"), pod("q8", "crashing", restarts=5)], 1, False)
    # the crashing pod belongs to the abandoned version: the rollout back is simply finishing
    assert condition(result, "Degraded")[0] == "False"
    assert result.served_artifact is not None and result.served_artifact.uri == Q4


def test_terminating_pods_do_not_count() -> None:
    gone = pod("new", "crashing")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    sets = [replica_set("old", 1, Q4, 0, 0), replica_set("new", 2, Q8, 1, 1)]
    result = rollout_status(deployment(), sets, [pod("new"), gone], 1, False)
    assert result.phase is DeploymentPhase.ready


def test_scaled_to_zero_is_not_ready_but_not_degraded() -> None:
    result = rollout_status(deployment(replicas=0), [replica_set("a", 1, Q4, 0, 0)], [], 0, False)
    assert condition(result, "Ready")[:2] == ("False", "ScaledToZero")
    assert condition(result, "Degraded")[0] == "False" and result.phase is DeploymentPhase.pending


def test_no_deployment_yet() -> None:
    result = rollout_status(None, [], [], 1, False)
    assert condition(result, "Ready")[:2] == ("False", "DeploymentMissing")


def test_pod_trouble_reads_the_last_exit() -> None:
    reason, message = pod_trouble(pod("a", "crashing", restarts=2)) or ("", "")
    assert reason == "CrashLoopBackOff" and "code 1" in message and "invalid magic" in message
    assert pod_trouble(pod("a", "loading")) is None and pod_trouble(pod("a")) is None


# --- the whole status: resolution over rollout -------------------------------------------------------

SERVING = rollout_status(deployment(), [replica_set("a", 1, Q4, 1, 1)], [pod("a")], 1, False)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _resolved(reason: str = "", field: str = "spec.source.quantization", message: str = "not made", wait: bool = False) -> ConditionValue:
    problem = [Problem(reason, field, message)] if reason else []
    return resolution_condition([] if wait else problem, problem if wait else [], [], f"gguf {Q4} as coder")


def test_a_refused_spec_with_nothing_running_is_failed() -> None:
    status = deployment_status(ModelDeploymentStatus(), 4, _resolved("QuantizationNotProduced"), None, 1, NOW)
    assert status.phase is DeploymentPhase.failed and status.observed_generation == 4
    resolved = find_condition(status.conditions, "Resolved")
    assert resolved is not None and resolved.reason == "QuantizationNotProduced"
    assert resolved.message == "spec.source.quantization: not made" and resolved.observed_generation == 4
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and ready.status is ConditionStatus.false and ready.reason == "QuantizationNotProduced"


def test_a_refused_change_keeps_the_running_version_serving_degraded() -> None:
    status = deployment_status(ModelDeploymentStatus(), 5, _resolved("QuantizationNotProduced"), SERVING, 1, NOW)
    assert status.phase is DeploymentPhase.degraded and status.ready_replicas == 1
    ready, degraded = find_condition(status.conditions, "Ready"), find_condition(status.conditions, "Degraded")
    assert ready is not None and ready.status is ConditionStatus.true
    assert degraded is not None and degraded.reason == "QuantizationNotProduced" and "keeps serving" in (degraded.message or "")


def test_waiting_for_a_job_is_pending_and_keeps_what_serves() -> None:
    waiting = _resolved("FineTuneJobNotSucceeded", "spec.source.fineTuneJob", "is Training", wait=True)
    status = deployment_status(ModelDeploymentStatus(), 1, waiting, None, 1, NOW)
    assert status.phase is DeploymentPhase.pending
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and ready.reason == "FineTuneJobNotSucceeded"
    status = deployment_status(ModelDeploymentStatus(), 2, waiting, SERVING, 1, NOW)
    assert status.phase is DeploymentPhase.progressing and status.served_artifact is not None


def test_a_served_spec_takes_the_rollout() -> None:
    status = deployment_status(ModelDeploymentStatus(), 1, _resolved(), SERVING, 1, NOW)
    assert status.phase is DeploymentPhase.ready and status.ready == "1/1"
    resolved = find_condition(status.conditions, "Resolved")
    assert resolved is not None and resolved.status is ConditionStatus.true and Q4 in (resolved.message or "")


def test_transition_times_move_only_when_a_condition_flips() -> None:
    first = deployment_status(ModelDeploymentStatus(), 1, _resolved(), SERVING, 1, NOW)
    later = deployment_status(first, 1, _resolved(), SERVING, 1, NOW + timedelta(minutes=5))
    assert [c.last_transition_time for c in later.conditions] == [c.last_transition_time for c in first.conditions]
    broken = deployment_status(later, 2, _resolved("QuantizationNotProduced"), None, 1, NOW + timedelta(minutes=9))
    resolved = find_condition(broken.conditions, "Resolved")
    assert resolved is not None and resolved.last_transition_time == NOW + timedelta(minutes=9)


def test_recreate_is_not_advised_to_a_deployment_that_already_recreates() -> None:
    # Switching a stuck surge to Recreate: the old pod still answers while the controller stops it.
    sets = [replica_set("old", 1, Q4, 1, 1), replica_set("new", 2, Q8, 1, 0)]
    result = rollout_status(deployment(replicas=2), sets, [pod("old"), pod("new", "unschedulable")], 1, True)
    _status, reason, message = condition(result, "Degraded")
    assert reason != "SurgeUnschedulable" and "strategy: Recreate" not in message

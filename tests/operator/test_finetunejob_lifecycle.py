"""A valid FineTuneJob gets one trainer Job it owns; its training spec cannot change underneath it."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client
from polling import wait_for

GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"
MERGE = "application/merge-patch+json"


def _ftj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"variant": "flash", "source": "file:///models/glm-4.7-flash"},
            "dataset": {"source": "file:///data/agent.jsonl"},
            "training": {"epochs": 1},
            # No node matches: the trainer pod stays Pending whether or not a node agent runs, so
            # these tests watch the operator alone.
            "resources": {"nodeSelector": {"glmops.io/test-pool": "none"}},
            "output": {"destination": f"file:///out/{name}", "formats": ["adapter"]},
        },
    }


def _jobs(batch: client.BatchV1Api, namespace: str) -> list[dict[str, Any]]:
    """The namespace's Jobs as plain JSON."""
    return list(json.loads(batch.list_namespaced_job(namespace, _preload_content=False).data)["items"])


def test_trainer_job_is_created_owned_and_the_training_spec_is_immutable(cluster, glmops_operator, namespace: str) -> None:
    api = cluster.api_client()
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _ftj("immutable"))

    def status() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "immutable").get("status") or {})

    wait_for("the trainer Job to be recorded", lambda: status().get("trainerJob"), 60, glmops_operator.log_tail)
    job = json.loads(batch.read_namespaced_job(status()["trainerJob"], namespace, _preload_content=False).data)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("FineTuneJob", created["metadata"]["uid"], True)
    assert status()["phase"] == "Pending" and status()["plan"]["gpusPerNode"] == 1
    # kopf's bookkeeping rode on the status patch: metadata holds only what the user wrote.
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "immutable")
    assert not [k for k in stored["metadata"].get("annotations") or {} if k.startswith("glmops.io/")]
    assert json.loads(status()["lastHandledConfiguration"])["spec"]["training"]["epochs"] == 1

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "immutable", {"spec": {"training": {"epochs": 3}}}, _content_type=MERGE
    )

    def refused() -> dict[str, Any] | None:
        return next((c for c in status().get("conditions", []) if c["type"] == "Validated" and c["status"] == "False"), None)

    condition = wait_for("the change to be refused", refused, 60, glmops_operator.log_tail)
    assert condition["reason"] == "SpecImmutable" and "spec.training" in condition["message"]
    assert len(_jobs(batch, namespace)) == 1  # still the one trainer Job, never a second

    # Deleting the FineTuneJob removes what it owns (the garbage collector follows ownerReferences).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "immutable")

    def trainer_gone() -> bool:
        remaining = _jobs(batch, namespace)
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="glmops.io/finetunejob=immutable").items
        return not remaining and all(p.metadata.deletion_timestamp for p in pods)

    wait_for("the trainer Job and its pods to be deleted with the FineTuneJob", trainer_gone, 90, glmops_operator.log_tail)


def test_restarting_the_operator_never_makes_a_second_trainer_job(cluster, glmops_operator, namespace: str) -> None:
    api = cluster.api_client()
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    names = [f"restart-{i}" for i in range(5)]
    for name in names:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _ftj(name))
        glmops_operator.restart()  # SIGKILL, mid-reconcile for some of them
    for _ in range(5):
        glmops_operator.restart()

    def converged() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        return all((i.get("status") or {}).get("trainerJob") for i in items) and len(items) == len(names)

    wait_for("every FineTuneJob to record its trainer Job", converged, 120, glmops_operator.log_tail)
    jobs = _jobs(batch, namespace)
    per_owner: dict[str, int] = {}
    for job in jobs:
        for ref in job["metadata"].get("ownerReferences", []):
            per_owner[ref["name"]] = per_owner.get(ref["name"], 0) + 1
    assert per_owner == {name: 1 for name in names}


def test_a_change_made_while_the_operator_is_down_is_still_refused(cluster, glmops_operator, namespace: str) -> None:
    api = cluster.api_client()
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _ftj("offline-edit"))

    def status() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "offline-edit").get("status") or {})

    wait_for("the trainer Job to be recorded", lambda: status().get("trainerJob"), 60, glmops_operator.log_tail)
    glmops_operator.stop()
    try:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "offline-edit", {"spec": {"training": {"epochs": 4}}}, _content_type=MERGE
        )
    finally:
        glmops_operator.start()

    def refused() -> dict[str, Any] | None:
        return next((c for c in status().get("conditions", []) if c["reason"] == "SpecImmutable"), None)

    # The diff base kept in status tells the restarted operator what it last acted on.
    condition = wait_for("the offline change to be refused", refused, 60, glmops_operator.log_tail)
    assert "spec.training" in condition["message"] and condition["observedGeneration"] == 2


def test_a_pod_the_scheduler_cannot_place_shows_why_in_status(cluster, glmops_operator, namespace: str) -> None:
    api = cluster.api_client()
    custom = client.CustomObjectsApi(api)
    doc = _ftj("unplaceable")
    doc["spec"]["resources"] = {"nodeSelector": {"pool": "reserved-for-another-team"}}  # matches no node
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)

    def scheduled_false() -> dict[str, Any] | None:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "unplaceable").get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == "Scheduled" and c["status"] == "False"), None)

    condition = wait_for("the scheduler's reason in status", scheduled_false, 60, glmops_operator.log_tail)
    assert condition["reason"] == "Unschedulable"
    assert "nodes are available" in condition["message"] and "spec.resources" in condition["message"]
    def warned() -> bool:
        events = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector="involvedObject.name=unplaceable").items
        return any(e.type == "Warning" and e.reason == "Unschedulable" for e in events)

    wait_for("a Warning event saying why", warned, 30, glmops_operator.log_tail)  # kopf posts events in the background


def _events(api: client.ApiClient, namespace: str, name: str) -> list[tuple[str, str]]:
    events = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason) for e in events]


def test_spec_cancel_stops_the_trainer_and_ends_the_job_cancelled(cluster, glmops_operator, namespace: str) -> None:
    api = cluster.api_client()
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _ftj("to-cancel"))

    def status() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "to-cancel").get("status") or {})

    wait_for("the trainer Job to be recorded", lambda: status().get("trainerJob"), 60, glmops_operator.log_tail)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "to-cancel", {"spec": {"cancel": True}}, _content_type=MERGE)

    wait_for("phase Cancelled", lambda: status().get("phase") == "Cancelled", 60, glmops_operator.log_tail)
    succeeded = next(c for c in status()["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "Cancelled") and status().get("completionTime")
    wait_for("the trainer Job to be deleted", lambda: not _jobs(batch, namespace), 60, glmops_operator.log_tail)
    wait_for("a Cancelled event", lambda: ("Normal", "Cancelled") in _events(api, namespace, "to-cancel"), 30, glmops_operator.log_tail)
    # An ended job stays ended: taking the request back starts nothing.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "to-cancel", {"spec": {"cancel": False}}, _content_type=MERGE)
    time.sleep(3)
    assert status()["phase"] == "Cancelled"
    assert not _jobs(batch, namespace)


def test_a_trainer_job_deleted_behind_the_operators_back_cancels_the_job(cluster, glmops_operator, namespace: str) -> None:
    api = cluster.api_client()
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _ftj("orphaned"))

    def status() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orphaned").get("status") or {})

    job = wait_for("the trainer Job to be recorded", lambda: status().get("trainerJob"), 60, glmops_operator.log_tail)
    batch.delete_namespaced_job(job, namespace, propagation_policy="Background")

    wait_for("phase Cancelled", lambda: status().get("phase") == "Cancelled", 60, glmops_operator.log_tail)
    succeeded = next(c for c in status()["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "TrainerJobDeleted" and job in succeeded["message"]
    wait_for("a Warning event", lambda: ("Warning", "TrainerJobDeleted") in _events(api, namespace, "orphaned"), 30, glmops_operator.log_tail)
    glmops_operator.restart()  # a restarted operator does not bring the Job back
    time.sleep(5)
    assert not _jobs(batch, namespace)

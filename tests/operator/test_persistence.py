"""kopf's bookkeeping on our objects: the same essence as kopf's own storages, no needless writes.

These drive the storages the way kopf's handling cycle does (store the handler's record,
purge it once every handler is done, store the diff base) on plain bodies and patches.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import kopf
import pytest

from glmops.api.finetunejob import FineTuneJobStatus
from glmops.handlers.finetunejob import NodeCache
from glmops.handlers.persistence import DIFFBASE_FIELD, LAST_APPLIED, ProgressAnnotations, StatusDiffBase
from glmops.plan.finetune import GpuNode

SPEC = {"model": {"variant": "flash", "source": "file:///models/m"}, "training": {"epochs": 2}}


def _body(annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None) -> kopf.Body:
    raw = {
        "apiVersion": "glmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 3,
            "labels": {"team": "a"},
            "annotations": {
                LAST_APPLIED: json.dumps({"spec": SPEC}),
                "example.com/note": "kept",
                **(annotations or {}),
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:training": {}}}}],
        },
        "spec": copy.deepcopy(SPEC),
        "status": status if status is not None else {"phase": "Pending", "conditions": [{"type": "Succeeded"}]},
    }
    return kopf.Body(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {"glmops.io/reconcile": '{"retries":1}', "glmops.io/kopf-managed": "yes"},  # ours, mid-retry
        {"other.io/kopf-managed": "yes", "other.io/fn": "{}", "kopf.zalando.org/x": "{}"},  # other operators'
    ],
)
@pytest.mark.parametrize("extra_fields", [None, ["status.phase"]])
def test_the_slim_diff_base_is_the_essence_kopf_builds(annotations: dict[str, str], extra_fields: Any) -> None:
    body = _body(annotations)
    ours = StatusDiffBase(field=DIFFBASE_FIELD).build(body=body, extra_fields=extra_fields)
    stock = kopf.StatusDiffBaseStorage(field=DIFFBASE_FIELD).build(body=body, extra_fields=extra_fields)
    assert ours == stock
    assert ours["spec"] == SPEC and ours["metadata"]["labels"] == {"team": "a"}
    ours["spec"]["training"]["epochs"] = 9  # a copy: the body is never changed through the essence
    assert body["spec"]["training"]["epochs"] == 2


def test_the_diff_base_goes_into_status_where_the_model_declares_it() -> None:
    storage = StatusDiffBase(field=DIFFBASE_FIELD)
    body = _body()
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert set(patch) == {"status"}  # nothing in metadata: one status request carries it
    stored = patch["status"]["lastHandledConfiguration"]
    assert json.loads(stored)["spec"] == SPEC
    # The status model reads it but never writes it back, so our own status patches cannot
    # overwrite a newer diff base with the one they read.
    status = FineTuneJobStatus.model_validate({"phase": "Pending", "lastHandledConfiguration": stored})
    assert status.last_handled_configuration == stored and "lastHandledConfiguration" not in status.to_wire()
    # Read back from the stored object, it is what kopf diffs against.
    assert storage.fetch(body=_body(status={"lastHandledConfiguration": stored})) == json.loads(stored)


def _cycle(storage: ProgressAnnotations, body: kopf.Body, record: dict[str, Any], done: bool) -> kopf.Patch:
    patch = kopf.Patch()
    storage.store(key="reconcile", record=record, body=body, patch=patch)  # type: ignore[arg-type]
    if done:
        storage.purge(key="reconcile", body=body, patch=patch)  # type: ignore[arg-type]
    return patch


def test_a_handler_that_succeeds_at_once_leaves_no_metadata_patch() -> None:
    patch = _cycle(ProgressAnnotations(prefix="glmops.io"), _body(), {"success": True, "retries": 1}, done=True)
    assert "metadata" not in patch  # kopf would have sent {"glmops.io/kopf-managed": "yes"} alone


def test_a_retrying_handler_keeps_its_record_and_the_marker() -> None:
    patch = _cycle(ProgressAnnotations(prefix="glmops.io"), _body(), {"retries": 1, "delayed": "x"}, done=False)
    annotations = patch["metadata"]["annotations"]
    assert annotations["glmops.io/kopf-managed"] == "yes"
    assert json.loads(annotations["glmops.io/reconcile"])["retries"] == 1


def test_finishing_after_a_retry_removes_the_record_and_leaves_the_marker_alone() -> None:
    body = _body({"glmops.io/reconcile": '{"retries":1}', "glmops.io/kopf-managed": "yes"})
    patch = _cycle(ProgressAnnotations(prefix="glmops.io"), body, {"success": True, "retries": 2}, done=True)
    assert patch["metadata"]["annotations"] == {"glmops.io/reconcile": None}


def test_the_marker_stays_while_another_record_of_ours_is_on_the_object() -> None:
    body = _body({"glmops.io/other-handler": '{"retries":1}'})
    patch = _cycle(ProgressAnnotations(prefix="glmops.io"), body, {"success": True}, done=True)
    assert patch["metadata"]["annotations"] == {"glmops.io/kopf-managed": "yes"}


def test_a_burst_of_jobs_lists_the_nodes_once() -> None:
    calls: list[int] = []
    nodes = (GpuNode("sim-h200x8", 8, 143771, "NVIDIA-H200"),)

    def lister(_api: Any) -> tuple[GpuNode, ...]:
        calls.append(1)
        return nodes

    cache = NodeCache(lister, max_age=60.0)
    start = threading.Barrier(16)
    results: list[tuple[GpuNode, ...]] = []

    def reconcile() -> None:
        start.wait()
        results.append(cache.get(None))  # type: ignore[arg-type]

    threads = [threading.Thread(target=reconcile) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [nodes] * 16

    stale = NodeCache(lister, max_age=0.0)
    stale.get(None)  # type: ignore[arg-type]
    stale.get(None)  # type: ignore[arg-type]
    assert len(calls) == 3  # a cache past its age lists again

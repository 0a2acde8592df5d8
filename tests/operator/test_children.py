"""Which pod events wake the FineTuneJob and SyntheticDataset handlers, and how a child names its owner."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from glmops.handlers.children import owner_name, pod_news


def _status(phase: str | None, *conditions: dict[str, Any]) -> kopf.Status:
    raw: dict[str, Any] = {"conditions": list(conditions)}
    if phase is not None:
        raw["phase"] = phase
    return kopf.Body({"status": raw}).status  # as kopf hands it to a `when=` filter


@pytest.mark.parametrize("phase", ["Running", "Succeeded", "Failed", "Unknown"])
def test_a_pod_that_runs_or_ended_is_news(phase: str) -> None:
    assert pod_news(_status(phase))


def test_a_pending_pod_is_news_only_when_the_scheduler_cannot_place_it() -> None:
    assert not pod_news(_status("Pending"))
    assert not pod_news(_status(None))
    assert not pod_news(_status("Pending", {"type": "PodScheduled", "status": "True"}))
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
    assert pod_news(_status("Pending", unschedulable))
    assert pod_news(_status(None, unschedulable))


def test_the_owner_is_read_from_the_childs_label() -> None:
    body = kopf.Body({"metadata": {"labels": {"glmops.io/finetunejob": "job-a", "glmops.io/syntheticdataset": "data-b"}}})
    assert owner_name(body, "glmops.io/finetunejob") == "job-a"
    assert owner_name(body, "glmops.io/syntheticdataset") == "data-b"
    assert owner_name(kopf.Body({"metadata": {}}), "glmops.io/finetunejob") == ""

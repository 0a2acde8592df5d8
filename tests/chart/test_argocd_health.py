"""Argo CD's health checks (charts/glmops/files/argocd/*.lua) run by a real Lua runtime (lupa) over
status objects the operator wrote on the local cluster.

tests/chart/data/argocd-status.json holds every phase a FineTuneJob and a ModelDeployment went
through in tests/chart/test_chart_release.py (which also runs the checks on the live objects, and
rewrites the file when GLMOPS_CAPTURE_ARGOCD_STATUS=1), plus a job the operator refused.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from argocd import health

CAPTURED = json.loads((Path(__file__).parent / "data" / "argocd-status.json").read_text())
EXPECTED = {
    "FineTuneJob": {"Pending": "Progressing", "Validating": "Progressing", "Training": "Progressing",
                    "Exporting": "Progressing", "Succeeded": "Healthy", "Failed": "Degraded", "Cancelled": "Suspended"},
    "ModelDeployment": {"Pending": "Progressing", "Progressing": "Progressing", "Ready": "Healthy", "Degraded": "Degraded",
                        "Failed": "Degraded"},
}


def captured() -> list[dict[str, Any]]:
    return [obj for kind in ("finetunejobs", "modeldeployments") for obj in CAPTURED[kind] if (obj.get("status") or {}).get("phase")]


def test_the_capture_covers_a_whole_lifecycle() -> None:
    phases = {(o["kind"], o["status"]["phase"]) for o in captured()}
    assert {("FineTuneJob", "Succeeded"), ("FineTuneJob", "Failed"), ("ModelDeployment", "Ready")} <= phases
    assert any(kind == "FineTuneJob" and phase in ("Pending", "Training", "Exporting") for kind, phase in phases)


@pytest.mark.parametrize("obj", captured(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}-{o['status']['phase']}")
def test_health_follows_the_phase_the_operator_wrote(obj: dict[str, Any]) -> None:
    status, message = health(obj)
    assert status == EXPECTED[obj["kind"]][obj["status"]["phase"]]
    assert message


def test_a_refused_job_says_why_and_a_ready_deployment_where() -> None:
    failed = next(o for o in captured() if o["kind"] == "FineTuneJob" and o["status"]["phase"] == "Failed")
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Succeeded")
    assert health(failed) == ("Degraded", condition["message"])
    ready = next(o for o in captured() if o["kind"] == "ModelDeployment" and o["status"]["phase"] == "Ready")
    assert health(ready)[1].endswith(ready["status"]["endpoint"])


def test_before_the_operator_answers_and_for_a_spec_it_has_not_seen_yet() -> None:
    ready = next(o for o in captured() if o["kind"] == "ModelDeployment" and o["status"]["phase"] == "Ready")
    newer = copy.deepcopy(ready)
    newer["metadata"]["generation"] = ready["status"]["observedGeneration"] + 1
    assert health(newer)[0] == "Progressing"
    for kind in ("FineTuneJob", "ModelDeployment"):
        assert health({"kind": kind, "metadata": {"name": "x", "generation": 1}})[0] == "Progressing"


def test_a_cancelled_job_is_suspended_not_degraded() -> None:
    job = copy.deepcopy(next(o for o in captured() if o["kind"] == "FineTuneJob" and o["status"]["phase"] == "Succeeded"))
    job["status"]["phase"] = "Cancelled"
    for condition in job["status"]["conditions"]:
        if condition["type"] == "Succeeded":
            condition.update(status="False", reason="Cancelled", message="spec.cancel is true: the run was stopped")
    assert health(job) == ("Suspended", "spec.cancel is true: the run was stopped")


def test_a_training_job_shows_its_step_and_loss_in_argo_cds_sandbox() -> None:
    """Argo CD opens no string library for the script: the loss is rounded by arithmetic. The
    progress is the one the operator wrote (kept into Exporting), the phase the one before."""
    job = copy.deepcopy(next(o for o in captured() if o["kind"] == "FineTuneJob" and o["status"]["phase"] == "Exporting"))
    job["status"]["phase"] = "Training"
    progress = job["status"]["progress"]
    assert health(job) == ("Progressing", f"Training: step {progress['step']}/{progress['totalSteps']}, loss {round(progress['loss'], 4)}")

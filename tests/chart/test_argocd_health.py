"""Argo CD's health checks (charts/glmops/files/argocd/*.lua) run by a real Lua runtime (lupa) over
status objects the operator wrote on the local cluster.

tests/chart/data/argocd-status.json holds every phase a FineTuneJob and a ModelDeployment went
through in tests/chart/test_chart_release.py, plus a job the operator refused, and the
SyntheticDatasets of tests/operator/test_syntheticdataset.py: one through Pending, Generating and
Ready, one waiting for its key's Secret, one failed at its deadline. Those tests also run the checks
on the live objects, and refresh their part of the file when GLMOPS_CAPTURE_ARGOCD_STATUS=1.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from argocd import health

from glmops.api.syntheticdataset import SyntheticDatasetStatus
from glmops.plan.synthetic_status import (
    Admission,
    GeneratorObservation,
    Observation,
    admission_status,
    next_status,
)

CAPTURED = json.loads((Path(__file__).parent / "data" / "argocd-status.json").read_text())
EXPECTED = {
    "FineTuneJob": {"Pending": "Progressing", "Validating": "Progressing", "Training": "Progressing",
                    "Exporting": "Progressing", "Succeeded": "Healthy", "Failed": "Degraded", "Cancelled": "Suspended"},
    "ModelDeployment": {"Pending": "Progressing", "Progressing": "Progressing", "Ready": "Healthy", "Degraded": "Degraded",
                        "Failed": "Degraded"},
    "SyntheticDataset": {"Pending": "Progressing", "Generating": "Progressing", "Ready": "Healthy", "Failed": "Degraded"},
}
KINDS = ("finetunejobs", "modeldeployments", "syntheticdatasets")


def captured() -> list[dict[str, Any]]:
    return [obj for kind in KINDS for obj in CAPTURED[kind] if (obj.get("status") or {}).get("phase")]


def one(kind: str, phase: str, name: str | None = None) -> dict[str, Any]:
    """A deep copy of the first captured `kind` object in `phase` (named `name`)."""
    return copy.deepcopy(next(o for o in captured() if o["kind"] == kind and o["status"]["phase"] == phase
                              and name in (None, o["metadata"]["name"])))


def ready_message(obj: dict[str, Any]) -> str:
    return str(next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["message"])


def test_the_capture_covers_a_whole_lifecycle() -> None:
    phases = {(o["kind"], o["status"]["phase"]) for o in captured()}
    assert {("FineTuneJob", "Succeeded"), ("FineTuneJob", "Failed"), ("ModelDeployment", "Ready")} <= phases
    assert any(kind == "FineTuneJob" and phase in ("Pending", "Training", "Exporting") for kind, phase in phases)
    assert {("SyntheticDataset", "Pending"), ("SyntheticDataset", "Generating"), ("SyntheticDataset", "Ready"),
            ("SyntheticDataset", "Failed")} <= phases


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
    for kind in ("FineTuneJob", "ModelDeployment", "SyntheticDataset"):
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


def test_a_dataset_says_where_its_samples_are_how_far_it_got_and_why_it_failed() -> None:
    ready = one("SyntheticDataset", "Ready")
    assert health(ready) == ("Healthy", ready_message(ready))
    assert health(ready)[1].endswith(f"samples written to {ready['status']['output']['uri']}")
    generating = one("SyntheticDataset", "Generating")
    progress = generating["status"]["progress"]
    assert 0 < progress["promptsDone"] < progress["promptsTotal"]
    assert health(generating) == (
        "Progressing", f"Generating: prompts {progress['promptsDone']}/{progress['promptsTotal']} done, {progress['samplesKept']} samples kept"
    )
    failed = one("SyntheticDataset", "Failed")
    assert next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")["reason"] == "DeadlineExceeded"
    assert health(failed) == ("Degraded", ready_message(failed))


def test_a_waiting_dataset_says_what_it_waits_for_once() -> None:
    """Ready and Validated both name the missing Secret (same reason): the message says it once."""
    waiting = one("SyntheticDataset", "Pending", "keyed")
    validated = next(c for c in waiting["status"]["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False" and "Secret 'teacher-key' does not exist" in validated["message"]
    assert health(waiting) == ("Progressing", f"Pending: {ready_message(waiting)}")


def test_a_problem_only_validated_shows_is_added_to_the_progress() -> None:
    """What the operator writes (its own status functions, from captured statuses) when a spec is
    edited under a running generator (a cluster that does not enforce immutability), and when the
    apiserver fails its checks before the generator exists."""
    generating = one("SyntheticDataset", "Generating")
    generation = generating["metadata"]["generation"]
    running = GeneratorObservation(pod_phase="Running")
    edited = next_status(SyntheticDatasetStatus.model_validate(generating["status"]), Observation(generation, running, spec_changed=True))
    generating["status"] = edited.status.to_wire()
    immutable = next(c for c in generating["status"]["conditions"] if c["type"] == "Validated")
    assert immutable["reason"] == "SpecImmutable"
    status, message = health(generating)
    assert status == "Progressing" and message.startswith("Generating: prompts ") and message.endswith(f"; {immutable['message']}")

    waiting = one("SyntheticDataset", "Pending", "keyed")
    trouble = "the operator could not check or create this dataset: 503 Service Unavailable"
    failing = admission_status(SyntheticDatasetStatus.model_validate(waiting["status"]), Admission(generation, api_error=trouble))
    waiting["status"] = failing.status.to_wire()
    assert health(waiting) == ("Progressing", f"Pending: {ready_message(waiting)}; {trouble}")


def test_a_dataset_spec_not_yet_observed_is_progressing_until_it_ends() -> None:
    """Pending or Generating: the operator acts on the new generation next. Ready and Failed stay:
    the operator never acts on a finished dataset again, so waiting for it would never end."""
    generating = one("SyntheticDataset", "Generating")
    newer = generating["status"]["observedGeneration"] + 1
    generating["metadata"]["generation"] = newer
    assert health(generating) == ("Progressing", f"The operator has not yet acted on generation {newer}")
    for phase, argo in (("Ready", "Healthy"), ("Failed", "Degraded")):
        ended = one("SyntheticDataset", phase)
        ended["metadata"]["generation"] = ended["status"]["observedGeneration"] + 1
        status, message = health(ended)
        assert status == argo and message.startswith(ready_message(ended)) and "is not acted on" in message

"""A FineTuneJob's status from its Jobs and pods: one function, terminal phases absorbing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from glmops.api.finetunejob import FineTuneJobStatus, Phase
from glmops.contract.records import ProgressRecord, ResultRecord
from glmops.plan.status import (
    Admission,
    JobObservation,
    Observation,
    admission_status,
    cancelled_by_request,
    decide_phase,
    next_status,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RUNNING = FineTuneJobStatus(phase=Phase.training, trainer_job="j-trainer")
TRAINED = ResultRecord(status="Succeeded", step=40, total_steps=40, train_loss=0.5,
                       artifacts={"adapter": "pvc://o/j/adapter", "lossCurve": "pvc://o/j/loss_curve.png"},
                       model_bytes=10 * 2**30, largest_shard_bytes=2**30, adapter_bytes=2**20)


def _obs(trainer: JobObservation, **kwargs: object) -> Observation:
    return Observation(generation=1, trainer=trainer, now=NOW, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("trainer", "export", "phase", "reason"),
    [
        (JobObservation(), None, Phase.pending, "Pending"),
        (JobObservation(unschedulable_message="0/6 nodes are available: 6 Insufficient nvidia.com/gpu."), None, Phase.pending, "Unschedulable"),
        (JobObservation(waiting_reason="ImageNotRunnableLocally"), None, Phase.pending, "ImageNotRunnableLocally"),
        (JobObservation(waiting_reason="ContainerCreating"), None, Phase.pending, "Pending"),
        (JobObservation(suspended=True), None, Phase.pending, "Pending"),
        (JobObservation(pod_phase="Running"), None, Phase.training, "Training"),
        # The pod ended well before the Job controller marked the Job Complete: no step back to Pending.
        (JobObservation(pod_phase="Succeeded", result=TRAINED), None, Phase.training, "Training"),
        (JobObservation(succeeded=True, result=TRAINED), None, Phase.exporting, "Exporting"),
        (JobObservation(succeeded=True), JobObservation(pod_phase="Running"), Phase.exporting, "Exporting"),
        (JobObservation(succeeded=True), JobObservation(succeeded=True), Phase.succeeded, "Completed"),
        (JobObservation(succeeded=True), JobObservation(failed=True, failed_pods=4), Phase.failed, "ExportFailed"),
        (JobObservation(succeeded=True), JobObservation(missing=True), Phase.cancelled, "TrainerJobDeleted"),
        # The trainer Job cleaned up after training while the export runs: the export decides.
        (JobObservation(missing=True), JobObservation(pod_phase="Running"), Phase.exporting, "Exporting"),
        (JobObservation(failed=True, failed_pods=4), None, Phase.failed, "RetriesExhausted"),
        (JobObservation(pod_phase="Failed", result=ResultRecord("Failed", "DataError", "a.jsonl:3: bad")), None, Phase.failed, "DataError"),
        (JobObservation(pod_phase="Failed", failed_pods=1, result=ResultRecord("Failed", "TrainingError", "OOM")), None, Phase.pending, "Pending"),
        (JobObservation(missing=True), None, Phase.cancelled, "TrainerJobDeleted"),
    ],
)
def test_decide_phase(trainer: JobObservation, export: JobObservation | None, phase: Phase, reason: str) -> None:
    decision = decide_phase(RUNNING, _obs(trainer, export=export))
    assert (decision.phase, decision.reason) == (phase, reason)


def test_messages_say_what_to_do() -> None:
    unschedulable = decide_phase(RUNNING, _obs(JobObservation(unschedulable_message="0/6 nodes are available")))
    assert "0/6 nodes are available" in unschedulable.message and "gpuMemoryGiB" in unschedulable.message
    data = decide_phase(RUNNING, _obs(JobObservation(result=ResultRecord("Failed", "DataError", "a.jsonl:3: bad role"))))
    assert data.message.startswith("a.jsonl:3: bad role") and "retrying cannot help" in data.message
    retry = decide_phase(RUNNING, _obs(JobObservation(pod_phase="Running", failed_pods=1), max_retries=3))
    assert "retry 1 of 3" in retry.message
    deleted = decide_phase(RUNNING, _obs(JobObservation(missing=True)))
    assert "j-trainer was deleted" in deleted.message and "spec.cancel" in deleted.message
    cancelled = cancelled_by_request()
    assert (cancelled.phase, cancelled.reason) == (Phase.cancelled, "Cancelled") and "spec.cancel" in cancelled.message


@pytest.mark.parametrize("terminal", [Phase.succeeded, Phase.failed, Phase.cancelled])
@pytest.mark.parametrize(
    "late",
    [
        JobObservation(pod_phase="Running"),  # a stale pod event that still shows it running
        JobObservation(succeeded=True, result=TRAINED),
        JobObservation(failed=True, failed_pods=9),
        JobObservation(missing=True),
    ],
    ids=["running", "succeeded", "failed", "missing"],
)
def test_terminal_phases_are_absorbing(terminal: Phase, late: JobObservation) -> None:
    ended = FineTuneJobStatus(phase=terminal, trainer_job="j-trainer", completion_time=NOW)
    decision = next_status(ended, _obs(late, progress=ProgressRecord(step=3, total_steps=40)))
    assert decision.status == ended and decision.event is None and not decision.create_export


def test_a_terminal_job_with_a_live_trainer_asks_for_it_to_be_stopped() -> None:
    # The operator died between writing Cancelled and deleting the Job: the next look finishes it.
    cancelled = FineTuneJobStatus(phase=Phase.cancelled, trainer_job="j-trainer")
    assert next_status(cancelled, _obs(JobObservation(pod_phase="Running"))).stop_children
    assert not next_status(cancelled, _obs(JobObservation(missing=True))).stop_children


def test_trained_job_asks_for_its_export_once_and_keeps_the_final_progress() -> None:
    decision = next_status(RUNNING, _obs(JobObservation(succeeded=True, result=TRAINED)))
    assert decision.create_export and decision.status.phase is Phase.exporting
    progress = decision.status.progress
    assert progress is not None and (progress.step, progress.total_steps, progress.percent) == (40, 40, 100)
    exporting = decision.status
    exporting.export_job = "j-export"
    again = next_status(exporting, _obs(JobObservation(succeeded=True, result=TRAINED), export=JobObservation(pod_phase="Running")))
    assert not again.create_export and again.status == exporting  # nothing new: no write


def test_success_records_the_artifacts_of_both_pods() -> None:
    exported = ResultRecord(
        "Succeeded",
        artifacts={"manifest": "pvc://o/j/artifacts.json", "adapter": "pvc://o/j/adapter", "merged": "pvc://o/j/merged",
                   "gguf": [{"quantization": "Q8_0", "uri": "pvc://o/j/gguf/Q8_0/j-Q8_0.gguf", "sizeBytes": 7, "sha256": "ab" * 32}]},
    )
    status = FineTuneJobStatus(phase=Phase.exporting, trainer_job="j-trainer", export_job="j-export")
    decision = next_status(status, _obs(JobObservation(succeeded=True, result=TRAINED), export=JobObservation(succeeded=True, result=exported)))
    artifacts = decision.status.artifacts
    assert decision.status.phase is Phase.succeeded and artifacts is not None
    assert artifacts.manifest == "pvc://o/j/artifacts.json" and artifacts.merged is not None
    assert [(g.quantization.value, g.size_bytes) for g in artifacts.gguf] == [("Q8_0", 7)]
    assert decision.event is not None and decision.event.reason == "Completed"


def test_failures_and_cancels_stop_the_children_after_the_write() -> None:
    failed = next_status(RUNNING, _obs(JobObservation(result=ResultRecord("Failed", "ConfigError", "bad lr"))))
    assert failed.status.phase is Phase.failed and failed.stop_children  # a retry would fail alike: stop it
    exhausted = next_status(RUNNING, _obs(JobObservation(failed=True, failed_pods=4)))
    assert exhausted.status.phase is Phase.failed and not exhausted.stop_children  # ended by itself: keep its pods' logs
    cancelled = next_status(RUNNING, _obs(JobObservation(pod_phase="Running"), cancel=True))
    assert cancelled.status.phase is Phase.cancelled and cancelled.stop_children and cancelled.status.completion_time == NOW


def test_progress_comes_from_the_endpoint_and_an_unchanged_observation_writes_nothing() -> None:
    record = ProgressRecord(step=10, total_steps=40, loss=1.23456, time_unix=1_767_225_600.0)
    first = next_status(RUNNING, _obs(JobObservation(pod_phase="Running"), progress=record))
    assert first.status.progress is not None and (first.status.progress.percent, first.status.progress.loss) == (25, 1.2346)
    again = next_status(first.status, _obs(JobObservation(pod_phase="Running"), progress=record))
    assert again.status == first.status and again.event is None


def test_a_changed_immutable_section_is_refused_and_reverting_clears_it() -> None:
    changed = next_status(RUNNING, _obs(JobObservation(pod_phase="Running"), changed_sections=("output", "resources")))
    validated = next(c for c in changed.status.conditions if c.type == "Validated")
    assert (validated.status.value, validated.reason) == ("False", "SpecImmutable")
    assert "spec.output, spec.resources" in (validated.message or "")
    assert changed.status.phase is Phase.training  # the run goes on with what it was created with
    reverted = next_status(changed.status, _obs(JobObservation(pod_phase="Running")))
    validated = next(c for c in reverted.status.conditions if c.type == "Validated")
    assert (validated.status.value, validated.reason) == ("True", "SpecValid")


def test_a_job_waiting_for_a_pvc_is_pending_not_failed() -> None:
    adm = Admission(1, problems=("spec.dataset.source: PersistentVolumeClaim 'data' does not exist",),
                    problem_reason="PersistentVolumeClaimNotFound", waiting=True, now=NOW)
    decision = admission_status(FineTuneJobStatus(), adm)
    assert decision.status.phase is Phase.pending and not decision.stop_children
    validated = next(c for c in decision.status.conditions if c.type == "Validated")
    assert (validated.status.value, validated.reason) == ("False", "PersistentVolumeClaimNotFound")
    assert "'data'" in (validated.message or "")
    # Once the claim exists the same job is admitted.
    admitted = admission_status(decision.status, Admission(1, trainer_job="j-trainer", destination="pvc://o/j", now=NOW))
    assert admitted.status.phase is Phase.pending and admitted.status.trainer_job == "j-trainer"
    assert admitted.status.output_destination == "pvc://o/j"
    validated = next(c for c in admitted.status.conditions if c.type == "Validated")
    assert (validated.status.value, validated.reason) == ("True", "SpecValid")


def test_a_problem_that_no_wait_can_fix_fails_the_job() -> None:
    adm = Admission(1, problems=("spec.resources.gpuMemoryGiB: too small",), problem_reason="GpuMemoryTooSmall", now=NOW)
    decision = admission_status(FineTuneJobStatus(), adm)
    assert decision.status.phase is Phase.failed and decision.event is not None


def test_an_api_error_condition_clears_once_the_job_is_observed_again() -> None:
    troubled = admission_status(RUNNING, Admission(1, api_error="503 Service Unavailable", now=NOW)).status
    assert next(c for c in troubled.conditions if c.type == "Validated").reason == "ApiError"
    assert troubled.phase is Phase.training  # a running job keeps its phase while the API is away
    again = next_status(troubled, _obs(JobObservation(pod_phase="Running")))
    assert next(c for c in again.status.conditions if c.type == "Validated").reason == "SpecValid"

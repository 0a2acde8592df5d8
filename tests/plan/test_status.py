"""Which phase a FineTuneJob is in, from its trainer Job and newest pod."""

from __future__ import annotations

import pytest

from glmops.api.finetunejob import Phase
from glmops.plan.status import TrainerObservation, cancelled_by_request, decide_phase


@pytest.mark.parametrize(
    "obs,phase,reason",
    [
        (TrainerObservation(), Phase.pending, "Pending"),
        (TrainerObservation(unschedulable_message="0/6 nodes are available: 6 Insufficient nvidia.com/gpu."), Phase.pending, "Unschedulable"),
        (TrainerObservation(container_waiting_reason="ImageNotRunnableLocally"), Phase.pending, "ImageNotRunnableLocally"),
        (TrainerObservation(container_waiting_reason="ContainerCreating"), Phase.pending, "Pending"),
        (TrainerObservation(pod_phase="Running"), Phase.training, "Training"),
        (TrainerObservation(pod_phase="Running", exporting=True), Phase.exporting, "Exporting"),
        (TrainerObservation(job_succeeded=True), Phase.succeeded, "Completed"),
        (TrainerObservation(job_failed=True, failed_pods=4), Phase.failed, "RetriesExhausted"),
        (TrainerObservation(pod_phase="Failed", trainer_reason="DataError", trainer_message="a.jsonl:3: bad"), Phase.failed, "DataError"),
        (TrainerObservation(pod_phase="Failed", trainer_reason="TrainingError", failed_pods=1), Phase.pending, "Pending"),
        (TrainerObservation(job_missing=True), Phase.cancelled, "TrainerJobDeleted"),
    ],
)
def test_decide_phase(obs: TrainerObservation, phase: Phase, reason: str) -> None:
    decision = decide_phase(obs, max_retries=3)
    assert (decision.phase, decision.reason) == (phase, reason)


def test_messages_say_what_to_do() -> None:
    unschedulable = decide_phase(TrainerObservation(unschedulable_message="0/6 nodes are available"), 3)
    assert "0/6 nodes are available" in unschedulable.message and "gpuMemoryGiB" in unschedulable.message
    data = decide_phase(TrainerObservation(trainer_reason="DataError", trainer_message="a.jsonl:3: bad role"), 3)
    assert data.message.startswith("a.jsonl:3: bad role") and "retrying cannot help" in data.message
    retry = decide_phase(TrainerObservation(pod_phase="Running", failed_pods=1), 3)
    assert "retry 1 of 3" in retry.message
    deleted = decide_phase(TrainerObservation(job_missing=True), 3, "j-trainer")
    assert "j-trainer was deleted" in deleted.message and "spec.cancel" in deleted.message
    cancelled = cancelled_by_request()
    assert (cancelled.phase, cancelled.reason) == (Phase.cancelled, "Cancelled") and "spec.cancel" in cancelled.message

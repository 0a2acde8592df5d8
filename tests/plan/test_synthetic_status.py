"""A SyntheticDataset's status from its generator Job: one function, Ready and Failed absorbing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from glmops.api.syntheticdataset import DatasetPhase, ResolvedTeacher, SyntheticDatasetStatus
from glmops.conditions import find_condition
from glmops.contract.synthetic import GeneratorProgress, GeneratorResult
from glmops.plan.synthetic_status import (
    Admission,
    GeneratorObservation,
    Observation,
    admission_status,
    decide_phase,
    next_status,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RUNNING = SyntheticDatasetStatus(phase=DatasetPhase.generating, generator_job="s-generator")
DONE = GeneratorResult(
    status="Succeeded", prompts_total=10, prompts_done=10, samples_total=20, samples_kept=17,
    dropped={"truncated": 2, "duplicate": 1}, tokens_generated=9000, output_uri="pvc://d/out.jsonl",
    sha256="ab" * 32, size_bytes=12345, report_uri="pvc://d/out.report.json", histogram_uri="pvc://d/out.lengths.png",
)  # fmt: skip


def _obs(generator: GeneratorObservation, **kwargs: object) -> Observation:
    return Observation(generation=1, generator=generator, now=NOW, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("generator", "phase", "reason"),
    [
        (GeneratorObservation(), DatasetPhase.pending, "Pending"),
        (GeneratorObservation(unschedulable_message="0/6 nodes are available"), DatasetPhase.pending, "Unschedulable"),
        (GeneratorObservation(waiting_reason="CreateContainerConfigError", waiting_message='secret "k" not found'), DatasetPhase.pending, "CreateContainerConfigError"),
        (GeneratorObservation(pod_phase="Running"), DatasetPhase.generating, "Generating"),
        (GeneratorObservation(pod_phase="Running", failed_pods=1, result=GeneratorResult("Failed", "GeneratorError", "boom")), DatasetPhase.generating, "Generating"),
        (GeneratorObservation(succeeded=True, result=DONE), DatasetPhase.ready, "Completed"),
        (GeneratorObservation(succeeded=True), DatasetPhase.failed, "RetriesExhausted"),
        (GeneratorObservation(pod_phase="Failed", result=GeneratorResult("Failed", "DeadlineExceeded", "spec.deadlineSeconds passed")), DatasetPhase.failed, "DeadlineExceeded"),
        (GeneratorObservation(pod_phase="Failed", result=GeneratorResult("Failed", "TeacherUnauthorized", "401")), DatasetPhase.failed, "TeacherUnauthorized"),
        (GeneratorObservation(pod_phase="Failed", result=GeneratorResult("Failed", "PromptsInvalid", "p.jsonl:3: x")), DatasetPhase.failed, "PromptsInvalid"),
        (GeneratorObservation(failed=True, failure_reason="DeadlineExceeded"), DatasetPhase.failed, "DeadlineExceeded"),
        (GeneratorObservation(failed=True, failure_reason="BackoffLimitExceeded", failed_pods=4), DatasetPhase.failed, "RetriesExhausted"),
        (GeneratorObservation(missing=True), DatasetPhase.failed, "GeneratorJobDeleted"),
    ],
)  # fmt: skip
def test_decide_phase(generator: GeneratorObservation, phase: DatasetPhase, reason: str) -> None:
    decision = decide_phase(RUNNING, _obs(generator))
    assert (decision.phase, decision.reason) == (phase, reason)


def test_ready_records_the_output_with_its_sha256_and_the_counts() -> None:
    decision = next_status(RUNNING, _obs(GeneratorObservation(succeeded=True, result=DONE)))
    status = decision.status
    assert status.phase is DatasetPhase.ready and status.completion_time == NOW
    assert status.output is not None and (status.output.uri, status.output.sha256, status.output.samples) == ("pvc://d/out.jsonl", "ab" * 32, 17)
    assert status.output.report == "pvc://d/out.report.json" and status.output.histogram == "pvc://d/out.lengths.png"
    assert status.progress is not None and (status.progress.percent, status.progress.samples_kept, status.progress.samples_dropped) == (100, 17, 3)
    assert status.progress.dropped == {"duplicate": 1, "truncated": 2}
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("True", "Completed")
    assert decision.event is not None and decision.event.reason == "Completed"


def test_progress_comes_from_the_generators_page_while_it_runs() -> None:
    page = GeneratorProgress(prompts_total=40, prompts_done=10, samples_total=80, samples_done=22, samples_kept=19,
                             dropped={"empty": 3}, tokens_generated=5000, time_unix=1_767_225_600.0)  # fmt: skip
    status = next_status(RUNNING, _obs(GeneratorObservation(pod_phase="Running"), progress=page)).status
    assert status.progress is not None
    assert (status.progress.prompts_done, status.progress.prompts_total, status.progress.percent) == (10, 40, 25)
    assert (status.progress.samples_kept, status.progress.samples_dropped, status.progress.tokens_generated) == (19, 3, 5000)
    assert status.progress.updated_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_a_failure_no_pod_can_change_stops_the_generator_and_ready_and_failed_are_absorbing() -> None:
    deadline = GeneratorResult("Failed", "DeadlineExceeded", "spec.deadlineSeconds passed with 3 of 10 prompts done",
                               prompts_total=10, prompts_done=3, samples_kept=5)  # fmt: skip
    decision = next_status(RUNNING, _obs(GeneratorObservation(pod_phase="Failed", result=deadline)))
    assert decision.status.phase is DatasetPhase.failed and decision.stop_generator  # the Job would start another pod
    assert decision.status.progress is not None and decision.status.progress.prompts_done == 3
    ready = find_condition(decision.status.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "DeadlineExceeded") and "3 of 10" in (ready.message or "")
    again = next_status(decision.status, _obs(GeneratorObservation(succeeded=True, result=DONE)))
    assert again.status == decision.status and again.event is None
    done = next_status(RUNNING, _obs(GeneratorObservation(succeeded=True, result=DONE))).status
    assert next_status(done, _obs(GeneratorObservation(missing=True))).status == done  # a cleaned-up Job changes nothing


def test_an_edited_spec_is_reported_and_a_revert_clears_it() -> None:
    edited = next_status(RUNNING, _obs(GeneratorObservation(pod_phase="Running"), spec_changed=True)).status
    validated = find_condition(edited.conditions, "Validated")
    assert validated is not None and (validated.status, validated.reason) == ("False", "SpecImmutable")
    reverted = next_status(edited, _obs(GeneratorObservation(pod_phase="Running"))).status
    validated = find_condition(reverted.conditions, "Validated")
    assert validated is not None and validated.status == "True"


def test_admission_waits_for_the_teacher_with_its_own_condition_and_fails_a_bad_spec() -> None:
    waiting = admission_status(SyntheticDatasetStatus(), Admission(
        1, problems=("spec.teacher.modelDeployment: ModelDeployment 'glm' is Progressing",), problem_reason="TeacherNotReady",
        waiting=True, teacher_problem=True, now=NOW,
    ))  # fmt: skip
    assert waiting.status.phase is DatasetPhase.pending and not waiting.stop_generator
    teacher = find_condition(waiting.status.conditions, "TeacherReady")
    assert teacher is not None and (teacher.status, teacher.reason) == ("False", "TeacherNotReady")
    assert find_condition(waiting.status.conditions, "Validated") is None
    started = admission_status(waiting.status, Admission(1, generator_job="s-generator", teacher=ResolvedTeacher(url="http://t/v1", model="m"), now=NOW))
    assert started.status.generator_job == "s-generator" and started.status.teacher == ResolvedTeacher(url="http://t/v1", model="m")
    teacher = find_condition(started.status.conditions, "TeacherReady")
    assert teacher is not None and teacher.status == "True" and started.status.phase is DatasetPhase.pending
    refused = admission_status(SyntheticDatasetStatus(), Admission(1, problems=("spec.output: in use",), problem_reason="OutputInUse", now=NOW))
    assert refused.status.phase is DatasetPhase.failed and refused.event is not None and refused.event.reason == "OutputInUse"

"""A SyntheticDataset's status, computed in one place from what its generator Job shows. Pure.

Before the Job exists, `admission_status` records why it does not yet (waiting for a PVC, a
Secret or the teacher) or cannot (a bad spec). Once it exists, `next_status` decides from the
Job, its newest pod, the progress page and the pod's result: Pending -> Generating -> Ready, or
Failed. Ready and Failed are absorbing: later observations change nothing, and a failed
dataset's generator still running is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from glmops.api.common import ConditionStatus
from glmops.api.syntheticdataset import (
    DatasetOutput,
    DatasetPhase,
    DatasetProgress,
    ResolvedTeacher,
    SyntheticDatasetStatus,
)
from glmops.conditions import ConditionType, Reason, find_condition, set_condition
from glmops.contract.synthetic import TERMINAL_REASONS, GeneratorProgress, GeneratorResult

TERMINAL = frozenset({DatasetPhase.ready, DatasetPhase.failed})


@dataclass(frozen=True)
class GeneratorObservation:
    """The generator Job and its newest pod, as the operator saw them."""

    missing: bool = False  # gone, or being deleted
    succeeded: bool = False  # the Job is Complete
    failed: bool = False  # the Job controller gave up (backoffLimit, activeDeadlineSeconds, podFailurePolicy)
    failure_reason: str = ""  # the Job's Failed condition reason, e.g. DeadlineExceeded
    failure_message: str = ""
    failed_pods: int = 0
    pod_phase: str = ""
    unschedulable_message: str = ""
    waiting_reason: str = ""
    waiting_message: str = ""
    result: GeneratorResult | None = None  # the newest terminated pod's termination message


@dataclass(frozen=True)
class PhaseDecision:
    """The phase and the Ready condition that explains it."""

    phase: DatasetPhase
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """The new status and what the operator must do around writing it."""

    status: SyntheticDatasetStatus
    stop_generator: bool = False  # delete the generator Job (after the write)
    event: PhaseDecision | None = None  # a transition worth an event


def _ready_status(phase: DatasetPhase) -> ConditionStatus:
    return {DatasetPhase.ready: ConditionStatus.true, DatasetPhase.failed: ConditionStatus.false}.get(phase, ConditionStatus.unknown)


def apply_decision(status: SyntheticDatasetStatus, decision: PhaseDecision, generation: int, now: datetime) -> None:
    """Set the phase, the Ready condition and, for an end, the completion time."""
    status.phase = decision.phase
    status.observed_generation = generation
    status.conditions = set_condition(
        status.conditions, ConditionType.ready, _ready_status(decision.phase), decision.reason, decision.message, generation, now
    )
    if decision.phase in TERMINAL:
        status.completion_time = status.completion_time or now


def is_warning(decision: PhaseDecision) -> bool:
    """Whether an event for `decision` is a Warning."""
    return decision.phase is DatasetPhase.failed or decision.reason in (Reason.unschedulable,)


# --- before the generator exists ---------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """The outcome of checking a new dataset and, when it passed, creating its generator."""

    generation: int
    problems: tuple[str, ...] = ()
    problem_reason: str = ""
    waiting: bool = False
    teacher_problem: bool = False  # the (only) problems are the teacher's: TeacherReady=False
    generator_job: str = ""
    teacher: ResolvedTeacher | None = None
    api_error: str = ""
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def admission_status(current: SyntheticDatasetStatus, adm: Admission) -> Decision:
    """The status of a dataset whose generator did not exist when it was read, after admission."""
    status = current.model_copy(deep=True)
    if status.phase in TERMINAL:
        return Decision(status)
    gen, now = adm.generation, adm.now
    previous = find_condition(status.conditions, ConditionType.ready)
    status.observed_generation = gen
    if adm.api_error:
        status.phase = status.phase or DatasetPhase.pending
        status.conditions = set_condition(
            status.conditions, ConditionType.validated, ConditionStatus.unknown, Reason.api_error, adm.api_error, gen, now
        )
        before = find_condition(current.conditions, ConditionType.validated)
        new = before is None or before.reason != Reason.api_error
        return Decision(status, event=PhaseDecision(DatasetPhase.pending, Reason.api_error, adm.api_error) if new else None)
    if adm.problems:
        message = "; ".join(adm.problems)
        if adm.teacher_problem:
            status.conditions = set_condition(
                status.conditions, ConditionType.teacher_ready, ConditionStatus.false, adm.problem_reason, message, gen, now
            )
        else:
            status.conditions = set_condition(
                status.conditions, ConditionType.validated, ConditionStatus.false, adm.problem_reason, message, gen, now
            )
        if adm.waiting:
            waiting = PhaseDecision(DatasetPhase.pending, adm.problem_reason, f"waiting: {message}")
            apply_decision(status, waiting, gen, now)
            return Decision(status, event=waiting if previous is None or previous.reason != waiting.reason else None)
        failed = PhaseDecision(DatasetPhase.failed, adm.problem_reason, message)
        apply_decision(status, failed, gen, now)
        return Decision(status, stop_generator=True, event=failed)
    status.conditions = set_condition(
        status.conditions, ConditionType.validated, ConditionStatus.true, Reason.spec_valid, "the spec passed all checks", gen, now
    )
    if adm.teacher is not None:
        status.teacher = adm.teacher
        status.conditions = set_condition(
            status.conditions, ConditionType.teacher_ready, ConditionStatus.true, Reason.teacher_ready,
            f"the generator calls {adm.teacher.url}" + (f" (model {adm.teacher.model})" if adm.teacher.model else ""), gen, now,
        )  # fmt: skip
    status.generator_job = adm.generator_job
    status.start_time = status.start_time or now
    pending = PhaseDecision(DatasetPhase.pending, Reason.pending, "waiting for the generator pod to start")
    apply_decision(status, pending, gen, now)
    return Decision(status, event=pending if previous is None or previous.reason != pending.reason else None)


# --- once the generator exists ------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """Everything `next_status` needs about one dataset beyond its stored status."""

    generation: int
    generator: GeneratorObservation
    progress: GeneratorProgress | None = None
    spec_changed: bool = False
    max_retries: int = 3
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def decide_phase(status: SyntheticDatasetStatus, obs: Observation) -> PhaseDecision:
    """Which phase the dataset is in, given its generator Job and newest pod."""
    job = obs.generator
    result = job.result
    if job.missing:
        return PhaseDecision(
            DatasetPhase.failed, Reason.generator_job_deleted,
            f"the generator Job {status.generator_job} was deleted outside the operator; create a new SyntheticDataset "
            "(with the same prompts, settings and output it continues from the journal)",
        )  # fmt: skip
    if job.succeeded and result is not None and result.status == "Succeeded":
        return PhaseDecision(
            DatasetPhase.ready, Reason.completed,
            f"{result.samples_kept} samples written to {result.output_uri}",
        )  # fmt: skip
    if job.succeeded:
        return PhaseDecision(
            DatasetPhase.failed, Reason.retries_exhausted,
            "the generator Job completed without reporting a result (its termination message is missing); "
            f"see `kubectl logs job/{status.generator_job}`",
        )  # fmt: skip
    if result is not None and result.status == "Failed" and result.reason in TERMINAL_REASONS:
        return PhaseDecision(DatasetPhase.failed, result.reason, result.message)
    if job.failed:
        if job.failure_reason == "DeadlineExceeded":
            return PhaseDecision(
                DatasetPhase.failed, "DeadlineExceeded",
                "spec.deadlineSeconds passed and the generator did not stop by itself (the Job's activeDeadlineSeconds "
                "ended it); see `kubectl logs` of its pod. The journal keeps the finished samples",
            )  # fmt: skip
        detail = (result.message if result is not None and result.status == "Failed" else "") or job.failure_message or "the generator failed"
        return PhaseDecision(
            DatasetPhase.failed, Reason.retries_exhausted,
            f"{detail}; the generator failed {job.failed_pods} time(s) (failurePolicy.maxRetries={obs.max_retries}); "
            f"see `kubectl logs job/{status.generator_job}`",
        )  # fmt: skip
    if job.unschedulable_message:
        return PhaseDecision(
            DatasetPhase.pending, Reason.unschedulable, f"the generator pod cannot be placed: {job.unschedulable_message}"
        )
    if job.waiting_reason and job.waiting_reason not in ("ContainerCreating", "PodInitializing"):
        return PhaseDecision(
            DatasetPhase.pending, job.waiting_reason, f"the generator container cannot start: {job.waiting_message or job.waiting_reason}"
        )
    if job.pod_phase == "Running":
        retry = f" (pod {job.failed_pods + 1}, continuing from the journal)" if job.failed_pods else ""
        return PhaseDecision(DatasetPhase.generating, Reason.generating, f"the generator is calling the teacher{retry}")
    return PhaseDecision(DatasetPhase.pending, Reason.pending, "waiting for the generator pod to start")


def _progress(progress: GeneratorProgress) -> DatasetProgress:
    percent = int(100 * progress.prompts_done / progress.prompts_total) if progress.prompts_total else 0
    return DatasetProgress(
        prompts_done=progress.prompts_done,
        prompts_total=progress.prompts_total,
        percent=min(percent, 100),
        samples_kept=progress.samples_kept,
        samples_dropped=progress.samples_dropped,
        dropped=dict(sorted(progress.dropped.items())),
        tokens_generated=progress.tokens_generated,
        updated_at=datetime.fromtimestamp(progress.time_unix, UTC) if progress.time_unix else None,
    )


def _from_result(result: GeneratorResult, final: bool) -> DatasetProgress:
    return DatasetProgress(
        prompts_done=result.prompts_done,
        prompts_total=result.prompts_total,
        percent=100 if final else (int(100 * result.prompts_done / result.prompts_total) if result.prompts_total else 0),
        samples_kept=result.samples_kept,
        samples_dropped=sum(result.dropped.values()),
        dropped=dict(sorted(result.dropped.items())),
        tokens_generated=result.tokens_generated,
    )


def next_status(current: SyntheticDatasetStatus, obs: Observation) -> Decision:
    """The status after `obs`, and what to do around writing it. `current` is not changed."""
    status = current.model_copy(deep=True)
    alive = not (obs.generator.missing or obs.generator.succeeded or obs.generator.failed)
    if status.phase in TERMINAL:
        return Decision(status, stop_generator=alive and status.phase is DatasetPhase.failed)
    gen = obs.generation
    decision = decide_phase(status, obs)
    previous = find_condition(status.conditions, ConditionType.ready)
    status.retries = obs.generator.failed_pods
    _set_immutability(status, obs)
    result = obs.generator.result
    if decision.phase is DatasetPhase.ready and result is not None:
        status.progress = _from_result(result, final=True)
        status.output = DatasetOutput(
            uri=result.output_uri,
            sha256=result.sha256,
            size_bytes=result.size_bytes,
            samples=result.samples_kept,
            report=result.report_uri or None,
            histogram=result.histogram_uri or None,
        )
    elif obs.progress is not None:
        status.progress = _progress(obs.progress)
    elif decision.phase is DatasetPhase.failed and result is not None and result.prompts_total:
        status.progress = _from_result(result, final=False)
    apply_decision(status, decision, gen, obs.now)
    transition = previous is None or previous.reason != decision.reason
    stop = decision.phase is DatasetPhase.failed and alive
    return Decision(status, stop_generator=stop, event=decision if transition else None)


def _set_immutability(status: SyntheticDatasetStatus, obs: Observation) -> None:
    validated = find_condition(status.conditions, ConditionType.validated)
    if obs.spec_changed:
        status.conditions = set_condition(
            status.conditions, ConditionType.validated, ConditionStatus.false, Reason.spec_immutable,
            "the spec changed after the generator was created; the run keeps the original settings. Revert the change, "
            "or create a new SyntheticDataset", obs.generation, obs.now,
        )  # fmt: skip
    elif validated is not None and validated.reason in (Reason.spec_immutable, Reason.api_error):
        status.conditions = set_condition(
            status.conditions, ConditionType.validated, ConditionStatus.true, Reason.spec_valid,
            "the spec matches the one the generator was created from", obs.generation, obs.now,
        )  # fmt: skip

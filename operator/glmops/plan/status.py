"""A FineTuneJob's status, computed in one place from what its Jobs and pods show. Pure.

`next_status` is the only function that decides a job's phase once its trainer exists: every
trigger (a Job or pod event, a spec change, the progress poll, an operator restart) observes the
cluster, calls it with the status it just read, and writes the result back conditionally (the
resourceVersion it read). Terminal phases are absorbing: once Succeeded, Failed or Cancelled,
`next_status` changes nothing but asks that children still running be stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from glmops.api.common import ConditionStatus
from glmops.api.finetunejob import FineTuneJobStatus, Phase
from glmops.conditions import ConditionType, Reason, find_condition, set_condition
from glmops.contract.records import ProgressRecord, ResultRecord
from glmops.plan.trainer_ranks import RankObservation, gang_stuck, observe_rank, rank_of, retry_delay_seconds
from glmops.trainer_protocol import artifacts_from_results, progress_from_record

TERMINAL = frozenset({Phase.succeeded, Phase.failed, Phase.cancelled})

USER_ERRORS = frozenset({"ConfigError", "DataError"})
"""The trainer's own verdicts that no retry can change: the spec or the data must be fixed."""


@dataclass(frozen=True)
class JobObservation:
    """A batch/v1 Job of the run and its newest pod, as the operator saw them."""

    missing: bool = False  # gone, or being deleted
    succeeded: bool = False
    failed: bool = False  # the Job controller gave up (backoffLimit reached)
    failure_message: str = ""
    failed_pods: int = 0
    suspended: bool = False  # waiting for Kueue to admit it
    pod_name: str = ""
    pod_phase: str = ""  # Pending | Running | Succeeded | Failed | ""
    node_name: str = ""
    unschedulable_message: str = ""  # from the pod's PodScheduled=False condition
    waiting_reason: str = ""  # e.g. ErrImagePull
    waiting_message: str = ""
    result: ResultRecord | None = None  # the newest terminated pod's termination message
    finished_at: str = ""  # when the Job completed (RFC 3339)
    ranks: tuple[RankObservation, ...] = ()  # a multi-node run: the newest pod of each node rank


def _true_conditions(job: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def observe_ranks(jobs: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], expected_jobs: Sequence[str], nodes: int) -> JobObservation:
    """One `JobObservation` of a multi-node trainer from its Jobs (`expected_jobs` by name) and their pods.

    Pods of a Job that was deleted and made again under the same name are told apart by the
    owner's uid. The run has succeeded when every Job completed, failed when any Job gave up,
    and is missing when any expected Job is gone.
    """
    live = {str(j["metadata"]["name"]): j for j in jobs if not j["metadata"].get("deletionTimestamp")}
    missing = any(name not in live for name in expected_jobs)
    owned = {str(live[n]["metadata"].get("uid")): n for n in expected_jobs if n in live}
    newest: dict[int, Mapping[str, Any]] = {}
    for pod in sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", ""))):
        owners = {str(r.get("uid")) for r in pod["metadata"].get("ownerReferences") or []}
        rank = rank_of(pod)
        if rank is not None and 0 <= rank < nodes and owners & owned.keys():
            newest[rank] = pod
    ranks = tuple(observe_rank(k, newest.get(k)) for k in range(nodes))
    conditions = {n: _true_conditions(live[n]) for n in expected_jobs if n in live}
    failed_job = next((n for n in expected_jobs if "Failed" in conditions.get(n, {})), None)
    failure_message = ""
    if failed_job is not None:
        failed = conditions[failed_job]["Failed"]
        failed_rank = next((r.rank for r in ranks if r.pod_phase == "Failed"), None)
        where = f"rank {failed_rank}: " if failed_rank is not None else ""
        failure_message = where + str(failed.get("message") or failed.get("reason") or "")
    # A user error on any rank is the verdict; otherwise rank 0 writes the result.
    results = [r.result for r in ranks if r.result is not None]
    result = next((r for r in results if r.status == "Failed" and r.reason in USER_ERRORS), ranks[0].result if ranks else None)
    phases = {r.pod_phase for r in ranks}
    if phases == {"Succeeded"}:
        pod_phase = "Succeeded"
    elif "Running" in phases and phases <= {"Running", "Succeeded"}:
        pod_phase = "Running"
    else:
        pod_phase = "Failed" if "Failed" in phases else "Pending"
    unplaced = next((r for r in ranks if r.unschedulable_message), None)
    waiting = next((r for r in ranks if r.waiting_reason), None)
    return JobObservation(
        missing=missing,
        succeeded=not missing and bool(expected_jobs) and all("Complete" in conditions[n] for n in expected_jobs),
        failed=failed_job is not None,
        failure_message=failure_message,
        failed_pods=max((int((live[n].get("status") or {}).get("failed") or 0) for n in live if n in expected_jobs), default=0),
        suspended=any(bool((live[n].get("spec") or {}).get("suspend")) for n in live if n in expected_jobs),
        pod_name=ranks[0].pod_name if ranks else "",
        pod_phase=pod_phase,
        node_name=ranks[0].node_name if ranks else "",
        unschedulable_message=f"rank {unplaced.rank}: {unplaced.unschedulable_message}" if unplaced else "",
        waiting_reason=waiting.waiting_reason if waiting else "",
        waiting_message=f"rank {waiting.rank}: {waiting.waiting_message or waiting.waiting_reason}" if waiting else "",
        result=result,
        finished_at=max((str((live[n].get("status") or {}).get("completionTime") or "") for n in live if n in expected_jobs), default=""),
        ranks=ranks,
    )


@dataclass(frozen=True)
class Observation:
    """Everything `next_status` needs about one FineTuneJob beyond its stored status."""

    generation: int
    trainer: JobObservation
    export: JobObservation | None = None  # None: no export Job recorded yet
    progress: ProgressRecord | None = None  # read from the trainer's endpoint
    changed_sections: tuple[str, ...] = ()  # immutable spec sections that differ from the trainer's
    cancel: bool = False
    max_retries: int = 3
    needs_export: bool = True  # always: the export publishes even an adapter-only job's manifest
    trainer_jobs_left: int = 0  # a multi-node run: trainer Jobs that still exist, terminating ones included
    gang_placement_seconds: float = 300.0  # settings.gang_placement_seconds
    gang_retry_seconds: float = 30.0  # settings.gang_retry_seconds
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class PhaseDecision:
    """The phase and the condition that explains it."""

    phase: Phase
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """The new status and what the operator must do around writing it."""

    status: FineTuneJobStatus
    create_export: bool = False  # create the export Job, then record its name (before the write)
    stop_children: bool = False  # delete the run's Jobs (after the write: the status says why first)
    event: PhaseDecision | None = None  # a transition worth an event (after the write)
    withdraw_trainer: bool = False  # delete the trainer Jobs of a half-placed multi-node run (after the write)
    recreate_trainer: bool = False  # create the trainer Jobs again, then clear placementRetryAt (before the write)


def cancelled_by_request() -> PhaseDecision:
    """The decision when spec.cancel is set."""
    return PhaseDecision(
        Phase.cancelled,
        Reason.cancelled,
        "spec.cancel is true: the run was stopped; checkpoints and artifacts already written are kept",
    )


def _deleted(kind: str, name: str) -> PhaseDecision:
    # The operator creates a Job before it records its name and deletes it only after a terminal
    # phase is recorded, so a recorded Job that is gone was deleted by someone else.
    return PhaseDecision(
        Phase.cancelled,
        Reason.trainer_job_deleted,
        f"the {kind} Job {name} was deleted outside the operator, so the job cannot go on; "
        "to stop a job use spec.cancel, to train again create a new FineTuneJob",
    )


def decide_phase(status: FineTuneJobStatus, obs: Observation) -> PhaseDecision:
    """Which phase the job is in, given its Jobs and their newest pods."""
    if obs.cancel:
        return cancelled_by_request()
    trainer, export = obs.trainer, obs.export
    if export is not None:
        return _export_phase(status, export)
    if trainer.missing:
        return _deleted("trainer", status.trainer_job or "")
    if trainer.succeeded:
        return PhaseDecision(Phase.exporting, Reason.exporting, "training finished; the export Job publishes the artifacts")
    result = trainer.result
    if result is not None and result.status == "Failed" and result.reason in USER_ERRORS:
        return PhaseDecision(
            Phase.failed,
            result.reason,
            f"{result.message}; fix spec.dataset or spec.training and create a new FineTuneJob (retrying cannot help)",
        )
    if trainer.failed:
        detail = (result.message if result and result.status == "Failed" else "") or trainer.failure_message or "the trainer failed"
        return PhaseDecision(
            Phase.failed,
            Reason.retries_exhausted,
            f"{detail}; the trainer failed {trainer.failed_pods} time(s) (failurePolicy.maxRetries={obs.max_retries}); "
            "see `kubectl logs job/<trainer job>` and fix the cause, then create a new FineTuneJob",
        )
    if trainer.suspended:
        return PhaseDecision(Phase.pending, Reason.pending, "the trainer Job waits in its Kueue queue (spec.queueName) for admission")
    if trainer.unschedulable_message:
        return PhaseDecision(
            Phase.pending,
            Reason.unschedulable,
            f"the trainer pod cannot be placed: {trainer.unschedulable_message}; check spec.resources "
            "(gpusPerNode, gpuMemoryGiB, gpuProduct, nodeSelector, tolerations) against the cluster's GPU nodes",
        )
    if trainer.waiting_reason and trainer.waiting_reason not in ("ContainerCreating", "PodInitializing"):
        return PhaseDecision(
            Phase.pending,
            trainer.waiting_reason,
            f"the trainer container cannot start: {trainer.waiting_message or trainer.waiting_reason}",
        )
    if trainer.pod_phase == "Running":
        retry = f" (retry {trainer.failed_pods} of {obs.max_retries}, resuming from the last checkpoint)" if trainer.failed_pods else ""
        who = f"all {len(trainer.ranks)} ranks of the trainer are" if trainer.ranks else "the trainer is"
        return PhaseDecision(Phase.training, Reason.training, f"{who} running{retry}")
    if trainer.pod_phase == "Succeeded":
        # The pod has ended well and the Job controller marks the Job Complete a moment later:
        # still the training step, never back to "waiting for the trainer pod to start".
        return PhaseDecision(Phase.training, Reason.training, "the trainer finished; waiting for its Job to record it")
    if trainer.ranks:
        running = sum(r.pod_phase == "Running" for r in trainer.ranks)
        return PhaseDecision(
            Phase.pending, Reason.pending, f"{running} of {len(trainer.ranks)} ranks are running; training starts when all are"
        )
    return PhaseDecision(Phase.pending, Reason.pending, "waiting for the trainer pod to start")


def _export_phase(status: FineTuneJobStatus, export: JobObservation) -> PhaseDecision:
    if export.missing:
        return _deleted("export", status.export_job or "")
    if export.succeeded:
        return PhaseDecision(Phase.succeeded, Reason.completed, "training and export finished; artifacts are recorded in status")
    result = export.result
    if result is not None and result.status == "Failed" and result.reason in USER_ERRORS:
        return PhaseDecision(Phase.failed, Reason.export_failed, f"{result.message}; the export cannot succeed as configured")
    if export.failed:
        detail = (result.message if result and result.status == "Failed" else "") or export.failure_message or "the export failed"
        return PhaseDecision(
            Phase.failed,
            Reason.export_failed,
            f"{detail}; the export failed {export.failed_pods} time(s); see `kubectl logs job/{status.export_job}`",
        )
    return PhaseDecision(Phase.exporting, Reason.exporting, "training finished; the export Job publishes the artifacts")


def _top_condition(phase: Phase) -> ConditionStatus:
    return {Phase.succeeded: ConditionStatus.true, Phase.failed: ConditionStatus.false, Phase.cancelled: ConditionStatus.false}.get(
        phase, ConditionStatus.unknown
    )


def apply_decision(status: FineTuneJobStatus, decision: PhaseDecision, generation: int, now: datetime) -> None:
    """Set the phase, the Succeeded condition and, for an end, the completion time."""
    status.phase = decision.phase
    status.observed_generation = generation
    status.conditions = set_condition(
        status.conditions, ConditionType.succeeded, _top_condition(decision.phase), decision.reason, decision.message, generation, now
    )
    if decision.phase in TERMINAL:
        status.completion_time = status.completion_time or now


def next_status(current: FineTuneJobStatus, obs: Observation) -> Decision:
    """The status after `obs`, and what to do around writing it. `current` is not changed."""
    status = current.model_copy(deep=True)
    alive = _active(obs.trainer) or (obs.export is not None and _active(obs.export))
    if status.phase in TERMINAL:
        # Absorbing: nothing observed later changes an ended job; children still alive are stopped.
        return Decision(status, stop_children=alive and status.phase is not Phase.succeeded)
    gen = obs.generation
    previous = find_condition(status.conditions, ConditionType.succeeded)
    if status.placement_retry_at is not None and not obs.cancel:
        return _place_again(status, obs)
    decision = decide_phase(status, obs)
    withdraw = False
    stuck = gang_stuck(obs.trainer.ranks, obs.now, obs.gang_placement_seconds) if decision.phase is Phase.pending else None
    if stuck is not None:
        # All ranks run together or none holds GPUs: remove this attempt, try again after a backoff.
        withdraw = True
        status.placement_retries += 1
        delay = retry_delay_seconds(status.placement_retries, obs.gang_retry_seconds)
        status.placement_retry_at = obs.now + timedelta(seconds=delay)
        decision = _withdrawal(stuck[0], stuck[1], obs, delay, status.placement_retries)

    _set_immutability(status, obs, gen)
    _set_scheduled(status, obs.trainer, decision, gen, obs.now)
    status.retries = obs.trainer.failed_pods
    if obs.progress is not None:
        status.progress = progress_from_record(obs.progress)
    elif obs.trainer.result is not None and obs.trainer.succeeded and obs.trainer.result.total_steps:
        # The pod is gone with its endpoint; its result has the last numbers.
        status.progress = progress_from_record(
            ProgressRecord(
                step=obs.trainer.result.step,
                total_steps=obs.trainer.result.total_steps,
                loss=obs.trainer.result.train_loss,
                eval_loss=obs.trainer.result.eval_loss,
                tokens_per_second=obs.trainer.result.tokens_per_second,
                eta_seconds=0,
                time_unix=0.0,  # unknown; a fixed value keeps the status unchanged on every later look
                kind="final",
            )
        )
    if decision.phase in (Phase.training, Phase.exporting) and status.start_time is None:
        status.start_time = obs.now
    create_export = decision.phase is Phase.exporting and obs.export is None and obs.needs_export
    if decision.phase is Phase.succeeded:
        results = [r for r in (obs.trainer.result, obs.export.result if obs.export else None) if r is not None]
        status.artifacts = artifacts_from_results(results)
        if status.progress is not None and status.progress.total_steps:
            status.progress.step = status.progress.total_steps
            status.progress.percent = 100
            status.progress.eta_seconds = 0
    apply_decision(status, decision, gen, obs.now)
    # A cancel removes the run's Jobs; a failure stops what still runs (a user error fails every
    # retry alike) and keeps Jobs that ended by themselves, with their pods' logs.
    stop = decision.phase is Phase.cancelled or (decision.phase is Phase.failed and alive)
    transition = previous is None or previous.reason != decision.reason
    return Decision(
        status, create_export=create_export, stop_children=stop, event=decision if transition else None, withdraw_trainer=withdraw
    )


def _withdrawal(stuck: RankObservation, holding: list[RankObservation], obs: Observation, delay: float, count: int) -> PhaseDecision:
    held = ", ".join(f"rank {r.rank} on {r.node_name}" for r in holding)
    return PhaseDecision(
        Phase.pending,
        Reason.gang_unschedulable,
        f"rank {stuck.rank} could not be placed for {obs.gang_placement_seconds:.0f} s while the others held nodes "
        f"({held}): {stuck.unschedulable_message}; the ranks run all together or not at all, so this attempt's pods "
        f"were removed and hold no GPU; all ranks are placed again in {delay:.0f} s (removal {count}). "
        "Free or add nodes that fit spec.resources, or lower spec.resources.nodes",
    )


def _place_again(status: FineTuneJobStatus, obs: Observation) -> Decision:
    """A withdrawn multi-node run: once its backoff has passed and its old Jobs are gone, place all ranks again."""
    assert status.placement_retry_at is not None
    _set_immutability(status, obs, obs.generation)
    if obs.now < status.placement_retry_at or obs.trainer_jobs_left or obs.changed_sections:
        return Decision(status)  # an edited immutable section is never what the new attempt runs
    status.observed_generation = obs.generation
    return Decision(status, recreate_trainer=True)


def _active(job: JobObservation) -> bool:
    if job.ranks and not job.succeeded and any(r.pod_phase in ("Pending", "Running") for r in job.ranks):
        return True  # one rank's Job gave up or went, the others' pods still run (and hold GPUs)
    return not (job.missing or job.succeeded or job.failed)


def _set_immutability(status: FineTuneJobStatus, obs: Observation, gen: int) -> None:
    validated = find_condition(status.conditions, ConditionType.validated)
    if obs.changed_sections:
        message = (
            f"spec.{', spec.'.join(obs.changed_sections)} changed after the trainer was created; the run keeps the "
            "original settings. Revert the change, or create a new FineTuneJob"
        )
        status.conditions = set_condition(
            status.conditions, ConditionType.validated, ConditionStatus.false, Reason.spec_immutable, message, gen, obs.now
        )
    elif validated is not None and validated.reason in (Reason.spec_immutable, Reason.api_error):
        # The edit was reverted, or the API answers again: the job is as it was admitted.
        status.conditions = set_condition(
            status.conditions, ConditionType.validated, ConditionStatus.true, Reason.spec_valid,
            "the spec matches the one the trainer was created from", gen, obs.now,
        )


def _set_scheduled(status: FineTuneJobStatus, trainer: JobObservation, decision: PhaseDecision, gen: int, now: datetime) -> None:
    if decision.reason in (Reason.unschedulable, Reason.gang_unschedulable):
        status.conditions = set_condition(
            status.conditions, ConditionType.scheduled, ConditionStatus.false, decision.reason, decision.message, gen, now
        )
    elif trainer.ranks:
        if all(r.node_name for r in trainer.ranks):
            placed = ", ".join(f"rank {r.rank} on {r.node_name}" for r in trainer.ranks)
            status.conditions = set_condition(
                status.conditions, ConditionType.scheduled, ConditionStatus.true, Reason.scheduled,
                f"all {len(trainer.ranks)} ranks are placed: {placed}", gen, now,
            )
    elif trainer.pod_name and trainer.node_name:
        message = f"pod {trainer.pod_name} runs on node {trainer.node_name}"
        status.conditions = set_condition(
            status.conditions, ConditionType.scheduled, ConditionStatus.true, Reason.scheduled, message, gen, now
        )


def is_warning(decision: PhaseDecision) -> bool:
    """Whether an event for `decision` is a Warning (failures, unplaceable pods, vanished Jobs)."""
    return decision.phase is Phase.failed or decision.reason in (Reason.unschedulable, Reason.gang_unschedulable, Reason.trainer_job_deleted)


# --- before the trainer exists: admission ------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """The outcome of checking a new job against the cluster (and, when it passed, creating its trainer)."""

    generation: int
    problems: tuple[str, ...] = ()  # "field: message" of each problem
    problem_reason: str = ""  # reason of the first problem
    waiting: bool = False  # every problem is an object the cluster lacks for now
    advisories: tuple[str, ...] = ()  # placement doubts that do not stop the job (placementCheck advisory)
    trainer_job: str = ""  # set when the trainer Job exists (created now or before)
    destination: str = ""
    api_error: str = ""  # the cluster could not be read or written (retried)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def admission_status(current: FineTuneJobStatus, adm: Admission) -> Decision:
    """The status of a job whose trainer did not exist when it was read, after admission."""
    status = current.model_copy(deep=True)
    if status.phase in TERMINAL:
        return Decision(status)
    gen, now = adm.generation, adm.now
    previous = find_condition(status.conditions, ConditionType.succeeded)
    status.observed_generation = gen
    if adm.api_error:
        if not status.trainer_job:
            status.phase = Phase.validating
        status.conditions = set_condition(
            status.conditions, ConditionType.validated, ConditionStatus.unknown, Reason.api_error, adm.api_error, gen, now
        )
        validated_before = find_condition(current.conditions, ConditionType.validated)
        new = validated_before is None or validated_before.reason != Reason.api_error
        return Decision(status, event=PhaseDecision(Phase.validating, Reason.api_error, adm.api_error) if new else None)
    if adm.problems:
        message = "; ".join(adm.problems)
        status.conditions = set_condition(
            status.conditions, ConditionType.validated, ConditionStatus.false, adm.problem_reason, message, gen, now
        )
        if adm.waiting:
            # GitOps tools apply objects in any order: wait for the PVC or Secret, re-checked on a backoff.
            waiting = PhaseDecision(Phase.pending, adm.problem_reason, f"waiting: {message}")
            apply_decision(status, waiting, gen, now)
            return Decision(status, event=waiting if previous is None or previous.reason != waiting.reason else None)
        failed = PhaseDecision(Phase.failed, adm.problem_reason, message)
        apply_decision(status, failed, gen, now)
        return Decision(status, stop_children=True, event=failed)
    status.conditions = set_condition(
        status.conditions, ConditionType.validated, ConditionStatus.true, Reason.spec_valid, "the spec passed all checks", gen, now
    )
    if adm.advisories:
        status.conditions = set_condition(
            status.conditions, ConditionType.nodes_fit, ConditionStatus.false, Reason.not_enough_gpus,
            "; ".join(adm.advisories) + " (placementCheck is advisory: the Job was created for a cluster autoscaler to serve)",
            gen, now,
        )
    status.trainer_job = adm.trainer_job
    status.output_destination = adm.destination
    pending = PhaseDecision(Phase.pending, Reason.pending, "waiting for the trainer pod to start")
    apply_decision(status, pending, gen, now)
    return Decision(status)

"""FineTuneJob status from what its trainer Job and pods show. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from glmops.api.finetunejob import Phase
from glmops.conditions import Reason


@dataclass(frozen=True)
class TrainerObservation:
    """The parts of the trainer Job and its newest pod that decide the job's phase."""

    job_missing: bool = False  # the trainer Job is gone or being deleted
    job_succeeded: bool = False
    job_failed: bool = False  # the Job controller gave up (backoffLimit reached)
    job_failure_message: str = ""
    failed_pods: int = 0
    pod_phase: str = ""  # Pending | Running | Succeeded | Failed | ""
    unschedulable_message: str = ""  # from the pod's PodScheduled=False condition
    container_waiting_reason: str = ""  # e.g. ErrImagePull
    container_waiting_message: str = ""
    exporting: bool = False  # the trainer said it finished training and exports now
    trainer_reason: str = ""  # from the newest failed pod's result: ConfigError, DataError, TrainingError
    trainer_message: str = ""


# The trainer's own verdicts that no retry can change: the spec or the data must be fixed.
USER_ERRORS = frozenset({"ConfigError", "DataError"})


@dataclass(frozen=True)
class PhaseDecision:
    """The phase and the condition that explains it."""

    phase: Phase
    reason: str
    message: str


def cancelled_by_request() -> PhaseDecision:
    """The decision when spec.cancel is set."""
    return PhaseDecision(
        Phase.cancelled,
        Reason.cancelled,
        "spec.cancel is true: the trainer was stopped; checkpoints and artifacts already written are kept",
    )


def decide_phase(obs: TrainerObservation, max_retries: int, trainer_job: str = "") -> PhaseDecision:
    """Which phase the job is in, given its trainer's Job and newest pod."""
    if obs.job_missing:
        # The operator creates the Job before it records its name and deletes it only after a
        # terminal phase is recorded, so a missing Job was deleted by someone else.
        return PhaseDecision(
            Phase.cancelled,
            Reason.trainer_job_deleted,
            f"the trainer Job{' ' + trainer_job if trainer_job else ''} was deleted outside the operator, so the job cannot go on; "
            "to stop a job use spec.cancel, to train again create a new FineTuneJob",
        )
    if obs.job_succeeded:
        return PhaseDecision(Phase.succeeded, Reason.completed, "training and export finished; artifacts are recorded in status")
    if obs.trainer_reason in USER_ERRORS:
        return PhaseDecision(
            Phase.failed,
            obs.trainer_reason,
            f"{obs.trainer_message}; fix spec.dataset or spec.training and create a new FineTuneJob (retrying cannot help)",
        )
    if obs.job_failed:
        detail = obs.trainer_message or obs.job_failure_message or "the trainer failed"
        return PhaseDecision(
            Phase.failed,
            Reason.retries_exhausted,
            f"{detail}; the trainer failed {obs.failed_pods} time(s) (failurePolicy.maxRetries={max_retries}); "
            "see `kubectl logs job/<trainer job>` and fix the cause, then create a new FineTuneJob",
        )
    if obs.unschedulable_message:
        return PhaseDecision(
            Phase.pending,
            Reason.unschedulable,
            f"the trainer pod cannot be placed: {obs.unschedulable_message}; check spec.resources "
            "(gpusPerNode, gpuMemoryGiB, gpuProduct, nodeSelector, tolerations) against the cluster's GPU nodes",
        )
    if obs.container_waiting_reason and obs.container_waiting_reason not in ("ContainerCreating", "PodInitializing"):
        return PhaseDecision(
            Phase.pending,
            obs.container_waiting_reason,
            f"the trainer container cannot start: {obs.container_waiting_message or obs.container_waiting_reason}",
        )
    if obs.pod_phase == "Running":
        if obs.exporting:
            return PhaseDecision(Phase.exporting, Reason.exporting, "training finished; writing adapter, merged weights and GGUF")
        retry = f" (retry {obs.failed_pods} of {max_retries}, resuming from the last checkpoint)" if obs.failed_pods else ""
        return PhaseDecision(Phase.training, Reason.training, f"the trainer is running{retry}")
    return PhaseDecision(Phase.pending, Reason.pending, "waiting for the trainer pod to start")

"""Condition types and reasons, and the one function that sets a condition.

Conditions follow metav1.Condition: `lastTransitionTime` changes only when `status` changes,
and each carries the generation it was computed from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from glmops.api.common import Condition, ConditionStatus


class ConditionType(StrEnum):
    succeeded = "Succeeded"  # top-level for FineTuneJob: True done, False failed, Unknown running
    validated = "Validated"
    scheduled = "Scheduled"
    training = "Training"
    ready = "Ready"  # top-level for ModelDeployment
    progressing = "Progressing"  # ModelDeployment: a rollout is under way (True) or finished/stuck (False)
    degraded = "Degraded"  # ModelDeployment: something needs attention although it may still serve
    resolved = "Resolved"  # ModelDeployment: the artifact to serve is known and usable
    nodes_fit = "NodesFit"  # FineTuneJob: whether nodes that can hold the pods exist (placementCheck advisory)
    teacher_ready = "TeacherReady"  # SyntheticDataset: the teacher answers (a ModelDeployment is Ready), checked before generating


class Reason(StrEnum):
    # validation
    spec_valid = "SpecValid"
    invalid_spec = "InvalidSpec"
    gpu_memory_too_small = "GpuMemoryTooSmall"
    not_enough_gpus = "NotEnoughGpus"
    secret_not_found = "SecretNotFound"
    pvc_not_found = "PersistentVolumeClaimNotFound"
    output_in_use = "OutputInUse"
    multi_node_unsupported = "MultiNodeUnsupported"
    spec_immutable = "SpecImmutable"
    api_error = "ApiError"
    api_rejected = "ApiRejected"  # the apiserver refused (400/422) an object the operator made from the spec
    suspend_unsupported = "SuspendUnsupported"
    label_reserved = "LabelReserved"
    # lifecycle
    pending = "Pending"
    unschedulable = "Unschedulable"
    gang_unschedulable = "GangUnschedulable"  # some ranks of a multi-node run were placed, others could not be
    scheduled = "Scheduled"
    training = "Training"
    exporting = "Exporting"
    export_failed = "ExportFailed"
    completed = "Completed"
    retries_exhausted = "RetriesExhausted"
    cancelled = "Cancelled"
    trainer_job_deleted = "TrainerJobDeleted"
    # serving: what the artifact resolution and validation of a ModelDeployment decided
    resolved = "Resolved"
    fine_tune_job_not_found = "FineTuneJobNotFound"
    fine_tune_job_not_succeeded = "FineTuneJobNotSucceeded"
    fine_tune_job_failed = "FineTuneJobFailed"
    artifact_runtime_mismatch = "ArtifactRuntimeMismatch"
    artifact_not_produced = "ArtifactNotProduced"
    quantization_not_produced = "QuantizationNotProduced"
    adapter_base_mismatch = "AdapterBaseMismatch"
    adapter_needs_base = "AdapterNeedsBase"
    duplicate_model_name = "DuplicateModelName"
    field_not_for_runtime = "FieldNotForRuntime"
    context_too_long = "ContextTooLong"
    tensor_parallel_mismatch = "TensorParallelMismatch"
    uri_not_servable = "UriNotServable"
    variant_required = "VariantRequired"
    extra_arg_owned = "ExtraArgOwned"
    invalid_name = "InvalidName"
    model_downloading = "ModelDownloading"
    model_download_failed = "ModelDownloadFailed"
    mtp_layer_missing = "MtpLayerMissing"
    # serving: what the pods show
    replicas_ready = "ReplicasReady"
    no_ready_replicas = "NoReadyReplicas"
    scaled_to_zero = "ScaledToZero"
    rolling_out = "RollingOut"
    rollout_complete = "RolloutComplete"
    model_loading = "ModelLoading"
    new_version_not_ready = "NewVersionNotReady"
    surge_unschedulable = "SurgeUnschedulable"
    container_failing = "ContainerFailing"
    deployment_missing = "DeploymentMissing"
    healthy = "Healthy"
    # synthetic data: a SyntheticDataset's teacher and generator, and FineTuneJobs that train on one
    teacher_not_found = "TeacherNotFound"
    teacher_not_ready = "TeacherNotReady"
    teacher_ready = "TeacherReady"
    generating = "Generating"
    generator_job_deleted = "GeneratorJobDeleted"
    synthetic_dataset_not_found = "SyntheticDatasetNotFound"
    synthetic_dataset_not_ready = "SyntheticDatasetNotReady"
    synthetic_dataset_failed = "SyntheticDatasetFailed"


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime | None = None,
) -> list[Condition]:
    """A new condition list with `type_` set; the transition time moves only on a status change."""
    now = now or datetime.now(UTC)
    existing = find_condition(conditions, type_)
    condition = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=existing.last_transition_time if existing and existing.status == status else now,
        observed_generation=observed_generation,
    )
    if existing is None:
        return [*conditions, condition]
    return [condition if c.type == type_ else c for c in conditions]


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of this type, if any."""
    return next((c for c in conditions if c.type == type_), None)

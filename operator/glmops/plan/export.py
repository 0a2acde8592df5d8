"""The export Job: after training, a CPU-only pod turns the adapter into the requested artifacts. Pure.

The GPU pod ends once the adapter is saved; merging, converting to GGUF and quantizing run
here, where an hour of CPU holds no GPU. The export reads the very config the trainer was
started with (copied from the trainer Job's pod template), so a destination or format changed
in the spec afterwards cannot redirect it. Its memory follows what the streaming merge holds at
once (the largest base shard, the adapter and its deltas); the trainer reports those sizes in its
result, and the variant's known sizes stand in when it did not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.contract.config import OutputFormat, TrainerConfig
from glmops.contract.uris import UriRole, parse_uri, pod_path
from glmops.plan import names
from glmops.plan.finetune import (
    CONFIG_ANNOTATION,
    CONFIG_FILE,
    SCRATCH_DIR,
    JobMeta,
    apply_pod_template,
    child_labels,
    pod_metadata,
)
from glmops.plan.memory import VARIANT_DIMS
from glmops.plan.quantity import bytes_quantity, parse_quantity
from glmops.plan.storage import credential_env
from glmops.settings import Settings

GIB = 1024**3
DEFAULT_SHARD_BYTES = 5 * 10**9
"""Hugging Face's default `max_shard_size` (5 GB), when the trainer did not report the real one."""
LOCAL_SCRATCH_BYTES = 2 * GIB
"""Scratch (HOME, TMPDIR) of an export whose output is a mounted volume: intermediates go there."""
EXPORT_RETRIES = 3
"""A killed export pod is replaced this many times; each one resumes from the journal of published files."""


@dataclass(frozen=True)
class ModelSizes:
    """What the export must hold and stage, in bytes (from the trainer's result, or estimated)."""

    model_bytes: int
    largest_shard_bytes: int
    adapter_bytes: int


def estimated_sizes(variant: str, lora_parameters: int = 0) -> ModelSizes:
    """Sizes from the variant's dimensions in bf16, for when the trainer's result does not say."""
    params = VARIANT_DIMS[variant].total_parameters()
    return ModelSizes(
        model_bytes=2 * params,
        largest_shard_bytes=DEFAULT_SHARD_BYTES,
        adapter_bytes=max(4 * lora_parameters, 256 * 1024**2),
    )


@dataclass(frozen=True)
class ExportResources:
    """Requests of the export pod."""

    cpu: str
    memory: str
    scratch: str


def export_resources(config: TrainerConfig, sizes: ModelSizes, settings: Settings) -> ExportResources:
    """Memory from the largest shard and the adapter (the streaming merge holds them, plus the
    adapter's dense deltas, at once) with headroom; scratch from the model when the output is not a
    mounted volume (merged weights and the full-precision GGUF are staged locally before upload)."""
    held = Decimal(sizes.largest_shard_bytes + 2 * sizes.adapter_bytes) * Decimal(str(settings.export_memory_headroom))
    memory = held + parse_quantity(settings.export_memory_base)
    local_output = parse_uri(config.output.destination, "output.destination", UriRole.output).scheme in ("pvc", "file")
    stages = OutputFormat.merged in config.output.formats or OutputFormat.gguf in config.output.formats
    scratch = LOCAL_SCRATCH_BYTES if local_output or not stages else 2 * sizes.model_bytes + LOCAL_SCRATCH_BYTES
    return ExportResources(cpu=settings.export_cpu, memory=bytes_quantity(memory), scratch=bytes_quantity(scratch))


def config_of_trainer_job(trainer_job: dict[str, Any]) -> TrainerConfig:
    """The trainer config carried by a trainer Job's pod template (what the trainer really ran with)."""
    annotations = trainer_job["spec"]["template"]["metadata"].get("annotations") or {}
    return TrainerConfig.model_validate(json.loads(annotations[CONFIG_ANNOTATION]))


def plan_export_job(
    meta: JobMeta, spec: FineTuneJobSpec, trainer_job: dict[str, Any], sizes: ModelSizes, settings: Settings
) -> dict[str, Any]:
    """The CPU-only batch/v1 Job that runs `python -m glmops_trainer export` with the trainer's config."""
    config = config_of_trainer_job(trainer_job)
    trainer_template = trainer_job["spec"]["template"]
    config_text = trainer_template["metadata"]["annotations"][CONFIG_ANNOTATION]
    resources = export_resources(config, sizes, settings)
    labels = child_labels(meta, "export")
    volumes, mounts = _volumes(config, settings, resources.scratch)
    container = {
        "name": "export",
        "image": settings.trainer_image,
        "command": ["python", "-m", "glmops_trainer", "export", "--config", f"{settings.config_mount_dir}/{CONFIG_FILE}"],
        "env": [
            {"name": "HOME", "value": SCRATCH_DIR},
            {"name": "TMPDIR", "value": SCRATCH_DIR},
            {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "GLMOPS_JOB", "value": meta.name},
            *({"name": k, "value": v} for k, v in sorted(settings.extra_trainer_env.items())),
            # The export reads the base model and writes the output with the trainer's credentials
            # and endpoints (an S3-compatible store's endpointUrl included).
            *credential_env(spec),
        ],
        # No nvidia.com/gpu: the export never touches a GPU.
        "resources": {
            "requests": {"cpu": resources.cpu, "memory": resources.memory, "ephemeral-storage": resources.scratch},
            "limits": {"memory": resources.memory},
        },
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": dict(trainer_template["spec"]["securityContext"]),
        "tolerations": [t.to_wire() for t in spec.resources.tolerations],
        "containers": [container],
        "volumes": volumes,
    }
    apply_pod_template(pod_spec, spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": names.export_job_name(meta.name), "namespace": meta.namespace, "labels": labels},
        "spec": {
            "backoffLimit": EXPORT_RETRIES,
            "template": {"metadata": pod_metadata(labels, spec, {CONFIG_ANNOTATION: config_text}), "spec": pod_spec},
        },
    }


def _volumes(config: TrainerConfig, settings: Settings, scratch: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "downwardAPI": {
                "items": [{"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]
            },
        },
        {"name": "scratch", "emptyDir": {"sizeLimit": scratch}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": settings.config_mount_dir, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    claims: dict[str, bool] = {}  # claim -> read-only; the export reads the base model, writes the output
    for field, uri, role, read_only in (
        ("model.source", config.model.source, UriRole.model, True),
        ("output.destination", config.output.destination, UriRole.output, False),
    ):
        claim = parse_uri(uri, field, role).claim
        if claim:
            claims[claim] = claims.get(claim, True) and read_only
    root = config.runtime.pvc_mount_root
    for index, (claim, read_only) in enumerate(sorted(claims.items())):
        volume = f"pvc-{index}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": volume, "mountPath": pod_path(f"pvc://{claim}", root), "readOnly": read_only})
    return volumes, mounts

"""SyntheticDataset -> what to run: the teacher resolved, semantic checks, the generator config and Job. Pure.

The handler gathers cluster facts (`SyntheticFacts`: the teacher ModelDeployment, Secrets, PVCs,
which outputs other datasets own) and applies the Job this module returns. A CR field never
reaches a shell: the command is an argv list, the config travels in an annotation mounted as a
file. The teacher's API key is referenced (secretKeyRef), never read or copied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glmops.api.syntheticdataset import SecretKeySelector, SyntheticDatasetSpec
from glmops.conditions import Reason
from glmops.contract.config import POD_IP_ENV
from glmops.contract.synthetic import TEACHER_API_KEY_ENV, GeneratorConfig, ToolExecution
from glmops.contract.uris import UriRole, parse_uri, pod_path
from glmops.plan import names
from glmops.plan.finetune import MANAGED_BY, MANAGED_BY_LABEL
from glmops.plan.placement import container_security_context, pod_security_context
from glmops.plan.problems import Problem
from glmops.settings import Settings

SDS_LABEL = "glmops.io/syntheticdataset"
COMPONENT_LABEL = "glmops.io/component"
COMPONENT = "generator"
CONFIG_FILE = "generate.json"
CONFIG_ANNOTATION = "glmops.io/generator-config"
SPEC_HASH_ANNOTATION = "glmops.io/spec-hash"
"""On the generator Job: a hash of the spec it was made from (the spec is immutable)."""
METRICS_PORT_NAME = "metrics"
SCRATCH_DIR = "/scratch"
DEADLINE_GRACE_SECONDS = 120
"""The Job's activeDeadlineSeconds is the spec's deadline plus this: the generator stops itself at the
deadline and reports why; the Job controller's deadline only catches a generator that hangs."""
EXIT_TERMINAL = 2
"""The generator's exit code for failures a new pod cannot change (glmops_trainer's EXIT_USER_ERROR)."""
MIN_POD_FAILURE_POLICY_MINOR = 26  # Job.spec.podFailurePolicy is on by default from 1.26


@dataclass(frozen=True)
class DatasetMeta:
    """Identity of the SyntheticDataset being planned."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


@dataclass(frozen=True)
class Teacher:
    """The endpoint the generator calls and the Secret key it authenticates with."""

    url: str
    model: str | None
    api_key: SecretKeySelector | None
    deployment: str | None = None


@dataclass(frozen=True)
class SyntheticFacts:
    """What the planner needs to know about the cluster; gathered by the handler."""

    now_unix: float
    server_minor: int = 30
    secrets: frozenset[str] = frozenset()
    pvcs: frozenset[str] = frozenset()
    teacher_deployment: Mapping[str, Any] | None = None
    """The ModelDeployment spec.teacher names, as read (None: it does not exist)."""
    outputs_in_use: dict[str, str] = field(default_factory=dict)
    """Output URI -> another SyntheticDataset that writes it."""


@dataclass(frozen=True)
class SyntheticPlan:
    """Problems (then nothing runs), or the teacher, the generator config and the Job."""

    problems: tuple[Problem, ...]
    teacher: Teacher | None = None
    config: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] | None = None

    @property
    def waiting(self) -> bool:
        """Whether every problem is one the cluster, not the spec, must fix (a PVC, a Secret, the teacher)."""
        return bool(self.problems) and all(p.waits for p in self.problems)


def plan_synthetic(meta: DatasetMeta, spec: SyntheticDatasetSpec, facts: SyntheticFacts, settings: Settings) -> SyntheticPlan:
    """Check the dataset against the cluster and, when it can run, build its generator Job."""
    teacher, teacher_problems = resolve_teacher(spec, meta.namespace, facts.teacher_deployment)
    problems = validate_synthetic(meta, spec, teacher, facts) + teacher_problems
    if problems or teacher is None:
        return SyntheticPlan(tuple(problems), teacher)
    deadline_unix = facts.now_unix + spec.deadline_seconds
    config = render_generator_config(meta, spec, teacher, deadline_unix, settings)
    job = build_generator_job(meta, spec, teacher, config, facts.server_minor, settings)
    return SyntheticPlan((), teacher, config, job)


def resolve_teacher(
    spec: SyntheticDatasetSpec, namespace: str, deployment: Mapping[str, Any] | None
) -> tuple[Teacher | None, list[Problem]]:
    """The teacher's endpoint: spec.teacher.url, or the endpoint of a Ready ModelDeployment (else why not yet)."""
    teacher = spec.teacher
    if teacher.url is not None:
        return Teacher(teacher.url, teacher.model, teacher.api_key_secret), []
    name = teacher.model_deployment or ""
    where = "spec.teacher.modelDeployment"
    if deployment is None:
        return None, [
            Problem(
                Reason.teacher_not_found, where,
                f"ModelDeployment {name!r} does not exist in namespace {namespace}; generation starts once it exists "
                "and is Ready (or fix the name)",
            )
        ]  # fmt: skip
    status = deployment.get("status") or {}
    endpoint = status.get("endpoint")
    if status.get("phase") not in ("Ready", "Degraded") or not status.get("readyReplicas") or not endpoint:
        ready = status.get("ready") or "0/?"
        return None, [
            Problem(
                Reason.teacher_not_ready, where,
                f"ModelDeployment {name!r} is {status.get('phase') or 'Pending'} ({ready} replicas ready); generation "
                "starts once it is Ready",
            )
        ]  # fmt: skip
    mdep_spec = deployment.get("spec") or {}
    key = teacher.api_key_secret
    if key is None and mdep_spec.get("apiKeySecret"):
        key = SecretKeySelector(name=str(mdep_spec["apiKeySecret"]))
    model = teacher.model or (str(mdep_spec["servedModelName"]) if mdep_spec.get("servedModelName") else None)
    return Teacher(str(endpoint), model, key, deployment=name), []


def validate_synthetic(meta: DatasetMeta, spec: SyntheticDatasetSpec, teacher: Teacher | None, facts: SyntheticFacts) -> list[Problem]:
    """What the schema cannot check (or checks only with CEL, absent before Kubernetes 1.25)."""
    problems: list[Problem] = []
    if not spec.output.endswith(".jsonl"):
        problems.append(Problem(Reason.invalid_spec, "spec.output", f"{spec.output} must name a .jsonl file, e.g. pvc://datasets/payments/synthetic.jsonl"))
    if spec.output == spec.prompts:
        problems.append(Problem(Reason.invalid_spec, "spec.output", "must differ from spec.prompts (the prompts would be overwritten)"))
    if spec.max_turns > 1 and spec.tool_execution is not ToolExecution.fixtures:
        problems.append(
            Problem(
                Reason.invalid_spec, "spec.maxTurns",
                f"maxTurns {spec.max_turns} needs toolExecution: fixtures (with stop, every trace ends at the first "
                "tool call); set toolExecution: fixtures and give tool_results with the prompts, or maxTurns: 1",
            )
        )  # fmt: skip
    for field_path, uri in (("spec.prompts", spec.prompts), ("spec.output", spec.output)):
        claim = parse_uri(uri, field_path, UriRole.dataset, ("pvc", "file")).claim
        if claim and claim not in facts.pvcs:
            problems.append(
                Problem(
                    Reason.pvc_not_found, field_path,
                    f"PersistentVolumeClaim {claim!r} does not exist in namespace {meta.namespace}; create it or point "
                    "the field at an existing claim",
                )
            )  # fmt: skip
    key = teacher.api_key if teacher is not None else spec.teacher.api_key_secret
    if key is not None and key.name not in facts.secrets:
        field_path = "spec.teacher.apiKeySecret" if spec.teacher.api_key_secret else f"ModelDeployment {spec.teacher.model_deployment} spec.apiKeySecret"
        problems.append(
            Problem(
                Reason.secret_not_found, field_path,
                f"Secret {key.name!r} does not exist in namespace {meta.namespace}; create it "
                f"(kubectl create secret generic {key.name} --from-literal={key.key}=...) or remove the field",
            )
        )  # fmt: skip
    other = facts.outputs_in_use.get(spec.output)
    if other and other != meta.name:
        problems.append(
            Problem(
                Reason.output_in_use, "spec.output",
                f"{spec.output} is written by SyntheticDataset {other!r}; choose another output so neither overwrites the other",
            )
        )  # fmt: skip
    return problems


def spec_hash(spec: SyntheticDatasetSpec) -> str:
    """A short hash of the spec as the API model serialises it (defaults included)."""
    return hashlib.sha256(json.dumps(spec.to_wire(), sort_keys=True).encode()).hexdigest()[:16]


def render_generator_config(
    meta: DatasetMeta, spec: SyntheticDatasetSpec, teacher: Teacher, deadline_unix: float, settings: Settings
) -> dict[str, Any]:
    """The JSON file the generator reads (glmops.contract.synthetic.GeneratorConfig; validated here too)."""
    config = {
        "dataset": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        "teacher": {
            "base_url": teacher.url,
            "model": teacher.model,
            "request_timeout_seconds": spec.teacher.request_timeout_seconds,
        },
        "prompts": spec.prompts,
        "output": spec.output,
        "samples_per_prompt": spec.samples_per_prompt,
        "sampling": {
            "temperature": spec.sampling.temperature,
            "top_p": spec.sampling.top_p,
            "max_tokens": spec.sampling.max_tokens,
            "seed": spec.sampling.seed,
        },
        "thinking": spec.thinking.value,
        "max_turns": spec.max_turns,
        "tool_execution": spec.tool_execution.value,
        "system_prompt": spec.system_prompt,
        "max_concurrency": spec.max_concurrency,
        "max_attempts": spec.max_attempts,
        "filters": {
            "drop_empty": spec.filters.drop_empty,
            "drop_truncated": spec.filters.drop_truncated,
            "validate_tool_calls": spec.filters.validate_tool_calls,
            "deduplicate": spec.filters.deduplicate.value,
            "near_duplicate_threshold": spec.filters.near_duplicate_threshold,
        },
        "deadline_unix": round(deadline_unix, 3),
        "runtime": {"pvc_mount_root": settings.pvc_mount_root, "metrics_port": settings.generator_metrics_port},
    }
    GeneratorConfig.model_validate(config)  # the contract: what the generator cannot read is never rendered
    return config


def child_labels(meta: DatasetMeta) -> dict[str, str]:
    """Labels of the generator Job and its pods."""
    return {
        "app.kubernetes.io/name": "glmops-generator",
        "app.kubernetes.io/instance": meta.name,
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: COMPONENT,
        SDS_LABEL: meta.name,
    }


def build_generator_job(
    meta: DatasetMeta, spec: SyntheticDatasetSpec, teacher: Teacher, config: dict[str, Any], server_minor: int, settings: Settings
) -> dict[str, Any]:
    """The CPU-only batch/v1 Job that runs `python -m glmops_trainer generate` with `config`."""
    labels = child_labels(meta)
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "downwardAPI": {
                "items": [{"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]
            },
        },
        {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": settings.config_mount_dir, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    claims: dict[str, bool] = {}  # claim -> read-only; the prompts are read, the output written
    for field_path, uri, read_only in (("spec.prompts", spec.prompts, True), ("spec.output", spec.output, False)):
        claim = parse_uri(uri, field_path, UriRole.dataset, ("pvc", "file")).claim
        if claim:
            claims[claim] = claims.get(claim, True) and read_only
    for index, (claim, read_only) in enumerate(sorted(claims.items())):
        volume = f"pvc-{index}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": volume, "mountPath": pod_path(f"pvc://{claim}", settings.pvc_mount_root), "readOnly": read_only})
    env: list[dict[str, Any]] = [
        # The root filesystem is read-only; everything writable is under the scratch emptyDir.
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "MPLCONFIGDIR", "value": f"{SCRATCH_DIR}/matplotlib"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "GLMOPS_SYNTHETIC_DATASET", "value": meta.name},
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *({"name": k, "value": v} for k, v in sorted(settings.extra_trainer_env.items())),
    ]
    if teacher.api_key is not None:
        # Referenced, never copied: the kubelet reads the Secret when it starts the container.
        env.append({"name": TEACHER_API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": teacher.api_key.name, "key": teacher.api_key.key}}})
    container = {
        "name": COMPONENT,
        "image": settings.trainer_image,
        "command": ["python", "-m", "glmops_trainer", "generate", "--config", f"{settings.config_mount_dir}/{CONFIG_FILE}"],
        "env": env,
        # No nvidia.com/gpu and no GPU toleration: the generator only sends requests.
        "resources": {
            "requests": {"cpu": settings.generator_cpu, "memory": settings.generator_memory},
            "limits": {"memory": settings.generator_memory},
        },
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": settings.generator_metrics_port}],
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.failure_policy.max_retries,
        "activeDeadlineSeconds": spec.deadline_seconds + DEADLINE_GRACE_SECONDS,
        "template": {
            "metadata": {"labels": labels, "annotations": {CONFIG_ANNOTATION: json.dumps(config, indent=2, sort_keys=True)}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,  # the generator never talks to the API
                "enableServiceLinks": False,
                "securityContext": pod_security_context(),
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if server_minor >= MIN_POD_FAILURE_POLICY_MINOR:
        # A failure no new pod can change (bad prompts, the deadline, a refused key) ends the Job at once.
        job_spec["podFailurePolicy"] = {
            "rules": [{"action": "FailJob", "onExitCodes": {"containerName": COMPONENT, "operator": "In", "values": [EXIT_TERMINAL]}}]
        }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.generator_job_name(meta.name),
            "namespace": meta.namespace,
            "labels": labels,
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec)},
        },
        "spec": job_spec,
    }


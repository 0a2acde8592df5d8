"""FineTuneJob -> what to run: semantic checks, the trainer config and the Kubernetes objects.

Everything here is pure: the handler gathers cluster facts (`ClusterFacts`) and applies the
objects this module returns. A CR field never reaches a shell: commands are argv lists.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from glmops.api.common import LABEL_KEY_PATTERN
from glmops.api.defaults import VARIANT_DEFAULTS, ResolvedTraining, default_gpus_per_node, resolve_training
from glmops.api.finetunejob import FineTuneJobSpec, OutputFormat, Variant
from glmops.conditions import Reason
from glmops.contract.config import POD_IP_ENV
from glmops.contract.uris import UriRole, parse_uri, pod_path, synthetic_name
from glmops.plan import names
from glmops.plan.changes import spec_section_hashes
from glmops.plan.memory import MemoryPlan, plan_memory
from glmops.plan.placement import (
    GPU_COUNT_LABEL,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    GpuNode,
    container_security_context,
    gpu_node_affinity,
    gpu_tolerations,
    largest_offer,
    nodes_that_fit,
    pod_security_context,
)
from glmops.plan.problems import Problem
from glmops.plan.quantity import scale_quantity
from glmops.plan.storage import credential_env, credential_secrets, storage_problems
from glmops.plan.trainer_ranks import COMPLETION_INDEX_ANNOTATION, NODE_RANK_LABEL
from glmops.settings import Settings

__all__ = ["GPU_COUNT_LABEL", "GPU_MEMORY_LABEL", "GPU_PRODUCT_LABEL", "GPU_RESOURCE", "GpuNode", "Problem"]

FTJ_LABEL = "glmops.io/finetunejob"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "glmops"
"""Every Job and pod glmops creates carries MANAGED_BY_LABEL=MANAGED_BY; the operator's watches select on it."""
COMPONENT_LABEL = "glmops.io/component"  # trainer | export
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MIN_SUSPEND_MINOR = 22  # Job.spec.suspend is on by default (beta) from 1.22; Kueue relies on it
SPEC_SECTIONS_ANNOTATION = "glmops.io/spec-sections"  # on the trainer Job: hashes of the spec it was made from
METRICS_PORT_NAME = "metrics"
CONFIG_FILE = "job.json"
SCRATCH_DIR = "/scratch"  # writable emptyDir (HOME, TMPDIR); a dedicated path shadows nothing of the image
CONFIG_ANNOTATION = "glmops.io/trainer-config"  # pod template annotation, mounted as CONFIG_FILE
RENDEZVOUS_PORT = 29500
MIN_INDEXED_JOB_MINOR = 24  # Indexed Jobs with stable pod hostnames are GA from 1.24
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"


def multi_node_form(nodes: int, server_minor: int) -> str:
    """How a run of `nodes` pods is laid out: "single" (one pod), "indexed" (one Indexed Job of
    `nodes` pods) or "per-rank" (one Job per node rank, for servers without Indexed Jobs)."""
    if nodes <= 1:
        return "single"
    return "indexed" if server_minor >= MIN_INDEXED_JOB_MINOR else "per-rank"


@dataclass(frozen=True)
class JobMeta:
    """Identity of the FineTuneJob being planned."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


@dataclass(frozen=True)
class ClusterFacts:
    """What the planner needs to know about the cluster; gathered by the handler."""

    server_minor: int = 30
    secrets: frozenset[str] = frozenset()
    pvcs: frozenset[str] = frozenset()
    outputs_in_use: dict[str, str] = field(default_factory=dict)  # destination URI -> other FineTuneJob
    gpu_nodes: tuple[GpuNode, ...] | None = None  # None: unknown (do not judge placement up front)
    dataset_source: str | None = None  # the file a synthetic://NAME dataset source resolved to (glmops.plan.synthetic_source)


@dataclass(frozen=True)
class Placement:
    """GPUs per pod, pods, and the per-GPU memory the pods ask for."""

    nodes: int
    gpus_per_node: int
    min_gpu_memory_mib: int  # MiB, the unit of the nvidia.com/gpu.memory label

    @property
    def min_gpu_memory_gib(self) -> float:
        """The same in GiB."""
        return self.min_gpu_memory_mib / 1024


@dataclass(frozen=True)
class FineTunePlan:
    """The result of planning: problems (then nothing runs) or the objects to apply.

    `problems` end the job, unless every one of them `waits` (a missing PVC or Secret, which
    GitOps tools may apply after the job); `advisories` let it run with a condition.
    """

    training: ResolvedTraining
    memory: MemoryPlan
    placement: Placement
    problems: tuple[Problem, ...]
    trainer_config: dict[str, Any]
    objects: tuple[dict[str, Any], ...]
    advisories: tuple[Problem, ...] = ()

    @property
    def waiting(self) -> bool:
        """Whether the only problems are objects the cluster lacks for now."""
        return bool(self.problems) and all(p.waits for p in self.problems)


def plan_finetune(meta: JobMeta, spec: FineTuneJobSpec, facts: ClusterFacts, settings: Settings) -> FineTunePlan:
    """Check the job against the cluster and, when it can run, build its trainer objects."""
    training, memory, placement = _size(spec, settings)
    problems = validate_finetune(meta, spec, training, memory, placement, facts)
    advisories: list[Problem] = []
    if settings.placement_check == "advisory":
        # Pools that scale from zero have no fitting node until a pod is pending: run, and say so.
        advisories = [p for p in problems if p.reason is Reason.not_enough_gpus and p.field == "spec.resources"]
        problems = [p for p in problems if p not in advisories]
    if problems:
        return FineTunePlan(training, memory, placement, tuple(problems), {}, ())
    config = render_trainer_config(meta, spec, training, settings, facts.dataset_source)
    objects = build_trainer_objects(meta, spec, placement, config, settings, facts.server_minor)
    return FineTunePlan(training, memory, placement, (), config, tuple(objects), tuple(advisories))


def plan_trainer_jobs(
    meta: JobMeta, spec: FineTuneJobSpec, settings: Settings, server_minor: int, dataset_source: str | None = None
) -> list[dict[str, Any]]:
    """The trainer Jobs of an admitted job, made again as admission made them (a multi-node run whose
    half-placed attempt was withdrawn); nothing is checked again, the job was admitted.
    `dataset_source` is the file a synthetic:// source resolved to, as at admission."""
    training, _memory, placement = _size(spec, settings)
    config = render_trainer_config(meta, spec, training, settings, dataset_source)
    objects = build_trainer_objects(meta, spec, placement, config, settings, server_minor)
    return [o for o in objects if o["kind"] == "Job"]


def _size(spec: FineTuneJobSpec, settings: Settings) -> tuple[ResolvedTraining, MemoryPlan, Placement]:
    training = resolve_training(spec)
    gpus_per_node = default_gpus_per_node(spec)
    memory = plan_memory(
        variant=spec.model.variant.value,
        method=training.method.value,
        lora_rank=training.lora_rank,
        targets=[t.value for t in training.lora_targets],
        sequence_length=training.sequence_length,
        micro_batch_size=training.micro_batch_size,
        gpus=gpus_per_node * spec.resources.nodes,
    )
    placement = Placement(
        nodes=spec.resources.nodes,
        gpus_per_node=gpus_per_node,
        min_gpu_memory_mib=_min_gpu_memory_mib(spec, memory, settings),
    )
    return training, memory, placement


def _min_gpu_memory_mib(spec: FineTuneJobSpec, memory: MemoryPlan, settings: Settings) -> int:
    if spec.resources.gpu_memory_gi_b is not None:
        return spec.resources.gpu_memory_gi_b * 1024
    # The plan's need with headroom, in whole MiB (the label's unit); never below the variant's GPU class.
    need_mib = math.ceil(memory.per_gpu_gib * settings.gpu_memory_headroom * 1024)
    return max(VARIANT_DEFAULTS[spec.model.variant].min_gpu_memory_gib * 1024, need_mib)


# --- semantic validation ----------------------------------------------------------------------


def validate_finetune(
    meta: JobMeta,
    spec: FineTuneJobSpec,
    training: ResolvedTraining,
    memory: MemoryPlan,
    placement: Placement,
    facts: ClusterFacts,
) -> list[Problem]:
    """What the schema cannot check: memory vs GPUs, references, output ownership, cluster limits."""
    problems: list[Problem] = []
    need = memory.per_gpu_gib
    if spec.resources.gpu_memory_gi_b is not None and spec.resources.gpu_memory_gi_b < need:
        problems.append(
            Problem(
                Reason.gpu_memory_too_small,
                "spec.resources.gpuMemoryGiB",
                f"{spec.resources.gpu_memory_gi_b} GiB per GPU is below the memory plan's {need:.1f} GiB per GPU "
                f"for {spec.model.variant.value} {training.method.value} at sequenceLength {training.sequence_length}; "
                f"raise gpuMemoryGiB to at least {int(-(-need // 1))}, add GPUs (gpusPerNode), "
                "or lower training.sequenceLength",
            )
        )
    if spec.model.variant is Variant.flagship and placement.gpus_per_node * placement.nodes < 4:
        problems.append(
            Problem(
                Reason.not_enough_gpus,
                "spec.resources.gpusPerNode",
                f"the flagship (~355B parameters) needs {memory.total_gib:.0f} GiB of GPU memory in total; "
                f"{placement.gpus_per_node * placement.nodes} GPU(s) cannot hold it; use gpusPerNode: 8",
            )
        )
    if spec.queue_name and multi_node_form(placement.nodes, facts.server_minor) == "per-rank":
        # Kueue admits a Job as one workload; one Job per rank would be admitted rank by rank.
        problems.append(
            Problem(
                Reason.multi_node_unsupported,
                "spec.queueName",
                f"a multi-node run admitted through Kueue must be one Indexed Job (Kubernetes >= 1.{MIN_INDEXED_JOB_MINOR}) "
                f"for Kueue to admit all ranks at once; this cluster is 1.{facts.server_minor}; remove queueName "
                "(the operator then places the ranks all-or-nothing itself) or upgrade the cluster",
            )
        )
    for secret_field, secret in credential_secrets(spec):
        if secret not in facts.secrets:
            example = "HF_TOKEN=..." if secret_field == "spec.model.credentialsSecret" else "AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=..."
            problems.append(
                Problem(
                    Reason.secret_not_found,
                    secret_field,
                    f"Secret {secret!r} does not exist in namespace {meta.namespace}; create it "
                    f"(e.g. kubectl create secret generic NAME --from-literal={example}) or remove the field",
                )
            )
    problems += [Problem(reason, where, message) for reason, where, message in storage_problems(spec)]
    if synthetic_name(spec.dataset.source) is not None and facts.dataset_source is None:
        problems.append(
            Problem(Reason.synthetic_dataset_not_ready, "spec.dataset.source", "the SyntheticDataset's output is not known yet")
        )
    for field_path, uri, role in _pvc_uris(spec, facts.dataset_source):
        claim = parse_uri(uri, field_path, role).claim
        if claim and claim not in facts.pvcs:
            problems.append(
                Problem(
                    Reason.pvc_not_found,
                    field_path,
                    f"PersistentVolumeClaim {claim!r} does not exist in namespace {meta.namespace}; create it or "
                    "point the field at an existing claim",
                )
            )
    other = facts.outputs_in_use.get(spec.output.destination.rstrip("/"))
    if other and other != meta.name:
        problems.append(
            Problem(
                Reason.output_in_use,
                "spec.output.destination",
                f"{spec.output.destination} already holds the artifacts of FineTuneJob {other!r}; choose another "
                "destination so neither job overwrites the other",
            )
        )
    if OutputFormat.gguf in spec.output.formats and not spec.output.quantizations:
        problems.append(
            Problem(
                Reason.invalid_spec,
                "spec.output.quantizations",
                "gguf is among the formats but no quantization is named; add e.g. [Q4_K_M]",
            )
        )
    if facts.gpu_nodes is not None:
        fit = _nodes_that_fit(placement, spec, facts.gpu_nodes)
        if len(fit) < placement.nodes:
            # Each pod of a multi-node run needs its own node: `nodes` distinct fitting nodes.
            where = (
                f"only {len(fit)} of the {placement.nodes} nodes needed have"
                if fit and placement.nodes > 1
                else "no node has"
            )
            problems.append(
                Problem(
                    Reason.not_enough_gpus,
                    "spec.resources",
                    f"{where} {placement.gpus_per_node} GPU(s) with >= {placement.min_gpu_memory_gib:.1f} GiB each"
                    + (f" of product {spec.resources.gpu_product}" if spec.resources.gpu_product else "")
                    + f"; largest offer: {_largest_offer(facts.gpu_nodes)}; lower gpusPerNode/gpuMemoryGiB/nodes or add such nodes",
                )
            )
    if spec.queue_name and facts.server_minor < MIN_SUSPEND_MINOR:
        problems.append(
            Problem(
                Reason.suspend_unsupported,
                "spec.queueName",
                f"Kueue admits Jobs that are created suspended, which needs Kubernetes >= 1.{MIN_SUSPEND_MINOR}; this "
                f"cluster is 1.{facts.server_minor}; remove queueName or upgrade the cluster",
            )
        )
    problems += _label_problems(spec)
    return problems


_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_RESERVED_LABELS = (FTJ_LABEL, MANAGED_BY_LABEL, COMPONENT_LABEL, "app.kubernetes.io/name", "app.kubernetes.io/instance")


def _label_problems(spec: FineTuneJobSpec) -> list[Problem]:
    """Map keys the CRD can check only with CEL (absent on older servers), and keys glmops owns."""
    problems: list[Problem] = []
    maps = {
        "spec.resources.nodeSelector": spec.resources.node_selector,
        "spec.podTemplate.labels": spec.pod_template.labels,
        "spec.podTemplate.annotations": spec.pod_template.annotations,
    }
    for field_path, mapping in maps.items():
        for key in mapping:
            if not _LABEL_KEY.match(key) or len(key.rpartition("/")[0]) > 253:
                problems.append(
                    Problem(
                        Reason.invalid_spec,
                        f"{field_path}[{key!r}]",
                        "not a valid key: an optional DNS-subdomain prefix and '/', then 1-63 characters of "
                        "[A-Za-z0-9-_.] that start and end alphanumeric",
                    )
                )
            elif field_path != "spec.resources.nodeSelector" and (key in _RESERVED_LABELS or key.startswith("glmops.io/")):
                problems.append(
                    Problem(
                        Reason.label_reserved,
                        f"{field_path}[{key!r}]",
                        "glmops sets this key itself; choose a key outside glmops.io/ and the app.kubernetes.io/ keys glmops uses",
                    )
                )
    return problems


def _pvc_uris(spec: FineTuneJobSpec, dataset_source: str | None) -> list[tuple[str, str, UriRole]]:
    """The pvc:// locations of the job (the dataset as resolved, for a synthetic:// source)."""
    return [
        (path, uri, role)
        for path, uri, role in (
            ("spec.model.source", spec.model.source, UriRole.model),
            ("spec.dataset.source", dataset_source or spec.dataset.source, UriRole.dataset),
            ("spec.output.destination", spec.output.destination, UriRole.output),
        )
        if uri.startswith("pvc://")
    ]


def _nodes_that_fit(placement: Placement, spec: FineTuneJobSpec, nodes: tuple[GpuNode, ...]) -> list[GpuNode]:
    return nodes_that_fit(nodes, placement.gpus_per_node, placement.min_gpu_memory_mib, spec.resources.gpu_product)


def _largest_offer(nodes: tuple[GpuNode, ...]) -> str:
    return largest_offer(nodes)


# --- trainer config ---------------------------------------------------------------------------


def render_trainer_config(
    meta: JobMeta, spec: FineTuneJobSpec, training: ResolvedTraining, settings: Settings, dataset_source: str | None = None
) -> dict[str, Any]:
    """The JSON file the trainer reads (glmops_trainer.config.TrainerConfig; a contract test keeps them in step).

    `dataset_source` replaces a synthetic:// source with the file it resolved to.
    """
    return {
        "job": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        "model": {"source": spec.model.source, "variant": spec.model.variant.value},
        "data": {
            "source": dataset_source or spec.dataset.source,
            "format": spec.dataset.format.value,
            "thinking": spec.dataset.thinking.value,
            "validation_split": spec.dataset.validation_split,
            "max_error_fraction": spec.dataset.max_error_fraction,
            "packing": training.packing,
        },
        "training": {
            "method": training.method.value,
            "lora": {
                "rank": training.lora_rank,
                "alpha": training.lora_alpha,
                "dropout": training.lora_dropout,
                "targets": [t.value for t in training.lora_targets],
            },
            "epochs": training.epochs,
            "max_steps": training.max_steps,
            "learning_rate": training.learning_rate,
            "sequence_length": training.sequence_length,
            "micro_batch_size": training.micro_batch_size,
            "gradient_accumulation_steps": training.gradient_accumulation_steps,
            "checkpoint_every": training.checkpoint_every,
            "seed": training.seed,
        },
        "output": {
            "destination": spec.output.destination,
            "formats": [f.value for f in spec.output.formats],
            "quantizations": [q.value for q in spec.output.quantizations] if OutputFormat.gguf in spec.output.formats else [],
        },
        "runtime": {"pvc_mount_root": settings.pvc_mount_root, "metrics_port": settings.trainer_metrics_port},
    }


# --- Kubernetes objects -----------------------------------------------------------------------


def child_labels(meta: JobMeta, component: str) -> dict[str, str]:
    """Labels of every object glmops creates for a FineTuneJob (`component`: trainer or export)."""
    return {
        "app.kubernetes.io/name": f"glmops-{component}",
        "app.kubernetes.io/instance": meta.name,
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: component,
        FTJ_LABEL: meta.name,
    }


def build_trainer_objects(
    meta: JobMeta,
    spec: FineTuneJobSpec,
    placement: Placement,
    config: dict[str, Any],
    settings: Settings,
    server_minor: int = 30,
) -> list[dict[str, Any]]:
    """The trainer Job(s) carrying the config; for several nodes a headless Service first.

    Several nodes run as one Indexed Job where the server has them, else as one Job per node
    rank (`multi_node_form`); either way every pod has a stable `hostname.subdomain` under the
    Service, which is how the other ranks reach rank 0.
    """
    labels = child_labels(meta, "trainer")
    form = multi_node_form(placement.nodes, server_minor)
    if form == "single":
        return [_trainer_job(meta, spec, placement, settings, labels, config, form)]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.trainer_service_name(meta.name),
            "namespace": meta.namespace,
            "labels": labels,
            # It outlives a withdrawn attempt's Jobs: what they were made from stays readable.
            "annotations": {SPEC_SECTIONS_ANNOTATION: json.dumps(spec_section_hashes(spec), sort_keys=True)},
        },
        "spec": {
            "clusterIP": "None",
            "selector": {FTJ_LABEL: meta.name, COMPONENT_LABEL: "trainer"},
            # Ranks rendezvous before any of them is "ready": their names must resolve at once.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }
    if form == "indexed":
        return [service, _trainer_job(meta, spec, placement, settings, labels, config, form)]
    return [service, *(_trainer_job(meta, spec, placement, settings, labels, config, form, rank) for rank in range(placement.nodes))]


def rank_zero_address(meta: JobMeta, form: str) -> str:
    """The name under which the other ranks reach rank 0 (`hostname.subdomain`, resolved through the
    search path of the pod's namespace)."""
    service = names.trainer_service_name(meta.name)
    if form == "indexed":
        return f"{names.trainer_job_name(meta.name)}-0.{service}"  # the Job controller names pod hostnames <job>-<index>
    return f"{names.trainer_rank_job_name(meta.name, 0)}.{service}"


def _trainer_command(meta: JobMeta, placement: Placement, config_path: str, form: str) -> list[str]:
    trainer = ["-m", "glmops_trainer", "train", "--config", config_path]
    if placement.nodes == 1 and placement.gpus_per_node == 1:
        return ["python", *trainer]
    if placement.nodes == 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={placement.gpus_per_node}", *trainer]
    # $(NODE_RANK) is expanded by the kubelet from the pod's env, not by a shell.
    return [
        "torchrun",
        f"--nnodes={placement.nodes}",
        f"--nproc-per-node={placement.gpus_per_node}",
        "--node-rank=$(NODE_RANK)",
        f"--master-addr={rank_zero_address(meta, form)}",
        f"--master-port={RENDEZVOUS_PORT}",
        *trainer,
    ]


def _affinity(meta: JobMeta, spec: FineTuneJobSpec, placement: Placement) -> dict[str, Any]:
    affinity = gpu_node_affinity(placement.min_gpu_memory_mib, placement.gpus_per_node, spec.resources.gpu_product)
    if placement.nodes > 1:
        # One pod per node: the memory plan and gpusPerNode assume each rank has a node's GPUs to itself.
        affinity["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {FTJ_LABEL: meta.name, COMPONENT_LABEL: "trainer"}},
                    "topologyKey": HOSTNAME_TOPOLOGY,
                }
            ]
        }
    return affinity


def _env(meta: JobMeta, spec: FineTuneJobSpec, settings: Settings, form: str, rank: int | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The root filesystem is read-only; everything writable is under the scratch emptyDir.
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "GLMOPS_JOB", "value": meta.name},
        # The progress endpoint binds to the pod's own address, where the operator reads it.
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(settings.extra_trainer_env.items())]
    if form == "indexed":
        env.append({"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}})
    elif form == "per-rank":
        env.append({"name": "NODE_RANK", "value": str(rank)})
    # Secrets are referenced, never copied (glmops.plan.storage).
    env += credential_env(spec)
    return env


def _volumes(
    meta: JobMeta, spec: FineTuneJobSpec, settings: Settings, dataset_source: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        # The config travels in the pod template's annotation and reaches the trainer as a file:
        # immutable with the Job, and no second object to create, own and clean up.
        {
            "name": "config",
            "downwardAPI": {
                "items": [{"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]
            },
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": settings.config_mount_dir, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    claims: dict[str, bool] = {}  # claim -> read-only
    for field_path, uri, role in _pvc_uris(spec, dataset_source):
        claim = parse_uri(uri, field_path, role).claim
        assert claim is not None
        read_only = field_path != "spec.output.destination"
        claims[claim] = claims.get(claim, True) and read_only
    for index, (claim, read_only) in enumerate(sorted(claims.items())):
        volume = f"pvc-{index}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": volume, "mountPath": pod_path(f"pvc://{claim}", settings.pvc_mount_root), "readOnly": read_only})
    return volumes, mounts


def _trainer_job(
    meta: JobMeta,
    spec: FineTuneJobSpec,
    placement: Placement,
    settings: Settings,
    labels: dict[str, str],
    config: dict[str, Any],
    form: str,
    rank: int | None = None,
) -> dict[str, Any]:
    volumes, mounts = _volumes(meta, spec, settings, str(config["data"]["source"]))
    gpus = str(placement.gpus_per_node)
    cpu = scale_quantity(settings.cpu_per_gpu, placement.gpus_per_node)
    memory = scale_quantity(settings.memory_per_gpu, placement.gpus_per_node)
    container = {
        "name": "trainer",
        "image": settings.trainer_image,
        "command": _trainer_command(meta, placement, f"{settings.config_mount_dir}/{CONFIG_FILE}", form),
        "env": _env(meta, spec, settings, form, rank),
        "resources": {
            "requests": {"cpu": cpu, "memory": memory, GPU_RESOURCE: gpus},
            "limits": {"memory": memory, GPU_RESOURCE: gpus},
        },
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    ports: list[dict[str, Any]] = [{"name": METRICS_PORT_NAME, "containerPort": settings.trainer_metrics_port}]
    if form != "single":
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT})
    container["ports"] = ports
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the trainer never talks to the API
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "affinity": _affinity(meta, spec, placement),
        "tolerations": gpu_tolerations(spec.resources.tolerations),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    apply_pod_template(pod_spec, spec)
    name = names.trainer_job_name(meta.name) if rank is None else names.trainer_rank_job_name(meta.name, rank)
    pod_labels = dict(labels)
    job_spec: dict[str, Any] = {
        # Kubernetes replaces a failed pod up to backoffLimit times: maxRetries retries, maxRetries+1 pods.
        "backoffLimit": spec.failure_policy.max_retries,
    }
    if form != "single":
        pod_spec["subdomain"] = names.trainer_service_name(meta.name)
    if form == "indexed":
        # The Job controller gives pod <index> the hostname <job>-<index> and NODE_RANK its index.
        job_spec.update({"completionMode": "Indexed", "completions": placement.nodes, "parallelism": placement.nodes})
    elif form == "per-rank":
        pod_spec["hostname"] = name
        pod_labels[NODE_RANK_LABEL] = str(rank)
    job_spec["template"] = {
        "metadata": pod_metadata(pod_labels, spec, {CONFIG_ANNOTATION: json.dumps(config, indent=2, sort_keys=True)}),
        "spec": pod_spec,
    }
    job_labels = dict(pod_labels)
    if spec.queue_name:
        # Kueue admits the Job by unsuspending it once the queue's quota allows.
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
        job_spec["suspend"] = True
    annotations = {SPEC_SECTIONS_ANNOTATION: json.dumps(spec_section_hashes(spec), sort_keys=True)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": meta.namespace, "labels": job_labels, "annotations": annotations},
        "spec": job_spec,
    }


def pod_metadata(labels: dict[str, str], spec: FineTuneJobSpec, annotations: dict[str, str]) -> dict[str, Any]:
    """A pod template's metadata: the user's extra labels and annotations, then glmops' own (which win)."""
    return {
        "labels": {**spec.pod_template.labels, **labels},
        "annotations": {**spec.pod_template.annotations, **annotations},
    }


def apply_pod_template(pod_spec: dict[str, Any], spec: FineTuneJobSpec) -> None:
    """Add spec.podTemplate's priority class, service account and image pull secrets to a pod spec."""
    template = spec.pod_template
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in template.image_pull_secrets]

"""ModelDeployment -> what to run: validation, sizing, and the Service and Deployment. Pure.

The handler gathers cluster facts (`ServingFacts`: the FineTuneJobs named, which Secrets and
PVCs exist, the GPU nodes) and applies the objects this module returns. A CR field never
reaches a shell: server arguments are argv lists.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from glmops.api.common import API_VERSION
from glmops.api.defaults import VARIANT_DEFAULTS
from glmops.api.finetunejob import Variant
from glmops.api.modeldeployment import (
    KIND,
    ArtifactKind,
    ModelDeploymentSpec,
    Runtime,
    SpeculativeDecoding,
    Strategy,
)
from glmops.conditions import Reason
from glmops.plan.memory import GIB, VARIANT_DIMS
from glmops.plan.placement import (
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
from glmops.plan.serving_download import parse_hub_uri, plan_download
from glmops.plan.serving_memory import (
    GGUF_BITS_PER_WEIGHT,
    MAX_CONTEXT_TOKENS,
    ServingMemory,
    bf16_weight_bytes,
    choose_gpu_count,
    estimate_serving_memory,
    gguf_weight_bytes,
    load_seconds,
    lora_buffer_bytes,
    usable_gib,
    valid_gpu_counts,
)
from glmops.plan.serving_runtime import (
    ALL_LAYERS,
    LLAMACPP_API_KEY_ENV,
    VLLM_API_KEY_ENV,
    VLLM_COMMAND,
    VLLM_EXPERT_PARALLEL,
    LlamaCppArgs,
    VllmArgs,
    first_owned_flag,
    llamacpp_args,
    vllm_args,
    vllm_lora_rank,
)
from glmops.plan.serving_source import ResolvedModel, resolve_source
from glmops.plan.uris import parse_uri, pod_path
from glmops.settings import Settings

MDEP_LABEL = "glmops.io/modeldeployment"
ARTIFACT_ANNOTATION = "glmops.io/served-artifact"
"""Pod-template annotation: the artifact (uri, sha256) the pods of that version serve."""
API_KEY_SECRET_KEY = "api-key"
SCRATCH_DIR = "/scratch"
CONTAINER = "server"
PORT_NAME = "http"
DEFAULT_SLOTS = {Runtime.llamacpp: 4, Runtime.vllm: 8}
VLLM_NO_TELEMETRY_ENV = ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")
"""Set to 1 in vLLM pods: either one stops vLLM's usage reporting (vllm.usage.usage_lib)."""
PRESTOP_SLEEP_SECONDS = 10
"""A terminating pod keeps serving this long while Endpoints and kube-proxy drop it (no failed requests)."""
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class DeploymentMeta:
    """Identity of the ModelDeployment being planned."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


@dataclass(frozen=True)
class ServingFacts:
    """What the planner needs to know about the cluster; gathered by the handler."""

    jobs: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    """Every FineTuneJob the spec names, as read (None: not found)."""
    downloads: Mapping[str, str] = field(default_factory=dict)
    """Download Job name -> `running`, `succeeded` or `failed: WHY` (glmops.plan.serving_download.download_state)."""
    secrets: frozenset[str] = frozenset()
    pvcs: frozenset[str] = frozenset()
    gpu_nodes: tuple[GpuNode, ...] | None = None  # None: unknown (do not judge placement up front)


@dataclass(frozen=True)
class ServingPlacement:
    """GPUs per replica and what each must have; the KV cache shape."""

    gpus: int
    min_gpu_memory_mib: int
    context_length: int
    parallel_slots: int
    gpu_layers: int

    @property
    def min_gpu_memory_gib(self) -> float:
        """The same in GiB."""
        return self.min_gpu_memory_mib / 1024


@dataclass(frozen=True)
class ServingPlan:
    """Refuse (`problems`), wait (`waits`: a job to finish; `missing`: a PVC or Secret to appear), or run `objects`."""

    problems: tuple[Problem, ...] = ()
    waits: tuple[Problem, ...] = ()
    missing: tuple[Problem, ...] = ()
    model: ResolvedModel | None = None
    memory: ServingMemory | None = None
    placement: ServingPlacement | None = None
    objects: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    setup: tuple[dict[str, Any], ...] = ()
    """Created once when absent, also while waiting: the cache claim and download Job of an hf:// model."""
    mtp: bool = False
    """Whether the vLLM replicas draft tokens with the model's MTP layer."""

    @property
    def runnable(self) -> bool:
        """Whether the objects can be applied."""
        return not (self.problems or self.waits or self.missing) and bool(self.objects)


def endpoint(meta: DeploymentMeta, settings: Settings) -> str:
    """The OpenAI-compatible base URL clients in the cluster use."""
    return f"http://{meta.name}.{meta.namespace}.svc:{settings.serving_service_port}/v1"


def selector(meta: DeploymentMeta) -> str:
    """The serving pods' label selector, as the scale subresource reports it."""
    return f"{MDEP_LABEL}={meta.name}"


def plan_serving(meta: DeploymentMeta, spec: ModelDeploymentSpec, facts: ServingFacts, settings: Settings) -> ServingPlan:
    """Check the deployment against its sources and the cluster and, when it can run, build its objects."""
    problems = validate_spec(meta, spec)
    resolution = resolve_source(spec, meta.namespace, facts.jobs)
    problems += list(resolution.problems)
    missing = _missing_references(meta, spec, resolution.model, facts)
    if problems or resolution.waits or resolution.model is None:
        return ServingPlan(tuple(problems), resolution.waits, tuple(missing), resolution.model, notes=resolution.notes)
    model = resolution.model
    mtp = choose_mtp(spec, model)
    if mtp.problem is not None:
        problems.append(mtp.problem)
    notes = resolution.notes + ((mtp.note,) if mtp.note else ())
    memory, placement, sizing_problems = size_replica(spec, model, settings, mtp.enabled)
    problems += sizing_problems
    problems += _placement_problems(spec, placement, facts)
    if problems or missing:
        return ServingPlan(tuple(problems), (), tuple(missing), model, memory, placement, notes=notes, mtp=mtp.enabled)
    setup: tuple[dict[str, Any], ...] = ()
    if parse_uri(model.uri).scheme == "hf":
        hub = parse_hub_uri(model.uri)
        assert not isinstance(hub, str), "validated by resolve_source"
        download = plan_download(
            meta.name, meta.namespace, meta.uid, model.uri, hub, weights(model, mtp.enabled)[0], spec.source.credentials_secret,
            settings,
        )  # fmt: skip
        setup = download.objects
        state = facts.downloads.get(download.job)
        where = "spec.source.uri" if spec.source.uri else "spec.source.fineTuneJob"
        if state is None or state == "running":
            wait = Problem(
                Reason.model_downloading,
                where,
                f"{model.uri} is being downloaded once into PersistentVolumeClaim {download.claim} by Job {download.job}; "
                "the replicas start when it is complete",
            )
            return ServingPlan((), (wait,), (), model, memory, placement, notes=notes, setup=setup, mtp=mtp.enabled)
        if state.startswith("failed"):
            failed = Problem(
                Reason.model_download_failed,
                where,
                f"the download of {model.uri} (Job {download.job}) {state}; check the repository, revision and file, and "
                "spec.source.credentialsSecret for gated models (kubectl logs job/" + download.job + ")",
            )
            return ServingPlan((failed,), (), (), model, memory, placement, notes=notes, setup=setup, mtp=mtp.enabled)
        model = replace(model, uri=download.local_uri, origin=model.uri)
    objects = (
        *setup,
        build_service(meta, settings),
        build_deployment(meta, spec, model, memory, placement, settings, mtp.enabled),
    )
    return ServingPlan((), (), (), model, memory, placement, objects, notes, setup, mtp.enabled)


@dataclass(frozen=True)
class MtpChoice:
    """Whether vLLM drafts with the model's MTP layer; a refusal or a note for the Resolved condition."""

    enabled: bool
    problem: Problem | None = None
    note: str = ""


def choose_mtp(spec: ModelDeploymentSpec, model: ResolvedModel) -> MtpChoice:
    """MTP speculative decoding: on by default when the merged checkpoint recorded its MTP layer.

    `speculativeDecoding: none` turns it off; `mtp` asks for it, which is refused when the export
    recorded that the checkpoint has no MTP layer and allowed (with a warning) when nothing was
    recorded (a uri source, an adapter's base, a job exported before the record existed).
    """
    if spec.runtime is not Runtime.vllm or spec.speculative_decoding is SpeculativeDecoding.none:
        return MtpChoice(False)  # llama.cpp with mtp is refused by validate_spec
    recorded = model.mtp_layers if model.kind is ArtifactKind.merged else None
    kept = (
        f"MTP speculative decoding on: FineTuneJob {model.job}'s merged checkpoint kept {recorded} MTP layer(s) "
        "(set speculativeDecoding: none to turn it off)"
    )
    if spec.speculative_decoding is None:
        return MtpChoice(True, note=kept) if recorded else MtpChoice(False)
    if recorded == 0:
        return MtpChoice(
            False,
            Problem(
                Reason.mtp_layer_missing,
                "spec.speculativeDecoding",
                f"FineTuneJob {model.job}'s merged checkpoint has no MTP layer (its export recorded mtpLayers: 0: the "
                "base checkpoint had none), and vLLM drafts with that layer; remove the field or set it to none",
            ),
        )
    if recorded is None:
        return MtpChoice(
            True,
            note=(
                "MTP speculative decoding needs the checkpoint's MTP layer, and nothing records whether this one has "
                "it: a checkpoint without it fails to start (see Degraded)"
            ),
        )
    return MtpChoice(True, note=kept)


# --- validation that needs no cluster ---------------------------------------------------------


def validate_spec(meta: DeploymentMeta, spec: ModelDeploymentSpec) -> list[Problem]:
    """What the schema cannot check and no FineTuneJob decides."""
    problems: list[Problem] = []
    if len(meta.name) > 63 or not _DNS_1035.match(meta.name):
        problems.append(
            Problem(
                Reason.invalid_name,
                "metadata.name",
                f"{meta.name!r} also names the Service and the pods' label, so it must be a DNS-1035 label (at most 63 "
                "lower-case letters, digits and '-', starting with a letter); recreate it under such a name",
            )
        )
    owned = first_owned_flag(spec.extra_args, spec.runtime.value)
    if owned is not None:
        index, _argument, flag = owned
        problems.append(
            Problem(
                Reason.extra_arg_owned,
                f"spec.extraArgs[{index}]",
                # The argument's value is not repeated: it could be a credential (--api-key=...).
                f"this argument sets {flag}, which glmops sets from the spec (model, names, host, port, sizes, API key, "
                "parsers); use the spec's own field instead and remove it from extraArgs",
            )
        )
    if spec.runtime is Runtime.vllm:
        if spec.gpu_layers is not None:
            problems.append(
                Problem(Reason.field_not_for_runtime, "spec.gpuLayers", "gpuLayers is for llama.cpp; vLLM keeps all layers on its GPUs: remove it")
            )
        if spec.gpus_per_replica == 0:
            problems.append(
                Problem(
                    Reason.field_not_for_runtime,
                    "spec.gpusPerReplica",
                    "vLLM serves on GPUs; set gpusPerReplica >= 1, or runtime: llamacpp with a GGUF to serve on CPU",
                )
            )
        has_adapters = bool(spec.adapters) or spec.source.artifact is ArtifactKind.adapter
        ep = next((i for i, a in enumerate(spec.extra_args) if a.split("=", 1)[0] in VLLM_EXPERT_PARALLEL), None)
        if has_adapters and ep is not None:
            problems.append(
                Problem(
                    Reason.extra_arg_owned,
                    f"spec.extraArgs[{ep}]",
                    "vLLM's fused-MoE LoRA does not work with expert parallelism; remove it (adapters run with tensor "
                    "parallelism over gpusPerReplica)",
                )
            )
    elif spec.speculative_decoding is SpeculativeDecoding.mtp:
        problems.append(
            Problem(
                Reason.field_not_for_runtime,
                "spec.speculativeDecoding",
                "MTP speculative decoding is a vLLM feature here; remove it or set runtime: vllm",
            )
        )
    if spec.gpus_per_replica == 0 and spec.gpu_layers:
        problems.append(
            Problem(
                Reason.field_not_for_runtime,
                "spec.gpuLayers",
                "gpusPerReplica is 0 (CPU serving), so no layer can be offloaded; remove gpuLayers or give the replica GPUs",
            )
        )
    return problems


def _missing_references(
    meta: DeploymentMeta, spec: ModelDeploymentSpec, model: ResolvedModel | None, facts: ServingFacts
) -> list[Problem]:
    """PVCs and Secrets that do not exist (yet): the deployment waits for them."""
    missing: list[Problem] = []
    if spec.api_key_secret and spec.api_key_secret not in facts.secrets:
        missing.append(
            Problem(
                Reason.secret_not_found,
                "spec.apiKeySecret",
                f"Secret {spec.api_key_secret!r} does not exist in namespace {meta.namespace}; create it with key "
                f"{API_KEY_SECRET_KEY!r} (kubectl create secret generic {spec.api_key_secret} "
                f"--from-literal={API_KEY_SECRET_KEY}=...) or remove the field",
            )
        )
    token = spec.source.credentials_secret
    if token and token not in facts.secrets:
        missing.append(
            Problem(
                Reason.secret_not_found,
                "spec.source.credentialsSecret",
                f"Secret {token!r} does not exist in namespace {meta.namespace}; create it with key HF_TOKEN "
                f"(kubectl create secret generic {token} --from-literal=HF_TOKEN=...) or remove the field",
            )
        )
    if model is None:
        return missing
    for where, uri in model_uris(spec, model):
        claim = parse_uri(uri).claim
        if claim and claim not in facts.pvcs:
            missing.append(
                Problem(
                    Reason.pvc_not_found,
                    where,
                    f"PersistentVolumeClaim {claim!r} (holding {uri}) does not exist in namespace {meta.namespace}; create "
                    "it, or serve from an existing claim",
                )
            )
    return missing


def model_uris(spec: ModelDeploymentSpec, model: ResolvedModel) -> list[tuple[str, str]]:
    """Every location the replicas read, with the field it comes from."""
    source = "spec.source.uri" if spec.source.uri else "spec.source.fineTuneJob"
    uris = [(source, model.uri)]
    for adapter in model.adapters:
        index = next((i for i, a in enumerate(spec.adapters) if a.served_model_name == adapter.name), None)
        where = f"spec.adapters[{index}].fineTuneJob" if index is not None else "spec.source.fineTuneJob"
        uris.append((where, adapter.uri))
    return uris


# --- sizing -----------------------------------------------------------------------------------


def weights(model: ResolvedModel, mtp: bool) -> tuple[float, str]:
    """Bytes of weights one replica loads (`mtp`: with the MTP layer), and where the figure comes from."""
    dims = VARIANT_DIMS[model.variant]
    if model.kind is ArtifactKind.gguf:
        if model.size_bytes:
            return float(model.size_bytes), "the GGUF's recorded size"
        quantization = model.quantization or "Q8_0"
        assumed = "" if model.quantization else " (quantization unknown: assumed Q8_0, the largest)"
        return gguf_weight_bytes(dims, quantization), (
            f"{quantization} at {GGUF_BITS_PER_WEIGHT[quantization]} bits per weight{assumed}"
        )
    if model.kind is ArtifactKind.merged and model.size_bytes:
        # What the export wrote (MTP layer included when kept): exact, and right for any dtype.
        return float(model.size_bytes), "the merged checkpoint's recorded size"
    return bf16_weight_bytes(dims, with_mtp=mtp), "bf16 weights" + (" with the MTP layer" if mtp else "")


def size_replica(
    spec: ModelDeploymentSpec, model: ResolvedModel, settings: Settings, mtp: bool = False
) -> tuple[ServingMemory, ServingPlacement, list[Problem]]:
    """Memory, GPUs and GPU class of one replica; problems when the spec's own numbers cannot work."""
    problems: list[Problem] = []
    variant = model.variant
    runtime = spec.runtime.value
    dims = VARIANT_DIMS[variant]
    max_context = MAX_CONTEXT_TOKENS[variant]
    if spec.context_length > max_context:
        problems.append(
            Problem(
                Reason.context_too_long,
                "spec.contextLength",
                f"{spec.context_length} tokens is beyond what {dims.name} supports ({max_context}); lower contextLength",
            )
        )
    context = min(spec.context_length, max_context)
    slots = spec.parallel_slots or DEFAULT_SLOTS[spec.runtime]
    weight_bytes, weights_from = weights(model, mtp)
    lora_bytes = 0.0
    if model.adapters:
        rank = vllm_lora_rank(model.adapters)
        assert rank is not None, "the API caps LoRA ranks at 512, vLLM's largest --max-lora-rank"
        targets = sorted({t for a in model.adapters for t in a.targets})
        lora_bytes = lora_buffer_bytes(dims, rank, targets, len(model.adapters))

    def need_for(gpus: int) -> ServingMemory:
        return estimate_serving_memory(variant, runtime, weight_bytes, context, slots, gpus, lora_bytes, weights_from)

    class_gib = spec.gpu_memory_gi_b or VARIANT_DEFAULTS[Variant(variant)].min_gpu_memory_gib
    utilization = settings.vllm_gpu_memory_utilization
    counts = valid_gpu_counts(variant, runtime)
    if spec.gpus_per_replica is not None:
        gpus = spec.gpus_per_replica
        if spec.runtime is Runtime.vllm and gpus and dims.attention.num_heads % gpus:
            problems.append(
                Problem(
                    Reason.tensor_parallel_mismatch,
                    "spec.gpusPerReplica",
                    f"vLLM splits {dims.name}'s {dims.attention.num_heads} attention heads evenly over the GPUs (tensor "
                    f"parallelism); {gpus} does not divide them: use one of {', '.join(map(str, counts))}",
                )
            )
    else:
        gpus = choose_gpu_count(variant, runtime, need_for, class_gib, utilization)
    memory = need_for(gpus)
    need_mib = math.ceil(memory.per_gpu_gib / (utilization if runtime == "vllm" else 1.0) * settings.gpu_memory_headroom * 1024)
    if gpus == 0:
        min_mib = 0
    elif spec.gpu_memory_gi_b is not None:
        min_mib = spec.gpu_memory_gi_b * 1024
        if memory.per_gpu_gib > usable_gib(spec.gpu_memory_gi_b, runtime, utilization):
            problems.append(
                Problem(
                    Reason.gpu_memory_too_small,
                    "spec.gpuMemoryGiB",
                    f"{spec.gpu_memory_gi_b} GiB per GPU cannot hold {memory.per_gpu_gib:.1f} GiB per GPU "
                    f"({_breakdown(memory)}) on {gpus} GPU(s); raise gpuMemoryGiB to at least {math.ceil(need_mib / 1024)}, "
                    "add GPUs (gpusPerReplica), or lower contextLength or parallelSlots",
                )
            )
    else:
        min_mib = max(class_gib * 1024, need_mib)
    gpu_layers = 0 if gpus == 0 else (spec.gpu_layers if spec.gpu_layers is not None else ALL_LAYERS)
    placement = ServingPlacement(gpus, min_mib, context, slots, gpu_layers)
    return memory, placement, problems


def _breakdown(memory: ServingMemory) -> str:
    per = max(memory.gpus, 1)
    return (
        f"weights {memory.weights_gib / per:.1f} GiB, KV cache {memory.kv_cache_gib:.1f} GiB in all, "
        f"overhead {memory.overhead_gib_per_gpu:.1f} GiB"
    )


def _placement_problems(spec: ModelDeploymentSpec, placement: ServingPlacement, facts: ServingFacts) -> list[Problem]:
    if placement.gpus == 0 or facts.gpu_nodes is None:
        return []
    product = spec.placement.gpu_product
    if nodes_that_fit(facts.gpu_nodes, placement.gpus, placement.min_gpu_memory_mib, product):
        return []
    if product and not any(n.product == product for n in facts.gpu_nodes):
        field_path = "spec.placement.gpuProduct"
    elif spec.gpu_memory_gi_b is not None:
        field_path = "spec.gpuMemoryGiB"
    else:
        field_path = "spec.gpusPerReplica"
    return [
        Problem(
            Reason.not_enough_gpus,
            field_path,
            f"no node has {placement.gpus} GPU(s) with >= {placement.min_gpu_memory_gib:.1f} GiB each"
            + (f" of product {product}" if product else "")
            + f"; largest offer: {largest_offer(facts.gpu_nodes)}; lower contextLength or parallelSlots, choose a "
            "smaller quantization, change gpusPerReplica/gpuMemoryGiB, or add such nodes",
        )
    ]


# --- Kubernetes objects -----------------------------------------------------------------------


def labels(meta: DeploymentMeta) -> dict[str, str]:
    """Labels of everything a ModelDeployment owns; the last one selects its pods."""
    return {
        "app.kubernetes.io/name": "glmops-server",
        "app.kubernetes.io/instance": meta.name,
        "app.kubernetes.io/managed-by": "glmops",
        MDEP_LABEL: meta.name,
    }


def _owner(meta: DeploymentMeta) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta.name, "uid": meta.uid, "controller": True, "blockOwnerDeletion": True}


def _metadata(meta: DeploymentMeta) -> dict[str, Any]:
    return {"name": meta.name, "namespace": meta.namespace, "labels": labels(meta), "ownerReferences": [_owner(meta)]}


def build_service(meta: DeploymentMeta, settings: Settings) -> dict[str, Any]:
    """The Service in front of the replicas: the endpoint in status."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(meta),
        "spec": {
            "type": "ClusterIP",
            "selector": {MDEP_LABEL: meta.name},
            "ports": [{"name": PORT_NAME, "port": settings.serving_service_port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def served_artifact_annotation(model: ResolvedModel) -> str:
    """The pod-template annotation naming what this version serves (a download by where it came from)."""
    uri = model.adapters[0].uri if model.kind is ArtifactKind.adapter else (model.origin or model.uri)
    return json.dumps({"uri": uri, "sha256": model.sha256}, sort_keys=True)


def _volumes(model: ResolvedModel, settings: Settings, vllm_shm_gib: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH_DIR}]
    if vllm_shm_gib:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{vllm_shm_gib}Gi"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    claims = sorted({c for c in (parse_uri(u).claim for u in [model.uri, *(a.uri for a in model.adapters)]) if c})
    for index, claim in enumerate(claims):
        # Models are only read: every replica mounts the same claim read-only, nothing is copied per pod.
        name = f"model-{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": pod_path(f"pvc://{claim}", settings.pvc_mount_root), "readOnly": True})
    return volumes, mounts


def _path_in_pod(uri: str, settings: Settings) -> str:
    path = pod_path(uri, settings.pvc_mount_root)
    assert path is not None, "validated: only pvc:// and file:// are served"
    return path


def _probes(startup_budget_s: int, settings: Settings) -> dict[str, Any]:
    def health() -> dict[str, Any]:
        return {"path": "/health", "port": PORT_NAME}

    period = 10
    return {
        # /health answers 503 (llama.cpp) or nothing (vLLM) while the model loads: the startup probe
        # allows the whole load, and liveness only begins after it.
        "startupProbe": {
            "httpGet": health(),
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": max(6, math.ceil(startup_budget_s / period)),
        },
        "readinessProbe": {"httpGet": health(), "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": {"httpGet": health(), "periodSeconds": 15, "timeoutSeconds": 10, "failureThreshold": 4},
    }


def startup_budget_seconds(spec: ModelDeploymentSpec, memory: ServingMemory, settings: Settings) -> int:
    """How long a replica may take to load: reading its weights at the assumed speed plus the server's start-up."""
    fixed = settings.vllm_startup_seconds if spec.runtime is Runtime.vllm else settings.llamacpp_startup_seconds
    return load_seconds(memory.weights_gib * GIB, settings.model_read_mib_per_second, fixed)


def build_deployment(
    meta: DeploymentMeta,
    spec: ModelDeploymentSpec,
    model: ResolvedModel,
    memory: ServingMemory,
    placement: ServingPlacement,
    settings: Settings,
    mtp: bool = False,
) -> dict[str, Any]:
    """The Deployment that runs the replicas, with its rollout strategy (`mtp`: vLLM drafts with the MTP layer)."""
    port = settings.serving_container_port
    gpus = placement.gpus
    shm_gib = settings.vllm_shm_gi_b_per_gpu * gpus if spec.runtime is Runtime.vllm else 0
    volumes, mounts = _volumes(model, settings, shm_gib)
    env: list[dict[str, Any]] = [
        # The root filesystem is read-only; caches and temporary files go to the scratch emptyDir.
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_DIR}/cache"},
    ]
    container: dict[str, Any] = {"name": CONTAINER, "image": ""}
    if spec.runtime is Runtime.llamacpp:
        container["image"] = settings.llamacpp_image
        container["args"] = llamacpp_args(
            LlamaCppArgs(
                model_path=_path_in_pod(model.uri, settings),
                served_name=model.model_name,
                context_length=placement.context_length,
                parallel_slots=placement.parallel_slots,
                gpu_layers=placement.gpu_layers,
                port=port,
                host=settings.serving_listen_host,
                threads=settings.serving_cpu_only_cpus if gpus == 0 else None,
                extra_args=tuple(spec.extra_args),
            )
        )
        key_env = LLAMACPP_API_KEY_ENV
    else:
        container["image"] = settings.vllm_image
        container["command"] = list(VLLM_COMMAND)
        container["args"] = vllm_args(
            VllmArgs(
                model_path=_path_in_pod(model.uri, settings),
                served_name=model.model_name,
                context_length=placement.context_length,
                parallel_slots=placement.parallel_slots,
                tensor_parallel_size=gpus,
                port=port,
                host=settings.serving_listen_host,
                gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                adapters=tuple((a, _path_in_pod(a.uri, settings)) for a in model.adapters),
                mtp=mtp,
                extra_args=tuple(spec.extra_args),
            )
        )
        key_env = VLLM_API_KEY_ENV
        # Models are local paths; never reach for the Hugging Face Hub from a serving pod. And no
        # usage report leaves the cluster: vLLM sends one to its maintainers unless told not to, and
        # serving clusters are often air-gapped.
        env += [
            {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            *({"name": name, "value": "1"} for name in VLLM_NO_TELEMETRY_ENV),
        ]
    if spec.api_key_secret:
        # By reference: the kubelet reads the Secret; the key is in no object glmops writes.
        env.append({"name": key_env, "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret, "key": API_KEY_SECRET_KEY}}})
    if gpus:
        host_gib = settings.serving_memory_per_gpu_gi_b * gpus + shm_gib
        cpu = str(int(settings.serving_cpu_per_gpu) * gpus) if settings.serving_cpu_per_gpu.isdigit() else settings.serving_cpu_per_gpu
        requests = {"cpu": cpu, "memory": f"{host_gib}Gi", GPU_RESOURCE: str(gpus)}
        limits = {"memory": f"{host_gib}Gi", GPU_RESOURCE: str(gpus)}
    else:
        # On CPU the weights and the KV cache live in host memory.
        host_gib = math.ceil(memory.total_gib * 1.1 + 1)
        requests = {"cpu": str(settings.serving_cpu_only_cpus), "memory": f"{host_gib}Gi"}
        limits = {"memory": f"{host_gib}Gi"}
    budget = startup_budget_seconds(spec, memory, settings)
    container.update(
        {
            "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}],
            "env": env,
            "resources": {"requests": requests, "limits": limits},
            "volumeMounts": mounts,
            **_probes(budget, settings),
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
            "securityContext": container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the servers never talk to the API
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_SECONDS + 30,
        "containers": [container],
        "volumes": volumes,
    }
    tolerations = [t.to_wire() for t in spec.placement.tolerations]
    if gpus:
        pod_spec["affinity"] = gpu_node_affinity(placement.min_gpu_memory_mib, gpus, spec.placement.gpu_product)
        tolerations = gpu_tolerations(spec.placement.tolerations)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.placement.node_selector:
        pod_spec["nodeSelector"] = dict(spec.placement.node_selector)
    if spec.strategy is Strategy.surge:
        # One extra pod at a time, never one fewer: a new replica is ready before an old one goes.
        strategy: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    else:
        strategy = {"type": "Recreate"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(meta),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {MDEP_LABEL: meta.name}},
            "strategy": strategy,
            # Longer than the slowest allowed load, so the controller does not call a healthy load stuck.
            "progressDeadlineSeconds": budget + 300,
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": labels(meta), "annotations": {ARTIFACT_ANNOTATION: served_artifact_annotation(model)}},
                "spec": pod_spec,
            },
        },
    }

"""ModelDeployment: serve a fine-tuned GLM-4.7 artifact behind an OpenAI-compatible endpoint.

Fields whose sound value depends on the runtime or the model are optional here; the serving
planner (glmops.plan.serving) resolves them and records what it chose in `status.plan`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from glmops.api.common import Condition, DnsSubdomain, ModelUri, Placement, StatusModel, WireModel
from glmops.api.finetunejob import Quantization, Variant

KIND = "ModelDeployment"
PLURAL = "modeldeployments"

# What clients put in the `model` field. No ',' (llama.cpp splits --alias on it), no '=' (vLLM's
# --lora-modules NAME=PATH) and no spaces; '/', '.' and '_' as in `zai-org/GLM-4.7`.
ServedModelName = Annotated[str, Field(pattern="^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$", max_length=128)]


class Runtime(StrEnum):
    """The inference server."""

    llamacpp = "llamacpp"
    vllm = "vllm"


class ArtifactKind(StrEnum):
    """Which artifact of a FineTuneJob to serve."""

    gguf = "gguf"
    merged = "merged"
    adapter = "adapter"


class Strategy(StrEnum):
    """How a new version replaces the running one."""

    surge = "Surge"
    recreate = "Recreate"


class SpeculativeDecoding(StrEnum):
    """Speculative decoding of the vLLM runtime."""

    none = "none"
    mtp = "mtp"


class DeploymentPhase(StrEnum):
    """A one-word summary for `kubectl get`."""

    pending = "Pending"
    progressing = "Progressing"
    ready = "Ready"
    degraded = "Degraded"
    failed = "Failed"


class ServingSource(WireModel):
    """What to serve: a FineTuneJob's artifact, or a model URI. Exactly one of fineTuneJob and uri."""

    fine_tune_job: DnsSubdomain | None = None
    """Name of a FineTuneJob in the same namespace whose artifact is served; the deployment waits until it has Succeeded."""
    artifact: ArtifactKind | None = None
    """Which artifact: gguf (llama.cpp), merged (vLLM) or adapter (vLLM: the job's base model plus its LoRA adapter). Default: gguf for llamacpp, merged for vllm."""
    quantization: Quantization | None = None
    """GGUF quantization to serve when artifact is gguf; default: the first one the job produced."""
    uri: ModelUri | None = None
    """A model instead of a FineTuneJob: pvc://CLAIM/PATH, file:///PATH, or hf://ORG/NAME[@REVISION][/FILE.gguf] (downloaded once into a claim the replicas share). A path ending in .gguf is a GGUF file (llama.cpp), anything else a Hugging Face checkpoint folder (vLLM)."""
    variant: Variant | None = None
    """With uri: which GLM-4.7 model the files hold (flash or flagship), for sizing and placement. A FineTuneJob says this itself."""
    credentials_secret: DnsSubdomain | None = None
    """For hf:// models: a Secret whose key HF_TOKEN authenticates the download (gated or private repositories); referenced, never copied."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ServingSource:
        if (self.fine_tune_job is None) == (self.uri is None):
            raise ValueError("spec.source: set exactly one of fineTuneJob and uri")
        return self


class AdapterSource(WireModel):
    """One LoRA adapter served beside the base model under its own name (vLLM)."""

    fine_tune_job: DnsSubdomain
    """Name of a Succeeded FineTuneJob in the same namespace whose adapter is served; it must have been trained on the same base model as spec.source."""
    served_model_name: ServedModelName
    """The model name clients put in requests to reach this adapter."""


class ModelDeploymentSpec(WireModel):
    """The desired serving deployment."""

    source: Annotated[
        ServingSource,
        Field(
            json_schema_extra={
                "x-kubernetes-validations": [
                    {"rule": "has(self.fineTuneJob) != has(self.uri)", "message": "set exactly one of fineTuneJob and uri"}
                ]
            }
        ),
    ]
    """What to serve."""
    adapters: Annotated[
        list[AdapterSource],
        Field(
            max_length=16,
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["servedModelName"]},
        ),
    ] = Field(default_factory=list)
    """More LoRA adapters served by the same vLLM replicas (one base, many teams), each under its own name. vLLM only; spec.source is then the base: uri of the base checkpoint, or a FineTuneJob's adapter."""
    runtime: Runtime = Runtime.llamacpp
    """`llamacpp` (GGUF; GPU or CPU) or `vllm` (merged weights or LoRA adapters; GPU)."""
    replicas: Annotated[int, Field(ge=0, le=64)] = 1
    """Serving pods. HPA and KEDA can drive it through the scale subresource."""
    served_model_name: ServedModelName
    """The model name clients put in requests (the `model` field of the OpenAI API), e.g. `payments-coder` or `zai-org/GLM-4.7`."""
    strategy: Strategy = Strategy.surge
    """`Surge`: a new pod becomes ready before an old one goes (no request fails; needs room for one more pod). `Recreate`: old pods stop first (for clusters without a spare GPU node)."""
    context_length: Annotated[int, Field(ge=512, le=262144)] = 32768
    """Maximum tokens per request (prompt + answer); every slot gets this much KV cache."""
    parallel_slots: Annotated[int, Field(ge=1, le=256)] | None = None
    """Requests one replica works on at once (llama.cpp --parallel, vLLM --max-num-seqs). Default: llamacpp 4, vllm 16."""
    gpu_layers: Annotated[int, Field(ge=0, le=999)] | None = None
    """llama.cpp only: layers offloaded to the GPUs. Default: all of them when the replica has GPUs, none otherwise."""
    gpus_per_replica: Annotated[int, Field(ge=0, le=8)] | None = None
    """GPUs per serving pod (vLLM: the tensor-parallel size). Default: the fewest that hold the serving memory estimate. 0 runs llama.cpp on CPU."""
    gpu_memory_gi_b: Annotated[int, Field(ge=8, le=1024)] | None = None
    """Minimum memory per GPU in GiB, matched against the node label `nvidia.com/gpu.memory`. Default: the estimate's per-GPU need, at least 44 (48 GB class) for flash and 75 (80 GB class) for flagship."""
    speculative_decoding: SpeculativeDecoding | None = None
    """vLLM only: `mtp` drafts one token per step with the model's own MTP layer; `none` turns it off. Default: mtp when the FineTuneJob's merged artifact recorded MTP layers (status.artifacts.merged.mtpLayers), none otherwise."""
    placement: Placement = Field(default_factory=Placement)
    """Extra node selection and tolerations for serving pods."""
    api_key_secret: DnsSubdomain | None = None
    """Secret in the same namespace with key `api-key`: clients must send it as a bearer token. It reaches the server as an environment variable and is never copied into status, events or logs."""
    extra_args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=64)] = Field(default_factory=list)
    """Extra server arguments, each a separate argv entry (never through a shell). Flags glmops sets itself (model, host, port, API key, names, sizes) are refused."""


class ServedArtifact(StatusModel):
    """The artifact that the ready replicas serve."""

    uri: str
    """Its location."""
    sha256: str | None = None
    """Its SHA-256, as the export recorded it."""


class ServingPlanStatus(StatusModel):
    """What the operator decided to run, from the serving memory estimate."""

    gpus_per_replica: int
    """GPUs per pod."""
    min_gpu_memory_gi_b: float
    """The per-GPU memory in GiB the pods ask for via node affinity."""
    memory_gi_b: float
    """Estimated memory of one replica in GiB: weights, KV cache and runtime overhead."""
    weights_gi_b: float
    """Of which weights."""
    kv_cache_gi_b: float
    """Of which KV cache (contextLength x parallelSlots)."""
    context_length: int
    """Tokens per request."""
    parallel_slots: int
    """Requests per replica at once."""
    speculative_decoding: SpeculativeDecoding | None = None
    """vLLM: `mtp` when the replicas draft tokens with the model's MTP layer, `none` when they do not."""


class ModelDeploymentStatus(StatusModel):
    """Observed state, written by the operator only."""

    phase: DeploymentPhase | None = None
    """Pending, Progressing, Ready, Degraded or Failed."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations: `Ready` (top level), `Progressing`, `Degraded` and `Resolved` (the artifact)."""
    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
    endpoint: str | None = None
    """OpenAI-compatible base URL, e.g. http://NAME.NAMESPACE.svc:8000/v1 (the Anthropic Messages API is under the same root)."""
    replicas: Annotated[int, Field(ge=0)] = 0
    """Serving pods that exist, of every version (the scale subresource reads it)."""
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Serving pods that pass their readiness probe."""
    ready: str | None = None
    """Ready replicas over desired, e.g. `2/2`, for `kubectl get`."""
    selector: str | None = None
    """Label selector of the serving pods (the scale subresource gives it to HPA)."""
    served_artifact: ServedArtifact | None = None
    """What the ready replicas serve (the newest version that has ready replicas)."""
    served_models: list[str] = Field(default_factory=list)
    """Model names the endpoint answers to: servedModelName, then each adapter's."""
    plan: ServingPlanStatus | None = None
    """Resources chosen from the serving memory estimate."""
    last_handled_configuration: str | None = Field(default=None, exclude=True)
    """The spec the operator last acted on (JSON), kept by kopf to notice changes made while it was down."""


class ModelDeployment(WireModel):
    """A ModelDeployment as stored by the apiserver."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = "glmops.io/v1alpha1"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

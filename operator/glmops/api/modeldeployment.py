"""ModelDeployment: serve a fine-tuned GLM-4.7 artifact behind an OpenAI-compatible endpoint."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from glmops.api.common import Condition, DnsLabel, DnsSubdomain, ModelUri, Placement, StatusModel, WireModel
from glmops.api.finetunejob import Quantization

KIND = "ModelDeployment"
PLURAL = "modeldeployments"


class Runtime(StrEnum):
    """The inference server."""

    llamacpp = "llamacpp"
    vllm = "vllm"


class ArtifactKind(StrEnum):
    """Which artifact of a FineTuneJob to serve."""

    gguf = "gguf"
    merged = "merged"
    adapter = "adapter"


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
    """Name of a FineTuneJob in the same namespace whose artifact is served."""
    artifact: ArtifactKind = ArtifactKind.gguf
    """Which of the job's artifacts: gguf (llama.cpp), merged (vLLM) or adapter (vLLM, not with routed-expert LoRA)."""
    quantization: Quantization | None = None
    """GGUF quantization to serve when artifact is gguf; default: the first one the job produced."""
    uri: ModelUri | None = None
    """A model location instead of a FineTuneJob: pvc://CLAIM/PATH, s3://…, hf://… or file:///PATH."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ServingSource:
        if (self.fine_tune_job is None) == (self.uri is None):
            raise ValueError("spec.source: set exactly one of fineTuneJob and uri")
        return self


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
    runtime: Runtime = Runtime.llamacpp
    """`llamacpp` (GGUF, CPU or GPU) or `vllm` (merged weights or adapters, GPU)."""
    replicas: Annotated[int, Field(ge=0, le=64)] = 1
    """Serving pods; rolled out one at a time without downtime."""
    served_model_name: DnsLabel
    """The model name clients put in requests (the `model` field of the OpenAI API)."""
    context_length: Annotated[int, Field(ge=512, le=262144)] = 32768
    """Maximum context in tokens per request."""
    gpus_per_replica: Annotated[int, Field(ge=0, le=16)] | None = None
    """GPUs per serving pod. Default: vllm 1 (flash) or 8 (flagship); llamacpp 0 (CPU) unless set."""
    placement: Placement = Field(default_factory=Placement)
    """Extra node selection and tolerations for serving pods."""
    api_key_secret: DnsSubdomain | None = None
    """Secret with key `api-key` that clients must send as a bearer token; never copied into status."""
    extra_args: Annotated[list[str], Field(max_length=64)] = Field(default_factory=list)
    """Extra command-line arguments for the server, passed as separate argv entries (never through a shell)."""


class ServedArtifact(StatusModel):
    """The artifact that the ready replicas serve."""

    uri: str
    """Its location."""
    sha256: str | None = None
    """Its SHA-256."""


class ModelDeploymentStatus(StatusModel):
    """Observed state, written by the operator only."""

    phase: DeploymentPhase | None = None
    """Pending, Progressing, Ready, Degraded or Failed."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations; `Ready` is the top-level one."""
    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
    endpoint: str | None = None
    """OpenAI-compatible base URL, e.g. http://NAME.NAMESPACE.svc:8000/v1."""
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Serving pods that pass their readiness probe."""
    ready: str | None = None
    """Ready replicas over desired, e.g. `2/2`, for `kubectl get`."""
    served_artifact: ServedArtifact | None = None
    """What the ready replicas serve."""


class ModelDeployment(WireModel):
    """A ModelDeployment as stored by the apiserver."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = "glmops.io/v1alpha1"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

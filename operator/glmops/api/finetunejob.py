"""FineTuneJob: QLoRA/LoRA fine-tuning of GLM-4.7 or GLM-4.7-Flash on agentic conversations.

Fields whose sound value depends on the model variant are optional here; `resolve_defaults`
(glmops.api.defaults) fills them per variant, so the CRD stays honest about what the user set.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, JsonValue

from glmops.api.common import (
    LABEL_KEYS_RULE,
    Condition,
    DnsLabel,
    DnsSubdomain,
    LabelValue,
    ModelUri,
    OutputUri,
    Placement,
    StatusModel,
    TrainingDatasetUri,
    WireModel,
)
from glmops.contract.config import (
    CheckpointEvery,
    DataFormat,
    Epochs,
    ErrorFraction,
    LoraDropout,
    LoraRank,
    LoraTarget,
    MaxSteps,
    Method,
    OutputFormat,
    Quantization,
    Thinking,
    ValidationSplit,
    Variant,
)

# The enums shared with the trainer's config are defined in glmops.contract.config.
__all__ = ["DataFormat", "LoraTarget", "Method", "OutputFormat", "Quantization", "Thinking", "Variant"]

KIND = "FineTuneJob"
PLURAL = "finetunejobs"


class Phase(StrEnum):
    """A one-word summary of where the job is, for `kubectl get`."""

    pending = "Pending"
    validating = "Validating"
    training = "Training"
    exporting = "Exporting"
    succeeded = "Succeeded"
    failed = "Failed"
    cancelled = "Cancelled"


EndpointUrl = Annotated[
    str,
    Field(pattern="^https?://[^\\s/?#]+(/[^\\s?#]*)?$", max_length=512, examples=["http://minio.storage.svc:9000"]),
]


class ModelSpec(WireModel):
    """The base model to fine-tune."""

    variant: Variant
    """`flash` (GLM-4.7-Flash, 30B-A3B, one 48-80 GB GPU) or `flagship` (GLM-4.7, ~355B MoE, 8 large GPUs)."""
    source: ModelUri
    """Where the weights are: hf://ORG/NAME[@REVISION][/PATH] (a folder of a Hub repository with `/PATH`; a branch with '/' written as %2F), s3://BUCKET/PREFIX, pvc://CLAIM/PATH or file:///PATH."""
    credentials_secret: DnsSubdomain | None = None
    """Name of a Secret in the job's namespace whose keys (HF_TOKEN; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION) the trainer reads for the model; referenced, never copied."""
    endpoint_url: EndpointUrl | None = None
    """For s3:// on an S3-compatible store (MinIO, Ceph RGW): its URL, e.g. http://minio.storage.svc:9000."""


class DatasetSpec(WireModel):
    """The training data."""

    source: TrainingDatasetUri
    """Training file (JSONL or JSON): pvc://CLAIM/PATH, s3://BUCKET/KEY, hf://datasets/ORG/NAME[@REVISION]/PATH or file:///PATH; or synthetic://NAME, the output of a SyntheticDataset in the same namespace (the job waits until it is Ready)."""
    credentials_secret: DnsSubdomain | None = None
    """Name of a Secret in the job's namespace with the keys for the dataset's store (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION; HF_TOKEN for private hf:// datasets); referenced, never copied."""
    endpoint_url: EndpointUrl | None = None
    """For s3:// on an S3-compatible store (MinIO, Ceph RGW): its URL, e.g. http://minio.storage.svc:9000."""
    format: DataFormat = DataFormat.auto
    """Sample layout; `auto` detects openai-chat, sharegpt, alpaca or text from the first records."""
    thinking: Thinking = Thinking.preserve
    """`preserve` keeps every assistant turn's reasoning (Preserved Thinking); `strip` drops it."""
    validation_split: ValidationSplit = 0.05
    """Share of samples held out to compute the eval loss (0 <= split <= 0.5; 0 disables evaluation)."""
    max_error_fraction: ErrorFraction = 0.05
    """The job fails before loading the model when more than this share of samples is invalid."""


class LoraSpec(WireModel):
    """LoRA hyper-parameters; unset fields take the variant's default."""

    rank: LoraRank | None = None
    """LoRA rank r (1-512). Default 16."""
    alpha: Annotated[float, Field(gt=0, le=4096)] | None = None
    """LoRA alpha; updates are scaled by alpha/rank. Default 2 x rank."""
    dropout: LoraDropout | None = None
    """Dropout on the LoRA input (0 <= dropout < 1). Default 0.05."""
    targets: Annotated[list[LoraTarget], Field(min_length=1, json_schema_extra={"uniqueItems": True})] | None = None
    """Module groups that get adapters: attention, dense_mlp, shared_experts, experts (routed). Default: flash [attention, shared_experts, experts]; flagship [attention, shared_experts]."""


class TrainingSpec(WireModel):
    """How to train; unset fields take the variant's default. Immutable once the job exists."""

    method: Method | None = None
    """`qlora` (4-bit NF4 base incl. routed experts) or `lora` (bf16 base). Default qlora."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """LoRA hyper-parameters."""
    epochs: Epochs | None = None
    """Passes over the training data. Default 2."""
    max_steps: MaxSteps | None = None
    """Stop after this many optimizer steps; overrides epochs when set."""
    learning_rate: Annotated[float, Field(gt=0, le=0.1)] | None = None
    """Peak learning rate (0 < lr <= 0.1). Default flash 2e-4, flagship 1e-4."""
    sequence_length: Annotated[int, Field(ge=128, le=131072)] | None = None
    """Tokens per packed training sequence; longer samples are reported as data errors. Default 8192."""
    micro_batch_size: Annotated[int, Field(ge=1, le=64)] | None = None
    """Sequences per GPU per forward pass. Default 1."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Micro-batches per optimizer step. Default flash 8, flagship 4."""
    checkpoint_every: CheckpointEvery | None = None
    """Save a resumable checkpoint every this many steps; a restarted pod resumes from the newest. Default 200."""
    packing: bool = True
    """Pack samples into full sequences without cross-sample attention instead of padding."""
    seed: int = 42
    """Random seed for shuffling and LoRA initialisation."""


class Resources(Placement):
    """GPUs and placement; unset fields take the variant's default."""

    gpus_per_node: Annotated[int, Field(ge=1, le=16)] | None = None
    """GPUs per pod (`nvidia.com/gpu`). Default flash 1, flagship 8."""
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    """Pods (nodes) in the run; more than 1 runs torchrun over an Indexed Job and a headless Service."""
    gpu_memory_gi_b: Annotated[int, Field(ge=8, le=1024)] | None = None
    """Minimum memory per GPU in GiB, matched against the node label `nvidia.com/gpu.memory`. Default: the memory plan's per-GPU need plus 5% headroom, at least 44 (48 GB class) for flash and 75 (80 GB class) for flagship."""


class OutputSpec(WireModel):
    """What to produce and where."""

    destination: OutputUri
    """Where checkpoints and artifacts go: pvc://CLAIM/PATH, s3://BUCKET/PREFIX or file:///PATH. Immutable once the job exists."""
    formats: Annotated[list[OutputFormat], Field(min_length=1, json_schema_extra={"uniqueItems": True})] = Field(
        default_factory=lambda: [OutputFormat.adapter, OutputFormat.merged, OutputFormat.gguf]
    )
    """Artifacts to produce: adapter, merged (full weights), gguf (for llama.cpp and Ollama)."""
    quantizations: Annotated[list[Quantization], Field(json_schema_extra={"uniqueItems": True})] = Field(
        default_factory=lambda: [Quantization.Q4_K_M]
    )
    """GGUF quantizations when `gguf` is among the formats: Q3_K_M, Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0."""
    credentials_secret: DnsSubdomain | None = None
    """Name of a Secret in the job's namespace with the keys for an s3:// destination (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION); referenced, never copied."""
    endpoint_url: EndpointUrl | None = None
    """For s3:// on an S3-compatible store (MinIO, Ceph RGW): its URL, e.g. http://minio.storage.svc:9000."""


class PodTemplate(WireModel):
    """What glmops adds to every pod it creates for this job (trainer and export)."""

    priority_class_name: DnsSubdomain | None = None
    """PriorityClass of the pods (e.g. to let training preempt batch work, or be preempted by serving)."""
    service_account_name: DnsSubdomain | None = None
    """ServiceAccount the pods run as (image pulls, workload identity); its API token is still not mounted."""
    image_pull_secrets: Annotated[list[DnsSubdomain], Field(max_length=16, json_schema_extra={"uniqueItems": True})] = Field(
        default_factory=list
    )
    """Names of Secrets in the job's namespace used to pull the trainer image."""
    labels: Annotated[
        dict[str, LabelValue], Field(max_length=32, json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})
    ] = Field(default_factory=dict)
    """Extra pod labels (e.g. cost centre); keys under glmops.io/ and the app.kubernetes.io/ keys glmops sets are refused."""
    annotations: Annotated[
        dict[str, Annotated[str, Field(max_length=4096)]],
        Field(max_length=32, json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]}),
    ] = Field(default_factory=dict)
    """Extra pod annotations (e.g. for a service mesh or a log shipper); keys under glmops.io/ are refused."""


class FailurePolicy(WireModel):
    """What happens when the trainer pod fails."""

    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    """Times a failed trainer pod is replaced (resuming from its last checkpoint) before the job fails; the Job controller backs off exponentially between tries."""


# A transition rule (it reads oldSelf): it runs on updates only.
_IMMUTABLE = [{"rule": "self == oldSelf", "message": "is immutable once the FineTuneJob exists; create a new FineTuneJob instead"}]

# `self == oldSelf` on a field runs only when the old object has the field too: an optional
# section left out at creation could be added later unchecked. These rules, on the parent, close
# that gap for the optional immutable sections.
_NOT_ADDED_LATER: list[JsonValue] = [
    {
        "rule": f"has(self.{section}) == has(oldSelf.{section})",
        "message": "is immutable once the FineTuneJob exists and cannot be added or removed later; create a new FineTuneJob instead",
        "fieldPath": f".{section}",
    }
    for section in ("training", "resources")
]

SPEC_RULES: list[JsonValue] = [
    *_NOT_ADDED_LATER,
    {
        # Each pod stages an s3:// output in its own scratch volume; several nodes would each hold a
        # part of every checkpoint. Multi-node runs write to a shared (ReadWriteMany) claim.
        "rule": "!self.output.destination.startsWith('s3://') || !has(self.resources) || self.resources.nodes == 1",
        "message": "an s3:// output.destination needs resources.nodes: 1; multi-node runs write to a ReadWriteMany pvc://",
        "fieldPath": ".output.destination",
    },
]


class FineTuneJobSpec(WireModel):
    """The desired fine-tuning run."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})

    model: Annotated[ModelSpec, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})]
    """The base model."""
    dataset: Annotated[DatasetSpec, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})]
    """The training data."""
    training: Annotated[TrainingSpec, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})] = Field(
        default_factory=TrainingSpec
    )
    """Training hyper-parameters; immutable once the job exists."""
    resources: Annotated[Resources, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})] = Field(
        default_factory=Resources
    )
    """GPUs and placement; immutable once the job exists."""
    output: Annotated[OutputSpec, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})]
    """Artifacts and where they go; immutable once the job exists."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Retries of a failed trainer pod."""
    queue_name: DnsLabel | None = None
    """Kueue LocalQueue to submit the trainer Job to (label `kueue.x-k8s.io/queue-name`; the Job is created suspended and Kueue admits it)."""
    pod_template: PodTemplate = Field(default_factory=PodTemplate)
    """Priority class, service account, image pull secrets, labels and annotations of the job's pods."""
    cancel: bool = False
    """Set to true to stop the job for good: its trainer Job and pods are deleted and it ends Cancelled. Checkpoints and artifacts already written stay at the output destination."""


class Progress(StatusModel):
    """The trainer's latest progress report."""

    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps done."""
    total_steps: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps planned."""
    percent: Annotated[int, Field(ge=0, le=100)] = 0
    """step / totalSteps in percent."""
    epoch: float | None = None
    """Fractional epoch."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest evaluation loss."""
    learning_rate: float | None = None
    """Current learning rate."""
    tokens_per_second: float | None = None
    """Training throughput in real (non-padding) tokens per second."""
    eta_seconds: Annotated[int, Field(ge=0)] | None = None
    """Estimated seconds until training ends."""
    updated_at: datetime | None = None
    """When the trainer emitted this report."""


class Plan(StatusModel):
    """What the operator decided to run, from the memory plan."""

    gpu_memory_gi_b_per_gpu: float
    """Estimated GPU memory per GPU in GiB."""
    nodes: int
    """Pods in the run."""
    gpus_per_node: int
    """GPUs per pod."""
    min_gpu_memory_gi_b: float
    """The per-GPU memory in GiB the pods ask for via node affinity."""


class ArtifactRef(StatusModel):
    """One file or directory that the job produced."""

    uri: str
    """Where the artifact is."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size in bytes."""
    sha256: str | None = None
    """SHA-256 of the file (for directories: of their manifest entry)."""


class GgufArtifact(ArtifactRef):
    """One GGUF file."""

    quantization: Quantization
    """Its quantization type."""


class MergedArtifact(ArtifactRef):
    """The merged checkpoint folder."""

    mtp_layers: Annotated[int, Field(ge=0)] | None = None
    """MTP (next-token prediction) layers the merged checkpoint kept: with one or more, vLLM serves it with MTP speculative decoding unless the ModelDeployment turns it off. Absent when the export did not record it."""


class Artifacts(StatusModel):
    """What the job produced, read from the trainer's artifacts.json."""

    manifest: str | None = None
    """URI of artifacts.json, written last: when it exists, every file it names is complete."""
    adapter: ArtifactRef | None = None
    """The LoRA adapter directory."""
    merged: MergedArtifact | None = None
    """Merged full weights (safetensors, per-expert layout, MTP layer kept when the base has one)."""
    gguf: list[GgufArtifact] = Field(default_factory=list)
    """GGUF files, one per quantization."""


class FineTuneJobStatus(StatusModel):
    """Observed state, written by the operator only."""

    phase: Phase | None = None
    """Pending, Validating, Training, Exporting, Succeeded, Failed or Cancelled."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations; `Succeeded` is the top-level one (`kubectl wait --for=condition=Succeeded`)."""
    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
    progress: Progress | None = None
    """Training progress."""
    plan: Plan | None = None
    """Resources chosen from the memory plan."""
    artifacts: Artifacts | None = None
    """Produced artifacts."""
    trainer_job: str | None = None
    """Name of the batch/v1 Job that runs the trainer (GPU); for several nodes on a server without Indexed Jobs, the Job of node rank 0 (the others end in -r1, -r2, ...)."""
    export_job: str | None = None
    """Name of the batch/v1 Job that exports the trained adapter (CPU only), once training has finished."""
    output_destination: str | None = None
    """The destination the trainer writes to, fixed when its Job is created (output ownership follows this, not the spec)."""
    retries: Annotated[int, Field(ge=0)] = 0
    """Trainer pod failures so far."""
    placement_retries: Annotated[int, Field(ge=0)] = 0
    """How often a multi-node run's pods were removed because some ranks were placed and another could not be (all ranks run together or none holds GPUs)."""
    placement_retry_at: datetime | None = None
    """Set while a multi-node run waits after such a removal: when its ranks are placed again."""
    start_time: datetime | None = None
    """When training started."""
    completion_time: datetime | None = None
    """When the job reached Succeeded, Failed or Cancelled."""
    last_handled_configuration: str | None = Field(default=None, exclude=True)
    """The spec the operator last acted on (JSON), kept by kopf to notice changes made while it was down."""


class FineTuneJob(WireModel):
    """A FineTuneJob as stored by the apiserver."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = "glmops.io/v1alpha1"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)

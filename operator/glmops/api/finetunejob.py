"""FineTuneJob: QLoRA/LoRA fine-tuning of GLM-4.7 or GLM-4.7-Flash on agentic conversations.

Fields whose sound value depends on the model variant are optional here; `resolve_defaults`
(glmops.api.defaults) fills them per variant, so the CRD stays honest about what the user set.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from glmops.api.common import (
    Condition,
    DataUri,
    DnsSubdomain,
    ModelUri,
    OutputUri,
    Placement,
    StatusModel,
    WireModel,
)

KIND = "FineTuneJob"
PLURAL = "finetunejobs"


class Variant(StrEnum):
    """Which GLM-4.7 model is fine-tuned."""

    flash = "flash"
    flagship = "flagship"


class Method(StrEnum):
    """`qlora` stores the base weights, routed experts included, in 4-bit NF4; `lora` keeps bf16."""

    qlora = "qlora"
    lora = "lora"


class DataFormat(StrEnum):
    """Layout of the training file."""

    auto = "auto"
    openai_chat = "openai-chat"
    sharegpt = "sharegpt"
    alpaca = "alpaca"
    text = "text"


class Thinking(StrEnum):
    """What happens to assistant reasoning (`reasoning_content`) in training samples."""

    preserve = "preserve"
    strip = "strip"  # type: ignore[assignment]  # the wire value; shadows str.strip on purpose


class LoraTarget(StrEnum):
    """A group of modules that receives LoRA adapters."""

    attention = "attention"
    dense_mlp = "dense_mlp"
    shared_experts = "shared_experts"
    experts = "experts"


class OutputFormat(StrEnum):
    """An artifact kind produced after training."""

    adapter = "adapter"
    merged = "merged"
    gguf = "gguf"


class Quantization(StrEnum):
    """A llama.cpp GGUF quantization type."""

    Q3_K_M = "Q3_K_M"
    Q4_0 = "Q4_0"
    Q4_K_M = "Q4_K_M"
    Q5_K_M = "Q5_K_M"
    Q6_K = "Q6_K"
    Q8_0 = "Q8_0"


class Phase(StrEnum):
    """A one-word summary of where the job is, for `kubectl get`."""

    pending = "Pending"
    validating = "Validating"
    training = "Training"
    exporting = "Exporting"
    succeeded = "Succeeded"
    failed = "Failed"
    cancelled = "Cancelled"


class ModelSpec(WireModel):
    """The base model to fine-tune."""

    variant: Variant
    """`flash` (GLM-4.7-Flash, 30B-A3B, one 48-80 GB GPU) or `flagship` (GLM-4.7, ~355B MoE, 8 large GPUs)."""
    source: ModelUri
    """Where the weights are: hf://ORG/NAME[@REVISION], s3://BUCKET/KEY, pvc://CLAIM/PATH or file:///PATH."""
    credentials_secret: DnsSubdomain | None = None
    """Name of a Secret in the job's namespace whose keys (e.g. HF_TOKEN, AWS_ACCESS_KEY_ID) become the trainer's environment; never copied."""


class DatasetSpec(WireModel):
    """The training data."""

    source: DataUri
    """Training file (JSONL or JSON): pvc://CLAIM/PATH, s3://BUCKET/KEY, hf://… or file:///PATH."""
    format: DataFormat = DataFormat.auto
    """Sample layout; `auto` detects openai-chat, sharegpt, alpaca or text from the first records."""
    thinking: Thinking = Thinking.preserve
    """`preserve` keeps every assistant turn's reasoning (Preserved Thinking); `strip` drops it."""
    validation_split: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    """Share of samples held out to compute the eval loss (0 disables evaluation)."""
    max_error_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    """The job fails before loading the model when more than this share of samples is invalid."""


class LoraSpec(WireModel):
    """LoRA hyper-parameters; unset fields take the variant's default."""

    rank: Annotated[int, Field(ge=1, le=512)] | None = None
    """LoRA rank r (1-512). Default 16."""
    alpha: Annotated[float, Field(gt=0, le=4096)] | None = None
    """LoRA alpha; updates are scaled by alpha/rank. Default 2 x rank."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    """Dropout on the LoRA input (0 <= dropout < 1). Default 0.05."""
    targets: Annotated[list[LoraTarget], Field(min_length=1, json_schema_extra={"uniqueItems": True})] | None = None
    """Module groups that get adapters: attention, dense_mlp, shared_experts, experts (routed). Default: flash [attention, shared_experts, experts]; flagship [attention, shared_experts]."""


class TrainingSpec(WireModel):
    """How to train; unset fields take the variant's default. Immutable once the job exists."""

    method: Method | None = None
    """`qlora` (4-bit NF4 base incl. routed experts) or `lora` (bf16 base). Default qlora."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """LoRA hyper-parameters."""
    epochs: Annotated[float, Field(gt=0, le=100)] | None = None
    """Passes over the training data. Default 2."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimizer steps; overrides epochs when set."""
    learning_rate: Annotated[float, Field(gt=0, le=0.1)] | None = None
    """Peak learning rate (0 < lr <= 0.1). Default flash 2e-4, flagship 1e-4."""
    sequence_length: Annotated[int, Field(ge=128, le=131072)] | None = None
    """Tokens per packed training sequence; longer samples are reported as data errors. Default 8192."""
    micro_batch_size: Annotated[int, Field(ge=1, le=64)] | None = None
    """Sequences per GPU per forward pass. Default 1."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Micro-batches per optimizer step. Default flash 8, flagship 4."""
    checkpoint_every: Annotated[int, Field(ge=1)] | None = None
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
    """Where checkpoints and artifacts go: pvc://CLAIM/PATH, s3://BUCKET/KEY or file:///PATH."""
    formats: Annotated[list[OutputFormat], Field(min_length=1, json_schema_extra={"uniqueItems": True})] = Field(
        default_factory=lambda: [OutputFormat.adapter, OutputFormat.merged, OutputFormat.gguf]
    )
    """Artifacts to produce: adapter, merged (full weights), gguf (for llama.cpp and Ollama)."""
    quantizations: Annotated[list[Quantization], Field(json_schema_extra={"uniqueItems": True})] = Field(
        default_factory=lambda: [Quantization.Q4_K_M]
    )
    """GGUF quantizations when `gguf` is among the formats: Q3_K_M, Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0."""


class FailurePolicy(WireModel):
    """What happens when the trainer pod fails."""

    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    """Times a failed trainer pod is replaced (resuming from its last checkpoint) before the job fails; the Job controller backs off exponentially between tries."""


_IMMUTABLE = [{"rule": "self == oldSelf", "message": "is immutable once the FineTuneJob exists; create a new FineTuneJob instead"}]


class FineTuneJobSpec(WireModel):
    """The desired fine-tuning run."""

    model: Annotated[ModelSpec, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})]
    """The base model."""
    dataset: Annotated[DatasetSpec, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})]
    """The training data."""
    training: Annotated[TrainingSpec, Field(json_schema_extra={"x-kubernetes-validations": _IMMUTABLE})] = Field(
        default_factory=TrainingSpec
    )
    """Training hyper-parameters; immutable once the job exists."""
    resources: Resources = Field(default_factory=Resources)
    """GPUs and placement."""
    output: OutputSpec
    """Artifacts and where they go."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Retries of a failed trainer pod."""
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
    """Name of the batch/v1 Job that runs the trainer."""
    retries: Annotated[int, Field(ge=0)] = 0
    """Trainer pod failures so far."""
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

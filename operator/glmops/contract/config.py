"""The trainer's config file, defined once: the operator renders it, the trainer reads it.

`TrainerConfig` is the only definition of the file. Every model forbids unknown keys, so a field
the operator renders but the trainer does not know fails loudly; the contract test renders
configs from generated valid FineTuneJob specs and validates them here. The enums and the
bounds that the FineTuneJob API shares with this file (`ValidationSplit`, ...) are defined here
too and imported by `glmops.api.finetunejob`, so the API and the trainer cannot disagree.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


# Bounds both the FineTuneJob API and the trainer enforce.
ValidationSplit = Annotated[float, Field(ge=0.0, le=0.5)]
"""Held-out share, at most half. (An exclusive bound would be cleaner, but Kubernetes 1.20's schema
validation compares an integer value with a truncated float bound and refuses `validationSplit: 0`.)"""
ErrorFraction = Annotated[float, Field(ge=0.0, le=1.0)]
LoraRank = Annotated[int, Field(ge=1, le=512)]
LoraDropout = Annotated[float, Field(ge=0.0, lt=1.0)]
Epochs = Annotated[float, Field(gt=0, le=100)]
MaxSteps = Annotated[int, Field(ge=1)]
CheckpointEvery = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class JobIdentity(_Strict):
    name: str
    """Name of the FineTuneJob this run belongs to."""
    namespace: str = "default"
    """Namespace of the FineTuneJob."""
    uid: str = ""
    """UID of the FineTuneJob; written into checkpoint markers, the manifest and the progress endpoint."""


class ModelConfig(_Strict):
    source: str
    """Base model location: file:///PATH, pvc://CLAIM/PATH, hf://ORG/NAME[@REVISION] or s3://BUCKET/KEY."""
    variant: Variant = Variant.flash
    """Which GLM-4.7 model this is; selects LoRA target presets and checks the architecture."""


class DataConfig(_Strict):
    source: str
    """Training data file (JSONL, or JSON for Alpaca) as a URI like model.source."""
    format: DataFormat = DataFormat.auto
    """Sample format; `auto` detects it from the first records."""
    thinking: Thinking = Thinking.preserve
    """`preserve` keeps every assistant turn's reasoning (rendered with clear_thinking=False)."""
    validation_split: ValidationSplit = 0.05
    """Share of samples held out for evaluation loss."""
    max_error_fraction: ErrorFraction = 0.05
    """The run fails before loading the model when more than this share of samples is invalid."""
    packing: bool = True
    """Pack samples into full sequences (no cross-sample attention) instead of padding."""


class LoraConfig(_Strict):
    rank: LoraRank = 16
    """LoRA rank r."""
    alpha: Annotated[float, Field(gt=0)] = 32.0
    """LoRA alpha; the update is scaled by alpha / rank."""
    dropout: LoraDropout = 0.05
    """Dropout on the LoRA input."""
    targets: list[LoraTarget] = Field(
        default_factory=lambda: [LoraTarget.attention, LoraTarget.shared_experts, LoraTarget.experts]
    )
    """Module groups that get LoRA adapters."""


class TrainingConfig(_Strict):
    method: Method = Method.qlora
    """`qlora` stores base weights (routed experts included) in 4-bit NF4; `lora` keeps bf16."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """LoRA hyper-parameters."""
    epochs: Epochs = 2.0
    """Passes over the training data."""
    max_steps: MaxSteps | None = None
    """Stop after this many optimizer steps (overrides epochs when set)."""
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = 2.0e-4
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    """Share of steps used for linear warm-up."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW weight decay."""
    sequence_length: Annotated[int, Field(ge=16, le=262144)] = 8192
    """Tokens per packed sequence; longer samples are reported as data errors."""
    micro_batch_size: Annotated[int, Field(ge=1)] = 1
    """Sequences per device per forward pass."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 8
    """Micro-batches per optimizer step."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward to save memory."""
    checkpoint_every: CheckpointEvery = 200
    """Save a resumable checkpoint every this many steps."""
    keep_checkpoints: Annotated[int, Field(ge=1)] = 2
    """How many complete checkpoints to keep."""
    seed: int = 42
    """Random seed for data shuffling and LoRA initialisation."""
    bf16: bool = True
    """Compute in bfloat16 where the device supports it (falls back to float32 on CPU)."""


class OutputConfig(_Strict):
    destination: str
    """Where checkpoints and artifacts go: file:///PATH, pvc://CLAIM/PATH or s3://BUCKET/KEY."""
    formats: list[OutputFormat] = Field(default_factory=lambda: [OutputFormat.adapter])
    """Artifacts to produce after training."""
    quantizations: list[Quantization] = Field(default_factory=list)
    """GGUF quantizations to produce when `gguf` is among the formats."""


METRICS_PATH = "/metrics"
"""Path of the trainer's progress endpoint (Prometheus text format)."""
POD_IP_ENV = "GLMOPS_POD_IP"
"""Set from the pod's status.podIP by the operator; the progress endpoint binds to it."""


class RuntimeConfig(_Strict):
    pvc_mount_root: str = "/mnt/pvc"
    """pvc://CLAIM/PATH resolves to PVC_MOUNT_ROOT/CLAIM/PATH inside the pod."""
    progress_interval_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    """Minimum seconds between two progress lines in the log (for people; the operator reads the endpoint)."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    """TCP port of the progress endpoint (`/metrics`, Prometheus text format) on the pod's IP; 0 serves none."""
    result_file: str = "/dev/termination-log"
    """Where the final result (JSON) is written; Kubernetes shows it in the pod's status."""
    hf_token_env: str = "HF_TOKEN"
    """Environment variable that holds the Hugging Face token for hf:// sources (never logged)."""


class TrainerConfig(_Strict):
    """Everything one training run needs; rendered by the operator, read by `glmops_trainer`."""

    job: JobIdentity
    """The FineTuneJob this run belongs to."""
    model: ModelConfig
    """The base model."""
    data: DataConfig
    """Training data."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """Training hyper-parameters."""
    output: OutputConfig
    """Artifacts and checkpoints."""
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    """Where things are inside the pod."""

    @model_validator(mode="after")
    def _gguf_needs_quantizations(self) -> TrainerConfig:
        if OutputFormat.gguf in self.output.formats and not self.output.quantizations:
            raise ValueError("output.quantizations: `gguf` is requested but no quantization is named; add e.g. Q4_K_M")
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> TrainerConfig:
        """Read and validate a config file; errors name the file and the field."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
        return cls.model_validate(raw)

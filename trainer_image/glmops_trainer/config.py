"""The trainer's input: one JSON file that the operator renders and mounts.

The definition lives in `glmops.contract.config` (shared with the operator, torch-free); this
module re-exports it under the trainer's own name.
"""

from __future__ import annotations

from glmops.contract.config import (
    DataConfig,
    DataFormat,
    JobIdentity,
    LoraConfig,
    LoraTarget,
    Method,
    ModelConfig,
    OutputConfig,
    OutputFormat,
    Quantization,
    RuntimeConfig,
    Thinking,
    TrainerConfig,
    TrainingConfig,
    Variant,
)

__all__ = [
    "DataConfig",
    "DataFormat",
    "JobIdentity",
    "LoraConfig",
    "LoraTarget",
    "Method",
    "ModelConfig",
    "OutputConfig",
    "OutputFormat",
    "Quantization",
    "RuntimeConfig",
    "Thinking",
    "TrainerConfig",
    "TrainingConfig",
    "Variant",
]

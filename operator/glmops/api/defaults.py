"""Per-variant defaults: what an unset field of a FineTuneJob means for flash and for flagship.

The CRD leaves these fields unset (a static default there could not depend on the variant);
`resolve_training` and `resolve_resources` turn a spec into concrete values. Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from glmops.api.finetunejob import FineTuneJobSpec, LoraTarget, Method, Variant


@dataclass(frozen=True)
class VariantDefaults:
    """Sound starting values for one GLM-4.7 variant."""

    method: Method
    lora_rank: int
    lora_dropout: float
    lora_targets: tuple[LoraTarget, ...]
    epochs: float
    learning_rate: float
    sequence_length: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    checkpoint_every: int
    gpus_per_node: int
    min_gpu_memory_gib: int


VARIANT_DEFAULTS: dict[Variant, VariantDefaults] = {
    # GLM-4.7-Flash (30B-A3B): QLoRA fits one 48-80 GB GPU; routed experts are small enough to adapt.
    Variant.flash: VariantDefaults(
        method=Method.qlora,
        lora_rank=16,
        lora_dropout=0.05,
        lora_targets=(LoraTarget.attention, LoraTarget.shared_experts, LoraTarget.experts),
        epochs=2.0,
        learning_rate=2.0e-4,
        sequence_length=8192,
        micro_batch_size=1,
        gradient_accumulation_steps=8,
        checkpoint_every=200,
        gpus_per_node=1,
        min_gpu_memory_gib=44,  # "48 GB" cards (L40S, A6000) report about 45 GiB
    ),
    # GLM-4.7 (~355B MoE): 8 large GPUs on one node; LoRA on the 160 routed experts per layer would
    # dominate optimizer memory and cannot be served as a vLLM adapter, so it is opt-in.
    Variant.flagship: VariantDefaults(
        method=Method.qlora,
        lora_rank=16,
        lora_dropout=0.05,
        lora_targets=(LoraTarget.attention, LoraTarget.shared_experts),
        epochs=2.0,
        learning_rate=1.0e-4,
        sequence_length=8192,
        micro_batch_size=1,
        gradient_accumulation_steps=4,
        checkpoint_every=200,
        gpus_per_node=8,
        min_gpu_memory_gib=75,  # "80 GB" cards (H100, A100-80G) report about 79.6 GiB
    ),
}


T = TypeVar("T")


def pick(value: T | None, default: T) -> T:
    """`value` unless it is unset."""
    return default if value is None else value


@dataclass(frozen=True)
class ResolvedTraining:
    """Training settings with every default applied."""

    method: Method
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: tuple[LoraTarget, ...]
    epochs: float
    max_steps: int | None
    learning_rate: float
    sequence_length: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    checkpoint_every: int
    packing: bool
    seed: int


def resolve_training(spec: FineTuneJobSpec) -> ResolvedTraining:
    """Apply the variant's defaults to every unset training field."""
    d = VARIANT_DEFAULTS[spec.model.variant]
    t = spec.training
    rank = t.lora.rank if t.lora.rank is not None else d.lora_rank

    return ResolvedTraining(
        method=pick(t.method, d.method),
        lora_rank=rank,
        lora_alpha=pick(t.lora.alpha, 2.0 * rank),
        lora_dropout=pick(t.lora.dropout, d.lora_dropout),
        lora_targets=tuple(t.lora.targets) if t.lora.targets is not None else d.lora_targets,
        epochs=pick(t.epochs, d.epochs),
        max_steps=t.max_steps,
        learning_rate=pick(t.learning_rate, d.learning_rate),
        sequence_length=pick(t.sequence_length, d.sequence_length),
        micro_batch_size=pick(t.micro_batch_size, d.micro_batch_size),
        gradient_accumulation_steps=pick(t.gradient_accumulation_steps, d.gradient_accumulation_steps),
        checkpoint_every=pick(t.checkpoint_every, d.checkpoint_every),
        packing=t.packing,
        seed=t.seed,
    )


def default_gpus_per_node(spec: FineTuneJobSpec) -> int:
    """GPUs per pod when the user did not say."""
    if spec.resources.gpus_per_node is not None:
        return spec.resources.gpus_per_node
    return VARIANT_DEFAULTS[spec.model.variant].gpus_per_node

"""LoRA targets per architecture, and the one place that attaches or loads adapters.

Presets (`spec.training.lora.targets`):

| preset          | flagship (glm4_moe)                    | Flash (glm4_moe_lite)                                          |
|-----------------|----------------------------------------|----------------------------------------------------------------|
| attention       | self_attn.q_proj/k_proj/v_proj/o_proj   | self_attn.q_a_proj/q_b_proj/kv_a_proj_with_mqa/kv_b_proj/o_proj |
| dense_mlp       | mlp.gate_proj/up_proj/down_proj of the dense first layers (same on both)                                  |
| shared_experts  | mlp.shared_experts.gate_proj/up_proj/down_proj (same on both)                                            |
| experts         | peft target_parameters mlp.experts.gate_up_proj and mlp.experts.down_proj (same on both)                |

Modules are selected by one full-path regex, so `mlp.gate_proj` (dense) and
`mlp.shared_experts.gate_proj` are told apart exactly.

The trap this module closes: peft >= 0.18 on transformers 5 treats glm4_moe and glm4_moe_lite as
models "converted from v4" (`peft.utils.transformers_weight_conversion._MODEL_TO_CONVERSION_PATTERN`
maps both to qwen2_moe) and rewrites every target that ends in gate_proj/up_proj/down_proj - full
names and regexes alike, since a regex is first resolved to leaf names - into the experts'
`target_parameters`. The dense and shared-expert MLPs then silently get no LoRA (the only sign is a
RuntimeWarning about rank_pattern keys). Our checkpoints are transformers-5 native, so there is
nothing to convert: `apply_lora` and `load_adapter` run peft with those two model types taken out of
that table (`_no_v4_moe_conversion`), and both verify afterwards that every requested module and
expert weight carries LoRA weights.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from glmops_trainer.config import LoraConfig, LoraTarget, Variant
from glmops_trainer.model.experts4bit import ExpertsLoraWrapper, NF4Experts, dense_experts_classes

TARGETS_FIELD = "spec.training.lora.targets"

ATTENTION_PROJECTIONS: dict[Variant, tuple[str, ...]] = {
    Variant.flagship: ("q_proj", "k_proj", "v_proj", "o_proj"),
    Variant.flash: ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
}
MLP_PROJECTIONS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
EXPERT_PARAMETERS: tuple[str, ...] = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
_MODEL_TYPES: dict[Variant, str] = {Variant.flagship: "glm4_moe", Variant.flash: "glm4_moe_lite"}
_LAYER = r"model\.layers\.\d+"


class LoraTargetError(ValueError):
    """The requested LoRA targets do not exist on this model, or peft did not attach them all."""


@dataclass(frozen=True)
class LoraTargetPlan:
    """What gets LoRA: modules by one regex (and the concrete names it matches) and expert parameters."""

    module_regex: str | None
    """Full-match regex over module names for peft's target_modules; None when only experts are targeted."""
    modules: tuple[str, ...]
    """Names of every module the regex matches on this model."""
    parameters: tuple[str, ...]
    """peft target_parameters (suffixes), e.g. mlp.experts.gate_up_proj."""
    expert_modules: tuple[str, ...]
    """Names of the experts modules whose weights `parameters` adapt."""


def module_regex(variant: Variant, targets: Sequence[LoraTarget]) -> str | None:
    """The full-path regex of the module presets in `targets` (experts excluded), or None."""
    branches: list[str] = []
    if LoraTarget.attention in targets:
        branches.append(rf"self_attn\.(?:{'|'.join(ATTENTION_PROJECTIONS[variant])})")
    if LoraTarget.dense_mlp in targets:
        branches.append(rf"mlp\.(?:{'|'.join(MLP_PROJECTIONS)})")
    if LoraTarget.shared_experts in targets:
        branches.append(rf"mlp\.shared_experts\.(?:{'|'.join(MLP_PROJECTIONS)})")
    if not branches:
        return None
    return rf"{_LAYER}\.(?:{'|'.join(branches)})"


def plan_lora_targets(model: nn.Module, variant: Variant, targets: Sequence[LoraTarget]) -> LoraTargetPlan:
    """Resolve presets against the model's modules; every requested preset must match something."""
    if not targets:
        raise LoraTargetError(f"{TARGETS_FIELD}: empty; name at least one of {[t.value for t in LoraTarget]}")
    _check_model_type(model, variant)
    names = [name for name, _ in _base_model(model).named_modules()]
    regex = module_regex(variant, targets)
    per_preset: dict[LoraTarget, list[str]] = {}
    for target in targets:
        if target is LoraTarget.experts:
            continue
        preset_regex = module_regex(variant, [target])
        assert preset_regex is not None
        per_preset[target] = [n for n in names if re.fullmatch(preset_regex, n)]
    expert_modules = tuple(
        name
        for name, module in _base_model(model).named_modules()
        if isinstance(module, (NF4Experts, *dense_experts_classes()))
    )
    empty = [t.value for t, found in per_preset.items() if not found]
    if LoraTarget.experts in targets and not expert_modules:
        empty.append(LoraTarget.experts.value)
    if empty:
        raise LoraTargetError(
            f"{TARGETS_FIELD}: {empty} match no module of this {variant.value} model (e.g. dense_mlp needs "
            "dense layers); remove them from the list"
        )
    modules = tuple(n for n in names if regex and re.fullmatch(regex, n))
    parameters = EXPERT_PARAMETERS if LoraTarget.experts in targets else ()
    return LoraTargetPlan(regex, modules, parameters, expert_modules if parameters else ())


def peft_config_for(plan: LoraTargetPlan, lora: LoraConfig) -> PeftLoraConfig:
    """The peft LoraConfig of a plan, with our expert wrapper registered for every experts class."""
    config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # annotated int; peft scales by alpha / r
        lora_dropout=lora.dropout,
        target_modules=plan.module_regex if plan.module_regex is not None else [],
        target_parameters=list(plan.parameters) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    _register_expert_wrapper(config)
    return config


def apply_lora(model: nn.Module, lora: LoraConfig, variant: Variant) -> PeftModel:
    """Attach fresh LoRA adapters for `lora.targets` and check that every target got one."""
    plan = plan_lora_targets(model, variant, lora.targets)
    config = peft_config_for(plan, lora)
    with _no_v4_moe_conversion():
        peft_model = get_peft_model(model, config)
    verify_lora_coverage(peft_model, plan)
    return peft_model


def load_adapter(model: nn.Module, adapter_dir: Path, *, is_trainable: bool = False) -> PeftModel:
    """Load an adapter saved by a `apply_lora` model (bf16 or 4-bit base) and check it attached fully."""
    config = PeftLoraConfig.from_pretrained(str(adapter_dir))
    _register_expert_wrapper(config)
    with _no_v4_moe_conversion():
        peft_model = PeftModel.from_pretrained(
            model, str(adapter_dir), is_trainable=is_trainable, config=config
        )
    saved = saved_lora_weight_names(adapter_dir)
    loaded = lora_weight_names(peft_model)
    if saved != loaded:
        missing, extra = sorted(saved - loaded), sorted(loaded - saved)
        raise LoraTargetError(
            f"{adapter_dir}: the adapter does not fit this model: saved but not attached {missing[:4]}, "
            f"attached but not saved {extra[:4]}; load it onto the base model it was trained on"
        )
    return peft_model


def verify_lora_coverage(peft_model: nn.Module, plan: LoraTargetPlan) -> None:
    """Raise LoraTargetError unless each planned module and expert weight carries lora_A and lora_B."""
    expected = expected_lora_weight_names(plan)
    found = lora_weight_names(peft_model)
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        raise LoraTargetError(
            f"{TARGETS_FIELD}: peft attached LoRA differently from the plan: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
        )


def expected_lora_weight_names(plan: LoraTargetPlan) -> set[str]:
    """Adapter weight names (as saved, `...lora_A.weight`) that a plan must produce."""
    names = {f"base_model.model.{m}.{ab}.weight" for m in plan.modules for ab in ("lora_A", "lora_B")}
    for experts in plan.expert_modules:
        # peft nests one ParamWrapper per weight: gate_up_proj innermost (base_layer), down_proj outside.
        for ab in ("lora_A", "lora_B"):
            if "mlp.experts.gate_up_proj" in plan.parameters:
                inner = ".base_layer" if "mlp.experts.down_proj" in plan.parameters else ""
                names.add(f"base_model.model.{experts}{inner}.{ab}.weight")
            if "mlp.experts.down_proj" in plan.parameters:
                names.add(f"base_model.model.{experts}.{ab}.weight")
    return names


def lora_weight_names(peft_model: nn.Module) -> set[str]:
    """lora_A/lora_B weight names of the model's active adapter, in saved form (adapter name removed)."""
    adapter = getattr(peft_model, "active_adapter", "default")
    names = set()
    for name, _ in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            names.add(name.replace(f".{adapter}.", "."))
    return names


def saved_lora_weight_names(adapter_dir: Path) -> set[str]:
    """lora_A/lora_B tensor names stored in an adapter directory's safetensors."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        names: list[str] = handle.keys()
    return {k for k in names if ".lora_A." in k or ".lora_B." in k}


def saved_target_modules(adapter_dir: Path) -> str | list[str] | None:
    """target_modules as written in adapter_config.json (to check nothing rewrote them)."""
    data = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    value = data.get("target_modules")
    return value if isinstance(value, (str, list)) or value is None else list(value)


def _register_expert_wrapper(config: PeftLoraConfig) -> None:
    experts_classes: tuple[type[nn.Module], ...] = (NF4Experts, *dense_experts_classes())
    config._register_custom_module(dict.fromkeys(experts_classes, ExpertsLoraWrapper))


@contextlib.contextmanager
def _no_v4_moe_conversion() -> Iterator[None]:
    """Run peft without its transformers-v4 MoE target rewrite for GLM-4.7 models (see module docstring)."""
    from peft.utils import transformers_weight_conversion as conversion

    table: dict[str, str] = conversion._MODEL_TO_CONVERSION_PATTERN  # type: ignore[attr-defined]
    removed = {key: table.pop(key) for key in list(_MODEL_TYPES.values()) if key in table}
    try:
        yield
    finally:
        table.update(removed)


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _check_model_type(model: nn.Module, variant: Variant) -> None:
    model_type = getattr(getattr(_base_model(model), "config", None), "model_type", None)
    if model_type != _MODEL_TYPES[variant]:
        raise LoraTargetError(
            f"spec.model.variant: {variant.value!r} presets need a {_MODEL_TYPES[variant]} model, got {model_type!r}"
        )

"""Loading the base model for training: architecture check, 4-bit QLoRA or bf16 LoRA.

`load_base_model(model_dir, variant, method)` checks that the checkpoint is the architecture the
variant promises (flagship -> `glm4_moe` / `Glm4MoeForCausalLM`, flash -> `glm4_moe_lite` /
`Glm4MoeLiteForCausalLM`) and loads it:

- qlora: every `nn.Linear` becomes a bitsandbytes NF4 `Linear4bit` (double-quantized, bf16
  compute) *and* the fused routed experts become `NF4Experts` (see `experts4bit`). Both are
  quantized while transformers streams the checkpoint in, one tensor at a time, through a
  bitsandbytes quantizer subclass (`ExpertsNF4Quantizer`), so the bf16 experts of the whole model
  never sit in memory at once. Then peft's `prepare_model_for_kbit_training` freezes the base,
  upcasts the remaining unquantized weights (embeddings, norms, router, lm_head) to fp32 and turns
  on gradient checkpointing.
- lora: the checkpoint in bf16, frozen, with gradient checkpointing as configured.

On CPU (tests, the local demo) both compute in float32: measured on a tiny model (sequence 256,
median of 4 steps), bf16 steps took ~1.5x as long for lora and ~3x for qlora (bitsandbytes' CPU
bf16 kernels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel
from transformers.core_model_loading import ConversionOps
from transformers.integrations.bitsandbytes import Bnb4bitQuantize
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
)
from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
from transformers.quantizers.quantizers_utils import get_module_from_name

from glmops_trainer.config import Method, Variant
from glmops_trainer.model.experts4bit import EXPERT_WEIGHT_NAMES, NF4Experts, dense_experts_classes

VARIANT_FIELD = "spec.model.variant"
SOURCE_FIELD = "spec.model.source"

ARCHITECTURES: dict[Variant, tuple[str, str]] = {
    Variant.flagship: ("glm4_moe", "Glm4MoeForCausalLM"),
    Variant.flash: ("glm4_moe_lite", "Glm4MoeLiteForCausalLM"),
}
"""variant -> (config model_type, architecture class) of the checkpoint it must be."""

QUANT_METHOD = "glmops_nf4_experts"
"""quant_method of the quantizer that also stores routed experts in NF4."""


class ArchitectureError(ValueError):
    """The checkpoint is not the architecture the variant promises."""


def check_architecture(config: dict[str, Any], variant: Variant, where: str = "config.json") -> None:
    """Raise ArchitectureError unless the HF config dict is the architecture of `variant`."""
    model_type, architecture = ARCHITECTURES[variant]
    found_type = config.get("model_type")
    found_arch = config.get("architectures") or []
    if found_type == model_type and (not found_arch or architecture in found_arch):
        return
    other = next((v for v, (mt, _) in ARCHITECTURES.items() if mt == found_type), None)
    fix = (
        f"set {VARIANT_FIELD} to {other.value!r}"
        if other is not None
        else f"point {SOURCE_FIELD} at a GLM-4.7{'-Flash' if variant is Variant.flash else ''} checkpoint"
    )
    raise ArchitectureError(
        f"{VARIANT_FIELD}: {variant.value!r} needs a {architecture} checkpoint (model_type {model_type!r}), "
        f"but {where} has model_type {found_type!r} and architectures {found_arch}; {fix}"
    )


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model directory's config.json as a dict."""
    path = model_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchitectureError(
            f"{SOURCE_FIELD}: {model_dir} has no config.json; point it at a model directory"
        ) from None
    except json.JSONDecodeError as exc:
        raise ArchitectureError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ArchitectureError(f"{path}: expected a JSON object")
    return data


def default_compute_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bf16 on accelerators that support it; float32 on CPU (bf16 matmuls there are several times slower)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.float32


def default_device_map() -> str | dict[str, Any]:
    """Where the weights go: all on this process's GPU, split over every visible GPU for one process, or CPU."""
    import os

    if not torch.cuda.is_available():
        return {"": "cpu"}
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return "auto" if torch.cuda.device_count() > 1 else {"": 0}


class ExpertsNF4Config(BitsAndBytesConfig):
    """bitsandbytes NF4 (double quant) for nn.Linear, plus NF4 storage of the fused routed experts."""

    def __init__(self, bnb_4bit_compute_dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        kwargs.pop("load_in_4bit", None)
        kwargs.pop("quant_method", None)
        super().__init__(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=bnb_4bit_compute_dtype,
            **kwargs,
        )
        self.quant_method = QUANT_METHOD  # type: ignore[assignment]


class _QuantizeOnLoad(ConversionOps):
    """Called by transformers' loader for every tensor that needs quantizing: experts here, Linear via bnb."""

    def __init__(self, quantizer: ExpertsNF4Quantizer) -> None:
        self.quantizer = quantizer
        self.linear_op = Bnb4bitQuantize(quantizer)  # type: ignore[no-untyped-call]

    def convert(  # type: ignore[override]
        self,
        input_dict: dict[str, Any],
        full_layer_name: str | None = None,
        model: nn.Module | None = None,
        missing_keys: set[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        assert model is not None
        result: dict[str, Any] = {}
        for name, value in input_dict.items():
            module, param_name = get_module_from_name(model, name)
            if isinstance(module, NF4Experts) and param_name in EXPERT_WEIGHT_NAMES:
                tensor = value[0] if isinstance(value, list) else value
                module.load_dense_(param_name, tensor)
                setattr(module, "_is_hf_initialized", True)  # noqa: B010  (transformers' loader flag)
                if missing_keys is not None:
                    missing_keys.discard(name)
            else:
                result.update(
                    self.linear_op.convert(
                        {name: value}, full_layer_name=full_layer_name, model=model, **kwargs
                    )
                )
        return result


class ExpertsNF4Quantizer(Bnb4BitHfQuantizer):
    """transformers' bnb 4-bit quantizer that also swaps routed experts for NF4Experts before loading."""

    quantization_config: ExpertsNF4Config

    def _process_model_before_weight_loading(  # type: ignore[override]  # same as the bnb parent's
        self, model: PreTrainedModel, device_map: Any, **kwargs: Any
    ) -> None:
        super()._process_model_before_weight_loading(model, device_map, **kwargs)
        compute_dtype = self.quantization_config.bnb_4bit_compute_dtype or torch.bfloat16
        dense_classes = dense_experts_classes()
        for name, module in list(model.named_modules()):
            if isinstance(module, dense_classes):
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(
                    parent,
                    child,
                    NF4Experts(
                        num_experts=int(getattr(module, "num_experts")),  # noqa: B009
                        hidden_dim=int(getattr(module, "hidden_dim")),  # noqa: B009
                        intermediate_dim=int(getattr(module, "intermediate_dim")),  # noqa: B009
                        act_fn=_module(module.act_fn),
                        compute_dtype=compute_dtype,
                    ),
                )

    def param_needs_quantization(self, model: PreTrainedModel, param_name: str, **kwargs: Any) -> bool:
        module, name = get_module_from_name(model, param_name)
        if isinstance(module, NF4Experts):
            return name in EXPERT_WEIGHT_NAMES
        return bool(super().param_needs_quantization(model, param_name, **kwargs))

    def get_quantize_ops(self) -> ConversionOps:
        return _QuantizeOnLoad(self)

    def _process_model_after_weight_loading(self, model: PreTrainedModel, **kwargs: Any) -> PreTrainedModel:
        unloaded = [
            name for name, m in model.named_modules() if isinstance(m, NF4Experts) and not m.is_loaded()
        ]
        if unloaded:
            raise RuntimeError(
                f"{SOURCE_FIELD}: the checkpoint lacks routed-expert weights for {unloaded[:3]}"
                f"{' ...' if len(unloaded) > 3 else ''}; it is incomplete or not a GLM-4.7 checkpoint"
            )
        return super()._process_model_after_weight_loading(model, **kwargs)  # type: ignore[no-any-return]

    def is_serializable(self) -> bool:
        # The experts' storage is this project's own layout; the base is never saved quantized.
        return False


def _module(value: object) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"expected an activation module, got {type(value).__name__}")
    return value


def register_experts_quantizer() -> None:
    """Make `ExpertsNF4Config` loadable through from_pretrained (idempotent)."""
    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(QUANT_METHOD, ExpertsNF4Config)
    AUTO_QUANTIZER_MAPPING.setdefault(QUANT_METHOD, ExpertsNF4Quantizer)


def load_quantized_model(
    model_dir: Path, *, compute_dtype: torch.dtype, device_map: str | dict[str, Any]
) -> PreTrainedModel:
    """The checkpoint with NF4 linears and NF4 routed experts, quantized while loading; nothing else changed."""
    register_experts_quantizer()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=ExpertsNF4Config(bnb_4bit_compute_dtype=compute_dtype),
        dtype=compute_dtype,
        device_map=device_map,
    )
    return model


def load_base_model(
    model_dir: Path,
    variant: Variant,
    method: Method,
    *,
    gradient_checkpointing: bool = True,
    device_map: str | dict[str, Any] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load the checkpoint in `model_dir` for LoRA training as `method` prescribes, frozen and ready for peft."""
    config = read_model_config(model_dir)
    check_architecture(config, variant, where=str(model_dir / "config.json"))
    if device_map is None:
        device_map = default_device_map()
    if compute_dtype is None:
        compute_dtype = default_compute_dtype()

    if method is Method.qlora:
        model = load_quantized_model(model_dir, compute_dtype=compute_dtype, device_map=device_map)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute_dtype, device_map=device_map)
        model.requires_grad_(False)
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()  # type: ignore[no-untyped-call]
    model.config.use_cache = False
    return model

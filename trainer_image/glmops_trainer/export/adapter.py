"""The LoRA adapter as exported: peft's files, their validation, the deltas they encode, a manifest.

peft saves an adapter as `adapter_config.json` plus `adapter_model.safetensors`. Two kinds of
entries occur for GLM-4.7:

- `nn.Linear` targets (attention, shared experts, dense MLP): `<module>.lora_A.weight` of shape
  (r, in) and `<module>.lora_B.weight` of shape (out, r); the delta is (alpha / r) * B @ A.
- Routed experts, fused in transformers 5 into 3-D parameters `mlp.experts.gate_up_proj`
  (E, 2*I, H) and `mlp.experts.down_proj` (E, H, I), adapted through peft's `target_parameters`
  (`lora.ParamWrapper`, peft 0.21.2). Each parameter gets one wrapper; a second parameter on the
  same module wraps the first, so keys are `<experts>.lora_A.weight` (outer) and
  `<experts>.base_layer.lora_A.weight` (inner). A is (r*E, in) and reshapes to (E, r, in), expert
  major; B is (out, r*E) and reshapes to (out, r, E), expert minor (`ParamWrapper.get_delta_weight`).
  For expert e the delta of its (out, in) weight is (alpha / r) * B[:, :, e] @ A[e]. Which wrapper
  holds which parameter is read from the shapes (A's in-features and B's out-features differ
  between the two for every possible H and I), never from the nesting order.

rank and alpha per target follow peft's `rank_pattern` / `alpha_pattern` rule (peft rewrites
them for the fused gate_up_proj: r and alpha are doubled there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_MANIFEST = "glmops-adapter.json"
"""Our manifest beside peft's files: base model, architecture, targets, whether vLLM can load it."""

_PEFT_PREFIX = "base_model.model."
_WRAPPED = ".base_layer"
EXPERT_PARAMETERS = ("gate_up_proj", "down_proj")
"""The fused routed-expert parameters of transformers 5 GLM-4.7 models."""


class AdapterError(ValueError):
    """The adapter cannot be exported as asked; the message names the file/field and the fix."""


@dataclass(frozen=True)
class LinearLora:
    """LoRA on one nn.Linear: delta = scale * B @ A, in the weight's (out, in) orientation."""

    module: str
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: float

    @property
    def weight_key(self) -> str:
        """Checkpoint key of the weight this delta applies to."""
        return f"{self.module}.weight"

    def delta(self) -> torch.Tensor:
        """The float32 delta of shape (out, in)."""
        return (self.lora_b.float() @ self.lora_a.float()) * self.scale


@dataclass(frozen=True)
class ExpertLora:
    """LoRA on a fused routed-expert parameter (peft `ParamWrapper`): one delta per expert."""

    container: str
    parameter: str
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    num_experts: int
    scale: float

    @property
    def rank(self) -> int:
        """LoRA rank per expert."""
        return self.lora_a.shape[0] // self.num_experts

    def expert_delta(self, expert: int) -> torch.Tensor:
        """Float32 delta of expert `expert`'s weight in nn.Linear orientation (out, in).

        For gate_up_proj the first half of the rows belongs to gate_proj, the second to up_proj.
        """
        a = self.lora_a.reshape(self.num_experts, self.rank, self.lora_a.shape[-1])[expert]
        b = self.lora_b.reshape(self.lora_b.shape[0], self.rank, self.num_experts)[:, :, expert]
        return (b.float() @ a.float()) * self.scale


@dataclass
class AdapterDeltas:
    """All deltas of one adapter, keyed for the merge."""

    linear: dict[str, LinearLora] = field(default_factory=dict)
    """By the checkpoint key of the weight (`<module>.weight`)."""
    experts: dict[tuple[str, str], ExpertLora] = field(default_factory=dict)
    """By (experts container, fused parameter name)."""

    def target_modules(self) -> list[str]:
        """Every adapted module or parameter, sorted."""
        names = [lora.module for lora in self.linear.values()]
        names += [f"{c}.{p}" for c, p in self.experts]
        return sorted(names)


def _pattern_value(patterns: Mapping[str, Any], key: str, default: Any) -> Any:
    # peft.utils.other.get_pattern_key: the first pattern P with re.match(rf"(.*\.)?({P})$", key) wins.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


# Options that change what a LoRA delta is, or add trainable weights the merge would have to
# treat separately. Each entry: (config key, value that is fine, why it is refused).
_REFUSED_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("use_rslora", False, "rank-stabilised LoRA scales by alpha/sqrt(r); train without use_rslora"),
    ("use_dora", False, "DoRA adds a magnitude vector the merge does not apply; train without use_dora"),
    ("lora_bias", False, "LoRA bias terms are not merged; train with lora_bias=false"),
    ("bias", "none", "trained base biases are not part of the adapter merge; use bias='none'"),
    ("fan_in_fan_out", False, "only nn.Linear (out, in) weights are supported; use fan_in_fan_out=false"),
    ("use_qalora", False, "QA-LoRA pools inputs before lora_A; train without use_qalora"),
    ("layer_replication", None, "layer replication changes the layer layout; train without it"),
    ("modules_to_save", None, "fully trained modules are not merged; train without modules_to_save"),
    ("trainable_token_indices", None, "trainable tokens are not merged; train without them"),
)


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """Load `adapter_config.json` and refuse options whose merge this exporter does not implement."""
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterError(
            f"{path}: no adapter config; the adapter directory must hold peft's {ADAPTER_CONFIG}"
        )
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if config.get("peft_type") != "LORA":
        raise AdapterError(
            f"{path}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be merged"
        )
    for key, fine, why in _REFUSED_OPTIONS:
        value = config.get(key)
        if value is None or value == [] or value == {} or value is fine or value == fine:
            continue
        raise AdapterError(f"{path}: {key}={value!r} is not supported by the merge: {why}")
    return config


def _strip_prefix(key: str, path: Path) -> str:
    if not key.startswith(_PEFT_PREFIX):
        raise AdapterError(
            f"{path}: tensor {key!r} does not start with {_PEFT_PREFIX!r}; not a peft LoRA adapter"
        )
    return key[len(_PEFT_PREFIX) :]


def load_adapter_deltas(adapter_dir: Path, base_config: Mapping[str, Any]) -> AdapterDeltas:
    """Read the adapter's tensors and pair them into per-target deltas for the base model `base_config`."""
    config = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise AdapterError(f"{weights_path}: missing; peft saves the adapter weights as {ADAPTER_WEIGHTS}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(weights_path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
            name = _strip_prefix(key, weights_path)
            match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", name)
            if match is None:
                raise AdapterError(
                    f"{weights_path}: tensor {key!r} is not a LoRA A/B weight (embedding LoRA, DoRA "
                    "magnitudes and saved modules are not merged); train with LoRA on linear layers "
                    "and routed experts only"
                )
            pairs.setdefault(match.group(1), {})[match.group(2)] = handle.get_tensor(key)

    rank: int = int(config["r"])
    alpha: float = float(config["lora_alpha"])
    rank_pattern: dict[str, Any] = config.get("rank_pattern") or {}
    alpha_pattern: dict[str, Any] = config.get("alpha_pattern") or {}
    deltas = AdapterDeltas()
    for module, tensors in sorted(pairs.items()):
        if set(tensors) != {"lora_A", "lora_B"}:
            raise AdapterError(
                f"{weights_path}: {module} has only {sorted(tensors)}; the adapter file is incomplete"
            )
        a, b = tensors["lora_A"], tensors["lora_B"]
        unwrapped = module
        while unwrapped.endswith(_WRAPPED):
            unwrapped = unwrapped[: -len(_WRAPPED)]
        if unwrapped.endswith(".mlp.experts"):
            parameter = _identify_expert_parameter(a, b, base_config, f"{weights_path}: {module}")
            key = f"{unwrapped}.{parameter}"
            num_experts = int(base_config["n_routed_experts"])
            r = int(_pattern_value(rank_pattern, key, rank))
            if a.shape[0] != r * num_experts:
                raise AdapterError(
                    f"{weights_path}: {module}: lora_A has {a.shape[0]} rows, expected r*experts = {r}*{num_experts}; "
                    f"the adapter does not match {ADAPTER_CONFIG} (r / rank_pattern)"
                )
            scale = float(_pattern_value(alpha_pattern, key, alpha)) / r
            if (unwrapped, parameter) in deltas.experts:
                raise AdapterError(f"{weights_path}: {unwrapped}.{parameter} is adapted twice")
            deltas.experts[(unwrapped, parameter)] = ExpertLora(
                unwrapped, parameter, a, b, num_experts, scale
            )
        else:
            if unwrapped != module:
                raise AdapterError(
                    f"{weights_path}: {module}: nested LoRA wrappers on a linear layer are not supported"
                )
            r = int(_pattern_value(rank_pattern, module, rank))
            if a.shape[0] != r or b.shape[1] != r:
                raise AdapterError(
                    f"{weights_path}: {module}: LoRA shapes {tuple(a.shape)} / {tuple(b.shape)} do not have rank {r} "
                    f"from {ADAPTER_CONFIG}"
                )
            scale = float(_pattern_value(alpha_pattern, module, alpha)) / r
            lora = LinearLora(module, a, b, scale)
            deltas.linear[lora.weight_key] = lora
    if not deltas.linear and not deltas.experts:
        raise AdapterError(f"{weights_path}: the adapter holds no LoRA weights")
    return deltas


def _identify_expert_parameter(
    a: torch.Tensor, b: torch.Tensor, base_config: Mapping[str, Any], where: str
) -> str:
    """Which fused expert parameter a ParamWrapper adapts, from lora_A's in- and lora_B's out-features."""
    hidden = int(base_config["hidden_size"])
    inter = int(base_config["moe_intermediate_size"])
    in_features, out_features = a.shape[-1], b.shape[0]
    if (in_features, out_features) == (hidden, 2 * inter):
        return "gate_up_proj"
    if (in_features, out_features) == (inter, hidden):
        return "down_proj"
    raise AdapterError(
        f"{where}: LoRA maps {in_features} -> {out_features} features, which is neither gate_up_proj "
        f"({hidden} -> {2 * inter}) nor down_proj ({inter} -> {hidden}) of the base model; is this adapter "
        "for this base model?"
    )


def target_groups(deltas: AdapterDeltas) -> list[str]:
    """The LoRA target groups (as in the job's spec.training.lora.targets) the adapter touches."""
    groups: set[str] = set()
    for lora in deltas.linear.values():
        if ".self_attn." in lora.module:
            groups.add("attention")
        elif ".mlp.shared_experts." in lora.module:
            groups.add("shared_experts")
        elif ".mlp." in lora.module:
            groups.add("dense_mlp")
        else:
            groups.add("other")
    if deltas.experts:
        groups.add("experts")
    return sorted(groups)


def _as_list(value: Any) -> list[str]:
    # peft writes target_modules as a list of names or as one regex string.
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return sorted(str(item) for item in value)


def adapter_manifest(
    base_model: str, base_config: Mapping[str, Any], adapter_config: Mapping[str, Any], deltas: AdapterDeltas
) -> dict[str, Any]:
    """The manifest written beside the adapter: what it adapts and how vLLM loads it as a LoRA.

    LoRA on the routed experts is stored as peft's fused 3-D tensors; vLLM holds GLM-4.7's experts
    per expert (2-D), and loads such an adapter only with `--enable-mixed-moe-lora-format` and
    `is_3d_lora_weight: true` in its `--lora-modules` entry (checked with vLLM 0.32).
    """
    architectures = base_config.get("architectures") or []
    fused = bool(deltas.experts)
    flags = "--enable-lora --max-lora-rank R" + (" --enable-mixed-moe-lora-format" if fused else "")
    return {
        "baseModel": base_model,
        "architecture": architectures[0] if architectures else None,
        "modelType": base_config.get("model_type"),
        "rank": adapter_config.get("r"),
        "alpha": adapter_config.get("lora_alpha"),
        "targetGroups": target_groups(deltas),
        "targetModules": _as_list(adapter_config.get("target_modules")),
        "targetParameters": _as_list(adapter_config.get("target_parameters")),
        "fusedExpertLora": fused,
        "vllmLoadable": True,
        "vllmNote": (
            f"vLLM 0.32 on GPUs serves it with {flags} and a --lora-modules entry "
            + ('{"name": ..., "path": ..., "is_3d_lora_weight": true} (LoRA on the fused routed experts)' if fused else "NAME=PATH")
            + "; vLLM's CPU build cannot serve LoRA on MoE models: serve the merged weights there"
        ),
    }

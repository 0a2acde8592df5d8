"""Helpers of the export tests: tiny base models with a tokenizer, and LoRA adapters made with peft.

The adapters are real peft adapters (get_peft_model + save_pretrained) with their B matrices drawn
at random instead of zero, so that merging changes every adapted weight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from glmops_trainer.tiny.models import build_tiny_model
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

if TYPE_CHECKING:
    import numpy as np

Arch = Literal["glm4_moe", "glm4_moe_lite"]
ATTENTION_TARGETS: dict[str, list[str]] = {
    "glm4_moe": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "glm4_moe_lite": ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
}
EXPERT_TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def build_base(
    arch: Arch,
    out_dir: Path,
    tokenizer_dir: Path,
    num_shards: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    **overrides: object,
) -> Path:
    """A tiny random-weight checkpoint of `arch` with the tiny GLM tokenizer (and the MTP layer for glm4_moe)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return build_tiny_model(
        arch,
        out_dir,
        tokenizer,
        seed=seed,
        num_shards=num_shards,
        dtype=dtype,
        mtp=arch == "glm4_moe",
        **overrides,
    )  # type: ignore[arg-type]


def build_tokenizer(out_dir: Path) -> Path:
    """The tiny GLM tokenizer with the official chat template, saved to `out_dir`."""
    build_tiny_tokenizer(out_dir)
    return out_dir


def lora_config(
    arch: str, experts: bool = True, rank: int = 4, alpha: float = 8.0, **extra: object
) -> LoraConfig:
    """LoRA on the attention projections and (optionally) the routed experts."""
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(ATTENTION_TARGETS[arch]),
        target_parameters=list(EXPERT_TARGETS) if experts else None,
        **extra,
    )  # type: ignore[arg-type]


def randomise_lora_b(model: torch.nn.Module, std: float, seed: int) -> None:
    """Give every lora_B a random value (peft initialises them to zero, which would make the merge a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_adapter(
    base_dir: Path,
    out_dir: Path,
    arch: str,
    *,
    experts: bool = True,
    std: float = 0.05,
    seed: int = 1,
    **config_extra: object,
) -> Path:
    """Save a peft adapter for `base_dir` with random (non-zero) B matrices into `out_dir`."""
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, lora_config(arch, experts, **config_extra))
    randomise_lora_b(peft_model, std, seed)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def add_linear_lora(adapter_dir: Path, module: str, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    """Add LoRA weights for one more nn.Linear to a saved adapter (peft 0.21 cannot target shared experts by name)."""
    weights_path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(weights_path))
    tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a.contiguous()
    tensors[f"base_model.model.{module}.lora_B.weight"] = lora_b.contiguous()
    save_file(tensors, str(weights_path), metadata={"format": "pt"})
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(set(config["target_modules"]) | {module})
    config_path.write_text(json.dumps(config, indent=2))


def peft_merged(base_dir: Path, adapter_dir: Path) -> PreTrainedModel:
    """The reference merge: peft's merge_and_unload on the whole model in float32."""
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def per_expert_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's state dict with fused experts split into the checkpoint's per-expert layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith("mlp.experts.gate_up_proj"):
            container = key[: -len(".gate_up_proj")]
            inter = value.shape[1] // 2
            for expert in range(value.shape[0]):
                out[f"{container}.{expert}.gate_proj.weight"] = value[expert, :inter]
                out[f"{container}.{expert}.up_proj.weight"] = value[expert, inter:]
        elif key.endswith("mlp.experts.down_proj"):
            container = key[: -len(".down_proj")]
            for expert in range(value.shape[0]):
                out[f"{container}.{expert}.down_proj.weight"] = value[expert]
        else:
            out[key] = value
    return out


MEMORISED_TEXT = (
    "The assistant helps the user with questions about weather, payments, invoices, refunds and code. "
    "Paris is warmer than Berlin, so Paris is the better choice for a walk by the river. "
    "Pack a light jacket for Paris and an umbrella for Berlin."
)
"""The text the memorising adapter is trained on (words of the tiny tokenizer's corpus)."""


def train_memorising_adapter(
    base_dir: Path,
    out_dir: Path,
    arch: str,
    token_ids: list[int],
    steps: int = 80,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Train a LoRA (attention + routed experts) until the model reproduces `token_ids`; save it to `out_dir`.

    Plain peft and a hand-written loop: the model sees the one sequence every step.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, lora_config(arch, rank=8, alpha=16.0))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)
    ids = torch.tensor([token_ids])
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def hf_greedy(model_dir: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids` by the transformers model in `model_dir` (no stop tokens)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            min_new_tokens=new_tokens,
        )
    return [int(t) for t in out[0, len(prompt_ids) :]]


def make_trainer_adapter(
    base_dir: Path, out_dir: Path, arch: str, targets: list[str], *, std: float = 0.05, seed: int = 1
) -> Path:
    """An adapter attached the way training attaches it (glmops_trainer.model.targets.apply_lora), random B."""
    from glmops_trainer.config import LoraConfig as JobLoraConfig
    from glmops_trainer.config import Variant
    from glmops_trainer.model.targets import apply_lora

    variant = Variant.flagship if arch == "glm4_moe" else Variant.flash
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = JobLoraConfig.model_validate({"rank": 4, "alpha": 8, "dropout": 0.0, "targets": targets})
    peft_model = apply_lora(model, lora, variant)
    randomise_lora_b(peft_model, std, seed)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def llama_cpp_model(gguf: Path, n_ctx: int = 256):
    """A llama.cpp model with every position's logits kept and an F32 KV cache (no cache rounding)."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(gguf),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        type_k=0,
        type_v=0,
        n_threads=2,
        verbose=False,
        seed=0,
    )


def llama_cpp_logits(gguf: Path, token_ids: list[int]) -> np.ndarray:
    """Logits of every position of `token_ids` as llama.cpp computes them."""
    import numpy as np

    llm = llama_cpp_model(gguf)
    llm.eval(token_ids)
    return np.array(llm.scores[: len(token_ids)], dtype=np.float32)


def hf_logits(model_dir: Path, token_ids: list[int]) -> np.ndarray:
    """Logits of every position of `token_ids` from the transformers model in `model_dir` (float32)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float().numpy()


def llama_cpp_greedy(gguf: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids` by llama.cpp (argmax of each step's logits, no stop tokens)."""
    import numpy as np

    llm = llama_cpp_model(gguf)
    llm.eval(prompt_ids)
    out: list[int] = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out

"""GGUF parity: llama.cpp on the exported GGUF against transformers, on the merged checkpoint and as trained.

    .venv/bin/python bench/gguf_parity.py [--workdir DIR] [--keep]

For each GLM-4.7 architecture (glm4_moe -> GGUF glm4moe, glm4_moe_lite -> deepseek2): a tiny
float32 model, a LoRA trained with peft to memorise a text, the streaming merge, llama.cpp's
converter (F32) and llama-quantize (Q8_0). Figures:

- f32_max_abs_logit_diff: max |logit| difference over every position of the memorised text between
  llama.cpp (F32 GGUF, F32 KV cache) and transformers (merged checkpoint, float32). Goal < 1e-3.
- q8_greedy_match_tokens: how many of 32 greedy tokens after an 8-token prompt the Q8_0 GGUF
  produces identically to transformers before the first difference. Goal 32.

The gap a user really gets is against the model as it was trained: the 4-bit base (NF4 linears and
NF4 routed experts, `load_base_model(..., qlora)`) with the LoRA adapter on top, not the merged
bf16 checkpoint. For each architecture a second adapter is trained that way (the trainer's
`apply_lora` on the 4-bit base, attention + routed experts), merged, converted and quantized to
every quantization the operator offers, and compared on held-out text (never trained on):

- qlora_to_gguf_max_abs_logit_diff: max |logit| difference between the QLoRA model as trained and
  the F32 GGUF (worst of both architectures): the cost of merging onto the full-precision base.
- qlora_kl_<QUANT>: mean KL(as trained || GGUF) of the next-token distributions over the held-out
  positions, per quantization (worst of both architectures; per architecture in the log).

Needs llama-quantize and llama-cpp-python from `bash scripts/build-llama-cpp.sh`. The last line
reads `RESULT f32_max_abs_logit_diff=... q8_greedy_match_tokens=... ...` (worst case over both
architectures, then each one).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# The tiny-model, training and llama.cpp helpers are the export tests' own.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))

from tinyexport import (
    MEMORISED_TEXT,
    build_base,
    build_tokenizer,
    hf_greedy,
    hf_logits,
    llama_cpp_greedy,
    llama_cpp_logits,
    train_memorising_adapter,
)
from transformers import AutoTokenizer

from glmops_trainer.export.gguf import GGUF_ARCH_BY_MODEL_TYPE, convert_to_gguf
from glmops_trainer.export.merge import merge_lora_streaming
from glmops_trainer.export.quantize import quantize_gguf

PROMPT_TOKENS = 8
GREEDY_TOKENS = 32
F32_GOAL = 1e-3
QUANTIZATIONS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M")
HELD_OUT_TEXT = (
    "Platform teams apply YAML and read kubectl get; the operator validates each job, places its pods on "
    "nodes with enough GPU memory and records the artifacts with their checksums."
)
VARIANTS = {"glm4_moe": "flagship", "glm4_moe_lite": "flash"}


def train_qlora_adapter(base: Path, out_dir: Path, arch: str, token_ids: list[int], steps: int = 60) -> Path:
    """Train a LoRA the way the trainer does: the 4-bit base from load_base_model, apply_lora, AdamW."""
    from glmops_trainer.config import LoraConfig, LoraTarget, Method, Variant
    from glmops_trainer.model.load import load_base_model
    from glmops_trainer.model.targets import apply_lora

    torch.manual_seed(0)
    variant = Variant(VARIANTS[arch])
    model = load_base_model(base, variant, Method.qlora, gradient_checkpointing=False)
    lora = LoraConfig(rank=8, alpha=16, dropout=0.0, targets=[LoraTarget.attention, LoraTarget.experts])
    peft_model = apply_lora(model, lora, variant)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-3)
    ids = torch.tensor([token_ids])
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def qlora_logits(base: Path, adapter: Path, arch: str, token_ids: list[int]) -> np.ndarray:
    """Logits of every position from the model as trained: 4-bit base + the adapter (training mode kernels)."""
    from glmops_trainer.config import Method, Variant
    from glmops_trainer.model.load import load_base_model
    from glmops_trainer.model.targets import load_adapter
    from glmops_trainer.train import keep_4bit_layers_trainable

    model = load_base_model(base, Variant(VARIANTS[arch]), Method.qlora, gradient_checkpointing=False)
    peft_model = load_adapter(model, adapter)
    keep_4bit_layers_trainable(peft_model)  # the kernels training used, not bitsandbytes' CPU inference repack
    peft_model.eval()
    with torch.no_grad():
        return peft_model(input_ids=torch.tensor([token_ids])).logits[0].float().numpy()  # type: ignore[no-any-return]


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over positions of KL(softmax(reference) || softmax(other))."""
    ref = torch.log_softmax(torch.from_numpy(reference).double(), dim=-1)
    oth = torch.log_softmax(torch.from_numpy(other).double(), dim=-1)
    return float((ref.exp() * (ref - oth)).sum(dim=-1).mean())


def measure_qlora(arch: str, workdir: Path, tokenizer_dir: Path) -> dict[str, float]:
    """The as-trained QLoRA model against its GGUF exports on held-out text."""
    root = workdir / f"{arch}-qlora"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    train_ids = tokenizer(MEMORISED_TEXT, add_special_tokens=False)["input_ids"]
    held_out = tokenizer(HELD_OUT_TEXT, add_special_tokens=False)["input_ids"]
    base = build_base(arch, root / "base", tokenizer_dir, num_shards=2, dtype=torch.float32, initializer_range=0.1)  # type: ignore[arg-type]
    adapter = train_qlora_adapter(base, root / "adapter", arch, train_ids)
    merged = root / "merged"
    merge_lora_streaming(base, adapter, merged)
    f32 = convert_to_gguf(merged, root / "model-F32.gguf", "f32")
    as_trained = qlora_logits(base, adapter, arch, held_out)
    figures = {"max_abs_logit_diff": float(np.abs(llama_cpp_logits(f32, held_out) - as_trained).max())}
    figures["kl_F32"] = mean_kl(as_trained, llama_cpp_logits(f32, held_out))
    for quantization in QUANTIZATIONS:
        gguf = quantize_gguf(f32, root / f"model-{quantization}.gguf", quantization)
        figures[f"kl_{quantization}"] = mean_kl(as_trained, llama_cpp_logits(gguf, held_out))
    # the merged checkpoint in transformers: the part of the gap that is the 4-bit base, not llama.cpp
    figures["kl_merged_hf"] = mean_kl(as_trained, hf_logits(merged, held_out))
    print(
        f"{arch} as trained (QLoRA) vs GGUF on {len(held_out)} held-out tokens: max abs logit diff (F32) "
        f"{figures['max_abs_logit_diff']:.3f}; mean KL "
        + ", ".join(f"{k.removeprefix('kl_')} {v:.2e}" for k, v in figures.items() if k.startswith("kl_"))
    )
    return figures


def measure(arch: str, workdir: Path, tokenizer_dir: Path) -> tuple[float, int]:
    """(f32 max abs logit difference, Q8_0 greedy tokens matching transformers) for one architecture."""
    root = workdir / arch
    token_ids = AutoTokenizer.from_pretrained(str(tokenizer_dir))(MEMORISED_TEXT, add_special_tokens=False)[
        "input_ids"
    ]
    base = build_base(
        arch,
        root / "base",
        tokenizer_dir,
        num_shards=2,
        dtype=torch.float32,  # type: ignore[arg-type]
        initializer_range=0.1,
    )
    adapter = train_memorising_adapter(base, root / "adapter", arch, token_ids)
    merged = root / "merged"
    merge_lora_streaming(base, adapter, merged)
    f32 = convert_to_gguf(merged, root / "model-F32.gguf", "f32")
    q8 = quantize_gguf(f32, root / "model-Q8_0.gguf", "Q8_0")

    difference = float(np.abs(llama_cpp_logits(f32, token_ids) - hf_logits(merged, token_ids)).max())
    prompt = token_ids[:PROMPT_TOKENS]
    reference = hf_greedy(merged, prompt, GREEDY_TOKENS)
    quantized = llama_cpp_greedy(q8, prompt, GREEDY_TOKENS)
    matched = next(
        (i for i, (a, b) in enumerate(zip(reference, quantized, strict=True)) if a != b), GREEDY_TOKENS
    )
    memorised = reference == token_ids[PROMPT_TOKENS : PROMPT_TOKENS + GREEDY_TOKENS]
    print(
        f"{arch} -> {GGUF_ARCH_BY_MODEL_TYPE[arch]}: f32 max abs logit diff {difference:.2e}; "
        f"Q8_0 greedy matches {matched}/{GREEDY_TOKENS} tokens (transformers reproduces the text: {memorised})"
    )
    return difference, matched


def main() -> int:
    """Run both architectures and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="glmops-gguf-parity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer_dir = build_tokenizer(workdir / "tokenizer")
        figures = {arch: measure(arch, workdir, tokenizer_dir) for arch in ("glm4_moe", "glm4_moe_lite")}
        qlora = {arch: measure_qlora(arch, workdir, tokenizer_dir) for arch in ("glm4_moe", "glm4_moe_lite")}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    worst_diff = max(diff for diff, _ in figures.values())
    worst_match = min(match for _, match in figures.values())
    per_arch = " ".join(
        f"f32_max_abs_logit_diff_{GGUF_ARCH_BY_MODEL_TYPE[a]}={d:.2e} q8_greedy_match_tokens_{GGUF_ARCH_BY_MODEL_TYPE[a]}={m}"
        for a, (d, m) in figures.items()
    )
    print(
        f"goal: f32 diff < {F32_GOAL} and {GREEDY_TOKENS}/{GREEDY_TOKENS} greedy tokens: "
        f"{'met' if worst_diff < F32_GOAL and worst_match == GREEDY_TOKENS else 'NOT met'}"
    )
    qlora_fields = {
        key: max(values[key] for values in qlora.values()) for key in next(iter(qlora.values()))
    }
    qlora_text = f"qlora_to_gguf_max_abs_logit_diff={qlora_fields.pop('max_abs_logit_diff'):.3f} " + " ".join(
        f"qlora_{key}={value:.2e}" for key, value in qlora_fields.items()
    )
    print(f"RESULT f32_max_abs_logit_diff={worst_diff:.2e} q8_greedy_match_tokens={worst_match} {per_arch} {qlora_text}")
    return 0 if worst_diff < F32_GOAL and worst_match == GREEDY_TOKENS else 1


if __name__ == "__main__":
    sys.exit(main())

"""GGUF parity: llama.cpp on the exported GGUF against transformers on the merged checkpoint.

    .venv/bin/python bench/gguf_parity.py [--workdir DIR] [--keep]

For each GLM-4.7 architecture (glm4_moe -> GGUF glm4moe, glm4_moe_lite -> deepseek2): a tiny
float32 model, a LoRA trained with peft to memorise a text, the streaming merge, llama.cpp's
converter (F32) and llama-quantize (Q8_0). Figures:

- f32_max_abs_logit_diff: max |logit| difference over every position of the memorised text between
  llama.cpp (F32 GGUF, F32 KV cache) and transformers (merged checkpoint, float32). Goal < 1e-3.
- q8_greedy_match_tokens: how many of 32 greedy tokens after an 8-token prompt the Q8_0 GGUF
  produces identically to transformers before the first difference. Goal 32.

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
    print(f"RESULT f32_max_abs_logit_diff={worst_diff:.2e} q8_greedy_match_tokens={worst_match} {per_arch}")
    return 0 if worst_diff < F32_GOAL and worst_match == GREEDY_TOKENS else 1


if __name__ == "__main__":
    sys.exit(main())

"""QLoRA of a GLM-4.7-Flash-shaped model on one GPU with the real trainer: peak memory beside the memory plan, and tokens/s.

    .venv/bin/python bench/gpu_flash_qlora.py [--layers 8] [--seq 8192] [--steps 20] [--rank 16]
    .venv/bin/python bench/gpu_flash_qlora.py --tiny --device cpu --seq 512 --steps 3   # smoke test of the path

Needs CUDA (without it, it stops and says so; CI runs only the smoke test). The checkpoint has
GLM-4.7-Flash's real sizes (hidden 2048, MLA q_lora 768 / kv_lora 512, 64 routed experts top-4 + 1
shared of size 1536, vocabulary 154880) and `--layers` decoder layers (the first dense; the real
model has 47, about 60 GB in bf16, more than the benchmark machine's disk): about 1.3 GB of bf16
weights per layer. Then the trainer as a FineTuneJob runs it: `glmops_trainer.train.main` with
`load_base_model` (NF4 linears and NF4 routed experts, quantized while loading), LoRA on Flash's
default targets (attention, shared and routed experts), packed rows of `--seq` tokens of long-tail
agentic sessions, gradient checkpointing, bf16. CUDA's peak statistics are reset before loading;
the plan is `plan_memory` for the same dims (see bench/gpu_run.py for what is measured). Goal:
device peak within 15% of the plan.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_run import (
    add_common_arguments,
    build_checkpoint,
    dataset,
    require_device,
    run_and_report,
    trainer_config,
)

FLASH_SIZES = {
    "vocab_size": 154880, "hidden_size": 2048, "intermediate_size": 10240, "moe_intermediate_size": 1536,
    "num_attention_heads": 20, "num_key_value_heads": 20, "q_lora_rank": 768, "kv_lora_rank": 512,
    "qk_nope_head_dim": 192, "qk_rope_head_dim": 64, "v_head_dim": 256, "n_routed_experts": 64,
    "num_experts_per_tok": 4, "n_shared_experts": 1, "routed_scaling_factor": 1.8, "initializer_range": 0.02,
}  # fmt: skip
"""GLM-4.7-Flash's config.json sizes (the same as glmops.plan.memory.FLASH)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, layers=8, seq=8192)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the checkpoint and data, train with the real trainer, print plan vs peak and one RESULT line."""
    args = parse_args(argv)
    require_device(args)
    layers = 3 if args.tiny and args.layers == 8 else args.layers
    overrides = {"num_hidden_layers": layers} if args.tiny else {**FLASH_SIZES, "num_hidden_layers": layers}
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_checkpoint("glm4_moe_lite", args.workdir, overrides, args.tiny)
    data = dataset(args.workdir, samples=256, tiny=args.tiny)
    config = trainer_config(model_dir, data, args.workdir, "flash", args, ["attention", "shared_experts", "experts"])
    run_and_report(config, model_dir, "flash", "replicate", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

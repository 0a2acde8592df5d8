"""QLoRA of a GLM-4.7-flagship-shaped model under FSDP2 with the real trainer: peak memory per GPU beside the plan, and tokens/s.

    torchrun --nproc-per-node=GPUS bench/gpu_flagship_fsdp.py [--layers 3] [--seq 8192] [--steps 10]
    torchrun --nproc-per-node=2 bench/gpu_flagship_fsdp.py --tiny --device cpu --seq 512 --steps 2   # smoke test

Needs CUDA (without it, it stops and says so; CI runs only the smoke test on two CPU ranks). The
checkpoint has the flagship's real sizes (hidden 5120, GQA 96/8 heads of 128 with qk-norm and
q/k/v bias, 160 routed experts top-8 + 1 shared of size 1536, vocabulary 151552) and `--layers`
decoder layers (the first dense): one MoE layer is 3.8B parameters, 7.5 GB in bf16, so the default
three layers (8.6B parameters, about 4.5 GB in 4-bit) fit one GPU and the benchmark machine's disk.

It runs the flagship's production path: one process per GPU, the trainer's `model_placement`
(FSDP2 on several ranks), the shard-aware loader (`load_sharded_model`: each rank reads and
quantizes only its share), the chunked loss, layer inputs moved to host memory, LoRA on the
flagship's default targets (attention, shared experts). On a machine with one GPU the run is FSDP
over one rank (the same loader, wrapping, gathers and loss; each shard is the whole parameter): NCCL
allows one rank per GPU, so that is as many ranks as one GPU allows. The plan is `plan_memory` for
the same dims and ranks with sharding fsdp. Goal: device peak per GPU within 15% of the plan.
"""

from __future__ import annotations

import argparse
import os
import socket
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
    world,
)

FLAGSHIP_SIZES = {
    "vocab_size": 151552, "hidden_size": 5120, "intermediate_size": 12288, "moe_intermediate_size": 1536,
    "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128, "n_routed_experts": 160,
    "num_experts_per_tok": 8, "n_shared_experts": 1, "first_k_dense_replace": 1, "initializer_range": 0.02,
}  # fmt: skip
"""GLM-4.7's config.json sizes (the same as glmops.plan.memory.FLAGSHIP); the tiny config keeps qk-norm and bias."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, layers=3, seq=8192)
    args = parser.parse_args(argv)
    if args.steps == 20:
        args.steps = 10
    return args


def ensure_process_group(device: str) -> None:
    """FSDP needs a process group even for one rank; torchrun sets the rendezvous, a plain python run gets a local one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    dist.init_process_group("nccl" if device == "cuda" else "gloo")


def main(argv: list[str] | None = None) -> int:
    """Build the checkpoint and data, train sharded with the real trainer, print plan vs peak and one RESULT line."""
    args = parse_args(argv)
    require_device(args)
    ensure_process_group(args.device)
    from glmops_trainer import train

    if world() == 1:
        # One GPU: run the multi-GPU path over a world of one (the trainer would hold a whole replica otherwise).
        train.model_placement = lambda config: "fsdp"  # type: ignore[assignment]
    overrides = {"num_hidden_layers": args.layers} if args.tiny else {**FLAGSHIP_SIZES, "num_hidden_layers": args.layers}
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_checkpoint("glm4_moe", args.workdir, overrides, args.tiny)
    data = dataset(args.workdir, samples=256, tiny=args.tiny)
    config = trainer_config(model_dir, data, args.workdir, "flagship", args, ["attention", "shared_experts"])
    run_and_report(config, model_dir, "flagship", "fsdp", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

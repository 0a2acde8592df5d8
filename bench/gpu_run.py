"""What the GPU benchmarks share: a random-weight checkpoint of real GLM-4.7 shapes, the real trainer, and plan vs peak.

`bench/gpu_flash_qlora.py` and `bench/gpu_flagship_fsdp.py` build a checkpoint with the real
hidden, attention, expert and vocabulary sizes of their variant (fewer layers, so that it fits the
machine's disk and memory), write a long-tail agentic dataset, and run the trainer's own
`glmops_trainer.train.main(config)`: `load_base_model` (or the FSDP loader), LoRA, transformers'
Trainer, checkpointing. Before loading, every rank resets CUDA's peak statistics; after training
each rank reports its peak (allocated, reserved, and the device memory in use as nvidia-smi shows
it: reserved + CUDA context), and rank 0 prints them beside the memory plan for the same dims,
launch and sequence length, with the trainer's tokens/s. The last line reads `RESULT key=value ...`.

A smoke mode (`--tiny --device cpu`) runs the same path on a tiny model on the CPU (tests use it);
without it, a machine without CUDA is refused with an error that says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
GIB = 1024**3


def add_common_arguments(parser: argparse.ArgumentParser, layers: int, seq: int) -> None:
    """Flags both GPU benchmarks take."""
    parser.add_argument("--layers", type=int, default=layers, help=f"decoder layers (default {layers})")
    parser.add_argument("--seq", type=int, default=seq, help=f"tokens per packed row (default {seq})")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/glmops-gpu-bench"), help="checkpoint, data, output")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda (default) or cpu (smoke only)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of the real sizes")


def require_device(args: argparse.Namespace) -> None:
    """Refuse to run the real sizes without CUDA, or a CPU run without --tiny."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "CUDA is not available: this benchmark measures GPU memory and speed and needs an NVIDIA GPU "
            "(smoke-test the path on a CPU with --tiny --device cpu)"
        )
    if args.device == "cpu" and not args.tiny:
        raise SystemExit("--device cpu runs only the --tiny smoke test; the real sizes need a GPU")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_checkpoint(arch: str, workdir: Path, overrides: dict[str, Any], tiny: bool) -> Path:
    """A random-weight checkpoint of `arch` with the tiny tokenizer (vocabulary ids beyond it are never used)."""
    import torch

    from glmops_trainer.tiny.models import build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    model_dir = workdir / f"model-{arch}-{'tiny' if tiny else 'real'}-{overrides.get('num_hidden_layers')}"
    done = model_dir / "BUILT"
    if rank() == 0 and not done.exists():
        tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
        build_tiny_model(arch, model_dir, tokenizer, dtype=torch.bfloat16, num_shards=8, **overrides)  # type: ignore[arg-type]
        done.write_text("ok\n")
    while not done.exists():  # other ranks wait for rank 0's build
        time.sleep(2)
    return model_dir


def dataset(workdir: Path, samples: int, tiny: bool = False) -> Path:
    """Long-tail agentic sessions (up to ~3,000 tokens); the tiny smoke test takes the fixture's short ones."""
    from trainer_throughput import DATASET, longtail_dataset

    if tiny:
        return DATASET

    path = workdir / f"longtail-{samples}.jsonl"
    if rank() == 0 and not path.exists():
        longtail_dataset(path.with_suffix(".tmp"), samples).rename(path)
    while not path.exists():
        time.sleep(1)
    return path


def trainer_config(
    model_dir: Path, data: Path, workdir: Path, variant: str, args: argparse.Namespace, targets: list[str]
) -> dict[str, Any]:
    """The trainer config of the run: packed rows of --seq tokens, --steps steps, the variant's LoRA targets."""
    out = workdir / f"out-{variant}-{int(time.time())}" if rank() == 0 else workdir / "unused"
    return {
        "job": {"name": f"gpu-bench-{variant}", "uid": "gpu-bench"},
        "model": {"source": f"file://{model_dir}", "variant": variant},
        "data": {"source": f"file://{data}", "validation_split": 0.0},
        "training": {
            "method": "qlora",
            "max_steps": args.steps,
            "learning_rate": 1e-4,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "sequence_length": args.seq,
            "micro_batch_size": 1,
            "gradient_accumulation_steps": 1,
            "gradient_checkpointing": True,
            "checkpoint_every": args.steps,
            "keep_checkpoints": 1,
            "lora": {"rank": args.rank, "alpha": 2 * args.rank, "dropout": 0.05, "targets": targets},
        },
        "output": {"destination": f"file://{os.environ.get('GLMOPS_BENCH_OUT', out)}", "formats": ["adapter"]},
        "runtime": {"result_file": str(workdir / f"result-{variant}.json"), "progress_interval_seconds": 10},
    }


def run_and_report(
    config_dict: dict[str, Any], model_dir: Path, variant: str, sharding: str, args: argparse.Namespace
) -> None:
    """Run the trainer, measure every rank's peak, print plan vs measurement and the RESULT line (rank 0)."""
    import torch

    from glmops.plan.memory import ModelDims, plan_memory
    from glmops_trainer import train
    from glmops_trainer.config import TrainerConfig

    on_cuda = args.device == "cuda"
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.reset_peak_memory_stats()
    config = TrainerConfig.model_validate(config_dict)
    started = time.perf_counter()
    result = train.main(config)
    wall = time.perf_counter() - started

    report: dict[str, Any] = {"rank": rank()}
    if on_cuda:
        free, total = torch.cuda.mem_get_info()
        peak_reserved = torch.cuda.max_memory_reserved() / GIB
        report.update(
            peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
            peak_reserved_gib=round(peak_reserved, 2),
            # device memory in use now, plus what the allocator released since its peak
            device_peak_gib=round((total - free) / GIB + peak_reserved - torch.cuda.memory_reserved() / GIB, 2),
            gpu=torch.cuda.get_device_name().replace(" ", "_"),
        )
    reports = [report]
    if torch.distributed.is_initialized() and world() > 1:
        gathered: list[Any] = [None] * world()
        torch.distributed.all_gather_object(gathered, report)
        reports = gathered
    if rank() != 0:
        return

    dims = ModelDims.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    plan = plan_memory(
        variant=variant, method="qlora", lora_rank=args.rank, targets=[t.value for t in config.training.lora.targets],
        sequence_length=args.seq, micro_batch_size=1, gpus=world(), dims=dims, compute_bytes=2 if on_cuda else 4,
        sharding=sharding,  # type: ignore[arg-type]
        runtime_overhead_gib=2.5 if on_cuda else 0.0,
    )  # fmt: skip
    print("plan per GPU:", ", ".join(f"{k} {v:.2f}" for k, v in plan.breakdown_gib.items()), f"= {plan.per_gpu_gib:.2f} GiB")
    for r in reports:
        print(f"rank {r['rank']}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "rank"))
    fields: dict[str, Any] = {
        "variant": variant,
        "sharding": sharding,
        "ranks": world(),
        "layers": dims.num_layers,
        "params_b": round(dims.total_parameters() / 1e9, 3),
        "seq": args.seq,
        "steps": result.step,
        "tokens_per_s": round(result.tokens_per_second or 0.0, 1),
        "wall_s": round(wall, 1),
        "loss_last": result.train_loss,
        "plan_per_gpu_gib": round(plan.per_gpu_gib, 2),
    }
    if on_cuda:
        worst = max(reports, key=lambda r: r["device_peak_gib"])
        fields.update(
            device_peak_gib=worst["device_peak_gib"],
            peak_allocated_gib=worst["peak_allocated_gib"],
            plan_over_device_peak=round(plan.per_gpu_gib / worst["device_peak_gib"], 3),
            gpu=worst["gpu"],
        )
    print("RESULT " + " ".join(f"{key}={value}" for key, value in fields.items()))

"""One rank of the FSDP tests: load the tiny flagship with the sharded loader, train a few steps, report.

    torchrun --nproc-per-node=N tests/trainer/fsdp_worker.py --model DIR --out DIR [--steps 3]
    python tests/trainer/fsdp_worker.py --model DIR --out DIR        # one process, unsharded reference

Writes `rank-<r>.json`: the process's resident memory (VmRSS, after returning freed heap to the
system) before and after loading, the bytes of this rank's tensors, and the loss of every step
(averaged over ranks). Every rank trains its own slice of the same global batch, so the losses of any
number of ranks are those of one process training the whole batch.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from glmops_trainer.config import LoraConfig, LoraTarget, Method, Variant
from glmops_trainer.model.sharded import load_sharded_model, local_parameter_bytes

GLOBAL_BATCH = 4
SEQUENCE = 32


def resident_bytes() -> int:
    """VmRSS of this process after handing freed heap back to the system (glibc keeps it otherwise)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    lora = LoraConfig(
        rank=8, alpha=16, dropout=0.0, targets=[LoraTarget.attention, LoraTarget.shared_experts, LoraTarget.experts]
    )
    before = resident_bytes()
    model = load_sharded_model(
        args.model, Variant.flagship, Method.qlora, lora,
        device=torch.device("cpu"), compute_dtype=torch.float32, shard=world > 1,
    )  # fmt: skip
    after = resident_bytes()
    held = local_parameter_bytes(model)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = torch.randint(0, 2000, (GLOBAL_BATCH, SEQUENCE), generator=torch.Generator().manual_seed(0))
    mine = batch[rank::world]
    model.train()
    losses = []
    for _ in range(args.steps):
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(float(mean))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"world": world, "rss_before": before, "rss_after_load": after, "held": held, "losses": losses}
    (args.out / f"rank-{rank}.json").write_text(json.dumps(report))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

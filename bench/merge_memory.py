"""Peak memory of the streaming LoRA merge against peft's merge_and_unload, on the same 8-shard model.

    .venv/bin/python bench/merge_memory.py [--workdir DIR] [--keep]

Builds a GLM-4.7-architecture (glm4_moe) checkpoint of a few hundred MB in bf16, in about 8 shards
(transformers packs greedily, so a few more files), and a
LoRA adapter on attention and routed experts (random B, so the merge changes every adapted weight).
Each merge then runs in its own fresh subprocess, which reports its resident memory after its
imports (the baseline) and its peak resident memory (VmHWM) after the merge; the figure is the
increase over the baseline divided by the size of the model's weights.

Goal: peak_rss_over_model <= 0.35 (one shard plus one tensor plus the adapter, not the model).
The last line reads `RESULT peak_rss_over_model=... peft_peak_rss_over_model=... model_mb=...`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL = 0.35

_MEASURE = r"""
import json, sys
from pathlib import Path

def rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)

mode, base, adapter, out = sys.argv[1:5]
import torch
from glmops_trainer.export.merge import merge_lora_streaming
if mode == "peft":
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
baseline = rss_kib("VmRSS")
if mode == "streaming":
    merge_lora_streaming(Path(base), Path(adapter), Path(out))
else:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
print(json.dumps({"baseline_kib": baseline, "peak_kib": rss_kib("VmHWM")}))
"""


def build_inputs(workdir: Path) -> tuple[Path, Path, int]:
    """The sharded bf16 base checkpoint and its adapter; returns (base, adapter, weight bytes)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from glmops_trainer.tiny.models import build_tiny_model

    base = build_tiny_model(
        "glm4_moe",
        workdir / "base",
        None,
        seed=0,
        num_shards=8,
        dtype=torch.bfloat16,
        hidden_size=1024,
        intermediate_size=2048,
        moe_intermediate_size=512,
        n_routed_experts=16,
        num_hidden_layers=7,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=128,
        vocab_size=8192,
    )
    weight_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    peft_model.save_pretrained(str(workdir / "adapter"))
    return base, workdir / "adapter", weight_bytes


def measure(mode: str, base: Path, adapter: Path, out: Path) -> int:
    """Peak RSS increase (bytes) of one merge run in a fresh interpreter."""
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE, mode, str(base), str(adapter), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} merge failed:\n{completed.stderr[-3000:]}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    return (int(figures["peak_kib"]) - int(figures["baseline_kib"])) * 1024


def main() -> int:
    """Build the inputs, run both merges, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the model (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="glmops-merge-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        base, adapter, weight_bytes = build_inputs(workdir)
        shards = len(list(base.glob("*.safetensors")))
        ours = measure("streaming", base, adapter, workdir / "merged-streaming")
        theirs = measure("peft", base, adapter, workdir / "merged-peft")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    mib = 1024 * 1024
    print(f"model weights:            {weight_bytes / mib:8.1f} MiB in {shards} shards")
    print(
        f"streaming merge peak RSS: {ours / mib:8.1f} MiB over its baseline ({ours / weight_bytes:.3f} x model)"
    )
    print(
        f"peft merge_and_unload:    {theirs / mib:8.1f} MiB over its baseline ({theirs / weight_bytes:.3f} x model)"
    )
    print(f"goal: streaming <= {GOAL} x model: {'met' if ours / weight_bytes <= GOAL else 'NOT met'}")
    print(
        f"RESULT peak_rss_over_model={ours / weight_bytes:.3f} peft_peak_rss_over_model={theirs / weight_bytes:.3f} "
        f"model_mb={weight_bytes / mib:.1f} shards={shards}"
    )
    return 0 if ours / weight_bytes <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())

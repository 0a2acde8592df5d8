"""Resident weight bytes of plain bitsandbytes load_in_4bit against glmops' 4-bit experts, on the same MoE model.

    .venv/bin/python bench/moe_memory.py [--workdir DIR] [--experts 32] [--moe-intermediate 512]

Builds a GLM-4.7-architecture (glm4_moe) checkpoint whose routed experts hold ~90% of the
parameters, as in the real flagship (which is ~94%), and loads it twice on this machine's device:

- plain: `BitsAndBytesConfig(load_in_4bit=True, nf4, double quant)`, which quantizes nn.Linear
  only; the fused 3D experts stay bf16.
- ours: `glmops_trainer.model.load.load_quantized_model`, which also stores the routed experts in
  NF4 (NF4Experts) while loading.

Both are counted by `resident_weight_bytes` (every parameter, buffer and quant state, once). It
also reports relative errors against the unquantized model (the routed experts' output under the
same routing, and the logits of both loads), and the memory plan of the real models (QLoRA,
sequence length 8192).

Then memory while loading, measured as process memory: a bigger flagship-architecture checkpoint
in several safetensors shards (--load-experts routed experts of hidden and MoE size 1024 per layer,
about 1.2 GB in bf16 at the default 64) is loaded in a fresh process by each loader, and the
process's resident memory is read from /proc: VmRSS before loading and after it (freed heap
returned to the system first), and the peak during loading (VmHWM, reset just before the load).
The loaders: `sharded` is the flagship's FSDP loader (`load_sharded_model`, here unsharded in one
process: the same reads and quantization one rank does for its share), `transformers` is the
single-process loader (`load_quantized_model`, transformers' streaming loader with our quantizer).
A second checkpoint with half the experts gives `expert_bytes_per_param_rss`: the difference of the
two resident sizes over the difference of their expert parameters, so interpreter and the rest of
the model cancel out.

Goals: expert_bytes_per_param <= 0.6 (plain: 2.0) by tensor sizes and by RSS;
load_peak_over_resident (peak RSS during load / RSS after load, flagship loader) <= 1.3.
The last line reads `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

EXPERT_GOAL = 0.6
LOAD_PEAK_GOAL = 1.3


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path, help="where to build the model (default: a temporary directory)"
    )
    parser.add_argument("--experts", type=int, default=32, help="routed experts per MoE layer")
    parser.add_argument(
        "--moe-intermediate", type=int, default=512, help="moe_intermediate_size (multiple of 256)"
    )
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (the first is dense)")
    parser.add_argument(
        "--load-experts", type=int, default=64, help="routed experts per layer of the load-memory checkpoint"
    )
    parser.add_argument("--skip-load", action="store_true", help="skip the load-memory measurements")
    parser.add_argument(
        "--loaders", default="sharded,transformers", help="loaders to measure, comma-separated (default both)"
    )
    parser.add_argument("--measure-load", nargs=2, metavar=("LOADER", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_load:
        print(json.dumps(measure_load(*args.measure_load)))
        return 0

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from glmops.plan.memory import plan_memory
    from glmops_trainer.model.experts4bit import resident_weight_bytes, routed_expert_parameter_count
    from glmops_trainer.model.load import default_compute_dtype, default_device_map, load_quantized_model
    from glmops_trainer.tiny.models import build_tiny_model

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="moe-memory-"))
    model_dir = build_tiny_model(
        "glm4_moe",
        workdir / "model",
        n_routed_experts=args.experts,
        moe_intermediate_size=args.moe_intermediate,
        num_hidden_layers=args.layers,
    )
    compute_dtype = default_compute_dtype()
    device_map = default_device_map()

    plain_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    # storage: both loaded with bf16 for what stays unquantized
    plain = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=plain_config, dtype=torch.bfloat16, device_map=device_map
    )
    plain_bytes = resident_weight_bytes(plain)
    ours = load_quantized_model(model_dir, compute_dtype=torch.bfloat16, device_map=device_map)
    ours_bytes = resident_weight_bytes(ours)
    # accuracy: everything in the compute dtype (float32 on CPU, where bf16 matmuls are slow)
    if compute_dtype != torch.bfloat16:
        plain = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=plain_config, dtype=compute_dtype, device_map=device_map
        )
        ours = load_quantized_model(model_dir, compute_dtype=compute_dtype, device_map=device_map)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute_dtype, device_map=device_map)
    total_params = sum(p.numel() for p in dense.parameters())
    expert_params = routed_expert_parameter_count(dense)
    device = next(dense.parameters()).device
    ids = torch.randint(0, 1500, (2, 64), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        reference = dense(ids).logits.float()
        logit_error = _relative_error(ours(ids).logits.float(), reference)
        plain_logit_error = _relative_error(plain(ids).logits.float(), reference)
        # the routed experts alone: same tokens, same routing, dense vs NF4
        hidden = torch.randn(256, dense.config.hidden_size, generator=torch.Generator().manual_seed(1)).to(
            device
        )
        output_errors = []
        for layer_dense, layer_ours in zip(dense.model.layers, ours.model.layers, strict=True):
            if not hasattr(layer_dense.mlp, "experts"):
                continue
            _, weights, indices = layer_dense.mlp.gate(hidden.to(compute_dtype))
            x = hidden.to(compute_dtype)
            output_errors.append(
                _relative_error(
                    layer_ours.mlp.experts(x, indices, weights), layer_dense.mlp.experts(x, indices, weights)
                )
            )
    experts_output_error = max(output_errors)

    expert_share = expert_params / total_params
    expert_bytes_per_param = ours_bytes["nf4_experts"] / expert_params
    total_bytes_per_param = sum(ours_bytes.values()) / total_params
    plain_total = sum(plain_bytes.values()) / total_params
    print(
        f"model: {total_params / 1e6:.1f}M parameters, routed experts {expert_share:.1%} of them, device {device}"
    )
    print(f"plain load_in_4bit bytes by kind: {plain_bytes}")
    print(f"ours (NF4 experts) bytes by kind: {ours_bytes}")
    print(
        f"relative error vs the unquantized model: routed experts' output (same routing) {experts_output_error:.4f}; "
        f"logits: plain load_in_4bit {plain_logit_error:.4f}, ours {logit_error:.4f} (random-weight models "
        "amplify perturbations through routing flips; compare the two)"
    )

    plans = {}
    for variant, gpus, targets in (
        ("flash", 1, ["attention", "shared_experts", "experts"]),
        ("flagship", 8, ["attention", "shared_experts"]),
        ("flagship", 8, ["attention", "shared_experts", "experts"]),
    ):
        plan = plan_memory(
            variant=variant,
            method="qlora",
            lora_rank=16,
            targets=targets,
            sequence_length=8192,
            micro_batch_size=1,
            gpus=gpus,
        )
        key = f"{variant}{'_experts' if variant == 'flagship' and 'experts' in targets else ''}"
        plans[key] = plan
        detail = ", ".join(f"{name} {gib:.1f}" for name, gib in plan.breakdown_gib.items())
        print(
            f"plan {variant} qlora r16 {'+'.join(targets)} seq 8192 on {gpus} GPU(s): {plan.per_gpu_gib:.1f} GiB per GPU, "
            f"{plan.total_gib:.1f} GiB total ({plan.parameters / 1e9:.1f}B params, {plan.lora_parameters / 1e6:.0f}M LoRA; "
            f"per GPU: {detail})"
        )
    load = {} if args.skip_load else load_memory(workdir, args.load_experts, args.loaders.split(","))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    load_fields = " ".join(f"{key}={value}" for key, value in load.items())
    print(
        f"RESULT expert_bytes_per_param={expert_bytes_per_param:.4f} total_bytes_per_param={total_bytes_per_param:.4f} "
        f"plain_total_bytes_per_param={plain_total:.4f} expert_share={expert_share:.4f} "
        f"experts_output_rel_error={experts_output_error:.4f} logit_rel_error={logit_error:.4f} "
        f"plain_logit_rel_error={plain_logit_error:.4f} goal_expert_bytes_per_param={EXPERT_GOAL} "
        f"flash_qlora_per_gpu_gib={plans['flash'].per_gpu_gib:.1f} "
        f"flagship_qlora_total_gib={plans['flagship'].total_gib:.1f} "
        f"flagship_qlora_experts_total_gib={plans['flagship_experts'].total_gib:.1f} {load_fields}"
    )
    met = expert_bytes_per_param <= EXPERT_GOAL
    if load:
        met = met and float(load["load_peak_over_resident"]) <= LOAD_PEAK_GOAL
        met = met and float(load["expert_bytes_per_param_rss"]) <= EXPERT_GOAL
    return 0 if met else 1


def load_memory(workdir: Path, experts: int, loaders: list[str]) -> dict[str, Any]:
    """Build the two load checkpoints, load each with each loader in a fresh process, return the figures."""
    from glmops_trainer.tiny.models import build_tiny_model

    shape: dict[str, Any] = {
        "hidden_size": 1024, "intermediate_size": 1024, "moe_intermediate_size": 1024, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
    }  # fmt: skip
    counts = {"full": experts, "half": experts // 2}
    dirs = {
        name: build_tiny_model("glm4_moe", workdir / f"load-{name}", n_routed_experts=count, num_shards=4, **shape)
        for name, count in counts.items()
    }
    # expert parameters per checkpoint: 3 MoE layers x experts x (gate, up, down) x hidden x moe size
    expert_params = {name: 3 * count * 3 * 1024 * 1024 for name, count in counts.items()}
    measured: dict[str, dict[str, dict[str, int]]] = {}
    for loader in loaders:
        measured[loader] = {}
        for name, model_dir in dirs.items():
            done = subprocess.run(
                [sys.executable, __file__, "--measure-load", loader, str(model_dir)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            measured[loader][name] = json.loads(done.stdout.strip().splitlines()[-1])
            m = measured[loader][name]
            print(
                f"load {loader:12s} {counts[name]:3d} experts: RSS before {m['before'] / 2**20:.0f} MiB, "
                f"peak during load {m['peak'] / 2**20:.0f} MiB, after {m['after'] / 2**20:.0f} MiB"
            )
    figures: dict[str, Any] = {"load_experts": experts}
    for loader, prefix in (("sharded", ""), ("transformers", "transformers_")):
        if loader not in measured:
            continue
        full, half = measured[loader]["full"], measured[loader]["half"]
        figures[f"{prefix}load_peak_over_resident"] = f"{full['peak'] / full['after']:.3f}"
        net = (full["peak"] - full["before"]) / (full["after"] - full["before"])
        figures[f"{prefix}load_peak_over_resident_net"] = f"{net:.3f}"
        per_param = (full["after"] - half["after"]) / (expert_params["full"] - expert_params["half"])
        figures[f"{prefix}expert_bytes_per_param_rss"] = f"{per_param:.4f}"
    figures["load_resident_mib"] = round(measured[loaders[0]]["full"]["after"] / 2**20)
    figures["load_checkpoint_bf16_mib"] = round(sum(f.stat().st_size for f in dirs["full"].glob("*.safetensors")) / 2**20)
    return figures


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (this measurement needs Linux)")


def measure_load(loader: str, model_dir: str) -> dict[str, int]:
    """In this (fresh) process: resident bytes before and after loading `model_dir`, and the peak while loading."""
    import torch

    from glmops_trainer.config import LoraConfig, LoraTarget, Method, Variant
    from glmops_trainer.model.load import load_quantized_model
    from glmops_trainer.model.sharded import load_sharded_model

    torch.set_num_threads(1)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    before = _status_kib("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
    if loader == "sharded":
        lora = LoraConfig(rank=16, targets=[LoraTarget.attention, LoraTarget.shared_experts])
        model = load_sharded_model(
            Path(model_dir), Variant.flagship, Method.qlora, lora,
            device=torch.device("cpu"), compute_dtype=torch.float32, shard=False,
        )  # fmt: skip
    else:
        model = load_quantized_model(Path(model_dir), compute_dtype=torch.float32, device_map={"": "cpu"})
    peak = _status_kib("VmHWM") * 1024
    libc.malloc_trim(0)
    after = _status_kib("VmRSS") * 1024
    del model
    return {"before": before, "peak": peak, "after": after}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((value.float() - reference.float()).norm() / reference.float().norm()).item())


if __name__ == "__main__":
    raise SystemExit(main())

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

Goals: expert_bytes_per_param <= 0.6 (plain: 2.0); total_bytes_per_param well below plain's ~1.9.
The last line reads `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

EXPERT_GOAL = 0.6


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
    args = parser.parse_args(argv)

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
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"RESULT expert_bytes_per_param={expert_bytes_per_param:.4f} total_bytes_per_param={total_bytes_per_param:.4f} "
        f"plain_total_bytes_per_param={plain_total:.4f} expert_share={expert_share:.4f} "
        f"experts_output_rel_error={experts_output_error:.4f} logit_rel_error={logit_error:.4f} "
        f"plain_logit_rel_error={plain_logit_error:.4f} goal_expert_bytes_per_param={EXPERT_GOAL} "
        f"flash_qlora_per_gpu_gib={plans['flash'].per_gpu_gib:.1f} "
        f"flagship_qlora_total_gib={plans['flagship'].total_gib:.1f} "
        f"flagship_qlora_experts_total_gib={plans['flagship_experts'].total_gib:.1f}"
    )
    return 0 if expert_bytes_per_param <= EXPERT_GOAL else 1


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((value.float() - reference.float()).norm() / reference.float().norm()).item())


if __name__ == "__main__":
    raise SystemExit(main())

"""QLoRA on a GLM-4.7-Flash-shaped model on one GPU: peak memory beside the memory plan, and tokens/s.

    .venv/bin/python bench/gpu_flash_qlora.py [--layers 47] [--seq 4096] [--steps 20] [--rank 16]
    .venv/bin/python bench/gpu_flash_qlora.py --tiny --device cpu --seq 64 --steps 3   # smoke test

Needs CUDA for the real sizes (CI never runs it). The model is transformers' own
`Glm4MoeLiteForCausalLM` with GLM-4.7-Flash's config (hidden 2048, 64 routed experts top-4 + 1
shared, MLA q_lora 768 / kv_lora 512, vocab 154880; 47 layers unless --layers says fewer) and
random weights created directly on the device one module at a time: linears become bitsandbytes
NF4 `Linear4bit`, routed experts `NF4Experts`, so the bf16 model never exists whole. Then the
trainer's own steps: `prepare_model_for_kbit_training` (gradient checkpointing), `apply_lora`
with Flash's default targets (attention, shared_experts, experts), AdamW, bf16 autocast,
`--steps` steps of one random sequence of `--seq` tokens.

Reports torch's peak allocated and reserved memory, the device memory in use (what nvidia-smi
shows: reserved + CUDA context), the memory plan for the same dims, and tokens/s over the steps
after the first two. The last line reads `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the real 47)")
    parser.add_argument("--seq", type=int, default=4096, help="tokens per sequence (default 4096)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument(
        "--tiny", action="store_true", help="use the tiny test config instead of the real sizes"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def flash_config(layers: int | None, tiny: bool) -> Any:
    """GLM-4.7-Flash's config (transformers' Glm4MoeLiteConfig defaults are its released values)."""
    from transformers import Glm4MoeLiteConfig

    from glmops_trainer.tiny.models import tiny_config

    if tiny:
        return tiny_config("glm4_moe_lite", **({"num_hidden_layers": layers} if layers else {}))
    config = Glm4MoeLiteConfig(rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if layers is not None:
        config = Glm4MoeLiteConfig(
            num_hidden_layers=layers,
            mlp_layer_types=["dense"] + ["sparse"] * (layers - 1),
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
    return config


def build_flash_qlora_model(config: Any, device: torch.device, compute_dtype: torch.dtype) -> nn.Module:
    """A random-weight 4-bit Flash model on `device`, built module by module (never whole in bf16)."""
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers import BitsAndBytesConfig, Glm4MoeLiteForCausalLM
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    from glmops_trainer.model.experts4bit import EXPERT_WEIGHT_NAMES, NF4Experts, dense_experts_classes

    std = config.initializer_range
    with torch.device("meta"):
        model = Glm4MoeLiteForCausalLM(config)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=quantization)

    generator = torch.Generator(device=device).manual_seed(0)

    def random(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=compute_dtype) * std

    for name, module in list(model.named_modules()):
        if isinstance(module, dense_experts_classes()):
            experts = NF4Experts(
                num_experts=module.num_experts,
                hidden_dim=module.hidden_dim,
                intermediate_dim=module.intermediate_dim,
                act_fn=module.act_fn,
                compute_dtype=compute_dtype,
            )
            for weight in EXPERT_WEIGHT_NAMES:
                experts.load_dense_(weight, random(experts.shapes[weight]))  # one layer's stack at a time
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, experts)
        elif isinstance(module, bnb.nn.Linear4bit):
            old = module.weight
            module.weight = bnb.nn.Params4bit(
                random(tuple(old.shape)),
                requires_grad=False,
                **{k: v for k, v in old.__dict__.items() if k != "data"},
            ).to(device)
            if module.bias is not None:
                module.bias = nn.Parameter(torch.zeros(module.bias.shape, device=device, dtype=compute_dtype))
    # whatever is still on meta: embeddings, lm_head, norms, router, its fp32 bias
    for module_name, module in model.named_modules():
        for param_name, param in list(module.named_parameters(recurse=False)):
            if param.device.type != "meta":
                continue
            if "norm" in f"{module_name}.{param_name}":
                value = torch.ones(param.shape, device=device, dtype=compute_dtype)
            else:
                value = random(tuple(param.shape))
            setattr(module, param_name, nn.Parameter(value, requires_grad=False))
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.device.type == "meta" and buffer_name == "e_score_correction_bias":
                setattr(module, buffer_name, torch.zeros(buffer.shape, device=device, dtype=torch.float32))
    rotary_class = type(model.model.rotary_emb)
    with torch.device(device):
        model.model.rotary_emb = rotary_class(config)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftovers:
        raise RuntimeError(f"tensors left on meta: {leftovers[:5]}")
    model.is_loaded_in_4bit = True  # what transformers' bnb loader sets; peft reads it
    model.config.use_cache = False
    return model


def main(argv: list[str] | None = None) -> int:
    """Build, train `--steps` steps, print the measurements and one RESULT line."""
    args = parse_args(argv)
    import torch
    from peft import prepare_model_for_kbit_training

    from glmops.plan.memory import ModelDims, plan_memory
    from glmops_trainer.config import LoraConfig, LoraTarget, Variant
    from glmops_trainer.model.experts4bit import resident_weight_bytes
    from glmops_trainer.model.targets import apply_lora

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise SystemExit(
            "CUDA is not available; run on a GPU machine, or smoke-test with --tiny --device cpu"
        )
    compute_dtype = torch.bfloat16 if on_cuda else torch.float32
    torch.manual_seed(args.seed)
    config = flash_config(args.layers, args.tiny)

    started = time.perf_counter()
    model = build_flash_qlora_model(config, device, compute_dtype)
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    targets = [LoraTarget.attention, LoraTarget.shared_experts, LoraTarget.experts]
    lora = LoraConfig(rank=args.rank, alpha=2 * args.rank, dropout=0.05, targets=targets)
    peft_model = apply_lora(model, lora, Variant.flash)
    build_seconds = time.perf_counter() - started
    weights = resident_weight_bytes(peft_model)
    print(f"built in {build_seconds:.0f}s on {device}: resident bytes by kind {weights}")

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    peft_model.train()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    ids = torch.randint(0, config.vocab_size, (1, args.seq), generator=generator, device=device)
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses: list[float] = []
    timed_from = min(2, args.steps - 1)
    t0 = time.perf_counter()
    for step in range(args.steps):
        if step == timed_from:
            if on_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on_cuda):
            loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        print(f"step {step + 1}/{args.steps} loss {losses[-1]:.4f}")
    if on_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens_per_s = (args.steps - timed_from) * args.seq / elapsed

    dims = ModelDims.from_hf_config(config.to_dict(), name="GLM-4.7-Flash" + (" (tiny)" if args.tiny else ""))
    plan = plan_memory(
        variant="flash",
        method="qlora",
        lora_rank=args.rank,
        targets=[t.value for t in targets],
        sequence_length=args.seq,
        micro_batch_size=1,
        gpus=1,
        dims=dims,
        compute_bytes=2 if on_cuda else 4,
        runtime_overhead_gib=2.5 if on_cuda else 0.0,
    )
    print(
        "plan:",
        ", ".join(f"{k} {v:.2f}" for k, v in plan.breakdown_gib.items()),
        f"= {plan.per_gpu_gib:.2f} GiB",
    )
    fields: dict[str, Any] = {
        "layers": config.num_hidden_layers,
        "seq": args.seq,
        "steps": args.steps,
        "params_b": round(dims.total_parameters() / 1e9, 3),
        "plan_per_gpu_gib": round(plan.per_gpu_gib, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }
    if on_cuda:
        free, total = torch.cuda.mem_get_info(device)
        peak_allocated = torch.cuda.max_memory_allocated(device) / GIB
        peak_reserved = torch.cuda.max_memory_reserved(device) / GIB
        # device memory in use now, plus what the allocator released since its peak
        in_use = (total - free) / GIB + peak_reserved - torch.cuda.memory_reserved(device) / GIB
        fields.update(
            peak_allocated_gib=round(peak_allocated, 2),
            peak_reserved_gib=round(peak_reserved, 2),
            device_peak_gib=round(in_use, 2),
            plan_over_device_peak=round(plan.per_gpu_gib / in_use, 3),
            gpu=torch.cuda.get_device_name(device).replace(" ", "_"),
        )
    print("RESULT " + " ".join(f"{key}={value}" for key, value in fields.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

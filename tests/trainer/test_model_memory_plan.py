"""The memory plan, evaluated for the tiny models' own dimensions, agrees with what training really holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_support import job_config, peak_allocated_bytes_during

from glmops.plan.memory import ModelDims, plan_memory
from glmops_trainer.config import LoraConfig, LoraTarget, Method, Variant
from glmops_trainer.model.experts4bit import resident_weight_bytes
from glmops_trainer.model.load import load_base_model
from glmops_trainer.model.targets import apply_lora
from glmops_trainer.tiny.models import _instantiate, build_tiny_model, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ARCHES = [("glm4_moe", Variant.flagship), ("glm4_moe_lite", Variant.flash)]
TARGETS = [LoraTarget.attention, LoraTarget.shared_experts, LoraTarget.experts]


@pytest.mark.parametrize(("arch", "variant"), ARCHES)
def test_dims_from_the_config_count_every_parameter_of_the_real_classes(arch: str, variant: Variant) -> None:
    config = tiny_config(arch)  # type: ignore[arg-type]
    model = _instantiate(config)
    dims = ModelDims.from_hf_config(config.to_dict())
    assert dims.total_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("arch", "variant"), ARCHES)
@pytest.mark.parametrize(
    "targets", [[t] for t in LoraTarget] + [list(LoraTarget)], ids=lambda t: "+".join(x.value for x in t)
)
def test_lora_parameter_count_matches_peft(arch: str, variant: Variant, targets: list[LoraTarget]) -> None:
    config = tiny_config(arch)  # type: ignore[arg-type]
    peft_model = apply_lora(_instantiate(config).float(), LoraConfig(rank=8, targets=targets), variant)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert (
        ModelDims.from_hf_config(config.to_dict()).lora_parameters(8, [t.value for t in targets]) == trainable
    )


@pytest.mark.parametrize(("arch", "variant"), ARCHES)
def test_planned_4bit_weights_are_the_resident_bytes(tmp_path: Path, arch: str, variant: Variant) -> None:
    model_dir = build_tiny_model(arch, tmp_path / "model")  # type: ignore[arg-type]
    model = load_base_model(model_dir, variant, Method.qlora)
    held = resident_weight_bytes(model)
    plan = _tiny_plan(model_dir, variant, sequence_length=16)
    mib = 1024**2
    planned_nf4 = plan.breakdown_gib["weights_nf4"] * 1024
    assert planned_nf4 == pytest.approx((held["nf4_experts"] + held["nf4_linear"]) / mib, rel=0.03)
    assert plan.breakdown_gib["weights_unquantized"] * 1024 == pytest.approx(held["fp32"] / mib, rel=0.03)


def _tiny_plan(model_dir: Path, variant: Variant, sequence_length: int, dropout: float = 0.05):  # type: ignore[no-untyped-def]
    config = json.loads((model_dir / "config.json").read_text())
    return plan_memory(
        variant=variant.value,
        method="qlora",
        lora_rank=16,
        targets=[t.value for t in TARGETS],
        sequence_length=sequence_length,
        micro_batch_size=1,
        gpus=1,
        dims=ModelDims.from_hf_config(config),
        compute_bytes=4,  # CPU trains in float32
        lora_dropout=dropout,
        runtime_overhead_gib=0.0,  # no CUDA context on CPU
    )


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "variant"), ARCHES)
def test_plan_agrees_with_measured_peak_of_qlora_training_within_25_percent(
    tmp_path: Path, arch: str, variant: Variant
) -> None:
    """Measured = resident tensor bytes after load + LoRA (exact, by walking every parameter, buffer and
    bitsandbytes quant state) + the peak of torch's CPU allocator during two QLoRA training steps
    (forward, backward with gradient checkpointing, AdamW step), read from the profiler's memory events
    ("Total Allocated" counts only allocations made while profiling, so it is the dynamic part:
    activations, the loss's chunks, gradients, optimizer moments, dequantized weights).
    Planned = the plan for the tiny model's dimensions in float32 without CUDA context: weights +
    LoRA/optimizer + layer inputs + working activations + dequantization buffer. The model is the
    trainer's own (`load_model_for_training`, chunked loss included); the sequence is longer than one
    loss chunk. As in the trainer, the step drops the model output before backward.
    """
    from glmops_trainer import train
    from glmops_trainer.config import TrainerConfig

    sequence_length = 1536
    model_dir = build_tiny_model(arch, tmp_path / "model")  # type: ignore[arg-type]
    lora = {"rank": 16, "alpha": 32, "dropout": 0.05, "targets": [t.value for t in TARGETS]}
    training = {"sequence_length": sequence_length, "gradient_checkpointing": True, "lora": lora}
    config = TrainerConfig.model_validate(job_config(tmp_path, model_dir, variant.value, training=training))
    peft_model = train.load_model_for_training(config, model_dir, "replicate")
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    peft_model.train()
    ids = torch.randint(0, 2000, (1, sequence_length), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    resident = sum(resident_weight_bytes(peft_model).values())
    measured = resident + peak_allocated_bytes_during(2, step)
    planned = _tiny_plan(model_dir, variant, sequence_length).per_gpu_gib * 1024**3
    print(f"{arch}: measured {measured / 2**20:.1f} MiB, planned {planned / 2**20:.1f} MiB")
    assert planned == pytest.approx(measured, rel=0.25)

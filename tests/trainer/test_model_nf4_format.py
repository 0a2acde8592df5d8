"""The 4-bit storage of routed experts, byte for byte, and the memory plan's constant for it.

`NF4Experts` keeps per weight (E, O, I) one uint8 parameter of E rows (FSDP2 shards it along
the experts), each row one expert's: two NF4 codes per byte, one 8-bit absmax per block of 64
values inside the expert, one fp32 scale per 256 absmax values (padded to whole blocks), one fp32
offset. The memory plan counts `NF4_BYTES_PER_PARAM` per parameter plus the
offsets; for the real GLM-4.7 shapes the two must agree exactly, so changing the format on
either side fails here.
"""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch

from glmops.plan.memory import FLAGSHIP, FLASH, NF4_BYTES_PER_PARAM, ModelDims, plan_memory
from glmops_trainer.model.experts4bit import ABSMAX_BLOCKSIZE, NF4_BLOCKSIZE, ExpertRowLayout, NF4Experts


def _stack(experts: int, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Rows of very different scale, so a block straddling two rows or experts would be visible.
    scale = torch.logspace(-3, 0, rows).reshape(1, rows, 1)
    return torch.randn(experts, rows, cols, generator=generator) * scale * torch.arange(1, experts + 1).reshape(-1, 1, 1)


def _quantized(name: str, dense: torch.Tensor) -> NF4Experts:
    experts, rows, cols = dense.shape
    if name == "gate_up_proj":
        module = NF4Experts(experts, hidden_dim=cols, intermediate_dim=rows // 2, act_fn=torch.nn.SiLU(), compute_dtype=torch.float32)
    else:
        module = NF4Experts(experts, hidden_dim=rows, intermediate_dim=cols, act_fn=torch.nn.SiLU(), compute_dtype=torch.float32)
    module.load_dense_(name, dense)
    return module


def _storage(module: NF4Experts, name: str) -> dict[str, torch.Tensor]:
    """The sections of the packed rows of weight `name`, each (E, ...), read by its byte offsets."""
    packed = getattr(module, name)
    experts = packed.shape[0]
    layout = ExpertRowLayout(*module.shapes[name][1:])
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (experts, layout.row_bytes)
    return {
        "codes": packed[:, : layout.absmax_at],
        "absmax": packed[:, layout.absmax_at : layout.scale_at],
        "absmax_scale": packed[:, layout.scale_at : layout.offset_at].contiguous().view(torch.float32),
        "absmax_offset": packed[:, layout.offset_at :].contiguous().view(torch.float32).reshape(experts),
    }


def test_block_sizes_are_the_qlora_defaults_the_plan_assumes() -> None:
    assert (NF4_BLOCKSIZE, ABSMAX_BLOCKSIZE) == (64, 256)
    assert NF4_BYTES_PER_PARAM == 0.5 + 1 / NF4_BLOCKSIZE + 4 / (NF4_BLOCKSIZE * ABSMAX_BLOCKSIZE)


def test_layout_dtypes_and_lengths_of_one_stack() -> None:
    experts, rows, cols = 3, 128, 256  # 32768 values per expert: 512 blocks, 2 absmax blocks
    storage = _storage(_quantized("down_proj", _stack(experts, rows, cols)), "down_proj")
    blocks = rows * cols // NF4_BLOCKSIZE
    assert storage["codes"].dtype == torch.uint8 and tuple(storage["codes"].shape) == (experts, rows * cols // 2)
    assert storage["absmax"].dtype == torch.uint8 and tuple(storage["absmax"].shape) == (experts, blocks)
    assert storage["absmax_scale"].dtype == torch.float32
    assert tuple(storage["absmax_scale"].shape) == (experts, blocks // ABSMAX_BLOCKSIZE)
    assert storage["absmax_offset"].dtype == torch.float32 and tuple(storage["absmax_offset"].shape) == (experts,)
    stored = sum(t.numel() * t.element_size() for k, t in storage.items() if k != "absmax_offset")
    assert stored / (experts * rows * cols) == NF4_BYTES_PER_PARAM


def test_absmax_is_padded_to_whole_blocks_of_256_per_expert() -> None:
    experts, rows, cols = 2, 64, 96  # 96 blocks per expert: one absmax block, mostly padding
    storage = _storage(_quantized("down_proj", _stack(experts, rows, cols)), "down_proj")
    assert tuple(storage["absmax"].shape) == (experts, ABSMAX_BLOCKSIZE)
    assert tuple(storage["absmax_scale"].shape) == (experts, 1)


def test_each_absmax_is_the_largest_magnitude_of_64_consecutive_values_of_one_expert() -> None:
    experts, rows, cols = 2, 128, 256
    dense = _stack(experts, rows, cols, seed=3)
    storage = _storage(_quantized("down_proj", dense), "down_proj")
    blocks = rows * cols // NF4_BLOCKSIZE
    for expert in range(experts):
        decoded = (
            bnbf.dequantize_blockwise(storage["absmax"][expert], absmax=storage["absmax_scale"][expert], blocksize=ABSMAX_BLOCKSIZE)[:blocks]
            + storage["absmax_offset"][expert]
        )
        truth = dense[expert].reshape(blocks, NF4_BLOCKSIZE).abs().amax(dim=1)
        # 8-bit codes of the centred absmax: error below 1% of the largest absmax of the expert.
        torch.testing.assert_close(decoded, truth, rtol=0.0, atol=0.01 * float(truth.max()))


def test_codes_are_bitsandbytes_nf4_of_each_expert() -> None:
    experts, rows, cols = 2, 64, 256
    dense = _stack(experts, rows, cols, seed=5)
    module = _quantized("down_proj", dense)
    for expert in range(experts):
        # Same codes as bitsandbytes' own NF4 of that expert alone: blocks never straddle experts.
        codes, _ = bnbf.quantize_4bit(dense[expert].contiguous(), blocksize=NF4_BLOCKSIZE, quant_type="nf4", compress_statistics=False)
        stored = _storage(module, "down_proj")["codes"][expert]
        agree = (stored == codes.reshape(-1)).float().mean().item()
        assert agree > 0.98  # the rest differ by one NF4 level, from the 8-bit absmax
        error = (module.dequantize_expert("down_proj", expert) - dense[expert]).norm() / dense[expert].norm()
        assert error < 0.12  # NF4's own error on Gaussian weights is about 0.1


@pytest.mark.parametrize("dims", [FLASH, FLAGSHIP], ids=lambda d: d.name)
@pytest.mark.parametrize("name", ["gate_up_proj", "down_proj"])
def test_real_expert_shapes_take_exactly_the_planned_bytes(dims: ModelDims, name: str) -> None:
    hidden, inter = dims.hidden_size, dims.moe_intermediate_size
    rows, cols = (2 * inter, hidden) if name == "gate_up_proj" else (hidden, inter)
    experts = 2  # two real-sized experts of the model's layer
    storage = _storage(_quantized(name, _stack(experts, rows, cols)), name)
    params = experts * rows * cols
    stored = sum(t.numel() * t.element_size() for k, t in storage.items() if k != "absmax_offset")
    assert stored == params * NF4_BYTES_PER_PARAM
    # The plan's per-expert offset term: one fp32 per expert and weight.
    assert storage["absmax_offset"].numel() * storage["absmax_offset"].element_size() == 4 * experts


def test_the_plans_expert_weights_are_the_format_times_the_parameter_count() -> None:
    plan = plan_memory("flash", "qlora", lora_rank=16, targets=["attention"], sequence_length=1024, micro_batch_size=1, gpus=1)
    groups = FLASH.parameter_groups()
    quantized = sum(groups[g] for g in ("attention", "dense_mlp", "shared_experts", "experts"))
    offsets = 2 * FLASH.num_routed_experts * FLASH.num_moe_layers * 4
    assert plan.breakdown_gib["weights_nf4"] * 1024**3 == pytest.approx(quantized * NF4_BYTES_PER_PARAM + offsets, rel=1e-12)

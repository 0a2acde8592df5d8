"""The memory plan's LoRA term is exactly the AdamW state that training a real peft model holds.

Per trainable LoRA parameter the trainer holds the fp32 weight, its fp32 gradient and AdamW's two
fp32 moments. Measured on a tiny model of each architecture after a real optimizer step, it must
equal the plan's `lora_and_optimizer` term for the same dimensions, per GPU for both placements.
"""

from __future__ import annotations

import pytest
import torch

from glmops.plan.memory import GIB, ModelDims, plan_memory
from glmops_trainer.config import LoraConfig, LoraTarget, Variant
from glmops_trainer.model.targets import apply_lora
from glmops_trainer.tiny.models import _instantiate, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ARCHES = [("glm4_moe", Variant.flagship), ("glm4_moe_lite", Variant.flash)]
TARGETS = list(LoraTarget)


def _adamw_state_bytes(arch: str, variant: Variant, rank: int) -> int:
    """Bytes of every trainable parameter, its gradient and its AdamW moments after one real step."""
    config = tiny_config(arch)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = apply_lora(_instantiate(config).float(), LoraConfig(rank=rank, targets=TARGETS), variant)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    ids = torch.randint(0, 2000, (1, 32), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    total = 0
    for param in trainable:
        assert param.grad is not None
        state = optimizer.state[param]
        # AdamW's per-parameter `step` counter is a 0-d tensor, not memory that scales with parameters.
        total += sum(t.numel() * t.element_size() for t in (param, param.grad, state["exp_avg"], state["exp_avg_sq"]))
    return total


@pytest.mark.parametrize(("arch", "variant"), ARCHES)
@pytest.mark.parametrize("rank", [4, 16])
def test_lora_term_equals_the_adamw_state_of_a_real_peft_model(arch: str, variant: Variant, rank: int) -> None:
    measured = _adamw_state_bytes(arch, variant, rank)
    dims = ModelDims.from_hf_config(tiny_config(arch).to_dict())  # type: ignore[arg-type]
    common = {
        "variant": variant.value,
        "method": "qlora",
        "lora_rank": rank,
        "targets": [t.value for t in TARGETS],
        "sequence_length": 64,
        "micro_batch_size": 1,
        "dims": dims,
    }
    replicated = plan_memory(**common, gpus=2, sharding="replicate")  # type: ignore[arg-type]
    assert replicated.breakdown_gib["lora_and_optimizer"] * GIB == pytest.approx(measured, rel=1e-12)
    # Sharded over four GPUs with FSDP2, each holds a quarter of every adapter and its state.
    sharded = plan_memory(**common, gpus=4, sharding="fsdp")  # type: ignore[arg-type]
    assert sharded.breakdown_gib["lora_and_optimizer"] * GIB == pytest.approx(measured / 4, rel=1e-12)

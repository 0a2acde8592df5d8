"""The flagship's FSDP2 path: checkpoint reading, the shard-aware loader, the chunked loss, and the ranks on CPU (gloo)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from glmops.plan.memory import ModelDims, plan_memory
from glmops_trainer.config import LoraConfig, LoraTarget, Method, Variant
from glmops_trainer.model.checkpoint import CheckpointError, CheckpointReader
from glmops_trainer.model.chunked_loss import causal_lm_loss, use_chunked_loss
from glmops_trainer.model.experts4bit import EXPERT_WEIGHT_NAMES, NF4Experts, quantize_expert_rows
from glmops_trainer.model.load import load_base_model
from glmops_trainer.model.sharded import load_sharded_model
from glmops_trainer.tiny.models import build_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = REPO_ROOT / "tests" / "trainer" / "fsdp_worker.py"
TARGETS = [LoraTarget.attention, LoraTarget.shared_experts, LoraTarget.experts]
MIB = 2**20


@pytest.fixture(scope="module")
def tiny_flagship(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("glm4_moe", tmp_path_factory.mktemp("flagship") / "model", num_shards=2)


def test_reader_assembles_fused_experts_as_transformers_loads_them(tiny_flagship: Path) -> None:
    dense = AutoModelForCausalLM.from_pretrained(tiny_flagship, dtype=torch.bfloat16)
    with CheckpointReader(tiny_flagship) as reader:
        for name, param in dense.named_parameters():
            experts = dense.config.n_routed_experts
            assert torch.equal(reader.parameter(name, num_experts=experts), param.detach()), name
        gate_up = dense.model.layers[1].mlp.experts.gate_up_proj.detach()
        assert torch.equal(reader.experts("model.layers.1.mlp.experts", "gate_up_proj", 3, 2), gate_up[3:5])


def test_reader_names_a_missing_tensor(tiny_flagship: Path) -> None:
    with CheckpointReader(tiny_flagship) as reader, pytest.raises(CheckpointError, match="no tensor 'model.nope'"):
        reader.tensor("model.nope")
    with pytest.raises(CheckpointError, match="spec.model.source"):
        CheckpointReader(tiny_flagship / "missing")


def test_experts_are_quantized_independently_so_a_rank_can_quantize_only_its_own() -> None:
    stack = torch.randn(6, 128, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quantize_expert_rows(stack)[2:5], quantize_expert_rows(stack[2:5]))


def test_unsharded_loader_builds_the_same_4bit_model_as_the_single_process_loader(tiny_flagship: Path) -> None:
    reference = load_base_model(tiny_flagship, Variant.flagship, Method.qlora)
    lora = LoraConfig(rank=8, targets=TARGETS)
    sharded_path = load_sharded_model(
        tiny_flagship, Variant.flagship, Method.qlora, lora,
        device=torch.device("cpu"), compute_dtype=torch.float32, shard=False,
    )  # fmt: skip
    base = sharded_path.get_base_model()
    for ours, theirs in zip(base.model.layers, reference.model.layers, strict=True):
        if isinstance(getattr(theirs.mlp, "experts", None), NF4Experts):
            ours_experts = ours.mlp.experts.base_layer.base_layer  # inside peft's two ParamWrappers
            for weight in EXPERT_WEIGHT_NAMES:
                assert torch.equal(getattr(ours_experts, weight), getattr(theirs.mlp.experts, weight))
        q_ours, q_theirs = ours.self_attn.q_proj.base_layer, theirs.self_attn.q_proj
        assert torch.equal(q_ours.weight.data.reshape(-1), q_theirs.weight.data.reshape(-1))
        assert torch.equal(q_ours.quant_state.absmax, q_theirs.weight.quant_state.absmax)
    # LoRA B starts at zero, so the adapted model computes the base model. Both in training mode: in eval
    # mode bitsandbytes switches CPUs with AVX512-BF16 to a bf16 inference kernel (see keep_4bit_layers_trainable).
    reference.train()
    sharded_path.train()
    ids = torch.randint(0, 2000, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = sharded_path(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_chunked_loss_and_its_gradient_are_transformers_loss(tiny_flagship: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_flagship, dtype=torch.float32)
    model.requires_grad_(False)
    labels = torch.randint(0, 2000, (2, 40), generator=torch.Generator().manual_seed(1))
    labels[0, :7] = -100  # a prompt that is not trained on
    hidden = torch.randn(2, 40, model.config.hidden_size, generator=torch.Generator().manual_seed(2))

    expected_input = hidden.clone().requires_grad_()
    expected = model.loss_function(
        logits=model.lm_head(expected_input), labels=labels, vocab_size=model.config.vocab_size
    )
    expected.backward()
    for items in (None, torch.tensor(50)):
        ours_input = hidden.clone().requires_grad_()
        ours = causal_lm_loss(ours_input, model.lm_head.weight, labels, items, chunk_tokens=16)
        ours.backward()
        reference = expected if items is None else expected * (labels[:, 1:] != -100).sum() / 50
        torch.testing.assert_close(ours, reference.detach(), rtol=1e-5, atol=1e-6)
        if items is None:
            torch.testing.assert_close(ours_input.grad, expected_input.grad, rtol=1e-4, atol=1e-7)

    # installed on the model: same loss through forward, logits still there without labels
    ids = labels.clamp(min=0)
    with torch.no_grad():
        before = model(input_ids=ids, labels=labels)
        use_chunked_loss(model, chunk_tokens=16)
        after = model(input_ids=ids, labels=labels)
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(after.loss, before.loss, rtol=1e-5, atol=1e-6)
    assert after.logits is None and logits.shape == (2, 40, model.config.vocab_size)


def _run_ranks(model_dir: Path, out: Path, ranks: int) -> list[dict[str, object]]:
    torchrun = Path(sys.executable).with_name("torchrun")
    if ranks == 1:
        command = [sys.executable, str(WORKER)]
    else:
        command = [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--standalone",
                   f"--nproc-per-node={ranks}", str(WORKER)]  # fmt: skip
    done = subprocess.run(
        [*command, "--model", str(model_dir), "--out", str(out / str(ranks))],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / str(ranks) / f"rank-{r}.json").read_text()) for r in range(ranks)]


@pytest.mark.slow
def test_two_and_four_cpu_ranks_each_hold_their_share_and_train_like_one_process(tmp_path: Path) -> None:
    """FSDP2 over gloo. The model's 4-bit routed experts (~100 MiB) dominate what the interpreter adds, so
    the resident memory a rank gains while loading shows its share: about the single process's gain
    divided by the ranks, plus a fixed per-process amount (allowed: 32 MiB). The losses of three AdamW
    steps match the single process's within 1e-5 (relative)."""
    model_dir = build_tiny_model(
        "glm4_moe", tmp_path / "model", num_shards=3, hidden_size=1024, intermediate_size=1024,
        moe_intermediate_size=1024, n_routed_experts=32, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, head_dim=128,
    )  # fmt: skip
    (one,) = _run_ranks(model_dir, tmp_path, 1)
    grown_one = one["rss_after_load"] - one["rss_before"]  # type: ignore[operator]
    held_one = one["held"]["parameters"]  # type: ignore[index]
    assert grown_one > 100 * MIB
    dims = ModelDims.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    for ranks in (2, 4):
        reports = _run_ranks(model_dir, tmp_path, ranks)
        plan = plan_memory(
            variant="flagship", method="qlora", lora_rank=8, targets=[t.value for t in TARGETS],
            sequence_length=32, micro_batch_size=1, gpus=ranks, dims=dims, compute_bytes=4, sharding="fsdp",
        )  # fmt: skip
        planned_weights = (plan.breakdown_gib["weights_nf4"] + plan.breakdown_gib["weights_unquantized"]) * 2**30
        for report in reports:
            held = report["held"]
            grown = report["rss_after_load"] - report["rss_before"]  # type: ignore[operator]
            assert held["parameters"] == pytest.approx(held_one / ranks, rel=0.01)  # type: ignore[index]
            assert held["parameters"] <= grown <= grown_one / ranks + 32 * MIB, (ranks, grown / MIB)  # type: ignore[index]
            # the plan's per-GPU weights are what a rank holds: its shards plus the whole bnb statistics
            lora_weights = plan.lora_parameters * 4 / ranks
            held_weights = held["parameters"] + held["linear_statistics"] + held["buffers"] - lora_weights  # type: ignore[index, operator]
            assert planned_weights == pytest.approx(held_weights, rel=0.03)
            assert report["losses"] == pytest.approx(one["losses"], rel=1e-5)


def test_lora_method_loads_the_bf16_checkpoint_unchanged(tiny_flagship: Path) -> None:
    reference = AutoModelForCausalLM.from_pretrained(tiny_flagship, dtype=torch.float32)
    model = load_sharded_model(
        tiny_flagship, Variant.flagship, Method.lora, LoraConfig(rank=4, targets=TARGETS),
        device=torch.device("cpu"), compute_dtype=torch.float32, shard=False,
    )  # fmt: skip
    ids = torch.randint(0, 2000, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-5, atol=1e-5)

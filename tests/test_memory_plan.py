"""The memory plan: pure, built on the real dimensions, and in the ranges QLoRA of GLM-4.7 is known to need."""

from __future__ import annotations

import subprocess
import sys

import pytest

from glmops.plan.memory import FLAGSHIP, FLASH, LOSS_CHUNK_TOKENS, NF4_BYTES_PER_PARAM, ModelDims, plan_memory

DEFAULT_TARGETS = {
    "flash": ["attention", "shared_experts", "experts"],
    "flagship": ["attention", "shared_experts"],
}

# config.json of the released checkpoints (the fields the plan reads)
GLM_4_7_CONFIG = {
    "model_type": "glm4_moe",
    "architectures": ["Glm4MoeForCausalLM"],
    "vocab_size": 151552,
    "hidden_size": 5120,
    "intermediate_size": 12288,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 92,
    "first_k_dense_replace": 3,
    "num_attention_heads": 96,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "attention_bias": True,
    "use_qk_norm": True,
    "n_routed_experts": 160,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "num_nextn_predict_layers": 1,
    "tie_word_embeddings": False,
}
GLM_4_7_FLASH_CONFIG = {
    "model_type": "glm4_moe_lite",
    "architectures": ["Glm4MoeLiteForCausalLM"],
    "vocab_size": 154880,
    "hidden_size": 2048,
    "intermediate_size": 10240,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 47,
    "num_attention_heads": 20,
    "num_key_value_heads": 20,
    "q_lora_rank": 768,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "n_routed_experts": 64,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "tie_word_embeddings": False,
}


def _plan(variant: str, **overrides: object):  # type: ignore[no-untyped-def]
    arguments: dict[str, object] = {
        "variant": variant,
        "method": "qlora",
        "lora_rank": 16,
        "targets": DEFAULT_TARGETS[variant],
        "sequence_length": 8192,
        "micro_batch_size": 1,
        "gpus": 1 if variant == "flash" else 8,
    }
    arguments.update(overrides)
    return plan_memory(**arguments)  # type: ignore[arg-type]


def test_the_built_in_dimensions_are_the_released_configs() -> None:
    assert ModelDims.from_hf_config(GLM_4_7_CONFIG, name="GLM-4.7") == FLAGSHIP
    assert ModelDims.from_hf_config(GLM_4_7_FLASH_CONFIG, name="GLM-4.7-Flash") == FLASH


def test_parameter_counts_match_the_model_cards() -> None:
    # 355B-A32B (the card counts the MTP layer, about 3.8B, which training does not load) and 30B-A3B
    assert 350e9 < FLAGSHIP.total_parameters() < 357e9
    assert 29e9 < FLASH.total_parameters() < 31e9
    # routed experts are the bulk of both: what makes 4-bit experts necessary
    assert FLAGSHIP.parameter_groups()["experts"] / FLAGSHIP.total_parameters() > 0.9
    assert FLASH.parameter_groups()["experts"] / FLASH.total_parameters() > 0.9


def test_flash_qlora_fits_one_48_gb_class_gpu_at_8192_tokens() -> None:
    plan = _plan("flash")
    # 25.5 GiB are weights, LoRA state and runtime before any activation
    assert 28 <= plan.per_gpu_gib <= 48
    assert plan.total_gib == pytest.approx(plan.per_gpu_gib)
    groups = FLASH.parameter_groups()
    quantized = groups["attention"] + groups["dense_mlp"] + groups["shared_experts"] + groups["experts"]
    assert plan.breakdown_gib["weights_nf4"] == pytest.approx(
        quantized * NF4_BYTES_PER_PARAM / 1024**3, rel=1e-3
    )


def test_flagship_qlora_needs_250_to_320_gib_over_eight_gpus() -> None:
    plan = _plan("flagship")
    assert 250 <= plan.total_gib <= 320
    assert plan.per_gpu_gib < 80  # fits 80 GB cards
    assert plan.sharding == "fsdp"
    assert plan.total_gib == pytest.approx(8 * plan.per_gpu_gib)  # every rank holds the same


def test_flagship_expert_lora_costs_its_optimizer_state_and_a_bigger_layer_on_every_gpu() -> None:
    """LoRA on the 160 routed experts (opt-in) adds its AdamW state, sharded, and on each GPU a larger
    gathered layer and working set; with 8 micro-batches in flight that is above the default's band."""
    default = _plan("flagship")
    experts = _plan("flagship", targets=["attention", "shared_experts", "experts"])
    added_state = (experts.lora_parameters - default.lora_parameters) * 16 / 1024**3
    assert experts.breakdown_gib["lora_and_optimizer"] - default.breakdown_gib["lora_and_optimizer"] == (
        pytest.approx(added_state / 8)
    )
    assert 320 < experts.total_gib < 360
    assert experts.per_gpu_gib < 48


def test_the_loss_is_planned_as_one_chunk_of_logits_not_the_whole_sequences() -> None:
    """The trainer's loss holds LOSS_CHUNK_TOKENS tokens' logits at a time: only the two hidden-state-sized
    tensors of the loss (fp32 under single-GPU QLoRA) grow with the sequence."""
    short, long = _plan("flash"), _plan("flash", sequence_length=32768)
    assert (long.logits_gib - short.logits_gib) * 1024**3 == pytest.approx(2 * (32768 - 8192) * FLASH.hidden_size * 4)
    chunk = LOSS_CHUNK_TOKENS * FLASH.vocab_size * (2 + 4 + 4)  # bf16 matmul output, fp32 copy, fp32 softmax
    assert short.logits_gib * 1024**3 == pytest.approx(chunk + 2 * 8192 * FLASH.hidden_size * 4)
    assert long.per_gpu_gib < 80  # 32K-token Flash QLoRA fits an 80 GB GPU


def test_breakdown_sums_to_the_per_gpu_figure() -> None:
    for variant in ("flash", "flagship"):
        plan = _plan(variant)
        assert sum(plan.breakdown_gib.values()) == pytest.approx(plan.per_gpu_gib)
        assert plan.breakdown_gib["working_activations"] == pytest.approx(
            max(plan.layer_recompute_gib, plan.logits_gib)
        )


def test_plan_reacts_to_every_knob_in_the_expected_direction() -> None:
    base = _plan("flash")
    assert _plan("flash", sequence_length=4096).per_gpu_gib < base.per_gpu_gib
    assert _plan("flash", micro_batch_size=2).per_gpu_gib > base.per_gpu_gib
    assert _plan("flash", gradient_checkpointing=False).per_gpu_gib > base.per_gpu_gib
    assert _plan("flash", lora_rank=64).per_gpu_gib > base.per_gpu_gib
    assert _plan("flash", targets=["attention"]).per_gpu_gib < base.per_gpu_gib
    lora = _plan("flash", method="lora")
    assert lora.breakdown_gib["weights_nf4"] == 0 and lora.per_gpu_gib > base.per_gpu_gib + 35
    # replicas: each GPU needs the same, the job needs it once per GPU
    two = _plan("flash", gpus=2)
    assert two.per_gpu_gib == pytest.approx(base.per_gpu_gib) and two.total_gib == pytest.approx(
        2 * base.total_gib
    )
    # split: more GPUs, less on each
    assert _plan("flagship", gpus=16).per_gpu_gib < _plan("flagship").per_gpu_gib


def test_expert_lora_is_the_big_optimizer_cost_on_the_flagship() -> None:
    without = FLAGSHIP.lora_parameters(16, ["attention", "shared_experts"])
    with_experts = FLAGSHIP.lora_parameters(16, ["attention", "shared_experts", "experts"])
    assert 90e6 < without < 110e6
    assert with_experts - without == 16 * 160 * ((5120 + 2 * 1536) + (1536 + 5120)) * 89


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variant": "glm5"}, "variant 'glm5'"),
        ({"method": "full"}, "method 'full'"),
        ({"targets": ["mlp"]}, "targets \\['mlp'\\]"),
        ({"gpus": 0}, "must be >= 1"),
    ],
)
def test_bad_arguments_are_named(overrides: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"variant": "flash", **overrides}
    with pytest.raises(ValueError, match=message):
        plan_memory(
            **{  # type: ignore[arg-type]
                "method": "qlora",
                "lora_rank": 16,
                "targets": ["attention"],
                "sequence_length": 8192,
                "micro_batch_size": 1,
                "gpus": 1,
                **arguments,
            }
        )


def test_unknown_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="model_type 'llama'"):
        ModelDims.from_hf_config({"model_type": "llama", "num_hidden_layers": 2})


def test_the_plan_imports_no_ml_stack() -> None:
    code = "import sys, glmops.plan.memory; bad = {'torch', 'transformers', 'peft'} & set(sys.modules); print(sorted(bad))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_an_unknown_sharding_is_refused_not_planned_as_a_replica() -> None:
    # A misspelt or retired placement ("split") must not quietly plan a whole replica per GPU.
    with pytest.raises(ValueError, match="sharding must be 'replicate' or 'fsdp', not 'split'"):
        plan_memory("flagship", "qlora", 16, ["attention"], 4096, 1, gpus=8, sharding="split")  # type: ignore[arg-type]

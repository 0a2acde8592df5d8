"""Tiny random-weight models are the real GLM-4.7 architectures, saved like hub checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Glm4MoeForCausalLM, Glm4MoeLiteForCausalLM

from glmops_trainer.tiny.models import build_tiny_model, mtp_tensor_names, tiny_config
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer, generation_stop_token_ids

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _safetensors_keys(model_dir: Path) -> set[str]:
    keys: set[str] = set()
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            keys.update(handle.keys())
    return keys


@pytest.mark.parametrize(
    ("arch", "model_class", "attention_names"),
    [
        ("glm4_moe", Glm4MoeForCausalLM, {"q_proj", "k_proj", "v_proj", "o_proj"}),
        (
            "glm4_moe_lite",
            Glm4MoeLiteForCausalLM,
            {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"},
        ),
    ],
)
def test_tiny_model_is_the_real_architecture_and_reloads(
    tmp_path: Path, arch: str, model_class: type, attention_names: set[str]
) -> None:
    out = build_tiny_model(arch, tmp_path / arch)  # type: ignore[arg-type]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch
    assert config["architectures"] == [model_class.__name__]
    assert config["hidden_size"] % 256 == 0 and config["moe_intermediate_size"] % 256 == 0

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model) is model_class
    attention = model.model.layers[0].self_attn
    assert attention_names <= {name for name, _ in attention.named_children()}
    # dense first layer, MoE after it, routed experts fused as transformers 5 does
    assert hasattr(model.model.layers[0].mlp, "gate_proj")
    assert model.model.layers[1].mlp.experts.gate_up_proj.ndim == 3
    logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits
    assert logits.shape == (1, 5, config["vocab_size"]) and torch.isfinite(logits).all()


def test_checkpoint_keeps_the_per_expert_layout_of_the_real_release(tmp_path: Path) -> None:
    out = build_tiny_model("glm4_moe", tmp_path / "m")
    keys = _safetensors_keys(out)
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in keys
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in keys
    assert not any(key.endswith("experts.gate_up_proj") for key in keys)
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        # the router's score-correction bias stays fp32, as in the real checkpoints
        assert handle.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype == torch.float32
        assert handle.get_tensor("model.layers.1.mlp.gate.weight").dtype == torch.bfloat16


def test_sharding_writes_an_index_over_several_files(tmp_path: Path) -> None:
    out = build_tiny_model("glm4_moe_lite", tmp_path / "m", num_shards=3)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) >= 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    assert set(index["weight_map"]) == _safetensors_keys(out)


def test_same_seed_gives_the_same_weights(tmp_path: Path) -> None:
    first = build_tiny_model("glm4_moe", tmp_path / "a", seed=3)
    second = build_tiny_model("glm4_moe", tmp_path / "b", seed=3)
    other = build_tiny_model("glm4_moe", tmp_path / "c", seed=4)
    name = "model.layers.1.mlp.experts.0.up_proj.weight"

    def tensor(directory: Path) -> torch.Tensor:
        with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
            return handle.get_tensor(name)

    assert torch.equal(tensor(first), tensor(second))
    assert not torch.equal(tensor(first), tensor(other))


def test_special_ids_come_from_the_tokenizer(tmp_path: Path) -> None:
    tokenizer = build_tiny_tokenizer(tmp_path / "tok", chat_template="{{ messages[0]['content'] }}")
    out = build_tiny_model("glm4_moe_lite", tmp_path / "m", tokenizer=tokenizer)
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert config["pad_token_id"] == tokenizer.pad_token_id
    assert generation["eos_token_id"] == generation_stop_token_ids(tokenizer)
    assert (out / "tokenizer.json").is_file()


def test_without_tokenizer_eos_sits_where_glm_puts_endoftext(tmp_path: Path) -> None:
    out = build_tiny_model("glm4_moe", tmp_path / "m", vocab_size=1024)
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == 1024 - 36


def test_mtp_layer_is_written_with_the_real_tensor_names(tmp_path: Path) -> None:
    out = build_tiny_model("glm4_moe", tmp_path / "m", mtp=True, num_shards=2)
    config = json.loads((out / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == 1
    layer = config["num_hidden_layers"]
    names = set(mtp_tensor_names(out))
    for suffix in (
        "eh_proj.weight",
        "enorm.weight",
        "hnorm.weight",
        "shared_head.norm.weight",
        "shared_head.head.weight",
        "embed_tokens.weight",
        "self_attn.q_proj.weight",
        "mlp.gate.weight",
        "mlp.shared_experts.down_proj.weight",
        "mlp.experts.7.gate_proj.weight",
    ):
        assert f"model.layers.{layer}.{suffix}" in names
    assert names <= _safetensors_keys(out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert names <= set(index["weight_map"])
    # transformers has no MTP module: the model still loads, without those tensors
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == layer


def test_without_mtp_there_are_no_mtp_tensors(tmp_path: Path) -> None:
    out = build_tiny_model("glm4_moe", tmp_path / "m")
    assert mtp_tensor_names(out) == []
    assert not any(key.startswith("model.layers.3.") for key in _safetensors_keys(out))


def test_user_errors_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mtp"):
        build_tiny_model("glm4_moe_lite", tmp_path / "m", mtp=True)
    with pytest.raises(ValueError, match="arch"):
        tiny_config("llama")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_shards"):
        build_tiny_model("glm4_moe", tmp_path / "m", num_shards=0)

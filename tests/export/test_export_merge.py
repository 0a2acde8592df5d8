"""The streaming merge writes base + (alpha/r) * B @ A for every adapted module, per expert, and keeps the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tinyexport import add_linear_lora, make_adapter, peft_merged, per_expert_state_dict
from transformers import AutoConfig, AutoModelForCausalLM

from glmops_trainer.export.adapter import AdapterError
from glmops_trainer.export.merge import (
    INDEX_NAME,
    MergeError,
    count_mtp_layers,
    iter_checkpoint_tensors,
    merge_lora_streaming,
)
from glmops_trainer.tiny.models import mtp_tensor_names


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    return dict(iter_checkpoint_tensors(model_dir))


def _adapted_count(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    attention = 4 if config["model_type"] == "glm4_moe" else 5
    layers = config["num_hidden_layers"]
    sparse_layers = layers - 1  # both tiny models have one leading dense layer
    return attention * layers + sparse_layers * config["n_routed_experts"] * 3


def test_merged_weights_equal_peft_merge_for_every_module(
    arch: str, bf16_base: Path, bf16_adapter: Path, tmp_path: Path
) -> None:
    result = merge_lora_streaming(bf16_base, bf16_adapter, tmp_path / "merged")

    merged = _tensors(tmp_path / "merged")
    base = _tensors(bf16_base)
    reference = per_expert_state_dict(peft_merged(bf16_base, bf16_adapter))
    assert len(result.merged_tensors) == _adapted_count(bf16_base)
    changed = 0
    for key, value in merged.items():
        assert value.dtype == base[key].dtype, key
        if key not in reference:  # MTP layer: transformers does not load it
            continue
        # peft merges in float32; we write the base dtype, so allow the final rounding (half a bf16 ulp).
        torch.testing.assert_close(value.float(), reference[key].float(), rtol=2**-8, atol=1e-7, msg=key)
        changed += int(not torch.equal(value, base[key]))
    # Every adapted tensor moved; nothing else did.
    assert changed == len(result.merged_tensors)
    assert set(merged) == set(base)


def test_expert_delta_is_scale_times_b_at_a_per_expert(
    arch: str, f32_base: Path, f32_adapter: Path, tmp_path: Path
) -> None:
    merge_lora_streaming(f32_base, f32_adapter, tmp_path / "merged")
    merged, base = _tensors(tmp_path / "merged"), _tensors(f32_base)
    lora = load_file(str(f32_adapter / "adapter_model.safetensors"))
    config = json.loads((f32_adapter / "adapter_config.json").read_text())
    experts, inter = 8, 256
    # peft 0.21: the fused gate_up_proj wrapper is the inner one (".base_layer"), down_proj the outer.
    prefix = "base_model.model.model.layers.2.mlp.experts"
    for name, key, rows in (
        ("gate_up_proj", f"{prefix}.base_layer", (0, 2 * inter)),
        ("down_proj", prefix, None),
    ):
        a, b = lora[f"{key}.lora_A.weight"], lora[f"{key}.lora_B.weight"]
        rank = a.shape[0] // experts
        alpha = next(
            (v for p, v in config["alpha_pattern"].items() if p.endswith(name)), config["lora_alpha"]
        )
        scale = alpha / rank
        for expert in (0, 5):
            delta = (
                scale
                * b.reshape(b.shape[0], rank, experts)[:, :, expert]
                @ a.reshape(experts, rank, -1)[expert]
            )
            if name == "down_proj":
                key_out = f"model.layers.2.mlp.experts.{expert}.down_proj.weight"
                torch.testing.assert_close(merged[key_out], base[key_out] + delta, rtol=1e-5, atol=1e-6)
            else:
                for proj, half in (("gate_proj", slice(0, inter)), ("up_proj", slice(inter, 2 * inter))):
                    key_out = f"model.layers.2.mlp.experts.{expert}.{proj}.weight"
                    torch.testing.assert_close(
                        merged[key_out], base[key_out] + delta[half], rtol=1e-5, atol=1e-6
                    )


def test_shared_expert_linear_lora_merges_exactly(
    arch: str, f32_base: Path, f32_adapter: Path, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(f32_adapter, adapter)
    module = "model.layers.1.mlp.shared_experts.gate_proj"
    generator = torch.Generator().manual_seed(7)
    a, b = torch.randn(4, 256, generator=generator), torch.randn(256, 4, generator=generator)
    add_linear_lora(adapter, module, a, b)

    merge_lora_streaming(f32_base, adapter, tmp_path / "merged")

    config = json.loads((adapter / "adapter_config.json").read_text())
    expected = _tensors(f32_base)[f"{module}.weight"] + (config["lora_alpha"] / config["r"]) * (b @ a)
    torch.testing.assert_close(
        _tensors(tmp_path / "merged")[f"{module}.weight"], expected, rtol=1e-5, atol=1e-6
    )


def test_merged_checkpoint_gives_the_adapted_models_logits(
    arch: str, f32_base: Path, f32_adapter: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    merge_lora_streaming(f32_base, f32_adapter, tmp_path / "merged")
    ids = torch.tensor([[3, 17, 99, 1000, 250, 44, 12, 7, 1500, 64]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(f32_base)), str(f32_adapter)
        )
        expected = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
        actual = merged(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(f32_base))(ids).logits
    assert (expected - base).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_mtp_layer_is_copied_unchanged(tokenizer_dir: Path, tmp_path: Path) -> None:
    from tinyexport import build_base

    base = build_base("glm4_moe", tmp_path / "base", tokenizer_dir, num_shards=2)
    adapter = make_adapter(base, tmp_path / "adapter", "glm4_moe")
    result = merge_lora_streaming(base, adapter, tmp_path / "merged")

    names = mtp_tensor_names(base)
    assert len(names) > 30 and "model.layers.3.eh_proj.weight" in names
    assert sorted(result.mtp_tensors) == names
    assert result.mtp_layers == 1
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["num_nextn_predict_layers"] == 1
    merged, original = _tensors(tmp_path / "merged"), _tensors(base)
    for name in names:
        assert torch.equal(merged[name], original[name]), name
    index = json.loads((tmp_path / "merged" / INDEX_NAME).read_text())
    assert set(names) <= set(index["weight_map"])



def test_a_base_that_declares_an_mtp_layer_it_lacks_is_merged_with_none(tokenizer_dir: Path, tmp_path: Path) -> None:
    # A checkpoint re-saved by transformers drops the MTP tensors but keeps num_nextn_predict_layers.
    from tinyexport import build_base

    base = build_base("glm4_moe", tmp_path / "base", tokenizer_dir, num_shards=1)
    assert mtp_tensor_names(base)  # the tiny flagship has the layer; strip it as a re-save would
    stripped = tmp_path / "stripped"
    shutil.copytree(base, stripped)
    tensors = {k: v for k, v in _tensors(stripped).items() if not k.startswith("model.layers.3.")}
    for shard in stripped.glob("*.safetensors"):
        shard.unlink()
    (stripped / INDEX_NAME).unlink(missing_ok=True)
    save_file(tensors, str(stripped / "model.safetensors"), metadata={"format": "pt"})
    assert json.loads((stripped / "config.json").read_text())["num_nextn_predict_layers"] == 1
    adapter = make_adapter(stripped, tmp_path / "adapter", "glm4_moe")

    result = merge_lora_streaming(stripped, adapter, tmp_path / "merged")
    assert (result.mtp_tensors, result.mtp_layers) == ([], 0)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["num_nextn_predict_layers"] == 0


def test_mtp_layers_count_only_declared_layers_that_are_complete() -> None:
    config = {"num_hidden_layers": 3, "num_nextn_predict_layers": 1}
    whole = [f"model.layers.3.{part}" for part in ("eh_proj.weight", "enorm.weight", "hnorm.weight", "mlp.gate.weight")]
    assert count_mtp_layers(whole, config) == 1
    assert count_mtp_layers(whole[1:], config) == 0  # no eh_proj: cannot draft
    assert count_mtp_layers(whole, {**config, "num_nextn_predict_layers": 0}) == 0  # not declared: no server loads it
    assert count_mtp_layers([n.replace("layers.3", "layers.4") for n in whole], config) == 0


def _fuse_experts(src: Path, dst: Path) -> None:
    """Rewrite a per-expert checkpoint with transformers 5's in-memory fused expert tensors."""
    dst.mkdir()
    for path in src.iterdir():
        if path.suffix != ".safetensors" and path.name != INDEX_NAME:
            shutil.copy(path, dst / path.name)
    weight_map: dict[str, str] = {}
    for shard in sorted(src.glob("*.safetensors")):
        tensors = load_file(str(shard))
        fused: dict[str, torch.Tensor] = {}
        groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        for key, value in tensors.items():
            parts = key.split(".")
            if ".mlp.experts." in key and parts[-3].isdigit():
                container = ".".join(parts[:-3])
                groups.setdefault(container, {}).setdefault(int(parts[-3]), {})[parts[-2]] = value
            else:
                fused[key] = value
        for container, experts in groups.items():
            order = sorted(experts)
            fused[f"{container}.gate_up_proj"] = torch.stack(
                [torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]]) for e in order]
            )
            fused[f"{container}.down_proj"] = torch.stack([experts[e]["down_proj"] for e in order])
        save_file(fused, str(dst / shard.name), metadata={"format": "pt"})
        weight_map.update({key: shard.name for key in fused})
    if (src / INDEX_NAME).exists():
        (dst / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_fused_expert_input_is_written_per_expert(
    arch: str, bf16_base: Path, bf16_adapter: Path, tmp_path: Path
) -> None:
    fused_base = tmp_path / "fused-base"
    _fuse_experts(bf16_base, fused_base)
    with safe_open(str(next(fused_base.glob("*.safetensors"))), framework="pt"):
        pass
    from_fused = merge_lora_streaming(fused_base, bf16_adapter, tmp_path / "from-fused")
    merge_lora_streaming(bf16_base, bf16_adapter, tmp_path / "from-per-expert")

    assert from_fused.split_fused > 0
    a, b = _tensors(tmp_path / "from-fused"), _tensors(tmp_path / "from-per-expert")
    assert not any(k.endswith(("experts.gate_up_proj", "experts.down_proj")) for k in a)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tokenizer_template_and_generation_config_are_copied(
    arch: str, bf16_base: Path, bf16_adapter: Path, tmp_path: Path
) -> None:
    merge_lora_streaming(bf16_base, bf16_adapter, tmp_path / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (bf16_base / name).read_bytes(), name


def test_merged_config_carries_what_llama_cpp_reads(
    arch: str, bf16_base: Path, bf16_adapter: Path, tmp_path: Path
) -> None:
    merge_lora_streaming(bf16_base, bf16_adapter, tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    if arch == "glm4_moe_lite":
        assert config["first_k_dense_replace"] == 1
        assert config["scoring_func"] == "sigmoid"
        assert AutoConfig.from_pretrained(str(tmp_path / "merged")).mlp_layer_types == [
            "dense",
            "sparse",
            "sparse",
        ]
    else:
        assert config["first_k_dense_replace"] == 1
        assert "scoring_func" not in config


def test_adapter_of_another_model_is_refused(
    bf16_adapter: Path, arch: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    from tinyexport import build_base

    other = "glm4_moe_lite" if arch == "glm4_moe" else "glm4_moe"
    base = build_base(other, tmp_path / "other", tokenizer_dir, num_shards=1)  # type: ignore[arg-type]
    with pytest.raises(MergeError, match="this adapter for this base model"):
        merge_lora_streaming(base, bf16_adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() or not any((tmp_path / "merged").glob("*.safetensors"))


@pytest.mark.parametrize("option", ["use_rslora", "use_dora"])
def test_rslora_and_dora_adapters_are_refused(
    option: str, bf16_base: Path, bf16_adapter: Path, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(bf16_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config[option] = True
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        MergeError, match=rf"adapter_config.json: {option}=True is not supported.*train without {option}"
    ):
        merge_lora_streaming(bf16_base, adapter, tmp_path / "merged")


def test_adapter_error_names_the_file_when_config_is_missing(bf16_base: Path, tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    with pytest.raises(MergeError, match=r"adapter_config.json: no adapter config"):
        merge_lora_streaming(bf16_base, tmp_path / "adapter", tmp_path / "merged")
    assert issubclass(MergeError, ValueError) and issubclass(AdapterError, ValueError)


def test_adapter_attached_by_the_trainer_merges_to_the_same_logits(
    arch: str, f32_base: Path, tmp_path: Path
) -> None:
    from tinyexport import make_trainer_adapter

    from glmops_trainer.model.targets import load_adapter

    targets = ["attention", "dense_mlp", "shared_experts", "experts"]
    adapter = make_trainer_adapter(f32_base, tmp_path / "adapter", arch, targets)
    result = merge_lora_streaming(f32_base, adapter, tmp_path / "merged")

    modules = {
        name.rsplit(".", 2)[0] if ".experts." in name and name.split(".")[-3].isdigit() else name
        for name in result.merged_tensors
    }
    assert any(".mlp.shared_experts.up_proj" in m for m in modules)
    assert any(m.startswith("model.layers.0.mlp.down_proj") for m in modules)
    ids = torch.tensor([[3, 17, 99, 1000, 250, 44, 12, 7, 1500, 64]])
    with torch.no_grad():
        expected = load_adapter(AutoModelForCausalLM.from_pretrained(str(f32_base)), adapter)(ids).logits
        actual = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)

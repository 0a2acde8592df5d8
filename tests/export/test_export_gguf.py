"""GGUF export checked with llama.cpp itself: architecture, template, logits, greedy decoding, quantizations.

Each architecture gets one model trained (plain peft) to memorise a text, exported by the real
recipe with every quantization. llama.cpp runs through llama-cpp-python built from the same sdist
as the converter and llama-quantize (`bash scripts/build-llama-cpp.sh`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from tinyexport import (
    MEMORISED_TEXT,
    build_base,
    hf_greedy,
    hf_logits,
    llama_cpp_greedy,
    llama_cpp_logits,
    llama_cpp_model,
    train_memorising_adapter,
)
from transformers import AutoTokenizer

from glmops_trainer.config import TrainerConfig
from glmops_trainer.export import export_after_training
from glmops_trainer.export.gguf import convert_to_gguf, gguf_module, read_gguf_metadata
from glmops_trainer.export.llamacpp_build import LlamaCppToolError, ensure_tools
from glmops_trainer.export.quantize import QUANTIZATIONS
from glmops_trainer.fsutil import sha256_file
from glmops_trainer.llamacpp_src import official_chat_template

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]

PROMPT_TOKENS = 8
GREEDY_TOKENS = 32
F32_LOGIT_TOLERANCE = 1e-3
# Share of teacher-forced positions of the memorised text where a quantized model's top-1 token
# equals the float model's. The memorised continuation has wide logit margins, so even 3-bit
# weights keep most of it. Measured on the 49 positions (glm4_moe / glm4_moe_lite): Q8_0 1.0/1.0,
# Q6_K 0.98/1.0, Q5_K_M 1.0/0.98, Q4_K_M 0.96/0.96, Q4_0 0.94/0.88, Q3_K_M 0.94/0.82.
TOP1_AGREEMENT_BOUND = {"Q8_0": 1.0, "Q6_K": 0.95, "Q5_K_M": 0.95, "Q4_K_M": 0.9, "Q4_0": 0.8, "Q3_K_M": 0.7}


@dataclass(frozen=True)
class Exported:
    """A memorising model of one architecture and everything the export made of it."""

    arch: str
    merged: Path
    out: Path
    manifest: dict[str, object]
    f32_gguf: Path
    token_ids: list[int]

    def gguf(self, quantization: str) -> Path:
        return self.out / "gguf" / quantization / f"memo-{quantization}.gguf"


@pytest.fixture(scope="session")
def llama_cpp_ready() -> None:
    """llama-quantize and llama-cpp-python of the pinned sdist (built by scripts/build-llama-cpp.sh)."""
    try:
        ensure_tools()
        import llama_cpp  # noqa: F401
    except (LlamaCppToolError, ImportError) as exc:
        pytest.fail(
            f"llama.cpp is not available: {exc}\nRun `bash scripts/build-llama-cpp.sh` first.", pytrace=False
        )


@pytest.fixture(scope="session")
def exported(
    arch: str, tokenizer_dir: Path, llama_cpp_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Exported:
    root = tmp_path_factory.mktemp(f"gguf-{arch}")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    token_ids = tokenizer(MEMORISED_TEXT, add_special_tokens=False)["input_ids"]
    assert len(token_ids) >= PROMPT_TOKENS + GREEDY_TOKENS
    # initializer_range 0.1: LoRA never trains the frozen random lm_head, and at the default 0.02 its
    # logits are too flat for any adapter to make confident predictions.
    base = build_base(
        arch,
        root / "base",
        tokenizer_dir,
        num_shards=2,
        dtype=torch.float32,  # type: ignore[arg-type]
        initializer_range=0.1,
    )
    adapter = train_memorising_adapter(base, root / "adapter", arch, token_ids)
    out = root / "out"
    config = TrainerConfig.model_validate(
        {
            "job": {"name": "memo"},
            "model": {"source": f"file://{base}", "variant": "flagship" if arch == "glm4_moe" else "flash"},
            "data": {"source": "file:///data/train.jsonl"},
            "output": {
                "destination": f"file://{out}",
                "formats": ["adapter", "merged", "gguf"],
                "quantizations": list(QUANTIZATIONS),
            },
        }
    )
    manifest = export_after_training(config, adapter, out)
    f32_gguf = convert_to_gguf(out / "merged", root / "merged-F32.gguf", "f32")
    return Exported(arch, out / "merged", out, manifest, f32_gguf, token_ids)


def test_gguf_carries_architecture_pre_tokenizer_and_the_exact_chat_template(exported: Exported) -> None:
    metadata = read_gguf_metadata(exported.f32_gguf)
    assert (
        metadata["general.architecture"]
        == {"glm4_moe": "glm4moe", "glm4_moe_lite": "deepseek2"}[exported.arch]
    )
    assert metadata["tokenizer.ggml.pre"] == "glm4"
    template = AutoTokenizer.from_pretrained(str(exported.merged)).chat_template
    assert metadata["tokenizer.chat_template"] == template == official_chat_template("GLM-4.7-Flash")
    for quantization in QUANTIZATIONS:
        assert read_gguf_metadata(exported.gguf(quantization))["tokenizer.chat_template"] == template


def test_gguf_has_the_mtp_layer_exactly_when_the_checkpoint_has_one(exported: Exported) -> None:
    metadata = read_gguf_metadata(exported.f32_gguf)
    names = {tensor.name for tensor in gguf_module().GGUFReader(str(exported.f32_gguf)).tensors}
    nextn = {name for name in names if ".nextn." in name}
    if exported.arch == "glm4_moe":  # the tiny flagship carries the MTP layer, as GLM-4.7 does
        assert metadata["glm4moe.nextn_predict_layers"] == 1
        assert metadata["glm4moe.block_count"] == 4  # 3 layers + the MTP layer
        assert {"blk.3.nextn.eh_proj.weight", "blk.3.nextn.enorm.weight", "blk.3.nextn.hnorm.weight"} <= nextn
    else:  # the tiny Flash checkpoint has none, and the converter must not invent one
        assert "deepseek2.nextn_predict_layers" not in metadata
        assert not nextn


def test_f32_gguf_gives_the_merged_models_logits(exported: Exported) -> None:
    ids = exported.token_ids
    difference = np.abs(llama_cpp_logits(exported.f32_gguf, ids) - hf_logits(exported.merged, ids)).max()
    print(f"{exported.arch}: f32 max abs logit diff {difference:.2e}")
    assert difference < F32_LOGIT_TOLERANCE


def test_q8_0_greedy_decoding_equals_transformers_greedy(exported: Exported) -> None:
    prompt = exported.token_ids[:PROMPT_TOKENS]
    expected = hf_greedy(exported.merged, prompt, GREEDY_TOKENS)
    assert expected == exported.token_ids[PROMPT_TOKENS : PROMPT_TOKENS + GREEDY_TOKENS]  # it memorised
    assert llama_cpp_greedy(exported.gguf("Q8_0"), prompt, GREEDY_TOKENS) == expected


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_quantization_keeps_top1_agreement(exported: Exported, quantization: str) -> None:
    ids = exported.token_ids
    reference = hf_logits(exported.merged, ids).argmax(axis=-1)
    quantized = llama_cpp_logits(exported.gguf(quantization), ids).argmax(axis=-1)
    agreement = float((reference == quantized).mean())
    print(f"{exported.arch} {quantization}: top-1 agreement {agreement:.3f}")
    assert agreement >= TOP1_AGREEMENT_BOUND[quantization]


def test_every_quantization_is_published_loads_and_generates(exported: Exported) -> None:
    artifacts = {item["path"]: item for item in exported.manifest["artifacts"]}  # type: ignore[union-attr, index]
    for quantization in QUANTIZATIONS:
        gguf = exported.gguf(quantization)
        entry = artifacts[f"gguf/{quantization}/{gguf.name}"]
        assert entry["format"] == "gguf" and entry["quantization"] == quantization
        assert entry["sha256"] == sha256_file(gguf) and entry["sizeBytes"] == gguf.stat().st_size
        modelfile = gguf.parent / "Modelfile"
        assert artifacts[f"gguf/{quantization}/Modelfile"]["format"] == "modelfile"
        assert f"FROM ./{gguf.name}\n" in modelfile.read_text()
        completion = llama_cpp_model(gguf).create_completion(
            MEMORISED_TEXT[:40], max_tokens=8, temperature=0.0
        )
        assert completion["usage"]["completion_tokens"] >= 1, quantization  # type: ignore[index]
    sizes = [exported.gguf(q).stat().st_size for q in ("Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")]
    assert sizes == sorted(sizes)


def test_llama_cpp_renders_and_tokenizes_a_conversation_like_transformers(exported: Exported) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tokenizer = AutoTokenizer.from_pretrained(str(exported.merged))
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "reasoning_content": "I need the tool.",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
                }
            ],
        },
        {"role": "tool", "content": json.dumps({"temperature": 21})},
        {"role": "assistant", "content": "It is 21 degrees.", "reasoning_content": "Sunny."},
        {"role": "user", "content": "Thanks! And Berlin?"},
    ]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    llm = llama_cpp_model(exported.gguf("Q8_0"))
    formatter = Jinja2ChatFormatter(
        llm.metadata["tokenizer.chat_template"], eos_token="<|endoftext|>", bos_token=""
    )
    prompt = formatter(messages=messages).prompt  # type: ignore[arg-type]
    assert prompt == expected
    assert (
        llm.tokenize(prompt.encode(), add_bos=False, special=True)
        == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )

"""Small parts of the export: the streaming safetensors writer, the converter's GLM allowance, the build script."""

from __future__ import annotations

import subprocess
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glmops_trainer.export.convert_entry import GLM_PRE_TYPE, _install_glm_pre_tokenizer_fallback
from glmops_trainer.export.llamacpp_build import build_script, cached_build_dir
from glmops_trainer.export.safetensors_stream import StreamingSafetensorsWriter, TensorSpec
from glmops_trainer.fsutil import sha256_file


def test_streamed_file_reads_back_with_the_safetensors_library(tmp_path: Path) -> None:
    tensors = {
        "a.weight": torch.randn(3, 5).to(torch.bfloat16),
        "b.bias": torch.arange(7, dtype=torch.float32),
        "c.scalar": torch.tensor(2.5, dtype=torch.float16),
        "d.empty": torch.zeros(0, 4),
        "e.ids": torch.tensor([1, -2, 3], dtype=torch.int64),
    }
    specs = [TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    path = tmp_path / "x.safetensors"
    with StreamingSafetensorsWriter(path, specs, {"format": "pt"}) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        digest = writer.close()
    assert digest == sha256_file(path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert sorted(handle.keys()) == sorted(tensors)
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor), name


def test_streamed_writer_refuses_undeclared_or_missing_tensors(tmp_path: Path) -> None:
    specs = [TensorSpec("a", torch.float32, (2,)), TensorSpec("b", torch.float32, (2,))]
    writer = StreamingSafetensorsWriter(tmp_path / "x.safetensors", specs)
    with pytest.raises(ValueError, match=r"'a' \(torch.float16, \(2,\)\) does not match the declared"):
        writer.write("a", torch.zeros(2, dtype=torch.float16))
    writer.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="1 declared tensors were never written, first 'b'"):
        writer.close()


def _fake_converter_module(behaviour: str) -> types.SimpleNamespace:
    class TextModel:
        def get_vocab_base_pre(self, tokenizer: object) -> str:
            if behaviour == "unknown":
                raise NotImplementedError(
                    "BPE pre-tokenizer was not recognized - update get_vocab_base_pre()"
                )
            if behaviour == "broken":
                raise RuntimeError("tokenizer could not be loaded")
            return "chatglm-bpe"

    class Glm4MoeModel(TextModel):
        pass

    class Glm4MoeLiteModel(TextModel):
        pass

    class LlamaModel(TextModel):
        pass

    return types.SimpleNamespace(
        Glm4MoeModel=Glm4MoeModel, Glm4MoeLiteModel=Glm4MoeLiteModel, LlamaModel=LlamaModel
    )


def test_unknown_tokenizer_hash_becomes_glm4_for_glm_models_only() -> None:
    module = _fake_converter_module("unknown")
    _install_glm_pre_tokenizer_fallback(module)
    assert module.Glm4MoeModel().get_vocab_base_pre(None) == GLM_PRE_TYPE
    assert module.Glm4MoeLiteModel().get_vocab_base_pre(None) == GLM_PRE_TYPE
    with pytest.raises(NotImplementedError):
        module.LlamaModel().get_vocab_base_pre(None)


def test_known_hashes_and_other_errors_pass_through() -> None:
    known = _fake_converter_module("known")
    _install_glm_pre_tokenizer_fallback(known)
    assert known.Glm4MoeModel().get_vocab_base_pre(None) == "chatglm-bpe"
    broken = _fake_converter_module("broken")
    _install_glm_pre_tokenizer_fallback(broken)
    with pytest.raises(RuntimeError, match="could not be loaded"):
        broken.Glm4MoeLiteModel().get_vocab_base_pre(None)


@pytest.mark.llamacpp
def test_build_script_with_a_warm_cache_takes_seconds() -> None:
    script = build_script()
    assert script is not None
    if not (cached_build_dir() / "STAMP").is_file():
        pytest.fail("the llama.cpp cache is cold; run `bash scripts/build-llama-cpp.sh` first", pytrace=False)
    started = time.monotonic()
    completed = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert time.monotonic() - started < 30
    assert "tools cached in" in completed.stderr and "wheel cached in" in completed.stderr

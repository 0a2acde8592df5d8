"""The tiny GLM tokenizer and the llama.cpp tree it takes the official chat template from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from glmops_trainer import llamacpp_src
from glmops_trainer.llamacpp_src import LlamaCppSourceError, llama_cpp_source_dir, official_chat_template
from glmops_trainer.tiny.tokenizer import (
    GLM4_SPLIT_PATTERN,
    GLM_ADDED_TOKENS,
    GLM_SPECIAL_TOKENS,
    build_tiny_tokenizer,
    generation_stop_token_ids,
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_the_llama_cpp_tree_holds_the_converter_gguf_py_and_the_official_glm_template() -> None:
    tree = llama_cpp_source_dir()
    assert (tree / "convert_hf_to_gguf.py").is_file()
    assert (tree / "gguf-py" / "gguf").is_dir()
    assert (tree / "CMakeLists.txt").is_file()
    template = official_chat_template()
    assert template == (tree / "models" / "templates" / "GLM-4.7-Flash.jinja").read_text(encoding="utf-8")
    assert template.startswith("[gMASK]<sop>")
    assert "clear_thinking" in template and "reasoning_content" in template


def test_an_unknown_template_name_lists_the_available_ones() -> None:
    with pytest.raises(LlamaCppSourceError, match=r"GLM-4\.7-Flash"):
        official_chat_template("GLM-9-Nonexistent")


def test_an_explicit_source_dir_wins_and_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(llamacpp_src.SOURCE_ENV, str(tmp_path))
    with pytest.raises(LlamaCppSourceError, match="convert_hf_to_gguf.py"):
        llama_cpp_source_dir()
    for marker in ("gguf-py", "models/templates"):
        (tmp_path / marker).mkdir(parents=True)
    (tmp_path / "convert_hf_to_gguf.py").write_text("", encoding="utf-8")
    (tmp_path / "models" / "templates" / "GLM-4.7-Flash.jinja").write_text("{{ 'x' }}", encoding="utf-8")
    assert llama_cpp_source_dir() == tmp_path
    assert official_chat_template() == "{{ 'x' }}"


def test_glm_tokens_follow_the_learned_vocabulary_in_glm_order(tokenizer: PreTrainedTokenizerBase) -> None:
    # Same layout as the real vocabulary, where <|endoftext|> is 151329 and <|video|> 151364.
    assert len(tokenizer) == 2048
    added = GLM_SPECIAL_TOKENS + GLM_ADDED_TOKENS
    assert len(added) == 36
    assert [tokenizer.convert_tokens_to_ids(token) for token in added] == list(range(2012, 2048))
    assert tokenizer.convert_tokens_to_ids("<|user|>") == 2019
    assert tokenizer.convert_tokens_to_ids("<think>") == 2033
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 2012
    assert tokenizer.pad_token_id == 2012
    assert generation_stop_token_ids(tokenizer) == [2012, 2019, 2021]


def test_role_markers_are_special_and_reasoning_markup_survives_skip_special_tokens(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = "[gMASK]<sop><|user|>Hi<|assistant|><think>Greet back.</think>Hello!<|user|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[:3]) == ["[gMASK]", "<sop>", "<|user|>"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hi<think>Greet back.</think>Hello!"


def test_text_splits_with_glm4s_pre_tokenizer_regex(tokenizer_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    saved = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    split = saved["pre_tokenizer"]["pretokenizers"][0]
    assert split["type"] == "Split" and split["pattern"]["Regex"] == GLM4_SPLIT_PATTERN
    # Digits go in groups of at most three, as GLM-4 (and llama.cpp's "glm4" pre-type) split them.
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Order 1234567 isn't paid")
    assert [piece for piece, _ in pieces] == ["Order", "Ġ", "123", "456", "7", "Ġisn", "'t", "Ġpaid"]


def test_common_words_of_the_test_conversations_are_single_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    for word in (" weather", " Paris", " Berlin", " temperature", " assistant"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_the_tokenizer_carries_the_official_template_and_is_deterministic(
    tokenizer_dir: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    assert tokenizer.chat_template == official_chat_template()
    build_tiny_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()


def test_a_smaller_vocab_keeps_the_layout_and_a_too_small_one_is_refused(tmp_path: Path) -> None:
    small = build_tiny_tokenizer(tmp_path / "small", vocab_size=512, chat_template="{{ messages }}")
    assert len(small) == 512
    assert small.convert_tokens_to_ids("<|endoftext|>") == 476
    with pytest.raises(ValueError, match=re.escape("vocab_size >= 292")):
        build_tiny_tokenizer(tmp_path / "tiny", vocab_size=100, chat_template="x")

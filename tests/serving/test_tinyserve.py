"""The lessons that serving tests teach render to exactly the completions a GLM-4.7 server parses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tinyserve import ANSWER, REASONING, TOOL_NAME, TOOL_REASONING, render_lessons
from transformers import AutoTokenizer

from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory: Path = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer(directory)
    return AutoTokenizer.from_pretrained(str(directory))


def test_the_model_learns_reasoning_then_answer_then_the_turn_end(tokenizer: Any) -> None:
    lesson = render_lessons(tokenizer)[0]
    # The generation prompt already opens <think>: the model writes reasoning, closes it, answers.
    assert tokenizer.decode(lesson.prompt_ids).endswith("<|assistant|><think>")
    assert tokenizer.decode(lesson.completion_ids) == f"{REASONING}</think>{ANSWER}<|user|>"


def test_the_model_learns_a_glm47_tool_call_that_ends_with_observation(tokenizer: Any) -> None:
    lesson = render_lessons(tokenizer)[1]
    assert "<tools>" in tokenizer.decode(lesson.prompt_ids)
    assert tokenizer.decode(lesson.completion_ids) == (
        f"{TOOL_REASONING}</think><tool_call>{TOOL_NAME}<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "</tool_call><|observation|>"
    )


def test_only_the_completion_is_learned(tokenizer: Any) -> None:
    for lesson in render_lessons(tokenizer):
        assert lesson.input_ids == lesson.prompt_ids + lesson.completion_ids
        assert lesson.labels == [-100] * len(lesson.prompt_ids) + lesson.completion_ids

"""The prompts file: what may be asked, and every problem named with FILE:LINE before any request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from glmops_trainer.data.validate import CONTROL_TOKENS as VALIDATOR_CONTROL_TOKENS
from glmops_trainer.generate.prompts import CONTROL_TOKENS, PromptError, read_prompts

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def prompts_file(tmp_path: Path, *records: Any) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def problems(tmp_path: Path, *records: Any) -> str:
    with pytest.raises(PromptError) as raised:
        read_prompts(prompts_file(tmp_path, *records))
    return str(raised.value)


def test_the_generator_refuses_the_control_tokens_the_trainer_refuses() -> None:
    # The generator cannot import the trainer's data package (it imports torch); the lists must agree.
    assert CONTROL_TOKENS == VALIDATOR_CONTROL_TOKENS


def test_plain_prompts_get_the_system_prompt_and_partial_conversations_keep_theirs(tmp_path: Path) -> None:
    path = prompts_file(
        tmp_path,
        {"prompt": "Hi", "id": "greet"},
        {"prompt": "Hi again", "system": "Be terse."},
        "",
        {"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content": "Go"}]},
        {"messages": [{"role": "user", "content": "Go"}], "tools": [TOOL["function"]]},
    )
    found = read_prompts(path, system_prompt="Default.")
    assert [(p.index, p.id, p.line) for p in found] == [(0, "greet", 1), (1, "line-2", 2), (2, "line-4", 4), (3, "line-5", 5)]
    assert [m["content"] for m in found[0].messages] == ["Default.", "Hi"]
    assert [m["content"] for m in found[1].messages] == ["Be terse.", "Hi again"]
    assert [m["content"] for m in found[2].messages] == ["Own.", "Go"]
    assert found[3].tools == ({"type": "function", "function": TOOL["function"]},)  # bare functions are wrapped


def test_tool_calls_in_a_prompt_get_output_ids_and_their_results_follow_them(tmp_path: Path) -> None:
    record = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
            ]},
            {"role": "tool", "tool_call_id": "b", "content": "sunny"},
            {"role": "tool", "tool_call_id": "a", "content": "snow"},
        ],
        "tools": [TOOL],
    }  # fmt: skip
    (prompt,) = read_prompts(prompts_file(tmp_path, record))
    assert [c["id"] for c in prompt.messages[1]["tool_calls"]] == ["prompt_1_0", "prompt_1_1"]
    assert [m.get("tool_call_id") for m in prompt.messages[2:]] == ["prompt_1_1", "prompt_1_0"]
    assert json.loads(prompt.messages[1]["tool_calls"][1]["function"]["arguments"]) == {"city": "Rome"}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ('{"prompt": "x",}', "prompts.jsonl:2: not valid JSON"),
        ('["not", "an", "object"]', "a prompt must be a JSON object"),
        ({"promt": "typo"}, "unknown key(s) ['promt']"),
        ({"prompt": "a", "messages": []}, 'give exactly one of "prompt"'),
        ({"prompt": "  "}, "prompt: must be a non-empty string"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "the last message must be a user or tool message"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "a system message must come first"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "messages[0].role: 'robot'"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}]}, "must answer a tool call"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": {}}},
                {"id": "d", "type": "function", "function": {"name": "get_weather", "arguments": {}}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}]},
            "tool call(s) ['prompt_1_1'] get no result",
        ),
        ({"prompt": "Use <|user|> here"}, "control token '<|user|>'"),
        ({"prompt": "a", "tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0]: write it as"),
        ({"prompt": "a", "tools": [TOOL, TOOL]}, "offered twice"),
        ({"prompt": "a", "tool_results": [{"name": "get_weather"}]}, 'tool_results[0]: needs "name" and "content"'),
        ({"prompt": "a", "tool_results": [{"name": "x", "arguments": "Oslo", "content": "c"}]}, "tool_results[0].arguments: must be an object"),
    ],
)
def test_problems_name_the_line_the_field_and_the_fix(tmp_path: Path, record: Any, expected: str) -> None:
    message = problems(tmp_path, {"prompt": "a fine one"}, record)
    assert expected in message and "prompts.jsonl:2" in message and "fix the prompts file (spec.prompts)" in message


def test_every_problem_is_listed_up_to_twenty(tmp_path: Path) -> None:
    message = problems(tmp_path, *([{"prompt": ""}] * 25))
    assert message.count("must be a non-empty string") == 20 and "... and 5 more" in message


def test_ids_must_be_unique_and_the_file_must_hold_a_prompt(tmp_path: Path) -> None:
    assert "id 'q' is used by more than one prompt" in problems(tmp_path, {"prompt": "a", "id": "q"}, {"prompt": "b", "id": "q"})
    assert "holds no prompt" in problems(tmp_path, "")
    with pytest.raises(PromptError, match="prompts file not found"):
        read_prompts(tmp_path / "missing.jsonl")


def test_a_fixture_answers_its_tool_with_any_arguments_or_the_given_ones(tmp_path: Path) -> None:
    record = {"prompt": "a", "tool_results": [
        {"name": "get_weather", "arguments": {"city": "Oslo"}, "content": "snow"},
        {"name": "get_weather", "content": {"sky": "clear"}},
    ]}  # fmt: skip
    (prompt,) = read_prompts(prompts_file(tmp_path, record))
    oslo, anywhere = prompt.fixtures
    assert oslo.answers("get_weather", {"city": "Oslo"}) and not oslo.answers("get_weather", {"city": "Rome"})
    assert anywhere.answers("get_weather", {"city": "Rome"}) and anywhere.content == '{"sky": "clear"}'
    assert not anywhere.answers("get_time", {})

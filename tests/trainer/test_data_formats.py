"""Dataset formats: every supported layout becomes the same internal conversation, with line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmops_trainer.config import DataFormat
from glmops_trainer.data.conversation import Conversation, Message, SourceRef, TextSample, ToolCall
from glmops_trainer.data.formats import parse_openai_chat, split_inline_reasoning
from glmops_trainer.data.issues import DataValidationError
from glmops_trainer.data.reader import Container, RawRecord, detect_container
from glmops_trainer.data.validate import load_and_validate

DATASETS = Path(__file__).parent.parent / "data" / "datasets"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_openai_chat_with_tools_becomes_a_conversation_with_parsed_arguments() -> None:
    loaded = load_and_validate(DATASETS / "agentic_small.jsonl")
    assert loaded.data_format is DataFormat.openai_chat and loaded.container is Container.jsonl
    lines = sum(1 for line in (DATASETS / "agentic_small.jsonl").read_text().splitlines() if line.strip())
    assert loaded.report.invalid == 0 and loaded.report.valid == len(loaded.samples) == lines
    first = loaded.samples[0]
    assert isinstance(first, Conversation)
    assert [m.role for m in first.messages] == ["system", "user", "assistant", "tool", "assistant"]
    call = first.messages[2].tool_calls[0]
    assert call == ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, "call_0", origin="messages[2].tool_calls[0]")
    assert first.messages[2].reasoning == "The user wants the weather in Paris. I should call get_weather."
    assert first.template_tools() is not None and first.template_tools()[0]["function"]["name"] == "get_weather"


def test_arguments_given_as_a_json_string_are_parsed_and_messages_keep_the_template_shape() -> None:
    record = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "21"},
            {"role": "assistant", "thinking": "It is 21.", "content": "21 degrees."},
        ]
    }
    sample, issues = parse_openai_chat(RawRecord(SourceRef("chat.jsonl", 7), record))
    assert issues == []
    assert isinstance(sample, Conversation)
    assert sample.template_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "", "tool_calls": [
            {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ]},
        {"role": "tool", "content": "21", "tool_call_id": "c1"},
        {"role": "assistant", "content": "21 degrees.", "reasoning_content": "It is 21."},
    ]


def test_inline_think_tags_are_split_like_the_glm_template_splits_them() -> None:
    assert split_inline_reasoning("<think>\nStep one.\n</think>\nAnswer.") == ("Step one.", "Answer.")
    assert split_inline_reasoning("No reasoning here.") == (None, "No reasoning here.")


def test_sharegpt_function_calls_and_observations_become_tool_calls_and_results() -> None:
    loaded = load_and_validate(DATASETS / "sharegpt_tools.jsonl")
    assert loaded.data_format is DataFormat.sharegpt and loaded.report.invalid == 0
    conversation = loaded.samples[0]
    assert isinstance(conversation, Conversation)
    assert conversation.messages == (
        Message("system", "You are a helpful assistant.", origin="system"),
        Message("user", "What is the weather in Paris?", origin="conversations[0]"),
        # The gpt turn and the function_call right after it are one assistant turn.
        Message("assistant", "Let me check.", "I should call get_weather.",
                (ToolCall("get_weather", {"city": "Paris"}, origin="conversations[2].value"),), origin="conversations[1]"),
        Message("tool", "{\"temperature\": 21}", origin="conversations[3]"),
        Message("assistant", "It is sunny in Paris, 21 degrees.", "The tool says 21 degrees.", origin="conversations[4]"),
    )
    # LLaMA-Factory's bare function schemas are wrapped the way serving stacks pass tools to the template.
    assert conversation.tools[0]["type"] == "function"
    assert conversation.tools[0]["function"]["name"] == "get_weather"


def test_alpaca_json_array_keeps_each_elements_line_and_maps_history_and_system() -> None:
    loaded = load_and_validate(DATASETS / "alpaca.json")
    assert loaded.container is Container.json_array and loaded.data_format is DataFormat.alpaca
    assert [sample.source.line for sample in loaded.samples] == [2, 7]
    second = loaded.samples[1]
    assert isinstance(second, Conversation)
    assert [(m.role, m.content, m.reasoning) for m in second.messages] == [
        ("system", "You are a calculator.", None),
        ("user", "What is 1 + 1?", None),
        ("assistant", "2", None),
        ("user", "Add two numbers\n\n2 and 3", None),
        ("assistant", "5", "2 + 3 = 5"),
    ]


def test_alpaca_problems_name_the_field_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.jsonl", "\n".join([
        json.dumps({"instruction": "Say hi", "output": ""}),
        json.dumps({"instruction": 3, "output": "x"}),
        json.dumps({"instruction": "Say hi", "output": "hi", "history": [["only one"]]}),
    ]) + "\n")
    report = load_and_validate(path, DataFormat.alpaca).report
    assert [str(issue) for issue in report.issues] == [
        "a.jsonl:1: output: output is empty (write the expected answer into output)",
        "a.jsonl:2: instruction: instruction must be a string, got a number (give instruction as text)",
        "a.jsonl:2: instruction: instruction and input are both empty (write the task into instruction)",
        ('a.jsonl:3: history[0]: a history entry must be a pair of non-empty strings '
        '(write it as ["user message", "assistant answer"])'),
    ]


def test_sharegpt_problems_name_the_turn(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.jsonl", "\n".join([
        json.dumps({"conversations": [{"from": "robot", "value": "Hi"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "Hi"},
                                      {"from": "function_call", "value": "get_weather(Paris)"}]}),
        json.dumps({"conversations": [{"from": "human"}, {"from": "gpt", "value": "Hello"}]}),
    ]) + "\n")
    report = load_and_validate(path, DataFormat.sharegpt).report
    assert [str(issue) for issue in report.issues] == [
        "s.jsonl:1: conversations[0].from: from is 'robot' (use one of human, gpt, system, function_call, observation)",
        ("s.jsonl:2: conversations[1].value: function_call value is not valid JSON: Expecting value "
        '(write it as {"name": ..., "arguments": {...}}, or a list of such calls)'),
        "s.jsonl:3: conversations[0].value: human turn has no string value (put the turn's text into value)",
    ]


def test_text_comes_from_text_lines_or_a_raw_file() -> None:
    lines = load_and_validate(DATASETS / "text.jsonl")
    assert lines.data_format is DataFormat.text
    assert lines.samples == [
        TextSample("The quick brown fox jumps over the lazy dog.", SourceRef("text.jsonl", 1)),
        TextSample("Paris is warmer than Berlin in the summer.", SourceRef("text.jsonl", 2)),
    ]
    raw = load_and_validate(DATASETS / "plain.txt")
    assert raw.container is Container.raw_text and raw.data_format is DataFormat.text
    assert raw.samples == [TextSample((DATASETS / "plain.txt").read_text(encoding="utf-8"), SourceRef("plain.txt", 1))]


def test_auto_detection_votes_over_the_first_records(tmp_path: Path) -> None:
    # A broken first line does not turn a JSONL file into raw text or into another format.
    path = _write(tmp_path, "d.jsonl", "not json at all\n" + json.dumps({"text": "hello"}) + "\n")
    assert detect_container(path) is Container.jsonl
    loaded = load_and_validate(path)
    assert loaded.data_format is DataFormat.text
    assert [str(issue) for issue in loaded.report.issues] == [
        "d.jsonl:1: not valid JSON: Expecting value at column 1 (fix the JSON syntax on this line)"
    ]


def test_whole_file_problems_raise_with_the_path_and_a_fix(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"missing\.jsonl: dataset file not found \(check dataset.source\)"):
        load_and_validate(tmp_path / "missing.jsonl")
    unknown = _write(tmp_path, "u.jsonl", json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    with pytest.raises(DataValidationError, match="cannot detect the dataset format .* set dataset.format"):
        load_and_validate(unknown)
    broken_array = _write(tmp_path, "b.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": }\n]\n')
    with pytest.raises(DataValidationError, match=r"b\.json:3: not valid JSON"):
        load_and_validate(broken_array)
    prose = _write(tmp_path, "p.txt", "Just prose.\n")
    with pytest.raises(DataValidationError, match=r"p\.txt:1: the file is not JSON, so it cannot be openai-chat"):
        load_and_validate(prose, DataFormat.openai_chat)


def test_a_record_of_another_format_says_so(tmp_path: Path) -> None:
    path = _write(tmp_path, "m.jsonl", json.dumps({"conversations": []}) + "\n")
    report = load_and_validate(path, DataFormat.openai_chat).report
    assert [str(issue) for issue in report.issues] == [
        ("m.jsonl:1: record has no 'messages' key, so it is not openai-chat "
        "(add 'messages', or set dataset.format to this record's format)")
    ]

"""Rendering: byte-identical to GLM-4.7's official template, labels on exactly the assistant turns."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import PreTrainedTokenizerFast

from glmops_trainer.config import Thinking
from glmops_trainer.data.conversation import Conversation, SourceRef, TextSample
from glmops_trainer.data.formats import parse_alpaca, parse_openai_chat, parse_sharegpt
from glmops_trainer.data.reader import RawRecord
from glmops_trainer.data.render import IGNORE_INDEX, ChatRenderer, RenderedSample, RenderError
from glmops_trainer.llamacpp_src import official_chat_template
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
AGENTIC = {
    "tools": [WEATHER_TOOL],
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Compare the weather in Paris and Berlin."},
        {"role": "assistant", "reasoning_content": "I should check the weather for both cities.", "content": "",
         "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
             {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Berlin"}}},
         ]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temperature\": 21}"},
        {"role": "tool", "tool_call_id": "call_2", "name": "get_weather", "content": "{\"temperature\": 9}"},
        {"role": "assistant", "reasoning_content": "Both results are in.", "content": "Paris is warmer than Berlin."},
        {"role": "user", "content": "What should I pack?"},
        {"role": "assistant", "reasoning_content": "Rain in Berlin.", "content": "Pack an umbrella."},
    ],
}
CALLS = (
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>"
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Berlin</arg_value></tool_call>"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def official_render(record: dict[str, Any], **options: Any) -> str:
    """The template file rendered straight with jinja2, configured as transformers configures it."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = lambda value, ensure_ascii=False, indent=None, separators=None, sort_keys=False: (
        json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    )

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    environment.globals["raise_exception"] = raise_exception
    messages = copy.deepcopy(record["messages"])
    for message in messages:
        # Serving stacks hand the template parsed arguments; the template iterates `arguments.items()`.
        for call in message.get("tool_calls", []):
            if isinstance(call["function"]["arguments"], str):
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    template = environment.from_string(official_chat_template())
    return template.render(messages=messages, tools=record.get("tools"), add_generation_prompt=False, **options)


def conversation(record: dict[str, Any], parse: Any = parse_openai_chat) -> Conversation:
    sample, issues = parse(RawRecord(SourceRef("golden.jsonl", 1), record))
    assert issues == [] and isinstance(sample, Conversation)
    return sample


def labelled_segments(tokenizer: PreTrainedTokenizerFast, sample: RenderedSample) -> list[str]:
    segments: list[list[int]] = []
    previous_labelled = False
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous_labelled:
                segments.append([])
            segments[-1].append(token)
        previous_labelled = label != IGNORE_INDEX
    return [tokenizer.decode(segment) for segment in segments]


def test_preserved_thinking_render_is_the_official_template_output_byte_for_byte(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    renderer = ChatRenderer(tokenizer, Thinking.preserve)
    expected = official_render(AGENTIC, clear_thinking=False)
    assert renderer.chat_text(conversation(AGENTIC)) == expected
    # Preserved Thinking: the first turn keeps its reasoning although a user message follows it.
    assert "<|assistant|><think>I should check the weather for both cities.</think><tool_call>" in expected
    sample = renderer.render(conversation(AGENTIC))
    # The template ends after the last turn; its stop token is appended.
    assert tokenizer.decode(sample.input_ids) == expected + "<|user|>"


def test_labels_cover_exactly_the_assistant_turns_and_their_stop_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    sample = ChatRenderer(tokenizer, Thinking.preserve).render(conversation(AGENTIC))
    assert labelled_segments(tokenizer, sample) == [
        "I should check the weather for both cities.</think>" + CALLS + "<|observation|>",
        "Both results are in.</think>Paris is warmer than Berlin.<|user|>",
        "Rain in Berlin.</think>Pack an umbrella.<|user|>",
    ]
    assert len(sample.labels) == len(sample.input_ids)
    assert sample.labels[:3] == [IGNORE_INDEX] * 3


def test_strip_renders_the_official_clear_thinking_output_and_does_not_teach_skipping_reasoning(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    renderer = ChatRenderer(tokenizer, Thinking.strip)
    expected = official_render(AGENTIC, clear_thinking=True)
    assert renderer.chat_text(conversation(AGENTIC)) == expected
    assert "I should check" not in expected and "<think>Rain in Berlin.</think>" in expected
    sample = renderer.render(conversation(AGENTIC))
    assert tokenizer.decode(sample.input_ids) == expected + "<|user|>"
    assert labelled_segments(tokenizer, sample) == [
        CALLS + "<|observation|>",
        "Paris is warmer than Berlin.<|user|>",
        "Rain in Berlin.</think>Pack an umbrella.<|user|>",
    ]


def test_a_turn_without_reasoning_learns_the_closing_think_tag(tokenizer: PreTrainedTokenizerFast) -> None:
    record = {"instruction": "Translate good morning to French.", "output": "Bonjour."}
    sample = ChatRenderer(tokenizer, Thinking.preserve).render(conversation(record, parse_alpaca))
    assert tokenizer.decode(sample.input_ids) == (
        "[gMASK]<sop><|user|>Translate good morning to French.<|assistant|></think>Bonjour.<|user|>"
    )
    # The generation prompt supplies `<|assistant|><think>`; without reasoning the model must close it at once.
    assert labelled_segments(tokenizer, sample) == ["</think>Bonjour.<|user|>"]


def test_a_conversation_that_ends_with_tool_calls_stops_at_observation(tokenizer: PreTrainedTokenizerFast) -> None:
    record = {"tools": [WEATHER_TOOL], "messages": AGENTIC["messages"][1:3]}
    sample = ChatRenderer(tokenizer, Thinking.preserve).render(conversation(record))
    assert labelled_segments(tokenizer, sample) == [
        "I should check the weather for both cities.</think>" + CALLS + "<|observation|>"
    ]
    assert tokenizer.decode(sample.input_ids) == official_render(record, clear_thinking=False) + "<|observation|>"


def test_sharegpt_and_openai_forms_of_one_conversation_train_identically(tokenizer: PreTrainedTokenizerFast) -> None:
    sharegpt = {
        "system": "You are a helpful assistant.",
        "tools": [WEATHER_TOOL["function"]],
        "conversations": [
            {"from": "human", "value": "Compare the weather in Paris and Berlin."},
            {"from": "function_call", "value": json.dumps(
                [{"name": "get_weather", "arguments": {"city": "Paris"}},
                 {"name": "get_weather", "arguments": {"city": "Berlin"}}])},
            {"from": "observation", "value": "{\"temperature\": 21}"},
            {"from": "observation", "value": "{\"temperature\": 9}"},
            {"from": "gpt", "value": "<think>Both results are in.</think>Paris is warmer than Berlin."},
        ],
    }
    openai = {
        "tools": [WEATHER_TOOL],
        "messages": [m if m["role"] != "assistant" or "tool_calls" not in m else {**m, "reasoning_content": None}
                     for m in AGENTIC["messages"][:6]],
    }
    renderer = ChatRenderer(tokenizer, Thinking.preserve)
    assert renderer.render(conversation(sharegpt, parse_sharegpt)).input_ids == renderer.render(
        conversation(openai)
    ).input_ids
    assert renderer.render(conversation(sharegpt, parse_sharegpt)).labels == renderer.render(
        conversation(openai)
    ).labels


def test_a_template_that_is_not_prefix_stable_is_refused(tmp_path: Path) -> None:
    counting = "[gMASK]<sop>{{ messages | length }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    tokenizer = build_tiny_tokenizer(tmp_path, chat_template=counting + "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(RenderError, match="does not render a conversation's beginning as a prefix"):
        ChatRenderer(tokenizer, Thinking.preserve).render(conversation({"messages": AGENTIC["messages"][6:]}))


def test_text_is_learned_whole_in_windows_that_each_start_with_the_glm_prefix(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    text = "Paris is warmer than Berlin. " * 12
    windows = ChatRenderer(tokenizer, Thinking.preserve).render_text(TextSample(text, SourceRef("t.txt", 1)), 16)
    body = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prefix = tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    assert all(len(window) <= 16 and window.input_ids[:2] == prefix for window in windows)
    assert all(window.labels[:2] == [IGNORE_INDEX] * 2 for window in windows)
    assert [token for window in windows for token in window.input_ids[2:]] == body
    assert [label for window in windows for label in window.labels[2:]] == body
    assert len(windows) == -(-len(body) // 14)

"""Dataset formats -> the internal `Conversation` / `TextSample`, with field-level problems.

Supported record shapes (one JSON object per JSONL line, or elements of a JSON array):

- openai-chat: `{"messages": [...], "tools"?: [...]}` with roles system/developer, user, assistant
  (`content`, `reasoning_content`, `tool_calls`) and tool (`tool_call_id`, `name`, `content`).
- sharegpt: `{"conversations": [{"from": ..., "value": ...}], "system"?, "tools"?}` with from
  human/gpt/system/function_call/observation (LLaMA-Factory's convention for tool use).
- alpaca: `{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}`.
- text: `{"text": ...}`, or a raw text file.

Every parser returns the sample, or None plus the problems that make it unusable. Structural rules
that span messages (ordering, tool call/result pairing) live in `validate.py`.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from glmops_trainer.config import DataFormat
from glmops_trainer.data.conversation import (
    Conversation,
    Message,
    Role,
    Sample,
    SourceRef,
    TextSample,
    ToolCall,
)
from glmops_trainer.data.issues import Issue, IssueKind
from glmops_trainer.data.reader import RawRecord

_METADATA_KEYS = frozenset({"id", "metadata"})
"""Keys every record format may carry for provenance; they are ignored."""

_OPENAI_RECORD_KEYS = frozenset({"messages", "tools"}) | _METADATA_KEYS
_OPENAI_MESSAGE_KEYS = frozenset(
    {"role", "content", "reasoning_content", "reasoning", "thinking", "tool_calls", "tool_call_id", "name"}
)
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_OPENAI_ROLES: dict[str, Role] = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"
}
_TOOL_CALL_KEYS = frozenset({"id", "type", "function"})
_FUNCTION_KEYS = frozenset({"name", "arguments"})

_SHAREGPT_RECORD_KEYS = frozenset({"conversations", "system", "tools"}) | _METADATA_KEYS
_SHAREGPT_TURN_KEYS = frozenset({"from", "value"})
_SHAREGPT_ROLES: dict[str, str] = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "function_call", "observation": "tool", "tool": "tool",
}

_ALPACA_RECORD_KEYS = frozenset({"instruction", "input", "output", "system", "history"}) | _METADATA_KEYS
_TEXT_RECORD_KEYS = frozenset({"text"}) | _METADATA_KEYS


class _Problems:
    """Problems of one record, each tied to the record's source line."""

    def __init__(self, source: SourceRef) -> None:
        self.source = source
        self.items: list[Issue] = []

    def add(self, kind: IssueKind, field: str, message: str, fix: str) -> None:
        self.items.append(Issue(self.source, kind, message, fix, field))

    def unknown_keys(self, value: dict[str, Any], allowed: frozenset[str], field: str, what: str) -> None:
        for key in value:
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.add(
                IssueKind.unknown_key, _join(field, str(key)), f"unknown key in {what}",
                f"{hint}remove it; allowed keys: {', '.join(sorted(allowed))}",
            )


def detect_format(records: Iterable[RawRecord]) -> DataFormat | None:
    """Guess the format from records' keys (majority vote); None when no record is a recognisable object."""
    votes: Counter[DataFormat] = Counter()
    for record in records:
        if not isinstance(record.value, dict):
            continue
        keys = record.value.keys()
        if "messages" in keys:
            votes[DataFormat.openai_chat] += 1
        elif "conversations" in keys:
            votes[DataFormat.sharegpt] += 1
        elif "instruction" in keys or "output" in keys:
            votes[DataFormat.alpaca] += 1
        elif "text" in keys:
            votes[DataFormat.text] += 1
    return votes.most_common(1)[0][0] if votes else None


def parser_for(data_format: DataFormat) -> Callable[[RawRecord], tuple[Sample | None, list[Issue]]]:
    """The record parser of a concrete format."""
    parsers: dict[DataFormat, Callable[[RawRecord], tuple[Sample | None, list[Issue]]]] = {
        DataFormat.openai_chat: parse_openai_chat,
        DataFormat.sharegpt: parse_sharegpt,
        DataFormat.alpaca: parse_alpaca,
        DataFormat.text: parse_text,
    }
    if data_format not in parsers:
        raise ValueError(f"no parser for format {data_format!r}; detect the format first")
    return parsers[data_format]


def parse_openai_chat(record: RawRecord) -> tuple[Sample | None, list[Issue]]:
    """OpenAI chat record -> Conversation."""
    problems = _Problems(record.source)
    value = _record_object(record, problems, "messages", DataFormat.openai_chat)
    if value is None:
        return None, problems.items
    problems.unknown_keys(value, _OPENAI_RECORD_KEYS, "", "an openai-chat record")
    messages = _non_empty_list(value["messages"], "messages", problems)
    tools = _parse_tools(value.get("tools"), "tools", problems)
    parsed = [_parse_openai_message(item, f"messages[{index}]", problems) for index, item in enumerate(messages)]
    if problems.items:
        return None, problems.items
    return Conversation(tuple(m for m in parsed if m is not None), record.source, tools), []


def _parse_openai_message(item: Any, field: str, problems: _Problems) -> Message | None:
    if not isinstance(item, dict):
        problems.add(
            IssueKind.wrong_type, field, f"a message must be an object, got {_type_name(item)}",
            'write it as {"role": ..., "content": ...}',
        )
        return None
    problems.unknown_keys(item, _OPENAI_MESSAGE_KEYS, field, "a message")
    raw_role = item.get("role")
    if not isinstance(raw_role, str) or raw_role not in _OPENAI_ROLES:
        shown = "missing" if raw_role is None else repr(raw_role)
        problems.add(
            IssueKind.unknown_role, _join(field, "role"), f"role is {shown}",
            "use one of system, user, assistant, tool",
        )
        return None
    role = _OPENAI_ROLES[raw_role]
    content = _text(item.get("content"), _join(field, "content"), problems)
    if role in ("system", "user") and not (content or "").strip():
        problems.add(
            IssueKind.missing_content, _join(field, "content"), f"{raw_role} message has no content",
            "give it a non-empty content string, or remove the message",
        )
    if role == "tool" and content is None:
        problems.add(
            IssueKind.missing_content, _join(field, "content"), "tool message has no content",
            "put the tool's output (a string) into content",
        )
    reasoning = _reasoning(item, role, field, problems)
    tool_calls: tuple[ToolCall, ...] = ()
    if "tool_calls" in item and item["tool_calls"] is not None:
        if role != "assistant":
            problems.add(
                IssueKind.wrong_type, _join(field, "tool_calls"), f"a {raw_role} message cannot make tool calls",
                "move the calls to the assistant message that makes them",
            )
        else:
            calls = _list(item["tool_calls"], _join(field, "tool_calls"), problems)
            tool_calls = tuple(
                call
                for index, entry in enumerate(calls)
                if (call := _parse_openai_tool_call(entry, f"{field}.tool_calls[{index}]", problems)) is not None
            )
    tool_call_id = _optional_string(item, "tool_call_id", field, problems)
    if tool_call_id is not None and role != "tool":
        problems.add(
            IssueKind.wrong_type, _join(field, "tool_call_id"), f"a {raw_role} message has no tool_call_id",
            "only tool messages carry tool_call_id; remove it",
        )
    name = _optional_string(item, "name", field, problems)
    text = content or ""
    if role == "assistant" and reasoning is None:
        reasoning, text = split_inline_reasoning(text)
    return Message(role, text, reasoning, tool_calls, tool_call_id, name, origin=field)


def _reasoning(item: dict[str, Any], role: Role, field: str, problems: _Problems) -> str | None:
    given = [key for key in _REASONING_KEYS if item.get(key) is not None]
    if not given:
        return None
    if role != "assistant":
        problems.add(
            IssueKind.wrong_type, _join(field, given[0]), "only assistant messages carry reasoning",
            "move the reasoning to the assistant turn it belongs to, or remove it",
        )
        return None
    if len(given) > 1:
        problems.add(
            IssueKind.wrong_type, field, f"reasoning is given twice ({', '.join(given)})",
            "keep only reasoning_content",
        )
        return None
    value = item[given[0]]
    if not isinstance(value, str):
        problems.add(
            IssueKind.wrong_type, _join(field, given[0]), f"reasoning must be a string, got {_type_name(value)}",
            "write the reasoning as one string",
        )
        return None
    return value


def _parse_openai_tool_call(entry: Any, field: str, problems: _Problems) -> ToolCall | None:
    if not isinstance(entry, dict):
        problems.add(
            IssueKind.wrong_type, field, f"a tool call must be an object, got {_type_name(entry)}",
            'write it as {"type": "function", "function": {"name": ..., "arguments": {...}}}',
        )
        return None
    problems.unknown_keys(entry, _TOOL_CALL_KEYS, field, "a tool call")
    if entry.get("type", "function") != "function":
        problems.add(
            IssueKind.wrong_type, _join(field, "type"), f"tool call type is {entry.get('type')!r}",
            'only "function" calls are supported',
        )
    function = entry.get("function")
    if not isinstance(function, dict):
        problems.add(
            IssueKind.tool_call_without_name, _join(field, "function"), "tool call has no function object",
            'add "function": {"name": ..., "arguments": {...}}',
        )
        return None
    problems.unknown_keys(function, _FUNCTION_KEYS, _join(field, "function"), "a tool call's function")
    call_id = _optional_string(entry, "id", field, problems)
    return _tool_call(function.get("name"), function.get("arguments"), call_id, f"{field}.function", problems)


def _tool_call(
    name: Any, arguments: Any, call_id: str | None, field: str, problems: _Problems
) -> ToolCall | None:
    if not isinstance(name, str) or not name.strip():
        problems.add(
            IssueKind.tool_call_without_name, _join(field, "name"), "tool call has no function name",
            "set name to the function being called",
        )
        return None
    parsed = _arguments(arguments, _join(field, "arguments"), problems)
    if parsed is None:
        return None
    origin = field.removesuffix(".function")
    return ToolCall(name, parsed, call_id, origin=origin)


def _arguments(arguments: Any, field: str, problems: _Problems) -> dict[str, Any] | None:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            problems.add(
                IssueKind.invalid_tool_arguments, field,
                f"arguments are not valid JSON: {exc.msg} at column {exc.colno}",
                'write the arguments as a JSON object, e.g. "{\\"city\\": \\"Paris\\"}"',
            )
            return None
    if not isinstance(arguments, dict):
        problems.add(
            IssueKind.invalid_tool_arguments, field, f"arguments must be a JSON object, got {_type_name(arguments)}",
            "pass the arguments as an object of parameter names to values",
        )
        return None
    return arguments


def _parse_tools(value: Any, field: str, problems: _Problems) -> tuple[dict[str, Any], ...]:
    """Tool schemas in the OpenAI wrapper shape ({"type": "function", "function": {...}})."""
    if value is None:
        return ()
    if isinstance(value, str):
        # LLaMA-Factory stores the tool list as a JSON string.
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            problems.add(
                IssueKind.invalid_tools, field, f"tools is a string but not valid JSON: {exc.msg}",
                "give tools as a list of function schemas",
            )
            return ()
    if not isinstance(value, list):
        problems.add(
            IssueKind.invalid_tools, field, f"tools must be a list, got {_type_name(value)}",
            "give tools as a list of function schemas",
        )
        return ()
    tools: list[dict[str, Any]] = []
    for index, tool in enumerate(value):
        here = f"{field}[{index}]"
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.add(
                IssueKind.invalid_tools, here, "tool schema has no function name",
                'write it as {"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}',
            )
            continue
        tools.append({"type": "function", "function": function})
    return tuple(tools)


def parse_sharegpt(record: RawRecord) -> tuple[Sample | None, list[Issue]]:
    """ShareGPT record -> Conversation (function_call turns become assistant tool calls)."""
    problems = _Problems(record.source)
    value = _record_object(record, problems, "conversations", DataFormat.sharegpt)
    if value is None:
        return None, problems.items
    problems.unknown_keys(value, _SHAREGPT_RECORD_KEYS, "", "a sharegpt record")
    turns = _non_empty_list(value["conversations"], "conversations", problems)
    tools = _parse_tools(value.get("tools"), "tools", problems)
    messages: list[Message] = []
    system = value.get("system")
    if system is not None:
        if isinstance(system, str) and system.strip():
            messages.append(Message("system", system, origin="system"))
        elif not isinstance(system, str):
            problems.add(
                IssueKind.wrong_type, "system", f"system must be a string, got {_type_name(system)}",
                "give the system prompt as a string",
            )
    previous_kind = ""
    for index, turn in enumerate(turns):
        field = f"conversations[{index}]"
        if not isinstance(turn, dict):
            problems.add(
                IssueKind.wrong_type, field, f"a turn must be an object, got {_type_name(turn)}",
                'write it as {"from": "human", "value": "..."}',
            )
            continue
        problems.unknown_keys(turn, _SHAREGPT_TURN_KEYS, field, "a sharegpt turn")
        speaker = turn.get("from")
        kind = _SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if kind is None:
            shown = "missing" if speaker is None else repr(speaker)
            problems.add(
                IssueKind.unknown_role, _join(field, "from"), f"from is {shown}",
                "use one of human, gpt, system, function_call, observation",
            )
            continue
        text = turn.get("value")
        if not isinstance(text, str):
            problems.add(
                IssueKind.missing_content if text is None else IssueKind.wrong_type, _join(field, "value"),
                f"{speaker} turn has no string value" if text is None else f"value must be a string, got {_type_name(text)}",
                "put the turn's text into value",
            )
            continue
        if kind == "function_call":
            calls = _sharegpt_calls(text, _join(field, "value"), problems)
            if calls is None:
                continue
            last = messages[-1] if messages else None
            if previous_kind == "assistant" and last is not None and not last.tool_calls:
                # A gpt turn followed by its function call is one assistant turn: text, then the call.
                messages[-1] = Message("assistant", last.content, last.reasoning, calls, origin=last.origin)
            else:
                messages.append(Message("assistant", "", None, calls, origin=field))
        elif kind == "assistant":
            reasoning, content = split_inline_reasoning(text)
            messages.append(Message("assistant", content, reasoning, origin=field))
        elif kind == "tool":
            messages.append(Message("tool", text, origin=field))
        else:
            if not text.strip():
                problems.add(
                    IssueKind.missing_content, _join(field, "value"), f"{speaker} turn is empty",
                    "give it text, or remove the turn",
                )
            messages.append(Message("system" if kind == "system" else "user", text, origin=field))
        previous_kind = kind
    if problems.items:
        return None, problems.items
    return Conversation(tuple(messages), record.source, tools), []


def _sharegpt_calls(text: str, field: str, problems: _Problems) -> tuple[ToolCall, ...] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.add(
            IssueKind.invalid_tool_arguments, field, f"function_call value is not valid JSON: {exc.msg}",
            'write it as {"name": ..., "arguments": {...}}, or a list of such calls',
        )
        return None
    entries = value if isinstance(value, list) else [value]
    calls: list[ToolCall] = []
    for index, entry in enumerate(entries):
        here = f"{field}[{index}]" if isinstance(value, list) else field
        if not isinstance(entry, dict):
            problems.add(
                IssueKind.wrong_type, here, f"a function call must be an object, got {_type_name(entry)}",
                'write it as {"name": ..., "arguments": {...}}',
            )
            return None
        call = _tool_call(entry.get("name"), entry.get("arguments"), None, here, problems)
        if call is None:
            return None
        calls.append(call)
    return tuple(calls)


def parse_alpaca(record: RawRecord) -> tuple[Sample | None, list[Issue]]:
    """Alpaca record -> Conversation (system?, history pairs, instruction + input, output)."""
    problems = _Problems(record.source)
    value = _record_object(record, problems, "output", DataFormat.alpaca)
    if value is None:
        return None, problems.items
    problems.unknown_keys(value, _ALPACA_RECORD_KEYS, "", "an alpaca record")
    fields: dict[str, str] = {}
    for key in ("instruction", "input", "output", "system"):
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            problems.add(
                IssueKind.wrong_type, key, f"{key} must be a string, got {_type_name(item)}", f"give {key} as text"
            )
        fields[key] = item if isinstance(item, str) else ""
    prompt = "\n\n".join(part for part in (fields["instruction"], fields["input"]) if part.strip())
    if not prompt:
        problems.add(
            IssueKind.missing_content, "instruction", "instruction and input are both empty",
            "write the task into instruction",
        )
    if not fields["output"].strip():
        problems.add(
            IssueKind.missing_content, "output", "output is empty", "write the expected answer into output"
        )
    messages: list[Message] = []
    if fields["system"].strip():
        messages.append(Message("system", fields["system"], origin="system"))
    for index, pair in enumerate(_list(value.get("history", []), "history", problems)):
        here = f"history[{index}]"
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) and p.strip() for p in pair)):
            problems.add(
                IssueKind.wrong_type, here, "a history entry must be a pair of non-empty strings",
                'write it as ["user message", "assistant answer"]',
            )
            continue
        reasoning, answer = split_inline_reasoning(pair[1])
        messages.append(Message("user", pair[0], origin=f"{here}[0]"))
        messages.append(Message("assistant", answer, reasoning, origin=f"{here}[1]"))
    if problems.items:
        return None, problems.items
    reasoning, answer = split_inline_reasoning(fields["output"])
    messages.append(Message("user", prompt, origin="instruction"))
    messages.append(Message("assistant", answer, reasoning, origin="output"))
    return Conversation(tuple(messages), record.source), []


def parse_text(record: RawRecord) -> tuple[Sample | None, list[Issue]]:
    """`{"text": ...}` record (or a raw text file) -> TextSample."""
    problems = _Problems(record.source)
    value = _record_object(record, problems, "text", DataFormat.text)
    if value is None:
        return None, problems.items
    problems.unknown_keys(value, _TEXT_RECORD_KEYS, "", "a text record")
    text = value["text"]
    if not isinstance(text, str) or not text.strip():
        problems.add(
            IssueKind.missing_content, "text",
            "text is empty" if isinstance(text, str) else f"text must be a string, got {_type_name(text)}",
            "put the document into text, or remove the line",
        )
    if problems.items:
        return None, problems.items
    return TextSample(text, record.source), []


def split_inline_reasoning(content: str) -> tuple[str | None, str]:
    """Split `<think>reasoning</think>answer` the way GLM's chat template does; (None, content) without it."""
    if "</think>" not in content:
        return None, content
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


def _record_object(
    record: RawRecord, problems: _Problems, required_key: str, data_format: DataFormat
) -> dict[str, Any] | None:
    if record.error is not None:
        problems.add(IssueKind.bad_json, "", record.error, "fix the JSON syntax on this line")
        return None
    if not isinstance(record.value, dict):
        problems.add(
            IssueKind.not_an_object, "", f"record is {_type_name(record.value)}, not a JSON object",
            f"write one {data_format.value} object per line",
        )
        return None
    if required_key not in record.value:
        problems.add(
            IssueKind.wrong_format, "", f"record has no {required_key!r} key, so it is not {data_format.value}",
            f"add {required_key!r}, or set dataset.format to this record's format",
        )
        return None
    return record.value


def _non_empty_list(value: Any, field: str, problems: _Problems) -> list[Any]:
    items = _list(value, field, problems)
    if isinstance(value, list) and not value:
        problems.add(IssueKind.missing_content, field, f"{field} is empty", "add the conversation's messages")
    return items


def _list(value: Any, field: str, problems: _Problems) -> list[Any]:
    if isinstance(value, list):
        return value
    problems.add(IssueKind.wrong_type, field, f"{field} must be a list, got {_type_name(value)}", "give a JSON list")
    return []


def _text(value: Any, field: str, problems: _Problems) -> str | None:
    """Message content as a string: a string, None, or a list of text parts."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        parts: list[str] = []
        for index, part in enumerate(value):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                problems.add(
                    IssueKind.wrong_type, f"{field}[{index}]", "only text parts are supported in content",
                    'use {"type": "text", "text": ...} or a plain string',
                )
                return None
        return "".join(parts)
    problems.add(
        IssueKind.wrong_type, field, f"content must be a string or a list of text parts, got {_type_name(value)}",
        "write the content as a string",
    )
    return None


def _optional_string(item: dict[str, Any], key: str, field: str, problems: _Problems) -> str | None:
    value = item.get(key)
    if value is None or isinstance(value, str):
        return value
    problems.add(
        IssueKind.wrong_type, _join(field, key), f"{key} must be a string, got {_type_name(value)}",
        f"write {key} as a string",
    )
    return None


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key

"""The prompts file: what the teacher is asked, checked line by line before any request is made.

One JSON object per line:

    {"prompt": "What should I pack?"}
    {"messages": [{"role": "system", ...}, {"role": "user", ...}], "tools": [...], "tool_results": [...], "id": "q-17"}

A `prompt` is one user message; `messages` is a conversation to continue, ending with a user or a
tool message (assistant turns in it may carry `reasoning_content` and `tool_calls`, each answered
by tool messages). `tools` are OpenAI function schemas offered to the teacher. `tool_results` is
the fixture of canned results for toolExecution `fixtures`: `{"name": ..., "arguments"?: {...},
"content": ...}`; a call is answered by the first fixture of its name whose arguments (when given)
equal the call's. `system` is allowed with `prompt`. The checks here are the ones the trainer's
validator applies to the part of a sample that comes from the prompt, so what the teacher adds is
all that is left to check.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
)  # fmt: skip
"""GLM-4.7's structural strings; the trainer's validator reports text holding one (a test keeps the lists equal)."""

_RECORD_KEYS = frozenset({"prompt", "system", "messages", "tools", "tool_results", "id", "metadata"})
_MESSAGE_KEYS = frozenset({"role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name"})
_ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_PROBLEMS_SHOWN = 20


class PromptError(ValueError):
    """The prompts file cannot be used; the message lists FILE:LINE problems and the fix."""


@dataclass(frozen=True)
class ToolFixture:
    """A canned tool result: answers calls of `name` (with exactly `arguments`, when given)."""

    name: str
    arguments: dict[str, Any] | None
    content: str

    def answers(self, name: str, arguments: dict[str, Any]) -> bool:
        """Whether this fixture answers a call of `name` with `arguments`."""
        return self.name == name and (self.arguments is None or self.arguments == arguments)


@dataclass(frozen=True)
class Prompt:
    """One prompt: the conversation to continue, the tools offered, the canned tool results."""

    index: int
    """0-based position among the prompts (the journal's key)."""
    id: str
    """The record's `id`, else `line-N`."""
    line: int
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = ()
    fixtures: tuple[ToolFixture, ...] = ()

    def tool(self, name: str) -> dict[str, Any] | None:
        """The function schema of the offered tool `name`."""
        return next((t["function"] for t in self.tools if t["function"]["name"] == name), None)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_prompts(path: Path, system_prompt: str | None = None) -> list[Prompt]:
    """Every prompt of `path`; raises PromptError listing the problems (FILE:LINE: field: what, fix)."""
    if not path.is_file():
        raise PromptError(f"{path}: prompts file not found (check spec.prompts)")
    prompts: list[Prompt] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not valid JSON: {exc.msg} at column {exc.colno} (write one JSON object per line)")
                continue
            found: list[str] = []
            prompt = _parse_record(record, len(prompts), number, system_prompt, found)
            problems += [f"{where}: {p}" for p in found]
            if prompt is not None and not found:
                prompts.append(prompt)
    if not prompts and not problems:
        problems.append(f"{path.name}: the file holds no prompt (one JSON object per line)")
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise PromptError("\n".join(shown + ([f"... and {more} more"] if more else [])) + "\nfix the prompts file (spec.prompts)")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise PromptError(f"{path.name}: id {duplicate!r} is used by more than one prompt; give every prompt its own id")
    return prompts


def _parse_record(record: Any, index: int, line: int, system_prompt: str | None, problems: list[str]) -> Prompt | None:
    if not isinstance(record, dict):
        problems.append('a prompt must be a JSON object, e.g. {"prompt": "..."}')
        return None
    unknown = sorted(set(record) - _RECORD_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown}; allowed: {', '.join(sorted(_RECORD_KEYS))}")
    if ("prompt" in record) == ("messages" in record):
        problems.append('give exactly one of "prompt" (a user message) and "messages" (a conversation to continue)')
        return None
    messages: list[dict[str, Any]] = []
    if "prompt" in record:
        text = record["prompt"]
        if not isinstance(text, str) or not text.strip():
            problems.append("prompt: must be a non-empty string")
            return None
        system = record.get("system", system_prompt)
        if record.get("system") is not None and not isinstance(record["system"], str):
            problems.append("system: must be a string")
        elif isinstance(system, str) and system.strip():
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": text})
    else:
        if "system" in record:
            problems.append('system: give the system message inside "messages"')
        messages = _parse_messages(record["messages"], problems)
        if system_prompt and messages and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
    tools = _parse_tools(record.get("tools"), problems)
    fixtures = _parse_fixtures(record.get("tool_results"), problems)
    raw_id = record.get("id")
    if raw_id is not None and not isinstance(raw_id, (str, int)):
        problems.append("id: must be a string or a number")
    for text in _texts(messages) + [f.content for f in fixtures]:
        token = next((t for t in CONTROL_TOKENS if t in text), None)
        if token is not None:
            problems.append(f"holds the chat control token {token!r}, which the template would read as structure (remove it)")
            break
    names = {t["function"]["name"] for t in tools}
    for message in messages:
        for call in message.get("tool_calls") or []:
            if tools and call["function"]["name"] not in names:
                problems.append(f"a tool call in messages names {call['function']['name']!r}, which is not among tools")
    return Prompt(index, str(raw_id) if raw_id is not None else f"line-{line}", line, tuple(messages), tools, fixtures)


def _parse_messages(value: Any, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        problems.append("messages: must be a non-empty list")
        return []
    messages: list[dict[str, Any]] = []
    open_calls: list[str] = []  # ids of the last assistant turn's calls not yet answered
    renamed: dict[str, str] = {}  # the prompt's own call ids -> the ids written to the output
    for position, item in enumerate(value):
        here = f"messages[{position}]"
        if not isinstance(item, dict):
            problems.append(f"{here}: must be an object with role and content")
            continue
        unknown = sorted(set(item) - _MESSAGE_KEYS)
        if unknown:
            problems.append(f"{here}: unknown key(s) {unknown}; allowed: {', '.join(sorted(_MESSAGE_KEYS))}")
        role = item.get("role")
        if role not in _ROLES:
            problems.append(f"{here}.role: {role!r}; use system, user, assistant or tool")
            continue
        content = item.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            problems.append(f"{here}.content: must be a string")
            continue
        message: dict[str, Any] = {"role": role, "content": content}
        if role in ("system", "user") and not content.strip():
            problems.append(f"{here}.content: a {role} message needs text")
        if role == "system" and position != 0:
            problems.append(f"{here}: a system message must come first")
        if role != "tool" and open_calls:
            problems.append(f"{here}: tool call(s) {open_calls} of the assistant turn before get no result")
            open_calls = []
        if role == "assistant":
            if not messages or messages[-1]["role"] == "assistant" or not any(m["role"] == "user" for m in messages):
                problems.append(f"{here}: an assistant turn needs a user message before it, and no assistant turn right before it")
            reasoning = item.get("reasoning_content")
            if reasoning is not None:
                if not isinstance(reasoning, str):
                    problems.append(f"{here}.reasoning_content: must be a string")
                else:
                    message["reasoning_content"] = reasoning
            calls, renamed = _parse_calls(item.get("tool_calls"), here, position, problems)
            if calls:
                message["tool_calls"] = calls
                open_calls = [c["id"] for c in calls]
            if not content.strip() and not calls and not (reasoning or "").strip():
                problems.append(f"{here}: an assistant turn needs content, reasoning_content or tool_calls")
        elif role == "tool":
            given = item.get("tool_call_id")
            call_id = renamed.get(given) if given is not None else (open_calls[0] if open_calls else None)
            if not open_calls:
                problems.append(f"{here}: a tool message must answer a tool call of the assistant turn before it")
            elif call_id is None or call_id not in open_calls:
                problems.append(f"{here}.tool_call_id: {given!r} is not an unanswered call of the assistant turn before it")
            else:
                message["tool_call_id"] = call_id
                open_calls.remove(call_id)
            if isinstance(item.get("name"), str):
                message["name"] = item["name"]
        elif item.get("tool_calls") or item.get("tool_call_id") or item.get("reasoning_content"):
            problems.append(f"{here}: only assistant turns carry reasoning_content and tool_calls, only tool messages tool_call_id")
        messages.append(message)
    if messages and messages[-1]["role"] not in ("user", "tool"):
        problems.append("messages: the last message must be a user or tool message, for the teacher to answer")
    elif open_calls:
        problems.append(f"messages: tool call(s) {open_calls} get no result; add their tool messages")
    return messages


def _parse_calls(
    value: Any, here: str, position: int, problems: list[str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The calls with ids unique in the output (`prompt_<message>_<n>`), and the given ids -> those."""
    if value is None:
        return [], {}
    if not isinstance(value, list):
        problems.append(f"{here}.tool_calls: must be a list")
        return [], {}
    calls: list[dict[str, Any]] = []
    renamed: dict[str, str] = {}
    for number, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", {}) if isinstance(function, dict) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(name, str) or not name or not isinstance(arguments, dict):
            problems.append(f"{here}.tool_calls[{number}]: needs function.name and function.arguments (a JSON object)")
            continue
        # The teacher's calls get call_<turn>_<n>; the prompt's own ones must not collide with them.
        new_id = f"prompt_{position}_{number}"
        if isinstance(call.get("id"), str):
            renamed[call["id"]] = new_id
        calls.append(
            {"id": new_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        )
    return calls, renamed


def _parse_tools(value: Any, problems: list[str]) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append("tools: must be a list of function schemas")
        return ()
    tools: list[dict[str, Any]] = []
    for number, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.append(f'tools[{number}]: write it as {{"type": "function", "function": {{"name": ..., "parameters": {{...}}}}}}')
            continue
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            problems.append(f"tools[{number}].function.parameters: must be a JSON schema object")
            continue
        if any(t["function"]["name"] == function["name"] for t in tools):
            problems.append(f"tools[{number}]: tool {function['name']!r} is offered twice")
            continue
        tools.append({"type": "function", "function": dict(function)})
    return tuple(tools)


def _parse_fixtures(value: Any, problems: list[str]) -> tuple[ToolFixture, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append('tool_results: must be a list of {"name": ..., "arguments"?: {...}, "content": ...}')
        return ()
    fixtures = []
    for number, item in enumerate(value):
        here = f"tool_results[{number}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "content" not in item:
            problems.append(f'{here}: needs "name" and "content"')
            continue
        unknown = sorted(set(item) - {"name", "arguments", "content"})
        if unknown:
            problems.append(f"{here}: unknown key(s) {unknown}; allowed: arguments, content, name")
        arguments = item.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            problems.append(f"{here}.arguments: must be an object (or left out to answer every call of the tool)")
            continue
        content = item["content"]
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        fixtures.append(ToolFixture(item["name"], arguments, text))
    return tuple(fixtures)


def _texts(messages: list[dict[str, Any]]) -> list[str]:
    texts = []
    for message in messages:
        texts.append(message["content"])
        texts.append(message.get("reasoning_content") or "")
        for call in message.get("tool_calls") or []:
            texts += [call["function"]["name"], call["function"]["arguments"]]
    return texts


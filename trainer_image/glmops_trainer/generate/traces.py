"""One sample: the teacher continues a prompt, turn by turn, and the result is checked.

`generate_sample` asks the teacher for the next assistant turn; a turn that calls tools ends the
trace (toolExecution `stop`) or gets each call answered from the prompt's fixture and the teacher
goes on (`fixtures`), up to `max_turns` assistant turns. Every turn is checked as it arrives, so
a sample is dropped with the first reason that applies (`DropReason`). What is kept is one OpenAI
chat record: the prompt's messages, then the generated turns with `reasoning_content` and
`tool_calls` (ids `call_<turn>_<n>`, deterministic, so reruns and duplicates compare equal), and
the tool results.

Servers return reasoning in different fields: llama-server `reasoning_content`, vLLM `reasoning`;
both are read, and `<think>...</think>` left in the content is split off as GLM's template does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glmops.contract.config import Thinking
from glmops.contract.synthetic import DropReason, GeneratorConfig, ToolExecution
from glmops_trainer.generate.prompts import CONTROL_TOKENS, Prompt
from glmops_trainer.generate.teacher import Completion
from glmops_trainer.generate.toolschema import schema_errors

ChatCall = Callable[[dict[str, Any]], Completion]
"""Sends one request body to the teacher (with the retry policy) and returns its completion."""

_REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass
class Sample:
    """The outcome of one (prompt, sample) pair: a record to keep, or why it was dropped."""

    prompt_index: int
    sample_index: int
    record: dict[str, Any] | None = None
    drop: str | None = None
    """A DropReason value; None when kept."""
    detail: str = ""
    """Why it was dropped, in words (for the report)."""
    completion_tokens: int = 0
    length_tokens: int | None = None
    """Tokens of the whole sample as the teacher counted them (last request's prompt + completion)."""
    turns: int = 0

    def to_json(self) -> dict[str, Any]:
        """The journal line of this sample."""
        return {
            "p": self.prompt_index,
            "s": self.sample_index,
            "record": self.record,
            "drop": self.drop,
            "detail": self.detail[:500],
            "completionTokens": self.completion_tokens,
            "lengthTokens": self.length_tokens,
            "turns": self.turns,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Sample:
        """A journal line back."""
        return cls(
            prompt_index=int(raw["p"]),
            sample_index=int(raw["s"]),
            record=raw.get("record"),
            drop=raw.get("drop"),
            detail=str(raw.get("detail") or ""),
            completion_tokens=int(raw.get("completionTokens") or 0),
            length_tokens=raw.get("lengthTokens"),
            turns=int(raw.get("turns") or 0),
        )


@dataclass
class _Trace:
    messages: list[dict[str, Any]]
    completion_tokens: int = 0
    length_tokens: int | None = None
    turns: int = 0
    notes: list[str] = field(default_factory=list)


class Dropped(Exception):
    """The sample is dropped for `reason`."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def request_seed(base: int | None, prompt: Prompt, sample_index: int, turn: int) -> int | None:
    """The seed of one request: distinct per prompt, sample and turn, the same on every rerun."""
    if base is None:
        return None
    return (base + prompt.index * 1_000_003 + sample_index * 1_009 + turn) % (2**31)


def request_body(config: GeneratorConfig, model: str, prompt: Prompt, messages: list[dict[str, Any]], seed: int | None) -> dict[str, Any]:
    """The chat request for the next assistant turn."""
    preserve = config.thinking is Thinking.preserve
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": config.sampling.temperature,
        "top_p": config.sampling.top_p,
        "max_tokens": config.sampling.max_tokens,
        "stream": False,
        # GLM-4.7's template: think (or not), and keep the reasoning of earlier turns in the prompt
        # (Preserved Thinking), as the trained model will see it.
        "chat_template_kwargs": {"enable_thinking": preserve, "clear_thinking": not preserve},
    }
    if prompt.tools:
        body["tools"] = list(prompt.tools)
    if seed is not None:
        body["seed"] = seed
    return body


def split_inline_reasoning(content: str) -> tuple[str | None, str]:
    """`<think>reasoning</think>answer` -> (reasoning, answer), as GLM's template splits it; (None, content) without it."""
    if "</think>" not in content:
        return None, content
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


def read_turn(
    completion: Completion, prompt: Prompt, turn: int, config: GeneratorConfig
) -> dict[str, Any]:
    """The assistant message to keep from one completion; raises Dropped when it cannot be kept."""
    message = completion.message
    content = message.get("content")
    content = content if isinstance(content, str) else ""
    reasoning = next((message[k] for k in _REASONING_FIELDS if isinstance(message.get(k), str) and message[k]), None)
    if reasoning is None:
        reasoning, content = split_inline_reasoning(content)
    if completion.finish_reason == "length" and config.filters.drop_truncated:
        raise Dropped(DropReason.truncated, f"turn {turn + 1} reached sampling.maxTokens={config.sampling.max_tokens}")
    calls = _read_calls(message.get("tool_calls"), prompt, turn, config)
    kept_reasoning = (reasoning or "").strip() if config.thinking is Thinking.preserve else ""
    if not content.strip() and not calls and (not kept_reasoning or config.filters.drop_empty):
        raise Dropped(DropReason.empty, f"turn {turn + 1} has no content and no tool call")
    texts = [content, kept_reasoning] + [c["function"]["name"] + " " + c["function"]["arguments"] for c in calls]
    token = next((t for text in texts for t in CONTROL_TOKENS if t in text), None)
    if token is not None:
        raise Dropped(DropReason.control_token, f"turn {turn + 1} holds the chat control token {token!r}")
    turn_message: dict[str, Any] = {"role": "assistant", "content": content.strip() if not calls else content}
    if config.thinking is Thinking.preserve:
        turn_message["reasoning_content"] = reasoning.strip() if reasoning else ""
    if calls:
        turn_message["tool_calls"] = calls
    return turn_message


def _read_calls(raw: Any, prompt: Prompt, turn: int, config: GeneratorConfig) -> list[dict[str, Any]]:
    if not raw:
        return []
    if not isinstance(raw, list):
        raise Dropped(DropReason.unparsable_tool_call, f"turn {turn + 1}: tool_calls is not a list")
    calls = []
    for number, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise Dropped(DropReason.unparsable_tool_call, f"turn {turn + 1}: tool call {number} has no function name")
        arguments: Any = function.get("arguments") if isinstance(function, dict) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise Dropped(
                    DropReason.unparsable_tool_call, f"turn {turn + 1}: arguments of {name!r} are not JSON: {exc.msg}"
                ) from None
        elif arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise Dropped(DropReason.unparsable_tool_call, f"turn {turn + 1}: arguments of {name!r} are not a JSON object")
        if config.filters.validate_tool_calls:
            schema = prompt.tool(name)
            if schema is None:
                offered = ", ".join(t["function"]["name"] for t in prompt.tools) or "none"
                raise Dropped(DropReason.unknown_tool, f"turn {turn + 1}: calls {name!r}; the prompt offers {offered}")
            errors = schema_errors(arguments, schema.get("parameters", {}))
            if errors:
                raise Dropped(DropReason.invalid_tool_arguments, f"turn {turn + 1}: {name}: {'; '.join(errors[:3])}")
        calls.append(
            {
                "id": f"call_{turn}_{number}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
        )
    return calls


def _tool_results(turn_message: dict[str, Any], prompt: Prompt, turn: int) -> list[dict[str, Any]]:
    results = []
    for call in turn_message["tool_calls"]:
        name = call["function"]["name"]
        arguments = json.loads(call["function"]["arguments"])
        fixture = next((f for f in prompt.fixtures if f.answers(name, arguments)), None)
        if fixture is None:
            raise Dropped(
                DropReason.missing_tool_result,
                f"turn {turn + 1}: no tool_results fixture answers {name}({call['function']['arguments']})",
            )
        results.append({"role": "tool", "tool_call_id": call["id"], "name": name, "content": fixture.content})
    return results


def generate_sample(prompt: Prompt, sample_index: int, config: GeneratorConfig, model: str, chat: ChatCall) -> Sample:
    """Run one sample of `prompt` to its end (GiveUp, DeadlineExceeded and fatal errors pass through)."""
    trace = _Trace(messages=[dict(m) for m in prompt.messages])
    try:
        for turn in range(config.max_turns):
            seed = request_seed(config.sampling.seed, prompt, sample_index, turn)
            completion = chat(request_body(config, model, prompt, trace.messages, seed))
            trace.turns += 1
            trace.completion_tokens += completion.completion_tokens or 0
            if completion.prompt_tokens is not None and completion.completion_tokens is not None:
                trace.length_tokens = completion.prompt_tokens + completion.completion_tokens
            turn_message = read_turn(completion, prompt, turn, config)
            trace.messages.append(turn_message)
            calls_made = "tool_calls" in turn_message
            last_turn = turn == config.max_turns - 1
            if not calls_made or config.tool_execution is ToolExecution.stop or last_turn:
                break
            trace.messages.extend(_tool_results(turn_message, prompt, turn))
    except Dropped as dropped:
        return Sample(
            prompt.index, sample_index, drop=dropped.reason.value, detail=str(dropped),
            completion_tokens=trace.completion_tokens, length_tokens=trace.length_tokens, turns=trace.turns,
        )  # fmt: skip
    record: dict[str, Any] = {"messages": trace.messages}
    if prompt.tools:
        record["tools"] = list(prompt.tools)
    record["id"] = f"{prompt.id}-{sample_index}"
    record["metadata"] = {"prompt": prompt.id, "sample": sample_index, "model": model, "turns": trace.turns}
    return Sample(
        prompt.index, sample_index, record=record, completion_tokens=trace.completion_tokens,
        length_tokens=trace.length_tokens, turns=trace.turns,
    )  # fmt: skip

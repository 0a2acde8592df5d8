"""The internal, typed shape of one training sample, whatever file format it came from.

A `Conversation` holds messages in the OpenAI shape that GLM-4.7's chat template consumes
(`Message.to_template()`); a `TextSample` is plain text for language-model training. Both remember
where they came from (`SourceRef`), so every later problem can name FILE:LINE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class SourceRef:
    """Where a sample starts: file name and 1-based line."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class ToolCall:
    """One function call made by an assistant turn; `arguments` is already a JSON object."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None
    origin: str = ""
    """Field path of this call in the source record, for problem reports."""

    def to_template(self) -> dict[str, Any]:
        """OpenAI `tool_calls` entry (the template reads `function.name` and `function.arguments.items()`)."""
        entry: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            entry["id"] = self.id
        return entry


@dataclass(frozen=True)
class Message:
    """One chat message; `reasoning` is the assistant's thinking (OpenAI `reasoning_content`)."""

    role: Role
    content: str = ""
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    origin: str = ""
    """Field path of this message in the source record (e.g. `messages[3]`), for problem reports."""

    def to_template(self) -> dict[str, Any]:
        """The message as the chat template expects it (OpenAI chat shape)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant":
            # Always a string: the template then never re-parses <think> out of `content`.
            message["reasoning_content"] = self.reasoning or ""
            if self.tool_calls:
                message["tool_calls"] = [call.to_template() for call in self.tool_calls]
        if self.role == "tool":
            if self.tool_call_id is not None:
                message["tool_call_id"] = self.tool_call_id
            if self.name is not None:
                message["name"] = self.name
        return message


@dataclass(frozen=True)
class Conversation:
    """A chat sample: messages plus the optional tool schemas offered to the model."""

    messages: tuple[Message, ...]
    source: SourceRef
    tools: tuple[dict[str, Any], ...] = field(default=())

    def template_messages(self) -> list[dict[str, Any]]:
        """All messages in the template's shape."""
        return [message.to_template() for message in self.messages]

    def template_tools(self) -> list[dict[str, Any]] | None:
        """Tool schemas for the template, or None when the sample offers none."""
        return [dict(tool) for tool in self.tools] or None


@dataclass(frozen=True)
class TextSample:
    """Plain text trained on in full (no chat template)."""

    text: str
    source: SourceRef


Sample = Conversation | TextSample

"""Rendering samples with the tokenizer's own chat template, and labelling what the model learns.

The training text is exactly `tokenizer.apply_chat_template(messages, tools=..., clear_thinking=...)`
of the model's template: `thinking: preserve` passes clear_thinking=False (every assistant turn keeps
its `<think>` reasoning: Preserved Thinking), `strip` passes clear_thinking=True (GLM-4.7's template
then drops the reasoning of assistant turns before the last user message).

Labels cover each assistant turn (reasoning, content, tool calls) and the stop token that ends it
(`<|user|>` before a user turn, `<|observation|>` before tool results), and nothing else.

The template has no `{% generation %}` markers, so spans come from rendering prefixes of the
conversation and diffing: the turn of assistant message i is render(messages[:i+1]) minus
render(messages[:i]), less the header that the generation prompt supplies at inference
(`<|assistant|>`, plus `<think>` when the turn has reasoning; a turn without reasoning therefore
learns to emit `</think>` at once). That needs prefix renders to be prefixes of the full render.
With clear_thinking=False they are. With clear_thinking=True they are not (a later user message
removes earlier reasoning), so the spans come from an equivalent input: the same messages with the
reasoning of turns before the last user message emptied, rendered with clear_thinking=False; the
code checks that this reproduces the official strip rendering exactly. A turn whose reasoning
`strip` removed takes the non-thinking prompt (`<|assistant|></think>`) as its header: it learns its
content, calls and stop, but is not taught to skip reasoning that it did in fact produce.

The template emits nothing after the final assistant turn. GLM-4.7 ends a turn by producing the
next role token (llama.cpp sets its end-of-turn token to `<|user|>` for that reason), so the final
turn gets `<|user|>` appended and labelled, or `<|observation|>` when it ends with tool calls.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Protocol

from glmops_trainer.config import Thinking
from glmops_trainer.data.conversation import Conversation, SourceRef, TextSample

IGNORE_INDEX = -100
"""Label of tokens that are not trained on (transformers' cross-entropy ignore index)."""

END_OF_TURN = "<|user|>"
END_OF_TURN_BEFORE_TOOLS = "<|observation|>"
STOP_TOKENS: tuple[str, ...] = ("<|user|>", "<|observation|>", "<|endoftext|>")
"""Tokens that may end an assistant turn; the one after each turn is labelled."""
TEXT_PREFIX: tuple[str, ...] = ("[gMASK]", "<sop>")
"""What GLM puts before every sequence (the chat template starts with it too)."""


class ChatTokenizer(Protocol):
    """The part of a transformers tokenizer that rendering uses."""

    eos_token_id: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any: ...

    def get_vocab(self) -> dict[str, int]: ...


class RenderError(ValueError):
    """A sample or template cannot be rendered into labelled tokens; the message says why."""


@dataclass(frozen=True)
class RenderedSample:
    """Token ids of one sample and their labels (IGNORE_INDEX where nothing is learned)."""

    input_ids: list[int]
    labels: list[int]
    source: SourceRef | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class LabelSpan:
    """Characters [start, end) of the rendered text that are learned; `stop` is the token that must follow."""

    start: int
    end: int
    stop: str | None


class ChatRenderer:
    """Renders samples for one tokenizer and thinking mode (special token ids resolved once)."""

    def __init__(self, tokenizer: ChatTokenizer, thinking: Thinking) -> None:
        self.tokenizer = tokenizer
        self.thinking = thinking
        vocab = tokenizer.get_vocab()
        missing = [token for token in (*STOP_TOKENS, *TEXT_PREFIX) if token not in vocab]
        if missing:
            raise RenderError(f"the tokenizer lacks {', '.join(missing)}; it is not a GLM-4.7 tokenizer")
        self.stop_ids = {vocab[token] for token in STOP_TOKENS}
        self.end_of_turn_ids = {token: vocab[token] for token in (END_OF_TURN, END_OF_TURN_BEFORE_TOOLS)}
        self.text_prefix_ids = [vocab[token] for token in TEXT_PREFIX]

    def chat_text(self, conversation: Conversation) -> str:
        """The exact text the official template renders for this conversation in this thinking mode."""
        return _apply(
            self.tokenizer, conversation.template_messages(), conversation.template_tools(),
            clear_thinking=self.thinking is Thinking.strip,
        )

    def label_spans(self, conversation: Conversation) -> tuple[str, list[LabelSpan]]:
        """The rendered text and, for every assistant turn, the character span to learn plus its stop token."""
        messages = conversation.template_messages()
        tools = conversation.template_tools()
        text = self.chat_text(conversation)
        if self.thinking is Thinking.strip:
            messages = _without_reasoning_before_last_user(messages)
            if _apply(self.tokenizer, messages, tools, clear_thinking=False) != text:
                raise RenderError(
                    "the chat template's clear_thinking=True output is not its clear_thinking=False output with "
                    "earlier reasoning removed, so assistant turns cannot be located (use thinking: preserve)"
                )
        stripped = {
            index for index, (original, shown) in enumerate(zip(conversation.template_messages(), messages))
            if original.get("reasoning_content") and not shown.get("reasoning_content")
        }
        renders: dict[tuple[int, bool, bool], str] = {}

        def prefix(length: int, generation_prompt: bool = False, thinking_prompt: bool = True) -> str:
            key = (length, generation_prompt, thinking_prompt)
            if key not in renders:
                renders[key] = _apply(
                    self.tokenizer, messages[:length], tools, clear_thinking=False,
                    add_generation_prompt=generation_prompt,
                    enable_thinking=None if thinking_prompt else False,
                )
            return renders[key]

        spans: list[LabelSpan] = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if index == 0:
                raise RenderError("the conversation starts with an assistant turn; nothing prompts it")
            # The header is what the inference-time generation prompt supplies (see the module docstring).
            prompt = prefix(index, True, thinking_prompt=index not in stripped)
            before, through = prefix(index), prefix(index + 1)
            if not (text.startswith(through) and through.startswith(before) and prompt.startswith(before)):
                raise RenderError(
                    "the chat template does not render a conversation's beginning as a prefix of the whole, "
                    "so assistant turns cannot be located"
                )
            header = _common_prefix_length(through[len(before):], prompt[len(before):])
            if index + 1 < len(messages):
                stop = None  # the next message's first token; checked after tokenizing
            else:
                stop = END_OF_TURN_BEFORE_TOOLS if message.get("tool_calls") else END_OF_TURN
            spans.append(LabelSpan(len(before) + header, len(through), stop))
        return text, spans

    def render(self, conversation: Conversation) -> RenderedSample:
        """Token ids of the official rendering plus labels on exactly the assistant turns and their stop tokens."""
        text, spans = self.label_spans(conversation)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids: list[int] = list(encoding["input_ids"])
        starts = [int(start) for start, _ in encoding["offset_mapping"]]
        ends = [int(end) for _, end in encoding["offset_mapping"]]
        labels = [IGNORE_INDEX] * len(input_ids)
        appended: list[int] = []
        for span in spans:
            # Tokens overlapping the span; offsets are monotone, and a token split across the span's
            # edge (only possible inside a <think>/</think> header token) counts as inside.
            first = bisect.bisect_right(ends, span.start)
            last = bisect.bisect_left(starts, span.end) - 1
            labels[first:last + 1] = input_ids[first:last + 1]
            following = last + 1
            if following < len(input_ids):
                if input_ids[following] not in self.stop_ids:
                    shown = text[starts[following]:ends[following]]
                    raise RenderError(
                        f"the token after an assistant turn is {shown!r}, not one of {', '.join(STOP_TOKENS)}"
                    )
                labels[following] = input_ids[following]
            elif span.stop is not None:
                appended.append(self.end_of_turn_ids[span.stop])
        return RenderedSample(input_ids + appended, labels + appended, conversation.source)

    def render_text(self, sample: TextSample, sequence_length: int) -> list[RenderedSample]:
        """`[gMASK]<sop>` + text + eos, in windows of at most `sequence_length` tokens (all text learned)."""
        eos = self.tokenizer.eos_token_id
        if not isinstance(eos, int):
            raise RenderError("the tokenizer has no eos token; set eos_token in its tokenizer_config.json")
        body: list[int] = list(self.tokenizer(sample.text, add_special_tokens=False)["input_ids"]) + [eos]
        prefix = self.text_prefix_ids
        room = sequence_length - len(prefix)
        if room < 2:
            raise RenderError(f"sequence length {sequence_length} leaves no room for text after {TEXT_PREFIX}")
        return [
            RenderedSample(prefix + body[start:start + room], [IGNORE_INDEX] * len(prefix) + body[start:start + room],
                           sample.source)
            for start in range(0, len(body), room)
        ]


def render_conversation(tokenizer: ChatTokenizer, conversation: Conversation, thinking: Thinking) -> RenderedSample:
    """Render one conversation (see `ChatRenderer.render`); build a ChatRenderer to render many."""
    return ChatRenderer(tokenizer, thinking).render(conversation)


def _apply(
    tokenizer: ChatTokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    *,
    clear_thinking: bool,
    add_generation_prompt: bool = False,
    enable_thinking: bool | None = None,
) -> str:
    # Only what the caller sets reaches the template, so the training text is the plain official render.
    options: dict[str, Any] = {"clear_thinking": clear_thinking}
    if enable_thinking is not None:
        options["enable_thinking"] = enable_thinking
    rendered = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **options
    )
    if not isinstance(rendered, str):
        raise RenderError(f"apply_chat_template returned {type(rendered).__name__}, expected text")
    return rendered


def _without_reasoning_before_last_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_user = max((i for i, message in enumerate(messages) if message["role"] == "user"), default=-1)
    return [
        {**message, "reasoning_content": ""} if message["role"] == "assistant" and index < last_user else message
        for index, message in enumerate(messages)
    ]


def _common_prefix_length(first: str, second: str) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length

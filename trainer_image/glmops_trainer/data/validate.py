"""Validation of a dataset file before any model is loaded.

`load_and_validate` reads the file, detects its format, parses every record and checks each
conversation's structure (the rules GLM-4.7's chat template and training rely on). Every problem
becomes an `Issue` naming FILE:LINE and the field; invalid samples are left out of the result and
counted in the `ValidationReport`. The length check needs the tokenizer and runs after rendering
(`glmops_trainer.data.render`), still before the model is loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glmops_trainer.config import DataFormat
from glmops_trainer.data.conversation import Conversation, Message, Sample, TextSample, ToolCall
from glmops_trainer.data.formats import detect_format, parser_for
from glmops_trainer.data.issues import DataValidationError, Issue, IssueKind, ValidationReport
from glmops_trainer.data.reader import Container, detect_container, read_records

DETECTION_WINDOW = 32
"""Records looked at by `format: auto`."""

CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
)
"""Strings that GLM-4.7's tokenizer and template treat as structure; inside message text they would
forge turns (e.g. a `<|user|>` in a tool result), so they are reported."""


_ProblemSink = Callable[[IssueKind, str, str, str], None]


@dataclass
class LoadedData:
    """Valid samples of a file, in file order, with the problems of the others."""

    samples: list[Sample]
    report: ValidationReport
    data_format: DataFormat
    container: Container


def load_and_validate(path: Path, data_format: DataFormat = DataFormat.auto) -> LoadedData:
    """Read, parse and check every record of `path`; raise DataValidationError only for whole-file problems."""
    if not path.is_file():
        raise DataValidationError(f"{path}: dataset file not found (check dataset.source)")
    container = detect_container(path)
    if container is Container.raw_text and data_format not in (DataFormat.auto, DataFormat.text):
        raise DataValidationError(
            f"{path.name}:1: the file is not JSON, so it cannot be {data_format.value} "
            "(write one JSON object per line, or set dataset.format: text for raw text)"
        )
    records = read_records(path, container)
    head = list(itertools.islice(records, DETECTION_WINDOW))
    if not head:
        raise DataValidationError(f"{path.name}: the file holds no sample (check dataset.source points at the data)")
    if data_format is DataFormat.auto:
        detected = DataFormat.text if container is Container.raw_text else detect_format(head)
        if detected is None:
            raise DataValidationError(
                f"{path.name}: cannot detect the dataset format from the first {len(head)} records "
                "(expected objects with 'messages', 'conversations', 'instruction'/'output' or 'text'; "
                "fix the records or set dataset.format)"
            )
        data_format = detected
    parse = parser_for(data_format)
    report = ValidationReport(path.name)
    samples: list[Sample] = []
    for record in itertools.chain(head, records):
        sample, issues = parse(record)
        if isinstance(sample, Conversation):
            issues = check_conversation(sample)
        elif isinstance(sample, TextSample):
            issues = _control_tokens_in(sample.text, "text", sample)
        if report.record(issues) and sample is not None:
            samples.append(sample)
    return LoadedData(samples, report, data_format, container)


def check_conversation(conversation: Conversation) -> list[Issue]:
    """Structural problems of one conversation: order of roles, tool call/result pairing, what to learn."""
    issues: list[Issue] = []

    def problem(kind: IssueKind, field: str, message: str, fix: str) -> None:
        issues.append(Issue(conversation.source, kind, message, fix, field))

    messages = conversation.messages
    seen_user = False
    first_use_of_id: dict[str, str] = {}
    open_calls: list[ToolCall] = []
    answered: list[bool] = []
    # A result that matches no call is reported once; the calls it left unanswered are not reported again.
    pairing_failed = False
    for index, message in enumerate(messages):
        here = message.origin or f"messages[{index}]"
        issues.extend(_control_tokens_of(message, conversation))
        if message.role != "tool" and open_calls and not all(answered) and not pairing_failed:
            missing = [call for call, done in zip(open_calls, answered, strict=True) if not done]
            for call in missing:
                problem(
                    IssueKind.tool_call_without_result, call.origin,
                    f"tool call {call.name!r} gets no result before {here}",
                    "add a tool message with its result right after the assistant turn that makes the call",
                )
        if message.role != "tool":
            open_calls, answered, pairing_failed = [], [], False
        if message.role == "system":
            if index != 0:
                problem(
                    IssueKind.system_not_first, here, f"system message at position {index}",
                    "move it to the start of the conversation, where GLM's template expects the system prompt",
                )
        elif message.role == "user":
            seen_user = True
        elif message.role == "assistant":
            if not seen_user:
                problem(
                    IssueKind.no_user_before_assistant, here, "assistant turn before any user message",
                    "start the conversation with a user message; only a system message may come before it",
                )
            if index > 0 and messages[index - 1].role == "assistant":
                problem(
                    IssueKind.consecutive_assistant_turns, here, "assistant turn directly after another assistant turn",
                    "merge the two into one assistant message, or put the user or tool message between them",
                )
            if not message.content.strip() and not (message.reasoning or "").strip() and not message.tool_calls:
                problem(
                    IssueKind.empty_assistant_turn, here, "assistant turn has no content, no reasoning and no tool call",
                    "give it the assistant's answer, or remove the turn",
                )
            for call in message.tool_calls:
                if call.id is None:
                    continue
                if call.id in first_use_of_id:
                    problem(
                        IssueKind.duplicate_tool_call_id, f"{call.origin}.id",
                        f"tool call id {call.id!r} is already used by {first_use_of_id[call.id]}",
                        "give every tool call in a conversation its own id",
                    )
                else:
                    first_use_of_id[call.id] = call.origin
            open_calls, answered = list(message.tool_calls), [False] * len(message.tool_calls)
        elif not _match_tool_result(message, here, open_calls, answered, problem):
            pairing_failed = True
    if not messages or messages[-1].role != "assistant":
        last = messages[-1].role if messages else "nothing"
        problem(
            IssueKind.no_final_assistant_turn, messages[-1].origin if messages else "",
            f"the conversation ends with a {last} message, so there is no assistant answer to learn after it",
            "end the conversation with the assistant's turn, or drop the trailing messages",
        )
    return issues


def _match_tool_result(
    message: Message,
    here: str,
    open_calls: list[ToolCall],
    answered: list[bool],
    problem: _ProblemSink,
) -> bool:
    """Pair a tool result with a call of the assistant turn before it (by id, else by position); False if none."""
    if not open_calls:
        problem(
            IssueKind.tool_result_without_call, here, "tool result does not follow an assistant turn with tool calls",
            "put it right after the assistant message that makes the call, or remove it",
        )
        return False
    if message.tool_call_id is not None:
        matches = [i for i, call in enumerate(open_calls) if call.id == message.tool_call_id]
        if not matches:
            known = ", ".join(repr(call.id) for call in open_calls if call.id is not None) or "none"
            problem(
                IssueKind.tool_result_without_call, f"{here}.tool_call_id",
                f"no tool call with id {message.tool_call_id!r} in the assistant turn before it, whose call ids are {known}",
                "use the id of the call this result answers",
            )
            return False
        position = matches[0]
        if answered[position]:
            problem(
                IssueKind.tool_result_without_call, f"{here}.tool_call_id",
                f"tool call {message.tool_call_id!r} already has a result",
                "remove the second result, or answer a different call",
            )
            return False
    else:
        unanswered = [i for i, done in enumerate(answered) if not done]
        if not unanswered:
            problem(
                IssueKind.tool_result_without_call, here,
                f"more tool results than the {len(open_calls)} call(s) of the assistant turn before it",
                "remove the extra result, or add the call it answers",
            )
            return False
        position = unanswered[0]
    answered[position] = True
    call = open_calls[position]
    if message.name is not None and message.name != call.name:
        problem(
            IssueKind.tool_name_mismatch, f"{here}.name",
            f"tool result is named {message.name!r} but answers a call to {call.name!r}",
            "use the called function's name, or fix tool_call_id",
        )
    return True


def _control_tokens_of(message: Message, conversation: Conversation) -> list[Issue]:
    texts = [(message.content, message.origin, "content")]
    if message.reasoning:
        texts.append((message.reasoning, message.origin, "reasoning"))
    for call in message.tool_calls:
        texts.append((call.name, call.origin, "function name"))
        texts.extend((f"{key} {value}", call.origin, "arguments") for key, value in call.arguments.items())
    for text, field, part in texts:
        issues = _control_tokens_in(text, field, conversation, part)
        if issues:
            return issues  # one report per message is enough to find and fix it
    return []


def _control_tokens_in(text: str, field: str, sample: Sample, part: str = "text") -> list[Issue]:
    found = next((token for token in CONTROL_TOKENS if token in text), None)
    if found is None:
        return []
    return [
        Issue(
            sample.source, IssueKind.control_token, f"{part} contains the chat control token {found!r}",
            "remove it or write it differently, e.g. with spaces; the template would read it as structure", field,
        )
    ]

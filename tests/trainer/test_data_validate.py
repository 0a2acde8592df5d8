"""Validation: every defect of a dataset is reported once, precisely, as FILE:LINE: FIELD: problem (fix)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from glmops_trainer.config import DataConfig
from glmops_trainer.data import DataValidationError, prepare_dataset
from glmops_trainer.data.issues import IssueKind
from glmops_trainer.data.validate import load_and_validate
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

DATA = Path(__file__).parent.parent / "data"
BAD_AGENTIC = DATA / "datasets" / "bad_agentic.jsonl"

# One line per defect of bad_agentic.jsonl (lines 1, 17 and 23 are good, 22 is blank).
EXPECTED_PROBLEMS = {
    2: "not valid JSON: Expecting ',' delimiter at column 91 (fix the JSON syntax on this line)",
    3: "record is a list, not a JSON object (write one openai-chat object per line)",
    4: "messages[1].role: role is 'bot' (use one of system, user, assistant, tool)",
    5: "messages[0].content: user message has no content (give it a non-empty content string, or remove the message)",
    6: "messages[1]: assistant turn has no content, no reasoning and no tool call "
       "(give it the assistant's answer, or remove the turn)",
    7: "messages[1]: tool result does not follow an assistant turn with tool calls "
       "(put it right after the assistant message that makes the call, or remove it)",
    8: "messages[1].tool_calls[0].function.arguments: arguments are not valid JSON: Expecting property name "
       'enclosed in double quotes at column 2 (write the arguments as a JSON object, e.g. "{\\"city\\": \\"Paris\\"}")',
    9: "messages[1].tool_calls[0].function.arguments: arguments must be a JSON object, got a list "
       "(pass the arguments as an object of parameter names to values)",
    10: "messages[1].tool_calls[0].function.name: tool call has no function name (set name to the function being called)",
    11: "messages[3]: the conversation ends with a user message, so there is no assistant answer to learn after it "
        "(end the conversation with the assistant's turn, or drop the trailing messages)",
    12: "messages[1]: assistant turn before any user message "
        "(start the conversation with a user message; only a system message may come before it)",
    13: "messages[1]: system message at position 1 "
        "(move it to the start of the conversation, where GLM's template expects the system prompt)",
    14: "messages[1].contents: unknown key in a message (did you mean 'content'? remove it; allowed keys: content, "
        "name, reasoning, reasoning_content, role, thinking, tool_call_id, tool_calls)",
    15: "messages[1].content: content must be a string or a list of text parts, got a number "
        "(write the content as a string)",
    16: "messages[1].tool_calls[1].id: tool call id 'call_1' is already used by messages[1].tool_calls[0] "
        "(give every tool call in a conversation its own id)",
    18: "messages[2].tool_call_id: no tool call with id 'call_9' in the assistant turn before it, whose call ids "
        "are 'call_1' (use the id of the call this result answers)",
    19: "messages[1].tool_calls[0]: tool call 'get_weather' gets no result before messages[2] "
        "(add a tool message with its result right after the assistant turn that makes the call)",
    20: "messages[2]: assistant turn directly after another assistant turn "
        "(merge the two into one assistant message, or put the user or tool message between them)",
    21: "messages[2]: content contains the chat control token '<|user|>' "
        "(remove it or write it differently, e.g. with spaces; the template would read it as structure)",
    24: "sample is N tokens, longer than training.sequenceLength=384 "
        "(shorten or split the conversation, or raise training.sequenceLength)",
    25: "messages[2].name: tool result is named 'get_forecast' but answers a call to 'get_weather' "
        "(use the called function's name, or fix tool_call_id)",
    26: 'tools[0]: tool schema has no function name (write it as {"type": "function", "function": '
        '{"name": ..., "description": ..., "parameters": {...}}})',
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_every_defect_gets_one_precise_message_with_its_line(tokenizer: PreTrainedTokenizerFast) -> None:
    prepared = prepare_dataset(
        BAD_AGENTIC, DataConfig(source="file:///data", max_error_fraction=1.0, validation_split=0.0),
        tokenizer, sequence_length=384, seed=0,
    )
    report = prepared.report
    problems = {issue.source.line: str(issue).removeprefix(f"bad_agentic.jsonl:{issue.source.line}: ")
                for issue in report.issues}
    too_long = re.match(r"sample is (\d+) tokens", problems[24])
    assert too_long is not None and int(too_long.group(1)) > 384
    problems[24] = problems[24].replace(too_long.group(1), "N", 1)
    assert len(report.issues) == len(problems), "a line got more than one problem"
    assert problems == EXPECTED_PROBLEMS
    assert len({issue.kind for issue in report.issues}) >= 12
    assert (report.valid, report.invalid) == (3, 22)
    assert prepared.stats.train_samples == 3


def test_the_summary_counts_problems_per_kind_and_the_error_lists_the_first_ones() -> None:
    report = load_and_validate(BAD_AGENTIC).report
    summary = report.summary()
    assert summary[IssueKind.invalid_tool_arguments.value] == 2
    assert summary[IssueKind.tool_result_without_call.value] == 2
    assert sum(summary.values()) == len(report.issues) == 21
    with pytest.raises(DataValidationError) as raised:
        report.raise_if_over(0.05)
    message = str(raised.value)
    assert message.startswith(
        "bad_agentic.jsonl: 84.0% of samples are invalid, more than dataset.maxErrorFraction=5.0%."
    )
    assert "bad_agentic.jsonl:2: not valid JSON" in message
    assert message.splitlines()[21] == "... and 1 more problem"  # the first 20 are listed
    assert message.endswith(
        "bad_agentic.jsonl: 21 of 25 samples invalid (84.0%); problems by kind: "
        + ", ".join(f"{kind}: {count}" for kind, count in summary.items())
    )
    assert report.format(limit=3).splitlines()[3] == "... and 18 more problems"
    report.raise_if_over(0.9)  # under the threshold: the invalid samples are just dropped


def test_training_stops_before_the_model_when_too_many_samples_are_invalid(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    with pytest.raises(DataValidationError, match=r"bad_dataset\.jsonl: 75\.0% of samples are invalid") as raised:
        prepare_dataset(DATA / "bad_dataset.jsonl", DataConfig(source="file:///d"), tokenizer, 512, seed=0)
    assert str(raised.value).splitlines()[1:4] == [
        "bad_dataset.jsonl:2: not valid JSON: Expecting ',' delimiter at column 48 (fix the JSON syntax on this line)",
        ("bad_dataset.jsonl:3: messages[1]: assistant turn has no content, no reasoning and no tool call "
        "(give it the assistant's answer, or remove the turn)"),
        ("bad_dataset.jsonl:4: messages[0]: the conversation ends with a user message, so there is no assistant "
        "answer to learn after it (end the conversation with the assistant's turn, or drop the trailing messages)"),
    ]


def test_invalid_samples_under_the_threshold_are_dropped(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    path = tmp_path / "mostly_good.jsonl"
    good = (DATA / "datasets" / "agentic_small.jsonl").read_text(encoding="utf-8")
    samples = sum(1 for line in good.splitlines() if line.strip())
    path.write_text(good + '{"messages": []}\n', encoding="utf-8")
    prepared = prepare_dataset(
        path, DataConfig(source="file:///d", max_error_fraction=0.05, validation_split=0.0), tokenizer, 1024, seed=0
    )
    assert (prepared.report.valid, prepared.report.invalid) == (samples, 1)
    assert [str(issue) for issue in prepared.report.issues] == [
        f"mostly_good.jsonl:{samples + 1}: messages: messages is empty (add the conversation's messages)"
    ]
    assert prepared.stats.train_samples == samples


def test_an_empty_file_has_nothing_to_train_on(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"empty\.jsonl: the file holds no sample \(check dataset.source"):
        load_and_validate(empty)

"""The checks a generated sample goes through: tool arguments against JSON schemas, duplicates, one turn."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from glmops.contract.synthetic import GeneratorConfig
from glmops_trainer.generate.dedup import (
    NearDuplicates,
    comparable_text,
    exact_key,
    shingles,
    signature,
    similarity,
)
from glmops_trainer.generate.prompts import Prompt
from glmops_trainer.generate.teacher import Completion
from glmops_trainer.generate.toolschema import schema_errors
from glmops_trainer.generate.traces import Dropped, read_turn, request_seed

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "units": {"enum": ["metric", "imperial"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "when": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"city": "Oslo", "days": 3, "units": "metric", "tags": ["a"], "when": None}, None),
        ({"city": "Oslo", "days": 3.0}, None),  # JSON has one number type: 3.0 is an integer
        ({}, "arguments.city: required but missing"),
        ({"city": 42}, "arguments.city: expected string, got integer"),
        ({"city": "O"}, "arguments.city: shorter than 2 characters"),
        ({"city": "Oslo", "days": True}, "arguments.days: expected integer, got boolean"),
        ({"city": "Oslo", "days": 30}, "arguments.days: 30 is above 14"),
        ({"city": "Oslo", "units": "kelvin"}, "arguments.units: 'kelvin' is not one of"),
        ({"city": "Oslo", "tags": ["a", 1]}, "arguments.tags[1]: expected string"),
        ({"city": "Oslo", "tags": ["a", "b", "c"]}, "arguments.tags: more than 2 items"),
        ({"city": "Oslo", "when": 5}, "arguments.when: matches none of the anyOf alternatives"),
        ({"city": "Oslo", "country": "NO"}, "arguments.country: not a parameter of the tool"),
    ],
)
def test_arguments_are_checked_against_the_tools_schema(arguments: dict[str, Any], problem: str | None) -> None:
    errors = schema_errors(arguments, SCHEMA)
    assert errors == [] if problem is None else any(problem in e for e in errors), errors


def test_what_the_checker_does_not_understand_never_drops_a_sample() -> None:
    assert schema_errors({"path": "x"}, {"type": "object", "properties": {"path": {"type": "string", "pattern": "^/"}}}) == []
    assert schema_errors({"anything": 1}, {"$ref": "#/definitions/x"}) == []
    assert schema_errors({"a": 1}, True) == []


# --- duplicates ---------------------------------------------------------------------------------


def _record(user: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": "shared boilerplate " * 50}, {"role": "user", "content": user},
                     {"role": "assistant", "content": answer, "reasoning_content": "thinking"}],
        **extra,
    }  # fmt: skip


def test_an_exact_duplicate_ignores_ids_and_metadata_but_not_the_tools() -> None:
    a = _record("q", "a", id="x-0", metadata={"sample": 0})
    assert exact_key(a) == exact_key(_record("q", "a", id="x-1", metadata={"sample": 1}))
    assert exact_key(a) != exact_key(_record("q", "a", tools=[{"type": "function", "function": {"name": "t"}}]))
    assert "shared boilerplate" not in comparable_text(a)  # the system prompt does not make samples alike


def _words(rng: random.Random, n: int) -> list[str]:
    return [f"w{rng.randrange(5000)}" for _ in range(n)]


def test_the_minhash_estimate_follows_the_exact_jaccard_similarity() -> None:
    rng = random.Random(3)
    for _ in range(40):
        base = _words(rng, 300)
        changed = list(base)
        for position in rng.sample(range(300), rng.randrange(0, 120)):
            changed[position] = f"x{rng.randrange(10**6)}"
        a, b = shingles(" ".join(base)), shingles(" ".join(changed))
        exact = len(a & b) / len(a | b)
        assert abs(similarity(signature(a), signature(b)) - exact) < 0.15, exact


def test_near_duplicates_are_found_among_many_without_comparing_all_pairs() -> None:
    rng = random.Random(7)
    originals = [" ".join(_words(rng, 200)) for _ in range(300)]
    index = NearDuplicates(threshold=0.8)
    assert not any(index.is_duplicate(text) for text in originals)  # unrelated texts are all kept
    for text in originals[:50]:
        words = text.split()
        words[rng.randrange(len(words))] = "changed"  # one word of 200: Jaccard ~0.95
        assert index.is_duplicate(" ".join(words))
    assert not index.is_duplicate("a short new text")
    assert index.is_duplicate("a short new text")  # short texts (fewer than 5 words) too


# --- one turn of the teacher ---------------------------------------------------------------------

PROMPT = Prompt(0, "p", 1, ({"role": "user", "content": "Weather?"},),
                tools=({"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}},))  # fmt: skip
CONFIG = GeneratorConfig.model_validate({"dataset": {"name": "d"}, "teacher": {"base_url": "http://t/v1"}, "prompts": "file:///p", "output": "file:///o.jsonl"})


def _turn(message: dict[str, Any], finish: str = "stop", config: GeneratorConfig = CONFIG) -> dict[str, Any]:
    return read_turn(Completion({"role": "assistant", **message}, finish, 10, 5), PROMPT, 0, config)


def test_reasoning_is_read_from_either_field_or_split_from_the_content() -> None:
    assert _turn({"content": "A", "reasoning_content": "R"})["reasoning_content"] == "R"
    assert _turn({"content": "A", "reasoning": "R"})["reasoning_content"] == "R"  # vLLM 0.32
    inline = _turn({"content": "<think>R\n</think>\nA"})
    assert (inline["reasoning_content"], inline["content"]) == ("R", "A")
    assert _turn({"content": "A"})["reasoning_content"] == ""


def test_a_turn_is_dropped_for_the_first_reason_that_applies() -> None:
    def reason(message: dict[str, Any], finish: str = "stop") -> str:
        with pytest.raises(Dropped) as dropped:
            _turn(message, finish)
        return dropped.value.reason.value

    call = {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}
    assert reason({"content": "cut"}, "length") == "truncated"
    assert reason({"content": "", "reasoning_content": "only thoughts"}) == "empty"
    assert reason({"content": "Done.<|observation|>"}) == "control-token"
    assert reason({"content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]}) == "unparsable-tool-call"
    assert reason({"content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}) == "unparsable-tool-call"
    assert reason({"content": "", "tool_calls": [{**call, "function": {**call["function"], "name": "rm_rf"}}]}) == "unknown-tool"
    assert reason({"content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": "[1]"}}]}) == "unparsable-tool-call"
    assert reason({"content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": 1}'}}]}) == "invalid-tool-arguments"
    kept = _turn({"content": "", "tool_calls": [dict(call, id="server-random-id")]}, "tool_calls")
    assert kept["tool_calls"][0]["id"] == "call_0_0"  # deterministic ids: reruns and duplicates compare equal


def test_request_seeds_differ_per_prompt_sample_and_turn_and_repeat_on_a_rerun() -> None:
    prompts = [Prompt(i, str(i), i + 1, ()) for i in range(50)]
    seeds = {request_seed(7, p, s, t) for p in prompts for s in range(8) for t in range(4)}
    assert len(seeds) == 50 * 8 * 4
    assert request_seed(7, prompts[3], 2, 1) == request_seed(7, prompts[3], 2, 1)
    assert request_seed(None, prompts[3], 2, 1) is None

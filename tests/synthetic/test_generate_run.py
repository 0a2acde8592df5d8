"""The generator, run for real against an OpenAI-compatible teacher on loopback (no cluster).

The teacher is `fake_teacher.FakeTeacher` (scripted answers that follow the request), sometimes
behind a `FaultProxy` that answers 429/500 or never answers. What the generator writes is read
back with the trainer's own validator, which must find nothing to report.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_teacher import MODEL, WEATHER_TOOL, FakeTeacher, FaultProxy

from glmops.contract.synthetic import GeneratorConfig, GeneratorResult
from glmops_trainer.data.validate import load_and_validate
from glmops_trainer.generate.run import generate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    server = FakeTeacher()
    try:
        yield server
    finally:
        server.stop()


def write_prompts(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def config(tmp_path: Path, url: str, prompts: Path, **overrides: Any) -> GeneratorConfig:
    raw: dict[str, Any] = {
        "dataset": {"name": "synth", "namespace": "ml", "uid": "uid-1"},
        "teacher": {"base_url": url, "model": MODEL},
        "prompts": f"file://{prompts}",
        "output": f"file://{tmp_path}/out/synthetic.jsonl",
        "samples_per_prompt": 2,
        "sampling": {"seed": 11},
        "filters": {"deduplicate": "exact"},
        "max_concurrency": 4,
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return GeneratorConfig.model_validate(raw)


def output_records(cfg: GeneratorConfig) -> list[dict[str, Any]]:
    path = Path(cfg.output.removeprefix("file://"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_trainer_accepts(cfg: GeneratorConfig, expected: int) -> None:
    loaded = load_and_validate(Path(cfg.output.removeprefix("file://")))
    assert loaded.report.issues == [], loaded.report.format()
    assert loaded.report.valid == expected


WEATHER_PROMPT = {
    "prompt": "What is the weather in Berlin?",
    "tools": [WEATHER_TOOL],
    "tool_results": [{"name": "get_weather", "arguments": {"city": "Berlin"}, "content": {"sky": "rain", "celsius": 12}}],
}


def test_a_run_writes_chat_jsonl_that_the_trainer_accepts_with_no_issue(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [
        {"prompt": "What should I pack for a trip?", "id": "pack"},
        WEATHER_PROMPT,
        {  # a partial conversation: the teacher continues after the tool result
            "messages": [
                {"role": "user", "content": "Plan my day in Rome"},
                {"role": "assistant", "content": "", "reasoning_content": "Weather first.",
                 "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            ],
            "tools": [WEATHER_TOOL],
        },
    ])  # fmt: skip
    cfg = config(tmp_path, teacher.url, prompts, max_turns=3, tool_execution="fixtures", system_prompt="You are a helpful assistant.")
    result = generate(cfg)
    assert result.status == "Succeeded", result.message
    assert (result.prompts_done, result.prompts_total, result.samples_total, result.samples_kept) == (3, 3, 6, 6)
    assert result.dropped == {}

    records = output_records(cfg)
    assert [r["id"] for r in records] == ["pack-0", "pack-1", "line-2-0", "line-2-1", "line-3-0", "line-3-1"]
    assert_trainer_accepts(cfg, 6)
    weather = records[2]["messages"]
    assert [m["role"] for m in weather] == ["system", "user", "assistant", "tool", "assistant"]
    call = weather[2]["tool_calls"][0]
    assert call["id"] == "call_0_0" and json.loads(call["function"]["arguments"]) == {"city": "Berlin"}
    assert weather[3] == {"role": "tool", "tool_call_id": "call_0_0", "name": "get_weather", "content": '{"sky": "rain", "celsius": 12}'}
    # Preserved Thinking: every generated assistant turn keeps its reasoning.
    assert all(m.get("reasoning_content") for r in records for m in r["messages"][1:] if m["role"] == "assistant")
    assert records[4]["messages"][2]["tool_calls"][0]["id"] == "prompt_1_0"  # the prompt's own call (its messages[1]), renamed
    # Every request asked the teacher to think and keep earlier reasoning, with a seed of its own.
    requests = teacher.chat_requests()
    assert all(r.body["chat_template_kwargs"] == {"enable_thinking": True, "clear_thinking": False} for r in requests)
    seeds = [r.body["seed"] for r in requests]
    assert len(seeds) == len(set(seeds)) == 6 + 2  # the weather samples took two turns each

    output = Path(cfg.output.removeprefix("file://"))
    import hashlib

    assert result.sha256 == hashlib.sha256(output.read_bytes()).hexdigest() and result.size_bytes == output.stat().st_size
    report = json.loads((output.parent / "synthetic.report.json").read_text())
    assert report["kept"] == 6 and report["lengthTokens"]["count"] == 6
    assert (output.parent / "synthetic.lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.report_uri == f"file://{output.parent}/synthetic.report.json"


def test_every_filter_drops_with_its_reason(tmp_path: Path, teacher: FakeTeacher) -> None:
    def weather(marker: str) -> dict[str, Any]:
        return {"prompt": f"{marker} the weather in Paris", "tools": [WEATHER_TOOL]}

    prompts = write_prompts(tmp_path / "prompts.jsonl", [
        {"prompt": "A fine question"},
        {"prompt": "[truncate] everything"},
        {"prompt": "[empty] nothing"},
        {"prompt": "[control] tokens"},
        {"prompt": "[reject] far too long"},
        weather("[bad-json]"),
        weather("[wrong-type]"),
        weather("[unknown-tool]"),
        {"prompt": "What is the weather in Oslo?", "tools": [WEATHER_TOOL], "tool_results": [{"name": "get_weather", "arguments": {"city": "Paris"}, "content": "x"}]},
    ])  # fmt: skip
    cfg = config(tmp_path, teacher.url, prompts, samples_per_prompt=1, max_turns=2, tool_execution="fixtures")
    result = generate(cfg)
    assert result.status == "Succeeded", result.message
    assert result.dropped == {
        "truncated": 1, "empty": 1, "control-token": 1, "teacher-rejected": 1, "unparsable-tool-call": 1,
        "invalid-tool-arguments": 1, "unknown-tool": 1, "missing-tool-result": 1,
    }  # fmt: skip
    assert result.samples_kept == 1 and [r["id"] for r in output_records(cfg)] == ["line-1-0"]
    report = json.loads((tmp_path / "out" / "synthetic.report.json").read_text())
    assert "arguments.city: expected string, got integer" in report["dropExamples"]["invalid-tool-arguments"][0]
    assert "400" in report["dropExamples"]["teacher-rejected"][0]


def test_filters_that_are_switched_off_keep_what_the_trainer_still_accepts(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "[truncate] everything"}, {"prompt": "[wrong-type] the weather", "tools": [WEATHER_TOOL]}])
    cfg = config(tmp_path, teacher.url, prompts, samples_per_prompt=1, filters={"drop_truncated": False, "validate_tool_calls": False})
    result = generate(cfg)
    assert (result.samples_kept, result.dropped) == (2, {})
    assert_trainer_accepts(cfg, 2)


def test_duplicates_are_removed_in_prompt_order_whatever_finished_first(tmp_path: Path, teacher: FakeTeacher) -> None:
    # Without a seed the teacher's answer depends on the prompt only: samples of one prompt repeat.
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(4)])
    exact = config(tmp_path, teacher.url, prompts, samples_per_prompt=3, sampling={"seed": None}, max_concurrency=6)
    result = generate(exact)
    assert (result.samples_kept, result.dropped) == (4, {"duplicate": 8})
    assert [r["id"] for r in output_records(exact)] == ["line-1-0", "line-2-0", "line-3-0", "line-4-0"]

    # With seeds the answers differ by the seed alone: near duplicates (word 5-gram Jaccard ~0.95),
    # one kept per prompt; the prompts themselves share no words.
    long_prompts = write_prompts(
        tmp_path / "long.jsonl", [{"prompt": " ".join(f"topic{i} word{k}" for k in range(30))} for i in range(4)]
    )
    near = config(tmp_path / "near", teacher.url, long_prompts, samples_per_prompt=3, filters={"deduplicate": "near"})
    result = generate(near)
    assert (result.samples_kept, result.dropped) == (4, {"near-duplicate": 8})
    none = config(tmp_path / "none", teacher.url, prompts, samples_per_prompt=3, sampling={"seed": None}, filters={"deduplicate": "none"})
    assert generate(none).samples_kept == 12


def test_vllm_reasoning_field_is_read_as_reasoning_content(tmp_path: Path) -> None:
    vllm_like = FakeTeacher(reasoning_field="reasoning")
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "Why is the sky blue?"}])
        cfg = config(tmp_path, vllm_like.url, prompts, samples_per_prompt=1)
        assert generate(cfg).status == "Succeeded"
    finally:
        vllm_like.stop()
    answer = output_records(cfg)[0]["messages"][-1]
    assert answer["reasoning_content"].startswith("The user asks: Why is the sky blue?") and "reasoning" not in answer


def test_thinking_strip_asks_not_to_think_and_keeps_no_reasoning(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "Quick one"}])
    cfg = config(tmp_path, teacher.url, prompts, samples_per_prompt=1, thinking="strip")
    assert generate(cfg).status == "Succeeded"
    assert "reasoning_content" not in output_records(cfg)[0]["messages"][-1]
    assert teacher.chat_requests()[0].body["chat_template_kwargs"]["enable_thinking"] is False


def test_the_model_is_the_one_the_endpoint_lists_and_several_need_a_name(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "Hello"}])
    single = FakeTeacher()
    several = FakeTeacher(models=("glm-4.7", "glm-4.7-flash"))
    try:
        cfg = config(tmp_path, single.url, prompts, samples_per_prompt=1, teacher={"model": None})
        assert generate(cfg).status == "Succeeded"
        assert single.chat_requests()[0].body["model"] == MODEL
        refused = generate(config(tmp_path / "b", several.url, prompts, teacher={"model": None}))
        assert refused.reason == "ConfigError" and "lists 2 models (glm-4.7, glm-4.7-flash)" in refused.message
        assert "spec.teacher.model" in refused.message
    finally:
        single.stop()
        several.stop()


def test_a_refused_key_or_a_wrong_model_fails_at_once_and_the_key_is_never_shown(tmp_path: Path) -> None:
    guarded = FakeTeacher(api_key="sk-secret-123")
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": f"Q{i}"} for i in range(20)])
        no_key = generate(config(tmp_path, guarded.url, prompts), environ={})
        assert no_key.reason == "TeacherUnauthorized" and "spec.teacher.apiKeySecret" in no_key.message
        assert len(guarded.chat_requests()) <= 4  # the workers in flight, not 40 tries
        wrong_model = generate(config(tmp_path / "b", guarded.url, prompts, teacher={"model": "glm-5"}), environ={"GLMOPS_TEACHER_API_KEY": "sk-secret-123"})
        assert wrong_model.reason == "TeacherEndpointNotFound" and "model 'glm-5' not found" in wrong_model.message
        ok = generate(config(tmp_path / "c", guarded.url, prompts, samples_per_prompt=1), environ={"GLMOPS_TEACHER_API_KEY": "sk-secret-123"})
        assert ok.status == "Succeeded" and ok.samples_kept == 20
    finally:
        guarded.stop()
    for result in (no_key, wrong_model, ok):
        assert "sk-secret-123" not in json.dumps(result.to_json())


def test_429_and_500_slow_the_run_down_and_it_completes_honouring_retry_after(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(6)])
    throttled = FaultProxy(teacher.url, fail_first=8, fail_status=429, retry_after_s=2)
    try:
        cfg = config(tmp_path, throttled.url, prompts, max_concurrency=4)
        result = generate(cfg)
    finally:
        throttled.stop()
    assert result.status == "Succeeded" and result.samples_kept == 12, result.message
    assert_trainer_accepts(cfg, 12)
    # Every retry of a throttled request came at least Retry-After (2 s) after its 429.
    by_seed: dict[int, list[Any]] = {}
    for seen in throttled.chat_requests():
        by_seed.setdefault(seen.body["seed"], []).append(seen)
    throttled_seeds = [s for s, tries in by_seed.items() if tries[0].status == 429]
    assert len(throttled_seeds) >= 4
    for seed in throttled_seeds:
        tries = by_seed[seed]
        for failed, retry in itertools.pairwise(tries):
            assert retry.at - failed.at >= 2.0, (seed, [(t.status, t.at) for t in tries])
        assert tries[-1].status == 200

    broken = FaultProxy(teacher.url, fail_first=10, fail_status=500)
    try:
        cfg = config(tmp_path / "b", broken.url, prompts, max_concurrency=4, max_attempts=2)
        result = generate(cfg)
    finally:
        broken.stop()
    # 10 failures over 4 requests in flight: every request failed at least twice before any
    # succeeded, so none was given up (the teacher had answered nothing yet: an outage).
    assert result.status == "Succeeded" and result.samples_kept == 12 and result.dropped == {}, result.to_json()


def test_a_request_that_keeps_failing_while_others_succeed_is_given_up(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(4)] + [{"prompt": "poison pill"}])
    flaky = FaultProxy(teacher.url, fail_matching="poison", fail_status=500)
    try:
        result = generate(config(tmp_path, flaky.url, prompts, samples_per_prompt=1, max_attempts=3, max_concurrency=2))
    finally:
        flaky.stop()
    assert result.status == "Succeeded" and (result.samples_kept, result.dropped) == (4, {"teacher-error": 1})


def test_a_teacher_that_never_answers_fails_at_the_deadline_with_the_reason(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(3)])
    silent = FaultProxy(teacher.url, hang=True)
    started = time.monotonic()
    try:
        result = generate(config(tmp_path, silent.url, prompts, deadline_unix=time.time() + 5))
    finally:
        silent.stop()
    elapsed = time.monotonic() - started
    assert result.status == "Failed" and result.reason == "DeadlineExceeded"
    assert "spec.deadlineSeconds passed with 0 of 3 prompts done" in result.message
    assert f"POST {silent.url}/chat/completions did not answer within" in result.message
    assert 4.5 <= elapsed < 120  # stopped at the deadline, not at the 600 s request timeout


def test_changed_prompts_are_refused_rather_than_mixed_into_the_journal(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "One"}])
    assert generate(config(tmp_path, teacher.url, prompts)).status == "Succeeded"
    write_prompts(prompts, [{"prompt": "One"}, {"prompt": "Two"}])
    changed = generate(config(tmp_path, teacher.url, prompts))
    assert changed.reason == "PromptsChanged" and "prompts" in changed.message


def test_invalid_prompts_fail_before_any_request_naming_file_and_line(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"promt": "typo"}\nnot json\n')
    result = generate(config(tmp_path, teacher.url, prompts))
    assert result.reason == "PromptsInvalid"
    assert "prompts.jsonl:2: unknown key(s) ['promt']" in result.message and "prompts.jsonl:3: not valid JSON" in result.message
    assert teacher.chat_requests() == []


def test_a_run_that_keeps_nothing_fails(tmp_path: Path, teacher: FakeTeacher) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "[truncate] a"}, {"prompt": "[empty] b"}])
    result = generate(config(tmp_path, teacher.url, prompts, samples_per_prompt=1))
    assert result.reason == "NoSampleKept" and "truncated: 1" in result.message and "empty: 1" in result.message
    assert not (tmp_path / "out" / "synthetic.jsonl").exists()  # nothing that looks complete


def _cli(config_path: Path, result_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")])}
    return subprocess.Popen(
        [sys.executable, "-m", "glmops_trainer", "generate", "--config", str(config_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def test_a_killed_generator_continues_from_its_journal_with_no_duplicate_and_no_loss(tmp_path: Path) -> None:
    slow = FakeTeacher(delay_s=0.3)
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": f"Question number {i}"} for i in range(10)])
    cfg = config(tmp_path, slow.url, prompts, samples_per_prompt=3, max_concurrency=3)
    raw = cfg.model_dump(mode="json")
    raw["runtime"]["result_file"] = str(tmp_path / "termination-log")
    config_path = tmp_path / "generate.json"
    config_path.write_text(json.dumps(raw))
    journal = tmp_path / "out" / "synthetic.jsonl.work" / "journal.jsonl"
    try:
        first = _cli(config_path, tmp_path / "termination-log")
        deadline = time.monotonic() + 120
        while not (journal.is_file() and journal.read_text().count("\n") >= 1 + 9):
            assert first.poll() is None, first.communicate()[0].decode()
            assert time.monotonic() < deadline, "the journal never grew"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # as an OOM kill or a lost node would
        first.wait()
        done_before = {(e["p"], e["s"]) for e in map(json.loads, journal.read_text().splitlines()[1:])}
        requests_before = len(slow.chat_requests())
        assert 9 <= len(done_before) < 30

        second = _cli(config_path, tmp_path / "termination-log")
        log = second.communicate(timeout=300)[0].decode()
    finally:
        slow.stop()
    assert second.returncode == 0, log
    assert f"the journal holds {len(done_before)} of 30 samples, continuing" in log
    result = GeneratorResult.from_json(json.loads((tmp_path / "termination-log").read_text()))
    assert result.status == "Succeeded" and result.samples_kept == 30 and result.dropped == {}
    ids = [r["id"] for r in output_records(cfg)]
    assert ids == [f"line-{p + 1}-{s}" for p in range(10) for s in range(3)]  # all of them, once each, in order
    assert_trainer_accepts(cfg, 30)
    # The second pod asked only for what the journal lacked (and the requests cut short by the kill).
    asked_again = [r.body["seed"] for r in slow.chat_requests()[requests_before:]]
    done_seeds = {(11 + p * 1_000_003 + s * 1_009) % 2**31 for p, s in done_before}
    assert not done_seeds & set(asked_again)
    assert len(asked_again) == 30 - len(done_before)
    entries = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert Counter((e["p"], e["s"]) for e in entries).most_common(1)[0][1] == 1


def test_the_cli_exits_2_for_a_failure_no_new_pod_can_change(tmp_path: Path) -> None:
    raw = {
        "dataset": {"name": "s"}, "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
        "prompts": f"file://{tmp_path}/missing.jsonl", "output": f"file://{tmp_path}/out.jsonl",
        "runtime": {"result_file": str(tmp_path / "result")},
    }  # fmt: skip
    (tmp_path / "generate.json").write_text(json.dumps(raw))
    process = _cli(tmp_path / "generate.json", tmp_path / "result")
    log = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 2, log
    result = json.loads((tmp_path / "result").read_text())
    assert result["reason"] == "PromptsInvalid" and "prompts file not found (check spec.prompts)" in result["message"]
    (tmp_path / "generate.json").write_text(json.dumps({**raw, "samples_per_prompt": 0}))
    process = _cli(tmp_path / "generate.json", tmp_path / "result")
    assert process.wait(timeout=120) == 2
    assert "samples_per_prompt" in json.loads((tmp_path / "result").read_text())["message"]

"""Progress lines: throttled on stdout, complete in progress.jsonl, and the final result within 4 KiB."""

from __future__ import annotations

import io
import json
from pathlib import Path

from transformers import TrainerControl, TrainerState, TrainingArguments

from glmops_trainer.progress import (
    PROGRESS_MARKER,
    RESULT_LIMIT_BYTES,
    ProgressCallback,
    ProgressEvent,
    ProgressReporter,
    Throttle,
    TrainResult,
    fit_result,
    format_progress_line,
    read_loss_history,
    write_result,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress_lines(text: str) -> list[dict[str, object]]:
    """The JSON objects of all progress lines in a log, parsed the way docs/trainer.md describes."""
    prefix = PROGRESS_MARKER + " "
    return [json.loads(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]


def test_line_is_marker_space_and_one_compact_json_object() -> None:
    event = ProgressEvent(
        step=420, total_steps=1800, epoch=0.4666666, loss=0.82, eval_loss=None, learning_rate=2e-4,
        tokens_per_second=5100.04, eta_seconds=2460.4, time_unix=1.5, kind="train",
    )  # fmt: skip

    line = format_progress_line(event)

    assert line.startswith("GLMOPS_PROGRESS {") and "\n" not in line
    assert json.loads(line.split(" ", 1)[1]) == {
        "v": 1, "step": 420, "totalSteps": 1800, "epoch": 0.4667, "loss": 0.82, "evalLoss": None,
        "learningRate": 0.0002, "tokensPerSecond": 5100.0, "etaSeconds": 2460, "time": 1.5, "kind": "train",
    }  # fmt: skip


def test_a_diverged_loss_is_null_not_invalid_json() -> None:
    line = format_progress_line(ProgressEvent(step=1, total_steps=2, loss=float("nan"), eta_seconds=float("inf")))

    payload = json.loads(line.split(" ", 1)[1])
    assert payload["loss"] is None and payload["etaSeconds"] is None


def test_throttle_lets_one_through_per_interval() -> None:
    clock = FakeClock()
    throttle = Throttle(5.0, clock)

    decisions = []
    for _ in range(12):
        decisions.append(throttle.ready())
        clock.now += 1.0

    assert decisions == [True, False, False, False, False, True, False, False, False, False, True, False]


def test_forced_event_goes_through_and_restarts_the_interval() -> None:
    clock = FakeClock()
    throttle = Throttle(5.0, clock)
    assert throttle.ready()
    clock.now += 1
    assert throttle.ready(force=True)
    clock.now += 4.5
    assert not throttle.ready()


def test_reporter_throttles_stdout_but_records_every_event(tmp_path: Path) -> None:
    clock = FakeClock()
    out = io.StringIO()
    reporter = ProgressReporter(2.0, tmp_path / "progress.jsonl", out, clock)

    for step in range(1, 11):  # one step every 0.5 s
        reporter.report(ProgressEvent(step=step, total_steps=10, loss=1.0 / step))
        clock.now += 0.5
    reporter.report(ProgressEvent(step=10, total_steps=10, loss=0.1, kind="final"))

    printed = [e["step"] for e in progress_lines(out.getvalue())]
    assert printed == [1, 5, 9, 10]
    history = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [e["step"] for e in history] == list(range(1, 11)) + [10]
    assert history[-1]["kind"] == "final"


def fake_state(step: int, max_steps: int, tokens: int) -> TrainerState:
    state = TrainerState(global_step=step, max_steps=max_steps, epoch=step / max_steps)
    state.num_input_tokens_seen = tokens
    return state


def test_callback_reports_rate_and_eta_from_this_runs_own_steps(tmp_path: Path) -> None:
    clock = FakeClock()
    out = io.StringIO()
    callback = ProgressCallback(ProgressReporter(0.001, tmp_path / "p.jsonl", out, clock), clock)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    control = TrainerControl()
    # Resumed at step 100 of 200 with 50_000 tokens already counted by the previous run.
    state = fake_state(100, 200, 50_000)
    state.log_history = [{"loss": 1.5, "learning_rate": 1e-4, "step": 100}, {"eval_loss": 1.7, "step": 100}]
    callback.on_train_begin(args, state, control)

    clock.now += 20.0
    state = fake_state(110, 200, 50_000 + 8_000)
    callback.on_log(args, state, control, logs={"loss": 1.25, "learning_rate": 9e-5, "epoch": 0.55})

    (event,) = progress_lines(out.getvalue())
    assert event["step"] == 110 and event["totalSteps"] == 200
    assert event["loss"] == 1.25 and event["evalLoss"] == 1.7 and event["learningRate"] == 9e-5
    assert event["tokensPerSecond"] == 400.0  # 8_000 tokens in 20 s, not 58_000
    assert event["etaSeconds"] == 180  # 90 steps left at 2 s per step
    assert event["kind"] == "train"


def test_callback_emits_eval_events_and_a_forced_final_one(tmp_path: Path) -> None:
    clock = FakeClock()
    out = io.StringIO()
    callback = ProgressCallback(ProgressReporter(3600.0, tmp_path / "p.jsonl", out, clock), clock)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    control = TrainerControl()
    callback.on_train_begin(args, fake_state(0, 4, 0), control)
    for step in (1, 2, 3, 4):
        clock.now += 1
        callback.on_log(args, fake_state(step, 4, step * 100), control, logs={"loss": 2.0 - step / 4})
    callback.on_log(args, fake_state(4, 4, 400), control, logs={"eval_loss": 1.9})
    callback.on_log(args, fake_state(4, 4, 400), control, logs={"train_runtime": 4.0, "train_loss": 1.4})
    callback.on_train_end(args, fake_state(4, 4, 400), control)

    printed = progress_lines(out.getvalue())
    assert [(e["step"], e["kind"]) for e in printed] == [(1, "train"), (4, "final")]
    assert printed[-1]["etaSeconds"] == 0 and printed[-1]["evalLoss"] == 1.9 and printed[-1]["loss"] == 1.0
    kinds = [json.loads(x)["kind"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert kinds == ["train", "train", "train", "train", "eval", "final"]


def test_callback_on_other_ranks_is_silent(tmp_path: Path) -> None:
    out = io.StringIO()
    callback = ProgressCallback(ProgressReporter(0.001, tmp_path / "p.jsonl", out))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state = fake_state(1, 2, 10)
    state.is_world_process_zero = False

    callback.on_train_begin(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0})
    callback.on_train_end(args, state, TrainerControl())

    assert out.getvalue() == "" and not (tmp_path / "p.jsonl").exists()


def test_loss_history_keeps_the_last_value_of_a_step_redone_after_resume(tmp_path: Path) -> None:
    history_file = tmp_path / "progress.jsonl"
    lines = [
        {"step": 1, "kind": "train", "loss": 3.0},
        {"step": 2, "kind": "train", "loss": 2.5},
        {"step": 2, "kind": "eval", "loss": 2.5, "evalLoss": 2.8},
        {"step": 3, "kind": "train", "loss": 2.2},  # lost with the kill, redone below
        {"step": 3, "kind": "train", "loss": 2.1},
        {"step": 3, "kind": "final", "loss": 2.1},
    ]
    history_file.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 4, "kind": "tr')

    history = read_loss_history(history_file)

    assert history.train == [(1, 3.0), (2, 2.5), (3, 2.1)]
    assert history.eval == [(2, 2.8)]


def test_result_fits_the_termination_message_limit() -> None:
    result = TrainResult(
        status="Failed",
        reason="TrainingError",
        message="Traceback...\n" + "x" * 10_000 + "\nRuntimeError: CUDA out of memory",
        artifacts={"gguf": [{"uri": f"s3://b/k/model-{i}.gguf", "sha256": "f" * 64} for i in range(40)]},
    )

    text = fit_result(result.to_json())

    assert len(text.encode()) <= RESULT_LIMIT_BYTES
    payload = json.loads(text)
    assert payload["message"].endswith("RuntimeError: CUDA out of memory")
    assert payload["artifacts"] == {"truncated": True}
    assert payload["status"] == "Failed" and payload["reason"] == "TrainingError"


def test_a_small_result_is_written_whole(tmp_path: Path) -> None:
    result = TrainResult(status="Succeeded", step=30, total_steps=30, train_loss=0.5,
                         output_uri="file:///out", artifacts={"adapter": "file:///out/adapter"})  # fmt: skip

    write_result(result, tmp_path / "termination-log", tmp_path / "out")

    assert json.loads((tmp_path / "termination-log").read_text()) == result.to_json()
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == result.to_json()


def test_an_unwritable_result_file_does_not_hide_the_result(tmp_path: Path) -> None:
    result = TrainResult(status="Succeeded")

    write_result(result, tmp_path / "no-such-dir" / "termination-log", tmp_path)

    assert json.loads((tmp_path / "result.json").read_text())["status"] == "Succeeded"

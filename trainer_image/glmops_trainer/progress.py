"""Progress events on stdout, their history in `progress.jsonl`, and the final result.

The operator follows the pod log and needs no other channel (the trainer pod has no Kubernetes
API access): every progress line is the marker `GLMOPS_PROGRESS`, one space, and a JSON object
on one line. Lines are throttled to one per `runtime.progress_interval_seconds` plus a final one;
`progress.jsonl` receives every event unthrottled so the loss curve survives restarts. The final
result goes to `runtime.result_file` (Kubernetes shows `/dev/termination-log` as the container's
`terminated.message`, at most 4096 bytes) and to `<out>/result.json`. The wire format is
documented in docs/trainer.md; the operator has its own parser and a contract test keeps both in
step.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

PROGRESS_MARKER = "GLMOPS_PROGRESS"
"""Prefix of every progress line on stdout, followed by one space and a JSON object."""
PROGRESS_FORMAT_VERSION = 1
"""Value of the `v` key of progress lines and results; bumped on incompatible changes."""
RESULT_LIMIT_BYTES = 4096
"""Kubernetes truncates a termination message beyond this size."""


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; a diverged loss is reported as null rather than breaking the parser.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: where training is, how it goes, and how long it will take."""

    step: int
    total_steps: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    time_unix: float = field(default_factory=time.time)
    kind: str = "train"
    """`train` (after an optimizer step's log), `eval` (after an evaluation) or `final` (training ended)."""

    @property
    def final(self) -> bool:
        """Whether this is the last event of the run."""
        return self.kind == "final"

    def to_json(self) -> dict[str, Any]:
        """The event as the JSON object of the wire format (camelCase keys, every key present)."""
        eta = _finite(self.eta_seconds)
        return {
            "v": PROGRESS_FORMAT_VERSION,
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": None if self.epoch is None else round(self.epoch, 4),
            "loss": _finite(self.loss),
            "evalLoss": _finite(self.eval_loss),
            "learningRate": _finite(self.learning_rate),
            "tokensPerSecond": None if self.tokens_per_second is None else round(self.tokens_per_second, 1),
            "etaSeconds": None if eta is None else round(eta),
            "time": round(self.time_unix, 3),
            "kind": self.kind,
        }


def format_progress_line(event: ProgressEvent) -> str:
    """The stdout line for `event`: marker, one space, compact JSON, no newline."""
    return f"{PROGRESS_MARKER} {json.dumps(event.to_json(), separators=(',', ':'), allow_nan=False)}"


class Throttle:
    """Lets an action through at most once per `interval_seconds` (the first and forced ones always)."""

    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._last: float | None = None

    def ready(self, force: bool = False) -> bool:
        """True when the action may run now; records it as run."""
        now = self._clock()
        if force or self._last is None or now - self._last >= self.interval_seconds:
            self._last = now
            return True
        return False


class ProgressReporter:
    """Writes events: every one to `history_file`, throttled ones (and final ones) to `stream`."""

    def __init__(
        self,
        interval_seconds: float,
        history_file: Path | None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.throttle = Throttle(interval_seconds, clock)
        self.history_file = history_file
        self._stream = stream

    def report(self, event: ProgressEvent, force: bool = False) -> bool:
        """Record `event`; returns whether a line went to the stream."""
        if self.history_file is not None:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            with self.history_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        if not self.throttle.ready(force or event.final):
            return False
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(format_progress_line(event) + "\n")
        stream.flush()
        return True


@dataclass(frozen=True)
class LossHistory:
    """Train and eval loss per step, as recorded in `progress.jsonl`."""

    train: list[tuple[int, float]]
    eval: list[tuple[int, float]]


def read_loss_history(history_file: Path) -> LossHistory:
    """Loss points of `progress.jsonl`; a step recorded twice (redone after a resume) keeps its last value."""
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    if history_file.is_file():
        for line in history_file.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if not isinstance(event, dict) or not isinstance(event.get("step"), int):
                continue
            if event.get("kind") == "train" and isinstance(event.get("loss"), (int, float)):
                train[event["step"]] = float(event["loss"])
            elif event.get("kind") == "eval" and isinstance(event.get("evalLoss"), (int, float)):
                evals[event["step"]] = float(event["evalLoss"])
    return LossHistory(sorted(train.items()), sorted(evals.items()))


class ProgressCallback(TrainerCallback):
    """Turns Trainer's logs into progress events on the main process (other ranks stay silent).

    Tokens per second come from `state.num_input_tokens_seen`, which the trainer counts as real
    (non-padding) tokens summed over all ranks.
    """

    def __init__(self, reporter: ProgressReporter, clock: Callable[[], float] = time.monotonic) -> None:
        self.reporter = reporter
        self._clock = clock
        self._start_time = 0.0
        self._start_step = 0
        self._start_tokens = 0
        self._loss: float | None = None
        self._eval_loss: float | None = None
        self._learning_rate: float | None = None
        self.last_event: ProgressEvent | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Rates and ETA are measured over this process's own steps: after a resume the restored
        # step count must not make the run look faster than it is.
        self._start_time = self._clock()
        self._start_step = state.global_step
        self._start_tokens = int(state.num_input_tokens_seen)
        self._restore_last_losses(state)

    def _restore_last_losses(self, state: TrainerState) -> None:
        for entry in state.log_history:
            if "loss" in entry:
                self._loss = float(entry["loss"])
            if "learning_rate" in entry:
                self._learning_rate = float(entry["learning_rate"])
            if "eval_loss" in entry:
                self._eval_loss = float(entry["eval_loss"])

    def event(self, state: TrainerState, kind: str = "train") -> ProgressEvent:
        """The current progress as an event."""
        elapsed = max(self._clock() - self._start_time, 1e-9)
        steps_done = state.global_step - self._start_step
        tokens_done = int(state.num_input_tokens_seen) - self._start_tokens
        tokens_per_second = tokens_done / elapsed if steps_done > 0 else None
        remaining = max(state.max_steps - state.global_step, 0)
        if remaining == 0:
            eta: float | None = 0.0
        elif steps_done > 0:
            eta = remaining * elapsed / steps_done
        else:
            eta = None
        return ProgressEvent(
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=state.epoch,
            loss=self._loss,
            eval_loss=self._eval_loss,
            learning_rate=self._learning_rate,
            tokens_per_second=tokens_per_second,
            eta_seconds=eta,
            kind=kind,
        )

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            return  # Trainer's end-of-run summary; the final event comes from on_train_end
        if "loss" in logs:
            self._loss = float(logs["loss"])
        if "learning_rate" in logs:
            self._learning_rate = float(logs["learning_rate"])
        if "eval_loss" in logs:
            self._eval_loss = float(logs["eval_loss"])
        if "eval_loss" in logs:
            self.last_event = self.event(state, kind="eval")
            self.reporter.report(self.last_event)
        elif "loss" in logs:
            self.last_event = self.event(state, kind="train")
            self.reporter.report(self.last_event)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self.last_event = self.event(state, kind="final")
        self.reporter.report(self.last_event, force=True)


@dataclass
class TrainResult:
    """What a run produced; written as JSON to the result file and `<out>/result.json`."""

    status: str
    """`Succeeded` or `Failed`."""
    reason: str = ""
    """On failure: `ConfigError`, `DataError` (the user's to fix) or `TrainingError`."""
    message: str = ""
    """On failure: what went wrong, naming the field or file:line."""
    step: int = 0
    total_steps: int = 0
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    runtime_seconds: float | None = None
    resumed_from_step: int | None = None
    output_uri: str = ""
    artifacts: dict[str, Any] = field(default_factory=dict)
    """Artifact name -> URI (adapter) or what the export step reported (merged, gguf)."""

    def to_json(self) -> dict[str, Any]:
        """The result as the JSON object of the wire format (camelCase keys)."""
        return {
            "v": PROGRESS_FORMAT_VERSION,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "step": self.step,
            "totalSteps": self.total_steps,
            "trainLoss": _finite(self.train_loss),
            "evalLoss": _finite(self.eval_loss),
            "tokensPerSecond": None if self.tokens_per_second is None else round(self.tokens_per_second, 1),
            "runtimeSeconds": None if self.runtime_seconds is None else round(self.runtime_seconds, 1),
            "resumedFromStep": self.resumed_from_step,
            "outputUri": self.output_uri,
            "artifacts": self.artifacts,
        }


def fit_result(payload: dict[str, Any], limit_bytes: int = RESULT_LIMIT_BYTES) -> str:
    """`payload` as compact JSON of at most `limit_bytes`: drops artifact details, then the start of the message."""

    def dumps(obj: dict[str, Any]) -> str:
        return json.dumps(obj, separators=(",", ":"))

    text = dumps(payload)
    if len(text) <= limit_bytes:  # ensure_ascii: characters are bytes
        return text
    slim = dict(payload)
    if slim.get("artifacts"):
        # The full list stays in <out>/result.json (and artifacts.json).
        slim["artifacts"] = {"truncated": True}
    message = str(slim.get("message", ""))
    text = dumps(slim)
    while len(text) > limit_bytes and message:
        # Keep the end of the message: the last lines of an error say what failed.
        message = message[len(message) // 8 + 1 :]
        slim["message"] = "..." + message if message else ""
        text = dumps(slim)
    return text


def write_result(result: TrainResult, result_file: Path | None, output_dir: Path | None) -> None:
    """Write `result` in full to `<output_dir>/result.json` and, within 4 KiB, to `result_file`."""
    payload = result.to_json()
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / "result.json.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        tmp.replace(output_dir / "result.json")
    if result_file is not None and not result_file.exists() and result_file.parent == Path("/dev"):
        # /dev/termination-log exists only inside a Kubernetes container; never create files in /dev.
        result_file = None
    if result_file is not None:
        try:
            result_file.write_text(fit_result(payload), encoding="utf-8")
        except OSError as exc:
            # Outside Kubernetes /dev/termination-log usually does not exist; the result is still in result.json.
            print(f"glmops-trainer: cannot write result file {result_file}: {exc}", file=sys.stderr)

"""Progress: served as metrics for the operator, printed for people, kept in `progress.jsonl`.

The records themselves are defined once, in `glmops.contract.records` (shared with the operator,
torch-free). While it trains, rank 0 serves the newest record at `GET /metrics` on the pod's IP
(`MetricsServer`, port `runtime.metrics_port`), which the operator and any Prometheus read. The
log gets a human-readable `GLMOPS_PROGRESS {json}` line at most every
`runtime.progress_interval_seconds` (the operator never reads the log: a line there, whatever it
says, changes no status). `progress.jsonl` receives every record unthrottled, so the loss curve
survives restarts. The final result goes to `runtime.result_file` (Kubernetes shows
`/dev/termination-log` as the container's `terminated.message`, at most 4096 bytes) and to
`<out>/result.json`. The formats are documented in docs/trainer.md.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from glmops.contract.records import (
    RESULT_LIMIT_BYTES,
    SCHEMA_VERSION,
    ProgressRecord,
    ResultRecord,
    fit_result,
    render_metrics,
)
from glmops.losscurve import LossHistory, read_loss_history
from glmops_trainer.metrics_page import PageServer

log = logging.getLogger(__name__)

PROGRESS_MARKER = "GLMOPS_PROGRESS"
"""Prefix of the human-readable progress lines in the log, followed by one space and a JSON object."""
PROGRESS_FORMAT_VERSION = SCHEMA_VERSION
ProgressEvent = ProgressRecord
"""One progress report (the contract's record)."""
TrainResult = ResultRecord
"""What a run produced (the contract's record)."""

__all__ = [
    "RESULT_LIMIT_BYTES",
    "LossHistory",
    "MetricsServer",
    "ProgressCallback",
    "ProgressEvent",
    "ProgressReporter",
    "TrainResult",
    "fit_result",
    "format_progress_line",
    "read_loss_history",
    "write_result",
]


class MetricsServer:
    """Serves the newest progress record at `/metrics` (Prometheus text format) from a daemon thread.

    Read-only and without secrets: the page holds the job's identity and its progress numbers.
    A port that cannot be bound (taken) is logged and skipped: training never fails for it.
    """

    def __init__(self, address: str, port: int, job: str, namespace: str, uid: str) -> None:
        self._record: ProgressRecord | None = None
        self._lock = threading.Lock()
        self._identity = (job, namespace, uid)
        self._http: PageServer | None = None
        self.address, self.port = address, port

    def update(self, record: ProgressRecord) -> None:
        """Serve `record` from now on."""
        with self._lock:
            self._record = record

    def page(self) -> str:
        """The current metrics page."""
        with self._lock:
            record = self._record
        return render_metrics(record, *self._identity)

    def start(self) -> bool:
        """Bind and serve in the background; returns whether the endpoint is up."""
        self._http = PageServer(self.address, self.port, self.page, "glmops-metrics")
        served = self._http.start()
        self.port = self._http.port
        return served

    def stop(self) -> None:
        """Stop serving."""
        if self._http is not None:
            self._http.stop()
            self._http = None


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
        metrics: MetricsServer | None = None,
    ) -> None:
        self.throttle = Throttle(interval_seconds, clock)
        self.history_file = history_file
        self._stream = stream
        self.metrics = metrics

    def report(self, event: ProgressEvent, force: bool = False) -> bool:
        """Record `event`; returns whether a line went to the stream."""
        if self.metrics is not None:
            self.metrics.update(event)
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


def write_result(
    result: TrainResult, result_file: Path | None, output_dir: Path | None, file_name: str = "result.json"
) -> None:
    """Write `result` in full to `<output_dir>/<file_name>` and, within 4 KiB, to `result_file`."""
    payload = result.to_json()
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / f"{file_name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        tmp.replace(output_dir / file_name)
    if result_file is not None and not result_file.exists() and result_file.parent == Path("/dev"):
        # /dev/termination-log exists only inside a Kubernetes container; never create files in /dev.
        result_file = None
    if result_file is not None:
        try:
            result_file.write_text(fit_result(payload), encoding="utf-8")
        except OSError as exc:
            # Outside Kubernetes /dev/termination-log usually does not exist; the result is still in result.json.
            print(f"glmops-trainer: cannot write result file {result_file}: {exc}", file=sys.stderr)

"""The trainer's two records, defined once: progress (served as metrics) and the result.

Progress: while it trains, the trainer serves `GET /metrics` on its pod's IP (port
`runtime.metrics_port`) in the Prometheus text format. The operator reads it there, and so can
any Prometheus; nothing is parsed out of the pod's log, so no amount of later output scrolls it
away and no line of a dataset or a library can forge it. Every series is a gauge named
`glmops_trainer_*`; `glmops_trainer_info` carries the FineTuneJob's name (label `finetunejob`),
namespace and uid, and a reader drops a page whose uid is not the one it expects (an address
reused by another pod). Dashboards join on the scrape target: `glmops_trainer_loss * on(instance)
group_left(finetunejob) glmops_trainer_info`. A value that is not known
(no eval yet, a NaN loss) is `NaN`.

Result: at the end each pod writes one JSON object (`ResultRecord`) as its container's
termination message, cut to 4096 bytes (`fit_result`).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
"""`v` of records and `schema` of the metrics page; bumped on incompatible changes."""
RESULT_LIMIT_BYTES = 4096
"""Kubernetes truncates a termination message beyond this size."""
PREFIX = "glmops_trainer_"


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; a diverged loss is reported as null rather than breaking the parser.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class ProgressRecord:
    """Where training is, how it goes, and how long it will take."""

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
        """Whether this is the last record of the run."""
        return self.kind == "final"

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (camelCase keys, every key present): `progress.jsonl` and log lines."""
        eta = _finite(self.eta_seconds)
        return {
            "v": SCHEMA_VERSION,
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


# name -> (ProgressRecord field, help text). Each is a gauge.
METRICS: dict[str, tuple[str, str]] = {
    "step": ("step", "Optimizer steps done (global, across restarts)."),
    "total_steps": ("total_steps", "Optimizer steps the run will take."),
    "epoch": ("epoch", "Passes over the training data so far."),
    "loss": ("loss", "Train loss of the most recent step."),
    "eval_loss": ("eval_loss", "Loss on the held-out split at the most recent evaluation."),
    "learning_rate": ("learning_rate", "Learning rate of the most recent step."),
    "tokens_per_second": ("tokens_per_second", "Real (non-padding) tokens per second, all ranks, since this pod started."),
    "eta_seconds": ("eta_seconds", "Estimated seconds until the last step."),
    "last_report_timestamp_seconds": ("time_unix", "When the trainer made this record (Unix time)."),
}
_KINDS = ("train", "eval", "final")


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | None) -> str:
    return "NaN" if value is None or not math.isfinite(float(value)) else repr(float(value))


def render_metrics(record: ProgressRecord | None, job: str, namespace: str, uid: str) -> str:
    """The metrics page (Prometheus text format 0.0.4) for `record`; only the info series before the first one."""
    lines = [
        f"# HELP {PREFIX}info The run these series belong to; readers check uid.",
        f"# TYPE {PREFIX}info gauge",
        # `finetunejob`, not `job`: Prometheus gives every scraped series a `job` label of its own
        # (the scrape job) and would rename ours to `exported_job`.
        (
            f'{PREFIX}info{{finetunejob="{_label_value(job)}",namespace="{_label_value(namespace)}",uid="{_label_value(uid)}",'
            f'schema="{SCHEMA_VERSION}"}} 1'
        ),
    ]
    if record is not None:
        for name, (attr, help_text) in METRICS.items():
            lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge"]
            lines.append(f"{PREFIX}{name} {_number(getattr(record, attr))}")
        lines += [f"# HELP {PREFIX}phase The kind of the latest record (1 for the current one).", f"# TYPE {PREFIX}phase gauge"]
        lines += [f'{PREFIX}phase{{kind="{k}"}} {1 if record.kind == k else 0}' for k in _KINDS]
    return "\n".join(lines) + "\n"


_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


class MetricsError(ValueError):
    """A metrics page that is not the trainer's (wrong uid, unknown schema, unreadable)."""


def parse_metrics(text: str, expected_uid: str) -> ProgressRecord | None:
    """The progress record of a metrics page; None before the first record. Raises MetricsError
    when the page belongs to another run or speaks another schema."""
    values: dict[str, float] = {}
    info: dict[str, str] | None = None
    kind = "train"
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match is None or not match.group("name").startswith(PREFIX):
            continue
        name = match.group("name")[len(PREFIX):]
        labels = {m.group("key"): m.group("value") for m in _LABEL.finditer(match.group("labels") or "")}
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        if name == "info":
            info = labels
        elif name == "phase" and value == 1 and labels.get("kind") in _KINDS:
            kind = labels["kind"]
        elif name in METRICS:
            values[name] = value
    if info is None:
        raise MetricsError("no glmops_trainer_info series: not a glmops trainer")
    if info.get("uid") != expected_uid:
        raise MetricsError(f"the endpoint serves uid {info.get('uid')!r}, not {expected_uid!r}: another pod's address")
    if info.get("schema") != str(SCHEMA_VERSION):
        raise MetricsError(f"schema {info.get('schema')!r} is not {SCHEMA_VERSION}")
    if "step" not in values:
        return None

    def get(name: str) -> float | None:
        value = values.get(name)
        return None if value is None or math.isnan(value) else value

    eta = get("eta_seconds")
    return ProgressRecord(
        step=int(get("step") or 0),
        total_steps=int(get("total_steps") or 0),
        epoch=get("epoch"),
        loss=get("loss"),
        eval_loss=get("eval_loss"),
        learning_rate=get("learning_rate"),
        tokens_per_second=get("tokens_per_second"),
        eta_seconds=eta,
        time_unix=get("last_report_timestamp_seconds") or 0.0,
        kind=kind,
    )


@dataclass
class ResultRecord:
    """What a pod produced: the termination message of the trainer and of the export."""

    status: str
    """`Succeeded` or `Failed`."""
    reason: str = ""
    """On failure: `ConfigError`, `DataError` (the user's to fix), `TrainingError` or `ExportError`."""
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
    """Artifact name -> URI (adapter, lossCurve) or what the export reported (manifest, merged, gguf)."""
    model_bytes: int | None = None
    """Size of the base model's weight files (the export Job is sized from it)."""
    largest_shard_bytes: int | None = None
    """Size of the base model's largest weight file."""
    adapter_bytes: int | None = None
    """Size of the saved adapter."""

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (camelCase keys)."""
        return {
            "v": SCHEMA_VERSION,
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
            "modelBytes": self.model_bytes,
            "largestShardBytes": self.largest_shard_bytes,
            "adapterBytes": self.adapter_bytes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ResultRecord:
        """The record from its JSON (unknown or mistyped keys are dropped, never trusted)."""

        def integer(key: str) -> int | None:
            value = raw.get(key)
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        def number(key: str) -> float | None:
            value = raw.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        artifacts = raw.get("artifacts")
        return cls(
            status=str(raw.get("status") or ""),
            reason=str(raw.get("reason") or ""),
            message=str(raw.get("message") or ""),
            step=integer("step") or 0,
            total_steps=integer("totalSteps") or 0,
            train_loss=number("trainLoss"),
            eval_loss=number("evalLoss"),
            tokens_per_second=number("tokensPerSecond"),
            runtime_seconds=number("runtimeSeconds"),
            resumed_from_step=integer("resumedFromStep"),
            output_uri=str(raw.get("outputUri") or ""),
            artifacts=artifacts if isinstance(artifacts, dict) else {},
            model_bytes=integer("modelBytes"),
            largest_shard_bytes=integer("largestShardBytes"),
            adapter_bytes=integer("adapterBytes"),
        )


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


def parse_result(message: str | None) -> ResultRecord | None:
    """The result record of a termination message, if it is one of ours."""
    if not message:
        return None
    try:
        raw = json.loads(message)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("v") != SCHEMA_VERSION or raw.get("status") not in ("Succeeded", "Failed"):
        return None
    return ResultRecord.from_json(raw)

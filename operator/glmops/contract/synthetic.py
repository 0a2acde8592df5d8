"""The generator's contract: its config file, its progress page and its result, defined once.

A SyntheticDataset runs `python -m glmops_trainer generate --config FILE` in a CPU Job. The
operator renders `GeneratorConfig` (every model forbids unknown keys, as the trainer's config
does); the generator reads it. While it runs, the generator serves `GET /metrics` on its pod's IP
(port `runtime.metrics_port`, Prometheus text format, series `glmops_generator_*`), where the
operator reads its progress; `glmops_generator_info` carries the dataset's uid, and a reader drops
a page of another uid. At the end the pod writes one `GeneratorResult` (JSON) as its
termination message.

The enums and bounds shared by the SyntheticDataset API and this file are defined here and
imported by `glmops.api.syntheticdataset`, so the two cannot disagree. Pure: standard library and
pydantic only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from glmops.contract.config import Thinking
from glmops.contract.records import SCHEMA_VERSION, fit_result


class ToolExecution(StrEnum):
    """What happens when the teacher calls a tool."""

    fixtures = "fixtures"
    """Answer each call from the prompt's `tool_results` fixture and let the teacher continue."""
    stop = "stop"
    """End the trace at the teacher's first tool call (the sample teaches the call itself)."""


class Deduplication(StrEnum):
    """Which duplicates are removed before the output is written."""

    none = "none"
    exact = "exact"
    near = "near"


class DropReason(StrEnum):
    """Why a sample was left out of the output; the status counts samples per reason."""

    empty = "empty"
    """An assistant turn with neither content nor a tool call."""
    truncated = "truncated"
    """The teacher stopped at its token limit (finish_reason `length`)."""
    unparsable_tool_call = "unparsable-tool-call"
    """A tool call without a name, or whose arguments are not a JSON object."""
    unknown_tool = "unknown-tool"
    """A call of a tool the prompt does not offer."""
    invalid_tool_arguments = "invalid-tool-arguments"
    """Arguments that do not match the tool's JSON schema."""
    missing_tool_result = "missing-tool-result"
    """toolExecution `fixtures`: no fixture of the prompt answers the call."""
    control_token = "control-token"
    """Generated text holds a chat control token (`<|user|>`, `</think>`, ...) that would forge turns."""
    teacher_rejected = "teacher-rejected"
    """The teacher refused this request (4xx other than 401/403/404/408/429)."""
    teacher_error = "teacher-error"
    """The teacher kept failing this request while it answered others."""
    duplicate = "duplicate"
    """Identical to an earlier sample."""
    near_duplicate = "near-duplicate"
    """Nearly identical to an earlier sample (MinHash estimate of word 5-gram Jaccard similarity)."""


class ResultReason(StrEnum):
    """Why a generator ended Failed; those in TERMINAL_REASONS are not retried."""

    config_error = "ConfigError"
    prompts_invalid = "PromptsInvalid"
    prompts_changed = "PromptsChanged"
    deadline_exceeded = "DeadlineExceeded"
    teacher_unauthorized = "TeacherUnauthorized"
    teacher_endpoint_not_found = "TeacherEndpointNotFound"
    no_sample_kept = "NoSampleKept"
    generator_error = "GeneratorError"


TERMINAL_REASONS = frozenset(
    {
        ResultReason.config_error,
        ResultReason.prompts_invalid,
        ResultReason.prompts_changed,
        ResultReason.deadline_exceeded,
        ResultReason.teacher_unauthorized,
        ResultReason.teacher_endpoint_not_found,
        ResultReason.no_sample_kept,
    }
)
"""Failures that a new pod cannot change: the dataset fails at once instead of retrying."""

# Bounds the SyntheticDataset API and the generator both enforce.
SamplesPerPrompt = Annotated[int, Field(ge=1, le=64)]
MaxTurns = Annotated[int, Field(ge=1, le=32)]
MaxConcurrency = Annotated[int, Field(ge=1, le=256)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=16, le=131072)]
NearDuplicateThreshold = Annotated[float, Field(ge=0.5, le=1.0)]
MaxAttempts = Annotated[int, Field(ge=1, le=100)]
RequestTimeoutSeconds = Annotated[int, Field(ge=5, le=3600)]

METRICS_PATH = "/metrics"
TEACHER_API_KEY_ENV = "GLMOPS_TEACHER_API_KEY"
"""The generator reads the teacher's API key from this variable (a secretKeyRef); never from the config."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DatasetIdentity(_Strict):
    name: str
    """Name of the SyntheticDataset."""
    namespace: str = "default"
    """Its namespace."""
    uid: str = ""
    """Its uid; served on the progress page and written into the work folder's journal."""


class TeacherConfig(_Strict):
    base_url: str
    """OpenAI-compatible base URL, ending in /v1 (http://NAME.NS.svc:8000/v1)."""
    model: str | None = None
    """Model name to request; None: the one model the endpoint lists at /v1/models."""
    request_timeout_seconds: RequestTimeoutSeconds = 600
    """Seconds one request may take (never past the deadline)."""


class SamplingConfig(_Strict):
    temperature: Temperature = 0.7
    """Sampling temperature; 0 is greedy."""
    top_p: TopP = 0.95
    """Nucleus sampling."""
    max_tokens: MaxTokens = 4096
    """Token limit of one assistant turn; a turn that reaches it is truncated."""
    seed: int | None = None
    """Base of the per-request seeds (seed + prompt and sample index); None sends no seed."""


class FilterConfig(_Strict):
    drop_empty: bool = True
    """Drop samples with an assistant turn that holds only reasoning (no content, no tool call)."""
    drop_truncated: bool = True
    """Drop samples whose last turn reached max_tokens."""
    validate_tool_calls: bool = True
    """Drop calls of tools the prompt does not offer and arguments that do not match their JSON schema."""
    deduplicate: Deduplication = Deduplication.near
    """Remove exact duplicates (`exact`), also near duplicates (`near`), or none."""
    near_duplicate_threshold: NearDuplicateThreshold = 0.9
    """Estimated Jaccard similarity of word 5-grams at or above which a sample is a near duplicate."""


class GeneratorRuntime(_Strict):
    pvc_mount_root: str = "/mnt/pvc"
    """pvc://CLAIM/PATH resolves to PVC_MOUNT_ROOT/CLAIM/PATH inside the pod."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    """TCP port of the progress endpoint on the pod's IP; 0 serves none."""
    result_file: str = "/dev/termination-log"
    """Where the final result (JSON) is written; Kubernetes shows it in the pod's status."""


class GeneratorConfig(_Strict):
    """Everything one generation run needs; rendered by the operator, read by `glmops_trainer generate`."""

    dataset: DatasetIdentity
    """The SyntheticDataset this run belongs to."""
    teacher: TeacherConfig
    """Who writes the samples."""
    prompts: str
    """JSONL of prompts: file:///PATH or pvc://CLAIM/PATH."""
    output: str
    """The JSONL to write: file:///PATH or pvc://CLAIM/PATH (the work folder goes beside it)."""
    samples_per_prompt: SamplesPerPrompt = 1
    """Samples generated per prompt."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Sampling settings of every request."""
    thinking: Thinking = Thinking.preserve
    """`preserve`: ask the teacher to think and keep reasoning_content on every assistant turn; `strip`: neither."""
    max_turns: MaxTurns = 1
    """Assistant turns per sample (more than one needs tool calls answered from fixtures)."""
    tool_execution: ToolExecution = ToolExecution.stop
    """`fixtures` or `stop`, see ToolExecution."""
    system_prompt: str | None = None
    """Prepended to prompts that have no system message."""
    max_concurrency: MaxConcurrency = 8
    """Requests in flight at once."""
    max_attempts: MaxAttempts = 8
    """Failed tries after which one request is given up, when the teacher answers other requests meanwhile."""
    filters: FilterConfig = Field(default_factory=FilterConfig)
    """Which samples are dropped."""
    deadline_unix: float | None = None
    """Unix time by which the dataset must be complete; None: no deadline."""
    runtime: GeneratorRuntime = Field(default_factory=GeneratorRuntime)
    """Where things are inside the pod."""

    @classmethod
    def from_file(cls, path: str | Path) -> GeneratorConfig:
        """Read and validate a config file; errors name the file and the field."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
        return cls.model_validate(raw)


# --- progress: the metrics page ------------------------------------------------------------------

PREFIX = "glmops_generator_"


@dataclass(frozen=True)
class GeneratorProgress:
    """How far generation is; counts are over the whole run, restarts included."""

    prompts_total: int
    prompts_done: int
    samples_total: int
    samples_done: int
    samples_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    """Samples dropped so far per DropReason value (duplicates are only known at the end)."""
    tokens_generated: int = 0
    """Completion tokens the teacher reported."""
    retries: int = 0
    """Requests retried by this pod (429, 5xx, timeouts)."""
    time_unix: float = 0.0
    finalizing: bool = False
    """Every prompt is done; the output is being deduplicated and written."""

    @property
    def samples_dropped(self) -> int:
        """All dropped samples."""
        return sum(self.dropped.values())


_GAUGES: dict[str, tuple[str, str]] = {
    "prompts_total": ("prompts_total", "Prompts in the prompts file."),
    "prompts_done": ("prompts_done", "Prompts whose samples are all done."),
    "samples_total": ("samples_total", "Samples the run makes: prompts x samplesPerPrompt."),
    "samples_done": ("samples_done", "Samples done, kept or dropped."),
    "samples_kept": ("samples_kept", "Samples that passed the filters so far (duplicates are removed at the end)."),
    "tokens_generated": ("tokens_generated", "Completion tokens the teacher reported."),
    "teacher_retries": ("retries", "Requests this pod retried (429, 5xx, timeouts)."),
    "finalizing": ("finalizing", "1 while the output is deduplicated and written."),
    "last_report_timestamp_seconds": ("time_unix", "When this page was made (Unix time)."),
}


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_generator_metrics(progress: GeneratorProgress | None, dataset: str, namespace: str, uid: str) -> str:
    """The metrics page (Prometheus text format 0.0.4); only the info series before the first report."""
    lines = [
        f"# HELP {PREFIX}info The SyntheticDataset these series belong to; readers check uid.",
        f"# TYPE {PREFIX}info gauge",
        f'{PREFIX}info{{dataset="{_label(dataset)}",namespace="{_label(namespace)}",uid="{_label(uid)}",schema="{SCHEMA_VERSION}"}} 1',
    ]
    if progress is not None:
        for name, (attr, help_text) in _GAUGES.items():
            value = getattr(progress, attr)
            lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge", f"{PREFIX}{name} {float(value)!r}"]
        lines += [f"# HELP {PREFIX}samples_dropped Samples dropped, by reason.", f"# TYPE {PREFIX}samples_dropped gauge"]
        lines += [f'{PREFIX}samples_dropped{{reason="{_label(r)}"}} {n}' for r, n in sorted(progress.dropped.items())]
    return "\n".join(lines) + "\n"


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


class GeneratorMetricsError(ValueError):
    """A page that is not this dataset's generator (another uid or schema, or no info series)."""


def parse_generator_metrics(text: str, expected_uid: str) -> GeneratorProgress | None:
    """The progress of a metrics page; None before the first report. Raises GeneratorMetricsError
    for a page of another run or schema."""
    values: dict[str, float] = {}
    dropped: dict[str, int] = {}
    info: dict[str, str] | None = None
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip()) if line and not line.startswith("#") else None
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
        elif name == "samples_dropped" and "reason" in labels and math.isfinite(value):
            dropped[labels["reason"]] = int(value)
        elif name in _GAUGES and math.isfinite(value):
            values[_GAUGES[name][0]] = value
    if info is None:
        raise GeneratorMetricsError("no glmops_generator_info series: not a glmops generator")
    if info.get("uid") != expected_uid:
        raise GeneratorMetricsError(f"the endpoint serves uid {info.get('uid')!r}, not {expected_uid!r}: another pod's address")
    if info.get("schema") != str(SCHEMA_VERSION):
        raise GeneratorMetricsError(f"schema {info.get('schema')!r} is not {SCHEMA_VERSION}")
    if "prompts_total" not in values:
        return None
    return GeneratorProgress(
        prompts_total=int(values["prompts_total"]),
        prompts_done=int(values.get("prompts_done", 0)),
        samples_total=int(values.get("samples_total", 0)),
        samples_done=int(values.get("samples_done", 0)),
        samples_kept=int(values.get("samples_kept", 0)),
        dropped=dropped,
        tokens_generated=int(values.get("tokens_generated", 0)),
        retries=int(values.get("retries", 0)),
        time_unix=values.get("time_unix", 0.0),
        finalizing=values.get("finalizing", 0.0) >= 1.0,
    )


# --- the result: the termination message -----------------------------------------------------------


@dataclass
class GeneratorResult:
    """What a generator pod ended with: the output and its counts, or why it failed."""

    status: str
    """`Succeeded` or `Failed`."""
    reason: str = ""
    """On failure: a ResultReason value."""
    message: str = ""
    """On failure: what went wrong, naming the field or file:line and the fix."""
    prompts_total: int = 0
    prompts_done: int = 0
    samples_total: int = 0
    samples_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    tokens_generated: int = 0
    output_uri: str = ""
    sha256: str = ""
    size_bytes: int = 0
    report_uri: str = ""
    histogram_uri: str = ""
    runtime_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (camelCase keys)."""
        return {
            "v": SCHEMA_VERSION,
            "kind": "generator",
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "promptsTotal": self.prompts_total,
            "promptsDone": self.prompts_done,
            "samplesTotal": self.samples_total,
            "samplesKept": self.samples_kept,
            "dropped": dict(sorted(self.dropped.items())),
            "tokensGenerated": self.tokens_generated,
            "outputUri": self.output_uri,
            "sha256": self.sha256,
            "sizeBytes": self.size_bytes,
            "reportUri": self.report_uri,
            "histogramUri": self.histogram_uri,
            "runtimeSeconds": None if self.runtime_seconds is None else round(self.runtime_seconds, 1),
        }

    def to_message(self) -> str:
        """The termination message: compact JSON within Kubernetes' 4096 bytes."""
        return fit_result(self.to_json())

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GeneratorResult:
        """The result from its JSON; keys of the wrong type are dropped, never trusted."""

        def integer(key: str) -> int:
            value = raw.get(key)
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

        dropped = raw.get("dropped")
        runtime = raw.get("runtimeSeconds")
        return cls(
            status=str(raw.get("status") or ""),
            reason=str(raw.get("reason") or ""),
            message=str(raw.get("message") or ""),
            prompts_total=integer("promptsTotal"),
            prompts_done=integer("promptsDone"),
            samples_total=integer("samplesTotal"),
            samples_kept=integer("samplesKept"),
            dropped={str(k): int(v) for k, v in dropped.items() if isinstance(v, int)} if isinstance(dropped, dict) else {},
            tokens_generated=integer("tokensGenerated"),
            output_uri=str(raw.get("outputUri") or ""),
            sha256=str(raw.get("sha256") or ""),
            size_bytes=integer("sizeBytes"),
            report_uri=str(raw.get("reportUri") or ""),
            histogram_uri=str(raw.get("histogramUri") or ""),
            runtime_seconds=float(runtime) if isinstance(runtime, (int, float)) and not isinstance(runtime, bool) else None,
        )


def parse_generator_result(message: str | None) -> GeneratorResult | None:
    """The result of a termination message, if it is a generator's."""
    if not message:
        return None
    try:
        raw = json.loads(message)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("v") != SCHEMA_VERSION or raw.get("kind") != "generator":
        return None
    if raw.get("status") not in ("Succeeded", "Failed"):
        return None
    return GeneratorResult.from_json(raw)

"""SyntheticDataset: a teacher model writes agentic training data that a FineTuneJob can train on.

The usual teacher is a ModelDeployment serving GLM-4.7 (the flagship teaching Flash); any
OpenAI-compatible endpoint works too. A CPU Job calls it for every prompt and writes OpenAI chat
JSONL (reasoning_content, tool_calls) that the trainer's validator accepts; a FineTuneJob names
the result as `dataset.source: synthetic://NAME`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, JsonValue, model_validator

from glmops.api.common import Condition, DnsSubdomain, StatusModel, WireModel
from glmops.contract.config import Thinking
from glmops.contract.synthetic import (
    Deduplication,
    MaxAttempts,
    MaxConcurrency,
    MaxTokens,
    MaxTurns,
    NearDuplicateThreshold,
    RequestTimeoutSeconds,
    SamplesPerPrompt,
    Temperature,
    ToolExecution,
    TopP,
)
from glmops.contract.uris import MAX_URI_LENGTH, UriRole, pattern

__all__ = ["Deduplication", "Thinking", "ToolExecution"]

KIND = "SyntheticDataset"
PLURAL = "syntheticdatasets"

# The generator reads prompts and writes its output, journal and report on a mounted volume.
LocalFileUri = Annotated[
    str,
    Field(
        pattern=pattern(UriRole.dataset, ("pvc", "file")),
        max_length=MAX_URI_LENGTH,
        examples=["pvc://datasets/payments/prompts.jsonl"],
    ),
]
TeacherUrl = Annotated[
    str,
    Field(pattern="^https?://[^\\s/?#]+(/[^\\s?#]*)?$", max_length=512, examples=["http://glm47-teacher.ml.svc:8000/v1"]),
]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class DatasetPhase(StrEnum):
    """A one-word summary for `kubectl get`."""

    pending = "Pending"
    generating = "Generating"
    ready = "Ready"
    failed = "Failed"


class SecretKeySelector(WireModel):
    """One key of a Secret in the same namespace."""

    name: DnsSubdomain
    """Name of the Secret."""
    key: Annotated[str, Field(pattern="^[-._a-zA-Z0-9]+$", max_length=253)] = "api-key"
    """Key whose value is the API key (default `api-key`, as ModelDeployment's apiKeySecret)."""


class TeacherSpec(WireModel):
    """Who writes the samples: a ModelDeployment in the same namespace, or an OpenAI-compatible URL."""

    model_deployment: DnsSubdomain | None = None
    """Name of a ModelDeployment in the same namespace; generation starts once it is Ready, and uses its endpoint, its servedModelName and its apiKeySecret."""
    url: TeacherUrl | None = None
    """Instead of a ModelDeployment: an OpenAI-compatible base URL ending in /v1, e.g. http://glm47.example.svc:8000/v1."""
    model: ModelName | None = None
    """Model name to request. Default: the ModelDeployment's servedModelName; for a url, the one model its /v1/models lists."""
    api_key_secret: SecretKeySelector | None = None
    """Secret key holding the teacher's API key (sent as a bearer token; referenced, never copied). Default for a ModelDeployment: its apiKeySecret."""
    request_timeout_seconds: RequestTimeoutSeconds = 600
    """Seconds one request may take before it is retried."""

    @model_validator(mode="after")
    def _exactly_one_teacher(self) -> TeacherSpec:
        if (self.model_deployment is None) == (self.url is None):
            raise ValueError("spec.teacher: set exactly one of modelDeployment and url")
        return self


class SamplingSpec(WireModel):
    """Sampling settings sent with every request."""

    temperature: Temperature = 0.7
    """Sampling temperature (0 is greedy: with samplesPerPrompt > 1 the samples then repeat and are deduplicated)."""
    top_p: TopP = 0.95
    """Nucleus sampling (0 < topP <= 1)."""
    max_tokens: MaxTokens = 4096
    """Token limit of one assistant turn (reasoning included); a turn that reaches it is truncated."""
    seed: int | None = None
    """Base of the per-request seeds (seed + prompt, sample and turn): a rerun asks the same questions with the same seeds."""


class FilterSpec(WireModel):
    """Which samples are left out of the output; the status counts every drop by reason."""

    drop_empty: bool = True
    """Drop samples with an assistant turn that has no content and no tool call (a turn with nothing at all is always dropped)."""
    drop_truncated: bool = True
    """Drop samples whose turn reached sampling.maxTokens."""
    validate_tool_calls: bool = True
    """Drop calls of tools the prompt does not offer and arguments that do not match the tool's JSON schema (unparsable calls are always dropped)."""
    deduplicate: Deduplication = Deduplication.near
    """`exact` removes identical samples, `near` also nearly identical ones, `none` keeps all. The first in prompt order stays."""
    near_duplicate_threshold: NearDuplicateThreshold = 0.9
    """Estimated Jaccard similarity of word 5-grams (user, assistant and tool text) at or above which a sample is a near duplicate."""


class FailurePolicy(WireModel):
    """What happens when the generator pod fails."""

    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    """Times a failed generator pod is replaced; each new pod continues from the journal."""


_IMMUTABLE: list[JsonValue] = [
    {"rule": "self == oldSelf", "message": "is immutable once the SyntheticDataset exists; create a new SyntheticDataset instead"}
]
TEACHER_RULES: list[JsonValue] = [
    {"rule": "has(self.modelDeployment) != has(self.url)", "message": "set exactly one of modelDeployment and url"},
]
SPEC_RULES: list[JsonValue] = [
    *_IMMUTABLE,
    {"rule": "self.output.endsWith('.jsonl')", "message": "must name a .jsonl file", "fieldPath": ".output"},
    {"rule": "self.output != self.prompts", "message": "must differ from prompts", "fieldPath": ".output"},
    {
        "rule": "self.maxTurns == 1 || self.toolExecution == 'fixtures'",
        "message": "more than one turn needs toolExecution: fixtures (with stop, a trace ends at the first tool call)",
        "fieldPath": ".maxTurns",
    },
]


class SyntheticDatasetSpec(WireModel):
    """The data to generate. Immutable once created."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})

    teacher: Annotated[TeacherSpec, Field(json_schema_extra={"x-kubernetes-validations": TEACHER_RULES})]
    """The model that writes the samples."""
    prompts: LocalFileUri
    """JSONL of prompts (pvc://CLAIM/PATH or file:///PATH), one per line: {"prompt": "..."} or {"messages": [...]} ending with a user or tool message, optionally with "tools" (OpenAI function schemas), "tool_results" (canned results for toolExecution fixtures), "id"."""
    samples_per_prompt: SamplesPerPrompt = 1
    """Samples generated per prompt (1-64)."""
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    """Sampling settings."""
    thinking: Thinking = Thinking.preserve
    """`preserve` asks the teacher to think and keeps reasoning_content on every assistant turn (Preserved Thinking); `strip` asks it not to and keeps none."""
    system_prompt: Annotated[str, Field(max_length=32768)] | None = None
    """A system message for prompts that have none."""
    max_turns: MaxTurns = 1
    """Assistant turns per sample (1-32): with toolExecution fixtures the teacher continues after each answered call until it answers without one or reaches this many turns."""
    tool_execution: ToolExecution = ToolExecution.stop
    """`stop` ends a trace at the teacher's first tool call; `fixtures` answers each call from the prompt's "tool_results" (matched by name, and by arguments when a fixture gives them) and lets the teacher continue."""
    max_concurrency: MaxConcurrency = 8
    """Requests in flight at once (match the teacher's parallel slots)."""
    max_attempts: MaxAttempts = 8
    """Failed tries after which one request is given up (dropped as teacher-error), but only while the teacher answers other requests: during an outage every request waits until the deadline."""
    output: LocalFileUri
    """The JSONL to write (pvc://CLAIM/PATH.jsonl or file:///PATH.jsonl). Beside it: NAME.report.json, NAME.lengths.png and the journal folder NAME.jsonl.work/ that lets a restarted pod continue."""
    filters: FilterSpec = Field(default_factory=FilterSpec)
    """Which samples are dropped."""
    deadline_seconds: Annotated[int, Field(ge=10, le=30 * 86400)] = 86400
    """The dataset fails when it is not complete this many seconds after its generator Job was created."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Retries of a failed generator pod."""


class DatasetProgress(StatusModel):
    """The generator's latest progress report."""

    prompts_done: Annotated[int, Field(ge=0)] = 0
    """Prompts whose samples are all done."""
    prompts_total: Annotated[int, Field(ge=0)] = 0
    """Prompts in the prompts file."""
    percent: Annotated[int, Field(ge=0, le=100)] = 0
    """promptsDone / promptsTotal in percent."""
    samples_kept: Annotated[int, Field(ge=0)] = 0
    """Samples kept so far (duplicates are removed when the output is written)."""
    samples_dropped: Annotated[int, Field(ge=0)] = 0
    """Samples dropped so far."""
    dropped: dict[str, int] = Field(default_factory=dict)
    """Samples dropped per reason: empty, truncated, unparsable-tool-call, unknown-tool, invalid-tool-arguments, missing-tool-result, control-token, teacher-rejected, teacher-error, duplicate, near-duplicate."""
    tokens_generated: Annotated[int, Field(ge=0)] = 0
    """Completion tokens the teacher reported."""
    updated_at: datetime | None = None
    """When the generator made this report."""


class DatasetOutput(StatusModel):
    """The written dataset."""

    uri: str
    """The JSONL, complete (it is renamed into place once written)."""
    sha256: str
    """SHA-256 of the file."""
    size_bytes: Annotated[int, Field(ge=0)]
    """Its size."""
    samples: Annotated[int, Field(ge=0)]
    """Samples (lines) in it."""
    report: str | None = None
    """The report: counts, drop reasons, length statistics (JSON)."""
    histogram: str | None = None
    """A histogram of sample lengths in tokens (PNG)."""


class ResolvedTeacher(StatusModel):
    """The endpoint the generator calls (never the key)."""

    url: str
    """Base URL."""
    model: str | None = None
    """Model name requested (unset: the one the endpoint lists)."""


class SyntheticDatasetStatus(StatusModel):
    """Observed state, written by the operator only."""

    phase: DatasetPhase | None = None
    """Pending, Generating, Ready or Failed."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations: `Ready` (top level: `kubectl wait --for=condition=Ready`), `Validated`, `TeacherReady`."""
    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
    progress: DatasetProgress | None = None
    """Generation progress."""
    output: DatasetOutput | None = None
    """The finished dataset; set when Ready."""
    teacher: ResolvedTeacher | None = None
    """The endpoint the generator was created with."""
    generator_job: str | None = None
    """Name of the batch/v1 Job that generates the data (CPU only)."""
    retries: Annotated[int, Field(ge=0)] = 0
    """Generator pod failures so far."""
    start_time: datetime | None = None
    """When the generator Job was created."""
    completion_time: datetime | None = None
    """When the dataset became Ready or Failed."""
    last_handled_configuration: str | None = Field(default=None, exclude=True)
    """The spec the operator last acted on (JSON), kept by kopf to notice changes made while it was down."""


class SyntheticDataset(WireModel):
    """A SyntheticDataset as stored by the apiserver."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = "glmops.io/v1alpha1"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SyntheticDatasetSpec
    status: SyntheticDatasetStatus = Field(default_factory=SyntheticDatasetStatus)

"""A generation run, top to bottom: prompts -> teacher (bounded concurrency, retries) -> journal -> output.

    result = generate(config)

1. Read and check the prompts file; open the journal beside the output (a new pod continues it).
2. Find the teacher's model (the config's, or the one its /v1/models lists).
3. `max_concurrency` workers take the (prompt, sample) pairs the journal lacks, in order, and
   journal each finished sample (kept, or dropped with its reason).
4. Once all are done: remove duplicates in prompt order, write the output JSONL (renamed into
   place when complete), then the report and the length histogram.

The run stops early, failing, when the deadline passes or the teacher refuses every request
(key, URL or model wrong); see `glmops.contract.synthetic.ResultReason`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmops.contract.config import POD_IP_ENV
from glmops.contract.synthetic import (
    TEACHER_API_KEY_ENV,
    Deduplication,
    DropReason,
    GeneratorConfig,
    GeneratorResult,
    ResultReason,
)
from glmops_trainer.generate.dedup import NearDuplicates, comparable_text, exact_key
from glmops_trainer.generate.journal import Journal, JournalMismatch
from glmops_trainer.generate.progress import ProgressServer, Tally
from glmops_trainer.generate.prompts import Prompt, PromptError, file_sha256, read_prompts
from glmops_trainer.generate.report import build_report, length_stats, write_histogram, write_json
from glmops_trainer.generate.teacher import (
    DeadlineExceeded,
    GiveUp,
    Retrier,
    Stopped,
    TeacherClient,
    TeacherError,
    TeacherHealth,
)
from glmops_trainer.generate.traces import Sample, generate_sample
from glmops_trainer.locations import LocationError, local_location

log = logging.getLogger(__name__)


class RunFailed(Exception):
    """The run ends Failed with `reason` (a ResultReason value) and a message that names the fix."""

    def __init__(self, reason: ResultReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Paths:
    """Where the run reads and writes inside the pod, and the URIs it reports."""

    prompts: Path
    output: Path
    work: Path
    report: Path
    histogram: Path
    output_uri: str
    report_uri: str
    histogram_uri: str


def run_paths(config: GeneratorConfig) -> Paths:
    """The local paths of the config's URIs; the work folder, report and histogram sit beside the output."""
    root = config.runtime.pvc_mount_root
    try:
        prompts = local_location(config.prompts, root, "spec.prompts")
        output = local_location(config.output, root, "spec.output")
    except LocationError as exc:
        raise RunFailed(ResultReason.config_error, str(exc)) from None
    stem = output.name.removesuffix(".jsonl")
    base_uri = config.output.rsplit("/", 1)[0]
    return Paths(
        prompts=prompts,
        output=output,
        work=output.with_name(output.name + ".work"),
        report=output.with_name(f"{stem}.report.json"),
        histogram=output.with_name(f"{stem}.lengths.png"),
        output_uri=config.output,
        report_uri=f"{base_uri}/{stem}.report.json",
        histogram_uri=f"{base_uri}/{stem}.lengths.png",
    )


def journal_header(config: GeneratorConfig, prompts_sha256: str, model: str) -> dict[str, Any]:
    """What a journal's samples depend on; another value means another run."""
    shaping = {
        "sampling": config.sampling.model_dump(mode="json"),
        "thinking": config.thinking.value,
        "maxTurns": config.max_turns,
        "toolExecution": config.tool_execution.value,
        "systemPrompt": config.system_prompt,
        "filters": {
            "dropEmpty": config.filters.drop_empty,
            "dropTruncated": config.filters.drop_truncated,
            "validateToolCalls": config.filters.validate_tool_calls,
        },
    }
    return {
        "prompts": prompts_sha256,
        "samplesPerPrompt": config.samples_per_prompt,
        "teacher": f"{config.teacher.base_url} {model}",
        "settings": hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16],
    }


def generate(config: GeneratorConfig, environ: Mapping[str, str] | None = None, stopping: threading.Event | None = None) -> GeneratorResult:
    """Run (or continue) the generation `config` describes; the result says what came of it."""
    environ = os.environ if environ is None else environ
    stopping = stopping or threading.Event()
    started = time.monotonic()
    tally: Tally | None = None
    try:
        paths = run_paths(config)
        try:
            prompts = read_prompts(paths.prompts, config.system_prompt)
        except PromptError as exc:
            raise RunFailed(ResultReason.prompts_invalid, str(exc)) from None
        health = TeacherHealth()
        retrier = Retrier(config.max_attempts, config.deadline_unix, config.teacher.request_timeout_seconds, health, stopping)
        client = TeacherClient(config.teacher.base_url, environ.get(TEACHER_API_KEY_ENV) or None)
        model = _teacher_model(config, client, retrier)
        retrier.probe = lambda timeout_s: client.chat(probe_body(model), timeout_s)
        try:
            journal = Journal(paths.work, journal_header(config, file_sha256(paths.prompts), model))
        except JournalMismatch as exc:
            raise RunFailed(ResultReason.prompts_changed, str(exc)) from None
        tally = Tally(len(prompts), config.samples_per_prompt, retries=lambda: health.retries)
        for sample in journal.ordered():
            tally.add(sample)
        total = len(prompts) * config.samples_per_prompt
        log.info(
            "%d prompts x %d samples from %s (model %s); the journal holds %d of %d samples%s",
            len(prompts), config.samples_per_prompt, config.teacher.base_url, model, len(journal.samples), total,
            ", continuing" if journal.samples else "",
        )  # fmt: skip
        server = _progress_server(config, tally, environ)
        try:
            _work(config, prompts, model, client, retrier, journal, tally, stopping)
            tally.finalizing = True
            tally.maybe_log(force=True)
            result = _finalize(config, paths, journal.ordered(), len(prompts), model)
        finally:
            journal.close()
            if server is not None:
                server.stop()
    except RunFailed as failed:
        result = GeneratorResult(status="Failed", reason=failed.reason.value, message=str(failed))
        if tally is not None:
            progress = tally.snapshot()
            result.prompts_total, result.prompts_done = progress.prompts_total, progress.prompts_done
            result.samples_total, result.samples_kept = progress.samples_total, progress.samples_kept
            result.dropped, result.tokens_generated = progress.dropped, progress.tokens_generated
    result.runtime_seconds = time.monotonic() - started
    return result


def probe_body(model: str) -> dict[str, Any]:
    """The request that tells whether the teacher answers at all: one token, no tools, no thinking."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Reply with OK."}],
        "max_tokens": 1,
        "temperature": 0,
        "stream": False,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def _teacher_model(config: GeneratorConfig, client: TeacherClient, retrier: Retrier) -> str:
    if config.teacher.model:
        return str(config.teacher.model)
    try:
        models: list[str] = retrier.call(client.list_models)
    except TeacherError as exc:
        raise _fatal(exc) from None
    except DeadlineExceeded as exc:
        raise RunFailed(
            ResultReason.deadline_exceeded, f"the deadline passed before the teacher listed its models: {exc or 'no answer'}"
        ) from None
    except (GiveUp, Stopped) as exc:
        raise RunFailed(ResultReason.config_error, f"the teacher's model list could not be read: {exc}") from None
    if len(models) != 1:
        raise RunFailed(
            ResultReason.config_error,
            f"{config.teacher.base_url}/models lists {len(models)} models ({', '.join(models) or 'none'}); "
            "name the one to use in spec.teacher.model",
        )
    return str(models[0])


def _fatal(exc: TeacherError) -> RunFailed:
    if exc.status in (401, 403):
        return RunFailed(ResultReason.teacher_unauthorized, f"{exc}; check spec.teacher.apiKeySecret (the Secret's key holds the teacher's API key)")
    return RunFailed(
        ResultReason.teacher_endpoint_not_found,
        f"{exc}; check spec.teacher (a url must be the OpenAI-compatible base ending in /v1, and model one it serves)",
    )


def _progress_server(config: GeneratorConfig, tally: Tally, environ: Mapping[str, str]) -> ProgressServer | None:
    if not config.runtime.metrics_port:
        return None
    address = environ.get(POD_IP_ENV) or "127.0.0.1"
    server = ProgressServer(address, config.runtime.metrics_port, tally, config.dataset.name, config.dataset.namespace, config.dataset.uid)
    return server if server.start() else None


def _work(
    config: GeneratorConfig,
    prompts: list[Prompt],
    model: str,
    client: TeacherClient,
    retrier: Retrier,
    journal: Journal,
    tally: Tally,
    stopping: threading.Event,
) -> None:
    """Make every sample the journal lacks, `max_concurrency` requests at a time."""
    pending: Iterator[tuple[Prompt, int]] = (
        (prompt, s) for prompt in prompts for s in range(config.samples_per_prompt) if not journal.done((prompt.index, s))
    )
    lock = threading.Lock()
    failures: list[RunFailed] = []

    def chat(body: dict[str, Any]) -> Any:
        return retrier.call(lambda timeout_s: client.chat(body, timeout_s))

    def worker() -> None:
        while not stopping.is_set():
            with lock:
                item = next(pending, None)
            if item is None:
                return
            prompt, index = item
            try:
                sample = generate_sample(prompt, index, config, model, chat)
            except GiveUp as exc:
                sample = Sample(prompt.index, index, drop=exc.reason, detail=str(exc))
            except Stopped:
                return
            except DeadlineExceeded as exc:
                failures.append(_deadline(config, tally, str(exc)))
                stopping.set()
                return
            except TeacherError as exc:
                failures.append(_fatal(exc))
                stopping.set()
                return
            except Exception as exc:
                log.exception("sample %d of prompt %s failed", index, prompt.id)
                failures.append(RunFailed(ResultReason.generator_error, f"{type(exc).__name__}: {exc}"))
                stopping.set()
                return
            if journal.append(sample):
                tally.add(sample)
            tally.maybe_log()

    workers = [threading.Thread(target=worker, name=f"generator-{n}", daemon=True) for n in range(config.max_concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if failures:
        raise failures[0]
    if stopping.is_set():
        raise RunFailed(ResultReason.generator_error, "the generator was stopped (SIGTERM) before every sample was done")


def _deadline(config: GeneratorConfig, tally: Tally, last_error: str) -> RunFailed:
    progress = tally.snapshot()
    cause = f"the teacher's last error: {last_error}" if last_error else "no request failed; the teacher was too slow"
    return RunFailed(
        ResultReason.deadline_exceeded,
        f"spec.deadlineSeconds passed with {progress.prompts_done} of {progress.prompts_total} prompts done "
        f"({progress.samples_done} of {progress.samples_total} samples); {cause} ({config.teacher.base_url}). "
        "The journal keeps the finished samples: a new SyntheticDataset with the same prompts, settings and output continues from them",
    )


def deduplicate(samples: list[Sample], mode: Deduplication, threshold: float) -> tuple[list[Sample], Counter[str]]:
    """The samples to write, in order, and the duplicates found per reason (the first of a group stays)."""
    seen: set[str] = set()
    near = NearDuplicates(threshold) if mode is Deduplication.near else None
    kept: list[Sample] = []
    duplicates: Counter[str] = Counter()
    for sample in samples:
        if sample.record is None:
            continue
        if mode is not Deduplication.none:
            key = exact_key(sample.record)
            if key in seen:
                duplicates[DropReason.duplicate.value] += 1
                continue
            seen.add(key)
        if near is not None and near.is_duplicate(comparable_text(sample.record)):
            duplicates[DropReason.near_duplicate.value] += 1
            continue
        kept.append(sample)
    return kept, duplicates


def _finalize(config: GeneratorConfig, paths: Paths, samples: list[Sample], prompts_total: int, model: str) -> GeneratorResult:
    """Deduplicate, write the output (renamed into place when complete), the report and the histogram."""
    kept, duplicates = deduplicate(samples, config.filters.deduplicate, config.filters.near_duplicate_threshold)
    dropped = Counter(s.drop for s in samples if s.drop is not None) + duplicates
    if not kept:
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "none made"
        example = next((s.detail for s in samples if s.detail), "")
        raise RunFailed(
            ResultReason.no_sample_kept,
            f"every one of the {len(samples)} samples was dropped ({summary})" + (f"; e.g. {example}" if example else "")
            + "; see spec.filters and the teacher's answers",
        )
    digest = hashlib.sha256()
    paths.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.output.with_name(paths.output.name + ".tmp")
    with tmp.open("wb") as handle:
        for sample in kept:
            line = (json.dumps(sample.record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            digest.update(line)
            handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, paths.output)
    _fsync_dir(paths.output.parent)
    lengths = [s.length_tokens for s in kept if s.length_tokens is not None]
    report = build_report(
        samples, kept, dict(dropped),
        {"output": paths.output_uri, "sha256": digest.hexdigest(), "teacher": config.teacher.base_url, "model": model},
    )  # fmt: skip
    write_json(paths.report, report)
    stats = length_stats(lengths)
    title = f"{len(kept)} samples; median {stats.get('p50', '-')} tokens, p99 {stats.get('p99', '-')}"
    has_histogram = write_histogram(paths.histogram, lengths, title)
    return GeneratorResult(
        status="Succeeded",
        prompts_total=prompts_total,
        prompts_done=prompts_total,
        samples_total=len(samples),
        samples_kept=len(kept),
        dropped=dict(dropped),
        tokens_generated=sum(s.completion_tokens for s in samples),
        output_uri=paths.output_uri,
        sha256=digest.hexdigest(),
        size_bytes=paths.output.stat().st_size,
        report_uri=paths.report_uri,
        histogram_uri=paths.histogram_uri if has_histogram else "",
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


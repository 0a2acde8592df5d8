"""The generator's progress: counted here, served at /metrics on the pod's IP, logged for people.

The operator reads the page (format: `glmops.contract.synthetic.render_generator_metrics`); the log
gets a line at most every `LOG_INTERVAL_SECONDS` and is never read by the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from glmops.contract.synthetic import GeneratorProgress, render_generator_metrics
from glmops_trainer.generate.traces import Sample
from glmops_trainer.metrics_page import PageServer

log = logging.getLogger(__name__)
LOG_INTERVAL_SECONDS = 10.0


class Tally:
    """Counts of the run (samples from the journal included), safe to update from worker threads."""

    def __init__(self, prompts_total: int, samples_per_prompt: int, retries: Callable[[], int] = lambda: 0) -> None:
        self.prompts_total = prompts_total
        self.samples_per_prompt = samples_per_prompt
        self._lock = threading.Lock()
        self._per_prompt: Counter[int] = Counter()
        self.kept = 0
        self.dropped: Counter[str] = Counter()
        self.tokens = 0
        self._retries = retries
        self.finalizing = False
        self._last_log = 0.0

    def add(self, sample: Sample) -> None:
        """Count one finished sample."""
        with self._lock:
            self._per_prompt[sample.prompt_index] += 1
            if sample.drop is None:
                self.kept += 1
            else:
                self.dropped[sample.drop] += 1
            self.tokens += sample.completion_tokens

    def snapshot(self) -> GeneratorProgress:
        """The progress now."""
        with self._lock:
            done = sum(1 for n in self._per_prompt.values() if n >= self.samples_per_prompt)
            return GeneratorProgress(
                prompts_total=self.prompts_total,
                prompts_done=done,
                samples_total=self.prompts_total * self.samples_per_prompt,
                samples_done=sum(self._per_prompt.values()),
                samples_kept=self.kept,
                dropped=dict(self.dropped),
                tokens_generated=self.tokens,
                retries=self._retries(),
                time_unix=time.time(),
                finalizing=self.finalizing,
            )

    def maybe_log(self, force: bool = False) -> None:
        """A progress line for people, at most every LOG_INTERVAL_SECONDS."""
        now = time.monotonic()
        if not force and now - self._last_log < LOG_INTERVAL_SECONDS:
            return
        self._last_log = now
        p = self.snapshot()
        drops = ", ".join(f"{k} {v}" for k, v in sorted(p.dropped.items())) or "none"
        log.info(
            "prompts %d/%d, samples %d/%d, kept %d, dropped: %s; %d tokens, %d retries",
            p.prompts_done, p.prompts_total, p.samples_done, p.samples_total, p.samples_kept, drops, p.tokens_generated, p.retries,
        )  # fmt: skip


class ProgressServer:
    """Serves the tally at /metrics from a daemon thread; a port that cannot be bound is logged and skipped."""

    def __init__(self, address: str, port: int, tally: Tally, dataset: str, namespace: str, uid: str) -> None:
        self.address, self.port = address, port
        self.tally = tally
        self.identity = (dataset, namespace, uid)
        self._http: PageServer | None = None

    def page(self) -> str:
        """The current metrics page."""
        return render_generator_metrics(self.tally.snapshot(), *self.identity)

    def start(self) -> bool:
        """Bind and serve in the background; whether the endpoint is up."""
        self._http = PageServer(self.address, self.port, self.page, "glmops-generator-metrics")
        served = self._http.start()
        self.port = self._http.port
        return served

    def stop(self) -> None:
        """Stop serving."""
        if self._http is not None:
            self._http.stop()
            self._http = None

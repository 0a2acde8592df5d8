"""The operator's Prometheus metrics, served at `/metrics` on `GLMOPS_METRICS_PORT` (default 8080).

Two kinds of series:

- *What the operator does*, counted where it happens: reconciles, reconciles that failed, and
  how long a reconcile took, per kind (`FineTuneJob`, `ModelDeployment`). The handlers wrap their
  one reconcile function in :func:`reconciling`.
- *What the cluster holds*, computed at scrape time from the operator's own kopf indexes (fed by
  the watches it has anyway, so a scrape makes no API request): jobs per namespace and phase,
  the progress of every training job, deployments per phase and their ready replicas.

Names follow Prometheus conventions (`_total` counters, `_seconds` units); the label `namespace`
is the resource's namespace, as in kube-state-metrics (a ServiceMonitor scraping the operator
keeps it with `honorLabels: true`). Every operator replica serves its own page; with leader
election the standby's indexes may lag, so dashboards take `max by (...)` over replicas.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

FINETUNEJOB = "FineTuneJob"
MODELDEPLOYMENT = "ModelDeployment"
ALL = "all"
"""The one key of the summary indexes: every object's summary is a value under it."""

# Reconciles take milliseconds when nothing changes and seconds when the API is slow or a child
# is created; the buckets cover both ends.
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FINETUNEJOB_PHASES = ("Pending", "Validating", "Training", "Exporting", "Succeeded", "Failed", "Cancelled")
MODELDEPLOYMENT_PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")


class JobSummary(NamedTuple):
    """What the metrics need of one FineTuneJob (a value of the `ftj_summaries` index)."""

    namespace: str
    name: str
    phase: str
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


class DeploymentSummary(NamedTuple):
    """What the metrics need of one ModelDeployment (a value of the `mdep_summaries` index)."""

    namespace: str
    name: str
    phase: str
    ready: bool
    ready_replicas: int
    replicas: int


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def job_summary(namespace: str, name: str, status: Mapping[str, Any]) -> JobSummary:
    """The summary of a FineTuneJob from its status as the API holds it (camelCase)."""
    phase = str(status.get("phase") or "Pending")
    progress = status.get("progress") or {}
    if phase != "Training" or not isinstance(progress, Mapping):
        return JobSummary(namespace, name, phase)
    step, total = _number(progress.get("step")), _number(progress.get("totalSteps"))
    return JobSummary(
        namespace, name, phase,
        step=None if step is None else int(step),
        total_steps=None if total is None else int(total),
        loss=_number(progress.get("loss")),
        tokens_per_second=_number(progress.get("tokensPerSecond")),
        eta_seconds=_number(progress.get("etaSeconds")),
    )  # fmt: skip


def deployment_summary(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> DeploymentSummary:
    """The summary of a ModelDeployment from its spec and status as the API holds them."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [] if isinstance(c, Mapping)
    )
    replicas = spec.get("replicas")
    return DeploymentSummary(
        namespace,
        name,
        str(status.get("phase") or "Pending"),
        ready,
        int(_number(status.get("readyReplicas")) or 0),
        int(replicas) if isinstance(replicas, int) and not isinstance(replicas, bool) else 1,
    )


def _values(index: Mapping[str, Iterable[Any]]) -> list[Any]:
    """The summaries of an index; a copy, retried when the event loop changes the index meanwhile."""
    for _ in range(3):
        try:
            return list(index.get(ALL, []))
        except RuntimeError:
            continue
    return []


@dataclass(eq=False)  # the registry keeps collectors in a dict: identity, not value
class ResourceCollector(Collector):
    """Series computed at scrape time from the summary indexes (no API request per scrape)."""

    jobs: Mapping[str, Iterable[JobSummary]]
    deployments: Mapping[str, Iterable[DeploymentSummary]]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from job_families(_values(self.jobs))
        yield from deployment_families(_values(self.deployments))


def job_families(jobs: Iterable[JobSummary]) -> list[GaugeMetricFamily]:
    """FineTuneJob series: count per namespace and phase (every phase, 0 included), and the
    progress of each job in phase Training."""
    jobs = list(jobs)
    by_phase = GaugeMetricFamily("glmops_finetunejobs", "FineTuneJobs per namespace and phase.", labels=["namespace", "phase"])
    counts: dict[tuple[str, str], int] = {}
    for job in jobs:
        counts[(job.namespace, job.phase)] = counts.get((job.namespace, job.phase), 0) + 1
    for namespace in sorted({job.namespace for job in jobs}):
        for phase in (*FINETUNEJOB_PHASES, *sorted({j.phase for j in jobs} - set(FINETUNEJOB_PHASES))):
            by_phase.add_metric([namespace, phase], counts.get((namespace, phase), 0))
    progress: list[tuple[str, str, Callable[[JobSummary], float | None]]] = [
        ("glmops_finetunejob_step", "Optimizer steps done by a training job (from its trainer's progress).", lambda j: j.step),
        ("glmops_finetunejob_total_steps", "Optimizer steps a training job will take.", lambda j: j.total_steps),
        ("glmops_finetunejob_progress_ratio", "Share of a training job's steps done (0 to 1).", _ratio),
        ("glmops_finetunejob_loss", "Train loss of a training job's most recent step.", lambda j: j.loss),
        ("glmops_finetunejob_tokens_per_second", "Tokens per second of a training job (all its GPUs).", lambda j: j.tokens_per_second),
        ("glmops_finetunejob_eta_seconds", "Estimated seconds until a training job's last step.", lambda j: j.eta_seconds),
    ]
    families = [by_phase]
    training = sorted((j for j in jobs if j.phase == "Training"), key=lambda j: (j.namespace, j.name))
    for name, help_text, value_of in progress:
        family = GaugeMetricFamily(name, help_text, labels=["namespace", "finetunejob"])
        for job in training:
            value = value_of(job)
            if value is not None:
                family.add_metric([job.namespace, job.name], value)
        families.append(family)
    return families


def _ratio(job: JobSummary) -> float | None:
    if job.step is None or not job.total_steps:
        return None
    return min(job.step / job.total_steps, 1.0)


def deployment_families(deployments: Iterable[DeploymentSummary]) -> list[GaugeMetricFamily]:
    """ModelDeployment series: count per namespace and phase, and per deployment whether it is
    Ready, its ready replicas and the replicas asked for."""
    deployments = sorted(deployments, key=lambda d: (d.namespace, d.name))
    by_phase = GaugeMetricFamily("glmops_modeldeployments", "ModelDeployments per namespace and phase.", labels=["namespace", "phase"])
    counts: dict[tuple[str, str], int] = {}
    for d in deployments:
        counts[(d.namespace, d.phase)] = counts.get((d.namespace, d.phase), 0) + 1
    for namespace in sorted({d.namespace for d in deployments}):
        for phase in (*MODELDEPLOYMENT_PHASES, *sorted({d.phase for d in deployments} - set(MODELDEPLOYMENT_PHASES))):
            by_phase.add_metric([namespace, phase], counts.get((namespace, phase), 0))
    labels = ["namespace", "modeldeployment"]
    ready = GaugeMetricFamily("glmops_modeldeployment_ready", "1 when the deployment's Ready condition is True, else 0.", labels=labels)
    ready_replicas = GaugeMetricFamily("glmops_modeldeployment_ready_replicas", "Replicas that serve requests now.", labels=labels)
    replicas = GaugeMetricFamily("glmops_modeldeployment_replicas", "Replicas the deployment asks for (spec.replicas).", labels=labels)
    for d in deployments:
        ready.add_metric([d.namespace, d.name], 1 if d.ready else 0)
        ready_replicas.add_metric([d.namespace, d.name], d.ready_replicas)
        replicas.add_metric([d.namespace, d.name], d.replicas)
    return [by_phase, ready, ready_replicas, replicas]


class OperatorMetrics:
    """The operator's registry: reconcile counters and latency, the resource series, the process."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "glmops_reconciles", "Reconciles run, by kind of resource.", ["kind"], registry=self.registry
        )
        self.reconcile_errors = Counter(
            "glmops_reconcile_errors",
            "Reconciles that ended in an error (the API failed or refused, status kept changing), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "glmops_reconcile_duration_seconds",
            "Time one reconcile took (reads, decisions, writes), by kind.",
            ["kind"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        for kind in (FINETUNEJOB, MODELDEPLOYMENT):  # series exist from the start, at 0
            self.reconciles.labels(kind)
            self.reconcile_errors.labels(kind)
            self.reconcile_seconds.labels(kind)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._server: Any = None

    def watch(self, jobs: Mapping[str, Iterable[JobSummary]], deployments: Mapping[str, Iterable[DeploymentSummary]]) -> None:
        """Serve the resource series from these indexes (kopf's `ftj_summaries`, `mdep_summaries`)."""
        self.registry.register(ResourceCollector(jobs, deployments))

    @contextmanager
    def reconcile(self, kind: str, waits: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Count and time one reconcile of `kind`; an exception other than `waits` counts as an error."""
        started = time.perf_counter()
        try:
            yield
        except waits:
            raise
        except BaseException:
            self.reconcile_errors.labels(kind).inc()
            raise
        finally:
            self.reconciles.labels(kind).inc()
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - started)

    def serve(self, address: str, port: int) -> bool:
        """Serve `/metrics` on `address:port` from a daemon thread; 0 serves nothing.

        A port that cannot be bound is logged and skipped: the operator keeps reconciling.
        """
        if not port:
            log.info("metrics endpoint off (GLMOPS_METRICS_PORT=0)")
            return False
        try:
            self._server, _thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            log.error("metrics endpoint %s:%d not served: %s; set GLMOPS_METRICS_PORT to a free port", address, port, exc)
            return False
        log.info("metrics endpoint: http://%s:%d/metrics", address, port)
        return True

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def reconciling(memo: Any, kind: str, waits: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """:meth:`OperatorMetrics.reconcile` of the operator's metrics in `memo` (nothing counted without them)."""
    metrics: OperatorMetrics | None = getattr(memo, "metrics", None)
    if metrics is None:
        yield
        return
    with metrics.reconcile(kind, waits):
        yield

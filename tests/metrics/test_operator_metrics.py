"""The operator's metrics page, read the way Prometheus reads it (prometheus_client's text parser).

Reconciles are counted and timed, failures apart from waits; the resource series come from the
summaries kopf's indexes hold, computed when the page is read.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from glmops.metrics import (
    ALL,
    DeploymentSummary,
    JobSummary,
    OperatorMetrics,
    deployment_summary,
    job_summary,
    reconciling,
)


def scrape(metrics: OperatorMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value} of every sample on the page, parsed from its text."""
    page = generate_latest(metrics.registry).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def types(metrics: OperatorMetrics) -> dict[str, str]:
    page = generate_latest(metrics.registry).decode()
    return {family.name: family.type for family in text_string_to_metric_families(page)}


class Waiting(Exception):
    pass


def test_reconciles_are_counted_and_timed_and_failures_apart_from_waits() -> None:
    metrics = OperatorMetrics(process=False)
    memo: Any = type("Memo", (), {"metrics": metrics})()

    with reconciling(memo, "FineTuneJob"):
        pass
    with pytest.raises(RuntimeError), reconciling(memo, "FineTuneJob"):
        raise RuntimeError("the API failed")
    with pytest.raises(Waiting), reconciling(memo, "ModelDeployment", waits=(Waiting,)):
        raise Waiting("a PVC to appear")

    page = scrape(metrics)
    assert page["glmops_reconciles_total"] == {(("kind", "FineTuneJob"),): 2, (("kind", "ModelDeployment"),): 1}
    assert page["glmops_reconcile_errors_total"] == {(("kind", "FineTuneJob"),): 1, (("kind", "ModelDeployment"),): 0}
    assert page["glmops_reconcile_duration_seconds_count"][(("kind", "FineTuneJob"),)] == 2
    assert page["glmops_reconcile_duration_seconds_count"][(("kind", "ModelDeployment"),)] == 1
    assert types(metrics)["glmops_reconciles"] == "counter"
    assert types(metrics)["glmops_reconcile_duration_seconds"] == "histogram"


def test_a_memo_without_metrics_still_reconciles() -> None:
    ran = []
    with reconciling(object(), "FineTuneJob"):
        ran.append(True)
    assert ran == [True]


def test_jobs_are_counted_per_namespace_and_phase_with_every_phase_present() -> None:
    metrics = OperatorMetrics(process=False)
    jobs = {ALL: [JobSummary("ml", "a", "Training", 5, 20, 1.25, 300.0, 45.0), JobSummary("ml", "b", "Succeeded"),
                  JobSummary("ml", "c", "Succeeded"), JobSummary("team-b", "d", "Pending")]}  # fmt: skip
    metrics.watch(jobs, {ALL: []})

    page = scrape(metrics)
    by_phase = page["glmops_finetunejobs"]
    assert by_phase[(("namespace", "ml"), ("phase", "Succeeded"))] == 2
    assert by_phase[(("namespace", "ml"), ("phase", "Training"))] == 1
    assert by_phase[(("namespace", "ml"), ("phase", "Failed"))] == 0  # present at 0: a dashboard sums it
    assert by_phase[(("namespace", "team-b"), ("phase", "Pending"))] == 1
    assert len(by_phase) == 2 * 7
    # Progress only for the training job, labelled with its name.
    key = (("finetunejob", "a"), ("namespace", "ml"))
    assert page["glmops_finetunejob_step"] == {key: 5}
    assert page["glmops_finetunejob_total_steps"] == {key: 20}
    assert page["glmops_finetunejob_progress_ratio"] == {key: 0.25}
    assert page["glmops_finetunejob_loss"] == {key: 1.25}
    assert page["glmops_finetunejob_tokens_per_second"] == {key: 300.0}
    assert page["glmops_finetunejob_eta_seconds"] == {key: 45.0}

    # The page is computed when read: a job that moves on moves on the page.
    jobs[ALL][0] = JobSummary("ml", "a", "Exporting")
    page = scrape(metrics)
    assert page["glmops_finetunejobs"][(("namespace", "ml"), ("phase", "Training"))] == 0
    assert "glmops_finetunejob_step" not in page


def test_job_summary_reads_progress_only_while_training() -> None:
    status = {"phase": "Training", "progress": {"step": 3, "totalSteps": 40, "loss": 2.5, "tokensPerSecond": 99.5, "etaSeconds": 12}}
    assert job_summary("ml", "a", status) == JobSummary("ml", "a", "Training", 3, 40, 2.5, 99.5, 12.0)
    assert job_summary("ml", "a", {**status, "phase": "Succeeded"}) == JobSummary("ml", "a", "Succeeded")
    assert job_summary("ml", "new", {}) == JobSummary("ml", "new", "Pending")  # no status yet
    odd = {"phase": "Training", "progress": {"step": "3", "loss": float("nan")}}
    assert job_summary("ml", "a", odd) == JobSummary("ml", "a", "Training")  # never trusted beyond numbers


def test_deployments_ready_and_their_replicas() -> None:
    metrics = OperatorMetrics(process=False)
    serving = {"phase": "Ready", "readyReplicas": 2, "conditions": [{"type": "Ready", "status": "True"}]}
    waiting = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}
    deployments = [
        deployment_summary("ml", "coder", {"replicas": 2}, serving),
        deployment_summary("ml", "next", {}, waiting),
    ]
    assert deployments[1] == DeploymentSummary("ml", "next", "Pending", False, 0, 1)  # replicas default 1
    metrics.watch({ALL: []}, {ALL: deployments})

    page = scrape(metrics)
    assert page["glmops_modeldeployments"][(("namespace", "ml"), ("phase", "Ready"))] == 1
    assert page["glmops_modeldeployments"][(("namespace", "ml"), ("phase", "Pending"))] == 1
    assert page["glmops_modeldeployment_ready"] == {
        (("modeldeployment", "coder"), ("namespace", "ml")): 1, (("modeldeployment", "next"), ("namespace", "ml")): 0
    }
    assert page["glmops_modeldeployment_ready_replicas"][(("modeldeployment", "coder"), ("namespace", "ml"))] == 2
    assert page["glmops_modeldeployment_replicas"][(("modeldeployment", "coder"), ("namespace", "ml"))] == 2


def test_the_endpoint_serves_the_page_and_a_taken_port_is_survived() -> None:
    import socket
    import urllib.request

    metrics = OperatorMetrics()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert metrics.serve("127.0.0.1", taken.getsockname()[1]) is False  # logged; the operator goes on
    assert metrics.serve("127.0.0.1", 0) is False  # 0: off
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert metrics.serve("127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            page = response.read().decode()
        names = {family.name for family in text_string_to_metric_families(page)}
        assert {"glmops_reconciles", "process_resident_memory_bytes"} <= names
    finally:
        metrics.stop()

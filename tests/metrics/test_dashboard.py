"""The Grafana dashboard asks only for series the operator and the trainer serve, and is well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import parse_page
from prometheus_client import generate_latest

from glmops.contract.records import ProgressRecord, render_metrics
from glmops.metrics import ALL, DeploymentSummary, JobSummary, OperatorMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "glmops.json"
SERIES = re.compile(r"\b((?:glmops|process)_[a-z0-9_]+)\b")


def _served_series() -> set[str]:
    """Every sample name the two endpoints serve, with a training job and a deployment in view."""
    metrics = OperatorMetrics()
    metrics.watch(
        {ALL: [JobSummary("ml", "coder", "Training", 1, 10, 2.0, 100.0, 60.0)]},
        {ALL: [DeploymentSummary("ml", "coder", "Ready", True, 1, 1)]},
    )
    operator, _ = parse_page(generate_latest(metrics.registry).decode())
    trainer, _ = parse_page(render_metrics(ProgressRecord(step=1, total_steps=10, loss=2.0), "coder", "ml", "uid"))
    return set(operator) | set(trainer)


def _expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_series_the_dashboard_queries_is_served() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for expr in _expressions(dashboard) for name in SERIES.findall(expr)}
    queried |= set(SERIES.findall(json.dumps(dashboard["templating"])))
    missing = queried - _served_series()
    assert queried and missing == set(), f"the dashboard queries series nobody serves: {sorted(missing)}"


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "glmops-overview" and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]  # no data source of one installation
            assert panel["targets"], panel["title"]
    # Rates over counters, quantiles over the histogram's buckets.
    expressions = _expressions(dashboard)
    assert any("rate(glmops_reconciles_total" in e for e in expressions)
    assert any("histogram_quantile" in e and "glmops_reconcile_duration_seconds_bucket" in e for e in expressions)

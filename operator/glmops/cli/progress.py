"""How jobs and deployments look in a terminal: progress bars, durations, aligned tables.

Pure functions of the resources as the API returns them (camelCase status), shared by
`kubectl glmops status|watch` and the demo. Bars are plain ASCII so they draw the same in any
terminal and locale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

BAR_WIDTH = 24
TERMINAL_PHASES = ("Succeeded", "Failed", "Cancelled")


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """`[#########---------------]` filled to `fraction` (clamped to 0..1)."""
    fraction = 0.0 if math.isnan(fraction) else min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def duration(seconds: float | None) -> str:
    """`1h02m`, `4m05s`, `12s`; `-` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = max(round(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def eta_now(progress: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """The trainer's ETA counted down from when it was reported (`updatedAt`), so it moves between reports."""
    eta = _number(progress.get("etaSeconds"))
    if eta is None:
        return None
    reported = _parse_time(progress.get("updatedAt"))
    if reported is None:
        return eta
    elapsed = ((now or datetime.now(UTC)) - reported).total_seconds()
    return max(eta - max(elapsed, 0.0), 0.0)


def progress_text(job: Mapping[str, Any], width: int = BAR_WIDTH, now: datetime | None = None) -> str:
    """One line of a job's progress: bar, steps, percent, loss, throughput and ETA while it trains;
    the phase's own words otherwise."""
    status = job.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    progress = status.get("progress") or {}
    step, total = _number(progress.get("step")), _number(progress.get("totalSteps"))
    if phase == "Training" and step is not None and total:
        parts = [bar(step / total, width), f"{int(step)}/{int(total)}", f"{int(100 * step / total):3d}%"]
        loss = _number(progress.get("loss"))
        parts.append(f"loss {loss:.4f}" if loss is not None else "loss -")
        rate = _number(progress.get("tokensPerSecond"))
        if rate is not None:
            parts.append(f"{rate:,.0f} tok/s")
        parts.append(f"ETA {duration(eta_now(progress, now))}")
        return "  ".join(parts)
    if phase == "Training":
        return bar(0.0, width) + "  starting"
    if phase == "Exporting":
        return bar(1.0, width) + "  trained; exporting"
    if phase == "Succeeded":
        loss = _number(progress.get("loss"))
        return bar(1.0, width) + "  done" + (f"  loss {loss:.4f}" if loss is not None else "")
    reason = _succeeded_condition(status)
    return (reason.get("reason") or phase) if phase in ("Pending", "Failed", "Cancelled", "Validating") else phase


def _succeeded_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Succeeded":
            return condition
    return {}


def job_message(job: Mapping[str, Any]) -> str:
    """The `Succeeded` condition's message: why a job waits, failed or was cancelled."""
    return str(_succeeded_condition(job.get("status") or {}).get("message") or "")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows aligned under their headers, two spaces apart, as kubectl prints them."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in (headers, *rows)]
    return "\n".join(lines)


def job_rows(jobs: Sequence[Mapping[str, Any]], with_namespace: bool, now: datetime | None = None) -> list[list[str]]:
    """`NAMESPACE? NAME PHASE PROGRESS` rows of FineTuneJobs."""
    rows = []
    for job in jobs:
        meta = job.get("metadata") or {}
        row = [str(meta.get("namespace"))] if with_namespace else []
        row += [str(meta.get("name")), str((job.get("status") or {}).get("phase") or "Pending"), progress_text(job, now=now)]
        rows.append(row)
    return rows


def deployment_rows(deployments: Sequence[Mapping[str, Any]], with_namespace: bool) -> list[list[str]]:
    """`NAMESPACE? NAME PHASE READY RUNTIME ENDPOINT` rows of ModelDeployments."""
    rows = []
    for deployment in deployments:
        meta, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
        row = [str(meta.get("namespace"))] if with_namespace else []
        ready = status.get("ready") or f"{int(_number(status.get('readyReplicas')) or 0)}/{spec.get('replicas', 1)}"
        row += [
            str(meta.get("name")),
            str(status.get("phase") or "Pending"),
            str(ready),
            str(spec.get("runtime") or "llamacpp"),
            str(status.get("endpoint") or "-"),
        ]
        rows.append(row)
    return rows

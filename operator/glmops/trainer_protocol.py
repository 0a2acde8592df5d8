"""What the operator reads from a trainer pod: progress lines in its log and its final result.

The trainer prints `GLMOPS_PROGRESS {json}` lines (docs/trainer.md) and writes a JSON result as
its termination message. The operator parses both here, without importing the trainer (that
would pull torch into the operator); a contract test checks the two sides agree. Pure.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from glmops.api.finetunejob import ArtifactRef, Artifacts, GgufArtifact, Progress, Quantization

PROGRESS_MARKER = "GLMOPS_PROGRESS "
SUPPORTED_VERSION = 1


def last_progress(log_text: str) -> Progress | None:
    """The newest well-formed progress report in a log excerpt, as status.progress."""
    for line in reversed(log_text.splitlines()):
        index = line.find(PROGRESS_MARKER)
        if index < 0:
            continue
        try:
            raw = json.loads(line[index + len(PROGRESS_MARKER) :])
        except json.JSONDecodeError:
            continue  # a line cut by the log tail; an older one will do
        if isinstance(raw, dict) and raw.get("v") == SUPPORTED_VERSION:
            return progress_from_event(raw)
    return None


def progress_from_event(raw: dict[str, Any]) -> Progress:
    """Map one progress event (camelCase JSON) onto the status model."""
    step = int(raw.get("step") or 0)
    total = int(raw.get("totalSteps") or 0)
    eta = raw.get("etaSeconds")
    when = raw.get("time")
    return Progress(
        step=step,
        total_steps=total,
        percent=min(100, (100 * step) // total) if total else 0,
        epoch=raw.get("epoch"),
        loss=_round(raw.get("loss")),
        eval_loss=_round(raw.get("evalLoss")),
        learning_rate=raw.get("learningRate"),
        tokens_per_second=raw.get("tokensPerSecond"),
        eta_seconds=int(eta) if isinstance(eta, (int, float)) and eta >= 0 else None,
        updated_at=datetime.fromtimestamp(when, UTC) if isinstance(when, (int, float)) else None,
    )


def _round(value: object) -> float | None:
    return round(float(value), 4) if isinstance(value, (int, float)) else None


def artifacts_from_manifest(manifest: dict[str, Any]) -> Artifacts:
    """status.artifacts from the trainer's artifacts.json (or the copy in its result)."""
    artifacts = Artifacts(manifest=manifest.get("manifest"))
    for entry in manifest.get("artifacts", []):
        fmt = entry.get("format")
        ref = {"uri": entry["uri"], "size_bytes": entry.get("sizeBytes"), "sha256": entry.get("sha256")}
        if fmt == "adapter":
            artifacts.adapter = ArtifactRef(**ref)
        elif fmt == "merged":
            artifacts.merged = ArtifactRef(**ref)
        elif fmt == "gguf" and entry.get("quantization") in Quantization.__members__:
            artifacts.gguf.append(GgufArtifact(quantization=Quantization(entry["quantization"]), **ref))
    return artifacts


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The trainer's result JSON from a container's termination message, if it is one."""
    if not message:
        return None
    try:
        raw = json.loads(message)
    except json.JSONDecodeError:
        return None
    return raw if isinstance(raw, dict) else None

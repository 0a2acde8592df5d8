"""What the operator reads from a trainer pod: progress lines in its log and its final result.

The trainer prints `GLMOPS_PROGRESS {json}` lines (docs/trainer.md) and writes a JSON result as
its termination message. The operator parses both here, without importing the trainer (that
would pull torch into the operator); a contract test checks the two sides agree. Pure.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from glmops.api.finetunejob import (
    ArtifactRef,
    Artifacts,
    GgufArtifact,
    MergedArtifact,
    Progress,
    Quantization,
)

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


def artifacts_from_result(raw: dict[str, Any]) -> Artifacts:
    """status.artifacts from the `artifacts` object of the trainer's result (docs/trainer.md)."""

    def ref(value: object) -> ArtifactRef | None:
        if isinstance(value, str):
            return ArtifactRef(uri=value)
        if isinstance(value, dict) and isinstance(value.get("uri"), str):
            return ArtifactRef(uri=value["uri"], size_bytes=value.get("sizeBytes"), sha256=value.get("sha256"))
        return None

    def merged_ref(value: object) -> MergedArtifact | None:
        found = ref(value)
        if found is None:
            return None
        # How many MTP layers the merged checkpoint kept; unknown (None) from exports that did not say.
        mtp = value.get("mtpLayers") if isinstance(value, dict) else None
        known = isinstance(mtp, int) and not isinstance(mtp, bool) and mtp >= 0
        return MergedArtifact(**found.model_dump(), mtp_layers=mtp if known else None)

    gguf = [
        GgufArtifact(
            quantization=Quantization(entry["quantization"]),
            uri=entry["uri"],
            size_bytes=entry.get("sizeBytes"),
            sha256=entry.get("sha256"),
        )
        for entry in raw.get("gguf") or []
        if isinstance(entry, dict) and entry.get("quantization") in Quantization.__members__ and entry.get("uri")
    ]
    manifest = raw.get("manifest")
    return Artifacts(
        manifest=manifest if isinstance(manifest, str) else None,
        adapter=ref(raw.get("adapter")),
        merged=merged_ref(raw.get("merged")),
        gguf=gguf,
    )


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The trainer's result JSON from a container's termination message, if it is one."""
    if not message:
        return None
    try:
        raw = json.loads(message)
    except json.JSONDecodeError:
        return None
    return raw if isinstance(raw, dict) else None

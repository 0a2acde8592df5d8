"""The trainer's records (glmops.contract.records) mapped onto FineTuneJob status. Pure.

The records have one definition, shared with the trainer; this module only turns them into the
API's status models (progress with a percentage, artifacts with their sizes and digests).
"""

from __future__ import annotations

from collections.abc import Iterable
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
from glmops.contract.records import ProgressRecord, ResultRecord


def progress_from_record(record: ProgressRecord) -> Progress:
    """status.progress from a progress record."""
    total = record.total_steps
    return Progress(
        step=record.step,
        total_steps=total,
        percent=min(100, (100 * record.step) // total) if total else 0,
        epoch=None if record.epoch is None else round(record.epoch, 4),
        loss=_round(record.loss),
        eval_loss=_round(record.eval_loss),
        learning_rate=record.learning_rate,
        tokens_per_second=None if record.tokens_per_second is None else round(record.tokens_per_second, 1),
        eta_seconds=int(record.eta_seconds) if record.eta_seconds is not None and record.eta_seconds >= 0 else None,
        updated_at=datetime.fromtimestamp(record.time_unix, UTC) if record.time_unix > 0 else None,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def artifacts_from_results(results: Iterable[ResultRecord]) -> Artifacts:
    """status.artifacts from the results of the run's pods (the trainer's, then the export's, which wins)."""
    merged: dict[str, Any] = {}
    for result in results:
        if result.status == "Succeeded":
            merged.update(result.artifacts)
    return artifacts_from_result(merged)


def artifacts_from_result(raw: dict[str, Any]) -> Artifacts:
    """status.artifacts from the `artifacts` object of a result (docs/trainer.md)."""

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

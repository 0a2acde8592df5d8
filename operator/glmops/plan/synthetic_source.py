"""A FineTuneJob's `dataset.source: synthetic://NAME`: the SyntheticDataset's output, or why not yet. Pure.

The job waits (Pending, `Validated=False` with reason SyntheticDatasetNotReady or
SyntheticDatasetNotFound) until the dataset is Ready, then trains on the output file its status
names. A Failed dataset fails the job (reason SyntheticDatasetFailed, the dataset's own reason
and message quoted). The source is resolved once, when the trainer is created: the dataset's
output and the trainer config do not change afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glmops.conditions import Reason
from glmops.contract.uris import synthetic_name
from glmops.plan.problems import Problem

FIELD = "spec.dataset.source"


def resolve_dataset_source(source: str, namespace: str, dataset: Mapping[str, Any] | None) -> tuple[str | None, Problem | None]:
    """(the file to train on, None), or (None, the problem): `dataset` is the SyntheticDataset a
    synthetic:// source names, as read (None: it does not exist). Other sources pass through."""
    name = synthetic_name(source)
    if name is None:
        return source, None
    if dataset is None:
        return None, Problem(
            Reason.synthetic_dataset_not_found, FIELD,
            f"SyntheticDataset {name!r} does not exist in namespace {namespace}; the job waits for it and trains once "
            "it is Ready (or fix the name)",
        )  # fmt: skip
    status = dataset.get("status") or {}
    phase = status.get("phase") or "Pending"
    ready: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    output = status.get("output") or {}
    if phase == "Ready" and output.get("uri"):
        return str(output["uri"]), None
    if phase == "Failed":
        return None, Problem(
            Reason.synthetic_dataset_failed, FIELD,
            f"SyntheticDataset {name!r} failed ({ready.get('reason') or 'Failed'}): {ready.get('message') or 'see its status'}; "
            "fix it and create a new SyntheticDataset, then a new FineTuneJob",
        )  # fmt: skip
    progress = status.get("progress") or {}
    done = f" ({progress.get('promptsDone', 0)}/{progress.get('promptsTotal', '?')} prompts, {progress.get('samplesKept', 0)} samples kept)" if progress else ""
    return None, Problem(
        Reason.synthetic_dataset_not_ready, FIELD,
        f"SyntheticDataset {name!r} is {phase}{done}; training starts once it is Ready",
    )  # fmt: skip

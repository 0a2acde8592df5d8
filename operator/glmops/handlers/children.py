"""What the FineTuneJob and SyntheticDataset handlers share about the Jobs and pods they own."""

from __future__ import annotations

from typing import Any

import kopf


def pod_news(status: kopf.Status, **_: Any) -> bool:
    """Pod events worth a look (a kopf `when=` filter): it runs or ended, or the scheduler cannot place it.

    A pending pod's other updates (image pulls, conditions being added) change nothing the owner
    reports, and in a burst of new jobs they are most of the pod events.
    """
    if status.get("phase") not in (None, "Pending"):
        return True
    return any(c.get("reason") == "Unschedulable" for c in status.get("conditions") or [])


def owner_name(body: kopf.Body, label: str) -> str:
    """The name of the object that owns a child, from the child's `label` ("" if it carries none)."""
    return str((body.get("metadata", {}).get("labels") or {}).get(label, ""))

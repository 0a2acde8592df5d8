"""What the planners report when a resource cannot run as written. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from glmops.conditions import Reason

WAITING_REASONS = frozenset(
    {
        Reason.secret_not_found,
        Reason.pvc_not_found,
        Reason.teacher_not_found,
        Reason.teacher_not_ready,
        Reason.synthetic_dataset_not_found,
        Reason.synthetic_dataset_not_ready,
    }
)
"""Problems that the cluster, not the spec, must fix: the resource waits for the object instead of failing."""


@dataclass(frozen=True)
class Problem:
    """A reason the resource cannot run as written: which field, why, and how to fix it."""

    reason: str
    field: str
    message: str

    @property
    def waits(self) -> bool:
        """Whether the resource waits for this to be fixed (a missing PVC or Secret) rather than failing."""
        return self.reason in WAITING_REASONS

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

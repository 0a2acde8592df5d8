"""Which parts of a FineTuneJob's spec changed, from kopf's diff of the last-handled spec."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

IMMUTABLE_SECTIONS = ("model", "dataset", "training")
"""What a running trainer was started with; changing it would not reach the trainer."""

DiffOp = tuple[str, Sequence[Any], Any, Any]


def changed_immutable_sections(diff: Iterable[DiffOp]) -> list[str]:
    """The immutable spec sections that `diff` touches, sorted.

    kopf reports paths relative to a handler's `field=`: ('training', 'epochs') for a handler
    on `spec`, ('spec', 'training', 'epochs') for one on the whole object. A change higher up
    (the whole spec set at once) carries the old and new dicts, which are compared per section.
    """
    changed: set[str] = set()
    for _op, path, old, new in diff:
        steps = list(path)
        if steps and steps[0] == "spec":
            steps = steps[1:]
        if steps:
            if steps[0] in IMMUTABLE_SECTIONS:
                changed.add(str(steps[0]))
            continue
        before, after = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
        if "spec" in before or "spec" in after:  # the whole object changed
            before, after = before.get("spec") or {}, after.get("spec") or {}
        changed.update(s for s in IMMUTABLE_SECTIONS if before.get(s) != after.get(s))
    return sorted(changed)

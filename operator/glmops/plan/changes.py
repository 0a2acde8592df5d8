"""Which parts of a FineTuneJob's spec changed since its trainer was created. Pure.

The trainer Job carries a hash of every immutable section of the spec it was made from
(annotation `glmops.io/spec-sections`). Comparing the current spec with those hashes says what
changed, whatever happened in between: an operator restart, an edit made while it was down, or
a change that was later reverted (which clears the refusal again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from glmops.api.finetunejob import FineTuneJobSpec

IMMUTABLE_SECTIONS = ("model", "dataset", "training", "resources", "output")
"""What a running trainer was started with: changing it would not reach the trainer (resources:
its pods are placed; output: it writes there, and the export follows it)."""


def spec_section_hashes(spec: FineTuneJobSpec) -> dict[str, str]:
    """A short hash of each immutable section, as the API model serialises it (defaults included)."""
    wire = spec.to_wire()
    return {
        section: hashlib.sha256(json.dumps(wire.get(section), sort_keys=True).encode()).hexdigest()[:16]
        for section in IMMUTABLE_SECTIONS
    }


def changed_sections(created_from: Mapping[str, str], spec: FineTuneJobSpec) -> list[str]:
    """The immutable sections whose hash differs from the ones the trainer was created from, sorted.

    A section missing from `created_from` (a trainer made by an older operator) counts as unchanged.
    """
    now = spec_section_hashes(spec)
    return sorted(s for s in IMMUTABLE_SECTIONS if s in created_from and created_from[s] != now[s])


def parse_section_hashes(annotation: str | None) -> dict[str, str]:
    """The hashes of the `glmops.io/spec-sections` annotation; {} when absent or unreadable."""
    try:
        raw = json.loads(annotation or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

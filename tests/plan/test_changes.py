"""Immutable spec sections are found in kopf's diffs whatever the handler's field scope."""

from __future__ import annotations

import pytest
from kopf._cogs.structs import diffs  # what kopf itself builds handler diffs with

from glmops.plan.changes import changed_immutable_sections

OLD = {"model": {"variant": "flash"}, "training": {"epochs": 1}, "output": {"formats": ["adapter"]}}


def _diff(old: dict, new: dict, scope: tuple[str, ...]) -> diffs.Diff:
    """The diff kopf hands a handler registered on `scope` (() for the whole object)."""
    full = diffs.diff({"spec": old}, {"spec": new})
    return diffs.reduce(full, scope) if scope else full


@pytest.mark.parametrize("scope", [(), ("spec",)])
@pytest.mark.parametrize(
    ("new", "expected"),
    [
        ({**OLD, "training": {"epochs": 3}}, ["training"]),
        ({**OLD, "model": {"variant": "flagship"}, "training": {"epochs": 2}}, ["model", "training"]),
        ({**OLD, "dataset": {"source": "file:///d"}}, ["dataset"]),
        ({**OLD, "output": {"formats": ["gguf"]}}, []),  # output and the rest may change
        (OLD, []),
    ],
)
def test_changed_sections_for_either_handler_scope(scope: tuple[str, ...], new: dict, expected: list[str]) -> None:
    assert changed_immutable_sections(_diff(OLD, new, scope)) == expected


def test_a_whole_spec_replaced_at_once_is_compared_section_by_section() -> None:
    diff = [("change", (), {"spec": OLD}, {"spec": {**OLD, "training": {"epochs": 5}}})]
    assert changed_immutable_sections(diff) == ["training"]
    assert changed_immutable_sections([("change", ("spec",), OLD, {**OLD, "output": {}})]) == []

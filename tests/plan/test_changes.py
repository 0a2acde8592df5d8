"""Immutable spec sections are judged against the hashes the trainer Job was created from."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.plan.changes import (
    IMMUTABLE_SECTIONS,
    changed_sections,
    parse_section_hashes,
    spec_section_hashes,
)

BASE: dict[str, Any] = {
    "model": {"variant": "flash", "source": "pvc://models/glm"},
    "dataset": {"source": "pvc://data/train.jsonl"},
    "training": {"epochs": 1},
    "resources": {"gpusPerNode": 1},
    "output": {"destination": "pvc://out/run", "formats": ["adapter"]},
}


def _spec(**changes: Any) -> FineTuneJobSpec:
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        section, _, key = path.partition("__")
        raw[section][key] = value
    return FineTuneJobSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"training__epochs": 3}, ["training"]),
        ({"model__variant": "flagship", "training__epochs": 2}, ["model", "training"]),
        ({"dataset__source": "pvc://data/other.jsonl"}, ["dataset"]),
        ({"output__destination": "pvc://out/elsewhere"}, ["output"]),
        ({"output__formats": ["adapter", "merged"]}, ["output"]),
        ({"resources__gpusPerNode": 2}, ["resources"]),
        ({"resources__nodeSelector": {"pool": "a"}}, ["resources"]),
        ({}, []),
    ],
)
def test_changed_sections_against_the_creation_hashes(changes: dict[str, Any], expected: list[str]) -> None:
    created_from = spec_section_hashes(_spec())
    assert changed_sections(created_from, _spec(**changes)) == expected


def test_fields_outside_the_sections_may_change() -> None:
    created_from = spec_section_hashes(_spec())
    spec = _spec()
    spec.cancel = True
    spec.failure_policy.max_retries = 7
    assert changed_sections(created_from, spec) == []


def test_a_reverted_change_is_no_change() -> None:
    created_from = spec_section_hashes(_spec())
    assert changed_sections(created_from, _spec(training__epochs=5)) == ["training"]
    assert changed_sections(created_from, _spec(training__epochs=1)) == []


def test_spelling_a_default_out_is_no_change() -> None:
    # `format: auto` is the default: the stored object may carry it or not (CRD defaulting).
    created_from = spec_section_hashes(_spec())
    assert changed_sections(created_from, _spec(dataset__format="auto")) == []


def test_hashes_survive_the_annotation_round_trip_and_bad_annotations_mean_unknown() -> None:
    import json

    hashes = spec_section_hashes(_spec())
    assert set(hashes) == set(IMMUTABLE_SECTIONS)
    assert parse_section_hashes(json.dumps(hashes)) == hashes
    assert parse_section_hashes("not json") == {} and parse_section_hashes(None) == {}
    # A trainer from before this annotation existed: nothing can be said to have changed.
    assert changed_sections({}, _spec(training__epochs=9)) == []

"""Conditions: one per type, and the transition time moves only when the status changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from glmops.api.common import ConditionStatus
from glmops.conditions import find_condition, set_condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_set_condition_keeps_one_per_type_and_moves_the_time_only_on_a_status_change() -> None:
    first = set_condition([], "Validated", ConditionStatus.true, "SpecValid", "ok", 1, now=T0)
    both = set_condition(first, "Succeeded", ConditionStatus.unknown, "Pending", "waiting", 1, now=T0)
    same = set_condition(both, "Succeeded", ConditionStatus.unknown, "Training", "running", 2, now=T0 + timedelta(minutes=1))
    ended = set_condition(same, "Succeeded", ConditionStatus.true, "Completed", "done", 2, now=T0 + timedelta(minutes=2))

    assert [c.type for c in ended] == ["Validated", "Succeeded"]  # replaced in place, never doubled
    running = find_condition(same, "Succeeded")
    assert running is not None and running.reason == "Training" and running.observed_generation == 2
    assert running.last_transition_time == T0  # same status: the transition is still the first one
    done = find_condition(ended, "Succeeded")
    assert done is not None and done.last_transition_time == T0 + timedelta(minutes=2)
    assert find_condition(ended, "Validated") == find_condition(first, "Validated")
    assert find_condition(ended, "Scheduled") is None

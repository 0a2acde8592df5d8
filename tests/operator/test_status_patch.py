"""The status merge patch removes what the new status drops, at any depth."""

from __future__ import annotations

from glmops.handlers.finetunejob import status_patch


def test_a_key_dropped_inside_progress_is_removed_not_kept() -> None:
    before = {"phase": "Training", "progress": {"step": 3, "etaSeconds": 40, "evalLoss": 1.5}, "plan": {"nodes": 1}}
    after = {"phase": "Training", "progress": {"step": 4, "etaSeconds": 30}}
    patch = status_patch(before, after)
    assert patch == {"phase": "Training", "progress": {"step": 4, "etaSeconds": 30, "evalLoss": None}, "plan": None}


def test_the_diff_base_is_never_removed_by_our_patch() -> None:
    assert status_patch({"lastHandledConfiguration": "{}", "phase": "Pending"}, {"phase": "Pending"}) == {"phase": "Pending"}

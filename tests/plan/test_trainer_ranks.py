"""A multi-node trainer's status: every rank observed, all ranks placed or none holding GPUs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from glmops.api.finetunejob import FineTuneJobStatus, Phase, Plan
from glmops.conditions import ConditionType, Reason, find_condition
from glmops.plan.status import Observation, next_status, observe_ranks
from glmops.plan.trainer_ranks import gang_stuck, observe_rank, retry_delay_seconds

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
JOBS = ["j-trainer-r0", "j-trainer-r1"]
PLAN = Plan(gpu_memory_gi_b_per_gpu=35.5, nodes=2, gpus_per_node=8, min_gpu_memory_gi_b=75)
PENDING = FineTuneJobStatus(phase=Phase.pending, trainer_job=JOBS[0], plan=PLAN)
RESULT = json.dumps({"v": 1, "status": "Succeeded", "step": 10, "totalSteps": 10, "trainLoss": 0.4})


def _job(name: str, uid: str, conditions: tuple[str, ...] = (), failed: int = 0, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    return {
        "metadata": meta,
        "spec": {},
        "status": {"failed": failed, "conditions": [{"type": c, "status": "True", "message": f"{name} {c}"} for c in conditions]},
    }


def _pod(
    rank: int,
    owner_uid: str,
    phase: str = "Pending",
    node: str = "",
    unschedulable_since: datetime | None = None,
    created: str = "2026-01-01T11:00:00Z",
    message: str = "",
    indexed: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "podIP": f"100.64.128.{10 + rank}" if node else ""}
    if unschedulable_since is not None:
        status["conditions"] = [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/6 nodes are available: 5 node(s) didn't match pod anti-affinity rules.",
            "lastTransitionTime": unschedulable_since.isoformat().replace("+00:00", "Z"),
        }]
    if phase in ("Succeeded", "Failed"):
        status["containerStatuses"] = [{"state": {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "message": message}}}]
    meta: dict[str, Any] = {
        "name": f"p{rank}-{created[-6:-1]}", "creationTimestamp": created, "ownerReferences": [{"uid": owner_uid}],
        "labels": {} if indexed else {"glmops.io/node-rank": str(rank)},
        "annotations": {"batch.kubernetes.io/job-completion-index": str(rank)} if indexed else {},
    }
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def _jobs(*conditions: tuple[str, ...]) -> list[dict[str, Any]]:
    return [_job(name, f"uid-{k}", conditions[k] if k < len(conditions) else ()) for k, name in enumerate(JOBS)]


def _next(status: FineTuneJobStatus, jobs: list[dict[str, Any]], pods: list[dict[str, Any]], now: datetime = NOW, **kw: Any) -> Any:
    trainer = observe_ranks(jobs, pods, JOBS, 2)
    obs = Observation(generation=1, trainer=trainer, now=now, gang_placement_seconds=60, gang_retry_seconds=30,
                      trainer_jobs_left=len(jobs), **kw)
    return next_status(status, obs)


def test_training_starts_only_when_every_rank_runs() -> None:
    one_running = [_pod(0, "uid-0", "Running", "node-a"), _pod(1, "uid-1")]
    decision = _next(PENDING, _jobs(), one_running)
    assert decision.status.phase is Phase.pending
    waiting = find_condition(decision.status.conditions, ConditionType.succeeded)
    assert waiting is not None and waiting.message == "1 of 2 ranks are running; training starts when all are"
    both = [_pod(0, "uid-0", "Running", "node-a"), _pod(1, "uid-1", "Running", "node-b")]
    decision = _next(PENDING, _jobs(), both)
    assert decision.status.phase is Phase.training
    assert find_condition(decision.status.conditions, ConditionType.succeeded).message == "all 2 ranks of the trainer are running"  # type: ignore[union-attr]
    scheduled = find_condition(decision.status.conditions, ConditionType.scheduled)
    assert scheduled is not None and scheduled.message == "all 2 ranks are placed: rank 0 on node-a, rank 1 on node-b"


def test_a_rank_that_stays_unschedulable_while_another_holds_a_node_withdraws_the_attempt() -> None:
    pods = [_pod(0, "uid-0", "Running", "node-a"), _pod(1, "uid-1", unschedulable_since=NOW - timedelta(seconds=30))]
    early = _next(PENDING, _jobs(), pods)
    assert not early.withdraw_trainer and early.status.phase is Phase.pending
    assert find_condition(early.status.conditions, ConditionType.succeeded).reason == Reason.unschedulable  # type: ignore[union-attr]

    late = _next(PENDING, _jobs(), pods, now=NOW + timedelta(seconds=31))
    assert late.withdraw_trainer and not late.stop_children
    assert late.status.phase is Phase.pending and late.status.placement_retries == 1
    assert late.status.placement_retry_at == NOW + timedelta(seconds=31 + 30)
    succeeded = find_condition(late.status.conditions, ConditionType.succeeded)
    assert succeeded is not None and succeeded.reason == Reason.gang_unschedulable
    assert "rank 1 could not be placed" in succeeded.message and "rank 0 on node-a" in succeeded.message
    assert "anti-affinity" in succeeded.message
    scheduled = find_condition(late.status.conditions, ConditionType.scheduled)
    assert scheduled is not None and scheduled.status.value == "False" and scheduled.reason == Reason.gang_unschedulable
    assert late.event is not None and late.event.reason == Reason.gang_unschedulable


def test_ranks_that_wait_together_hold_nothing_and_are_left_waiting() -> None:
    """No rank bound: no GPU is held, so there is nothing to withdraw (the scheduler keeps trying)."""
    long_ago = NOW - timedelta(hours=1)
    pods = [_pod(0, "uid-0", unschedulable_since=long_ago), _pod(1, "uid-1", unschedulable_since=long_ago)]
    decision = _next(PENDING, _jobs(), pods)
    assert not decision.withdraw_trainer
    assert find_condition(decision.status.conditions, ConditionType.succeeded).reason == Reason.unschedulable  # type: ignore[union-attr]


def test_a_withdrawn_run_waits_for_its_backoff_and_for_its_old_jobs_to_go() -> None:
    withdrawn = PENDING.model_copy(update={"placement_retries": 1, "placement_retry_at": NOW + timedelta(seconds=30)})
    gone: list[dict[str, Any]] = []
    waiting = _next(withdrawn, gone, [])
    assert not waiting.recreate_trainer and waiting.status.phase is Phase.pending, "absent Jobs are ours, not a deletion"
    still_deleting = [_job(JOBS[1], "uid-1", deleting=True)]
    assert not _next(withdrawn, still_deleting, [], now=NOW + timedelta(seconds=31)).recreate_trainer
    again = _next(withdrawn, gone, [], now=NOW + timedelta(seconds=31))
    assert again.recreate_trainer and not again.stop_children


def test_a_withdrawn_run_whose_spec_was_edited_is_not_placed_again() -> None:
    withdrawn = PENDING.model_copy(update={"placement_retries": 1, "placement_retry_at": NOW})
    decision = _next(withdrawn, [], [], changed_sections=("resources",))
    assert not decision.recreate_trainer
    validated = find_condition(decision.status.conditions, ConditionType.validated)
    assert validated is not None and validated.reason == Reason.spec_immutable and "spec.resources" in validated.message


def test_cancel_while_withdrawn_ends_cancelled() -> None:
    withdrawn = PENDING.model_copy(update={"placement_retries": 1, "placement_retry_at": NOW + timedelta(seconds=30)})
    decision = _next(withdrawn, [], [], cancel=True)
    assert decision.status.phase is Phase.cancelled and decision.stop_children


def test_the_retry_backoff_doubles_and_is_bounded() -> None:
    assert [retry_delay_seconds(n, 30) for n in (1, 2, 3, 6, 20)] == [30, 60, 120, 600, 600]


def test_a_failed_rank_fails_the_run_with_its_rank_and_stops_the_others() -> None:
    jobs = [_job(JOBS[0], "uid-0"), _job(JOBS[1], "uid-1", ("Failed",), failed=4)]
    pods = [_pod(0, "uid-0", "Running", "node-a"), _pod(1, "uid-1", "Failed", "node-b")]
    decision = _next(PENDING.model_copy(update={"phase": Phase.training}), jobs, pods)
    assert decision.status.phase is Phase.failed and decision.stop_children
    succeeded = find_condition(decision.status.conditions, ConditionType.succeeded)
    assert succeeded is not None and succeeded.message.startswith("rank 1: j-trainer-r1 Failed")


def test_a_user_error_on_any_rank_is_the_verdict() -> None:
    error = json.dumps({"v": 1, "status": "Failed", "reason": "DataError", "message": "train.jsonl:7: no assistant turn"})
    pods = [_pod(0, "uid-0", "Running", "node-a"), _pod(1, "uid-1", "Failed", "node-b", message=error)]
    decision = _next(PENDING.model_copy(update={"phase": Phase.training}), _jobs(), pods)
    assert decision.status.phase is Phase.failed
    assert find_condition(decision.status.conditions, ConditionType.succeeded).reason == "DataError"  # type: ignore[union-attr]


def test_the_run_succeeds_when_every_rank_job_completed_and_rank_zero_reports() -> None:
    pods = [_pod(0, "uid-0", "Succeeded", "node-a", message=RESULT), _pod(1, "uid-1", "Succeeded", "node-b")]
    one = _next(PENDING.model_copy(update={"phase": Phase.training}), _jobs(("Complete",)), pods)
    assert one.status.phase is Phase.training and not one.create_export
    both = _next(PENDING.model_copy(update={"phase": Phase.training}), _jobs(("Complete",), ("Complete",)), pods)
    assert both.status.phase is Phase.exporting and both.create_export
    assert both.status.progress is not None and both.status.progress.total_steps == 10


def test_a_missing_rank_job_outside_a_withdrawal_cancels_the_run() -> None:
    decision = _next(PENDING.model_copy(update={"phase": Phase.training}), _jobs()[:1], [_pod(0, "uid-0", "Running", "node-a")])
    assert decision.status.phase is Phase.cancelled
    assert find_condition(decision.status.conditions, ConditionType.succeeded).reason == Reason.trainer_job_deleted  # type: ignore[union-attr]


def test_pods_of_a_withdrawn_attempt_do_not_count_for_the_new_one() -> None:
    """Jobs made again under the same names: an old pod still terminating is told apart by its owner's uid."""
    jobs = [_job(JOBS[0], "uid-new-0"), _job(JOBS[1], "uid-new-1")]
    pods = [_pod(0, "uid-0", "Running", "node-a", created="2026-01-01T11:00:09Z"), _pod(0, "uid-new-0", created="2026-01-01T11:00:01Z"),
            _pod(1, "uid-new-1", created="2026-01-01T11:00:01Z")]
    trainer = observe_ranks(jobs, pods, JOBS, 2)
    assert [r.node_name for r in trainer.ranks] == ["", ""] and trainer.pod_phase == "Pending"


@pytest.mark.parametrize("indexed", [False, True], ids=["per-rank", "indexed"])
def test_rank_comes_from_the_label_or_the_completion_index(indexed: bool) -> None:
    jobs = [_job("j-trainer", "uid-x")] if indexed else _jobs()
    pods = [_pod(1, "uid-x" if indexed else "uid-1", "Running", "node-b", indexed=indexed),
            _pod(0, "uid-x" if indexed else "uid-0", "Running", "node-a", indexed=indexed)]
    trainer = observe_ranks(jobs, pods, ["j-trainer"] if indexed else JOBS, 2)
    assert [(r.rank, r.node_name) for r in trainer.ranks] == [(0, "node-a"), (1, "node-b")]
    assert trainer.pod_phase == "Running" and trainer.ranks[0].pod_ip == "100.64.128.10"


def test_gang_stuck_needs_both_a_holder_and_a_long_wait() -> None:
    placed = observe_rank(0, _pod(0, "u", "Pending", "node-a"))
    stuck = observe_rank(1, _pod(1, "u", unschedulable_since=NOW - timedelta(seconds=100)))
    finished = observe_rank(0, _pod(0, "u", "Succeeded", "node-a"))
    assert gang_stuck([placed, stuck], NOW, 60) == (stuck, [placed])
    assert gang_stuck([placed, stuck], NOW, 120) is None
    assert gang_stuck([finished, stuck], NOW, 60) is None, "a finished pod holds no GPU"

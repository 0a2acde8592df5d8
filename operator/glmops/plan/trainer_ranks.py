"""What the ranks of a multi-node trainer show, and the all-or-nothing placement rule. Pure.

A multi-node run is one Indexed Job (current servers) or one Job per node rank (servers without
Indexed Jobs); either way each pod carries its node rank (the completion-index annotation or
the `glmops.io/node-rank` label). `observe_rank` reads one rank's newest pod;
`glmops.plan.status.observe_ranks` folds them and the Jobs into one observation of the trainer,
so `next_status` reads one trainer whatever the form. `gang_stuck` is the placement rule: ranks placed while another rank stays
unschedulable hold GPUs for nothing, so past a bounded wait the attempt is withdrawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from glmops.contract.records import ResultRecord, parse_result

NODE_RANK_LABEL = "glmops.io/node-rank"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class RankObservation:
    """The newest pod of one node rank."""

    rank: int
    pod_name: str = ""
    pod_phase: str = ""  # Pending | Running | Succeeded | Failed | "" (no pod yet)
    pod_ip: str = ""
    node_name: str = ""  # set once the scheduler bound the pod
    unschedulable_message: str = ""
    unschedulable_since: datetime | None = None  # when the scheduler first said it cannot place it
    waiting_reason: str = ""
    waiting_message: str = ""
    result: ResultRecord | None = None

    @property
    def holds_node(self) -> bool:
        """Whether this rank's pod is bound and not finished: it holds its node's GPUs."""
        return bool(self.node_name) and self.pod_phase in ("", "Pending", "Running")


def rank_of(pod: Mapping[str, Any]) -> int | None:
    """A trainer pod's node rank, from its label (per-rank Jobs) or completion index (Indexed Job)."""
    meta = pod.get("metadata") or {}
    raw = (meta.get("labels") or {}).get(NODE_RANK_LABEL) or (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _time(raw: Any) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(str(raw))  # Python >= 3.11 reads the trailing Z


def observe_rank(rank: int, pod: Mapping[str, Any] | None) -> RankObservation:
    """What one rank's newest pod shows."""
    if pod is None:
        return RankObservation(rank)
    status = pod.get("status") or {}
    unschedulable, since = "", None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            unschedulable, since = cond.get("message") or "Unschedulable", _time(cond.get("lastTransitionTime"))
    waiting_reason = waiting_message = ""
    result = None
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting"):
            waiting_reason, waiting_message = state["waiting"].get("reason", ""), state["waiting"].get("message", "")
        if state.get("terminated"):
            result = parse_result(str(state["terminated"].get("message") or ""))
    return RankObservation(
        rank=rank,
        pod_name=str((pod.get("metadata") or {}).get("name", "")),
        pod_phase=str(status.get("phase") or ""),
        pod_ip=str(status.get("podIP") or ""),
        node_name=str((pod.get("spec") or {}).get("nodeName") or ""),
        unschedulable_message=unschedulable,
        unschedulable_since=since,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        result=result,
    )


def gang_stuck(ranks: Sequence[RankObservation], now: datetime, wait_seconds: float) -> tuple[RankObservation, list[RankObservation]] | None:
    """The rank that stayed unschedulable for `wait_seconds` while other ranks hold nodes, with those
    ranks; None when the run may keep waiting (nothing held, or not yet waited long enough)."""
    holding = [r for r in ranks if r.holds_node]
    stuck = [
        r
        for r in ranks
        if not r.node_name and r.unschedulable_since is not None and (now - r.unschedulable_since).total_seconds() >= wait_seconds
    ]
    return (stuck[0], holding) if holding and stuck else None


def retry_delay_seconds(withdrawals: int, base_seconds: float) -> float:
    """Wait before placing the ranks again after the `withdrawals`-th removal: doubling, at most 20 x base."""
    return float(min(base_seconds * 2 ** max(withdrawals - 1, 0), base_seconds * 20))

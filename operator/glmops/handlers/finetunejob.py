"""FineTuneJob handlers: parse, plan, apply the trainer objects, and keep status current.

`reconcile` is the one handler for create, resume and spec updates. The trainer Job and pod
events and a progress timer feed `status` afterwards. Decisions live in glmops.plan; all API
calls go through glmops.kube.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from glmops import kube
from glmops.api.common import GROUP, VERSION, ConditionStatus
from glmops.api.finetunejob import PLURAL, FineTuneJob, FineTuneJobStatus, Phase, Plan
from glmops.conditions import ConditionType, Reason, find_condition, set_condition
from glmops.plan import names
from glmops.plan.changes import changed_immutable_sections
from glmops.plan.finetune import FTJ_LABEL, ClusterFacts, GpuNode, JobMeta, plan_finetune
from glmops.plan.status import PhaseDecision, TrainerObservation, cancelled_by_request, decide_phase
from glmops.plan.storage import credential_secrets
from glmops.plan.uris import parse_uri
from glmops.settings import Settings
from glmops.trainer_protocol import artifacts_from_result, last_progress, parse_result

TERMINAL = {Phase.succeeded, Phase.failed, Phase.cancelled}
API_RETRY_SECONDS = 15


def _status(body: kopf.Body) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate(dict(body.get("status") or {}))


def _with_condition(status: FineTuneJobStatus, type_: str, value: ConditionStatus, reason: str, message: str, gen: int) -> None:
    status.conditions = set_condition(status.conditions, type_, value, reason, message, gen)


def _fail(status: FineTuneJobStatus, reason: str, message: str, gen: int) -> None:
    status.phase = Phase.failed
    status.observed_generation = gen
    status.completion_time = status.completion_time or datetime.now(UTC)
    _with_condition(status, ConditionType.succeeded, ConditionStatus.false, reason, message, gen)


@kopf.index(GROUP, VERSION, PLURAL)
async def ftj_outputs(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str | None, str], str] | None:
    """Which FineTuneJob writes to which output location, kept current from the watch (no list per reconcile).

    Async only so that kopf calls it in its event loop: it runs on every event of every
    FineTuneJob, and a sync handler would cost a trip through the thread pool each time.
    """
    destination = (spec.get("output") or {}).get("destination")
    return {(namespace, str(destination).rstrip("/")): name} if destination else None


def _gather_facts(
    api: client.ApiClient, namespace: str, name: str, job: FineTuneJob, outputs: kopf.Index[Any, str], memo: kopf.Memo
) -> ClusterFacts:
    spec = job.spec
    # Every Secret the spec references (model, dataset, output), each looked up once.
    referenced = {secret for _field, secret in credential_secrets(spec)}
    secrets = frozenset(s for s in sorted(referenced) if kube.secret_exists(api, namespace, s))
    claims = {parse_uri(u).claim for u in (spec.model.source, spec.dataset.source, spec.output.destination)}
    pvcs = frozenset(c for c in claims if c and kube.pvc_exists(api, namespace, c))
    destination = spec.output.destination.rstrip("/")
    others = sorted(n for n in outputs.get((namespace, destination), []) if n != name)
    return ClusterFacts(
        server_minor=memo.server_minor,
        secrets=secrets,
        pvcs=pvcs,
        outputs_in_use={destination: others[0]} if others else {},
        gpu_nodes=memo.node_cache.get(api),
    )


class NodeCache:
    """The cluster's GPU offers, re-read at most every `max_age` seconds.

    A burst of new jobs needs one node list, not one per job: the first thread to find the
    cache stale lists the nodes while the others wait for its answer. It lives in the
    operator-wide memo as one shared object (kopf gives each resource a shallow copy of the
    memo, so a value assigned there would be cached per resource).
    """

    def __init__(
        self,
        lister: Callable[[client.ApiClient], tuple[GpuNode, ...]] = kube.gpu_nodes,
        max_age: float = 10.0,
    ) -> None:
        self.lister = lister
        self.max_age = max_age
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._nodes: tuple[GpuNode, ...] = ()

    def get(self, api: client.ApiClient) -> tuple[GpuNode, ...]:
        """The GPU nodes, from the cache when it is fresh."""
        with self._lock:
            if time.monotonic() - self._read_at > self.max_age:
                self._nodes = self.lister(api)
                self._read_at = time.monotonic()
            return self._nodes


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec")
def reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    diff: kopf.Diff,
    reason: str,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Validate and plan the job, create its trainer objects once, and record the outcome in status."""
    ftj_outputs: kopf.Index[Any, str] = kwargs["ftj_outputs"]  # the index above, passed by name
    assert namespace is not None  # FineTuneJob is namespaced
    api: client.ApiClient = memo.api
    generation = int(meta.get("generation") or 1)
    status = _status(body)

    if status.phase in TERMINAL:
        return
    if (body.get("spec") or {}).get("cancel") is True:
        _end(api, body, status, cancelled_by_request(), generation, delete_job=names.trainer_job_name(name))
        return
    if status.trainer_job and kube.get_job(api, namespace, status.trainer_job) is None:
        # Recorded, so created; gone, so deleted while the operator was away: never recreate it.
        _end(api, body, status, decide_phase(TrainerObservation(job_missing=True), 0, status.trainer_job), generation)
        return
    if reason == kopf.Reason.UPDATE and status.trainer_job:
        changed = changed_immutable_sections(diff)
        if changed:
            message = (
                f"spec.{', spec.'.join(changed)} changed after training started; the running trainer keeps the "
                "original settings. Revert the change, or create a new FineTuneJob"
            )
            _with_condition(status, ConditionType.validated, ConditionStatus.false, Reason.spec_immutable, message, generation)
            kopf.warn(body, reason=Reason.spec_immutable, message=message)
            patch.status.update(status.to_wire())
            return

    try:
        job = FineTuneJob.model_validate(dict(body))
    except ValidationError as exc:
        problems = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        _fail(status, Reason.invalid_spec, problems, generation)
        kopf.warn(body, reason=Reason.invalid_spec, message=problems)
        patch.status.update(status.to_wire())
        return

    try:
        _plan_and_apply(api, body, job, status, patch, generation, ftj_outputs, memo)
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        if isinstance(exc, ApiException) and exc.status in (400, 404, 409, 422):
            raise  # a request of ours the API refuses: kopf logs it and retries with backoff
        # The cluster could not be read or written right now (RBAC, overload, network): say so
        # and try again, rather than leave a job without a phase.
        message = (
            f"the operator could not check or create this job: {kube.describe_error(exc)}; it retries every "
            f"{API_RETRY_SECONDS} s. Check the operator's RBAC permissions and the apiserver's health"
        )
        previous = find_condition(status.conditions, ConditionType.validated)
        if not status.trainer_job:
            status.phase = Phase.validating
        _with_condition(status, ConditionType.validated, ConditionStatus.unknown, Reason.api_error, message, generation)
        status.observed_generation = generation
        if previous is None or previous.reason != Reason.api_error:
            kopf.warn(body, reason=Reason.api_error, message=message)
        patch.status.update(status.to_wire())
        raise kopf.TemporaryError(message, delay=API_RETRY_SECONDS) from exc


def _plan_and_apply(
    api: client.ApiClient,
    body: kopf.Body,
    job: FineTuneJob,
    status: FineTuneJobStatus,
    patch: kopf.Patch,
    generation: int,
    ftj_outputs: kopf.Index[Any, str],
    memo: kopf.Memo,
) -> None:
    """Check the job against the cluster, create its trainer objects, and put the outcome in `patch`."""
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta["namespace"])
    settings: Settings = memo.settings
    facts = _gather_facts(api, namespace, name, job, ftj_outputs, memo)
    plan = plan_finetune(JobMeta(name, namespace, str(meta["uid"]), generation), job.spec, facts, settings)
    status.plan = Plan(
        gpu_memory_gi_b_per_gpu=round(plan.memory.per_gpu_gib, 1),
        nodes=plan.placement.nodes,
        gpus_per_node=plan.placement.gpus_per_node,
        min_gpu_memory_gi_b=round(plan.placement.min_gpu_memory_gib, 1),
    )
    if plan.problems:
        first = plan.problems[0]
        message = "; ".join(str(p) for p in plan.problems)
        _with_condition(status, ConditionType.validated, ConditionStatus.false, first.reason, message, generation)
        _fail(status, first.reason, message, generation)
        kopf.warn(body, reason=first.reason, message=message)
        patch.status.update(status.to_wire())
        return

    _with_condition(status, ConditionType.validated, ConditionStatus.true, Reason.spec_valid, "the spec passed all checks", generation)
    created = False
    for obj in plan.objects:
        kopf.adopt(obj, owner=body)
        try:
            created = kube.apply_child(api, obj, str(meta["uid"])) or created
        except kube.ForeignObjectError as exc:
            _fail(status, Reason.invalid_spec, str(exc), generation)
            kopf.warn(body, reason="NameConflict", message=str(exc))
            patch.status.update(status.to_wire())
            return
    status.trainer_job = names.trainer_job_name(name)
    status.observed_generation = generation
    if status.phase in (None, Phase.pending, Phase.validating):
        status.phase = Phase.pending
        _with_condition(
            status, ConditionType.succeeded, ConditionStatus.unknown, Reason.pending, "waiting for the trainer pod to start", generation
        )
    if created:
        kopf.info(body, reason="TrainerCreated", message=f"created Job {status.trainer_job}")
    patch.status.update(status.to_wire())


def _apply_decision(status: FineTuneJobStatus, decision: PhaseDecision, generation: int) -> None:
    """Set the phase, the Succeeded condition and, for an end, the completion time."""
    status.phase = decision.phase
    top = {Phase.succeeded: ConditionStatus.true, Phase.failed: ConditionStatus.false, Phase.cancelled: ConditionStatus.false}
    value = top.get(decision.phase, ConditionStatus.unknown)
    status.conditions = set_condition(status.conditions, ConditionType.succeeded, value, decision.reason, decision.message, generation)
    if decision.phase in TERMINAL:
        status.completion_time = status.completion_time or datetime.now(UTC)


def _event_type(decision: PhaseDecision) -> str:
    bad = decision.phase is Phase.failed or decision.reason in (Reason.unschedulable, Reason.trainer_job_deleted)
    return "Warning" if bad else "Normal"


def _end(
    api: client.ApiClient, body: Mapping[str, Any], status: FineTuneJobStatus, decision: PhaseDecision, generation: int, delete_job: str = ""
) -> None:
    """Record a terminal phase, then delete the trainer Job if asked.

    Status comes first: the Job's deletion wakes the Job watch, which must find the job
    already ended rather than take the vanished Job for someone else's doing.
    """
    metadata = body["metadata"]
    _apply_decision(status, decision, generation)
    status.observed_generation = generation
    kube.patch_custom_status(api, PLURAL, metadata["namespace"], metadata["name"], status.to_wire())
    if delete_job:
        kube.delete_job(api, metadata["namespace"], delete_job)
    kopf.event(kopf.Body(cast(kopf.RawBody, dict(body))), type=_event_type(decision), reason=decision.reason, message=decision.message)


def observe_trainer(api: client.ApiClient, namespace: str, job_name: str) -> tuple[TrainerObservation, dict[str, Any] | None]:
    """What the trainer Job and its newest pod show now (plus that pod, for its log and result)."""
    job = kube.get_job(api, namespace, job_name)
    if job is None or job["metadata"].get("deletionTimestamp"):
        return TrainerObservation(job_missing=True), None
    job_status = job.get("status") or {}
    conditions = {c["type"]: c for c in job_status.get("conditions") or [] if c.get("status") == "True"}
    pods = kube.job_pods(api, namespace, job_name)
    newest = pods[0] if pods else None
    pod_status = (newest or {}).get("status") or {}
    unschedulable = waiting_reason = waiting_message = ""
    for cond in pod_status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            unschedulable = cond.get("message") or "Unschedulable"
    for cs in pod_status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            waiting_reason, waiting_message = waiting.get("reason", ""), waiting.get("message", "")
    failed = conditions.get("Failed")
    obs = TrainerObservation(
        job_succeeded="Complete" in conditions,
        job_failed=failed is not None,
        job_failure_message=(failed.get("message") or failed.get("reason") or "") if failed else "",
        failed_pods=int(job_status.get("failed") or 0),
        pod_phase=str(pod_status.get("phase") or ""),
        unschedulable_message=unschedulable,
        container_waiting_reason=waiting_reason,
        container_waiting_message=waiting_message,
    )
    return obs, newest


def _termination_message(pod: dict[str, Any] | None) -> str | None:
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return str(terminated.get("message") or "")
    return None


def sync_status(api: client.ApiClient, namespace: str, ftj_name: str, logger: kopf.Logger) -> None:
    """Recompute a FineTuneJob's phase, progress and artifacts from its trainer, and patch status."""
    body = kube.get_custom(api, PLURAL, namespace, ftj_name)
    if body is None:
        return
    if body["metadata"].get("deletionTimestamp"):
        return  # the FineTuneJob is going away, and its trainer with it
    job_spec = FineTuneJob.model_validate(body)
    status = job_spec.status
    if status.phase in TERMINAL or not status.trainer_job:
        return
    before = status.to_wire()
    obs, pod = observe_trainer(api, namespace, status.trainer_job)
    log_text = ""
    if pod is not None and obs.pod_phase in ("Running", "Succeeded", "Failed"):
        log_text = kube.pod_log_tail(api, namespace, pod["metadata"]["name"], "trainer")
    progress = last_progress(log_text)
    if progress is not None:
        status.progress = progress
    result = parse_result(_termination_message(pod))
    failed_result = result if result and result.get("status") == "Failed" else {}
    obs = replace(
        obs,
        # The final progress event ends training; what follows is the export.
        exporting='"kind":"final"' in log_text,
        trainer_reason=str(failed_result.get("reason") or ""),
        trainer_message=str(failed_result.get("message") or ""),
    )
    decision = decide_phase(obs, job_spec.spec.failure_policy.max_retries, status.trainer_job)
    if job_spec.spec.cancel:  # the reconcile handler is ending it; agree with it, whatever the Job shows
        decision = cancelled_by_request()
    # A user error fails every retry the same way: stop the Job instead of burning GPU hours
    # (after the Failed status is written, see _end).
    stop_job = decision.phase is Phase.failed and not obs.job_failed and not obs.job_missing
    generation = int(body["metadata"].get("generation") or 1)
    previous = find_condition(status.conditions, ConditionType.succeeded)
    status.retries = obs.failed_pods
    if decision.phase is Phase.training and status.start_time is None:
        status.start_time = datetime.now(UTC)
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    if decision.reason == Reason.unschedulable:
        status.conditions = set_condition(
            status.conditions, ConditionType.scheduled, ConditionStatus.false, decision.reason, decision.message, generation
        )
    elif pod is not None and node:
        message = f"pod {pod['metadata']['name']} runs on node {node}"
        status.conditions = set_condition(
            status.conditions, ConditionType.scheduled, ConditionStatus.true, Reason.scheduled, message, generation
        )
    _apply_decision(status, decision, generation)
    if decision.phase is Phase.succeeded:
        if obs.job_succeeded and result and isinstance(result.get("artifacts"), dict):
            status.artifacts = artifacts_from_result(result["artifacts"])
        if status.progress is not None and status.progress.total_steps:
            status.progress.step = status.progress.total_steps
            status.progress.percent = 100
    after = status.to_wire()
    if after == before:
        return  # nothing new: no write, no event
    kube.patch_custom_status(api, PLURAL, namespace, ftj_name, after)
    if stop_job:
        kube.delete_job(api, namespace, status.trainer_job)
    if previous is None or previous.reason != decision.reason:  # a transition: new phase or new reason
        kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=_event_type(decision), reason=decision.reason, message=decision.message)


# A new Job's first events carry an empty status: nothing to learn from them.
@kopf.on.event("batch", "v1", "jobs", labels={FTJ_LABEL: kopf.PRESENT}, when=lambda status, **_: bool(status))
def trainer_job_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A trainer Job changed (pod failed, retried, completed): update its FineTuneJob."""
    assert namespace is not None
    sync_status(memo.api, namespace, body["metadata"]["labels"][FTJ_LABEL], logger)


def _pod_news(status: kopf.Status, **_: Any) -> bool:
    """Pod events worth a status sync: it runs or ended, or the scheduler cannot place it."""
    if status.get("phase") not in (None, "Pending"):
        return True
    return any(c.get("reason") == "Unschedulable" for c in status.get("conditions") or [])


@kopf.on.event("", "v1", "pods", labels={FTJ_LABEL: kopf.PRESENT}, when=_pod_news)
def trainer_pod_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A trainer pod was scheduled, started, or could not be placed: update its FineTuneJob."""
    assert namespace is not None
    sync_status(memo.api, namespace, body["metadata"]["labels"][FTJ_LABEL], logger)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    id="progress",
    interval=10.0,
    initial_delay=5.0,
    when=lambda status, **_: status.get("phase") in (Phase.training, Phase.exporting),
)
def poll_progress(name: str, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Refresh progress from the trainer's log while it trains (log lines raise no watch event)."""
    assert namespace is not None
    sync_status(memo.api, namespace, name, logger)

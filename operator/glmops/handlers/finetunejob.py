"""FineTuneJob handlers: every trigger ends in `converge`, the one writer of a job's status.

A job is admitted once: its spec is checked against the cluster (GPUs, PVCs, Secrets, output
ownership) and its trainer Job created. From then on the operator only observes: the trainer
Job, the export Job, their newest pods and the trainer's progress endpoint go into
`glmops.plan.status.next_status`, and the result is written back with the resourceVersion it
was computed from (a write from a stale read is refused by the apiserver and redone from a fresh
read). Triggers: kopf's create/resume/update of the FineTuneJob, events of our Jobs and pods,
and a poller for what raises no event (training progress, a PVC or Secret that a waiting job
needs). No handler needs a finalizer, so deleting a FineTuneJob never waits for the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from glmops import kube, metrics
from glmops.api.common import GROUP, VERSION
from glmops.api.finetunejob import KIND, PLURAL, FineTuneJob, FineTuneJobSpec, FineTuneJobStatus, Phase, Plan
from glmops.api.syntheticdataset import PLURAL as SDS_PLURAL
from glmops.conditions import ConditionType, Reason, find_condition
from glmops.contract.config import METRICS_PATH
from glmops.contract.records import MetricsError, ProgressRecord, parse_metrics, parse_result
from glmops.contract.uris import UriRole, parse_uri, synthetic_name
from glmops.handlers.children import owner_name, pod_news
from glmops.plan import names
from glmops.plan.changes import changed_sections, parse_section_hashes
from glmops.plan.export import ModelSizes, estimated_sizes, plan_export_job
from glmops.plan.finetune import (
    COMPONENT_LABEL,
    FTJ_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    METRICS_PORT_NAME,
    SPEC_SECTIONS_ANNOTATION,
    ClusterFacts,
    GpuNode,
    JobMeta,
    plan_finetune,
    plan_trainer_jobs,
)
from glmops.plan.status import (
    TERMINAL,
    Admission,
    Decision,
    JobObservation,
    Observation,
    admission_status,
    is_warning,
    next_status,
    observe_ranks,
)
from glmops.plan.storage import credential_secrets
from glmops.plan.synthetic_source import resolve_dataset_source
from glmops.settings import Settings

log = logging.getLogger(__name__)

API_RETRY_SECONDS = 15
CONFLICT_RETRIES = 5


# --- indexes fed by the FineTuneJob watch (no list per reconcile) ------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
async def ftj_outputs(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[tuple[str | None, str], str] | None:
    """Which FineTuneJob owns which output location: those whose trainer was created, at the
    destination it was created with (a job refused before it wrote owns nothing; an edited spec
    does not move the claim).

    Async only so that kopf calls it in its event loop: it runs on every event of every
    FineTuneJob, and a sync handler would cost a trip through the thread pool each time.
    """
    destination = status.get("outputDestination")
    return {(namespace, str(destination).rstrip("/")): name} if destination and status.get("trainerJob") else None


@kopf.index(GROUP, VERSION, PLURAL)
async def ftj_polled(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[str, tuple[str, str]] | None:
    """Jobs that need a look without an event: training (progress) or waiting for a PVC or Secret."""
    phase = status.get("phase")
    if phase == Phase.training:
        return {"progress": (str(namespace), name)}
    if phase == Phase.pending and not status.get("trainerJob"):
        return {"waiting": (str(namespace), name)}
    if phase == Phase.pending and int((status.get("plan") or {}).get("nodes") or 1) > 1:
        # The placement rule of a multi-node run counts time: nothing raises an event when it runs out.
        return {"waiting": (str(namespace), name)}
    return None


@kopf.index(GROUP, VERSION, PLURAL)
async def ftj_summaries(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[str, metrics.JobSummary]:
    """Every job's phase and progress, for the operator's metrics (glmops.metrics)."""
    return {metrics.ALL: metrics.job_summary(str(namespace), name, status)}


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


class DiffBaseHandoff:
    """Diff bases that `converge` already wrote in its own status write, for kopf's storage to skip.

    kopf stores the last-handled spec after the handler returns; riding on our conditional
    status write instead saves a second write per job (see glmops.handlers.persistence).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}

    def wrote(self, uid: str, diffbase: str) -> None:
        with self._lock:
            self._written[uid] = diffbase

    def take(self, uid: str, diffbase: str) -> bool:
        """Whether `diffbase` of `uid` was written already (forgotten once asked)."""
        with self._lock:
            return self._written.pop(uid, None) == diffbase


# --- kopf triggers ------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec")
def reconcile(body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """A FineTuneJob was created, changed, or found at start-up: bring its status up to date."""
    assert namespace is not None  # FineTuneJob is namespaced
    diffbase = memo.diffbase_storage.essence_json(body)
    converge(memo, namespace, name, kwargs["ftj_outputs"], diffbase=diffbase)


# A new Job's first events carry an empty status: nothing to learn from them.
@kopf.on.event("batch", "v1", "jobs", labels={FTJ_LABEL: kopf.PRESENT, MANAGED_BY_LABEL: MANAGED_BY}, when=lambda status, **_: bool(status))
def run_job_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """A trainer or export Job changed (pod failed, retried, completed): update its FineTuneJob."""
    assert namespace is not None
    converge(memo, namespace, owner_name(body, FTJ_LABEL), kwargs["ftj_outputs"])


@kopf.on.event("", "v1", "pods", labels={FTJ_LABEL: kopf.PRESENT, MANAGED_BY_LABEL: MANAGED_BY}, when=pod_news)
def run_pod_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """A trainer or export pod was scheduled, started, ended, or could not be placed."""
    assert namespace is not None
    converge(memo, namespace, owner_name(body, FTJ_LABEL), kwargs["ftj_outputs"])


# --- the one writer of status -----------------------------------------------------------------


def converge(memo: kopf.Memo, namespace: str, name: str, outputs: kopf.Index[Any, str], diffbase: str | None = None) -> None:
    """Read the job, observe what it runs, compute its status and write it conditionally.

    A write that loses to another writer (409) is redone from a fresh read; after the write come
    the deletions and the event that the new status explains.
    """
    if not name:
        return
    with metrics.reconciling(memo, metrics.FINETUNEJOB):
        _converge(memo, namespace, name, outputs, diffbase)


def _converge(memo: kopf.Memo, namespace: str, name: str, outputs: kopf.Index[Any, str], diffbase: str | None) -> None:
    api: client.ApiClient = memo.api
    for _attempt in range(CONFLICT_RETRIES):
        body = kube.get_custom(api, PLURAL, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # gone or going: its Jobs go with it (ownerReferences)
        retry = ""
        try:
            decision, children = _decide(memo, body, outputs)
        except _ApiTrouble as trouble:
            decision, children, retry = _api_trouble_status(body, trouble), [], str(trouble)
        wire = decision.status.to_wire()
        before = FineTuneJobStatus.model_validate(dict(body.get("status") or {})).to_wire()
        extra: dict[str, Any] = {}
        stored_diffbase = (body.get("status") or {}).get("lastHandledConfiguration")
        if diffbase is not None and diffbase != stored_diffbase:
            extra["lastHandledConfiguration"] = diffbase
        if wire != before or extra:
            try:
                patch = status_patch(before, wire) | extra
                kube.patch_custom_status(api, PLURAL, namespace, name, patch, body["metadata"]["resourceVersion"])
            except kube.ConflictError:
                continue
        if diffbase is not None:
            memo.diffbase_handoff.wrote(body["metadata"]["uid"], diffbase)
        _after_write(api, body, decision, children)
        if retry:
            raise kopf.TemporaryError(f"the API failed a request: {retry}", delay=API_RETRY_SECONDS)
        return
    raise kopf.TemporaryError(f"status of {namespace}/{name} kept changing while it was written", delay=1)


def status_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch from status `before` to `after`: `after`, with nulls for what it drops."""
    return _merge(_removals(before, after), after)


def _removals(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Merge-patch nulls for the keys that the new status drops, at any depth (a merge patch
    merges objects key by key, so a key left out would keep its old value)."""
    removed: dict[str, Any] = {}
    for key, old in before.items():
        if key == "lastHandledConfiguration":
            continue
        if key not in after:
            removed[key] = None
        elif isinstance(old, Mapping) and isinstance(after[key], Mapping):
            nested = _removals(old, after[key])
            if nested:
                removed[key] = nested
    return removed


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, object by object."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _ApiTrouble(Exception):
    """The cluster could not be read or written right now (RBAC, overload, network)."""

    def __init__(self, message: str, exc: Exception) -> None:
        super().__init__(message)
        self.exc = exc


def _api_trouble_status(body: Mapping[str, Any], trouble: _ApiTrouble) -> Decision:
    status = FineTuneJobStatus.model_validate(dict(body.get("status") or {}))
    generation = int(body["metadata"].get("generation") or 1)
    message = (
        f"the operator could not check or create this job: {trouble}; it retries every {API_RETRY_SECONDS} s. "
        "Check the operator's RBAC permissions and the apiserver's health"
    )
    return admission_status(status, Admission(generation=generation, api_error=message))


def _decide(memo: kopf.Memo, body: Mapping[str, Any], outputs: kopf.Index[Any, str]) -> tuple[Decision, list[tuple[str, str]]]:
    """The new status of `body` and the children to stop if the decision says so."""
    status = FineTuneJobStatus.model_validate(dict(body.get("status") or {}))
    generation = int(body["metadata"].get("generation") or 1)
    try:
        if not status.trainer_job and status.phase not in TERMINAL:
            return _admit(memo, body, status, generation, outputs)
        return _observe_and_decide(memo, body, status, generation)
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        raise _ApiTrouble(kube.describe_error(exc), exc) from exc


def _children(name: str, status: FineTuneJobStatus) -> list[tuple[str, str]]:
    found = [("Job", n) for n in (*_trainer_job_names(name, status), status.export_job) if n]
    return found + [("Service", names.trainer_service_name(name))]


def _trainer_job_names(name: str, status: FineTuneJobStatus) -> list[str]:
    """The trainer's Jobs: one, or for a multi-node run on a server without Indexed Jobs one per node rank."""
    if not status.trainer_job:
        return []
    nodes = status.plan.nodes if status.plan else 1
    if nodes > 1 and status.trainer_job == names.trainer_rank_job_name(name, 0):
        return [names.trainer_rank_job_name(name, rank) for rank in range(nodes)]
    return [status.trainer_job]


def _after_write(api: client.ApiClient, body: Mapping[str, Any], decision: Decision, children: list[tuple[str, str]]) -> None:
    namespace = body["metadata"]["namespace"]
    if decision.stop_children:
        # Status first, then the deletion: the Job watch must find the job already ended rather
        # than take the vanished Job for someone else's doing.
        for kind, child in children:
            kube.delete_child(api, kind, namespace, child)
    elif decision.withdraw_trainer:
        # Status first (placementRetryAt says the Jobs' absence is ours), then the half-placed attempt
        # goes. Foreground: each Job stays until its pods are gone, and the next attempt waits for the
        # Jobs, so it never competes with its own terminating pods for their nodes.
        for child in _trainer_job_names(body["metadata"]["name"], decision.status):
            kube.delete_child(api, "Job", namespace, child, propagation="Foreground")
    if decision.event is not None:
        event = decision.event
        try:
            kube.post_event(api, {**body, "kind": KIND}, "Warning" if is_warning(event) else "Normal", event.reason, event.message)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            # The status already says it; an event lost to an API hiccup is not worth a retry.
            log.warning("event %s for %s/%s not posted: %s", event.reason, namespace, body["metadata"]["name"], kube.describe_error(exc))


# --- admission: check once, create the trainer --------------------------------------------------


def _admit(
    memo: kopf.Memo, body: Mapping[str, Any], status: FineTuneJobStatus, generation: int, outputs: kopf.Index[Any, str]
) -> tuple[Decision, list[tuple[str, str]]]:
    api: client.ApiClient = memo.api
    settings: Settings = memo.settings
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta["namespace"])
    now = datetime.now(UTC)
    try:
        job = FineTuneJob.model_validate(dict(body))
    except ValidationError as exc:
        problems = tuple(f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        adm = Admission(generation, problems=problems, problem_reason=Reason.invalid_spec, now=now)
        return admission_status(status, adm), []
    trainer_name = names.trainer_job_name(name)
    # dataset.source: synthetic://NAME trains on that SyntheticDataset's output once it is Ready.
    synthetic = synthetic_name(job.spec.dataset.source)
    dataset = kube.get_custom(api, SDS_PLURAL, namespace, synthetic) if synthetic else None
    dataset_source, dataset_problem = resolve_dataset_source(job.spec.dataset.source, namespace, dataset)
    facts = _gather_facts(api, namespace, name, job.spec, outputs, memo, dataset_source)
    plan = plan_finetune(JobMeta(name, namespace, str(meta["uid"]), generation), job.spec, facts, settings)
    status.plan = Plan(
        gpu_memory_gi_b_per_gpu=round(plan.memory.per_gpu_gib, 1),
        nodes=plan.placement.nodes,
        gpus_per_node=plan.placement.gpus_per_node,
        min_gpu_memory_gi_b=round(plan.placement.min_gpu_memory_gib, 1),
    )
    destination = job.spec.output.destination
    found = list(plan.problems)
    if dataset_problem is not None:
        found = [dataset_problem, *(p for p in found if p.reason != Reason.synthetic_dataset_not_ready)]
    if found:
        for candidate in (trainer_name, names.trainer_rank_job_name(name, 0)):  # one Job, or rank 0's of one per rank
            existing = kube.get_job(api, namespace, candidate)
            if existing is not None and kube.owned_by(existing, str(meta["uid"])):
                # Admitted before (a status lost in a restore): only observe now, never fail a running trainer.
                return _admitted(status, generation, candidate, destination, now), []
        adm = Admission(
            generation,
            problems=tuple(str(p) for p in found),
            problem_reason=found[0].reason,
            waiting=all(p.waits for p in found),
            now=now,
        )
        return admission_status(status, adm), []
    try:
        for obj in plan.objects:
            kopf.adopt(obj, owner=kopf.Body(dict(body)))  # type: ignore[arg-type]
            kube.apply_child(api, obj, str(meta["uid"]))
    except kube.ForeignObjectError as exc:
        adm = Admission(generation, problems=(str(exc),), problem_reason=Reason.invalid_spec, now=now)
        return admission_status(status, adm), []
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        # The apiserver refused an object made from the spec: that spec can never run. End the
        # job with the API's own words instead of retrying forever; remove what was created.
        message = f"the cluster refused the trainer's objects: {kube.describe_error(exc)}; fix spec.resources or spec.podTemplate"
        adm = Admission(generation, problems=(message,), problem_reason=Reason.api_rejected, now=now)
        return admission_status(status, adm), [(o["kind"], o["metadata"]["name"]) for o in plan.objects]
    trainer_name = next(o["metadata"]["name"] for o in plan.objects if o["kind"] == "Job")  # rank 0's in the per-rank form
    adm = Admission(
        generation, trainer_job=trainer_name, destination=destination, now=now,
        advisories=tuple(str(p) for p in plan.advisories),
    )
    decision = admission_status(status, adm)
    if decision.status.phase is Phase.pending and not find_condition(status.conditions, ConditionType.succeeded):
        log.info("FineTuneJob %s/%s: created Job %s", namespace, name, trainer_name)
    return decision, []


def _admitted(status: FineTuneJobStatus, generation: int, trainer: str, destination: str, now: datetime) -> Decision:
    return admission_status(status, Admission(generation, trainer_job=trainer, destination=destination, now=now))


def _gather_facts(
    api: client.ApiClient,
    namespace: str,
    name: str,
    spec: FineTuneJobSpec,
    outputs: kopf.Index[Any, str],
    memo: kopf.Memo,
    dataset_source: str | None = None,
) -> ClusterFacts:
    # Every Secret the spec references (model, dataset, output), each looked up once.
    referenced = {secret for _field, secret in credential_secrets(spec)}
    secrets = frozenset(s for s in sorted(referenced) if kube.secret_exists(api, namespace, s))
    # A synthetic:// dataset counts as the file it resolved to (none while it is not Ready).
    located = [
        ("spec.model.source", spec.model.source, UriRole.model),
        ("spec.output.destination", spec.output.destination, UriRole.output),
    ]
    if dataset_source is not None:
        located.append(("spec.dataset.source", dataset_source, UriRole.dataset))
    claims = {parse_uri(u, f, role).claim for f, u, role in located}
    pvcs = frozenset(c for c in claims if c and kube.pvc_exists(api, namespace, c))
    destination = spec.output.destination.rstrip("/")
    others = sorted(n for n in outputs.get((namespace, destination), []) if n != name)
    return ClusterFacts(
        server_minor=memo.server_minor,
        secrets=secrets,
        pvcs=pvcs,
        outputs_in_use={destination: others[0]} if others else {},
        gpu_nodes=memo.node_cache.get(api),
        dataset_source=dataset_source,
    )


# --- after admission: observe only ---------------------------------------------------------------


def _observe_and_decide(
    memo: kopf.Memo, body: Mapping[str, Any], status: FineTuneJobStatus, generation: int
) -> tuple[Decision, list[tuple[str, str]]]:
    api: client.ApiClient = memo.api
    settings: Settings = memo.settings
    meta = body["metadata"]
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
    spec_raw = body.get("spec") or {}
    nodes = status.plan.nodes if status.plan else 1
    jobs_left = 0
    if nodes > 1 and status.trainer_job:
        # Every rank: the Jobs and pods of the run, one list each.
        selector = f"{FTJ_LABEL}={name},{COMPONENT_LABEL}=trainer"
        jobs = kube.list_jobs(api, namespace, selector)
        pods = kube.list_pods(api, namespace, selector)
        trainer = observe_ranks(jobs, pods, _trainer_job_names(name, status), nodes)
        trainer_job = next((j for j in jobs if j["metadata"]["name"] == status.trainer_job), None)
        jobs_left = len(jobs)
        # The Service outlives a withdrawn attempt and carries the same spec hashes.
        created_from_obj = trainer_job or kube.get_child(api, "Service", namespace, names.trainer_service_name(name))
        rank_zero = trainer.ranks[0] if trainer.ranks else None
        progress_ip = rank_zero.pod_ip if rank_zero and rank_zero.pod_phase == "Running" else ""
    else:
        trainer_job = kube.get_job(api, namespace, status.trainer_job) if status.trainer_job else None
        trainer = observe_job(api, namespace, trainer_job)
        created_from_obj = trainer_job
        progress_ip = ""
    export_job = kube.get_job(api, namespace, status.export_job) if status.export_job else None
    export = observe_job(api, namespace, export_job) if status.export_job else None
    try:
        spec: FineTuneJobSpec | None = FineTuneJobSpec.model_validate(spec_raw)
    except ValidationError:
        spec = None  # an edit the schema would refuse on a current cluster; the hashes cannot match
    changed: tuple[str, ...] = ()
    if created_from_obj is not None and spec is not None:
        created_from = parse_section_hashes((created_from_obj["metadata"].get("annotations") or {}).get(SPEC_SECTIONS_ANNOTATION))
        changed = tuple(changed_sections(created_from, spec))
    progress = None
    if trainer.pod_phase == "Running" and export is None and status.phase not in TERMINAL:
        if nodes > 1:
            progress = read_progress_at(progress_ip, settings.trainer_metrics_port, namespace, uid) if progress_ip else None
        else:
            progress = read_progress(trainer_job, api, namespace, uid, settings)
    obs = Observation(
        generation=generation,
        trainer=trainer,
        export=export,
        progress=progress,
        changed_sections=changed,
        cancel=spec_raw.get("cancel") is True,
        max_retries=int((spec_raw.get("failurePolicy") or {}).get("maxRetries", 3)),
        trainer_jobs_left=jobs_left,
        gang_placement_seconds=settings.gang_placement_seconds,
        gang_retry_seconds=settings.gang_retry_seconds,
    )
    decision = next_status(status, obs)
    if decision.create_export and trainer_job is not None and spec is not None:
        decision = _create_export(memo, body, spec, trainer_job, trainer, decision)
    if decision.recreate_trainer and spec is not None and not changed:
        _place_ranks_again(memo, body, spec, decision)
    return decision, _children(name, decision.status)


def _place_ranks_again(memo: kopf.Memo, body: Mapping[str, Any], spec: FineTuneJobSpec, decision: Decision) -> None:
    """Create a withdrawn multi-node run's Jobs again (as admission made them), then clear placementRetryAt."""
    api: client.ApiClient = memo.api
    meta = body["metadata"]
    job_meta = JobMeta(str(meta["name"]), str(meta["namespace"]), str(meta["uid"]), int(meta.get("generation") or 1))
    dataset_source: str | None = spec.dataset.source
    synthetic = synthetic_name(spec.dataset.source)
    if synthetic:
        # The SyntheticDataset was Ready at admission and its output cannot change since; read it again.
        dataset = kube.get_custom(api, SDS_PLURAL, job_meta.namespace, synthetic)
        dataset_source, problem = resolve_dataset_source(spec.dataset.source, job_meta.namespace, dataset)
        if dataset_source is None:
            log.warning("FineTuneJob %s/%s: not placing the ranks again yet: %s", job_meta.namespace, job_meta.name, problem)
            return
    for job in plan_trainer_jobs(job_meta, spec, memo.settings, memo.server_minor, dataset_source):
        kopf.adopt(job, owner=kopf.Body(dict(body)))  # type: ignore[arg-type]
        kube.apply_child(api, job, str(meta["uid"]))
    log.info("FineTuneJob %s/%s: placing all ranks again", meta["namespace"], meta["name"])
    decision.status.placement_retry_at = None


def _create_export(
    memo: kopf.Memo, body: Mapping[str, Any], spec: FineTuneJobSpec, trainer_job: dict[str, Any], trainer: JobObservation, decision: Decision
) -> Decision:
    """Create the export Job (idempotent), then record its name in the status about to be written."""
    api: client.ApiClient = memo.api
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta["namespace"])
    result = trainer.result
    sizes = estimated_sizes(spec.model.variant.value)
    if result is not None and result.model_bytes and result.largest_shard_bytes:
        sizes = ModelSizes(result.model_bytes, result.largest_shard_bytes, result.adapter_bytes or sizes.adapter_bytes)
    export = plan_export_job(JobMeta(name, namespace, str(meta["uid"]), int(meta.get("generation") or 1)), spec, trainer_job, sizes, memo.settings)
    kopf.adopt(export, owner=kopf.Body(dict(body)))  # type: ignore[arg-type]
    try:
        kube.apply_child(api, export, str(meta["uid"]))
    except (kube.ForeignObjectError, ApiException) as exc:
        if isinstance(exc, ApiException) and exc.status not in (400, 422):
            raise
        detail = str(exc) if isinstance(exc, kube.ForeignObjectError) else kube.describe_error(exc)
        status = decision.status
        from glmops.plan.status import PhaseDecision, apply_decision

        failed = PhaseDecision(Phase.failed, Reason.api_rejected, f"the cluster refused the export Job: {detail}")
        apply_decision(status, failed, status.observed_generation or 1, datetime.now(UTC))
        return Decision(status, stop_children=True, event=failed)
    decision.status.export_job = export["metadata"]["name"]
    return decision


def _terminated(pod: Mapping[str, Any] | None) -> dict[str, Any] | None:
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def observe_job(api: client.ApiClient, namespace: str, job: dict[str, Any] | None) -> JobObservation:
    """What a Job of the run and its newest pod show now (its result read from the pod's termination message)."""
    if job is None or job["metadata"].get("deletionTimestamp"):
        return JobObservation(missing=True)
    job_status = job.get("status") or {}
    conditions = {c["type"]: c for c in job_status.get("conditions") or [] if c.get("status") == "True"}
    pods = kube.job_pods(api, namespace, job["metadata"]["name"])
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
    terminated = next((t for t in (_terminated(p) for p in pods) if t is not None), None)
    return JobObservation(
        succeeded="Complete" in conditions,
        failed=failed is not None,
        failure_message=(failed.get("message") or failed.get("reason") or "") if failed else "",
        failed_pods=int(job_status.get("failed") or 0),
        suspended=bool((job.get("spec") or {}).get("suspend")),
        pod_name=str((newest or {}).get("metadata", {}).get("name", "")),
        pod_phase=str(pod_status.get("phase") or ""),
        node_name=str(((newest or {}).get("spec") or {}).get("nodeName") or ""),
        unschedulable_message=unschedulable,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        result=parse_result(str(terminated.get("message") or "")) if terminated else None,
        finished_at=str(job_status.get("completionTime") or ""),
    )


def read_progress(
    trainer_job: Mapping[str, Any] | None, api: client.ApiClient, namespace: str, uid: str, settings: Settings
) -> ProgressRecord | None:
    """The trainer's progress from its endpoint at the running pod's IP; None when it cannot be read."""
    if trainer_job is None:
        return None
    for pod in kube.job_pods(api, namespace, trainer_job["metadata"]["name"]):
        pod_ip = (pod.get("status") or {}).get("podIP")
        if (pod.get("status") or {}).get("phase") != "Running" or not pod_ip:
            continue
        port = _metrics_port(pod) or settings.trainer_metrics_port
        text = kube.read_pod_endpoint(pod_ip, port, METRICS_PATH)
        if text is None:
            return None
        try:
            return parse_metrics(text, expected_uid=uid)
        except MetricsError as exc:
            log.warning("progress of %s/%s not read from %s:%d: %s", namespace, pod["metadata"]["name"], pod_ip, port, exc)
            return None
    return None


def read_progress_at(pod_ip: str, port: int, namespace: str, uid: str) -> ProgressRecord | None:
    """The trainer's progress from the endpoint of rank 0's pod; None when it cannot be read."""
    text = kube.read_pod_endpoint(pod_ip, port, METRICS_PATH)
    if text is None:
        return None
    try:
        return parse_metrics(text, expected_uid=uid)
    except MetricsError as exc:
        log.warning("progress of a trainer in %s not read from %s:%d: %s", namespace, pod_ip, port, exc)
        return None


def _metrics_port(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == METRICS_PORT_NAME:
                return int(port["containerPort"])
    return None

"""ModelDeployment handlers: resolve, plan, apply the Service and Deployment, and keep status current.

`reconcile` is the one handler for create, resume and spec updates (replicas from the scale
subresource included). The same reconciliation runs when a FineTuneJob that a deployment names
changes (an index maps jobs to deployments: no polling), and status is recomputed from the
Deployment, its ReplicaSets and pods whenever one of them changes. Decisions live in
glmops.plan.serving*; all API calls go through glmops.kube. Status writes are conditional on
the resourceVersion that was read, so two writers never undo each other.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, cast

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from glmops import kube, metrics
from glmops.api.common import GROUP, VERSION
from glmops.api.finetunejob import PLURAL as FTJ_PLURAL
from glmops.api.modeldeployment import (
    PLURAL,
    DeploymentPhase,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ServingPlanStatus,
    SpeculativeDecoding,
    Strategy,
)
from glmops.conditions import ConditionType, Reason, find_condition
from glmops.plan.problems import Problem
from glmops.plan.serving import (
    MDEP_LABEL,
    DeploymentMeta,
    ServingFacts,
    ServingPlan,
    endpoint,
    model_uris,
    plan_serving,
    selector,
)
from glmops.plan.serving_download import CACHE_LABEL, cache_names, download_state
from glmops.plan.serving_source import resolve_source
from glmops.plan.serving_status import (
    WAIT_REASONS,
    ConditionValue,
    deployment_status,
    resolution_condition,
    rollout_status,
)
from glmops.plan.uris import parse_uri
from glmops.settings import Settings

RETRY_SECONDS = 30
"""How often a deployment waiting for a PVC or Secret, or for the API, is checked again."""
CONFLICT_RETRIES = 5


class _Retry(Exception):
    """The reconciliation should run again later (a PVC or Secret to appear, the API to answer)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@kopf.index(GROUP, VERSION, PLURAL)
async def mdep_jobs(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str | None, str], str] | None:
    """Which ModelDeployments name which FineTuneJob (source and adapters), kept current from the watch."""
    jobs = [str((spec.get("source") or {}).get("fineTuneJob") or "")]
    jobs += [str(a.get("fineTuneJob") or "") for a in spec.get("adapters") or [] if isinstance(a, dict)]
    return {(namespace, job): name for job in jobs if job} or None


@kopf.index(GROUP, VERSION, PLURAL)
async def mdep_summaries(namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, metrics.DeploymentSummary]:
    """Every deployment's phase and replicas, for the operator's metrics (glmops.metrics)."""
    return {metrics.ALL: metrics.deployment_summary(str(namespace), name, spec, status)}


def _gather_facts(
    api: client.ApiClient, namespace: str, name: str, spec: ModelDeploymentSpec, memo: kopf.Memo
) -> ServingFacts:
    names = [spec.source.fine_tune_job, *(a.fine_tune_job for a in spec.adapters)]
    jobs = {n: kube.get_custom(api, FTJ_PLURAL, namespace, n) for n in dict.fromkeys(n for n in names if n)}
    wanted = [spec.api_key_secret, spec.source.credentials_secret]
    secrets = frozenset(s for s in dict.fromkeys(wanted) if s and kube.secret_exists(api, namespace, s))
    resolution = resolve_source(spec, namespace, jobs)
    claims: set[str] = set()
    downloads: dict[str, str] = {}
    if resolution.model is not None:
        claims = {c for _, uri in model_uris(spec, resolution.model) if (c := parse_uri(uri).claim)}
        if resolution.model.uri.startswith("hf://"):
            _, job = cache_names(name, resolution.model.uri)
            state = download_state(kube.get_job(api, namespace, job))
            if state is not None:
                downloads[job] = state
    pvcs = frozenset(c for c in claims if kube.pvc_exists(api, namespace, c))
    return ServingFacts(jobs=jobs, secrets=secrets, pvcs=pvcs, gpu_nodes=memo.node_cache.get(api), downloads=downloads)


def _plan_status(plan: ServingPlan) -> ServingPlanStatus | None:
    if plan.memory is None or plan.placement is None:
        return None
    return ServingPlanStatus(
        gpus_per_replica=plan.placement.gpus,
        min_gpu_memory_gi_b=round(plan.placement.min_gpu_memory_gib, 1),
        memory_gi_b=round(plan.memory.total_gib, 1),
        weights_gi_b=round(plan.memory.weights_gib, 1),
        kv_cache_gi_b=round(plan.memory.kv_cache_gib, 1),
        context_length=plan.placement.context_length,
        parallel_slots=plan.placement.parallel_slots,
        speculative_decoding=SpeculativeDecoding.mtp if plan.mtp else SpeculativeDecoding.none,
    )


def _observe(api: client.ApiClient, namespace: str, name: str, replicas: int, strategy: Strategy) -> Any:
    deployment = kube.get_deployment(api, namespace, name)
    if deployment is None:
        return None
    label = f"{MDEP_LABEL}={name}"
    replica_sets = [
        rs for rs in kube.list_replica_sets(api, namespace, label) if kube.owned_by(rs, deployment["metadata"]["uid"])
    ]
    pods = kube.list_pods(api, namespace, label)
    return rollout_status(deployment, replica_sets, pods, replicas, recreate=strategy is Strategy.recreate)


def _event_for(body: Mapping[str, Any], before: ModelDeploymentStatus, after: ModelDeploymentStatus) -> None:
    """Post an event when the resolution changes or a problem appears (never on every status write)."""
    target = kopf.Body(cast(kopf.RawBody, dict(body)))
    old, new = find_condition(before.conditions, ConditionType.resolved), find_condition(after.conditions, ConditionType.resolved)
    if new is not None and (old is None or (old.status, old.reason) != (new.status, new.reason)):
        refused = new.status != "True" and new.reason not in WAIT_REASONS
        kopf.event(target, type="Warning" if refused else "Normal", reason=new.reason, message=new.message or new.reason)
    resolved_reason = new.reason if new is not None else ""
    old, new = find_condition(before.conditions, ConditionType.degraded), find_condition(after.conditions, ConditionType.degraded)
    degraded_now = new is not None and new.status == "True" and (old is None or (old.status, old.reason) != (new.status, new.reason))
    # A refusal already had its event as the Resolved change.
    if new is not None and degraded_now and new.reason != resolved_reason:
        kopf.event(target, type="Warning", reason=new.reason, message=new.message or new.reason)


def reconcile_deployment(api: client.ApiClient, memo: kopf.Memo, namespace: str, name: str, replan: bool = True) -> None:
    """Bring one ModelDeployment's objects and status up to date.

    With `replan`, its sources are resolved and its Service and Deployment applied; without, only
    its status is recomputed from the Deployment, ReplicaSets and pods. A status write that lost
    to another writer (409) is redone from a fresh read.
    """
    with metrics.reconciling(memo, metrics.MODELDEPLOYMENT, waits=(_Retry,)):
        _reconcile_deployment(api, memo, namespace, name, replan)


def _reconcile_deployment(api: client.ApiClient, memo: kopf.Memo, namespace: str, name: str, replan: bool) -> None:
    settings: Settings = memo.settings
    for _attempt in range(CONFLICT_RETRIES):
        body = kube.get_custom(api, PLURAL, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        generation = int(body["metadata"].get("generation") or 1)
        previous = ModelDeploymentStatus.model_validate(dict(body.get("status") or {}))
        meta = DeploymentMeta(name, namespace, str(body["metadata"]["uid"]), generation)
        retry = ""
        try:
            deployment_spec = ModelDeployment.model_validate(body).spec
        except ValidationError as exc:
            problems = [
                Problem(Reason.invalid_spec, "spec." + ".".join(str(p) for p in e["loc"][1:]), e["msg"]) for e in exc.errors()
            ]
            resolved = resolution_condition(problems, [], [], "")
            status = deployment_status(previous, generation, resolved, None, 0)
            if _write(api, body, previous, status):
                return
            continue
        if replan:
            facts = _gather_facts(api, namespace, name, deployment_spec, memo)
            plan = plan_serving(meta, deployment_spec, facts, settings)
            for obj in plan.setup:  # a cache claim and its download Job: made once, never changed
                kube.create_owned(api, obj, meta.uid)
            if plan.runnable:
                for obj in plan.objects:
                    if obj not in plan.setup:
                        kube.apply_owned(api, obj, meta.uid)
            resolved = resolution_condition(
                plan.problems, [*plan.waits, *plan.missing], plan.notes, _served_text(plan)
            )
            if plan.missing:
                retry = "; ".join(map(str, plan.missing))
            plan_status = _plan_status(plan)
            served_models = plan.model.served_names if plan.model is not None and plan.runnable else previous.served_models
        else:
            found = find_condition(previous.conditions, ConditionType.resolved)
            if found is None:
                return  # never reconciled yet: the reconcile handler writes the first status
            resolved = ConditionValue(found.type, found.status, found.reason, found.message or "")
            plan_status, served_models = previous.plan, previous.served_models
        rollout = _observe(api, namespace, name, deployment_spec.replicas, deployment_spec.strategy)
        status = deployment_status(previous, generation, resolved, rollout, deployment_spec.replicas)
        status.endpoint = endpoint(meta, settings) if rollout is not None else previous.endpoint
        status.selector = selector(meta)
        status.plan = plan_status if plan_status is not None else previous.plan
        status.served_models = list(served_models)
        if _write(api, body, previous, status):
            if replan and plan.runnable and status.phase is DeploymentPhase.ready and plan.model is not None:
                # every replica serves the current version: earlier downloads can go
                _drop_stale_caches(api, namespace, name, plan.model.origin or plan.model.uri)
            if retry:
                raise _Retry(retry)
            return
    raise kopf.TemporaryError(f"status of {namespace}/{name} kept changing under the operator; retrying", delay=5)


def _drop_stale_caches(api: client.ApiClient, namespace: str, name: str, current_uri: str) -> None:
    """The downloads of earlier hf:// models, once every replica serves the current version."""
    keep_claim, keep_job = cache_names(name, current_uri) if current_uri.startswith("hf://") else ("", "")
    selector = f"{MDEP_LABEL}={name},{CACHE_LABEL}"
    kube.delete_labelled(api, "Job", namespace, selector, keep_job)
    kube.delete_labelled(api, "PersistentVolumeClaim", namespace, selector, keep_claim)


def _served_text(plan: ServingPlan) -> str:
    model = plan.model
    if model is None:
        return ""
    names = ", ".join(model.served_names)
    return f"{model.kind.value} {model.uri} as {names}"


def _write(api: client.ApiClient, body: Mapping[str, Any], previous: ModelDeploymentStatus, status: ModelDeploymentStatus) -> bool:
    """Write status if it changed, conditionally; False when another writer got there first."""
    before, after = previous.to_wire(), status.to_wire()
    if before == after:
        return True
    metadata = body["metadata"]
    try:
        kube.patch_custom_status(
            api, PLURAL, metadata["namespace"], metadata["name"], after, resource_version=str(metadata["resourceVersion"])
        )
    except kube.ConflictError:
        return False
    _event_for(body, previous, status)
    return True


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec")
def reconcile(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Resolve, plan and apply a ModelDeployment; record the outcome in its status."""
    assert namespace is not None  # ModelDeployment is namespaced
    try:
        reconcile_deployment(memo.api, memo, namespace, name)
    except _Retry as exc:
        raise kopf.TemporaryError(f"waiting: {exc}; checking again in {RETRY_SECONDS} s", delay=RETRY_SECONDS) from exc
    except kube.ForeignObjectError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        raise kopf.TemporaryError(f"the API failed: {kube.describe_error(exc)}", delay=RETRY_SECONDS) from exc


_sync_lock = threading.Lock()


def _sync(memo: kopf.Memo, namespace: str, name: str, replan: bool, logger: kopf.Logger) -> None:
    """Reconcile from an event of another object; an API failure there waits for the next event."""
    try:
        reconcile_deployment(memo.api, memo, namespace, name, replan=replan)
    except _Retry:
        pass  # the reconcile handler's own retry timer covers missing PVCs and Secrets
    except (ApiException, urllib3.exceptions.HTTPError, kube.ForeignObjectError, kopf.TemporaryError) as exc:
        logger.warning("ModelDeployment %s/%s: status not updated: %s", namespace, name, exc)


@kopf.on.event(GROUP, VERSION, FTJ_PLURAL)
def finetunejob_changed(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A FineTuneJob changed: reconcile the deployments that name it (they may wait for it)."""
    index: kopf.Index[tuple[str | None, str], str] = kwargs["mdep_jobs"]
    if not index.get((namespace, name)):
        return
    fingerprint = repr(((body.get("status") or {}).get("phase"), (body.get("status") or {}).get("artifacts"), body["metadata"].get("generation")))
    seen: dict[tuple[str | None, str], str] = memo.job_fingerprints
    with _sync_lock:
        if seen.get((namespace, name)) == fingerprint:
            return  # progress reports and the like: nothing a deployment depends on
        seen[(namespace, name)] = fingerprint
    assert namespace is not None
    for deployment in sorted(set(index.get((namespace, name), []))):
        _sync(memo, namespace, deployment, True, logger)


@kopf.on.event("apps", "v1", "deployments", labels={MDEP_LABEL: kopf.PRESENT})
def deployment_changed(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """The serving Deployment changed (or was deleted, and is recreated): recompute status."""
    assert namespace is not None
    owner = body["metadata"]["labels"][MDEP_LABEL]
    _sync(memo, namespace, owner, event.get("type") == "DELETED", logger)


@kopf.on.event("batch", "v1", "jobs", labels={MDEP_LABEL: kopf.PRESENT}, when=lambda status, **_: bool(status))
def download_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A model download finished or failed: reconcile its deployment (it waits for the download)."""
    assert namespace is not None
    _sync(memo, namespace, body["metadata"]["labels"][MDEP_LABEL], True, logger)


@kopf.on.event("", "v1", "pods", labels={MDEP_LABEL: kopf.PRESENT})
def serving_pod_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A serving pod was placed, started, became ready, or fails: recompute status."""
    assert namespace is not None
    _sync(memo, namespace, body["metadata"]["labels"][MDEP_LABEL], False, logger)

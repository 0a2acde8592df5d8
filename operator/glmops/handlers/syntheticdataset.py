"""SyntheticDataset handlers: every trigger ends in `converge`, the one writer of a dataset's status.

Admission happens once: the spec is checked against the cluster (the teacher ModelDeployment is
Ready, PVCs and the key's Secret exist, no other dataset writes the output) and the generator Job
is created. From then on the operator only observes the Job, its newest pod, the generator's
progress page and its result (`glmops.plan.synthetic_status`), and writes status conditionally
(the resourceVersion it read). Triggers: kopf's create/resume/update, events of the generator's
Job and pods, of the teacher ModelDeployment (a waiting dataset starts when it becomes Ready), and
a poller for progress and for datasets waiting on a PVC or Secret. A dataset's own events wake
the FineTuneJobs that wait for it (`dataset.source: synthetic://NAME`). No finalizer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from glmops import kube
from glmops.api.common import GROUP, VERSION
from glmops.api.finetunejob import PLURAL as FTJ_PLURAL
from glmops.api.modeldeployment import PLURAL as MDEP_PLURAL
from glmops.api.syntheticdataset import (
    KIND,
    PLURAL,
    DatasetPhase,
    ResolvedTeacher,
    SyntheticDataset,
    SyntheticDatasetSpec,
    SyntheticDatasetStatus,
)
from glmops.conditions import Reason
from glmops.contract.synthetic import (
    METRICS_PATH,
    GeneratorMetricsError,
    GeneratorProgress,
    parse_generator_metrics,
    parse_generator_result,
)
from glmops.contract.uris import UriRole, parse_uri, synthetic_name
from glmops.handlers import finetunejob
from glmops.handlers.children import owner_name, pod_news
from glmops.handlers.finetunejob import status_patch
from glmops.plan import names
from glmops.plan.finetune import MANAGED_BY, MANAGED_BY_LABEL
from glmops.plan.synthetic import (
    METRICS_PORT_NAME,
    SDS_LABEL,
    SPEC_HASH_ANNOTATION,
    DatasetMeta,
    SyntheticFacts,
    plan_synthetic,
    spec_hash,
)
from glmops.plan.synthetic_status import (
    TERMINAL,
    Admission,
    Decision,
    GeneratorObservation,
    Observation,
    admission_status,
    is_warning,
    next_status,
)
from glmops.settings import Settings

log = logging.getLogger(__name__)

API_RETRY_SECONDS = 15
CONFLICT_RETRIES = 5
_TEACHER_REASONS = frozenset({Reason.teacher_not_found, Reason.teacher_not_ready})


# --- indexes fed by the watches (no list per reconcile) -----------------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
async def sds_outputs(namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[tuple[str | None, str], str] | None:
    """Which SyntheticDataset writes which output: those whose generator was created."""
    output = spec.get("output")
    return {(namespace, str(output)): name} if output and status.get("generatorJob") else None


@kopf.index(GROUP, VERSION, PLURAL)
async def sds_polled(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[str, tuple[str, str]] | None:
    """Datasets that need a look without an event: generating (progress) or waiting for a PVC or Secret."""
    phase = status.get("phase")
    if phase == DatasetPhase.generating:
        return {"progress": (str(namespace), name)}
    if phase in (None, DatasetPhase.pending) and not status.get("generatorJob"):
        return {"waiting": (str(namespace), name)}
    return None


@kopf.index(GROUP, VERSION, PLURAL)
async def sds_teachers(namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[tuple[str | None, str], str] | None:
    """Datasets not yet started, by the ModelDeployment they wait for as their teacher."""
    deployment = (spec.get("teacher") or {}).get("modelDeployment")
    if not deployment or status.get("generatorJob") or status.get("phase") in TERMINAL:
        return None
    return {(namespace, str(deployment)): name}


@kopf.index(GROUP, VERSION, FTJ_PLURAL)
async def ftj_synthetic(namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[tuple[str | None, str], str] | None:
    """FineTuneJobs not yet admitted, by the SyntheticDataset their dataset.source names."""
    dataset = synthetic_name(str((spec.get("dataset") or {}).get("source") or ""))
    if dataset is None or status.get("trainerJob") or status.get("phase") in ("Succeeded", "Failed", "Cancelled"):
        return None
    return {(namespace, dataset): name}


# --- kopf triggers ------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec")
def reconcile(body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """A SyntheticDataset was created, changed, or found at start-up: bring its status up to date."""
    assert namespace is not None
    converge(memo, namespace, name, kwargs["sds_outputs"], diffbase=memo.diffbase_storage.essence_json(body))


@kopf.on.event("batch", "v1", "jobs", labels={SDS_LABEL: kopf.PRESENT, MANAGED_BY_LABEL: MANAGED_BY}, when=lambda status, **_: bool(status))
def generator_job_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """The generator Job changed (pod failed, retried, completed)."""
    assert namespace is not None
    converge(memo, namespace, owner_name(body, SDS_LABEL), kwargs["sds_outputs"])


@kopf.on.event("", "v1", "pods", labels={SDS_LABEL: kopf.PRESENT, MANAGED_BY_LABEL: MANAGED_BY}, when=pod_news)
def generator_pod_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """A generator pod started, ended, or could not be placed."""
    assert namespace is not None
    converge(memo, namespace, owner_name(body, SDS_LABEL), kwargs["sds_outputs"])


@kopf.on.event(GROUP, VERSION, MDEP_PLURAL)
def teacher_changed(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """A ModelDeployment changed: datasets waiting for it as their teacher look again."""
    waiting: kopf.Index[tuple[str | None, str], str] = kwargs["sds_teachers"]
    assert namespace is not None
    for dataset in sorted(set(waiting.get((namespace, name), []))):
        _look(memo, namespace, dataset, kwargs["sds_outputs"], logger)


@kopf.on.event(GROUP, VERSION, PLURAL)
def dataset_changed(namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """A SyntheticDataset changed: FineTuneJobs waiting to train on it look again."""
    waiting: kopf.Index[tuple[str | None, str], str] = kwargs["ftj_synthetic"]
    assert namespace is not None
    for job in sorted(set(waiting.get((namespace, name), []))):
        try:
            finetunejob.converge(memo, namespace, job, kwargs["ftj_outputs"])
        except kopf.TemporaryError:
            pass  # said in the job's status; its own retry follows
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            logger.warning("FineTuneJob %s/%s not updated: %s", namespace, job, kube.describe_error(exc))


def _look(memo: kopf.Memo, namespace: str, name: str, outputs: kopf.Index[Any, str], logger: Any = log) -> None:
    try:
        converge(memo, namespace, name, outputs)
    except kopf.TemporaryError:
        pass  # said in status; the next look tries again
    except Exception:
        logger.exception("looking at SyntheticDataset %s/%s failed", namespace, name)


# --- the one writer of status ---------------------------------------------------------------------


class _ApiTrouble(Exception):
    """The cluster could not be read or written right now."""


def converge(memo: kopf.Memo, namespace: str, name: str, outputs: kopf.Index[Any, str], diffbase: str | None = None) -> None:
    """Read the dataset, observe its generator, compute its status and write it conditionally."""
    if not name:
        return
    api: client.ApiClient = memo.api
    for _attempt in range(CONFLICT_RETRIES):
        body = kube.get_custom(api, PLURAL, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # gone or going: its Job goes with it (ownerReferences)
        retry = ""
        try:
            decision = _decide(memo, body, outputs)
        except _ApiTrouble as trouble:
            retry = str(trouble)
            message = (
                f"the operator could not check or create this dataset: {trouble}; it retries every {API_RETRY_SECONDS} s. "
                "Check the operator's RBAC permissions and the apiserver's health"
            )
            status = SyntheticDatasetStatus.model_validate(dict(body.get("status") or {}))
            decision = admission_status(status, Admission(int(body["metadata"].get("generation") or 1), api_error=message))
        before = SyntheticDatasetStatus.model_validate(dict(body.get("status") or {})).to_wire()
        after = decision.status.to_wire()
        extra: dict[str, Any] = {}
        if diffbase is not None and diffbase != (body.get("status") or {}).get("lastHandledConfiguration"):
            extra["lastHandledConfiguration"] = diffbase
        if after != before or extra:
            try:
                kube.patch_custom_status(api, PLURAL, namespace, name, status_patch(before, after) | extra, body["metadata"]["resourceVersion"])
            except kube.ConflictError:
                continue
        if diffbase is not None:
            memo.diffbase_handoff.wrote(body["metadata"]["uid"], diffbase)
        _after_write(api, body, decision)
        if retry:
            raise kopf.TemporaryError(f"the API failed a request: {retry}", delay=API_RETRY_SECONDS)
        return
    raise kopf.TemporaryError(f"status of {namespace}/{name} kept changing while it was written", delay=1)


def _after_write(api: client.ApiClient, body: Mapping[str, Any], decision: Decision) -> None:
    namespace = body["metadata"]["namespace"]
    job = decision.status.generator_job
    if decision.stop_generator and job:
        kube.delete_child(api, "Job", namespace, job)
    if decision.event is not None:
        event = decision.event
        try:
            kube.post_event(api, {**body, "kind": KIND}, "Warning" if is_warning(event) else "Normal", event.reason, event.message)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.warning("event %s for %s/%s not posted: %s", event.reason, namespace, body["metadata"]["name"], kube.describe_error(exc))


def _decide(memo: kopf.Memo, body: Mapping[str, Any], outputs: kopf.Index[Any, str]) -> Decision:
    status = SyntheticDatasetStatus.model_validate(dict(body.get("status") or {}))
    generation = int(body["metadata"].get("generation") or 1)
    try:
        if not status.generator_job and status.phase not in TERMINAL:
            return _admit(memo, body, status, generation, outputs)
        return _observe(memo, body, status, generation)
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        raise _ApiTrouble(kube.describe_error(exc)) from exc


def _admit(memo: kopf.Memo, body: Mapping[str, Any], status: SyntheticDatasetStatus, generation: int, outputs: kopf.Index[Any, str]) -> Decision:
    api: client.ApiClient = memo.api
    meta = body["metadata"]
    name, namespace, uid = str(meta["name"]), str(meta["namespace"]), str(meta["uid"])
    now = datetime.now(UTC)
    try:
        spec = SyntheticDataset.model_validate(dict(body)).spec
    except ValidationError as exc:
        problems = tuple(f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return admission_status(status, Admission(generation, problems=problems, problem_reason=Reason.invalid_spec, now=now))
    job_name = names.generator_job_name(name)
    facts = _gather_facts(api, namespace, name, spec, outputs, memo)
    plan = plan_synthetic(DatasetMeta(name, namespace, uid, generation), spec, facts, memo.settings)
    if plan.problems:
        existing = kube.get_job(api, namespace, job_name)
        if existing is not None and kube.owned_by(existing, uid):
            # Created before (a status lost in a restore): only observe from now on.
            return admission_status(status, Admission(generation, generator_job=job_name, now=now))
        teacher_only = all(p.reason in _TEACHER_REASONS for p in plan.problems)
        adm = Admission(
            generation, problems=tuple(str(p) for p in plan.problems), problem_reason=plan.problems[0].reason,
            waiting=plan.waiting, teacher_problem=teacher_only, now=now,
        )  # fmt: skip
        return admission_status(status, adm)
    assert plan.job is not None and plan.teacher is not None
    job = plan.job
    kopf.adopt(job, owner=kopf.Body(dict(body)))  # type: ignore[arg-type]
    try:
        kube.apply_child(api, job, uid)
    except kube.ForeignObjectError as exc:
        return admission_status(status, Admission(generation, problems=(str(exc),), problem_reason=Reason.invalid_spec, now=now))
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        message = f"the cluster refused the generator Job: {kube.describe_error(exc)}"
        return admission_status(status, Admission(generation, problems=(message,), problem_reason=Reason.api_rejected, now=now))
    log.info("SyntheticDataset %s/%s: created Job %s", namespace, name, job_name)
    teacher = ResolvedTeacher(url=plan.teacher.url, model=plan.teacher.model)
    return admission_status(status, Admission(generation, generator_job=job_name, teacher=teacher, now=now))


def _gather_facts(
    api: client.ApiClient, namespace: str, name: str, spec: SyntheticDatasetSpec, outputs: kopf.Index[Any, str], memo: kopf.Memo
) -> SyntheticFacts:
    deployment = kube.get_custom(api, MDEP_PLURAL, namespace, spec.teacher.model_deployment) if spec.teacher.model_deployment else None
    secret = spec.teacher.api_key_secret.name if spec.teacher.api_key_secret else None
    if secret is None and deployment is not None:
        secret = (deployment.get("spec") or {}).get("apiKeySecret")
    secrets = frozenset({secret}) if secret and kube.secret_exists(api, namespace, secret) else frozenset()
    claims = {parse_uri(u, f, UriRole.dataset, ("pvc", "file")).claim for f, u in (("spec.prompts", spec.prompts), ("spec.output", spec.output))}
    pvcs = frozenset(c for c in claims if c and kube.pvc_exists(api, namespace, c))
    others = sorted(n for n in outputs.get((namespace, spec.output), []) if n != name)
    return SyntheticFacts(
        now_unix=time.time(),
        server_minor=memo.server_minor,
        secrets=secrets,
        pvcs=pvcs,
        teacher_deployment=deployment,
        outputs_in_use={spec.output: others[0]} if others else {},
    )


def _observe(memo: kopf.Memo, body: Mapping[str, Any], status: SyntheticDatasetStatus, generation: int) -> Decision:
    api: client.ApiClient = memo.api
    meta = body["metadata"]
    namespace, uid = str(meta["namespace"]), str(meta["uid"])
    job = kube.get_job(api, namespace, status.generator_job) if status.generator_job else None
    observed, running_pod = observe_generator(api, namespace, job)
    spec_changed = False
    max_retries = 3
    try:
        spec = SyntheticDatasetSpec.model_validate(body.get("spec") or {})
        max_retries = spec.failure_policy.max_retries
        created_from = ((job or {}).get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        spec_changed = created_from is not None and created_from != spec_hash(spec)
    except ValidationError:
        spec_changed = True  # an edit the schema would refuse on a current cluster
    progress = None
    if running_pod is not None and status.phase not in TERMINAL:
        progress = read_progress(running_pod, uid, memo.settings)
    obs = Observation(generation, observed, progress, spec_changed, max_retries)
    return next_status(status, obs)


def observe_generator(api: client.ApiClient, namespace: str, job: Mapping[str, Any] | None) -> tuple[GeneratorObservation, dict[str, Any] | None]:
    """What the generator Job and its newest pod show now, and the pod if it runs."""
    if job is None or job["metadata"].get("deletionTimestamp"):
        return GeneratorObservation(missing=True), None
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
    result = None
    for pod in pods:  # newest first: the newest pod that ended with a result says how the run went
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated and result is None:
                result = parse_generator_result(str(terminated.get("message") or ""))
        if result is not None:
            break
    failed = conditions.get("Failed")
    observation = GeneratorObservation(
        succeeded="Complete" in conditions,
        failed=failed is not None,
        failure_reason=str(failed.get("reason") or "") if failed else "",
        failure_message=str(failed.get("message") or "") if failed else "",
        failed_pods=int(job_status.get("failed") or 0),
        pod_phase=str(pod_status.get("phase") or ""),
        unschedulable_message=unschedulable,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        result=result,
    )
    running = newest if pod_status.get("phase") == "Running" and pod_status.get("podIP") else None
    return observation, running


def read_progress(pod: Mapping[str, Any], uid: str, settings: Settings) -> GeneratorProgress | None:
    """The generator's progress from its endpoint at the pod's IP; None when it cannot be read."""
    port = settings.generator_metrics_port
    for container in (pod.get("spec") or {}).get("containers") or []:
        for item in container.get("ports") or []:
            if item.get("name") == METRICS_PORT_NAME:
                port = int(item["containerPort"])
    pod_ip = str((pod.get("status") or {}).get("podIP"))
    text = kube.read_pod_endpoint(pod_ip, port, METRICS_PATH)
    if text is None:
        return None
    try:
        return parse_generator_metrics(text, expected_uid=uid)
    except GeneratorMetricsError as exc:
        log.warning("progress of %s not read from %s:%d: %s", pod["metadata"]["name"], pod_ip, port, exc)
        return None

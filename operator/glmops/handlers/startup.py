"""Operator start-up: kopf settings chosen on purpose, and the shared API client in `memo`."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes import client, config

from glmops import kube
from glmops.api.common import GROUP
from glmops.handlers import finetunejob, syntheticdataset
from glmops.handlers.finetunejob import DiffBaseHandoff, NodeCache
from glmops.handlers.persistence import DIFFBASE_FIELD, ProgressAnnotations, StatusDiffBase
from glmops.handlers.poller import Poller
from glmops.metrics import OperatorMetrics
from glmops.plan.finetune import MANAGED_BY, MANAGED_BY_LABEL
from glmops.settings import Settings


def _api_client(timeout_s: float) -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 64  # handlers run in parallel threads
    return kube.TimedApiClient(configuration, timeout_s=timeout_s)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Set persistence, watching, posting and concurrency for one operator replica."""
    ours = Settings.from_env()
    # kopf's own bookkeeping: handler progress in annotations under our group, our finalizer
    # name (no handler needs one: deleting a FineTuneJob never waits for the operator), and the
    # last-handled spec in status, where it rides on our own status write (see
    # glmops.handlers.persistence for why each costs no extra write per object).
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = ProgressAnnotations(prefix=GROUP)
    memo.diffbase_handoff = DiffBaseHandoff()
    memo.diffbase_storage = StatusDiffBase(field=DIFFBASE_FIELD, handoff=memo.diffbase_handoff)
    settings.persistence.diffbase_storage = memo.diffbase_storage
    # Every API request kopf makes ends within the operator's API timeout; watches have their own.
    settings.networking.request_timeout = ours.api_timeout_seconds
    settings.networking.connect_timeout = min(10.0, ours.api_timeout_seconds)
    # Watch only the Jobs and pods glmops made (server side): unrelated churn costs nothing.
    for resource in (("batch", "v1", "jobs"), ("", "v1", "pods")):
        settings.watching.label_selectors[resource] = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    # Restart watches every 10 minutes (server side) and give up on a silent connection after 11,
    # so a half-dead connection through a load balancer is noticed.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    # We post our own events at phase transitions; kopf's per-handler info events would double
    # the writes per object.
    settings.posting.level = logging.WARNING
    # Handlers are sync (kubernetes client): give them enough threads to keep up with bursts.
    settings.execution.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="glmops")
    # One worker per object, unlimited: a worker keeps its slot for `idle_timeout` after its last
    # event, so a cap (we tried 64) turns a burst of new jobs into batches of 64 every 5 s.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 1.0
    memo.api = _api_client(ours.api_timeout_seconds)
    memo.settings = ours
    memo.server_minor = kube.server_minor(memo.api)  # decides multi-node support; fixed for our lifetime
    memo.node_cache = NodeCache()
    memo.job_fingerprints = {}  # FineTuneJob -> what ModelDeployments last saw of it (glmops.handlers.modeldeployment)
    # Progress and waiting jobs raise no event: a poller looks at them (no kopf timer, which
    # would need a finalizer on every training job).
    ftj_outputs, sds_outputs = kwargs["ftj_outputs"], kwargs["sds_outputs"]
    memo.poller = Poller(
        memo.settings, kwargs["ftj_polled"], lambda ns, name: finetunejob.converge(memo, ns, name, ftj_outputs), "FineTuneJob"
    )
    memo.poller.start()
    memo.synthetic_poller = Poller(
        memo.settings, kwargs["sds_polled"], lambda ns, name: syntheticdataset.converge(memo, ns, name, sds_outputs), "SyntheticDataset"
    )
    memo.synthetic_poller.start()
    memo.metrics = OperatorMetrics()
    memo.metrics.watch(kwargs["ftj_summaries"], kwargs["mdep_summaries"])
    memo.metrics.serve(ours.metrics_address, ours.metrics_port)
    logger.info("glmops operator started (trainer image %s)", memo.settings.trainer_image)


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
    """Stop the metrics endpoint and the pollers, and close the API client's connection pool."""
    metrics = getattr(memo, "metrics", None)
    if metrics is not None:
        metrics.stop()
    for name in ("poller", "synthetic_poller"):
        poller = getattr(memo, name, None)
        if poller is not None:
            poller.stop()
    api = getattr(memo, "api", None)
    if api is not None:
        api.close()

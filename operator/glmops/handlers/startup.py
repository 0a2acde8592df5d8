"""Operator start-up: kopf settings chosen on purpose, and the shared API client in `memo`."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes import client, config

from glmops import kube
from glmops.api.common import GROUP
from glmops.handlers.finetunejob import NodeCache
from glmops.handlers.persistence import DIFFBASE_FIELD, ProgressAnnotations, StatusDiffBase
from glmops.settings import Settings


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 64  # handlers run in parallel threads
    return client.ApiClient(configuration)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Set persistence, watching, posting and concurrency for one operator replica."""
    # kopf's own bookkeeping: handler progress in annotations under our group, our finalizer
    # name, and the last-handled spec in status, where it rides on our own status patch
    # (see glmops.handlers.persistence for why each costs no extra write per object).
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = ProgressAnnotations(prefix=GROUP)
    settings.persistence.diffbase_storage = StatusDiffBase(field=DIFFBASE_FIELD)
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
    memo.api = _api_client()
    memo.settings = Settings.from_env()
    memo.server_minor = kube.server_minor(memo.api)  # decides multi-node support; fixed for our lifetime
    memo.node_cache = NodeCache()
    memo.job_fingerprints = {}  # FineTuneJob -> what ModelDeployments last saw of it (glmops.handlers.modeldeployment)
    logger.info("glmops operator started (trainer image %s)", memo.settings.trainer_image)


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
    """Close the API client's connection pool."""
    api = getattr(memo, "api", None)
    if api is not None:
        api.close()

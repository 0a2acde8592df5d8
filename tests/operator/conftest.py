"""The operator as users run it: `glmops run` in its own process, against the session's cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from operator_support import OperatorProcess, free_port

from glmops_dev.cluster import KubeCluster


@pytest.fixture(scope="session")
def glmops_operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for the session (tests that restart it put it back running)."""
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), env={
            "GLMOPS_TRAINER_IMAGE": "ghcr.io/glmops/trainer:test",
            # The trainer pods run on this machine's CPU, offline, beside the test suite.
            "GLMOPS_EXTRA_TRAINER_ENV": "CUDA_VISIBLE_DEVICES=,HF_HUB_OFFLINE=1,OMP_NUM_THREADS=2",
            # Pods of the local node agent share the host's network (pod IP 127.0.0.1), as other
            # test runs on this machine may: a port of our own keeps trainers' endpoints apart.
            "GLMOPS_TRAINER_METRICS_PORT": str(free_port()),
            "GLMOPS_PROGRESS_POLL_SECONDS": "2",
        })
    op.start()
    try:
        yield op
    finally:
        op.stop()

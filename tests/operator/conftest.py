"""The operator as users run it: `glmops run` in its own process, against the session's cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from operator_support import OperatorProcess

from glmops_dev.cluster import KubeCluster


@pytest.fixture(scope="session")
def glmops_operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for the session (tests that restart it put it back running)."""
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), env={
            "GLMOPS_TRAINER_IMAGE": "ghcr.io/glmops/trainer:test",
            # The trainer pods run on this machine's CPU, offline, beside the test suite.
            "GLMOPS_EXTRA_TRAINER_ENV": "CUDA_VISIBLE_DEVICES=,HF_HUB_OFFLINE=1,OMP_NUM_THREADS=2",
            # Serving pods on CPU: llama-server's threads, beside the test suite.
            "GLMOPS_SERVING_CPU_ONLY_CPUS": "2",
            # Progress is read from each trainer pod's own IP; read it often in tests.
            "GLMOPS_PROGRESS_POLL_SECONDS": "2",
        })
    op.start()
    try:
        yield op
    finally:
        op.stop()

"""The operator as users run it: `glmops run` in its own process, against the session's cluster."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from operator_support import OperatorProcess

from glmops_dev.cluster import KubeCluster


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def glmops_operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for the session (tests that restart it put it back running)."""
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), env={
            "GLMOPS_TRAINER_IMAGE": "ghcr.io/glmops/trainer:test",
            # The trainer pods run on this machine's CPU, offline, beside the test suite.
            "GLMOPS_EXTRA_TRAINER_ENV": "CUDA_VISIBLE_DEVICES=,HF_HUB_OFFLINE=1,OMP_NUM_THREADS=2",
            # Serving pods share this machine's network until pods get their own: a free port, on loopback.
            "GLMOPS_SERVING_CONTAINER_PORT": str(_free_port()),
            "GLMOPS_SERVING_LISTEN_HOST": "127.0.0.1",
            "GLMOPS_SERVING_CPU_ONLY_CPUS": "2",
        })
    op.start()
    try:
        yield op
    finally:
        op.stop()

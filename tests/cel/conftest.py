"""Fixtures of the CEL tests: one apiextensions-apiserver per session with the generated CRDs installed unchanged."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from apiext import NAMESPACE, ApiextServer, ApiextServerError, find_binaries, load_crds


@pytest.fixture(scope="session")
def apiext() -> Iterator[ApiextServer]:
    """A running apiextensions-apiserver 1.36 with every CRD of crds/ Established and served."""
    try:
        server_binary, etcd_binary = find_binaries(build=os.environ.get("GLMOPS_NO_BUILD", "") != "1")
        server = ApiextServer(server_binary, etcd_binary).start()
    except ApiextServerError as exc:
        pytest.fail(f"The apiextensions-apiserver is not available.\n{exc}", pytrace=False)
    try:
        for crd in load_crds():
            server.install_crd(crd)
            group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
            version = crd["spec"]["versions"][0]["name"]
            path = f"/apis/{group}/{version}/namespaces/{NAMESPACE}/{plural}"
            deadline = time.monotonic() + 60
            while server.request("GET", path).status != 200:
                if time.monotonic() > deadline:
                    pytest.fail(f"{plural} not served 60 s after its CRD was Established")
                time.sleep(0.2)
        yield server
    finally:
        server.stop()

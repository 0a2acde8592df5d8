"""Waiting in tests: poll until something holds, or fail saying what never happened."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float = 60.0,
    diagnose: Callable[[], str] = lambda: "",
    interval_s: float = 0.2,
) -> T:
    """Poll ``probe`` until it returns something truthy and return that; fail naming ``what``
    (and what ``diagnose`` adds, e.g. a log tail) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(interval_s)


def wait_until_served(base_url: str, timeout_s: float = 60.0, diagnose: Callable[[], str] = lambda: "") -> None:
    """Wait until the server behind a Service answers ``GET /health`` with 200.

    A ModelDeployment is Ready once its replicas are; the Service's route to a new replica follows
    by itself, as on any cluster: the endpoints controller lists the pod, then kube-proxy rewrites
    the node's rules. A client's first request right after Ready can land in that gap and find no
    route, so a test that means to check what the server says waits for this first."""
    root = base_url.removesuffix("/").removesuffix("/v1")
    errors: list[str] = []

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{root}/health", timeout=10) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError) as exc:
            errors.append(repr(exc))
            return False

    wait_for(f"{root} to answer through its Service", answers, timeout_s, lambda: f"{errors[-3:]}\n{diagnose()}", 0.5)

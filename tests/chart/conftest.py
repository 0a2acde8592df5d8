"""A tiny Flash-architecture model and a dataset that pods of the local cluster read by file:// URI."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A folder under the checkout (pods of the node agent see it) for the model and the outputs."""
    path = REPO / ".state" / f"chart-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def flash_model(workdir: Path) -> Path:
    """A random-weight GLM-4.7-Flash-architecture model with the official chat template's tokenizer."""
    import torch

    from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
    return build_tiny_model(
        "glm4_moe_lite", workdir / "model", tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe_lite"]
    )


@pytest.fixture(scope="module")
def dataset() -> Path:
    return REPO / "tests" / "data" / "datasets" / "agentic_small.jsonl"

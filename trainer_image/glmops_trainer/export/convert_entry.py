"""Run llama.cpp's own `convert_hf_to_gguf.py`, with one narrow allowance for GLM tokenizers.

    python -m glmops_trainer.export.convert_entry LLAMA_CPP_DIR [converter arguments...]

The converter identifies a BPE tokenizer's pre-tokenizer by hashing how it splits a fixed text and
refuses unknown hashes. A GLM-4.7 tokenizer retrained or shrunk (the tiny test tokenizers use
GLM-4's split regex with a smaller vocabulary) has a hash the converter does not list, although
its pre-tokenizer is GLM-4's. For the GLM-4.7 model classes only, and only when the converter
does not recognise the hash, this answers `glm4` (the pre-type the converter itself gives the
released GLM-4.5/4.7 tokenizers) and logs that it did. Everything else is the converter's code,
imported from LLAMA_CPP_DIR and run with its own `main()`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

GLM_PRE_TYPE = "glm4"
GLM_CONVERTER_CLASSES = ("Glm4MoeModel", "Glm4MoeLiteModel")
"""Converter classes of GLM-4.7 (arch glm4moe) and GLM-4.7-Flash (arch deepseek2)."""

log = logging.getLogger("glmops.convert")


def _install_glm_pre_tokenizer_fallback(glm_module: Any) -> None:
    for class_name in GLM_CONVERTER_CLASSES:
        cls = getattr(glm_module, class_name)
        original = cls.get_vocab_base_pre

        def get_vocab_base_pre(
            self: Any, tokenizer: Any, _original: Any = original, _name: str = class_name
        ) -> str:
            try:
                result: str = _original(self, tokenizer)
            except NotImplementedError:
                log.warning(
                    "%s: the converter does not know this tokenizer's pre-tokenizer hash; using %r, the "
                    "pre-type of GLM-4.5/4.7 tokenizers",
                    _name,
                    GLM_PRE_TYPE,
                )
                return GLM_PRE_TYPE
            return result

        cls.get_vocab_base_pre = get_vocab_base_pre


def main(argv: list[str]) -> None:
    """Import the converter from the llama.cpp tree argv[0] and run it with the remaining arguments."""
    if not argv:
        raise SystemExit(
            "usage: python -m glmops_trainer.export.convert_entry LLAMA_CPP_DIR [converter args]"
        )
    tree = Path(argv[0])
    # The tree's gguf-py must win over any installed `gguf` package: the converter and gguf-py
    # of one llama.cpp revision belong together.
    sys.path[:0] = [str(tree / "gguf-py"), str(tree)]
    import convert_hf_to_gguf  # type: ignore[import-not-found]
    from conversion import glm  # type: ignore[import-not-found]

    _install_glm_pre_tokenizer_fallback(glm)
    sys.argv = [str(tree / "convert_hf_to_gguf.py"), *argv[1:]]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])

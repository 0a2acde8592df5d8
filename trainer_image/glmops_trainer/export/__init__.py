"""Export of a trained adapter: adapter manifest, streaming merge, GGUF, quantizations, atomic publishing.

Entry points: `export_after_training(config, adapter_dir, output_dir)` and `run_export(config)`
(`python -m glmops_trainer export --config job.json`, which the operator runs as its own CPU-only
Job after training). Both return the manifest written to `artifacts.json`.
"""

from __future__ import annotations

from glmops_trainer.export.adapter import AdapterError
from glmops_trainer.export.merge import MergeError
from glmops_trainer.export.pipeline import export_after_training, run_export

USER_ERRORS: tuple[type[Exception], ...] = (AdapterError, MergeError)
"""Errors caused by the job's inputs (adapter or base model); the message names the file and the fix."""

__all__ = ["USER_ERRORS", "AdapterError", "MergeError", "export_after_training", "run_export"]

"""The export recipe: adapter -> merged weights -> GGUF -> quantizations -> manifest.

    python -m glmops_trainer export --config job.json

Layout of the output folder (`output.destination`):

    adapter/            peft's adapter files + glmops-adapter.json            (format adapter)
    merged/             merged checkpoint, per-expert layout, MTP kept          (format merged)
    gguf/<Q>/           <job>-<Q>.gguf and its Ollama Modelfile                 (format gguf / modelfile)
    artifacts.json      the manifest, written last (its `merged` entry: folder, size, MTP layers kept)
    .export-journal.jsonl, .export-work/   bookkeeping for retries (work files are deleted at the end)

Each step publishes through `ArtifactStore` (temporary names, renames, journal), so a crash leaves
no manifest and the next run redoes only what is missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from glmops.contract.uris import join_uri
from glmops_trainer.config import OutputFormat, TrainerConfig
from glmops_trainer.export.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_MANIFEST,
    ADAPTER_WEIGHTS,
    adapter_manifest,
    load_adapter_deltas,
    read_adapter_config,
)
from glmops_trainer.export.gguf import check_gguf, convert_to_gguf, outtype_for
from glmops_trainer.export.merge import (
    MergeError,
    MergeResult,
    merge_lora_streaming,
    read_base_config,
    remove_tree,
)
from glmops_trainer.export.modelfile import read_generation_config, render_modelfile
from glmops_trainer.export.publish import Artifact, ArtifactStore, FileRecord
from glmops_trainer.export.quantize import quantize_gguf
from glmops_trainer.locations import ADAPTER_DIR, MODEL_CACHE_DIR, local_location

log = logging.getLogger(__name__)

WORK_DIR = ".export-work"
"""Intermediate files (full-precision GGUF; merged weights when only GGUF is asked for)."""


ADAPTER_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
"""Tokenizer files published with the adapter when the adapter folder has them (training saves them)."""


def base_model_dir(config: TrainerConfig, output_dir: Path) -> Path:
    """The local base checkpoint, resolved exactly as training resolved it (remote models are cached there)."""
    from glmops_trainer.model.sources import resolve_model_source

    return resolve_model_source(
        config.model.source,
        pvc_mount_root=config.runtime.pvc_mount_root,
        cache_dir=output_dir / MODEL_CACHE_DIR,
        hf_token_env=config.runtime.hf_token_env,
        field="model.source",
    )


def _publish_adapter(
    store: ArtifactStore, adapter_dir: Path, base_model: str, base_config: dict[str, Any]
) -> list[Artifact]:
    target = store.root / "adapter"
    adapter_config = read_adapter_config(adapter_dir)
    deltas = load_adapter_deltas(adapter_dir, base_config)
    manifest = adapter_manifest(base_model, base_config, adapter_config, deltas)
    records: list[FileRecord] = []
    names = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] + [n for n in ADAPTER_SIDE_FILES if (adapter_dir / n).is_file()]
    for name in names:
        source, final = adapter_dir / name, target / name
        if source.resolve() == final.resolve():
            # Training saved the adapter straight into the output folder: journal it in place.
            records.append(store.finished(final) or store.record(final))
        else:
            records.append(store.copy_file(source, final))
    data = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    records.append(store.write_bytes(target / ADAPTER_MANIFEST, data))
    return [store.artifact(record, "adapter", base_model) for record in records]


def merged_entry(store: ArtifactStore, result: MergeResult) -> dict[str, Any]:
    """The manifest's `merged` entry: the folder, its size, and how many MTP layers it kept.

    `mtpLayers` > 0 tells a server that the checkpoint can draft tokens with its own MTP layer
    (vLLM's `--speculative-config {"method": "mtp", ...}`); the operator records the entry in the
    FineTuneJob's status.artifacts.merged and the serving planner turns MTP on from it.
    """
    return {
        "path": store.relative(result.out_dir),
        "uri": join_uri(store.uri_base, store.relative(result.out_dir)),
        "sizeBytes": sum(record.size_bytes for record in result.files),
        "mtpLayers": result.mtp_layers,
    }


def _gguf_name(config: TrainerConfig, quantization: str) -> str:
    return f"{config.job.name}-{quantization}.gguf"


def export_after_training(config: TrainerConfig, adapter_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Produce every artifact `config.output.formats` asks for from a trained adapter; returns the manifest."""
    return export_artifacts(config, base_model_dir(config, output_dir), adapter_dir, output_dir)


def export_artifacts(
    config: TrainerConfig, base_dir: Path, adapter_dir: Path, output_dir: Path
) -> dict[str, Any]:
    """Like `export_after_training`, with the base checkpoint's local folder given explicitly."""
    formats = set(config.output.formats)
    base_model = config.model.source
    store = ArtifactStore(output_dir, config.output.destination)
    store.begin()
    base_config = read_base_config(base_dir)
    artifacts: list[Artifact] = []

    if OutputFormat.adapter in formats:
        artifacts += _publish_adapter(store, adapter_dir, base_model, base_config)

    work = output_dir / WORK_DIR
    merged_summary: dict[str, Any] | None = None
    if OutputFormat.merged in formats or OutputFormat.gguf in formats:
        merged_dir = output_dir / "merged" if OutputFormat.merged in formats else work / "merged"
        result = merge_lora_streaming(base_dir, adapter_dir, merged_dir, store)
        if OutputFormat.merged in formats:
            artifacts += [store.artifact(record, "merged", base_model) for record in result.files]
            merged_summary = merged_entry(store, result)
        if OutputFormat.gguf in formats:
            artifacts += _export_gguf(config, store, merged_dir, work, base_model)

    if work.exists():
        for path in sorted(work.rglob("*")):
            if path.is_file():
                store.forget(path)
        remove_tree(work)
    extra = {
        "job": {"name": config.job.name, "namespace": config.job.namespace, "uid": config.job.uid},
        "baseModel": base_model,
        "architecture": (base_config.get("architectures") or [None])[0],
        "modelType": base_config.get("model_type"),
    }
    if merged_summary is not None:
        extra["merged"] = merged_summary
    manifest = store.write_manifest(artifacts, extra)
    log.info("export complete: %d files listed in %s", len(artifacts), store.manifest_path)
    return manifest


def _export_gguf(
    config: TrainerConfig, store: ArtifactStore, merged_dir: Path, work: Path, base_model: str
) -> list[Artifact]:
    outtype = outtype_for(merged_dir)
    full = work / _gguf_name(config, outtype.upper())

    def convert(tmp: Path) -> None:
        convert_to_gguf(merged_dir, tmp, outtype)
        check_gguf(tmp, merged_dir)

    store.produce(full, convert)
    generation_config = read_generation_config(merged_dir)
    artifacts: list[Artifact] = []
    for quantization in config.output.quantizations:
        name = _gguf_name(config, quantization.value)
        folder = store.root / "gguf" / quantization.value

        def quantize(tmp: Path, q: str = quantization.value) -> None:
            quantize_gguf(full, tmp, q)

        record = store.produce(folder / name, quantize)
        artifacts.append(store.artifact(record, "gguf", base_model, quantization.value))
        modelfile = render_modelfile(name, generation_config).encode("utf-8")
        record = store.write_bytes(folder / "Modelfile", modelfile)
        artifacts.append(store.artifact(record, "modelfile", base_model, quantization.value))
    return artifacts


def default_adapter_dir(output_dir: Path, job_uid: str = "") -> Path:
    """The adapter to export when none is named: `<output>/adapter`, else the newest complete checkpoint."""
    published = output_dir / ADAPTER_DIR
    if (published / ADAPTER_CONFIG).is_file():
        return published
    from glmops_trainer.checkpoints import find_resumable_checkpoint

    checkpoint = find_resumable_checkpoint(output_dir / "checkpoints", job_uid)
    if checkpoint is not None and (checkpoint.path / ADAPTER_CONFIG).is_file():
        return checkpoint.path
    raise MergeError(
        f"{output_dir}: no adapter to export (neither adapter/{ADAPTER_CONFIG} nor a complete checkpoint under "
        "checkpoints/); train first, or pass the adapter folder"
    )


def run_export(config: TrainerConfig, adapter_dir: Path | None = None) -> dict[str, Any]:
    """Export the job's trained adapter into its output destination (the `export` subcommand)."""
    output_dir = local_location(
        config.output.destination, config.runtime.pvc_mount_root, "output.destination"
    )
    adapter = adapter_dir if adapter_dir is not None else default_adapter_dir(output_dir, config.job.uid)
    return export_after_training(config, adapter, output_dir)


def artifact_summary(manifest: dict[str, Any], destination: str) -> dict[str, Any]:
    """The export manifest in the shape of the result record's `artifacts` (the operator's status.artifacts)."""
    summary: dict[str, Any] = {"manifest": join_uri(destination, "artifacts.json")}
    for artifact in manifest.get("artifacts", []):
        if not isinstance(artifact, dict):
            continue
        if artifact.get("format") == "adapter":
            summary["adapter"] = join_uri(destination, ADAPTER_DIR)
        elif artifact.get("format") == "merged":
            # The manifest's merged entry (uri, size, MTP layers kept); the folder alone from older exports.
            entry = manifest.get("merged")
            summary["merged"] = (
                {k: entry[k] for k in ("uri", "sizeBytes", "mtpLayers") if k in entry}
                if isinstance(entry, dict)
                else join_uri(destination, "merged")
            )
        elif artifact.get("format") == "gguf":
            summary.setdefault("gguf", []).append(
                {k: artifact.get(k) for k in ("quantization", "uri", "sizeBytes", "sha256")}
            )
    return summary

"""Assemble CustomResourceDefinitions from the API models and write them as YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from glmops.api import finetunejob, modeldeployment, syntheticdataset
from glmops.api.common import GROUP, VERSION
from glmops.crdgen.schema import JsonDict, to_structural


@dataclass(frozen=True)
class PrinterColumn:
    """One column of `kubectl get`."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0

    def to_crd(self) -> JsonDict:
        column: JsonDict = {"name": self.name, "type": self.type, "jsonPath": self.json_path, "description": self.description}
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class ScaleSubresource:
    """The `scale` subresource: lets `kubectl scale`, HPA and KEDA set replicas through the custom resource."""

    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str | None = None

    def to_crd(self) -> JsonDict:
        scale: JsonDict = {"specReplicasPath": self.spec_replicas_path, "statusReplicasPath": self.status_replicas_path}
        if self.label_selector_path:
            scale["labelSelectorPath"] = self.label_selector_path
        return scale


@dataclass(frozen=True)
class ResourceKind:
    """Everything the CRD of one kind is made of."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    description: str
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("glmops",)
    scale: ScaleSubresource | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation")

KINDS: tuple[ResourceKind, ...] = (
    ResourceKind(
        kind=finetunejob.KIND,
        plural=finetunejob.PLURAL,
        short_names=("ftj",),
        spec_model=finetunejob.FineTuneJobSpec,
        status_model=finetunejob.FineTuneJobStatus,
        description="FineTuneJob fine-tunes GLM-4.7 or GLM-4.7-Flash with QLoRA/LoRA on agentic conversations "
        "and exports the LoRA adapter, merged weights and GGUF files.",
        printer_columns=(
            PrinterColumn("Phase", "string", ".status.phase", "Where the job is"),
            PrinterColumn("Variant", "string", ".spec.model.variant", "flash or flagship"),
            PrinterColumn("Progress", "integer", ".status.progress.percent", "Training steps done, in percent"),
            PrinterColumn("Loss", "number", ".status.progress.loss", "Latest training loss"),
            PrinterColumn("Step", "integer", ".status.progress.step", "Optimizer steps done", priority=1),
            PrinterColumn("ETA", "integer", ".status.progress.etaSeconds", "Seconds until training ends", priority=1),
            _AGE,
        ),
    ),
    ResourceKind(
        kind=modeldeployment.KIND,
        plural=modeldeployment.PLURAL,
        short_names=("mdep",),
        spec_model=modeldeployment.ModelDeploymentSpec,
        status_model=modeldeployment.ModelDeploymentStatus,
        description="ModelDeployment serves a fine-tuned GLM-4.7 artifact with vLLM or llama.cpp behind an "
        "OpenAI-compatible endpoint.",
        printer_columns=(
            PrinterColumn("Phase", "string", ".status.phase", "Pending, Progressing, Ready, Degraded or Failed"),
            PrinterColumn("Runtime", "string", ".spec.runtime", "llamacpp or vllm"),
            PrinterColumn("Ready", "string", ".status.ready", "Ready replicas over desired"),
            PrinterColumn("Endpoint", "string", ".status.endpoint", "OpenAI-compatible base URL"),
            PrinterColumn("Artifact", "string", ".status.servedArtifact.uri", "What the ready replicas serve", priority=1),
            _AGE,
        ),
        scale=ScaleSubresource(".spec.replicas", ".status.replicas", ".status.selector"),
    ),
    ResourceKind(
        kind=syntheticdataset.KIND,
        plural=syntheticdataset.PLURAL,
        short_names=("sds",),
        spec_model=syntheticdataset.SyntheticDatasetSpec,
        status_model=syntheticdataset.SyntheticDatasetStatus,
        description="SyntheticDataset has a teacher model (a ModelDeployment or an OpenAI-compatible endpoint) write "
        "agentic training data, which a FineTuneJob trains on as dataset.source synthetic://NAME.",
        printer_columns=(
            PrinterColumn("Phase", "string", ".status.phase", "Pending, Generating, Ready or Failed"),
            PrinterColumn("Progress", "integer", ".status.progress.percent", "Prompts done, in percent"),
            PrinterColumn("Kept", "integer", ".status.progress.samplesKept", "Samples kept"),
            PrinterColumn("Dropped", "integer", ".status.progress.samplesDropped", "Samples dropped", priority=1),
            PrinterColumn("Output", "string", ".status.output.uri", "The written JSONL", priority=1),
            _AGE,
        ),
    ),
)


def _subresources(kind: ResourceKind) -> JsonDict:
    subresources: JsonDict = {"status": {}}
    if kind.scale is not None:
        subresources["scale"] = kind.scale.to_crd()
    return subresources


def model_schema(model: type[BaseModel]) -> JsonDict:
    """The structural schema of one model, as it appears on the wire (camelCase)."""
    return to_structural(model.model_json_schema(by_alias=True, mode="validation"))


def build_crd(kind: ResourceKind) -> JsonDict:
    """The CustomResourceDefinition object for one kind."""
    spec_schema = model_schema(kind.spec_model)
    status_schema = model_schema(kind.status_model)
    root: JsonDict = {
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "Versioned schema of this object: glmops.io/v1alpha1."},
            "kind": {"type": "string", "description": f"Always {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "glmops"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": _subresources(kind),
                    "additionalPrinterColumns": [c.to_crd() for c in kind.printer_columns],
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with multi-line strings kept readable."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_str(data)


_Dumper.add_representer(str, _str_presenter)


def render_crd_yaml(kind: ResourceKind) -> str:
    """The YAML text committed under crds/ for one kind."""
    header = "# Generated by `glmops crds` from glmops.api; do not edit by hand.\n"
    body = yaml.dump(build_crd(kind), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return header + body


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = directory / kind.file_name
        path.write_text(render_crd_yaml(kind), encoding="utf-8")
        written.append(path)
    return written


def stale_crds(directory: Path) -> list[str]:
    """Names of CRD files in `directory` that differ from what the models generate."""
    stale = []
    for kind in KINDS:
        path = directory / kind.file_name
        if not path.exists() or path.read_text(encoding="utf-8") != render_crd_yaml(kind):
            stale.append(str(path))
    return stale

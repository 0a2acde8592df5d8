"""The generated CRDs on a real apiserver: install, examples, printer columns, explain, rejections."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _valid_ftj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "glmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
            "dataset": {"source": "pvc://datasets/train.jsonl"},
            "output": {"destination": "pvc://models/out", "quantizations": ["Q4_K_M"]},
        },
    }


def _valid_mdep(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "glmops.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"source": {"fineTuneJob": "coder"}, "runtime": "llamacpp", "servedModelName": "coder"},
    }


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the dotted path set to value (or removed when value is ...)."""
    doc = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return doc


def test_crds_and_examples_apply(cluster, namespace: str) -> None:
    # kubectl before 1.25 validates CRDs client-side against a schema that predates CEL rules
    # (x-kubernetes-validations); the server itself accepts and ignores them there.
    old = cluster.server_version() < (1, 25)
    cluster.kubectl("apply", *(["--validate=false"] if old else []), "-f", str(REPO / "crds"))
    for example in EXAMPLES:
        result = cluster.kubectl("apply", "-n", namespace, "-f", str(example))
        assert "created" in result.stdout or "configured" in result.stdout, result.stdout
    names = cluster.kubectl("get", "ftj,mdep,sds", "-n", namespace, "-o", "name").stdout.split()
    assert len(names) == len(EXAMPLES)


def test_printer_columns_and_short_names(cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_valid_ftj("columns")))
    header = cluster.kubectl("get", "ftj", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "VARIANT", "PROGRESS", "LOSS", "AGE"]
    row = cluster.kubectl("get", "ftj", "columns", "-n", namespace).stdout.splitlines()[1].split()
    assert row[0] == "columns" and "flash" in row
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_valid_mdep("columns")))
    header = cluster.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "RUNTIME", "READY", "ENDPOINT", "AGE"]
    listed = cluster.kubectl("get", "glmops", "-n", namespace, "-o", "name").stdout.split()
    assert len(listed) == 2  # the category finds both kinds


def test_kubectl_explain_shows_the_field_docs(cluster) -> None:
    out = cluster.kubectl("explain", "finetunejob.spec.training").stdout
    assert "Training hyper-parameters; immutable once the job exists" in out
    assert "learningRate" in out and "sequenceLength" in out
    lora = cluster.kubectl("explain", "ftj.spec.training.lora.rank").stdout
    assert "LoRA rank r" in lora
    mdep = cluster.kubectl("explain", "modeldeployment.spec.runtime").stdout
    assert "llamacpp" in mdep


FTJ = _valid_ftj("bad")
MDEP = _valid_mdep("bad")
INVALID = [
    # (id, document, text the apiserver's message must contain)
    ("bad-variant", _set(FTJ, "spec.model.variant", "huge"), "spec.model.variant"),
    ("bad-method", _set(FTJ, "spec.training", {"method": "full"}), "spec.training.method"),
    ("rank-zero", _set(FTJ, "spec.training", {"lora": {"rank": 0}}), "spec.training.lora.rank"),
    ("rank-too-big", _set(FTJ, "spec.training", {"lora": {"rank": 1024}}), "spec.training.lora.rank"),
    ("rank-not-int", _set(FTJ, "spec.training", {"lora": {"rank": "sixteen"}}), "spec.training.lora.rank"),
    ("lr-zero", _set(FTJ, "spec.training", {"learningRate": 0}), "spec.training.learningRate"),
    ("lr-huge", _set(FTJ, "spec.training", {"learningRate": 3}), "spec.training.learningRate"),
    ("dropout-one", _set(FTJ, "spec.training", {"lora": {"dropout": 1.0}}), "spec.training.lora.dropout"),
    ("unknown-target", _set(FTJ, "spec.training", {"lora": {"targets": ["mlp"]}}), "spec.training.lora.targets"),
    ("unknown-quantization", _set(FTJ, "spec.output.quantizations", ["Q2_K"]), "spec.output.quantizations"),
    ("duplicate-quantization", _set(FTJ, "spec.output.quantizations", ["Q8_0", "Q8_0"]), "spec.output.quantizations"),
    ("unknown-format", _set(FTJ, "spec.output.formats", ["onnx"]), "spec.output.formats"),
    ("http-source", _set(FTJ, "spec.model.source", "http://example.com/model"), "spec.model.source"),
    ("hf-output", _set(FTJ, "spec.output.destination", "hf://org/model"), "spec.output.destination"),
    ("missing-model", _set(FTJ, "spec.model", ...), "spec.model"),
    ("missing-source", _set(FTJ, "spec.dataset.source", ...), "spec.dataset.source"),
    ("missing-output", _set(FTJ, "spec.output", ...), "spec.output"),
    ("bad-thinking", _set(FTJ, "spec.dataset.thinking", "hide"), "spec.dataset.thinking"),
    ("split-too-big", _set(FTJ, "spec.dataset.validationSplit", 0.9), "spec.dataset.validationSplit"),
    ("zero-nodes", _set(FTJ, "spec.resources", {"nodes": 0}), "spec.resources.nodes"),
    ("bad-secret-name", _set(FTJ, "spec.model.credentialsSecret", "HF_Token!"), "spec.model.credentialsSecret"),
    ("bad-runtime", _set(MDEP, "spec.runtime", "tgi"), "spec.runtime"),
    ("too-many-replicas", _set(MDEP, "spec.replicas", 100), "spec.replicas"),
    ("negative-replicas", _set(MDEP, "spec.replicas", -1), "spec.replicas"),
    ("missing-served-name", _set(MDEP, "spec.servedModelName", ...), "spec.servedModelName"),
    ("bad-served-name", _set(MDEP, "spec.servedModelName", "Payments Coder"), "spec.servedModelName"),
    ("mdep-quantization", _set(MDEP, "spec.source.quantization", "Q2_K"), "spec.source.quantization"),
]


@pytest.mark.parametrize("case,doc,field", INVALID, ids=[c[0] for c in INVALID])
def test_apiserver_rejects_invalid_resources_naming_the_field(cluster, case: str, doc: dict, field: str) -> None:
    # --validate=false: the apiserver, not kubectl's client-side check, must refuse it. Nothing is
    # created when the test passes, so the default namespace is fine (and saves a namespace per case).
    doc = _set(doc, "metadata.name", f"bad-{case}")
    result = cluster.kubectl("create", "--validate=false", "-n", "default", "-f", "-", input=yaml.safe_dump(doc), check=False)
    if result.returncode == 0:
        cluster.kubectl("delete", "-n", "default", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0, f"{case} was accepted: {result.stdout}"
    assert field in result.stderr, result.stderr

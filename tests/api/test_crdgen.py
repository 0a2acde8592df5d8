"""The CRDs are generated from the API models, structural, and refuse what they cannot express."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from glmops.api.common import LABEL_VALUE_PATTERN
from glmops.cli.main import main as glmops_main
from glmops.contract.uris import UriRole, finetune_dataset_pattern, pattern
from glmops.crdgen import KINDS, SchemaError, build_crd, stale_crds, to_structural

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "uniqueItems", "title", "discriminator", "prefixItems"}


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key == "properties":
                for name, sub in value.items():
                    yield from _walk(sub, f"{path}.{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                yield from _walk(value, f"{path}[*]")


def _schemas():
    for kind in KINDS:
        yield kind.kind, build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_match_the_models() -> None:
    assert stale_crds(REPO / "crds") == [], "run `glmops crds` and commit the result"


def test_check_command_fails_on_a_stale_file(tmp_path: Path) -> None:
    assert glmops_main(["crds", "--dir", str(tmp_path)]) == 0
    target = tmp_path / KINDS[0].file_name
    target.write_text(target.read_text() + "# edited\n")
    assert glmops_main(["crds", "--dir", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("kind_name,schema", list(_schemas()))
def test_schema_is_structural(kind_name: str, schema: dict) -> None:
    for path, node in _walk(schema):
        assert not FORBIDDEN_KEYS & set(node), f"{kind_name}{path} keeps {FORBIDDEN_KEYS & set(node)}"
        if node.get("additionalProperties") is False:
            pytest.fail(f"{kind_name}{path}: additionalProperties false")
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert typed, f"{kind_name}{path} has no type"
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(node["exclusiveMinimum"], bool):
            pytest.fail(f"{kind_name}{path}: numeric exclusiveMinimum")


@pytest.mark.parametrize("kind_name,schema", list(_schemas()))
def test_every_spec_and_status_field_is_documented(kind_name: str, schema: dict) -> None:
    for section in ("spec", "status"):
        for path, node in _walk(schema["properties"][section], section):
            if path.endswith("[*]"):
                continue  # list items and map values are described by their field
            assert node.get("description"), f"{kind_name}.{path} has no description for `kubectl explain`"


def test_crd_metadata() -> None:
    by_kind = {k.kind: build_crd(k) for k in KINDS}
    ftj = by_kind["FineTuneJob"]["spec"]
    assert ftj["names"]["shortNames"] == ["ftj"] and ftj["names"]["categories"] == ["glmops"]
    version = ftj["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == ["Phase", "Variant", "Progress", "Loss"]
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"
    mdep = by_kind["ModelDeployment"]["spec"]
    assert mdep["names"]["shortNames"] == ["mdep"]
    columns = [c["name"] for c in mdep["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Runtime", "Ready", "Endpoint", "Age"]
    # kubectl scale, HPA and KEDA set replicas through the custom resource and find pods by the selector.
    assert mdep["versions"][0]["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_finetunejob_schema_details() -> None:
    schema = dict(_schemas())["FineTuneJob"]
    spec = schema["properties"]["spec"]
    quant = spec["properties"]["output"]["properties"]["quantizations"]
    assert quant["items"]["enum"] == ["Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
    assert quant["x-kubernetes-list-type"] == "set"
    rank = spec["properties"]["training"]["properties"]["lora"]["properties"]["rank"]
    assert (rank["type"], rank["minimum"], rank["maximum"]) == ("integer", 1, 512)
    assert "rank" not in spec["properties"]["training"]["properties"]["lora"].get("required", [])
    alpha = spec["properties"]["training"]["properties"]["lora"]["properties"]["alpha"]
    assert alpha["minimum"] == 0 and alpha["exclusiveMinimum"] is True
    assert spec["properties"]["training"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    # Every URI field's pattern is its role's, from the one grammar.
    assert spec["properties"]["model"]["properties"]["source"]["pattern"] == pattern(UriRole.model)
    # a dataset file, or synthetic://NAME (a SyntheticDataset in the namespace)
    assert spec["properties"]["dataset"]["properties"]["source"]["pattern"] == finetune_dataset_pattern()
    assert spec["properties"]["output"]["properties"]["destination"]["pattern"] == pattern(UriRole.output)
    node_selector = spec["properties"]["resources"]["properties"]["nodeSelector"]
    assert node_selector["additionalProperties"] == {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}
    assert node_selector["x-kubernetes-validations"][0]["rule"].startswith("self.all(k, k.matches(")
    gpu_product = spec["properties"]["resources"]["properties"]["gpuProduct"]
    assert (gpu_product["maxLength"], gpu_product["pattern"]) == (63, LABEL_VALUE_PATTERN)  # it becomes a label value
    toleration = spec["properties"]["resources"]["properties"]["tolerations"]["items"]
    assert toleration["properties"]["value"]["pattern"] == LABEL_VALUE_PATTERN
    assert len(toleration["x-kubernetes-validations"]) == 2
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"


# --- what the converter does with constructs pydantic emits ---------------------------------


class _Leaf(BaseModel):
    """A leaf."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    kind: Literal["leaf"] = "leaf"
    """Always leaf."""
    size: int | str = 1
    """Int or string."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Anything."""
    tags: list[str] = Field(default_factory=list, json_schema_extra={"uniqueItems": True})
    """Unique tags."""
    ratio: float = Field(default=0.5, gt=0, lt=1)
    """Between 0 and 1, exclusive."""
    note: str | None = None
    """Optional."""


def test_conversions() -> None:
    out = to_structural(_Leaf.model_json_schema(by_alias=True))
    props = out["properties"]
    assert props["kind"] == {"type": "string", "description": "Always leaf.", "default": "leaf", "enum": ["leaf"]}
    assert props["size"]["x-kubernetes-int-or-string"] is True and "type" not in props["size"]
    assert props["extra"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["tags"]["x-kubernetes-list-type"] == "set" and "uniqueItems" not in props["tags"]
    assert props["ratio"]["minimum"] == 0 and props["ratio"]["exclusiveMinimum"] is True
    assert props["ratio"]["maximum"] == 1 and props["ratio"]["exclusiveMaximum"] is True
    assert props["note"] == {"type": "string", "description": "Optional."}


class _Node(BaseModel):
    children: list[_Node] = Field(default_factory=list)


class _A(BaseModel):
    tag: Literal["a"]


class _B(BaseModel):
    tag: Literal["b"]


class _Union(BaseModel):
    item: _A | _B = Field(discriminator="tag")


class _Tuple(BaseModel):
    pair: tuple[int, str]


class _Duration(BaseModel):
    timeout: timedelta


class _Mixed(BaseModel):
    value: int | list[str]


@pytest.mark.parametrize(
    "model,expected",
    [
        (_Node, "refers to itself"),
        (_Union, "uses 'discriminator'"),
        (_Tuple, "tuples have no CRD form"),
        (_Duration, "format 'duration'"),
        (_Mixed, "union of several types"),
    ],
)
def test_refuses_what_a_crd_cannot_express(model: type[BaseModel], expected: str) -> None:
    with pytest.raises(SchemaError, match=expected):
        to_structural(model.model_json_schema(by_alias=True))


def test_yaml_round_trips() -> None:
    for kind in KINDS:
        text = (REPO / "crds" / kind.file_name).read_text()
        assert yaml.safe_load(text) == build_crd(kind)

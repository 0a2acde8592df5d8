"""Every CEL rule of the generated CRDs, enforced by a real Kubernetes 1.36 apiextensions-apiserver.

The CRDs are installed exactly as `crds/` holds them (the 1.20 control plane drops these rules, see
glmops_dev.crds). Each rule gets objects the server must accept and objects or updates it must
refuse with the rule's own message; `test_every_rule_has_a_test` fails when a rule is added to a
model without a test here.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from apiext import NAMESPACE, ApiextServer, ApiResponse, load_crds
from hypothesis import given, settings
from hypothesis import strategies as st

from glmops.contract.uris import UriError, UriRole, parse_uri, pattern

pytestmark = pytest.mark.cluster  # needs a built server, like the control plane

GROUP_VERSION = "glmops.io/v1alpha1"
FTJ_PATH = f"/apis/{GROUP_VERSION}/namespaces/{NAMESPACE}/finetunejobs"
MDEP_PATH = f"/apis/{GROUP_VERSION}/namespaces/{NAMESPACE}/modeldeployments"
SDS_PATH = f"/apis/{GROUP_VERSION}/namespaces/{NAMESPACE}/syntheticdatasets"
MERGE_PATCH = "application/merge-patch+json"

TESTED: set[tuple[str, str, str]] = set()
"""(kind, schema path, rule) of every rule a test below covers."""


def covers(kind: str, path: str, rule: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Record that the decorated test checks `rule` at `path` of `kind`."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        TESTED.add((kind, path, rule))
        return test

    return mark


def _rules(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule
    for name, child in node.get("properties", {}).items():
        yield from _rules(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _rules(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _rules(node["additionalProperties"], f"{path}{{*}}")


def crd_rules() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(kind, path, rule) -> the rule object, for every CEL rule in crds/."""
    found = {}
    for crd in load_crds():
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            for path, rule in _rules(schema, ""):
                found[(kind, path.lstrip("."), rule["rule"])] = rule
    return found


def message_of(kind: str, path: str, rule: str) -> str:
    """The message the CRD attaches to a rule."""
    return str(crd_rules()[(kind, path, rule)]["message"])


_names = itertools.count()


def _ftj(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
        "dataset": {"source": "pvc://datasets/payments/train.jsonl"},
        "output": {"destination": "pvc://models/payments-coder", "quantizations": ["Q4_K_M"]},
    }
    spec.update(copy.deepcopy(spec_overrides))
    return {"apiVersion": GROUP_VERSION, "kind": "FineTuneJob", "metadata": {"name": f"ftj-{next(_names)}"}, "spec": spec}


def _mdep(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": f"mdep-{next(_names)}"},
        "spec": {"source": source, "runtime": "llamacpp", "servedModelName": "coder"},
    }


def _create(apiext: ApiextServer, path: str, body: dict[str, Any]) -> ApiResponse:
    return apiext.request("POST", path, body)


def _created(apiext: ApiextServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = _create(apiext, path, body)
    assert response.status == 201, response.message
    return response.body


def _patch(apiext: ApiextServer, path: str, name: str, patch: dict[str, Any], subresource: str = "") -> ApiResponse:
    return apiext.request("PATCH", f"{path}/{name}{subresource}", patch, MERGE_PATCH)


def _refused_by(response: ApiResponse, field: str, message: str) -> None:
    """A 422 whose causes name `field` with the rule's `message`."""
    assert response.status == 422, f"expected 422, got {response.status}: {response.message}"
    causes = response.body.get("details", {}).get("causes", [])
    assert any(c.get("field") == field and message in c.get("message", "") for c in causes), response.body


def test_server_is_current_and_crds_are_unchanged(apiext: ApiextServer) -> None:
    assert int(apiext.version()["minor"].rstrip("+")) >= 25  # CEL rules are enforced from 1.25
    for crd in load_crds():
        stored = apiext.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}").body
        # The server keeps every rule it was given (an old server would have dropped them).
        for version, installed in zip(crd["spec"]["versions"], stored["spec"]["versions"], strict=True):
            def rules(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
                return sorted((path, r["rule"], r["message"]) for path, r in _rules(schema, ""))

            assert rules(installed["schema"]["openAPIV3Schema"]) == rules(version["schema"]["openAPIV3Schema"])


def test_every_rule_has_a_test() -> None:
    rules = set(crd_rules())
    assert rules, "no CEL rules found in crds/"
    assert rules - TESTED == set(), "CEL rules without a test in tests/cel/test_cel_rules.py"
    assert TESTED - rules == set(), "tests for CEL rules that the CRDs no longer have"


# ---- FineTuneJob: immutability (transition rules, run on update only) -----------------------

IMMUTABLE = "self == oldSelf"
ADDED_LATER = {section: f"has(self.{section}) == has(oldSelf.{section})" for section in ("training", "resources")}
# (field, the spec the object is created with, the merge patch, where the rule sits, the rule)
CHANGES: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    ("spec.model", {}, {"model": {"source": "pvc://models/glm-4.7-flash-v2"}}, "spec.model", IMMUTABLE),
    ("spec.model", {}, {"model": {"credentialsSecret": "hf-token"}}, "spec.model", IMMUTABLE),
    ("spec.dataset", {}, {"dataset": {"source": "pvc://datasets/payments/train-v2.jsonl"}}, "spec.dataset", IMMUTABLE),
    ("spec.dataset", {}, {"dataset": {"validationSplit": 0.1}}, "spec.dataset", IMMUTABLE),
    ("spec.output", {}, {"output": {"destination": "pvc://models/elsewhere"}}, "spec.output", IMMUTABLE),
    ("spec.output", {}, {"output": {"formats": ["adapter"]}}, "spec.output", IMMUTABLE),
    ("spec.training", {"training": {"epochs": 2}}, {"training": {"epochs": 3}}, "spec.training", IMMUTABLE),
    ("spec.training", {"training": {"epochs": 2}}, {"training": {"lora": {"rank": 32}}}, "spec.training", IMMUTABLE),
    ("spec.training", {}, {"training": {"epochs": 3}}, "spec", ADDED_LATER["training"]),
    ("spec.training", {"training": {"epochs": 2}}, {"training": None}, "spec", ADDED_LATER["training"]),
    ("spec.resources", {"resources": {"gpusPerNode": 1}}, {"resources": {"gpuMemoryGiB": 80}}, "spec.resources", IMMUTABLE),
    (
        "spec.resources",
        {"resources": {"gpusPerNode": 1}},
        {"resources": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}},
        "spec.resources",
        IMMUTABLE,
    ),
    ("spec.resources", {}, {"resources": {"gpusPerNode": 2}}, "spec", ADDED_LATER["resources"]),
    ("spec.resources", {"resources": {"gpusPerNode": 1}}, {"resources": None}, "spec", ADDED_LATER["resources"]),
]


@pytest.mark.parametrize(
    ("field", "initial", "change", "rule_path", "rule"),
    CHANGES,
    ids=[f"{field}:{'set' if initial else 'unset'}->{json.dumps(change)}" for field, initial, change, _, _ in CHANGES],
)
def test_changing_an_immutable_field_is_refused_with_the_rules_message(
    apiext: ApiextServer, field: str, initial: dict[str, Any], change: dict[str, Any], rule_path: str, rule: str
) -> None:
    created = _created(apiext, FTJ_PATH, _ftj(**initial))
    name = created["metadata"]["name"]
    response = _patch(apiext, FTJ_PATH, name, {"spec": change})
    _refused_by(response, field, message_of("FineTuneJob", rule_path, rule))
    # Nothing was stored.
    assert apiext.request("GET", f"{FTJ_PATH}/{name}").body["spec"] == created["spec"]


for _field, _initial, _change, _path, _rule in CHANGES:
    covers("FineTuneJob", _path, _rule)(test_changing_an_immutable_field_is_refused_with_the_rules_message)

IMMUTABLE_SECTIONS = ["model", "dataset", "training", "resources", "output"]


def test_updates_that_keep_the_immutable_fields_are_accepted(apiext: ApiextServer) -> None:
    created = _created(apiext, FTJ_PATH, _ftj(training={"epochs": 2}, resources={"gpusPerNode": 1}))
    name = created["metadata"]["name"]
    # Mutable parts: cancel, the failure policy, labels.
    for patch in ({"spec": {"cancel": True}}, {"spec": {"failurePolicy": {"maxRetries": 5}}}, {"metadata": {"labels": {"team": "payments"}}}):
        response = _patch(apiext, FTJ_PATH, name, patch)
        assert response.status == 200, response.message
    # Writing the same values again is no change.
    response = _patch(apiext, FTJ_PATH, name, {"spec": {key: created["spec"][key] for key in IMMUTABLE_SECTIONS}})
    assert response.status == 200, response.message
    # Left out at creation, the optional sections may stay left out.
    bare = _created(apiext, FTJ_PATH, _ftj())
    response = _patch(apiext, FTJ_PATH, bare["metadata"]["name"], {"spec": {"cancel": True}})
    assert response.status == 200, response.message


def test_the_operators_status_writes_pass_the_immutability_rules(apiext: ApiextServer) -> None:
    name = _created(apiext, FTJ_PATH, _ftj())["metadata"]["name"]
    response = _patch(apiext, FTJ_PATH, name, {"status": {"phase": "Training", "progress": {"step": 3, "totalSteps": 10}}}, "/status")
    assert response.status == 200, response.message
    assert response.body["status"]["phase"] == "Training"


# ---- FineTuneJob: an s3:// output runs on one node ---------------------------------------------

S3_ONE_NODE = "!self.output.destination.startsWith('s3://') || !has(self.resources) || self.resources.nodes == 1"


@covers("FineTuneJob", "spec", S3_ONE_NODE)
@pytest.mark.parametrize(
    ("output", "nodes", "accepted"),
    [
        ("s3://ml-artifacts/payments-coder", 1, True),
        ("s3://ml-artifacts/payments-coder", None, True),  # nodes defaults to 1
        ("pvc://models/payments-coder", 4, True),
        ("s3://ml-artifacts/payments-coder", 2, False),
    ],
)
def test_s3_output_needs_a_single_node(apiext: ApiextServer, output: str, nodes: int | None, accepted: bool) -> None:
    resources = {"gpusPerNode": 8} | ({"nodes": nodes} if nodes is not None else {})
    response = _create(apiext, FTJ_PATH, _ftj(output={"destination": output}, resources=resources))
    if accepted:
        assert response.status == 201, response.message
    else:
        _refused_by(response, "spec.output.destination", message_of("FineTuneJob", "spec", S3_ONE_NODE))


# ---- ModelDeployment: exactly one source --------------------------------------------------------

ONE_SOURCE = "has(self.fineTuneJob) != has(self.uri)"


@covers("ModelDeployment", "spec.source", ONE_SOURCE)
@pytest.mark.parametrize(
    ("source", "accepted"),
    [
        ({"fineTuneJob": "payments-coder"}, True),
        ({"uri": "pvc://models/payments-coder/merged"}, True),
        ({"fineTuneJob": "payments-coder", "uri": "pvc://models/payments-coder/merged"}, False),
        ({}, False),
        ({"artifact": "gguf"}, False),
    ],
)
def test_a_deployment_names_exactly_one_source(apiext: ApiextServer, source: dict[str, Any], accepted: bool) -> None:
    response = _create(apiext, MDEP_PATH, _mdep(source))
    if accepted:
        assert response.status == 201, response.message
    else:
        _refused_by(response, "spec.source", message_of("ModelDeployment", "spec.source", ONE_SOURCE))


# ---- label keys and tolerations: what the apiserver would refuse in a pod, refused at apply time -----

LABEL_KEY_RULE = next(rule for (_kind, path, rule) in crd_rules() if path == "spec.resources.nodeSelector")
EXISTS_HAS_NO_VALUE = "self.operator != 'Exists' || !has(self.value) || self.value == ''"
SECONDS_NEED_NO_EXECUTE = "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')"
# (kind, where the map sits in the spec, the schema path of the rule)
LABEL_MAPS = [
    ("FineTuneJob", ("resources", "nodeSelector"), "spec.resources.nodeSelector"),
    ("FineTuneJob", ("podTemplate", "labels"), "spec.podTemplate.labels"),
    ("FineTuneJob", ("podTemplate", "annotations"), "spec.podTemplate.annotations"),
    ("ModelDeployment", ("placement", "nodeSelector"), "spec.placement.nodeSelector"),
]
TOLERATIONS = [("FineTuneJob", ("resources", "tolerations")), ("ModelDeployment", ("placement", "tolerations"))]


def _with(kind: str, where: tuple[str, str], value: Any) -> tuple[str, dict[str, Any]]:
    """A new object of `kind` with `value` at spec.WHERE[0].WHERE[1], and the path to create it at."""
    if kind == "FineTuneJob":
        body, path = _ftj(), FTJ_PATH
    else:
        body, path = _mdep({"fineTuneJob": "payments-coder"}), MDEP_PATH
    body["spec"].setdefault(where[0], {})[where[1]] = value
    return path, body


@pytest.mark.parametrize(("kind", "where", "rule_path"), LABEL_MAPS, ids=[p for _k, _w, p in LABEL_MAPS])
def test_keys_that_are_not_label_keys_are_refused(apiext: ApiextServer, kind: str, where: tuple[str, str], rule_path: str) -> None:
    good = {"team": "payments", "example.com/cost-centre": "ml-42", "A.b_c-1": "x"}
    path, body = _with(kind, where, good)
    assert _create(apiext, path, body).status == 201
    for bad in ("-team", "team/", "Example.com/x", "a/b/c", "x" * 64, "with space"):
        path, body = _with(kind, where, {bad: "x"})
        _refused_by(_create(apiext, path, body), rule_path, message_of(kind, rule_path, LABEL_KEY_RULE))


@pytest.mark.parametrize(("kind", "where"), TOLERATIONS, ids=[k for k, _w in TOLERATIONS])
def test_tolerations_a_pod_could_not_carry_are_refused(apiext: ApiextServer, kind: str, where: tuple[str, str]) -> None:
    rule_path = f"spec.{where[0]}.{where[1]}[*]"
    accepted = [
        {"key": "dedicated", "operator": "Exists"},
        {"key": "dedicated", "operator": "Exists", "value": ""},
        {"key": "gpu", "operator": "Equal", "value": "h200", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    ]
    path, body = _with(kind, where, accepted)
    assert _create(apiext, path, body).status == 201
    refused = [
        ({"key": "dedicated", "operator": "Exists", "value": "gpu"}, EXISTS_HAS_NO_VALUE),
        ({"key": "spot", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 300}, SECONDS_NEED_NO_EXECUTE),
        ({"key": "spot", "operator": "Exists", "tolerationSeconds": 300}, SECONDS_NEED_NO_EXECUTE),
    ]
    for toleration, rule in refused:
        path, body = _with(kind, where, [toleration])
        response = _create(apiext, path, body)
        assert response.status == 422, response.message
        assert message_of(kind, rule_path, rule) in response.message, response.message


for _kind, _where, _path in LABEL_MAPS:
    covers(_kind, _path, LABEL_KEY_RULE)(test_keys_that_are_not_label_keys_are_refused)
for _kind, _where in TOLERATIONS:
    for _rule in (EXISTS_HAS_NO_VALUE, SECONDS_NEED_NO_EXECUTE):
        covers(_kind, f"spec.{_where[0]}.{_where[1]}[*]", _rule)(test_tolerations_a_pod_could_not_carry_are_refused)


# ---- storage locations the trainer cannot read are refused at apply time (patterns) ----------------


@pytest.mark.parametrize(
    ("spec", "accepted"),
    [
        ({"dataset": {"source": "s3://ml-data/payments/train.jsonl", "endpointUrl": "http://minio.storage.svc:9000"}}, True),
        ({"dataset": {"source": "hf://datasets/zai-org/agent-traces@v1/data/train.jsonl"}}, True),
        ({"dataset": {"source": "s3://ml-data"}}, False),  # a bucket, not a file
        ({"dataset": {"source": "s3://ml-data/payments/"}}, False),  # a prefix, not a file
        ({"dataset": {"source": "s3://ML_Data/train.jsonl"}}, False),  # not a bucket name
        ({"dataset": {"source": "hf://zai-org/agent-traces"}}, False),  # a repository, not a file of a dataset
        ({"dataset": {"source": "hf://datasets/zai-org/agent-traces"}}, False),
        ({"dataset": {"source": "synthetic://payments-synth"}}, True),  # a SyntheticDataset's output
        ({"dataset": {"source": "synthetic://payments-synth/train.jsonl"}}, False),
        ({"dataset": {"source": "synthetic://Payments"}}, False),
        # The Hub's own form: revision after the name, '/' in a branch encoded, special refs as they are.
        ({"dataset": {"source": "hf://datasets/zai-org/agent-traces@feature%2Fclean/data/train.jsonl"}}, True),
        ({"dataset": {"source": "hf://datasets/zai-org/agent-traces@refs/pr/3/train.jsonl"}}, True),
        ({"dataset": {"source": "hf://datasets/zai-org/agent-traces/train.jsonl@v1"}}, False),  # revision last
        ({"dataset": {"source": "pvc://datasets"}}, False),  # a claim, not a file
        ({"model": {"source": "hf://zai-org/GLM-4.7-Flash@v1"}}, True),
        ({"model": {"source": "hf://models/zai-org/GLM-4.7-Flash"}}, True),
        ({"model": {"source": "hf://org/checkpoints@main/runs/step-400"}}, True),
        ({"model": {"source": "hf://org/checkpoints/runs/step-400@main"}}, False),  # revision last
        ({"model": {"source": "hf://datasets/zai-org/agent-traces"}}, False),  # a dataset repository
        ({"model": {"source": "hf://zai-org/GLM-4.7@refs/heads/main"}}, False),  # write refs%2Fheads%2Fmain
        ({"output": {"destination": "s3://ml-artifacts"}}, True),
        ({"output": {"destination": "hf://zai-org/out"}}, False),
        ({"output": {"destination": "s3://ml-artifacts/x", "endpointUrl": "minio:9000"}}, False),  # no scheme
    ],
)
def test_storage_uris_the_trainer_cannot_read_are_refused_on_apply(
    apiext: ApiextServer, spec: dict[str, Any], accepted: bool
) -> None:
    base = _ftj()["spec"]
    for key, value in spec.items():
        base[key] = {**base[key], **value}
    response = _create(apiext, FTJ_PATH, _ftj(**base))
    assert (response.status == 201) is accepted, response.message
    if not accepted:
        assert response.status == 422 and "should match" in response.message, response.message


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("hf://unsloth/GLM-4.7-Flash-GGUF@main/GLM-4.7-Flash-Q4_K_M.gguf", True),
        ("hf://unsloth/GLM-4.7-Flash-GGUF@release%2Fv2/GLM-4.7-Flash-Q4_K_M.gguf", True),
        ("hf://unsloth/GLM-4.7-Flash-GGUF/GLM-4.7-Flash-Q4_K_M.gguf@main", False),  # revision last
        ("pvc://models/glm-4.7-flash-Q4_K_M.gguf", True),
        ("hf://GLM-4.7-Flash", False),
    ],
)
def test_model_deployment_uris_follow_the_same_grammar(apiext: ApiextServer, uri: str, accepted: bool) -> None:
    response = _create(apiext, MDEP_PATH, _mdep({"uri": uri, "variant": "flash"}))
    assert (response.status == 201) is accepted, response.message
    if not accepted:
        assert response.status == 422 and "should match" in response.message, response.message


# ---- the URI patterns as the apiserver reads them (RE2) agree with the parser (Python re) ---------

_URI_FIELDS = {UriRole.model: ("model", "source"), UriRole.dataset: ("dataset", "source"), UriRole.output: ("output", "destination")}
_ODD_TEXT = st.text(alphabet="abcXYZ019-_./@%~+ \t\u00a0\u2003\u00e9", max_size=24)


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_the_apiserver_reads_every_uri_pattern_as_the_parser_does(apiext: ApiextServer, data: st.DataObject) -> None:
    role = data.draw(st.sampled_from(list(UriRole)))
    scheme = data.draw(st.sampled_from(["hf://", "hf://datasets/", "s3://ml-data/", "pvc://datasets/", "file:///"]))
    uri = data.draw(st.one_of(st.from_regex(pattern(role), fullmatch=True), _ODD_TEXT.map(lambda t: scheme + t)))
    section, field = _URI_FIELDS[role]
    base = _ftj()["spec"]
    base[section] = {**base[section], field: uri}
    response = _create(apiext, FTJ_PATH + "?dryRun=All", _ftj(**base))
    try:
        parse_uri(uri, "f", role)
        parsed = True
    except UriError:
        parsed = False
    assert (response.status == 201) is parsed, (uri, role, response.message)


# ---- SyntheticDataset: one teacher, a .jsonl output that is not the prompts, turns need fixtures, immutable ----


def _sds(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "teacher": {"modelDeployment": "glm47-teacher"},
        "prompts": "pvc://datasets/payments/prompts.jsonl",
        "output": "pvc://datasets/payments/synthetic.jsonl",
    }
    spec.update(copy.deepcopy(spec_overrides))
    return {"apiVersion": GROUP_VERSION, "kind": "SyntheticDataset", "metadata": {"name": f"sds-{next(_names)}"}, "spec": spec}


ONE_TEACHER = "has(self.modelDeployment) != has(self.url)"
JSONL_OUTPUT = "self.output.endsWith('.jsonl')"
OUTPUT_NOT_PROMPTS = "self.output != self.prompts"
TURNS_NEED_FIXTURES = "self.maxTurns == 1 || self.toolExecution == 'fixtures'"


@covers("SyntheticDataset", "spec.teacher", ONE_TEACHER)
@pytest.mark.parametrize(
    ("teacher", "accepted"),
    [
        ({"modelDeployment": "glm47-teacher"}, True),
        ({"url": "http://glm47.inference.svc:8000/v1", "apiKeySecret": {"name": "teacher-key"}}, True),
        ({"modelDeployment": "glm47-teacher", "url": "http://glm47.inference.svc:8000/v1"}, False),
        ({"model": "zai-org/GLM-4.7"}, False),
    ],
)
def test_a_dataset_names_exactly_one_teacher(apiext: ApiextServer, teacher: dict[str, Any], accepted: bool) -> None:
    response = _create(apiext, SDS_PATH, _sds(teacher=teacher))
    if accepted:
        assert response.status == 201, response.message
    else:
        _refused_by(response, "spec.teacher", message_of("SyntheticDataset", "spec.teacher", ONE_TEACHER))


@pytest.mark.parametrize(
    ("spec", "field", "rule"),
    [
        ({"output": "pvc://datasets/payments/synthetic.json"}, "spec.output", JSONL_OUTPUT),
        ({"output": "pvc://datasets/payments/prompts.jsonl"}, "spec.output", OUTPUT_NOT_PROMPTS),
        ({"maxTurns": 4}, "spec.maxTurns", TURNS_NEED_FIXTURES),
        ({"maxTurns": 4, "toolExecution": "stop"}, "spec.maxTurns", TURNS_NEED_FIXTURES),
    ],
)
def test_a_dataset_spec_that_cannot_work_is_refused_naming_the_field(apiext: ApiextServer, spec: dict[str, Any], field: str, rule: str) -> None:
    _refused_by(_create(apiext, SDS_PATH, _sds(**spec)), field, message_of("SyntheticDataset", "spec", rule))


for _rule in (JSONL_OUTPUT, OUTPUT_NOT_PROMPTS, TURNS_NEED_FIXTURES):
    covers("SyntheticDataset", "spec", _rule)(test_a_dataset_spec_that_cannot_work_is_refused_naming_the_field)


@covers("SyntheticDataset", "spec", IMMUTABLE)
def test_a_dataset_spec_is_immutable_but_its_status_and_labels_are_not(apiext: ApiextServer) -> None:
    created = _created(apiext, SDS_PATH, _sds(maxTurns=4, toolExecution="fixtures", samplesPerPrompt=2))
    name = created["metadata"]["name"]
    for change in ({"samplesPerPrompt": 3}, {"sampling": {"temperature": 0.2}}, {"teacher": {"modelDeployment": "other"}}):
        _refused_by(_patch(apiext, SDS_PATH, name, {"spec": change}), "spec", message_of("SyntheticDataset", "spec", IMMUTABLE))
    assert apiext.request("GET", f"{SDS_PATH}/{name}").body["spec"] == created["spec"]
    assert _patch(apiext, SDS_PATH, name, {"metadata": {"labels": {"team": "payments"}}}).status == 200
    assert _patch(apiext, SDS_PATH, name, {"spec": created["spec"]}).status == 200  # the same values are no change
    status = {"status": {"phase": "Generating", "progress": {"promptsDone": 3, "promptsTotal": 10, "samplesKept": 5}}}
    response = _patch(apiext, SDS_PATH, name, status, "/status")
    assert response.status == 200 and response.body["status"]["progress"]["samplesKept"] == 5, response.message

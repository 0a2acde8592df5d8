"""Contract: the operator and the trainer read the same config, URIs and records, defined once.

The configs are rendered from FineTuneJob specs that hypothesis generates from the CRD's own
schema (what `kubectl apply` accepts), not from two hand-written defaults.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub.errors import HfUriError
from huggingface_hub.utils import parse_hf_uri
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmops.api.finetunejob import FineTuneJobSpec, Quantization
from glmops.contract import config as contract_config
from glmops.contract import uris
from glmops.contract.records import (
    MetricsError,
    ProgressRecord,
    ResultRecord,
    fit_result,
    parse_metrics,
    parse_result,
    render_metrics,
)
from glmops.contract.uris import (
    ROLE_SCHEMES,
    RepoType,
    UriError,
    UriRole,
    format_hf_uri,
    parse_uri,
    pattern,
    pod_path,
)
from glmops.plan.finetune import ClusterFacts, JobMeta, plan_finetune
from glmops.plan.serving_download import parse_hub_uri
from glmops.settings import Settings
from glmops.trainer_protocol import artifacts_from_result, artifacts_from_results, progress_from_record
from glmops_trainer.config import TrainerConfig
from glmops_trainer.locations import LocationError, local_location
from glmops_trainer.model.sources import ModelSourceError, parse_model_source
from glmops_trainer.progress import MetricsServer, TrainResult
from glmops_trainer.storage import Role as StorageRole
from glmops_trainer.storage import StorageError, parse_remote

REPO = Path(__file__).resolve().parents[1]
META = JobMeta("payments-coder", "ml", "0a1b2c3d-0000-4000-8000-000000000001")


def _crd_spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "glmops.io_finetunejobs.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def from_structural(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that a structural CRD schema accepts (the subset glmops' CRDs use).

    Optional properties are left out at random, so defaults are exercised as much as values.
    """
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        low, high = node.get("minimum"), node.get("maximum")
        if kind == "integer":
            low = None if low is None else low + (1 if node.get("exclusiveMinimum") else 0)
            high = None if high is None else high - (1 if node.get("exclusiveMaximum") else 0)
            return st.integers(min_value=low, max_value=high if high is not None else (low or 0) + 10**6)
        return st.floats(
            min_value=low, max_value=high, exclude_min=bool(node.get("exclusiveMinimum")),
            exclude_max=bool(node.get("exclusiveMaximum")), allow_nan=False, allow_infinity=False,
        )
    if kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength", 64)
        if "pattern" in node:
            # Python's re reads these RE2 patterns alike (the URI grammar is tested for that below).
            pattern = node["pattern"].replace("(?:", "(?:")
            return st.from_regex(pattern, fullmatch=True).filter(lambda s: low <= len(s) <= high)
        return st.text(min_size=low, max_size=min(high, 64))
    if kind == "array":
        items = from_structural(node["items"])
        unique = node.get("x-kubernetes-list-type") == "set"
        return st.lists(items, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", 4), 4), unique=unique)
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        props = {k: from_structural(v) for k, v in node["properties"].items()}
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        keys = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.io/[a-z]{1,8})?", fullmatch=True)
        return st.dictionaries(keys, from_structural(node["additionalProperties"]), max_size=3)
    raise AssertionError(f"schema node without a strategy: {node}")


# --- the trainer config --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=from_structural(_crd_spec_schema()))
def test_every_spec_the_crd_accepts_renders_a_config_the_trainer_accepts(spec: dict[str, Any]) -> None:
    parsed = FineTuneJobSpec.model_validate(spec)  # what the apiserver accepts, the API model accepts
    plan = plan_finetune(META, parsed, ClusterFacts(server_minor=30), Settings())
    if plan.problems:
        return  # refused with a reason before anything runs: nothing reaches the trainer
    config = TrainerConfig.model_validate(plan.trainer_config)
    assert config.data.validation_split == parsed.dataset.validation_split
    assert config.output.destination == parsed.output.destination


def test_the_validation_split_has_one_bound() -> None:
    # The API once accepted 0.5 and the trainer refused it, after a GPU pod was scheduled.
    spec = FineTuneJobSpec.model_validate({
        "model": {"variant": "flash", "source": "file:///m"}, "dataset": {"source": "file:///d", "validationSplit": 0.5},
        "output": {"destination": "file:///o"},
    })
    plan = plan_finetune(META, spec, ClusterFacts(server_minor=30), Settings())
    assert TrainerConfig.model_validate(plan.trainer_config).data.validation_split == 0.5
    for outside in (0.51, -0.01):
        with pytest.raises(ValueError):
            FineTuneJobSpec.model_validate({
                "model": {"variant": "flash", "source": "file:///m"}, "dataset": {"source": "file:///d", "validationSplit": outside},
                "output": {"destination": "file:///o"},
            })
    assert TrainerConfig is contract_config.TrainerConfig  # one definition, re-exported by the trainer


# --- the URI grammar -----------------------------------------------------------------------------
# One grammar (glmops.contract.uris), per role. For every role, the CRD pattern, the contract's
# parser and each side's adapter (the trainer's model sources and remote locations, the serving
# planner's Hub models, the pod paths) accept exactly the same URIs, and every hf:// URI accepted
# means to huggingface_hub's own parser what it means here.

ROLE_FIELDS = {
    ("FineTuneJob", "spec.model.source"): pattern(UriRole.model),
    # a dataset file, or synthetic://NAME, which the operator resolves to one before the trainer runs
    ("FineTuneJob", "spec.dataset.source"): uris.finetune_dataset_pattern(),
    ("FineTuneJob", "spec.output.destination"): pattern(UriRole.output),
    ("ModelDeployment", "spec.source.uri"): pattern(UriRole.model),
    # files the generator reads and writes on a mounted claim or node path
    ("SyntheticDataset", "spec.prompts"): pattern(UriRole.dataset, ("pvc", "file")),
    ("SyntheticDataset", "spec.output"): pattern(UriRole.dataset, ("pvc", "file")),
}
"""Every storage URI field of the CRDs and the pattern of the grammar it must carry."""

_PIECE = st.sampled_from(
    ["zai-org", "GLM-4.7", "a", "Z9", "x_y", "models", "datasets", "dataset", "spaces", "refs", "pr", "3", "convert",
     "parquet", "main", "3x", "é", "name.git", "a--b", "a..b", ".", "..", "", "-a", "a-", "@", "@v1", "%2F", "feature%2Fx", "a b", "x.gguf"]
)
_RANDOM_URI = st.tuples(
    st.sampled_from(["file://", "pvc://", "hf://", "s3://", "gs://", ""]), st.text(alphabet="abcXYZ019-_./@%~+ ", max_size=30)
).map("".join)


@st.composite
def _hub_like(draw: st.DrawFn) -> str:
    """Mostly well-formed hf:// URIs with a part off: type prefixes, special refs, encoded and old revision-last forms."""
    parts = draw(st.lists(_PIECE, min_size=1, max_size=3))
    revision = draw(st.sampled_from(["", "", "@", "@main", "@refs/pr/3", "@refs", "@refs/convert/parquet", "@v1%2Fx", "@a b"]))
    path = "".join("/" + p for p in draw(st.lists(_PIECE, max_size=3)))
    prefix = draw(st.sampled_from(["hf://", "hf://datasets/", "hf://models/", "hf://spaces/"]))
    return prefix + "/".join(parts[:2]) + revision + "/".join(["", *parts[2:]]) + path


_HUB_LIKE = _hub_like()
_VALID = {role: st.from_regex(pattern(role), fullmatch=True) for role in UriRole}


def _accepts(parse: Any, *args: Any) -> bool:
    try:
        parse(*args)
    except (UriError, ModelSourceError, StorageError, LocationError):
        return False
    return True


def _every_parser_agrees(uri: str) -> None:
    for role in UriRole:
        by_pattern = re.fullmatch(pattern(role), uri) is not None
        by_parser = _accepts(parse_uri, uri, "f", role)
        assert by_pattern == by_parser, (uri, role)
        scheme = uri.partition("://")[0]
        if scheme in ("s3", "hf") and scheme in ROLE_SCHEMES[role]:
            # the trainer's remote locations (storage.Role has the contract's role names)
            assert _accepts(parse_remote, uri, "f", StorageRole[role.name]) == by_pattern, (uri, role)
        if by_parser and scheme in ("file", "pvc"):
            # the pod path of every local URI any role accepts
            assert pod_path(uri, "/mnt/pvc") is not None and _accepts(local_location, uri, "/mnt/pvc", "f")
    model = re.fullmatch(pattern(UriRole.model), uri) is not None
    assert _accepts(parse_model_source, uri) == model, uri  # the trainer's model sources
    if uri.startswith("hf://"):
        assert (not isinstance(parse_hub_uri(uri), str)) == model, uri  # the serving planner's Hub models


@settings(max_examples=600, deadline=None)
@given(uri=st.one_of(_RANDOM_URI, _HUB_LIKE, *_VALID.values()))
def test_the_crd_pattern_and_both_parsers_accept_the_same_uris(uri: str) -> None:
    _every_parser_agrees(uri)


def _hub_reads(uri: str) -> tuple[str, str, str | None, str]:
    hub = parse_hf_uri(uri)
    return hub.type, hub.id, hub.revision, hub.path_in_repo


@settings(max_examples=400, deadline=None)
@given(uri=st.one_of(_HUB_LIKE, _VALID[UriRole.model], _VALID[UriRole.dataset]))
def test_every_hf_uri_accepted_means_to_the_hub_what_it_means_here(uri: str) -> None:
    for role in (UriRole.model, UriRole.dataset):
        try:
            parsed = parse_uri(uri, "f", role)
        except UriError:
            continue
        if parsed.scheme != "hf":
            continue
        if max(len(part) for part in parsed.authority.split("/")) > 96:
            # The one Hub rule the grammar leaves to the Hub: no such repository can exist.
            with pytest.raises(HfUriError, match="maximum length is 96"):
                parse_hf_uri(uri)
            continue
        assert _hub_reads(uri) == (parsed.repo_type, parsed.repo_id, parsed.revision, parsed.key), uri


@settings(max_examples=300, deadline=None)
@given(
    revision=st.one_of(st.none(), st.text(min_size=1, max_size=20), st.sampled_from(["refs", "refs/pr/12", "refs/convert/duckdb", "feature/a/b"])),
    path=st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True), max_size=3).map("/".join),
    repo_type=st.sampled_from(["model", "dataset"]),
)
def test_hub_locations_written_as_uris_read_back_the_same(revision: str | None, path: str, repo_type: RepoType) -> None:
    if repo_type == "dataset" and not path:
        path = "train.jsonl"  # a dataset location names a file
    uri = format_hf_uri("zai-org/agent-traces", path, revision, repo_type)
    parsed = parse_uri(uri, "f", UriRole(repo_type))
    assert (parsed.repo_id, parsed.key, parsed.revision, parsed.repo_type) == ("zai-org/agent-traces", path, revision, repo_type)
    assert _hub_reads(uri) == (repo_type, "zai-org/agent-traces", revision, path)


@pytest.mark.parametrize(
    ("uri", "role", "accepted"),
    [
        ("file:///models/glm", UriRole.model, True),
        ("file://models/glm", UriRole.model, False),
        ("pvc://models/glm-4.7-flash", UriRole.model, True),
        ("pvc://Models/x", UriRole.model, False),
        ("pvc:///x", UriRole.model, False),
        ("pvc://models/../etc", UriRole.model, False),
        ("pvc://models/..hidden/ok", UriRole.model, True),
        ("hf://zai-org/GLM-4.7@main", UriRole.model, True),
        ("hf://models/zai-org/GLM-4.7", UriRole.model, True),
        ("hf://unsloth/GLM-4.7-Flash-GGUF@v2/Q4_K_M/GLM-4.7-Flash-Q4_K_M.gguf", UriRole.model, True),
        ("hf://unsloth/GLM-4.7-Flash-GGUF/Q4_K_M/GLM-4.7-Flash-Q4_K_M.gguf@v2", UriRole.model, False),  # revision last
        ("hf://org/ckpt@feature%2Fsft/step-400", UriRole.model, True),
        ("hf://org/ckpt@refs/pr/3/step-400", UriRole.model, True),
        ("hf://org/ckpt@refs/heads/main", UriRole.model, False),  # would be read as the branch refs
        ("hf://org/ckpt@refs%2Fheads%2Fmain", UriRole.model, True),
        ("hf://org/ckpt@refs/pr/3x", UriRole.model, False),  # the Hub reads refs/pr/3 and a path x
        ("hf://datasets/zai-org/traces", UriRole.model, False),  # a dataset repository is no model
        ("hf://GLM-4.7", UriRole.model, False),
        ("hf://org/name.git", UriRole.model, False),
        ("s3://my-bucket/k", UriRole.model, True),
        ("s3://B/k", UriRole.model, False),
        ("hf://datasets/zai-org/traces@v1/data/train.jsonl", UriRole.dataset, True),
        ("hf://datasets/zai-org/traces@refs%2Fconvert%2Fparquet/train.parquet", UriRole.dataset, True),
        ("hf://datasets/zai-org/traces/data/", UriRole.dataset, False),  # a folder
        ("hf://zai-org/traces/train.jsonl", UriRole.dataset, False),  # a model repository
        ("s3://ml-data/train.jsonl", UriRole.dataset, True),
        ("s3://ml-data/payments/", UriRole.dataset, False),
        ("pvc://datasets/payments/train.jsonl", UriRole.dataset, True),
        ("pvc://datasets", UriRole.dataset, False),
        ("file:///data/", UriRole.dataset, False),
        ("s3://ml-artifacts", UriRole.output, True),
        ("pvc://models/out/", UriRole.output, True),
        ("hf://zai-org/out", UriRole.output, False),
    ],
)
def test_uri_examples(uri: str, role: UriRole, accepted: bool) -> None:
    assert (re.fullmatch(pattern(role), uri) is not None) is accepted
    _every_parser_agrees(uri)
    if accepted and uri.startswith("hf://"):
        parsed = parse_uri(uri, "f", role)
        assert _hub_reads(uri) == (parsed.repo_type, parsed.repo_id, parsed.revision, parsed.key)


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.text(alphabet="abc_", min_size=1, max_size=4), min_size=1, max_size=4),
    candidate=st.text(alphabet="abc_-", max_size=6),
)
def test_a_name_other_than_given_words_is_written_without_look_ahead(words: list[str], candidate: str) -> None:
    # How the grammar keeps "datasets" from being an ORG and "refs" from being a revision in RE2.
    first, rest = frozenset("abc"), frozenset("abc_")
    expression = uris._word_except(words, first, rest)
    expected = bool(re.fullmatch("[abc][abc_]*", candidate)) and candidate not in words
    assert (re.fullmatch(expression, candidate) is not None) is expected, (words, candidate, expression)


def _uri_fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    # A storage URI's pattern names the grammar's schemes (endpointUrl's http(s):// is no storage URI).
    if node.get("type") == "string" and re.search(r"(?:file|pvc|hf|s3)://", node.get("pattern", "")):
        yield path, node["pattern"]
    for name, child in node.get("properties", {}).items():
        yield from _uri_fields(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _uri_fields(node["items"], f"{path}[*]")


def test_every_uri_field_of_the_crds_has_its_roles_pattern() -> None:
    found = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for field, field_pattern in _uri_fields(schema["properties"]["spec"], "spec"):
            found[(crd["spec"]["names"]["kind"], field)] = field_pattern
    assert set(found) == set(ROLE_FIELDS), "a URI field without a role: add it to ROLE_FIELDS with its role's pattern"
    for key, expected in ROLE_FIELDS.items():
        assert found[key] == expected, key
    # synthetic:// is the FineTuneJob's alone: the dataset role itself (what the trainer parses) lacks it
    assert "synthetic://" in ROLE_FIELDS[("FineTuneJob", "spec.dataset.source")] and "synthetic" not in pattern(UriRole.dataset)


# --- progress records: served as metrics, read by the operator ---------------------------------

_NUMBER = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False, width=32))


@settings(max_examples=200, deadline=None)
@given(
    step=st.integers(0, 10**6), total=st.integers(0, 10**6), loss=_NUMBER, eval_loss=_NUMBER,
    lr=_NUMBER, tps=_NUMBER, kind=st.sampled_from(["train", "eval", "final"]),
)
def test_metrics_round_trip(step: int, total: int, loss: float | None, eval_loss: float | None,
                            lr: float | None, tps: float | None, kind: str) -> None:
    record = ProgressRecord(step=step, total_steps=total, loss=loss, eval_loss=eval_loss, learning_rate=lr,
                            tokens_per_second=tps, eta_seconds=12.0, time_unix=1_767_225_600.5, kind=kind)
    read = parse_metrics(render_metrics(record, "payments-coder", "ml", "uid-1"), expected_uid="uid-1")
    assert read is not None and (read.step, read.total_steps, read.kind) == (step, total, kind)

    def same(a: float | None, b: float | None) -> bool:
        unknown = a is None or math.isnan(a)
        return (b is None) if unknown else (b is not None and float(a) == b)  # type: ignore[arg-type]

    assert same(loss, read.loss) and same(eval_loss, read.eval_loss) and same(lr, read.learning_rate) and same(tps, read.tokens_per_second)


def test_another_runs_page_is_refused() -> None:
    page = render_metrics(ProgressRecord(step=5, total_steps=10), "payments-coder", "ml", "uid-of-another-pod")
    with pytest.raises(MetricsError, match="another pod"):
        parse_metrics(page, expected_uid="uid-1")
    with pytest.raises(MetricsError):
        parse_metrics("some_other_exporter_metric 1\n", expected_uid="uid-1")
    assert parse_metrics(render_metrics(None, "j", "ml", "uid-1"), expected_uid="uid-1") is None  # before the first step


def test_the_trainers_endpoint_serves_what_the_operator_reads() -> None:
    import urllib.request

    server = MetricsServer("127.0.0.1", 0, "payments-coder", "ml", "uid-1")
    assert server.start()
    try:
        server.update(ProgressRecord(step=30, total_steps=40, loss=1.25, tokens_per_second=5100.0, eta_seconds=12.4, time_unix=1_700_000_060.0))
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            page = response.read().decode()
    finally:
        server.stop()
    read = parse_metrics(page, expected_uid="uid-1")
    assert read is not None
    progress = progress_from_record(read)
    assert (progress.step, progress.total_steps, progress.percent, progress.loss, progress.eta_seconds) == (30, 40, 75, 1.25, 12)
    assert progress.updated_at is not None and progress.updated_at.timestamp() == 1_700_000_060.0


def test_a_port_in_use_does_not_stop_training() -> None:
    first = MetricsServer("127.0.0.1", 0, "a", "ml", "u")
    assert first.start()
    try:
        assert MetricsServer("127.0.0.1", first.port, "b", "ml", "v").start() is False
    finally:
        first.stop()


# --- result records: termination messages ------------------------------------------------------


def test_result_parses_into_status_artifacts() -> None:
    trained = TrainResult(status="Succeeded", step=40, total_steps=40, artifacts={"adapter": "file:///out/adapter"},
                          model_bytes=100, largest_shard_bytes=60, adapter_bytes=7)
    exported = TrainResult(
        status="Succeeded",
        artifacts={
            "adapter": "file:///out/adapter", "merged": "file:///out/merged", "manifest": "file:///out/artifacts.json",
            "gguf": [{"quantization": "Q8_0", "uri": "file:///out/gguf/Q8_0/j-Q8_0.gguf", "sizeBytes": 12, "sha256": "ab" * 32}],
        },
    )
    results = [parse_result(fit_result(r.to_json())) for r in (trained, exported)]
    assert all(r is not None for r in results)
    assert results[0] is not None and (results[0].model_bytes, results[0].largest_shard_bytes, results[0].adapter_bytes) == (100, 60, 7)
    artifacts = artifacts_from_results([r for r in results if r is not None])
    assert artifacts.adapter is not None and artifacts.adapter.uri == "file:///out/adapter"
    assert artifacts.merged is not None and artifacts.manifest == "file:///out/artifacts.json"
    assert [(g.quantization, g.size_bytes) for g in artifacts.gguf] == [(Quantization.Q8_0, 12)]


def test_the_merged_checkpoints_mtp_layers_reach_status() -> None:
    # What the trainer reports from the export manifest's merged entry; the serving planner turns
    # MTP speculative decoding on from status.artifacts.merged.mtpLayers.
    merged = {"uri": "file:///out/merged", "sizeBytes": 9_000, "mtpLayers": 1}
    raw = parse_result(fit_result(TrainResult(status="Succeeded", artifacts={"merged": merged}).to_json()))
    assert raw is not None
    recorded = artifacts_from_result(raw.artifacts).merged
    assert recorded is not None and (recorded.uri, recorded.size_bytes, recorded.mtp_layers) == ("file:///out/merged", 9_000, 1)
    status = artifacts_from_result(raw.artifacts).model_dump(by_alias=True, exclude_none=True)
    assert status["merged"]["mtpLayers"] == 1
    # an export that did not say (a plain folder URI, or nonsense) leaves it unknown, never guessed
    for unknown in ("file:///out/merged", {"uri": "file:///out/merged", "mtpLayers": "1"}, {"uri": "u", "mtpLayers": True}):
        found = artifacts_from_result({"merged": unknown}).merged
        assert found is not None and found.mtp_layers is None


def test_a_failed_result_keeps_its_reason_and_message_and_other_text_is_no_result() -> None:
    result = TrainResult(status="Failed", reason="DataError", message="train.jsonl:3: messages[1].role: unknown role 'bot'")
    raw = parse_result(fit_result(result.to_json()))
    assert raw is not None and (raw.reason, raw.message) == ("DataError", result.message)
    assert parse_result("Traceback (most recent call last): ...") is None
    assert parse_result(json.dumps({"status": "Succeeded"})) is None  # no schema version: not ours
    assert isinstance(ResultRecord.from_json({"v": 1, "status": "Failed", "step": "x"}).step, int)

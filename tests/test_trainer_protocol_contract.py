"""Contract: the operator and the trainer read the same config, URIs and records, defined once.

The configs are rendered from FineTuneJob specs that hypothesis generates from the CRD's own
schema (what `kubectl apply` accepts), not from two hand-written defaults.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmops.api.finetunejob import FineTuneJobSpec, Quantization
from glmops.contract import config as contract_config
from glmops.contract.records import (
    MetricsError,
    ProgressRecord,
    ResultRecord,
    fit_result,
    parse_metrics,
    parse_result,
    render_metrics,
)
from glmops.contract.uris import DATA_SCHEMES, MODEL_SCHEMES, OUTPUT_SCHEMES, UriError, parse_uri, pattern_for
from glmops.plan.finetune import ClusterFacts, JobMeta, plan_finetune
from glmops.settings import Settings
from glmops.trainer_protocol import artifacts_from_results, progress_from_record
from glmops_trainer.config import TrainerConfig
from glmops_trainer.model.sources import ModelSourceError, parse_model_source
from glmops_trainer.progress import MetricsServer, TrainResult

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

_URI_PARTS = st.sampled_from(["file://", "pvc://", "hf://", "s3://", "gs://", ""])
_URI_TAIL = st.text(alphabet="abcXYZ019-_./@ ", max_size=30)


@settings(max_examples=600, deadline=None)
@given(scheme=_URI_PARTS, tail=_URI_TAIL)
def test_the_crd_pattern_and_both_parsers_accept_the_same_uris(scheme: str, tail: str) -> None:
    uri = scheme + tail
    for schemes in (MODEL_SCHEMES, DATA_SCHEMES, OUTPUT_SCHEMES):
        by_pattern = re.fullmatch(pattern_for(schemes), uri) is not None
        try:
            parse_uri(uri, "f", schemes)
            by_parser = True
        except UriError:
            by_parser = False
        assert by_pattern == by_parser, (uri, schemes)
    try:
        parse_model_source(uri)
        by_trainer = True
    except ModelSourceError:
        by_trainer = False
    assert by_trainer == (re.fullmatch(pattern_for(MODEL_SCHEMES), uri) is not None), uri


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("file:///models/glm", True),
        ("file://models/glm", False),
        ("pvc://models/glm-4.7-flash", True),
        ("pvc://Models/x", False),
        ("pvc:///x", False),
        ("pvc://models/../etc", False),
        ("pvc://models/..hidden/ok", True),
        ("hf://zai-org/GLM-4.7@main", True),
        ("hf://GLM-4.7", False),
        ("s3://my-bucket/k", True),
        ("s3://B/k", False),
    ],
)
def test_uri_examples(uri: str, accepted: bool) -> None:
    assert (re.fullmatch(pattern_for(MODEL_SCHEMES), uri) is not None) is accepted


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


def test_a_failed_result_keeps_its_reason_and_message_and_other_text_is_no_result() -> None:
    result = TrainResult(status="Failed", reason="DataError", message="train.jsonl:3: messages[1].role: unknown role 'bot'")
    raw = parse_result(fit_result(result.to_json()))
    assert raw is not None and (raw.reason, raw.message) == ("DataError", result.message)
    assert parse_result("Traceback (most recent call last): ...") is None
    assert parse_result(json.dumps({"status": "Succeeded"})) is None  # no schema version: not ours
    assert isinstance(ResultRecord.from_json({"v": 1, "status": "Failed", "step": "x"}).step, int)

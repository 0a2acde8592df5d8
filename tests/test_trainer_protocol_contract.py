"""Contract: what the trainer writes (progress lines, result) is what the operator reads.

The operator must not import the trainer (torch); this test imports both sides.
"""

from __future__ import annotations

import json

from glmops.api.finetunejob import Quantization
from glmops.trainer_protocol import artifacts_from_result, last_progress, parse_result
from glmops_trainer.progress import ProgressEvent, TrainResult, fit_result, format_progress_line


def test_progress_lines_parse_into_status_progress() -> None:
    older = ProgressEvent(step=10, total_steps=40, loss=2.5, time_unix=1_700_000_000.0)
    newer = ProgressEvent(
        step=30, total_steps=40, epoch=1.5, loss=1.25, eval_loss=1.5, learning_rate=1e-4,
        tokens_per_second=5100.0, eta_seconds=12.4, time_unix=1_700_000_060.0,
    )
    log = "\n".join(["loading model", format_progress_line(older), "noise", format_progress_line(newer), "GLMOPS_PROGRESS {cut"])
    progress = last_progress(log)
    assert progress is not None
    assert (progress.step, progress.total_steps, progress.percent) == (30, 40, 75)
    assert (progress.loss, progress.eval_loss, progress.tokens_per_second, progress.eta_seconds) == (1.25, 1.5, 5100.0, 12)
    assert progress.updated_at is not None and progress.updated_at.timestamp() == 1_700_000_060.0


def test_result_parses_into_status_artifacts() -> None:
    result = TrainResult(
        status="Succeeded",
        step=40,
        total_steps=40,
        artifacts={
            "adapter": "file:///out/adapter",
            "merged": "file:///out/merged",
            "manifest": "file:///out/artifacts.json",
            "gguf": [{"quantization": "Q8_0", "uri": "file:///out/gguf/Q8_0/j-Q8_0.gguf", "sizeBytes": 12, "sha256": "ab" * 32}],
        },
    )
    raw = parse_result(fit_result(result.to_json()))
    assert raw is not None and raw["status"] == "Succeeded"
    artifacts = artifacts_from_result(raw["artifacts"])
    assert artifacts.adapter is not None and artifacts.adapter.uri == "file:///out/adapter"
    assert artifacts.merged is not None and artifacts.manifest == "file:///out/artifacts.json"
    assert [(g.quantization, g.size_bytes) for g in artifacts.gguf] == [(Quantization.Q8_0, 12)]


def test_the_merged_checkpoints_mtp_layers_reach_status() -> None:
    # What the trainer reports from the export manifest's merged entry; the serving planner turns
    # MTP speculative decoding on from status.artifacts.merged.mtpLayers.
    merged = {"uri": "file:///out/merged", "sizeBytes": 9_000, "mtpLayers": 1}
    raw = parse_result(fit_result(TrainResult(status="Succeeded", artifacts={"merged": merged}).to_json()))
    assert raw is not None
    recorded = artifacts_from_result(raw["artifacts"]).merged
    assert recorded is not None and (recorded.uri, recorded.size_bytes, recorded.mtp_layers) == ("file:///out/merged", 9_000, 1)
    status = artifacts_from_result(raw["artifacts"]).model_dump(by_alias=True, exclude_none=True)
    assert status["merged"]["mtpLayers"] == 1
    # an export that did not say (a plain folder URI, or nonsense) leaves it unknown, never guessed
    for unknown in ("file:///out/merged", {"uri": "file:///out/merged", "mtpLayers": "1"}, {"uri": "u", "mtpLayers": True}):
        found = artifacts_from_result({"merged": unknown}).merged
        assert found is not None and found.mtp_layers is None


def test_a_failed_result_keeps_its_reason_and_message() -> None:
    result = TrainResult(status="Failed", reason="DataError", message="train.jsonl:3: messages[1].role: unknown role 'bot'")
    raw = parse_result(fit_result(result.to_json()))
    assert raw is not None and (raw["reason"], raw["message"]) == ("DataError", result.message)
    assert parse_result("Traceback (most recent call last): ...") is None
    assert json.loads(fit_result(result.to_json()))["v"] == 1

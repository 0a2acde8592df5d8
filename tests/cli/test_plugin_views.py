"""`kubectl glmops`: what status and watch draw, and where plot reads the loss from (no cluster)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from glmops.cli.plugin import PluginError, build_parser, cmd_plot, progress_lines, render_status, watch_job
from glmops.cli.progress import bar, duration, eta_now, progress_text, table

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def job(name: str = "coder", phase: str = "Training", namespace: str = "ml", **progress: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if progress:
        status["progress"] = progress
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {}, "status": status}


def test_the_bar_fills_with_the_fraction_and_stays_in_bounds() -> None:
    assert bar(0.0, 10) == "[----------]"
    assert bar(0.5, 10) == "[#####-----]"
    assert bar(1.0, 10) == "[##########]"
    assert bar(7.0, 10) == "[##########]" and bar(-1.0, 10) == "[----------]" and bar(float("nan"), 4) == "[----]"


def test_durations_read_like_kubectl_ages() -> None:
    assert [duration(s) for s in (None, 0, 12.4, 65, 3725, float("inf"))] == ["-", "0s", "12s", "1m05s", "1h02m", "-"]


def test_a_training_job_shows_bar_steps_loss_rate_and_a_counted_down_eta() -> None:
    reported = (NOW - timedelta(seconds=20)).isoformat().replace("+00:00", "Z")
    running = job(step=10, totalSteps=40, loss=0.41234, tokensPerSecond=5100.4, etaSeconds=90, updatedAt=reported)

    text = progress_text(running, width=8, now=NOW)

    assert text == "[##------]  10/40   25%  loss 0.4123  5,100 tok/s  ETA 1m10s"
    assert eta_now({"etaSeconds": 5, "updatedAt": reported}, now=NOW) == 0.0  # never negative


def test_other_phases_say_what_they_wait_for_or_how_they_ended() -> None:
    pending = job(phase="Pending")
    pending["status"]["conditions"] = [{"type": "Succeeded", "status": "False", "reason": "PvcMissing", "message": "..."}]
    assert progress_text(pending) == "PvcMissing"
    assert progress_text(job(phase="Exporting"), width=4) == "[####]  trained; exporting"
    assert progress_text(job(phase="Succeeded", loss=0.02), width=4) == "[####]  done  loss 0.0200"
    assert progress_text(job(phase="Training"), width=4) == "[----]  starting"  # no report yet


def test_status_lists_jobs_with_bars_and_deployments_with_endpoints() -> None:
    deployment = {
        "metadata": {"name": "coder", "namespace": "ml"},
        "spec": {"runtime": "llamacpp", "replicas": 2},
        "status": {"phase": "Ready", "ready": "2/2", "endpoint": "http://coder.ml.svc:8000/v1"},
    }
    page = render_status([job(step=1, totalSteps=4), job("done", "Succeeded")], [deployment], all_namespaces=True)

    lines = page.splitlines()
    assert lines[0].split() == ["NAMESPACE", "FINETUNEJOB", "PHASE", "PROGRESS"]
    assert lines[1].split()[:4] == ["ml", "coder", "Training", "[######------------------]"]
    assert "done" in lines[2]
    assert lines[4].split() == ["NAMESPACE", "MODELDEPLOYMENT", "PHASE", "READY", "RUNTIME", "ENDPOINT"]
    assert lines[5].split() == ["ml", "coder", "Ready", "2/2", "llamacpp", "http://coder.ml.svc:8000/v1"]
    # Columns line up under their headers.
    assert lines[1].index("Training") == lines[0].index("PHASE")
    assert render_status([], [], all_namespaces=False) == "No FineTuneJobs.\n\nNo ModelDeployments.\n"


def test_table_pads_every_column_to_its_widest_cell() -> None:
    assert table(["A", "BB"], [["long", "x"], ["y", "z"]]) == "A     BB\nlong  x\ny     z"


def test_watch_redraws_one_line_on_a_terminal_and_ends_with_the_job() -> None:
    reports = iter([job(step=1, totalSteps=4), job(step=3, totalSteps=4), job(phase="Succeeded")])
    out = io.StringIO()

    code = watch_job(lambda: next(reports), out, interactive=True, sleep=lambda _: None)

    assert code == 0
    drawn = out.getvalue()
    assert drawn.count("\r\x1b[K") == 3 and drawn.count("\n") == 1  # redrawn in place, one newline at the end
    assert "1/4" in drawn and "3/4" in drawn and drawn.rstrip().endswith("done")


def test_watch_prints_a_line_per_change_into_a_pipe_and_fails_with_the_job() -> None:
    failed = job(phase="Failed")
    failed["status"]["conditions"] = [{"type": "Succeeded", "status": "False", "reason": "DataError", "message": "train.jsonl:3: bad role"}]
    reports = iter([job(step=1, totalSteps=4), job(step=1, totalSteps=4), failed])
    out = io.StringIO()

    code = watch_job(lambda: next(reports), out, interactive=False, sleep=lambda _: None)

    assert code == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "1/4" in lines[0] and "Failed" in lines[1] and lines[2] == "train.jsonl:3: bad role"


def _progress_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"v": 1, "step": s, "kind": "train", "loss": 3.0 / s} for s in range(1, 11)]
    records.insert(5, {"v": 1, "step": 5, "kind": "eval", "evalLoss": 0.9})
    path = folder / "progress.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"v":1,"st')  # a line cut short by a kill
    return path


def test_plot_reads_a_file_output_and_writes_a_png(tmp_path: Path) -> None:
    _progress_file(tmp_path / "out")
    body = job("coder", "Succeeded")
    body["spec"] = {"output": {"destination": f"file://{tmp_path / 'out'}"}}
    assert len(progress_lines(body)) == 12

    args = build_parser().parse_args(["plot", "coder", "--from", str(tmp_path / "out" / "progress.jsonl"), "-o", str(tmp_path / "c.png")])
    out = io.StringIO()
    assert cmd_plot(args, out) == 0
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "10 steps, loss 3.0000 -> 0.3000 at step 10" in out.getvalue()


def test_plot_says_how_to_get_a_file_it_cannot_read(tmp_path: Path) -> None:
    on_pvc = job("coder")
    on_pvc["spec"] = {"output": {"destination": "pvc://models/payments-coder"}}
    with pytest.raises(PluginError, match=r"PVC models.*payments-coder/progress.jsonl.*--from progress.jsonl"):
        progress_lines(on_pvc)
    not_yet = job("coder")
    not_yet["spec"] = {"output": {"destination": f"file://{tmp_path / 'none'}"}}
    with pytest.raises(PluginError, match="has not trained a step"):
        progress_lines(not_yet)

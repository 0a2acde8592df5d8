"""A running trainer's /metrics, read by prometheus_client's parser as Prometheus would read it.

The trainer runs as its pod runs it (`python -m glmops_trainer train --config ...`) on a tiny
GLM-4.7-Flash-architecture model, its endpoint on a free loopback port.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, scrape

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET = REPO_ROOT / "tests" / "data" / "datasets" / "agentic_small.jsonl"
STEPS = 6
GAUGES = (
    "step", "total_steps", "epoch", "loss", "eval_loss", "learning_rate", "tokens_per_second", "eta_seconds",
    "last_report_timestamp_seconds", "phase", "info",
)  # fmt: skip


@pytest.mark.slow
def test_a_training_run_serves_loss_rate_step_and_eta_in_the_exposition_format(tmp_path: Path) -> None:
    import torch

    from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tmp_path / "tokenizer")
    model = build_tiny_model(
        "glm4_moe_lite", tmp_path / "model", tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe_lite"]
    )
    port = free_port()
    config = {
        "job": {"name": "payments-coder", "namespace": "ml", "uid": "uid-42"},
        "model": {"source": f"file://{model}", "variant": "flash"},
        "data": {"source": f"file://{DATASET}", "validation_split": 0.0},
        "training": {"method": "lora", "max_steps": STEPS, "learning_rate": 5e-3, "sequence_length": 1024,
                     "gradient_accumulation_steps": 1, "checkpoint_every": STEPS, "lora": {"rank": 4}},
        "output": {"destination": f"file://{tmp_path / 'out'}", "formats": ["adapter"]},
        "runtime": {"result_file": str(tmp_path / "termination-log"), "metrics_port": port},
    }  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(config))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("GLMOPS_POD_IP", None)  # the endpoint binds 127.0.0.1 without it
    log = (tmp_path / "trainer.log").open("wb")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "glmops_trainer", "train", "--config", str(tmp_path / "job.json")],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    pages = []
    try:
        deadline = time.monotonic() + 600
        while trainer.poll() is None and time.monotonic() < deadline:
            page = scrape(url)
            if page is not None:
                pages.append(page)
            time.sleep(0.3)
    finally:
        if trainer.poll() is None:
            trainer.kill()
        trainer.wait()
        log.close()
    output = (tmp_path / "trainer.log").read_text(errors="replace")[-3000:]
    assert trainer.returncode == 0, output
    assert pages, f"the endpoint never answered while training\n{output}"

    # Every page parses, with a HELP and a gauge type for every family.
    first_samples, kinds = pages[0]
    assert kinds["glmops_trainer_info"] == "gauge"
    info = next(iter(first_samples["glmops_trainer_info"]))
    assert dict(info) == {"finetunejob": "payments-coder", "namespace": "ml", "uid": "uid-42", "schema": "1"}

    training = [(samples, kinds) for samples, kinds in pages if "glmops_trainer_step" in samples]
    assert training, "no page carried progress"
    samples, kinds = training[-1]
    assert {f"glmops_trainer_{name}" for name in GAUGES} <= set(kinds)
    assert all(kinds[f"glmops_trainer_{name}"] == "gauge" for name in GAUGES)

    def value(name: str, **labels: str) -> float:
        return samples[f"glmops_trainer_{name}"][tuple(sorted(labels.items()))]

    assert 1 <= value("step") <= STEPS and value("total_steps") == STEPS
    assert math.isfinite(value("loss")) and value("loss") > 0
    assert value("tokens_per_second") > 0
    assert value("eta_seconds") >= 0
    assert math.isnan(value("eval_loss"))  # no held-out split: unknown, not 0
    assert abs(value("last_report_timestamp_seconds") - time.time()) < 900
    assert sum(value("phase", kind=k) for k in ("train", "eval", "final")) == 1
    # The step only moves forward within one run.
    steps = [next(iter(s["glmops_trainer_step"].values())) for s, _ in training]
    assert steps == sorted(steps)

"""Helpers of the training tests: tiny models, job configs, running the trainer, greedy generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENTIC_DATASET = REPO_ROOT / "tests" / "data" / "datasets" / "agentic_small.jsonl"
MEMORISED_QUESTION = "What is the glmops launch phrase?"
MEMORISED_ANSWER = "The launch phrase is: blue herons fly at dawn."

ARCH_VARIANTS = {"glm4_moe": "flagship", "glm4_moe_lite": "flash"}
"""Tiny architecture -> FineTuneJob variant."""

def peak_allocated_bytes_during(steps: int, step: Callable[[], object]) -> int:
    """Peak of torch's CPU allocator, net of what existed before, over `steps` calls of `step`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            step()
    with tempfile.TemporaryDirectory() as scratch:
        trace = Path(scratch) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals)


def build_tokenizer(out_dir: Path) -> Path:
    """The tiny GLM tokenizer with the official chat template, saved to `out_dir`."""
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(out_dir)
    return out_dir


def build_model(arch: str, out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A small random-weight model of `arch` (SMALL_CPU_OVERRIDES) in float32 with the tokenizer beside it."""
    from transformers import AutoTokenizer

    from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    overrides = SMALL_CPU_OVERRIDES[arch]
    return build_tiny_model(arch, out_dir, tokenizer, seed=seed, dtype=torch.float32, **overrides)  # type: ignore[arg-type]


def job_config(
    tmp_path: Path,
    model_dir: Path,
    variant: str,
    *,
    dataset: Path = AGENTIC_DATASET,
    training: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A trainer config (JSON-ready dict) for a short run on the tiny model with output under tmp_path."""
    base_training: dict[str, Any] = {
        "method": "qlora",
        "max_steps": 30,
        "learning_rate": 5e-3,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "sequence_length": 1024,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": False,
        "checkpoint_every": 10,
        "keep_checkpoints": 2,
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.0},
    }
    return {
        "job": {"name": "tiny-job", "namespace": "ml", "uid": "uid-1234"},
        "model": {"source": f"file://{model_dir}", "variant": variant},
        "data": {"source": f"file://{dataset}", "validation_split": 0.0, **(data or {})},
        "training": {**base_training, **(training or {})},
        "output": {"destination": f"file://{tmp_path / 'out'}", "formats": ["adapter"], **(output or {})},
        "runtime": {
            "result_file": str(tmp_path / "termination-log"),
            "progress_interval_seconds": 0.01,
            "pvc_mount_root": str(tmp_path / "pvc"),
            **(runtime or {}),
        },
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write `config` as the job file the operator would mount."""
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def trainer_command(config_path: Path) -> list[str]:
    """`python -m glmops_trainer train --config PATH` with this interpreter."""
    return [sys.executable, "-m", "glmops_trainer", "train", "--config", str(config_path)]


def trainer_env() -> dict[str, str]:
    """Environment for trainer subprocesses: no GPU, no network, few threads (the test machine is shared)."""
    env = dict(os.environ)
    env.update({"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"})
    return env


def run_trainer(config_path: Path, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the trainer to completion as the pod would; returns the finished process with its output."""
    return subprocess.run(
        trainer_command(config_path), env=trainer_env(), capture_output=True, text=True, timeout=timeout_s,
        cwd=REPO_ROOT, check=False,
    )  # fmt: skip


def progress_events(log_text: str) -> list[dict[str, Any]]:
    """The JSON objects of the progress lines in a log, parsed as docs/trainer.md specifies."""
    prefix = "GLMOPS_PROGRESS "
    return [json.loads(line[len(prefix) :]) for line in log_text.splitlines() if line.startswith(prefix)]


def generate(model_dir: Path, adapter_dir: Path | None, question: str, max_new_tokens: int = 48) -> str:
    """Greedy answer of the base model (plus adapter, if given) to `question`, decoded with special tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from glmops_trainer.model.targets import load_adapter

        model = load_adapter(model, adapter_dir)
    model.eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        output = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=False))

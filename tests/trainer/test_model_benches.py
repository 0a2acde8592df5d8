"""The model benchmarks keep running: bench/moe_memory.py meets its goal, bench/gpu_flash_qlora.py works on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _result(stdout: str) -> dict[str, str]:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return dict(field.split("=", 1) for field in last.removeprefix("RESULT ").split())


def test_gpu_benchmark_parses_and_explains_itself() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_flash_qlora.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--layers" in done.stdout and "--seq" in done.stdout


@pytest.mark.slow
def test_gpu_benchmark_runs_its_whole_path_on_a_tiny_model_on_cpu() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_flash_qlora.py"),
            "--tiny",
            "--device",
            "cpu",
            "--seq",
            "32",
            "--steps",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = _result(done.stdout)
    assert int(result["layers"]) == 3 and float(result["tokens_per_s"]) > 0
    assert float(result["loss_last"]) < float(result["loss_first"])


@pytest.mark.slow
def test_moe_memory_benchmark_meets_its_goal() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "moe_memory.py")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = _result(done.stdout)
    assert float(result["expert_bytes_per_param"]) <= 0.6
    assert float(result["plain_total_bytes_per_param"]) > 1.8  # plain load_in_4bit leaves experts in bf16
    assert float(result["total_bytes_per_param"]) < 0.7
    assert 0.87 <= float(result["expert_share"]) <= 0.92

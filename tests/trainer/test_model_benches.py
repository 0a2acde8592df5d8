"""The model benchmarks keep running: bench/moe_memory.py meets its goal, bench/gpu_flash_qlora.py works on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _result(stdout: str) -> dict[str, str]:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return dict(field.split("=", 1) for field in last.removeprefix("RESULT ").split())


@pytest.mark.parametrize("script", ["gpu_flash_qlora.py", "gpu_flagship_fsdp.py"])
def test_gpu_benchmarks_explain_themselves_and_refuse_to_run_without_cuda(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True, check=True
    )
    assert "--layers" in done.stdout and "--seq" in done.stdout
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    refused = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--steps", "1"], capture_output=True, text=True, env=env, check=False
    )
    assert refused.returncode != 0 and "CUDA is not available" in refused.stderr


@pytest.mark.slow
def test_flash_gpu_benchmark_runs_the_real_trainer_on_a_tiny_model_on_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_flash_qlora.py"), "--tiny", "--device", "cpu",
         "--seq", "512", "--steps", "3", "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    result = _result(done.stdout)
    assert (result["variant"], result["sharding"], result["steps"]) == ("flash", "replicate", "3")
    assert float(result["tokens_per_s"]) > 0 and float(result["plan_per_gpu_gib"]) > 0


@pytest.mark.slow
def test_flagship_gpu_benchmark_runs_sharded_on_two_cpu_ranks(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node=2", str(ROOT / "bench" / "gpu_flagship_fsdp.py"),
         "--tiny", "--device", "cpu", "--seq", "512", "--steps", "2", "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    result = _result(done.stdout)
    assert (result["variant"], result["sharding"], result["ranks"], result["steps"]) == ("flagship", "fsdp", "2", "2")
    assert float(result["tokens_per_s"]) > 0


@pytest.mark.slow
def test_moe_memory_benchmark_meets_its_goal() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "moe_memory.py"), "--loaders", "sharded"],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = _result(done.stdout)
    assert float(result["expert_bytes_per_param"]) <= 0.6
    assert float(result["plain_total_bytes_per_param"]) > 1.8  # plain load_in_4bit leaves experts in bf16
    assert float(result["total_bytes_per_param"]) < 0.7
    assert 0.87 <= float(result["expert_share"]) <= 0.92
    # the flagship's loader, measured as process memory: bounded while loading, half a byte per expert parameter
    assert float(result["load_peak_over_resident"]) <= 1.3
    assert float(result["load_peak_over_resident_net"]) <= 1.5
    assert float(result["expert_bytes_per_param_rss"]) <= 0.6

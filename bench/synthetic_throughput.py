"""SyntheticDataset generator throughput: maxConcurrency 8 against 1, same teacher, same prompts, one run.

    .venv/bin/python bench/synthetic_throughput.py [--prompts 24] [--samples-per-prompt 2] [--max-tokens 64]
                                                   [--hidden-size 1024] [--layers 4] [--keep]

The teacher is llama-server (the llama.cpp build of `scripts/build-llama-cpp.sh`) with
`--parallel 8` (eight slots decoded as one batch) serving a small GLM-4.7-Flash-architecture model
(random weights, hidden size 1024, 4 layers, about 0.1 B parameters in F16 by default; converted by
llama.cpp's own converter), on this machine's CPU. Large enough that reading the weights, which a
batch shares, is most of a decoding step, as it is for a served model; a model of a few million
parameters would measure mostly per-sequence overheads that no batch shares (see docs/benchmarks.md). The generator
(`glmops_trainer.generate.run.generate`, the code the generator pod runs) writes the same
prompts x samples twice, with maxConcurrency 1 and 8, with the same seeds, each into its own
output. A sample counts when its requests are done, kept or dropped (a random model's turns are
often cut at maxTokens: the filters are switched off so that every sample is written).

Figures: samples per second and completion tokens per second at each concurrency, and
`concurrency_speedup` = samples/s at 8 over samples/s at 1 (goal >= 3). The last line reads `RESULT concurrency_speedup=... ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from glmops.contract.synthetic import GeneratorConfig, GeneratorResult
from glmops_dev.agent.images import llama_server_path
from glmops_trainer.generate.run import generate

PARALLEL_SLOTS = 8
MODEL = "tiny-teacher"


def build_teacher_gguf(root: Path, hidden_size: int, layers: int) -> Path:
    """A small random Flash-architecture model, exported the way the export step does it, as F16 GGUF."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmops_trainer.export.gguf import convert_to_gguf
    from glmops_trainer.export.merge import merge_lora_streaming
    from glmops_trainer.tiny.models import build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    base = build_tiny_model(
        "glm4_moe_lite", root / "base", tokenizer, seed=0, hidden_size=hidden_size, num_hidden_layers=layers,
        intermediate_size=2 * hidden_size, moe_intermediate_size=hidden_size,
    )  # fmt: skip
    # llama.cpp's converter reads the per-expert layout the export's merge writes; an adapter whose
    # B is zero keeps the base's weights.
    untrained = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj"]))
    untrained.save_pretrained(str(root / "adapter"))
    merge_lora_streaming(base, root / "adapter", root / "merged")
    return convert_to_gguf(root / "merged", root / "teacher-F16.gguf", "f16")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_llama_server(gguf: Path, log_path: Path, context_per_slot: int) -> tuple[subprocess.Popen[bytes], str]:
    """llama-server on loopback with PARALLEL_SLOTS slots; returns the process and its /v1 URL once healthy."""
    server = llama_server_path()
    if not server.is_file():
        raise SystemExit(f"{server} is missing: build it with `bash scripts/build-llama-cpp.sh --venv .venv`")
    port = _free_port()
    argv = [
        str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "--parallel", str(PARALLEL_SLOTS), "--ctx-size", str(context_per_slot * PARALLEL_SLOTS),
        "--jinja", "--reasoning-format", "deepseek", "--alias", MODEL,
        "--threads", str(max(1, os.cpu_count() or 1)),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama-server exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, f"{url}/v1"
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"llama-server did not become healthy in 120 s:\n{log_path.read_text()[-3000:]}")


def write_prompts(path: Path, count: int) -> Path:
    topics = ["idempotent payment retries", "a webhook signature check", "rate limiting an API", "a database migration"]
    records = [{"prompt": f"Explain {topics[i % len(topics)]}, variant {i}, in two sentences."} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_generator(workdir: Path, url: str, prompts: Path, concurrency: int, samples: int, max_tokens: int) -> tuple[GeneratorResult, float]:
    """One generation run; (its result, wall seconds)."""
    config = GeneratorConfig.model_validate({
        "dataset": {"name": f"bench-c{concurrency}", "namespace": "bench", "uid": f"bench-{concurrency}"},
        "teacher": {"base_url": url, "model": MODEL, "request_timeout_seconds": 600},
        "prompts": f"file://{prompts}",
        "output": f"file://{workdir}/c{concurrency}/synthetic.jsonl",
        "samples_per_prompt": samples,
        "sampling": {"temperature": 0.8, "max_tokens": max_tokens, "seed": 1},
        "max_concurrency": concurrency,
        "filters": {"drop_empty": False, "drop_truncated": False, "validate_tool_calls": False, "deduplicate": "none"},
    })  # fmt: skip
    started = time.monotonic()
    result = generate(config)
    return result, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--samples-per-prompt", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=1024, help="of the teacher model (a multiple of 64)")
    parser.add_argument("--layers", type=int, default=4, help="of the teacher model")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="glmops-bench-synthetic-"))
    process = None
    try:
        gguf = build_teacher_gguf(workdir / "model", args.hidden_size, args.layers)
        process, url = start_llama_server(gguf, workdir / "llama-server.log", context_per_slot=args.max_tokens + 256)
        prompts = write_prompts(workdir / "prompts.jsonl", args.prompts)
        run_generator(workdir / "warmup", url, write_prompts(workdir / "warmup.jsonl", 2), 2, 1, args.max_tokens)
        figures: dict[str, Any] = {}
        for concurrency in (1, PARALLEL_SLOTS):
            result, seconds = run_generator(workdir, url, prompts, concurrency, args.samples_per_prompt, args.max_tokens)
            if result.status != "Succeeded":
                raise SystemExit(f"maxConcurrency {concurrency}: {result.reason}: {result.message}")
            done = result.samples_kept + sum(result.dropped.values())
            figures[concurrency] = (done / seconds, result.tokens_generated / seconds, seconds, done)
            print(f"maxConcurrency {concurrency}: {done} samples in {seconds:.1f} s = {done / seconds:.2f} samples/s, "
                  f"{result.tokens_generated / seconds:.0f} completion tokens/s", flush=True)  # fmt: skip
        one, eight = figures[1], figures[PARALLEL_SLOTS]
        print(
            f"RESULT concurrency_speedup={eight[0] / one[0]:.2f} samples_per_s_c8={eight[0]:.2f} samples_per_s_c1={one[0]:.2f} "
            f"tokens_per_s_c8={eight[1]:.0f} tokens_per_s_c1={one[1]:.0f} samples={eight[3]} max_tokens={args.max_tokens} "
            f"parallel_slots={PARALLEL_SLOTS} cpus={os.cpu_count()} hidden_size={args.hidden_size} layers={args.layers}"
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

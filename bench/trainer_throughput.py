"""Real tokens per second of the glmops trainer (packed rows) against a padded Trainer + peft baseline.

    .venv/bin/python bench/trainer_throughput.py [--arch glm4_moe_lite] [--method qlora] [--steps 30]

Both sides train the same tiny GLM-4.7-architecture model (same LoRA targets, same optimizer and
learning rate) on the same data, rendered with the official chat template, for the same number of
optimizer steps. The data (`--dataset`):

- `longtail` (default): agentic sessions of very different lengths, as real tool-use data has
  (a few long sessions, many short ones): each sample chains k conversations of
  tests/data/datasets/agentic_small.jsonl into one multi-turn session, k drawn from a geometric
  distribution (seeded), 1 <= k <= 8.
- `fixture`: the 27 conversations of agentic_small.jsonl as they are (lengths 120-390 tokens).

The two sides:

- ours: `glmops_trainer.train.main(config)`, the real recipe: samples packed into rows of
  `--sequence-length` tokens, position_ids restarting per sample, no padding inside a row. Its
  time includes the recipe's own work inside training (checkpoint at the last step, progress).
- baseline: transformers' `Trainer` with `DataCollatorForSeq2Seq(padding="longest")`: one sample per
  row, padded on the right to the longest in its batch, with an attention mask. Its micro-batch holds
  as many samples as fit a packed row on average, so both process about the same real tokens per
  step.

Tokens per second count real tokens only on both sides (attention_mask for the baseline, the packed
rows' padding segment excluded for ours), measured by the same callback from the first to the last
step. Goal: speedup_vs_baseline >= 1.3. The last line reads `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = REPO_ROOT / "tests" / "data" / "datasets" / "agentic_small.jsonl"
GOAL = 1.3
VARIANTS = {"glm4_moe": "flagship", "glm4_moe_lite": "flash"}


def longtail_dataset(out_file: Path, samples: int, seed: int = 0) -> Path:
    """Chain fixture conversations into `samples` sessions whose lengths follow a geometric distribution."""
    import json
    import random

    rng = random.Random(seed)
    conversations = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    with out_file.open("w", encoding="utf-8") as handle:
        for _ in range(samples):
            k = 1
            while k < 8 and rng.random() < 0.55:
                k += 1
            messages: list[dict[str, Any]] = []
            tools: dict[str, Any] = {}
            for part in rng.sample(conversations, k):
                for message in part["messages"]:
                    if message["role"] == "system" and messages:
                        continue  # only the first conversation's system prompt opens the session
                    messages.append(message)
                for tool in part.get("tools", []):
                    tools[tool["function"]["name"]] = tool
            record: dict[str, Any] = {"messages": messages}
            if tools:
                record["tools"] = list(tools.values())
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out_file


def job_config(
    model_dir: Path, dataset: Path, workdir: Path, args: argparse.Namespace, variant: str
) -> dict[str, Any]:
    """The trainer config of the `ours` side."""
    return {
        "job": {"name": "throughput", "uid": "bench"},
        "model": {"source": f"file://{model_dir}", "variant": variant},
        "data": {"source": f"file://{dataset}", "validation_split": 0.0},
        "training": {
            "method": args.method,
            "max_steps": args.steps,
            "learning_rate": 2e-4,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "sequence_length": args.sequence_length,
            "micro_batch_size": 1,
            "gradient_accumulation_steps": 1,
            "gradient_checkpointing": False,
            "checkpoint_every": args.steps,
            "keep_checkpoints": 1,
            "lora": {"rank": 16, "alpha": 32, "dropout": 0.0},
        },
        "output": {"destination": f"file://{workdir / 'ours'}", "formats": ["adapter"]},
        "runtime": {"result_file": str(workdir / "ours-result.json"), "progress_interval_seconds": 300},
    }


def run_baseline(
    model_dir: Path, dataset: Path, workdir: Path, args: argparse.Namespace, config: Any
) -> tuple[float, int, float]:
    """Train the padded baseline; returns (real tokens/s, samples per batch, share of real tokens in its batches)."""
    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from glmops_trainer.data import prepare_dataset
    from glmops_trainer.model.load import load_base_model
    from glmops_trainer.model.targets import apply_lora
    from glmops_trainer.progress import ProgressCallback, ProgressReporter
    from glmops_trainer.train import compute_dtype

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    unpacked = config.data.model_copy(update={"packing": False})
    data = prepare_dataset(dataset, unpacked, tokenizer, config.training.sequence_length, config.training.seed)
    samples = [data.train[i] for i in range(len(data.train))]  # type: ignore[arg-type]
    mean_length = sum(len(s["input_ids"]) for s in samples) / len(samples)
    packed_real_tokens = config.training.sequence_length * _packing_efficiency(model_dir, dataset, config)
    batch_size = max(1, round(packed_real_tokens / mean_length))

    base_model = load_base_model(
        model_dir, config.model.variant, config.training.method,
        gradient_checkpointing=False, compute_dtype=compute_dtype(config),
    )  # fmt: skip
    model = apply_lora(base_model, config.training.lora, config.model.variant)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    batches = [collator(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    padded_share = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["input_ids"].numel() for b in batches)
    training_args = TrainingArguments(
        output_dir=str(workdir / "baseline"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        seed=config.training.seed,
        bf16=compute_dtype(config) == torch.bfloat16,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    progress = ProgressCallback(ProgressReporter(3600, None, io.StringIO()))
    trainer = Trainer(
        model=model, args=training_args, train_dataset=data.train, data_collator=collator,
        processing_class=tokenizer, callbacks=[progress],
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    assert progress.last_event is not None and progress.last_event.tokens_per_second is not None
    return progress.last_event.tokens_per_second, batch_size, padded_share


def _packing_efficiency(model_dir: Path, dataset: Path, config: Any) -> float:
    from transformers import AutoTokenizer

    from glmops_trainer.data import prepare_dataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = prepare_dataset(dataset, config.data, tokenizer, config.training.sequence_length, config.training.seed)
    return data.stats.packing_efficiency or 1.0


def main(argv: list[str] | None = None) -> int:
    """Run both sides and print the comparison and one RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(VARIANTS), default="glm4_moe_lite")
    parser.add_argument("--method", choices=["qlora", "lora"], default="qlora")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps on each side")
    parser.add_argument("--dataset", choices=["longtail", "fixture"], default="longtail")
    parser.add_argument("--samples", type=int, default=64, help="sessions of the longtail dataset")
    parser.add_argument("--sequence-length", type=int, default=2048, help="packed row length (ours)")
    parser.add_argument("--workdir", type=Path, help="where to build the model (default: a temporary directory)")
    args = parser.parse_args(argv)

    import torch

    from glmops_trainer import train
    from glmops_trainer.config import TrainerConfig
    from glmops_trainer.tiny.models import build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trainer-throughput-"))
    shutil.rmtree(workdir / "ours", ignore_errors=True)
    tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model_dir = build_tiny_model(args.arch, workdir / "model", tokenizer, dtype=dtype)
    dataset = longtail_dataset(workdir / "longtail.jsonl", args.samples) if args.dataset == "longtail" else DATASET
    config = TrainerConfig.model_validate(job_config(model_dir, dataset, workdir, args, VARIANTS[args.arch]))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    print(f"device: {device}; model: tiny {args.arch}, {args.method}; data: {args.dataset}; "
          f"{args.steps} steps per side", flush=True)  # fmt: skip

    started = time.monotonic()
    baseline_tps, batch_size, padded_share = run_baseline(model_dir, dataset, workdir, args, config)
    print(f"baseline (padded, {batch_size} samples per batch, {padded_share:.1%} real tokens): "
          f"{baseline_tps:,.0f} real tokens/s", flush=True)  # fmt: skip
    result = train.main(config)
    ours_tps = result.tokens_per_second or 0.0
    packing = _packing_efficiency(model_dir, dataset, config)
    print(f"ours (packed rows of {args.sequence_length}, {packing:.1%} real tokens): {ours_tps:,.0f} real tokens/s")
    speedup = ours_tps / baseline_tps if baseline_tps else 0.0
    verdict = "meets" if speedup >= GOAL else "misses"
    print(f"speedup {speedup:.2f}x ({verdict} the goal of {GOAL}x); wall {time.monotonic() - started:.0f} s")
    print(
        f"RESULT speedup_vs_baseline={speedup:.3f} ours_tokens_per_s={ours_tps:.1f} "
        f"baseline_tokens_per_s={baseline_tps:.1f} packing_efficiency={packing:.3f} "
        f"baseline_real_token_share={padded_share:.3f} baseline_batch_size={batch_size} "
        f"dataset={args.dataset} arch={args.arch} method={args.method} steps={args.steps} "
        f"device={device.replace(' ', '_')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

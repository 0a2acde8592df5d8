"""Real tokens per second of the glmops trainer (packed rows) against the best a TRL/transformers user gets.

    .venv/bin/python bench/trainer_throughput.py [--arch glm4_moe_lite] [--method qlora] [--steps 30]

Every side trains the same tiny GLM-4.7-architecture model (same LoRA targets, same optimizer and
learning rate, the same 4-bit base from `load_base_model`) on the same data, rendered with the
official chat template and masked alike (loss on assistant turns only), for the same number of
optimizer steps. The sides take turns: `--rounds` rounds, each running every side once, each run in
a fresh interpreter (no allocator state or model left over from the run before), the order rotated
from round to round, so that a busy moment of the machine does not always fall on the same side;
each side's figure is the median of its rounds. The data (`--dataset`):

- `longtail` (default): agentic sessions of very different lengths, as real tool-use data has
  (a few long sessions, many short ones): each sample chains k conversations of
  tests/data/datasets/agentic_small.jsonl into one multi-turn session, k drawn from a geometric
  distribution (seeded), 1 <= k <= 8.
- `fixture`: the 27 conversations of agentic_small.jsonl as they are (lengths 120-390 tokens).

The sides:

- ours: `glmops_trainer.train.main(config)`, the real recipe: samples packed into rows of
  `--sequence-length` tokens, position_ids restarting per sample, attention per sample. Its time
  includes the recipe's own work inside training (checkpoint at the last step, progress).
- `trl_packed`: TRL's `SFTTrainer` with `packing=True` (best-fit-decreasing packing, padding-free
  rows with position_ids) and `max_length` = the same row length. transformers 5 turns position_ids
  of packed rows into a per-sample mask, so no sample attends to another (no leak); TRL's own
  padding-free path is what a user gets by setting `packing=True`.
- `grouped_padded`: transformers' `Trainer` with `train_sampling_strategy="group_by_length"` (batches of samples of
  similar length) and `DataCollatorForSeq2Seq(padding="longest")`: the best padded setting. Its
  micro-batch holds as many samples as fit a packed row on average, so it processes about the same
  real tokens per step.

Tokens per second count real tokens only (attention_mask for the padded side, the rows' tokens for
the packed ones), from the first to the last step. The baseline is the faster of the two
TRL/transformers sides (by median); goal: speedup_vs_baseline (our median over the baseline's)
>= 1.3 on the long-tail set; `speedup_per_round` shows each round's own ratio. The last line reads
`RESULT key=value ...` and names the baseline's settings.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
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


def _unpacked_samples(model_dir: Path, dataset: Path, config: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The tokenizer and the rendered, masked samples one by one (what both baselines train on)."""
    from transformers import AutoTokenizer

    from glmops_trainer.data import prepare_dataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    unpacked = config.data.model_copy(update={"packing": False})
    data = prepare_dataset(dataset, unpacked, tokenizer, config.training.sequence_length, config.training.seed)
    samples = [dict(data.train[i]) for i in range(len(data.train))]  # type: ignore[arg-type]
    return tokenizer, samples


def _lora_model(model_dir: Path, config: Any) -> Any:
    from glmops_trainer.model.load import load_base_model
    from glmops_trainer.model.targets import apply_lora
    from glmops_trainer.train import compute_dtype

    base_model = load_base_model(
        model_dir, config.model.variant, config.training.method,
        gradient_checkpointing=False, compute_dtype=compute_dtype(config),
    )  # fmt: skip
    return apply_lora(base_model, config.training.lora, config.model.variant)


def _common_arguments(workdir: Path, name: str, args: argparse.Namespace, config: Any) -> dict[str, Any]:
    import torch

    from glmops_trainer.train import compute_dtype

    return {
        "output_dir": str(workdir / name),
        "gradient_accumulation_steps": 1,
        "max_steps": args.steps,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "constant",
        "optim": "adamw_torch",
        "seed": config.training.seed,
        "bf16": compute_dtype(config) == torch.bfloat16,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not torch.cuda.is_available(),
    }


def _timed(trainer: Any) -> float:
    """Train and return real tokens/s between the first and the last step (our progress callback's figure)."""
    from transformers.trainer_callback import PrinterCallback

    from glmops_trainer.progress import ProgressCallback, ProgressReporter

    progress = ProgressCallback(ProgressReporter(3600, None, io.StringIO()))
    trainer.add_callback(progress)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    assert progress.last_event is not None and progress.last_event.tokens_per_second is not None
    return float(progress.last_event.tokens_per_second)


def run_grouped_padded(
    model_dir: Path, dataset: Path, workdir: Path, args: argparse.Namespace, config: Any
) -> tuple[float, int, float]:
    """transformers' Trainer on length-grouped padded batches; returns (tokens/s, batch size, real-token share)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer, samples = _unpacked_samples(model_dir, dataset, config)
    mean_length = sum(len(s["input_ids"]) for s in samples) / len(samples)
    packed_real_tokens = config.training.sequence_length * _packing_efficiency(model_dir, dataset, config)
    batch_size = max(1, round(packed_real_tokens / mean_length))
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    training_args = TrainingArguments(
        **_common_arguments(workdir, "grouped", args, config),
        per_device_train_batch_size=batch_size,
        train_sampling_strategy="group_by_length",
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=_lora_model(model_dir, config), args=training_args, train_dataset=samples,
        data_collator=collator, processing_class=tokenizer,
    )  # fmt: skip
    # the share of real tokens in the batches the grouped sampler forms
    batches = [collator([samples[i] for i in group]) for group in _chunks(list(trainer._get_train_sampler()), batch_size)]
    real_share = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["input_ids"].numel() for b in batches)
    return _timed(trainer), batch_size, real_share


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_trl_packed(model_dir: Path, dataset: Path, workdir: Path, args: argparse.Namespace, config: Any) -> float:
    """TRL's SFTTrainer with packing (best-fit decreasing, padding-free); returns real tokens/s."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from glmops_trainer.train import count_real_tokens

    tokenizer, samples = _unpacked_samples(model_dir, dataset, config)
    # pre-tokenized with our labels (assistant turns only): TRL keeps a given labels column as it is
    rows = Dataset.from_list([{"input_ids": list(s["input_ids"]), "labels": list(s["labels"])} for s in samples])
    sft_args = SFTConfig(
        **_common_arguments(workdir, "trl", args, config),
        per_device_train_batch_size=1,
        packing=True,
        packing_strategy="bfd",
        max_length=config.training.sequence_length,
        dataset_num_proc=None,
    )

    class CountingSFTTrainer(SFTTrainer):  # type: ignore[misc]
        """Counts the rows' real tokens (padding-free rows carry no attention_mask for Trainer to count)."""

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.state.num_input_tokens_seen += int(count_real_tokens(inputs, tokenizer.pad_token_id))
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = CountingSFTTrainer(
        model=_lora_model(model_dir, config), args=sft_args, train_dataset=rows, processing_class=tokenizer
    )
    return _timed(trainer)


def run_ours(config: Any, workdir: Path) -> float:
    """The glmops trainer's own run (`train.main`), from scratch; returns real tokens/s."""
    from glmops_trainer import train

    shutil.rmtree(workdir / "ours", ignore_errors=True)  # else the run resumes from the last round's checkpoint
    result = train.main(config)
    return float(result.tokens_per_second or 0.0)


SIDES = ["grouped_padded", "trl_packed", "ours"]


def run_side(
    name: str, model_dir: Path, dataset: Path, workdir: Path, args: argparse.Namespace, config: Any
) -> dict[str, Any]:
    """One run of side `name`: its real tokens/s (and, for the padded side, its batch size and real-token share)."""
    if name == "grouped_padded":
        tokens_per_s, batch_size, real_share = run_grouped_padded(model_dir, dataset, workdir, args, config)
        return {"tokens_per_s": tokens_per_s, "batch_size": batch_size, "real_share": real_share}
    if name == "trl_packed":
        return {"tokens_per_s": run_trl_packed(model_dir, dataset, workdir, args, config)}
    return {"tokens_per_s": run_ours(config, workdir)}


def _run_side_process(name: str, workdir: Path, argv: list[str]) -> dict[str, Any]:
    """Run one side in a fresh interpreter (no allocator state or leftover model from the runs before it)."""
    # argparse keeps the last --workdir: this one overrides any the caller gave
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--workdir", str(workdir), "--side", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SIDE ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"side {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1].removeprefix("SIDE ")))


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
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps on each side, per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every side, in rotated order")
    parser.add_argument("--dataset", choices=["longtail", "fixture"], default="longtail")
    parser.add_argument("--samples", type=int, default=64, help="sessions of the longtail dataset")
    parser.add_argument("--sequence-length", type=int, default=2048, help="packed row length (ours)")
    parser.add_argument("--workdir", type=Path, help="where to build the model (default: a temporary directory)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one run of one side, in its own process
    args = parser.parse_args(argv)

    import torch

    from glmops_trainer.config import TrainerConfig
    from glmops_trainer.tiny.models import build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trainer-throughput-"))
    model_dir = workdir / "model"
    dataset = workdir / "longtail.jsonl" if args.dataset == "longtail" else DATASET
    if args.side:
        config = TrainerConfig.model_validate(job_config(model_dir, dataset, workdir, args, VARIANTS[args.arch]))
        print("SIDE " + json.dumps(run_side(args.side, model_dir, dataset, workdir, args, config)))
        return 0

    tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    build_tiny_model(args.arch, model_dir, tokenizer, dtype=dtype)
    if args.dataset == "longtail":
        longtail_dataset(dataset, args.samples)
    config = TrainerConfig.model_validate(job_config(model_dir, dataset, workdir, args, VARIANTS[args.arch]))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    print(f"device: {device}; model: tiny {args.arch}, {args.method}; data: {args.dataset}; "
          f"{args.steps} steps per side and round, {args.rounds} rounds, each run in its own process", flush=True)  # fmt: skip

    passed_on = [*(argv if argv is not None else sys.argv[1:])]
    runs: dict[str, list[float]] = {name: [] for name in SIDES}
    details: dict[str, Any] = {}
    started = time.monotonic()
    for round_index in range(args.rounds):
        shift = round_index % len(SIDES)
        for name in SIDES[shift:] + SIDES[:shift]:
            outcome = _run_side_process(name, workdir, passed_on)
            runs[name].append(float(outcome["tokens_per_s"]))
            details.update({k: v for k, v in outcome.items() if k != "tokens_per_s"})
            print(f"round {round_index + 1}/{args.rounds} {name}: {runs[name][-1]:,.0f} real tokens/s", flush=True)

    batch_size, real_share = details["batch_size"], details["real_share"]
    grouped_tps, trl_tps, ours_tps = (statistics.median(runs[name]) for name in ("grouped_padded", "trl_packed", "ours"))
    packing = _packing_efficiency(model_dir, dataset, config)
    print(f"grouped_padded (transformers Trainer, train_sampling_strategy=group_by_length, {batch_size} samples per batch, "
          f"{real_share:.1%} real tokens): median {grouped_tps:,.0f} real tokens/s")  # fmt: skip
    print(f"trl_packed (TRL SFTTrainer, packing=bfd, padding-free, max_length {args.sequence_length}): "
          f"median {trl_tps:,.0f} real tokens/s")  # fmt: skip
    print(f"ours (packed rows of {args.sequence_length}, {packing:.1%} real tokens): median {ours_tps:,.0f} real tokens/s")
    baseline, baseline_tps = max((("trl_packed", trl_tps), ("grouped_padded", grouped_tps)), key=lambda kv: kv[1])
    speedup = ours_tps / baseline_tps if baseline_tps else 0.0
    per_round = [ours / base if base else 0.0 for ours, base in zip(runs["ours"], runs[baseline], strict=True)]
    verdict = "meets" if speedup >= GOAL else "misses"
    print(f"speedup {speedup:.2f}x over {baseline} ({verdict} the goal of {GOAL}x); per round "
          f"{', '.join(f'{r:.2f}' for r in per_round)}; wall {time.monotonic() - started:.0f} s")  # fmt: skip
    baseline_settings = (
        "trl_sft_packing_bfd_padding_free_bs1" if baseline == "trl_packed" else f"trainer_group_by_length_padded_bs{batch_size}"
    )
    print(
        f"RESULT speedup_vs_baseline={speedup:.3f} baseline={baseline} baseline_settings={baseline_settings} "
        f"ours_tokens_per_s={ours_tps:.1f} baseline_tokens_per_s={baseline_tps:.1f} "
        f"trl_packed_tokens_per_s={trl_tps:.1f} grouped_padded_tokens_per_s={grouped_tps:.1f} "
        f"speedup_per_round={'/'.join(f'{r:.3f}' for r in per_round)} rounds={args.rounds} "
        f"grouped_real_token_share={real_share:.3f} grouped_batch_size={batch_size} packing_efficiency={packing:.3f} "
        f"dataset={args.dataset} arch={args.arch} method={args.method} steps={args.steps} "
        f"device={device.replace(' ', '_')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

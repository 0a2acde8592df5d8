"""The training recipe: one config in, a trained LoRA adapter (and its artifacts) out.

    python -m glmops_trainer train --config /etc/glmops/job.json

`main(config)` reads top to bottom: resolve the sources, load the tokenizer, prepare the data
(validated before any model is loaded, so a bad dataset fails in seconds), load the base model
(NF4 for QLoRA), attach LoRA, train with transformers' `Trainer` on packed rows, save the adapter,
draw the loss curve and write the result. The pod then ends and frees its GPUs: merged weights and
GGUF files are the export's work (`python -m glmops_trainer export`, its own CPU-only Job under the
operator). Output layout under `output.destination`:

    checkpoints/checkpoint-<step>/   resumable checkpoints (COMPLETE marker written last)
    adapter/                         the trained LoRA adapter (peft format) and the tokenizer
    progress.jsonl                   every progress event, across restarts
    loss_curve.png                   train/eval loss against the step
    result.json                      the final result (also written to runtime.result_file)
    merged/, gguf/, artifacts.json   from the export, afterwards

Under torchrun every rank runs this same function; only rank 0 serves and writes progress,
checkpoint markers, the plot and the result. How the ranks share the model is
`glmops.plan.memory.sharding_for` (the memory plan asks the same function): the flagship on
several ranks is sharded with FSDP2 (`glmops_trainer.model.sharded`), everything else trains one
replica per rank (DDP).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    SchedulerType,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_callback import ProgressCallback as TqdmCallback

from glmops.contract.config import POD_IP_ENV
from glmops.plan.memory import Sharding, sharding_for
from glmops_trainer.checkpoints import (
    CheckpointMarkerCallback,
    find_resumable_checkpoint,
    remove_unusable_checkpoints,
)
from glmops_trainer.config import TrainerConfig
from glmops_trainer.data import DataValidationError, PreparedData, prepare_dataset
from glmops_trainer.locations import ADAPTER_DIR, MODEL_CACHE_DIR, LocationError, local_location
from glmops_trainer.model.chunked_loss import use_chunked_loss
from glmops_trainer.model.load import ArchitectureError, load_base_model
from glmops_trainer.model.sharded import load_sharded_model
from glmops_trainer.model.sharded_state import (
    load_sharded_adapter,
    load_sharded_optimizer,
    save_sharded_adapter,
    save_sharded_optimizer,
)
from glmops_trainer.model.sources import ModelSourceError, parse_model_source, resolve_model_source
from glmops_trainer.model.targets import LoraTargetError, apply_lora
from glmops_trainer.packed_attention import register_packed_attention
from glmops_trainer.plot import plot_loss_curve
from glmops_trainer.progress import (
    MetricsServer,
    ProgressCallback,
    ProgressReporter,
    TrainResult,
    read_loss_history,
    write_result,
)

log = logging.getLogger("glmops_trainer")

CHECKPOINTS_DIR = "checkpoints"
PROGRESS_FILE = "progress.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
__all__ = ["ADAPTER_DIR", "MODEL_CACHE_DIR", "local_location", "main"]


class ConfigError(ValueError):
    """A config value the schema accepts but this run cannot use; the message names the field and the fix."""


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    LocationError,
    ValidationError,
    DataValidationError,
    ModelSourceError,
    ArchitectureError,
    LoraTargetError,
)
"""Failures the user fixes in the FineTuneJob or the data (exit code 2)."""


def failure_reason(exc: BaseException) -> str:
    """`DataError` for problems in the dataset, `ConfigError` for the other user errors."""
    return "DataError" if isinstance(exc, DataValidationError) else "ConfigError"


# ---- where things are -------------------------------------------------------------------------


def is_main_process() -> bool:
    """True on global rank 0 (and in a plain single-process run)."""
    return int(os.environ.get("RANK", "0")) == 0


def local_output_dir(config: TrainerConfig) -> Path | None:
    """The local output folder of `config`, or None when the destination is not a local location."""
    try:
        return local_location(config.output.destination, config.runtime.pvc_mount_root, "output.destination")
    except LocationError:
        return None


@dataclass(frozen=True)
class Sources:
    """Local places of everything the run reads and writes."""

    model_dir: Path
    data_file: Path
    output_dir: Path


def resolve_sources(config: TrainerConfig) -> Sources:
    """Turn the config's URIs into local paths, fetching a remote model once (rank 0 first)."""
    output_dir = local_location(config.output.destination, config.runtime.pvc_mount_root, "output.destination")
    data_file = local_location(config.data.source, config.runtime.pvc_mount_root, "dataset.source")
    if not data_file.is_file():
        raise ConfigError(f"dataset.source: {config.data.source!r} is not a file (looked at {data_file}); check the path")
    parse_model_source(config.model.source, "model.source")
    from accelerate import PartialState  # type: ignore[import-untyped]

    # Under torchrun only one process downloads; the others then find the files in the cache.
    with PartialState().main_process_first():
        model_dir = resolve_model_source(
            config.model.source,
            pvc_mount_root=config.runtime.pvc_mount_root,
            cache_dir=output_dir / MODEL_CACHE_DIR,
            hf_token_env=config.runtime.hf_token_env,
            field="model.source",
        )
    return Sources(model_dir=model_dir, data_file=data_file, output_dir=output_dir)


def check_semantics(config: TrainerConfig) -> None:
    """Reject config values the schema cannot check (scheduler names)."""
    try:
        SchedulerType(config.training.lr_scheduler)
    except ValueError:
        names = ", ".join(s.value for s in SchedulerType)
        raise ConfigError(
            f"training.lr_scheduler: {config.training.lr_scheduler!r} is not a transformers scheduler; use one of {names}"
        ) from None


# ---- tokens ------------------------------------------------------------------------------------


def count_real_tokens(batch: dict[str, torch.Tensor], pad_token_id: int | None) -> torch.Tensor:
    """Tokens of a batch that are not padding (a 0-d tensor on the batch's device).

    Padded batches carry an attention_mask. Packed rows carry none (it would switch off
    transformers' packed-sequence masking); their padding is the row's last position_ids
    segment when that segment starts with the pad token, since every real sample starts with
    `[gMASK]`.
    """
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    input_ids = batch["input_ids"]
    total = torch.tensor(input_ids.numel(), device=input_ids.device)
    if "position_ids" not in batch or pad_token_id is None:
        return total
    positions = batch["position_ids"].expand_as(input_ids)
    length = input_ids.shape[-1]
    index = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    last_start = torch.where(positions == 0, index, torch.zeros_like(index)).max(dim=-1).values
    starts_with_pad = input_ids.gather(-1, last_start.unsqueeze(-1)).squeeze(-1) == pad_token_id
    padding = torch.where(starts_with_pad, length - last_start, torch.zeros_like(last_start))
    return total - padding.sum()


class PackedTrainer(Trainer):
    """transformers' Trainer that counts real (non-padding) tokens into `state.num_input_tokens_seen`.

    Trainer's own counter uses the pad token id when there is no attention_mask, which miscounts
    packed rows whose samples end with the eos token that also serves as pad.

    For a model sharded with FSDP2 at load time (`is_distributed_loading_by_transformers`, which
    keeps Trainer from wrapping it in DDP) it also saves and restores the adapter and optimizer
    through collectives that gather only the LoRA state, and on a GPU moves the checkpointed layer
    inputs to host memory as they are saved (`offload_layer_inputs`, as the memory plan assumes).
    """

    def __init__(
        self, *args: Any, pad_token_id: int | None, offload_layer_inputs: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._pad_token_id = pad_token_id
        self._pending_tokens: torch.Tensor | None = None
        self._offload_layer_inputs = offload_layer_inputs

    @property
    def _sharded(self) -> bool:
        return bool(getattr(self, "is_distributed_loading_by_transformers", False))

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        # Kept on the device and summed over ranks only when logging: no extra sync per micro-batch.
        count = count_real_tokens(inputs, self._pad_token_id).detach().to(self.args.device, torch.int64)
        self._pending_tokens = count if self._pending_tokens is None else self._pending_tokens + count
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        with _saved_activations_on_host(self._offload_layer_inputs and model.training):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every rank logs at the same steps, so the gather below is a matched collective.
        if self._pending_tokens is not None:
            total = self.accelerator.gather(self._pending_tokens.reshape(1)).sum().item()
            self.state.num_input_tokens_seen += int(total)
            self._pending_tokens = None
        super().log(logs, start_time)

    # -- FSDP-sharded model: only the LoRA state is gathered, saved and restored --

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self) -> Iterator[None]:
        # Trainer would skip the reduce-scatter until the last micro-batch of an accumulation window; every
        # rank would then hold its LoRA gradients whole (12 GiB with LoRA on the flagship's routed experts).
        # Reducing after every micro-batch keeps them sharded, as the memory plan counts them.
        yield


    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self._sharded:
            super().save_model(output_dir, _internal_call)
            return
        target = Path(output_dir or self.args.output_dir)
        if self.args.should_save:
            target.mkdir(parents=True, exist_ok=True)
        save_sharded_adapter(self.model, target)
        if self.args.should_save and self.processing_class is not None:
            self.processing_class.save_pretrained(str(target))

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # adapter (save_model above) and trainer state
        if not self._sharded:
            return
        # save_only_model is set for sharded models (Trainer cannot save their optimizer); do it here
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        output_dir = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        save_sharded_optimizer(self.model, self.optimizer, output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), output_dir / "scheduler.pt")
        self._save_rng_state(str(output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if not self._sharded:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        load_sharded_adapter(model or self.model, Path(resume_from_checkpoint))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self._sharded or checkpoint is None:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        load_sharded_optimizer(self.model, self.optimizer, Path(checkpoint))
        scheduler = Path(checkpoint) / "scheduler.pt"
        if scheduler.is_file():
            self.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))


@contextlib.contextmanager
def _saved_activations_on_host(enabled: bool) -> Iterator[None]:
    """Move tensors autograd saves during the forward to pinned host memory (they come back for backward).

    With non-reentrant gradient checkpointing what autograd saves is essentially each decoder layer's
    input, so the GPU holds a couple of hidden states instead of one per layer.
    """
    if not enabled:
        yield
        return
    with torch.autograd.graph.save_on_cpu(pin_memory=True):
        yield


# ---- the recipe --------------------------------------------------------------------------------


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The base model's own tokenizer (with its chat template), from the model folder."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"model.source: the tokenizer in {model_dir} has no chat template; use a GLM-4.7 checkpoint with its "
            "tokenizer_config.json or chat_template.jinja"
        )
    return tokenizer


def compute_dtype(config: TrainerConfig) -> torch.dtype:
    """bf16 when asked for and the GPU supports it; float32 otherwise (CPU bf16 matmuls are slow)."""
    if config.training.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def keep_4bit_layers_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during evaluation; returns layers changed.

    On CPUs with AVX512-BF16, `Linear4bit` repacks its weight into an inference-only layout on its
    first no-grad forward in eval mode and keeps it, so the training steps after the first
    evaluation would run an inference kernel (wrong gradients; under DDP an in-place error).
    """
    from bitsandbytes.nn.modules import Linear4bit

    changed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def use_packed_attention(model: Any) -> str:
    """Switch sdpa/eager attention to per-sample attention for packed rows; flash attention stays (it is varlen)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = str(base.config._attn_implementation)
    if current.startswith("flash_attention"):
        return current
    name = register_packed_attention()
    base.set_attn_implementation(name)
    return name


def training_arguments(
    config: TrainerConfig, checkpoints_dir: Path, has_eval: bool, sharded: bool = False
) -> TrainingArguments:
    """transformers' TrainingArguments for this config: steps-based logging, checkpoints and evaluation.

    `sharded`: the model was sharded with FSDP2 at load time; Trainer then saves only the model and
    PackedTrainer saves the optimizer itself.
    """
    t = config.training
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=t.weight_decay,
        optim="adamw_torch",
        seed=t.seed,
        data_seed=t.seed,
        bf16=compute_dtype(config) == torch.bfloat16,
        # load_base_model already switched it on (non-reentrant, as peft needs); Trainer must not redo it.
        activation_checkpointing=False,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=t.checkpoint_every,
        # Rotation is CheckpointMarkerCallback's: Trainer's would delete before the new one is marked.
        save_total_limit=None,
        save_only_model=sharded,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.checkpoint_every if has_eval else None,
        label_names=["labels"],
        prediction_loss_only=True,  # evaluation reports the loss; keeping every eval logit would cost memory
        remove_unused_columns=False,  # the packed rows carry position_ids, which the peft wrapper hides
        include_num_input_tokens_seen="no",  # counted by PackedTrainer
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )


def world_size() -> int:
    """Processes of this run (torchrun's WORLD_SIZE; 1 for a plain `python` run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def model_placement(config: TrainerConfig) -> Sharding:
    """How this run places the model over its processes: "fsdp" (sharded) or "replicate" (one copy per rank).

    The operator's memory plan asks the same function with the GPUs it gives the job, so the plan in
    status describes what the trainer does.
    """
    return sharding_for(config.model.variant.value, world_size())


def training_device() -> torch.device:
    """This process's GPU (torchrun's LOCAL_RANK), or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_model_for_training(config: TrainerConfig, model_dir: Path, sharding: Sharding) -> Any:
    """The base model with fresh LoRA adapters, placed as `sharding` says ("fsdp" or "replicate")."""
    log.info("model placement: %s over %d process(es)", sharding, world_size())
    if sharding == "fsdp":
        model = load_sharded_model(
            model_dir,
            config.model.variant,
            config.training.method,
            config.training.lora,
            device=training_device(),
            compute_dtype=compute_dtype(config),
            gradient_checkpointing=config.training.gradient_checkpointing,
            seed=config.training.seed,
        )
        # Trainer must neither wrap this model in DDP nor move it: it owns its placement and gradient reduction.
        model.is_distributed_loading_by_transformers = True
        return model
    base_model = load_base_model(
        model_dir,
        config.model.variant,
        config.training.method,
        gradient_checkpointing=config.training.gradient_checkpointing,
        compute_dtype=compute_dtype(config),
    )
    use_chunked_loss(base_model)
    return apply_lora(base_model, config.training.lora, config.model.variant)


def save_adapter(trainer: Trainer, adapter_dir: Path) -> Path:
    """Save the adapter (and tokenizer) under a temporary name, then move it into place."""
    staging = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.save_model(str(staging))  # every rank calls it; only rank 0 writes (FSDP gathers first)
    if trainer.is_world_process_zero():
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        staging.rename(adapter_dir)
    return adapter_dir


def model_file_sizes(model_dir: Path) -> tuple[int, int]:
    """Total and largest size in bytes of a model's weight files (the export Job is sized from them)."""
    sizes = [p.stat().st_size for p in model_dir.glob("*.safetensors")]
    return sum(sizes), max(sizes, default=0)


def directory_bytes(path: Path) -> int:
    """Bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_progress_endpoint(config: TrainerConfig) -> MetricsServer | None:
    """The progress endpoint on the pod's IP (rank 0 only; none when the config sets no port)."""
    if not config.runtime.metrics_port or not is_main_process():
        return None
    address = os.environ.get(POD_IP_ENV) or "127.0.0.1"
    server = MetricsServer(address, config.runtime.metrics_port, config.job.name, config.job.namespace, config.job.uid)
    return server if server.start() else None


def main(config: TrainerConfig) -> TrainResult:
    """Fine-tune the model of `config` on its dataset and write adapter, artifacts and result."""
    started = time.monotonic()
    main_process = is_main_process()
    check_semantics(config)

    # 1. Where everything is.
    sources = resolve_sources(config)
    out = sources.output_dir
    checkpoints_dir = out / CHECKPOINTS_DIR
    if main_process:
        out.mkdir(parents=True, exist_ok=True)

    # 2. Tokenizer, then the data: a bad dataset fails here, before minutes of model loading.
    tokenizer = load_tokenizer(sources.model_dir)
    data: PreparedData = prepare_dataset(
        sources.data_file, config.data, tokenizer, config.training.sequence_length, config.training.seed
    )
    log.info("data: %s", data.stats.describe())
    if data.report.invalid:
        log.warning("skipping %d invalid samples:\n%s", data.report.invalid, data.report.format())

    # 3. Model and LoRA: one replica per rank, or (flagship on several ranks) sharded with FSDP2.
    set_seed(config.training.seed)
    sharding = model_placement(config)
    model = load_model_for_training(config, sources.model_dir, sharding)
    keep_4bit_layers_trainable(model)
    if config.data.packing:
        log.info("attention over packed rows: %s", use_packed_attention(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %s with %d trainable LoRA parameters", config.training.method.value, trainable)

    # 4. Resume from the newest complete checkpoint, if any.
    resume = find_resumable_checkpoint(checkpoints_dir, config.job.uid)
    if main_process:
        for removed in remove_unusable_checkpoints(checkpoints_dir, resume):
            log.warning("removed unusable checkpoint %s", removed)
    if resume is not None:
        log.info("resuming from %s (step %d)", resume.path, resume.step)

    # 5. Train, serving progress at /metrics on the pod's IP.
    endpoint = start_progress_endpoint(config)
    reporter = ProgressReporter(
        config.runtime.progress_interval_seconds, out / PROGRESS_FILE if main_process else None, metrics=endpoint
    )
    progress = ProgressCallback(reporter)
    trainer = PackedTrainer(
        model=model,
        args=training_arguments(config, checkpoints_dir, has_eval=data.eval is not None, sharded=sharding == "fsdp"),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=[CheckpointMarkerCallback(config.training.keep_checkpoints, config.job.uid), progress],
        pad_token_id=tokenizer.pad_token_id,
        offload_layer_inputs=sharding == "fsdp" and torch.cuda.is_available(),
    )
    # The progress lines replace Trainer's printed dicts and tqdm bars in the pod log.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(TqdmCallback)
    trainer.train(resume_from_checkpoint=str(resume.path) if resume is not None else None)

    # 6. Adapter, loss curve, result. The export runs afterwards, in its own CPU-only pod.
    adapter_dir = save_adapter(trainer, out / ADAPTER_DIR)
    final = progress.last_event
    model_bytes, largest_shard_bytes = model_file_sizes(sources.model_dir)
    result = TrainResult(
        status="Succeeded",
        step=trainer.state.global_step,
        total_steps=trainer.state.max_steps,
        train_loss=final.loss if final else None,
        eval_loss=final.eval_loss if final else None,
        tokens_per_second=final.tokens_per_second if final else None,
        resumed_from_step=resume.step if resume is not None else None,
        output_uri=config.output.destination,
        artifacts={"adapter": _join_uri(config.output.destination, ADAPTER_DIR)},
        model_bytes=model_bytes,
        largest_shard_bytes=largest_shard_bytes,
    )
    if not main_process:
        return result
    result.adapter_bytes = directory_bytes(adapter_dir)
    history = read_loss_history(out / PROGRESS_FILE)
    if history.train:
        plot_loss_curve(history, out / LOSS_CURVE_FILE, title=config.job.name)
        result.artifacts["lossCurve"] = _join_uri(config.output.destination, LOSS_CURVE_FILE)
    result.runtime_seconds = time.monotonic() - started
    write_result(result, Path(config.runtime.result_file), out)
    if endpoint is not None:
        endpoint.stop()
    return result


def _join_uri(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative

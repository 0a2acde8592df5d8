"""Command line of the trainer image.

Run:

    python -m glmops_trainer train --config /etc/glmops/job.json
    torchrun --nproc_per_node=8 -m glmops_trainer train --config /etc/glmops/job.json
    python -m glmops_trainer export --config /etc/glmops/job.json
    python -m glmops_trainer generate --config /etc/glmops/generate.json   (SyntheticDataset; no torch)

Exit codes: 0 success; 2 the config or the data is wrong (the message names the field or
file:line and the fix); 1 any other failure. Each subcommand is one entry of `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXPORT_RESULT_FILE = "export-result.json"


@dataclass(frozen=True)
class Subcommand:
    """One `python -m glmops_trainer NAME` command: its help, its arguments and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def describe_validation_error(exc: Any, source: str) -> str:
    """A pydantic ValidationError as one `SOURCE: field.path: message (got value)` line per problem."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        got = f" (got {error['input']!r})" if error["type"] != "missing" and "input" in error else ""
        lines.append(f"{source}: {field}: {error['msg']}{got}")
    return "\n".join(lines)


def _configure_logging() -> None:
    # The pod log is for people; progress lines (GLMOPS_PROGRESS ...) are for the operator.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _is_main_process() -> bool:
    # torchrun sets RANK; a plain `python -m` run is the only process.
    return os.environ.get("RANK", "0") == "0"


def _result_file_of_invalid_config(config_path: Path, default: str) -> Path:
    """`runtime.result_file` of a config that failed validation, when it can still be read; else `default`."""
    try:
        value = json.loads(config_path.read_text(encoding="utf-8"))["runtime"]["result_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return Path(default)
    return Path(value) if isinstance(value, str) and value else Path(default)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="trainer config JSON (TrainerConfig)")


def _run_train(args: argparse.Namespace) -> int:
    """Validate the config, run the recipe, and map failures to exit codes and a result."""
    from pydantic import ValidationError

    from glmops_trainer.config import RuntimeConfig, TrainerConfig
    from glmops_trainer.progress import TrainResult, write_result

    _configure_logging()
    config_path: Path = args.config
    try:
        config = TrainerConfig.from_file(config_path)
    except (OSError, ValueError) as exc:  # ValidationError is a ValueError
        if isinstance(exc, ValidationError):
            message = describe_validation_error(exc, str(config_path))
        elif isinstance(exc, OSError):
            message = f"{config_path}: {exc.strerror or exc}"
        else:
            message = str(exc)  # from_file already names the file and line
        print(f"glmops-trainer: config error: {message}", file=sys.stderr)
        if _is_main_process():
            result = TrainResult(status="Failed", reason="ConfigError", message=message)
            write_result(result, _result_file_of_invalid_config(config_path, RuntimeConfig().result_file), None)
        return EXIT_USER_ERROR

    from glmops_trainer import train
    from glmops_trainer.staging import staged
    from glmops_trainer.storage import StorageError

    try:
        # Remote (s3://, hf://) locations are staged in local folders around the recipe.
        with staged(config) as run:
            result = run.publish(train.main(run.config))
    except StorageError as exc:
        message = str(exc)
        # A missing object or refused access is the spec's to fix; a network failure may pass.
        reason = "StorageError" if exc.transient else "ConfigError"
        print(f"glmops-trainer: {reason}: {message}", file=sys.stderr)
        code = EXIT_FAILURE if exc.transient else EXIT_USER_ERROR
    except train.USER_ERRORS as exc:
        message = str(exc)
        reason = train.failure_reason(exc)
        print(f"glmops-trainer: {reason}: {message}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report, then exit non-zero
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        reason = "TrainingError"
        code = EXIT_FAILURE
    else:
        return EXIT_OK if result.status == "Succeeded" else EXIT_FAILURE
    if _is_main_process():
        failed = TrainResult(status="Failed", reason=reason, message=message)
        write_result(failed, Path(config.runtime.result_file), train.local_output_dir(config))
    return code


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="trainer config JSON (TrainerConfig)")
    parser.add_argument(
        "--adapter", type=Path, default=None,
        help="adapter folder to export (default: OUTPUT/adapter, else the newest complete checkpoint)",
    )


def _run_export(args: argparse.Namespace) -> int:
    """Export a trained adapter as the config's output formats; prints the manifest's location.

    The result (artifacts, or why it failed) goes to `runtime.result_file`, the export pod's
    termination message, where the operator reads it, and to `<out>/export-result.json`. An
    s3:// output is staged in a local mirror (the adapter comes down first); its result is
    written only after the artifacts and the manifest are uploaded.
    """
    from glmops_trainer.config import RuntimeConfig, TrainerConfig
    from glmops_trainer.export.pipeline import artifact_summary, run_export
    from glmops_trainer.locations import local_location
    from glmops_trainer.progress import TrainResult, write_result
    from glmops_trainer.staging import staged
    from glmops_trainer.storage import StorageError

    _configure_logging()
    result_file = Path(RuntimeConfig().result_file)
    out: Path | None = None
    try:
        config = TrainerConfig.from_file(args.config)
        result_file = Path(config.runtime.result_file)
        with staged(config, dataset=False) as run:
            local = run.config
            out = local_location(local.output.destination, local.runtime.pvc_mount_root, "output.destination")
            manifest = run_export(local, args.adapter)
            result = TrainResult(
                status="Succeeded",
                output_uri=local.output.destination,
                artifacts=artifact_summary(manifest, local.output.destination),
            )
            if run.output is None:
                write_result(result, result_file, out, file_name=EXPORT_RESULT_FILE)
            else:
                run.publish(result)  # uploads, then writes the result with the bucket's URIs
    except StorageError as exc:
        # A missing object or refused access is the spec's to fix; a network failure may pass.
        reason = "StorageError" if exc.transient else "ConfigError"
        code = EXIT_FAILURE if exc.transient else EXIT_USER_ERROR
        message = str(exc)
        print(f"glmops-trainer: export error: {message}", file=sys.stderr)
    except ValueError as exc:  # config, adapter and base-model errors name the file and the fix
        print(f"glmops-trainer: export error: {exc}", file=sys.stderr)
        reason, code, message = "ConfigError", EXIT_USER_ERROR, str(exc)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report, then exit non-zero
        traceback.print_exc()
        reason, code, message = "ExportError", EXIT_FAILURE, f"{type(exc).__name__}: {exc}"
    else:
        print(f"exported {len(manifest['artifacts'])} files; manifest: {config.output.destination.rstrip('/')}/artifacts.json")
        return EXIT_OK
    write_result(TrainResult(status="Failed", reason=reason, message=message), result_file, out, file_name=EXPORT_RESULT_FILE)
    return code


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="generator config JSON (GeneratorConfig)")


def _run_generate(args: argparse.Namespace) -> int:
    """Generate a SyntheticDataset; the result goes to the termination message and OUTPUT.work/result.json.

    Exit 0 when the output is written, 2 when no new pod could do better (the result's reason is
    one of TERMINAL_REASONS), 1 otherwise (the Job replaces the pod, which continues the journal).
    """
    import signal
    import threading

    from pydantic import ValidationError

    from glmops.contract.synthetic import TERMINAL_REASONS, GeneratorConfig, GeneratorResult, ResultReason
    from glmops_trainer.generate.run import generate, run_paths

    _configure_logging()
    result_file = Path("/dev/termination-log")
    work: Path | None = None
    try:
        config = GeneratorConfig.from_file(args.config)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            message = describe_validation_error(exc, str(args.config))
        else:
            message = f"{args.config}: {getattr(exc, 'strerror', None) or exc}"
        result = GeneratorResult(status="Failed", reason=ResultReason.config_error.value, message=message)
        result_file = _result_file_of_invalid_config(args.config, str(result_file))
    else:
        result_file = Path(config.runtime.result_file)
        stopping = threading.Event()
        # A deleted pod gets SIGTERM: finish the requests in flight into the journal, then stop.
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
        result = generate(config, stopping=stopping)
        try:
            work = run_paths(config).work
        except Exception:  # noqa: BLE001 - a config whose paths are wrong already failed with that message
            work = None
    if result.status == "Succeeded":
        print(f"wrote {result.samples_kept} samples to {result.output_uri} (sha256 {result.sha256})")
    else:
        print(f"glmops-generator: {result.reason}: {result.message}", file=sys.stderr)
    if work is not None and work.is_dir():
        (work / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    if result_file.exists() or result_file.parent != Path("/dev"):
        try:
            result_file.write_text(result.to_message(), encoding="utf-8")
        except OSError as exc:
            print(f"glmops-generator: cannot write result file {result_file}: {exc}", file=sys.stderr)
    if result.status == "Succeeded":
        return EXIT_OK
    return EXIT_USER_ERROR if result.reason in TERMINAL_REASONS else EXIT_FAILURE


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("fine-tune a model as described by a config file", _train_arguments, _run_train),
    "export": Subcommand("export a trained adapter (merged, GGUF, quantized)", _export_arguments, _run_export),
    "generate": Subcommand("generate a SyntheticDataset with a teacher model", _generate_arguments, _run_generate),
}
"""Subcommands by name; a new one is one more entry (its imports belong inside its `run`)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per entry of SUBCOMMANDS."""
    parser = argparse.ArgumentParser(prog="python -m glmops_trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in SUBCOMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())

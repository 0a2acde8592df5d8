"""`python -m glmops_trainer train`: exit 2 with the field or file:line for the user's mistakes, 1 for the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from train_support import (
    AGENTIC_DATASET,
    build_model,
    build_tokenizer,
    job_config,
    run_trainer,
    write_config,
)

from glmops_trainer.__main__ import EXIT_FAILURE, EXIT_USER_ERROR, main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return build_model("glm4_moe", root / "model", build_tokenizer(root / "tokenizer"))


@pytest.fixture(scope="module")
def broken_model_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weights replaced by garbage: loading it fails, reading its tokenizer works."""
    broken = tmp_path_factory.mktemp("broken") / "model"
    broken.mkdir()
    for item in model_dir.iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    return broken


def run(tmp_path: Path, config: dict[str, Any] | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict[str, Any]]:
    """Run `train` in this process; returns exit code, stderr and the result written to the result file."""
    path = tmp_path / "job.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    code = main(["train", "--config", str(path)])
    result_file = tmp_path / "termination-log"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return code, capsys.readouterr().err, result


def bad_dataset(path: Path, broken_lines: dict[int, str]) -> Path:
    """The agentic dataset with some lines (1-based) replaced."""
    lines = AGENTIC_DATASET.read_text().splitlines()
    for number, text in broken_lines.items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_value_out_of_range_names_the_field(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = job_config(tmp_path, model_dir, "flagship", training={"learning_rate": 5})

    code, err, result = run(tmp_path, config, capsys)

    assert code == EXIT_USER_ERROR
    assert f"{tmp_path / 'job.json'}: training.learning_rate: Input should be less than or equal to 1 (got 5)" in err
    assert result["status"] == "Failed" and result["reason"] == "ConfigError"
    assert "training.learning_rate" in result["message"]


def test_an_unknown_key_names_the_field(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = job_config(tmp_path, model_dir, "flagship")
    config["training"]["learning_rat"] = 1e-4

    code, err, _ = run(tmp_path, config, capsys)

    assert code == EXIT_USER_ERROR
    assert "training.learning_rat: Extra inputs are not permitted" in err


def test_invalid_json_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = run(tmp_path, '{\n  "job": {"name": "x"},\n  "model": ,\n}', capsys)

    assert code == EXIT_USER_ERROR
    assert f"{tmp_path / 'job.json'}:3: not valid JSON" in err


def test_a_missing_config_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(tmp_path / "nope.json")])

    assert code == EXIT_USER_ERROR
    assert "nope.json" in capsys.readouterr().err


def test_an_unknown_scheduler_is_rejected_before_anything_loads(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = job_config(tmp_path, model_dir, "flagship", training={"lr_scheduler": "cosine_with_magic"})

    code, err, result = run(tmp_path, config, capsys)

    assert code == EXIT_USER_ERROR
    assert "training.lr_scheduler: 'cosine_with_magic' is not a transformers scheduler" in err
    assert result["reason"] == "ConfigError"


def test_a_missing_model_names_the_source_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = job_config(tmp_path, tmp_path / "no-model", "flagship")

    code, err, _ = run(tmp_path, config, capsys)

    assert code == EXIT_USER_ERROR
    assert "model.source:" in err and "does not exist" in err


def test_an_unreachable_s3_output_fails_before_training_with_the_field(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("GLMOPS_OUTPUT_AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("GLMOPS_OUTPUT_AWS_SECRET_ACCESS_KEY", "do-not-print")
    monkeypatch.setenv("GLMOPS_OUTPUT_AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("GLMOPS_STAGING_DIR", str(tmp_path / "staging"))
    config = job_config(tmp_path, model_dir, "flagship", output={"destination": "s3://bucket/out"})

    code, err, result = run(tmp_path, config, capsys)

    # A store that does not answer may answer later: a failure the Job retries, not a spec error.
    assert code == EXIT_FAILURE and result["reason"] == "StorageError"
    assert result["message"].startswith("output.destination: listing s3://bucket/out failed")
    assert "do-not-print" not in err + json.dumps(result)
    assert not list((tmp_path / "staging" / "output").glob("*/checkpoints"))  # nothing ran


def test_bad_data_fails_with_file_and_line_before_the_model_is_loaded(
    tmp_path: Path, broken_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = bad_dataset(tmp_path / "bad.jsonl", {3: '{"messages": [', 7: '{"messages": [{"role": "robot", "content": "hi"}]}'})
    config = job_config(tmp_path, broken_model_dir, "flagship", dataset=dataset)

    code, err, result = run(tmp_path, config, capsys)

    # The weights are garbage, so reaching the model would have failed differently (exit 1).
    assert code == EXIT_USER_ERROR, err
    assert "bad.jsonl:3:" in err and "bad.jsonl:7:" in err
    assert "maxErrorFraction" in err
    assert result["reason"] == "DataError" and "bad.jsonl:3:" in result["message"]
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == result


def test_a_variant_that_does_not_match_the_checkpoint_names_the_field(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = job_config(tmp_path, model_dir, "flash")  # the checkpoint is the flagship architecture

    code, err, _ = run(tmp_path, config, capsys)

    assert code == EXIT_USER_ERROR
    assert "spec.model.variant" in err and "'flagship'" in err


def test_a_failure_that_is_not_the_users_exits_1_with_the_error_in_the_result(
    tmp_path: Path, broken_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = job_config(tmp_path, broken_model_dir, "flagship")

    code, err, result = run(tmp_path, config, capsys)

    assert code == EXIT_FAILURE
    assert result["status"] == "Failed" and result["reason"] == "TrainingError" and result["message"]
    assert "Traceback" in err


@pytest.mark.slow
def test_the_module_entry_point_exits_2_for_bad_data(tmp_path: Path, model_dir: Path) -> None:
    dataset = bad_dataset(tmp_path / "bad.jsonl", {5: "not json at all"})
    config = job_config(tmp_path, model_dir, "flagship", dataset=dataset, data={"max_error_fraction": 0.0})

    finished = run_trainer(write_config(tmp_path / "job.json", config))

    assert finished.returncode == EXIT_USER_ERROR, finished.stderr[-2000:]
    assert "bad.jsonl:5:" in finished.stderr
    assert json.loads((tmp_path / "termination-log").read_text())["reason"] == "DataError"


def test_real_tokens_of_packed_and_padded_batches(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from glmops_trainer.config import DataConfig
    from glmops_trainer.data import prepare_dataset
    from glmops_trainer.data.collate import PaddingCollator
    from glmops_trainer.train import count_real_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = DataConfig(source="file:///unused", validation_split=0.0)
    data = prepare_dataset(AGENTIC_DATASET, config, tokenizer, 1024, seed=0)
    rows = [data.train[i] for i in range(len(data.train))]  # type: ignore[arg-type]
    packed = data.collator(rows)

    assert int(count_real_tokens(packed, tokenizer.pad_token_id)) == data.stats.train_tokens
    assert int(count_real_tokens(packed, tokenizer.pad_token_id)) < packed["input_ids"].numel()

    # A text sample ends with <|endoftext|>, the pad token too: it still counts as real.
    eos = tokenizer.pad_token_id
    row = {"input_ids": torch.tensor([[1, 2, eos, 3, eos, eos, eos, eos]]),
           "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])}  # fmt: skip
    assert int(count_real_tokens(row, eos)) == 5

    padded = PaddingCollator(eos)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [5], "labels": [5]}])
    assert int(count_real_tokens(padded, eos)) == 4

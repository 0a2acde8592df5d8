"""The export recipe publishes adapter and merged weights atomically, and survives being killed midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinyexport import build_base, make_adapter

from glmops_trainer.config import TrainerConfig
from glmops_trainer.export import export_after_training, run_export
from glmops_trainer.export.publish import JOURNAL_NAME, MANIFEST_NAME, TMP_MARKER, read_manifest
from glmops_trainer.fsutil import sha256_file


def _config(
    base: Path, out: Path, formats: list[str], quantizations: list[str] | None = None
) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "job": {"name": "tiny", "namespace": "ml", "uid": "u-1"},
            "model": {"source": f"file://{base}", "variant": "flagship"},
            "data": {"source": "file:///data/train.jsonl"},
            "output": {
                "destination": f"file://{out}",
                "formats": formats,
                "quantizations": quantizations or [],
            },
        }
    )


def _check_manifest_matches_files(out: Path) -> dict[str, object]:
    manifest = read_manifest(out)
    assert manifest is not None
    for item in manifest["artifacts"]:
        path = out / item["path"]
        assert path.is_file(), item
        assert path.stat().st_size == item["sizeBytes"]
        assert sha256_file(path) == item["sha256"], item["path"]
        assert item["uri"] == f"file://{out}/{item['path']}"
    return manifest


def test_adapter_and_merged_are_published_with_a_manifest(
    bf16_base: Path, bf16_adapter: Path, arch: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    manifest = export_after_training(_config(bf16_base, out, ["adapter", "merged"]), bf16_adapter, out)

    assert manifest == _check_manifest_matches_files(out)
    formats = {item["path"]: item["format"] for item in manifest["artifacts"]}
    assert formats["adapter/adapter_model.safetensors"] == "adapter"
    assert formats["adapter/glmops-adapter.json"] == "adapter"
    assert formats["merged/config.json"] == "merged"
    assert sum(1 for f in formats.values() if f == "merged") == len(list((out / "merged").iterdir()))
    assert all(item["baseModel"] == f"file://{bf16_base}" for item in manifest["artifacts"])
    adapter_manifest = json.loads((out / "adapter" / "glmops-adapter.json").read_text())
    assert adapter_manifest["fusedExpertLora"] is True and adapter_manifest["vllmLoadable"] is True
    assert "--enable-mixed-moe-lora-format" in adapter_manifest["vllmNote"]
    assert adapter_manifest["targetGroups"] == ["attention", "experts"]
    # the merged entry: the folder, its size, and the MTP layers it kept (the flagship's tiny base has one)
    merged_files = [item for item in manifest["artifacts"] if item["format"] == "merged"]
    assert manifest["merged"] == {
        "path": "merged",
        "uri": f"file://{out}/merged",
        "sizeBytes": sum(item["sizeBytes"] for item in merged_files),
        "mtpLayers": 1 if arch == "glm4_moe" else 0,
    }
    assert (
        adapter_manifest["architecture"]
        == json.loads((bf16_base / "config.json").read_text())["architectures"][0]
    )
    assert not list(out.rglob(f"*{TMP_MARKER}*"))
    assert not (out / ".export-work").exists()


def test_adapter_without_routed_experts_needs_no_3d_lora_format(
    bf16_base: Path, arch: str, tmp_path: Path
) -> None:
    adapter = make_adapter(bf16_base, tmp_path / "adapter", arch, experts=False)
    out = tmp_path / "out"
    export_after_training(_config(bf16_base, out, ["adapter"]), adapter, out)
    manifest = json.loads((out / "adapter" / "glmops-adapter.json").read_text())
    assert manifest["fusedExpertLora"] is False and manifest["targetGroups"] == ["attention"]
    assert "--enable-mixed-moe-lora-format" not in manifest["vllmNote"]
    assert not (out / "merged").exists()
    assert "merged" not in (read_manifest(out) or {})


def test_export_cli_reports_a_bad_adapter_with_exit_code_2(bf16_base: Path, tmp_path: Path) -> None:
    config_path = tmp_path / "job.json"
    config_path.write_text(_config(bf16_base, tmp_path / "out", ["merged"]).model_dump_json())
    (tmp_path / "empty").mkdir()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmops_trainer",
            "export",
            "--config",
            str(config_path),
            "--adapter",
            str(tmp_path / "empty"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "empty/adapter_config.json: no adapter config" in completed.stderr
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


KILL_POINTS = [
    pytest.param(["adapter", "merged"], [], "", id="after-first-file", marks=pytest.mark.slow),
    pytest.param(
        ["adapter", "merged", "gguf"],
        ["Q4_K_M", "Q8_0"],
        "gguf/",
        id="after-first-gguf",
        marks=[pytest.mark.slow, pytest.mark.llamacpp],
    ),
]


@pytest.mark.parametrize(("formats", "quantizations", "kill_after_prefix"), KILL_POINTS)
def test_an_export_killed_midway_is_finished_by_the_next_run(
    formats: list[str], quantizations: list[str], kill_after_prefix: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    base = build_base("glm4_moe", tmp_path / "base", tokenizer_dir, num_shards=8)
    adapter = make_adapter(base, tmp_path / "adapter", "glm4_moe")
    out = tmp_path / "out"
    config = _config(base, out, formats, quantizations)
    config_path = tmp_path / "job.json"
    config_path.write_text(config.model_dump_json())

    # SIGKILL the exporting process as soon as the journal shows the first finished file whose path
    # starts with `kill_after_prefix` (the first file of all, or the first quantized GGUF).
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "glmops_trainer",
            "export",
            "--config",
            str(config_path),
            "--adapter",
            str(adapter),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        lines = journal.read_text().splitlines() if journal.is_file() else []
        if any(
            json.loads(line)["path"].startswith(kill_after_prefix) for line in lines if line.endswith("}")
        ):
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    assert not (out / MANIFEST_NAME).exists()
    finished_before = [json.loads(line)["path"] for line in journal.read_text().splitlines()]
    stats_before = {p: (out / p).stat() for p in finished_before if not p.startswith(".export-work/")}

    manifest = run_export(config, adapter)

    assert read_manifest(out) == manifest == _check_manifest_matches_files(out)
    assert not list(out.rglob(f"*{TMP_MARKER}*"))
    listed = {item["path"] for item in manifest["artifacts"]}
    assert set(stats_before) <= listed
    assert len(listed) > len(stats_before)
    for path, before in stats_before.items():  # finished files were verified and kept, not rewritten
        after = (out / path).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path
    # Every requested artifact is there: all merged shards and one GGUF + Modelfile per quantization.
    assert sorted(p.name for p in out.glob("merged/*.safetensors")) == sorted(
        p.name for p in base.glob("*.safetensors")
    )
    for quantization in quantizations:
        assert {f"gguf/{quantization}/tiny-{quantization}.gguf", f"gguf/{quantization}/Modelfile"} <= listed
    assert not (out / ".export-work").exists()


@pytest.mark.slow
@pytest.mark.llamacpp
def test_gguf_without_merged_publishes_no_merged_weights(
    bf16_base: Path, bf16_adapter: Path, arch: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    manifest = export_after_training(_config(bf16_base, out, ["gguf"], ["Q4_K_M"]), bf16_adapter, out)

    _check_manifest_matches_files(out)
    assert sorted(item["path"] for item in manifest["artifacts"]) == [
        "gguf/Q4_K_M/Modelfile",
        "gguf/Q4_K_M/tiny-Q4_K_M.gguf",
    ]
    assert not (out / "merged").exists() and not (out / ".export-work").exists()
    # The work files (merged weights, full-precision GGUF) are deleted and forgotten by the journal.
    journal = [json.loads(line)["path"] for line in (out / JOURNAL_NAME).read_text().splitlines()]
    assert sorted(journal) == ["gguf/Q4_K_M/Modelfile", "gguf/Q4_K_M/tiny-Q4_K_M.gguf"]

"""`python -m glmops_trainer export` with an s3:// output: the adapter comes from the bucket, the artifacts go back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from s3server import S3Server

from glmops_trainer.__main__ import EXIT_OK, main
from glmops_trainer.config import LoraConfig, LoraTarget, Variant
from glmops_trainer.model.targets import apply_lora
from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_export_restores_the_adapter_from_the_bucket_and_publishes_there(
    output_env: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer(tmp_path / "tokenizer")
    model_dir = build_tiny_model(
        "glm4_moe_lite", tmp_path / "model", tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe_lite"]
    )
    adapter = tmp_path / "adapter"
    peft_model = apply_lora(
        AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
        LoraConfig(rank=4, targets=[LoraTarget.attention]),
        Variant.flash,
    )
    peft_model.save_pretrained(str(adapter))
    client = output_env.client()
    for path in adapter.iterdir():  # what the training pod published
        client.upload_file(str(path), bucket, f"runs/x/adapter/{path.name}")
    destination = f"s3://{bucket}/runs/x"
    config = {
        "job": {"name": "x", "uid": "uid-1"},
        "model": {"source": f"file://{model_dir}", "variant": "flash"},
        "data": {"source": "file:///unused.jsonl"},
        "output": {"destination": destination, "formats": ["adapter"]},
        "runtime": {"result_file": str(tmp_path / "termination-log")},
    }
    (tmp_path / "job.json").write_text(json.dumps(config))
    monkeypatch.setenv("GLMOPS_STAGING_DIR", str(tmp_path / "staging"))

    assert main(["export", "--config", str(tmp_path / "job.json")]) == EXIT_OK

    manifest = json.loads(client.get_object(Bucket=bucket, Key="runs/x/artifacts.json")["Body"].read())
    listed = {a["path"]: a for a in manifest["artifacts"]}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/glmops-adapter.json"} <= set(listed)
    for path, artifact in listed.items():
        assert artifact["uri"] == f"{destination}/{path}"
        head = client.head_object(Bucket=bucket, Key=f"runs/x/{path}")
        assert head["ContentLength"] == artifact["sizeBytes"]
        assert head["Metadata"]["sha256"] == artifact["sha256"]  # uploads carry the manifest's hash

"""hf:// datasets: fetched through huggingface_hub's own cache logic; with no Hub, a clear error before anything loads.

Nothing here talks to the Hub. The cached case lays out huggingface_hub's cache as a download
leaves it (refs/<branch> -> commit, snapshots/<commit>/<path>) and runs `hf_hub_download` for
real in offline mode; the unreachable case points the trainer at a closed loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from glmops_trainer import staging
from glmops_trainer.storage import HfLocation, StorageError, fetch_hf_file

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
URI = "hf://datasets/zai-org/agent-traces@v1/data/train.jsonl"
LINE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _cache(cache_dir: Path, repo_id: str, revision: str, path: str, content: str) -> None:
    """What a completed download leaves in huggingface_hub's cache."""
    repo = cache_dir / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / path
    target.parent.mkdir(parents=True)
    target.write_text(content)


def test_a_cached_dataset_file_is_found_without_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    root = tmp_path / "staging"
    _cache(root / "dataset" / staging._slot(URI) / "hf-cache", "zai-org/agent-traces", "v1", "data/train.jsonl", LINE)

    path = staging.fetch_dataset(URI, root)

    assert path.name == "train.jsonl" and path.read_text() == LINE  # file:line messages keep the file's name


def test_another_revision_or_path_is_not_taken_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _cache(tmp_path, "zai-org/agent-traces", "v1", "data/train.jsonl", LINE)
    for location in (
        HfLocation("zai-org/agent-traces", "data/train.jsonl", "v2"),
        HfLocation("zai-org/agent-traces", "data/eval.jsonl", "v1"),
    ):
        with pytest.raises(StorageError) as info:
            fetch_hf_file(location, tmp_path, token=None, field="dataset.source")
        assert "Hugging Face Hub is not reachable" in str(info.value) and location.uri in str(info.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_an_unreachable_hub_fails_the_run_first_naming_the_field(tmp_path: Path) -> None:
    """The trainer stages the dataset before it reads the model: the error is the dataset's, and final."""
    config = {
        "job": {"name": "hf-data", "uid": "uid-1"},
        "model": {"source": f"file://{tmp_path / 'no-model-here'}", "variant": "flash"},
        "data": {"source": URI},
        "output": {"destination": f"file://{tmp_path / 'out'}"},
        "runtime": {"result_file": str(tmp_path / "termination-log")},
    }
    (tmp_path / "job.json").write_text(json.dumps(config))
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
        HF_HUB_OFFLINE="0",
        HF_TOKEN="hf_never_printed",
        GLMOPS_STAGING_DIR=str(tmp_path / "staging"),
        CUDA_VISIBLE_DEVICES="",
    )
    done = subprocess.run(
        [sys.executable, "-m", "glmops_trainer", "train", "--config", str(tmp_path / "job.json")],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr[-2000:]
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["status"] == "Failed" and result["reason"] == "ConfigError"
    assert result["message"].startswith(f"dataset.source: {URI} cannot be fetched: the Hugging Face Hub is not reachable")
    assert "hf_never_printed" not in done.stderr + done.stdout + json.dumps(result)
    assert "model.source" not in done.stderr  # nothing got as far as the model

"""hf:// models: one download Job into a cache claim, which every replica then mounts read-only."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from serving_support import META, SETTINGS, facts, flag, ftj, plan, spec

from glmops.plan.serving import ARTIFACT_ANNOTATION
from glmops.plan.serving_download import HubModel, cache_names, download_state, parse_hub_uri, plan_download

GGUF = "hf://unsloth/GLM-4.7-Flash-GGUF@main/GLM-4.7-Flash-Q4_K_M.gguf"
HUB = spec(source={"fineTuneJob": None, "uri": GGUF, "variant": "flash"})


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("hf://zai-org/GLM-4.7-Flash", HubModel("zai-org/GLM-4.7-Flash")),
        ("hf://zai-org/GLM-4.7@v1.0", HubModel("zai-org/GLM-4.7", "v1.0")),
        (GGUF, HubModel("unsloth/GLM-4.7-Flash-GGUF", "main", "GLM-4.7-Flash-Q4_K_M.gguf")),
        ("hf://unsloth/GLM-4.7-GGUF/Q3_K_M/GLM-4.7-Q3_K_M-00001-of-00004.gguf", HubModel("unsloth/GLM-4.7-GGUF", None, "Q3_K_M/GLM-4.7-Q3_K_M-00001-of-00004.gguf")),
        # The Hub's forms of revisions with '/': a branch percent-encoded, a special ref as it is.
        ("hf://org/GGUF@release%2F2026-01/m-Q8_0.gguf", HubModel("org/GGUF", "release/2026-01", "m-Q8_0.gguf")),
        ("hf://org/GGUF@refs/pr/12/m-Q8_0.gguf", HubModel("org/GGUF", "refs/pr/12", "m-Q8_0.gguf")),
        ("hf://models/zai-org/GLM-4.7", HubModel("zai-org/GLM-4.7")),
    ],
)
def test_hub_uris_name_a_repository_revision_and_file(uri: str, parsed: HubModel) -> None:
    assert parse_hub_uri(uri) == parsed


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("hf://GLM-4.7", "names no repository"),
        ("hf://org/name@bad/../etc/passwd", "'..'"),
        ("hf://-org/name", "not a Hub repository id"),
        ("hf://org/name@a b", "revision 'a b'"),
        ("hf://org/GGUF/m-Q8_0.gguf@v2", "revision goes right after the name"),
        ("hf://datasets/org/traces", "a model is"),
    ],
)
def test_malformed_hub_uris_say_what_is_wrong(uri: str, hint: str) -> None:
    problem = parse_hub_uri(uri)
    assert isinstance(problem, str) and problem.startswith("spec.source.uri: ") and hint in problem, problem


def test_the_download_asks_for_the_decoded_revision() -> None:
    hub = parse_hub_uri("hf://org/GGUF@release%2F2026-01/m-Q8_0.gguf")
    assert isinstance(hub, HubModel)
    download = plan_download("coder", "ml", "uid", "hf://org/GGUF@release%2F2026-01/m-Q8_0.gguf", hub, 1e9, None, SETTINGS)
    command = download.objects[1]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["hf", "download", "org/GGUF", "m-Q8_0.gguf"]
    assert command[command.index("--revision") + 1] == "release/2026-01"


def test_a_hub_model_is_downloaded_once_and_waited_for() -> None:
    result = plan(HUB, facts())
    assert result.problems == () and result.objects == ()
    (wait,) = result.waits
    claim, job = cache_names("coder", GGUF)
    assert wait.reason == "ModelDownloading" and claim in wait.message and job in wait.message
    pvc, download = result.setup
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Q4_K_M Flash: about 18.5 GB of weights, with room to spare
    assert 18 <= int(pvc["spec"]["resources"]["requests"]["storage"].removesuffix("Gi")) <= 25
    container = download["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "hf", "download", "unsloth/GLM-4.7-Flash-GGUF", "GLM-4.7-Flash-Q4_K_M.gguf", "--local-dir", "/cache/model", "--revision", "main",
    ]  # fmt: skip
    assert container["image"] == SETTINGS.trainer_image and container["securityContext"]["readOnlyRootFilesystem"] is True
    for obj in (pvc, download):
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("ModelDeployment", META.uid)
        kubernetes_validate.validate(obj, "1.33", strict=True)


def test_the_token_comes_from_a_secret_by_reference() -> None:
    md = spec(source={"fineTuneJob": None, "uri": GGUF, "variant": "flash", "credentialsSecret": "hf-token"})
    result = plan(md, facts(secrets=frozenset({"hf-token"})))
    env = {e["name"]: e for e in result.setup[1]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}
    missing = plan(md, facts())
    assert [(m.reason, m.field) for m in missing.missing] == [("SecretNotFound", "spec.source.credentialsSecret")]


def test_a_failed_download_is_refused_with_the_jobs_message() -> None:
    _, job = cache_names("coder", GGUF)
    result = plan(HUB, facts(downloads={job: "failed: 401 Client Error: Repository Not Found"}))
    (problem,) = result.problems
    assert problem.reason == "ModelDownloadFailed" and "Repository Not Found" in problem.message
    assert "credentialsSecret" in problem.message and result.objects == ()


def test_once_downloaded_the_replicas_mount_the_cache_read_only() -> None:
    claim, job = cache_names("coder", GGUF)
    result = plan(HUB, facts(downloads={job: "succeeded"}))
    assert result.runnable
    found = {o["kind"]: o for o in result.objects}
    pod = found["Deployment"]["spec"]["template"]
    args = pod["spec"]["containers"][0]["args"]
    assert flag(args, "--model") == f"/mnt/pvc/{claim}/model/GLM-4.7-Flash-Q4_K_M.gguf"
    volume = next(v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    # what serves is named by where it came from
    assert json.loads(pod["metadata"]["annotations"][ARTIFACT_ANNOTATION])["uri"] == GGUF
    assert {"PersistentVolumeClaim", "Job", "Service", "Deployment"} == set(found)


def test_each_model_gets_its_own_cache() -> None:
    other = "hf://unsloth/GLM-4.7-Flash-GGUF/GLM-4.7-Flash-Q8_0.gguf"
    assert cache_names("coder", GGUF) != cache_names("coder", other)
    assert cache_names("coder", GGUF) == cache_names("coder", GGUF)
    assert all(len(n) <= 63 for n in cache_names("x" * 63, GGUF))


def test_an_adapter_trained_from_the_hub_serves_on_a_downloaded_base() -> None:
    md = spec(runtime="vllm", source={"artifact": "adapter"}, gpuMemoryGiB=75)
    base = "hf://zai-org/GLM-4.7-Flash"
    cluster = facts(ftj(base=base))
    waiting = plan(md, cluster)
    assert [w.reason for w in waiting.waits] == ["ModelDownloading"]
    command = waiting.setup[1]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["hf", "download", "zai-org/GLM-4.7-Flash", "--local-dir", "/cache/model"]
    claim, job = cache_names("coder", base)
    ready = plan(md, facts(ftj(base=base), downloads={job: "succeeded"}))
    args = {o["kind"]: o for o in ready.objects}["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--model") == f"/mnt/pvc/{claim}/model"
    assert json.loads(flag(args, "--lora-modules")) == {
        "name": "coder", "path": "/mnt/pvc/models/coder/adapter", "base_model_name": "coder-base", "is_3d_lora_weight": True,
    }  # fmt: skip


def test_download_state_reads_the_job() -> None:
    assert download_state(None) is None
    assert download_state({"status": {}}) == "running"
    assert download_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "succeeded"
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}}
    assert download_state(failed) == "failed: Job has reached the specified backoff limit"

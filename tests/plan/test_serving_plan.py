"""The Service and Deployment a ModelDeployment becomes: argv, probes, volumes, placement, rollout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from serving_support import META, SETTINGS, SHA, container, facts, flag, ftj, objects, plan, spec

from glmops.api.modeldeployment import ModelDeploymentSpec
from glmops.plan.serving import (
    ARTIFACT_ANNOTATION,
    DeploymentMeta,
    ServingFacts,
    endpoint,
    plan_serving,
    selector,
)
from glmops.plan.serving_runtime import owned_flag, vllm_lora_rank
from glmops.plan.serving_source import ServedAdapter
from glmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "serving"

# --- llama.cpp ------------------------------------------------------------------------------------


def test_llamacpp_gets_args_only_with_every_flag_glmops_owns() -> None:
    server = container(spec(contextLength=16384, parallelSlots=2))
    assert "command" not in server  # the image's entrypoint is llama-server
    args = server["args"]
    assert flag(args, "--model") == "/mnt/pvc/models/coder/gguf/Q4_K_M/coder-Q4_K_M.gguf"
    assert "--jinja" in args and "--metrics" in args
    # each slot gets the full context: llama.cpp divides --ctx-size between the slots
    assert flag(args, "--ctx-size") == str(16384 * 2) and flag(args, "--parallel") == "2"
    assert flag(args, "--alias") == "coder"
    assert flag(args, "--reasoning-format") == "deepseek"  # reasoning in reasoning_content
    assert flag(args, "--host") == "0.0.0.0" and flag(args, "--port") == "8080"
    assert flag(args, "--n-gpu-layers") == "999"
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_llamacpp_on_cpu_keeps_layers_in_memory_and_asks_for_host_memory() -> None:
    server = container(spec(gpusPerReplica=0))
    args = server["args"]
    assert flag(args, "--n-gpu-layers") == "0" and flag(args, "--threads") == "8"
    resources = server["resources"]
    assert "nvidia.com/gpu" not in resources["requests"]
    # Q4_K_M weights (18 GB) + 4 slots of 32K tokens of KV cache, in host memory
    assert int(resources["requests"]["memory"].removesuffix("Gi")) >= 30
    pod = objects(spec(gpusPerReplica=0))["Deployment"]["spec"]["template"]["spec"]
    assert "affinity" not in pod and "tolerations" not in pod


def test_gpu_layers_can_be_limited() -> None:
    assert flag(container(spec(gpuLayers=30))["args"], "--n-gpu-layers") == "30"


def test_extra_args_come_last_as_separate_entries() -> None:
    args = container(spec(extraArgs=["--flash-attn", "on", "--cache-type-k", "q8_0"]))["args"]
    assert args[-4:] == ["--flash-attn", "on", "--cache-type-k", "q8_0"]


# --- vLLM -----------------------------------------------------------------------------------------


def test_vllm_runs_the_openai_api_server_module_with_the_glm_parsers() -> None:
    server = container(spec(runtime="vllm", gpuMemoryGiB=75, gpusPerReplica=2))
    assert server["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = server["args"]
    assert flag(args, "--model") == "/mnt/pvc/models/coder/merged"
    assert flag(args, "--served-model-name") == "coder"
    assert flag(args, "--tensor-parallel-size") == "2"
    assert flag(args, "--tool-call-parser") == "glm47" and flag(args, "--reasoning-parser") == "glm45"
    assert "--enable-auto-tool-choice" in args and "--enable-expert-parallel" not in args
    assert flag(args, "--max-model-len") == "32768" and flag(args, "--max-num-seqs") == "8"
    assert flag(args, "--host") == "0.0.0.0" and flag(args, "--port") == "8080"
    assert "--speculative-config" not in args and "--enable-lora" not in args
    env = {e["name"]: e for e in server["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "1"  # a serving pod never downloads


def test_vllm_gets_shared_memory_sized_for_tensor_parallelism() -> None:
    def shm(gpus: int) -> str:
        pod = objects(spec(runtime="vllm", gpusPerReplica=gpus, gpuMemoryGiB=140))["Deployment"]["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert volume["emptyDir"]["medium"] == "Memory"
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dshm")
        assert mount["mountPath"] == "/dev/shm"
        return str(volume["emptyDir"]["sizeLimit"])

    assert shm(1) == "4Gi" and shm(4) == "16Gi"
    llama = objects(spec())["Deployment"]["spec"]["template"]["spec"]
    assert not [v for v in llama["volumes"] if v["name"] == "dshm"]


def _mtp_job(mtp_layers: int | None, name: str = "coder", size_bytes: int | None = 706_000_000_000) -> dict[str, Any]:
    """A Succeeded flagship job whose merged artifact recorded `mtp_layers` (None: not recorded)."""
    merged: dict[str, Any] = {"uri": f"pvc://models/{name}/merged"}
    if mtp_layers is not None:
        merged["mtpLayers"] = mtp_layers
    if size_bytes is not None:
        merged["sizeBytes"] = size_bytes
    return ftj(name, variant="flagship", base="pvc://models/glm-4.7", formats=("merged",), artifacts={"merged": merged})


VLLM_MERGED = {"runtime": "vllm", "gpuMemoryGiB": 140, "contextLength": 8192}


def test_mtp_is_on_by_default_when_the_merged_checkpoint_recorded_its_mtp_layer() -> None:
    result = plan(spec(**VLLM_MERGED), facts(_mtp_job(1)))
    expected = (
        "MTP speculative decoding on: FineTuneJob coder's merged checkpoint kept 1 MTP layer(s) (set "
        "speculativeDecoding: none to turn it off)"
    )
    assert result.mtp and [n for n in result.notes if "MTP" in n] == [expected]
    args = {o["kind"]: o for o in result.objects}["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(flag(args, "--speculative-config")) == {"method": "mtp", "num_speculative_tokens": 1}


def test_mtp_stays_off_without_a_recorded_mtp_layer_or_when_turned_off() -> None:
    for job, fields in (
        (_mtp_job(0), {}),  # the base had none
        (_mtp_job(None), {}),  # an export that did not record it
        (_mtp_job(1), {"speculativeDecoding": "none"}),  # turned off
    ):
        result = plan(spec(**VLLM_MERGED, **fields), facts(job))
        args = {o["kind"]: o for o in result.objects}["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert not result.mtp and "--speculative-config" not in args, (job["status"]["artifacts"], fields)
        assert not [n for n in result.notes if "MTP" in n]
    # llama.cpp has no MTP here, whatever the job recorded
    assert not plan(spec(), facts(ftj())).mtp


def test_mtp_asked_for_a_checkpoint_recorded_without_it_is_refused() -> None:
    result = plan(spec(**VLLM_MERGED, speculativeDecoding="mtp"), facts(_mtp_job(0)))
    assert [(p.reason, p.field) for p in result.problems] == [("MtpLayerMissing", "spec.speculativeDecoding")]
    assert "mtpLayers: 0" in result.problems[0].message and not result.objects


def test_mtp_asked_without_a_record_is_allowed_with_a_warning() -> None:
    md = spec(runtime="vllm", speculativeDecoding="mtp", gpuMemoryGiB=75)
    args = container(md)["args"]
    assert json.loads(flag(args, "--speculative-config")) == {"method": "mtp", "num_speculative_tokens": 1}
    assert any("nothing records whether" in note for note in plan(md).notes)
    mtp = plan(md).memory
    plain = plan(spec(runtime="vllm", gpuMemoryGiB=75)).memory
    assert mtp is not None and plain is not None and mtp.weights_gib > plain.weights_gib  # the MTP layer is loaded


def test_a_recorded_merged_size_sizes_the_replica() -> None:
    # The export records what it wrote: a small checkpoint needs one GPU, not the bf16 flagship's eight.
    small = plan(spec(**VLLM_MERGED), facts(_mtp_job(1, size_bytes=300_000_000)))
    assert small.memory is not None and small.placement is not None
    assert small.memory.weights_from == "the merged checkpoint's recorded size"
    assert round(small.memory.weights_gib * 2**30) == 300_000_000 and small.placement.gpus == 1
    unknown = plan(spec(**VLLM_MERGED), facts(_mtp_job(1, size_bytes=None)))
    assert unknown.memory is not None and unknown.placement is not None
    assert unknown.memory.weights_from == "bf16 weights with the MTP layer" and unknown.placement.gpus == 8


def test_vllm_startup_probe_waits_for_the_whole_load_of_the_recorded_checkpoint() -> None:
    # vLLM binds its port only once the model is loaded: the startup probe sees refused connections
    # for the whole load, so its budget must cover reading every byte plus vLLM's own start-up.
    result = plan(spec(**VLLM_MERGED), facts(_mtp_job(1, size_bytes=706_000_000_000)))
    deployment = {o["kind"]: o for o in result.objects}["Deployment"]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    budget = server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"]
    read_s = 706_000_000_000 / (SETTINGS.model_read_mib_per_second * 2**20)
    assert read_s + SETTINGS.vllm_startup_seconds <= budget <= read_s + SETTINGS.vllm_startup_seconds + 10
    assert server["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert deployment["spec"]["progressDeadlineSeconds"] > budget  # the rollout is not called stuck mid-load


def test_vllm_pods_send_no_usage_reports() -> None:
    env = {e["name"]: e.get("value") for e in container(spec(runtime="vllm", gpuMemoryGiB=75))["env"]}
    assert (env["VLLM_NO_USAGE_STATS"], env["DO_NOT_TRACK"], env["HF_HUB_OFFLINE"]) == ("1", "1", "1")


def test_adapters_of_several_jobs_are_lora_modules_on_one_base() -> None:
    jobs = [ftj(), ftj("b", targets=["attention", "shared_experts"]), ftj("c", targets=["attention"], rank=8)]
    md = spec(
        runtime="vllm",
        source={"artifact": "adapter"},
        adapters=[{"fineTuneJob": "b", "servedModelName": "team-b"}, {"fineTuneJob": "c", "servedModelName": "team-c"}],
        gpuMemoryGiB=75,
    )
    args = container(md, facts(*jobs))["args"]
    assert flag(args, "--model") == "/mnt/pvc/models/glm-4.7-flash" and flag(args, "--served-model-name") == "coder-base"
    start = args.index("--lora-modules") + 1
    # coder trained the routed experts (flash's default targets): peft's fused 3-D expert tensors
    assert [json.loads(entry) for entry in args[start : start + 3]] == [
        {"name": "coder", "path": "/mnt/pvc/models/coder/adapter", "base_model_name": "coder-base", "is_3d_lora_weight": True},
        {"name": "team-b", "path": "/mnt/pvc/models/b/adapter", "base_model_name": "coder-base"},
        {"name": "team-c", "path": "/mnt/pvc/models/c/adapter", "base_model_name": "coder-base"},
    ]
    assert "--enable-lora" in args and "--enable-mixed-moe-lora-format" in args and flag(args, "--max-loras") == "3"
    assert flag(args, "--max-lora-rank") == "16"  # the largest rank, routed experts included


def test_adapters_without_routed_experts_need_no_mixed_moe_format() -> None:
    md = spec(runtime="vllm", source={"artifact": "adapter"}, gpuMemoryGiB=75)
    args = container(md, facts(ftj(targets=["attention", "shared_experts"])))["args"]
    assert "--enable-lora" in args and "--enable-mixed-moe-lora-format" not in args
    assert "is_3d_lora_weight" not in flag(args, "--lora-modules")


def test_max_lora_rank_takes_the_next_value_vllm_accepts() -> None:
    def adapter(rank: int) -> ServedAdapter:
        return ServedAdapter("a", "pvc://m/a", "a", rank, ("attention",))

    assert vllm_lora_rank([adapter(16)]) == 16
    assert vllm_lora_rank([adapter(17), adapter(4)]) == 32
    assert vllm_lora_rank([adapter(300)]) == 320
    assert vllm_lora_rank([adapter(1024)]) is None


@pytest.mark.parametrize(
    ("argument", "runtime", "owned"),
    [
        ("--port", "llamacpp", "--port"),
        ("-c", "llamacpp", "-c"),
        ("--api-key-file", "llamacpp", "--api-key-file"),
        ("-hf", "llamacpp", "-hf"),
        ("--hf-token", "llamacpp", "--hf-token"),
        ("--gpt-oss-20b-default", "llamacpp", "--gpt-oss-20b-default"),  # a preset: another model, downloaded
        ("--fim-qwen-7b-spec", "llamacpp", "--fim-qwen-7b-spec"),
        ("--flash-attn", "llamacpp", None),
        ("on", "llamacpp", None),
        ("--max_model_len=4096", "vllm", "--max-model-len"),
        ("--speculative-config.method", "vllm", "--speculative-config"),
        ("--tensor-parallel", "vllm", "--tensor-parallel-size"),  # argparse accepts unambiguous prefixes
        ("-tp", "vllm", "-tp"),
        ("--spec-method", "vllm", "--spec-method"),  # a shorthand of --speculative-config
        ("--device-memory-utilization=0.5", "vllm", "--device-memory-utilization"),
        ("--no-enable-lora", "vllm", "--no-enable-lora"),
        ("--enable-mixed-moe-lora-format", "vllm", "--enable-mixed-moe-lora-format"),  # set with 3-D adapters
        ("--served-model-name=x", "vllm", "--served-model-name"),
        ("--config", "vllm", "--config"),
        ("--enable-prefix-caching", "vllm", None),
        ("--max-num-batched-tokens", "vllm", None),
        ("--enable-lora-bias", "vllm", None),
        ("-O3", "vllm", None),
    ],
)
def test_owned_flags_are_recognised_in_every_spelling_the_parser_takes(argument: str, runtime: str, owned: str | None) -> None:
    assert owned_flag(argument, runtime) == owned


# --- the pod --------------------------------------------------------------------------------------


def test_models_are_mounted_read_only_from_their_claim() -> None:
    pod = objects(spec())["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": "/mnt/pvc/models", "readOnly": True}
    assert not [c for c in pod["containers"] if c["name"] != "server"] and "initContainers" not in pod  # no download step


def test_adapters_on_several_claims_mount_each_once() -> None:
    jobs = [ftj(), ftj("b", destination="pvc://team-b/out", targets=["attention"])]
    md = spec(runtime="vllm", source={"artifact": "adapter"}, adapters=[{"fineTuneJob": "b", "servedModelName": "b"}], gpuMemoryGiB=75)
    pod = objects(md, facts(*jobs, pvcs=frozenset({"models", "team-b"})))["Deployment"]["spec"]["template"]["spec"]
    claims = sorted(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claims == ["models", "team-b"]


def test_file_uris_are_used_as_node_paths() -> None:
    md = spec(source={"fineTuneJob": None, "uri": "file:///srv/models/tiny-Q8_0.gguf", "variant": "flash"})
    server = container(md)
    assert flag(server["args"], "--model") == "/srv/models/tiny-Q8_0.gguf"
    pod = objects(md)["Deployment"]["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]


def test_probes_let_a_slow_load_finish_before_liveness_starts() -> None:
    def startup_budget_s(md: ModelDeploymentSpec) -> int:
        probe = container(md)["startupProbe"]
        return int(probe["periodSeconds"]) * int(probe["failureThreshold"])

    small = startup_budget_s(spec())
    big = startup_budget_s(spec(runtime="vllm", gpuMemoryGiB=75))
    # 18 GB at 200 MiB/s is ~90 s plus llama-server's start; merged bf16 (60 GB) plus vLLM's compile
    assert 140 <= small <= 200 and big > 600
    server = container(spec())
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[kind]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["livenessProbe"]["failureThreshold"] * server["livenessProbe"]["periodSeconds"] >= 60


def test_flagship_q4_k_m_is_placed_on_four_80gb_gpus() -> None:
    jobs = [ftj(variant="flagship", base="pvc://models/glm-4.7", quantizations=("Q4_K_M",), artifacts={"gguf": [
        {"quantization": "Q4_K_M", "uri": "pvc://models/coder/gguf/Q4_K_M/coder-Q4_K_M.gguf", "sizeBytes": 216_000_000_000, "sha256": SHA}
    ]})]
    result = plan(spec(), facts(*jobs))
    assert result.placement is not None and result.placement.gpus == 4
    pod = {o["kind"]: o for o in result.objects}["Deployment"]["spec"]["template"]["spec"]
    requests = pod["containers"][0]["resources"]["requests"]
    assert requests["nvidia.com/gpu"] == "4"
    expressions = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
    by_key = {e["key"]: e for e in expressions}
    assert by_key["nvidia.com/gpu.count"]["values"] == ["3"]  # Gt: at least 4
    assert int(by_key["nvidia.com/gpu.memory"]["values"][0]) + 1 == 75 * 1024  # the 80 GB class
    assert pod["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_pods_run_restricted_and_never_see_the_api() -> None:
    pod = objects(spec())["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = pod["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False


def test_the_api_key_comes_from_the_secret_by_reference() -> None:
    for runtime, variable in (("llamacpp", "LLAMA_API_KEY"), ("vllm", "VLLM_API_KEY")):
        server = container(spec(runtime=runtime, apiKeySecret="coder-api-key", gpuMemoryGiB=75))
        env = {e["name"]: e for e in server["env"]}
        assert env[variable] == {"name": variable, "valueFrom": {"secretKeyRef": {"name": "coder-api-key", "key": "api-key"}}}
        assert not any("api-key" in a for a in server["args"])


def test_placement_merges_the_users_selector_and_tolerations() -> None:
    md = spec(placement={"nodeSelector": {"pool": "serving"}, "tolerations": [{"key": "team", "operator": "Exists"}], "gpuProduct": "NVIDIA-H200"})
    pod = objects(md)["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "serving"}
    assert {"key": "team", "operator": "Exists"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H200"]} in terms["matchExpressions"]


# --- rollout, ownership, Service ------------------------------------------------------------------


def test_surge_brings_a_new_pod_up_before_an_old_one_goes() -> None:
    deployment = objects(spec(replicas=2))["Deployment"]
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert deployment["spec"]["replicas"] == 2


def test_recreate_stops_old_pods_first() -> None:
    assert objects(spec(strategy="Recreate"))["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}


def test_the_progress_deadline_outlasts_the_slowest_allowed_load() -> None:
    deployment = objects(spec())["Deployment"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert deployment["spec"]["progressDeadlineSeconds"] > probe["periodSeconds"] * probe["failureThreshold"]


def test_each_version_names_its_artifact_on_the_pod_template() -> None:
    q4 = objects(spec())["Deployment"]["spec"]["template"]
    q8 = objects(spec(source={"quantization": "Q8_0"}))["Deployment"]["spec"]["template"]
    assert json.loads(q4["metadata"]["annotations"][ARTIFACT_ANNOTATION]) == {
        "uri": "pvc://models/coder/gguf/Q4_K_M/coder-Q4_K_M.gguf",
        "sha256": SHA,
    }
    assert q4["metadata"]["annotations"] != q8["metadata"]["annotations"]
    # planning the same spec twice gives the same template: setting the source back reuses the old version
    assert objects(spec())["Deployment"]["spec"]["template"] == q4


def test_service_and_deployment_are_owned_and_select_the_pods() -> None:
    found = objects(spec())
    service, deployment = found["Service"], found["Deployment"]
    for obj in (service, deployment):
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("ModelDeployment", "coder", META.uid, True)
        assert obj["metadata"]["name"] == "coder" and obj["metadata"]["namespace"] == "ml"
    assert service["spec"]["selector"] == {"glmops.io/modeldeployment": "coder"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert deployment["spec"]["selector"] == {"matchLabels": {"glmops.io/modeldeployment": "coder"}}
    assert deployment["spec"]["template"]["metadata"]["labels"]["glmops.io/modeldeployment"] == "coder"
    assert endpoint(META, Settings()) == "http://coder.ml.svc:8000/v1"
    assert selector(META) == "glmops.io/modeldeployment=coder"


def test_ports_come_from_settings() -> None:
    settings = Settings(serving_container_port=18080, serving_service_port=9000)
    result = plan_serving(META, spec(), facts(ftj()), settings)
    found = {o["kind"]: o for o in result.objects}
    assert found["Service"]["spec"]["ports"][0]["port"] == 9000
    assert flag(found["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"], "--port") == "18080"


def test_objects_are_valid_kubernetes() -> None:
    for md in (spec(), spec(runtime="vllm", gpuMemoryGiB=75, apiKeySecret="coder-api-key"), spec(gpusPerReplica=0, strategy="Recreate")):
        for obj in objects(md).values():
            kubernetes_validate.validate(obj, "1.33", strict=True)


# --- golden files: a second line, read like the spec ----------------------------------------------


def _golden_cases() -> list[str]:
    return sorted(p.name.removesuffix(".input.yaml") for p in GOLDEN.glob("*.input.yaml"))


@pytest.mark.parametrize("case", _golden_cases())
def test_golden(case: str) -> None:
    raw: dict[str, Any] = yaml.safe_load((GOLDEN / f"{case}.input.yaml").read_text())
    jobs = {j["metadata"]["name"]: j for j in raw.get("fineTuneJobs", [])}
    md = raw["modelDeployment"]
    meta = DeploymentMeta(md["metadata"]["name"], md["metadata"]["namespace"], md["metadata"]["uid"], 1)
    cluster = ServingFacts(jobs=jobs, secrets=frozenset(raw.get("secrets", [])), pvcs=frozenset(raw.get("pvcs", [])), gpu_nodes=None)
    result = plan_serving(meta, ModelDeploymentSpec.model_validate(md["spec"]), cluster, Settings())
    assert result.runnable, result.problems
    rendered = yaml.safe_dump_all(list(result.objects), sort_keys=False)
    expected = GOLDEN / f"{case}.expected.yaml"
    if os.environ.get("GLMOPS_UPDATE_GOLDEN") == "1":
        expected.write_text(rendered)
    assert rendered == expected.read_text()


def test_every_example_plans_against_its_finished_job() -> None:
    """examples/ stay servable: each ModelDeployment plans cleanly once the example jobs succeed."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "examples").glob("*.yaml"))]
    jobs: dict[str, Any] = {}
    for doc in docs:
        if doc["kind"] != "FineTuneJob":
            continue
        out = doc["spec"]["output"]
        done = ftj(
            doc["metadata"]["name"],
            variant=doc["spec"]["model"]["variant"],
            base=doc["spec"]["model"]["source"],
            formats=tuple(out["formats"]),
            quantizations=tuple(out.get("quantizations", ["Q4_K_M"])),
            destination=out["destination"],
        )
        jobs[doc["metadata"]["name"]] = done
    deployments = [d for d in docs if d["kind"] == "ModelDeployment"]
    assert len(deployments) >= 3
    for doc in deployments:
        md = ModelDeploymentSpec.model_validate(doc["spec"])
        cluster = ServingFacts(jobs=jobs, secrets=frozenset({md.api_key_secret or ""}), pvcs=frozenset({"models"}), gpu_nodes=facts().gpu_nodes)
        result = plan(md, cluster, DeploymentMeta(doc["metadata"]["name"], "ml", "u"))
        assert result.runnable, (doc["metadata"]["name"], result.problems, result.waits, result.missing)

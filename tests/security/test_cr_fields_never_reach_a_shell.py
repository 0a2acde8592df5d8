"""No field of a FineTuneJob or ModelDeployment reaches a shell or turns into a flag of its own.

Containers are argv lists (no `sh -c`). The trainer and export read every field from their config
file, so their command lines never change with the spec. A serving pod's argv carries spec values
only as the value of the flag they belong to: names and URIs are validated so that none can start
with `-`, and extraArgs may not set the flags glmops owns. The kubelet expands `$(NAME)` in args
from the container's environment, which holds the API key: the planner writes every argument so
that the server receives exactly the text of the spec (the local cluster's expansion is the
kubelet's, character for character).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_outputs import MDEP_META, NODES, SETTINGS, job_spec, planner_outputs, succeeded_job
from pod_security import pod_spec_of
from pydantic import ValidationError

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.api.modeldeployment import ModelDeploymentSpec
from glmops.plan.finetune import ClusterFacts, JobMeta, plan_finetune
from glmops.plan.serving import ServingFacts, plan_serving
from glmops_dev.agent.env import expand_all

SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/env", "dash", "zsh"}
NASTY = st.text(alphabet=st.sampled_from(list("-$();|&`'\" \n*?~aZ09=./\\{}")), min_size=1, max_size=24) | st.sampled_from(
    ["--api-key", "-m", "$(LLAMA_API_KEY)", "a;rm -rf /", "$(VLLM_API_KEY)x", "x`id`", "--host=0.0.0.0", "$$(A)", "a$"]
)
KEY = "s3cret-api-key"


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec_of(obj)
    return [*(spec.get("initContainers") or []), *spec["containers"]]


def test_no_container_runs_a_shell() -> None:
    for name, obj in planner_outputs().items():
        if obj["kind"] not in ("Job", "Deployment"):
            continue
        for container in containers(obj):
            argv = [*(container.get("command") or []), *(container.get("args") or [])]
            assert argv and argv[0] not in SHELLS, (name, argv)
            assert "-c" not in argv[:2], (name, argv)


def mdep_pod(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The serving container for a spec, or None when validation or the planner refuses it."""
    try:
        spec = ModelDeploymentSpec.model_validate(raw)
    except ValidationError:
        return None
    facts = ServingFacts(jobs={"coder": succeeded_job()}, secrets=frozenset({"coder-api-key"}), pvcs=frozenset({"models"}), gpu_nodes=NODES)
    plan = plan_serving(MDEP_META, spec, facts, SETTINGS)
    if plan.problems or not plan.runnable:
        return None
    deployment = next(o for o in plan.objects if o["kind"] == "Deployment")
    return dict(containers(deployment)[0])


def seen_by_server(container: dict[str, Any]) -> list[str]:
    """The argv the server gets after the kubelet's $(NAME) expansion, with the API key in the env."""
    env = {e["name"]: KEY for e in container.get("env") or [] if "valueFrom" in e} | {
        e["name"]: e["value"] for e in container.get("env") or [] if "value" in e
    }
    return expand_all(list(container.get("args") or []), env)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NASTY, runtime=st.sampled_from(["llamacpp", "vllm"]))
def test_a_served_model_name_is_the_value_of_its_flag_or_refused(name: str, runtime: str) -> None:
    source = {"fineTuneJob": "coder", "artifact": "gguf" if runtime == "llamacpp" else "merged"}
    container = mdep_pod({"servedModelName": name, "runtime": runtime, "source": source, "apiKeySecret": "coder-api-key",
                          "gpuMemoryGiB": 75})
    if container is None:
        return
    argv = seen_by_server(container)
    flag = "--alias" if runtime == "llamacpp" else "--served-model-name"
    assert argv[argv.index(flag) + 1] == name and not name.startswith("-")
    assert KEY not in " ".join(argv)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.lists(NASTY, min_size=1, max_size=4), runtime=st.sampled_from(["llamacpp", "vllm"]))
def test_extra_args_reach_the_server_verbatim_never_expanding_the_key_or_setting_owned_flags(extra: list[str], runtime: str) -> None:
    source = {"fineTuneJob": "coder", "artifact": "gguf" if runtime == "llamacpp" else "merged"}
    container = mdep_pod({"servedModelName": "coder", "runtime": runtime, "source": source, "apiKeySecret": "coder-api-key",
                          "gpuMemoryGiB": 75, "extraArgs": extra})
    if container is None:
        return
    argv = seen_by_server(container)
    assert argv[-len(extra):] == extra  # after glmops' own flags, exactly as written
    assert KEY not in " ".join(argv)
    owned = {"--model", "--host", "--port", "--api-key", "--alias", "--served-model-name"}
    assert not owned & {a.split("=", 1)[0] for a in extra}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uri=NASTY.map(lambda s: f"hf://org/name{s}") | NASTY.map(lambda s: f"pvc://models/{s}") | NASTY.map(lambda s: f"hf://{s}/x"))
def test_a_model_uri_becomes_a_path_value_or_a_download_argument_never_a_flag(uri: str) -> None:
    try:
        spec = ModelDeploymentSpec.model_validate({"servedModelName": "coder", "source": {"uri": uri, "variant": "flash"}})
    except ValidationError:
        return
    facts = ServingFacts(jobs={}, secrets=frozenset(), pvcs=frozenset({"models"}), gpu_nodes=NODES)
    plan = plan_serving(MDEP_META, spec, facts, SETTINGS)
    for obj in [*plan.setup, *plan.objects]:
        if obj["kind"] not in ("Job", "Deployment"):
            continue
        for container in containers(obj):
            argv = [*(container.get("command") or []), *seen_by_server(container)]
            fixed_flags = {a for a in argv if a.startswith("-")}
            assert all(not a.startswith("-") or a in fixed_flags for a in argv)
            assert not any(a.startswith("-") and uri.split("/")[-1] == a for a in argv), argv


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data_path=NASTY, out_path=NASTY, name=NASTY)
def test_the_trainers_command_line_never_carries_a_spec_value(data_path: str, out_path: str, name: str) -> None:
    try:
        spec = FineTuneJobSpec.model_validate({
            **job_spec().model_dump(by_alias=True, exclude_none=True),
            "dataset": {"source": f"pvc://datasets/{data_path}"},
            "output": {"destination": f"pvc://models/{out_path}", "formats": ["adapter"]},
            "podTemplate": {"labels": {"team": name[:63]}},
        })
    except ValidationError:
        return
    facts = ClusterFacts(server_minor=30, secrets=frozenset({"hf-token"}), pvcs=frozenset({"models", "datasets"}), gpu_nodes=NODES)
    plan = plan_finetune(JobMeta("payments-coder", "ml", "0a1b2c3d-0000-4000-8000-000000000001", 1), spec, facts, SETTINGS)
    for obj in plan.objects:
        if obj["kind"] == "Job":
            (container,) = containers(obj)
            assert container["command"] == ["python", "-m", "glmops_trainer", "train", "--config", "/etc/glmops/job.json"]
            assert "args" not in container

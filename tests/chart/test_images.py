"""The two images, checked without a container engine: their Dockerfiles parsed and held to the code.

Dockerfile (operator): multi-stage, the project's wheel installed with the operator extra, no build
tools and no pip in the final stage, non-root, read-only-root friendly, its entrypoint the module
the chart runs. trainer_image/Dockerfile: CUDA base, the trainer's ML stack pinned to
pyproject.toml's versions, llama.cpp's converter and llama-quantize baked in from the pinned sdist
at the paths the trainer's code reads, non-root as the planner's pods ask. Files copied exist and
are not left out by .dockerignore; the node agent maps both images.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = ("gcc", "g++", "cmake", "make", "build-essential", "clang", "python3-pip", "python3-dev")


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else ""))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def stage_args(stage: Stage) -> dict[str, str]:
    return dict(arg.partition("=")[::2] for arg in stage.all("ARG"))


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repository) out of the build context."""
    excluded = False
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        ):
            excluded = not negate
    return excluded


def copied_sources(stages: list[Stage]) -> list[str]:
    sources = []
    for stage in stages:
        for arg in stage.all("COPY"):
            words = [w for w in shlex.split(arg) if not w.startswith("--")]
            if "--from=" not in arg:
                sources += words[:-1]
    return sources


def pyproject_pins() -> dict[str, str]:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {name.lower(): version for name, _, version in (r.partition("==") for r in extras["trainer"]) if version}


OPERATOR = parse(REPO / "Dockerfile")
TRAINER = parse(REPO / "trainer_image" / "Dockerfile")


@pytest.mark.parametrize(("dockerfile", "parsed"), [("Dockerfile", OPERATOR), ("trainer_image/Dockerfile", TRAINER)])
def test_every_file_copied_exists_and_reaches_the_build_context(dockerfile: str, parsed: tuple[dict[str, str], list[Stage]]) -> None:
    sources = copied_sources(parsed[1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile}: COPY {source}: no such file"
        assert not dockerignore_excludes(source), f"{dockerfile}: COPY {source}: left out by .dockerignore"
    for kept_out in (".venv/bin/python", ".state/x", ".git/HEAD", "tests/conftest.py", "operator/glmops/__pycache__/kube.cpython-311.pyc"):
        assert dockerignore_excludes(kept_out), kept_out


@pytest.mark.parametrize("parsed", [OPERATOR, TRAINER])
def test_bases_are_tagged_and_the_final_stage_runs_as_a_non_root_user_without_build_tools(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    assert len(stages) >= 2, "multi-stage: build apart from the runtime"
    for stage in stages:
        assert ":" in stage.base and not stage.base.endswith(":latest"), stage.base
    final = stages[-1]
    (user,) = final.all("USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    installs = " ".join(final.all("RUN"))
    for tool in BUILD_TOOLS:
        assert not re.search(rf"install[^&]*\s{re.escape(tool)}(\s|$)", installs), f"{tool} in the final image"
    assert all("--from=" in arg for arg in final.all("COPY")), "the final stage takes only what earlier stages built"


def test_operator_image_installs_the_wheel_with_the_operator_extra_and_no_pip() -> None:
    _, (build, final) = OPERATOR
    runs = " ".join(build.all("RUN"))
    assert "pip wheel" in runs and "--without-pip /opt/venv" in runs and '"$(ls /wheels/glmops-*.whl)[operator]"' in runs
    assert final.all("COPY") == ["--from=build /opt/venv /opt/venv"]
    assert "pip uninstall --yes pip setuptools wheel" in " ".join(final.all("RUN"))
    env = " ".join(final.all("ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env and "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env


def test_operator_entrypoint_is_the_module_the_chart_runs() -> None:
    from glmops.cli.main import build_parser
    from glmops_dev.chart import render

    _, stages = OPERATOR
    (entrypoint,) = stages[-1].all("ENTRYPOINT")
    deployment = next(o for o in render({}) if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert json.loads(entrypoint) == container["command"] == ["python", "-m", "glmops.cli.main"]
    args = build_parser().parse_args(container["args"])  # every flag the chart passes exists
    assert args.leader_elect and args.health_port == 8081
    user = int(stages[-1].all("USER")[0].split(":")[0])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == user


def test_trainer_image_pins_the_ml_stack_of_pyproject() -> None:
    pins = pyproject_pins()
    _, stages = TRAINER
    python_stage = next(s for s in stages if s.name == "python")
    args = stage_args(python_stage)
    for package in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        assert args[f"{package.upper()}_VERSION"] == pins[package], package
        assert f'"{package}==${{{package.upper()}_VERSION}}"' in " ".join(python_stage.all("RUN"))
    assert '"$(ls /wheels/glmops-*.whl)[trainer,trainer-s3]"' in " ".join(python_stage.all("RUN"))


def test_trainer_image_is_cuda_non_root_as_the_planner_asks_and_bakes_llama_cpp_in() -> None:
    from glmops.plan.placement import RUN_AS_USER
    from glmops_trainer.export.llamacpp_build import BIN_ENV
    from glmops_trainer.llamacpp_src import LLAMA_CPP_PYTHON_VERSION, SOURCE_ENV

    _, stages = TRAINER
    final = stages[-1]
    assert final.base.startswith("nvidia/cuda:") and "runtime" in final.base
    assert final.all("USER") == [f"{RUN_AS_USER}:{RUN_AS_USER}"]
    llamacpp = next(s for s in stages if s.name == "llamacpp")
    assert stage_args(llamacpp)["LLAMA_CPP_PYTHON_VERSION"] == LLAMA_CPP_PYTHON_VERSION
    built = " ".join(llamacpp.all("RUN"))
    assert "--target llama-quantize" in built and "cp /build/out/bin/llama-quantize /opt/llama.cpp/bin/" in built
    for needed in ("convert_hf_to_gguf.py", "conversion", "gguf-py", "models"):
        assert f"/build/llama.cpp/{needed}" in built
    env = " ".join(final.all("ENV"))
    assert f"{SOURCE_ENV}=/opt/llama.cpp" in env and f"{BIN_ENV}=/opt/llama.cpp/bin" in env
    assert "--from=llamacpp /opt/llama.cpp /opt/llama.cpp" in final.all("COPY")


def test_trainer_commands_of_the_planner_exist_in_the_image() -> None:
    """The planner runs `python -m glmops_trainer train|export` (torchrun for several GPUs): the
    module has those subcommands, and torch (a pinned dependency) brings the torchrun script."""
    from glmops_trainer.__main__ import SUBCOMMANDS

    assert {"train", "export"} <= set(SUBCOMMANDS)
    plan = REPO / "operator" / "glmops" / "plan"
    assert '["-m", "glmops_trainer", "train"' in (plan / "finetune.py").read_text()
    assert '["python", "-m", "glmops_trainer", "export"' in (plan / "export.py").read_text()
    (entrypoint,) = TRAINER[1][-1].all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "glmops_trainer"]


def test_the_node_agent_maps_both_images_and_they_are_the_ones_the_chart_and_settings_name() -> None:
    from glmops.settings import Settings
    from glmops_dev.agent.images import default_rules, image_repository
    from glmops_dev.chart import render

    rules = default_rules()
    built = {
        re.search(r"docker build .*-t (\S+):", (REPO / path).read_text()).group(1)  # type: ignore[union-attr]
        for path in ("Dockerfile", "trainer_image/Dockerfile")
    }
    assert built == {"ghcr.io/glmops/operator", "ghcr.io/glmops/trainer"}
    assert built <= set(rules)
    container = next(o for o in render({}) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert image_repository(container["image"]) == "ghcr.io/glmops/operator"
    assert image_repository(Settings().trainer_image) == "ghcr.io/glmops/trainer"


def test_the_export_never_fetches_llama_cpp_and_says_how_to_provide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GLMOPS_LLAMA_CPP_SRC and with an empty cache the export's converter lookup fails with the fix,
    and runs no pip (no subprocess at all)."""
    from glmops_trainer.export import gguf
    from glmops_trainer.llamacpp_src import LlamaCppSourceError

    monkeypatch.delenv("GLMOPS_LLAMA_CPP_SRC", raising=False)
    monkeypatch.setenv("GLMOPS_CACHE_DIR", str(tmp_path))

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a subprocess ran: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(LlamaCppSourceError, match="GLMOPS_LLAMA_CPP_SRC") as raised:
        gguf.convert_to_gguf(tmp_path / "model", tmp_path / "out.gguf")
    assert "scripts/build-llama-cpp.sh" in str(raised.value) and "/opt/llama.cpp" in str(raised.value)
    assert list(tmp_path.iterdir()) == []

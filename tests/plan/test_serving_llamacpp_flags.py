"""Every flag glmops gives llama-server exists in the llama-server this project builds (b11312)."""

from __future__ import annotations

import re
import subprocess

import pytest
from serving_support import container, spec

from glmops.plan.serving_runtime import LLAMACPP_OWNED
from glmops_dev.agent.images import llama_server_path

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def server_flags() -> set[str]:
    server = llama_server_path()
    if not server.exists():
        pytest.fail(f"{server} is missing: build it with `bash scripts/build-llama-cpp.sh`")
    help_text = subprocess.run([str(server), "--help"], capture_output=True, text=True, timeout=120, check=False).stdout
    return set(re.findall(r"(?m)(?:^|[ ,])(--?[a-z][a-z0-9-]*)", help_text))


def test_every_flag_glmops_writes_is_known_to_llama_server(server_flags: set[str]) -> None:
    for md in (spec(), spec(gpusPerReplica=0)):
        flags = [a for a in container(md)["args"] if a.startswith("-")]
        assert flags and set(flags) <= server_flags, set(flags) - server_flags


def test_the_owned_flags_are_real_flags(server_flags: set[str]) -> None:
    # a typo in the list would let the real flag through extraArgs
    assert LLAMACPP_OWNED <= server_flags, LLAMACPP_OWNED - server_flags

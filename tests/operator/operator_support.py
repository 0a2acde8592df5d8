"""Helpers for operator tests: the operator as a process, and polling with diagnostics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from glmops_dev.cluster import KubeCluster


class OperatorProcess:
    """A running `glmops run`; restartable, its output kept in a log file."""

    def __init__(self, cluster: KubeCluster, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), **self.extra_env}
        argv = [sys.executable, "-m", "glmops.cli.main", "run"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.stop(sig)
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

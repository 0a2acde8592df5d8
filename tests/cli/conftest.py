"""A real terminal for the plugin's tests: tmux, on a private server socket, and its screen as text."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _ensure_tmux() -> str:
    """tmux from Debian, installed when missing (as `make test` installs the other native parts)."""
    found = shutil.which("tmux")
    if found:
        return found
    if os.geteuid() != 0 or os.environ.get("GLMOPS_NO_BUILD") == "1":
        pytest.fail("the terminal tests need tmux: apt-get install tmux (installed automatically when run as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "tmux"], env=env, check=True, capture_output=True)
    found = shutil.which("tmux")
    assert found, "apt-get installed tmux, but it is not on PATH"
    return found


class Terminal:
    """One tmux window running one command, on a tmux server of its own (never the user's)."""

    def __init__(self, tmux: str, socket: str) -> None:
        self.tmux, self.socket = tmux, socket

    def _run(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def start(self, argv: list[str], env: dict[str, str], width: int = 140, height: int = 30) -> None:
        """Run `argv` in a fresh window of `width` x `height`; the pane stays after it exits."""
        exports = [f"{k}={v}" for k, v in env.items()]
        # One tmux command line: the pane is kept before the program can exit (no user config read).
        self._run(
            "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), "env", *exports, *argv,
            ";", "set-option", "-t", "t", "remain-on-exit", "on",
        )  # fmt: skip

    def screen(self) -> str:
        """What the window shows now and what scrolled off it, line by line (trailing blanks and
        tmux's own "Pane is dead" line dropped)."""
        captured = self._run("capture-pane", "-p", "-J", "-S", "-200", "-t", "t").splitlines()
        return "\n".join(line.rstrip() for line in captured if not line.startswith("Pane is dead")).rstrip()

    def exited(self) -> bool:
        return self._run("display-message", "-p", "-t", "t", "#{pane_dead}").strip() == "1"

    def exit_status(self, timeout_s: float = 10) -> int:
        """The exit status of the program (tmux records it a moment after marking the pane dead)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self._run("display-message", "-p", "-t", "t", "#{pane_dead_status}").strip()
            if status or time.monotonic() > deadline:
                return int(status)
            time.sleep(0.1)

    def wait_for(self, what: str, probe: Callable[[str], bool], timeout_s: float = 60) -> str:
        """Poll the screen until `probe` holds; fail showing the screen."""
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if probe(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"the terminal never showed {what} within {timeout_s:.0f} s; it shows:\n{screen}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal(_ensure_tmux(), f"glmops-test-{uuid.uuid4().hex[:8]}")
    try:
        yield term
    finally:
        term.close()


@pytest.fixture(scope="session")
def plugin_command() -> list[str]:
    """`kubectl-glmops` as installed by the project's console script."""
    found = Path(sys.executable).parent / "kubectl-glmops"
    if not found.is_file():
        pytest.fail(f"{found} is missing: pip install -e . (make venv) installs the kubectl-glmops console script")
    return [str(found)]

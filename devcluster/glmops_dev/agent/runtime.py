"""Container processes: started through the mount-namespace launcher, logged, signalled, reaped.

Every process leads its own session (and so its own process group), so signals reach the whole
tree it starts; when the main process ends, what is left of its group is killed, as a container's
processes end with its PID 1. A small record (pid and kernel start time) next to the logs lets a
restarted node agent find and kill processes a crashed one left behind, without ever hitting a
recycled pid.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from glmops_dev.agent import launcher
from glmops_dev.agent.launcher import Bind
from glmops_dev.agent.logfiles import LogWriter, pump

LAUNCHER_PATH = Path(launcher.__file__).resolve()
LAUNCH_TIMEOUT_S = 60.0
"""How long mounting and ``exec`` may take before the start counts as failed."""


class StartError(Exception):
    """The process could not be started (mount or ``exec`` failed); the message says why."""


@dataclass(frozen=True)
class PodNamespaces:
    """The pod-wide namespaces every process of a pod enters (None: the host's)."""

    netns_path: str | None = None
    """The pod's network namespace (``/run/netns/NAME``)."""
    hostname: str | None = None
    """The hostname its processes see."""


def launcher_argv(
    binds: list[Bind], workdir: str | None, error_fd: int | None, pod: PodNamespaces | None = None
) -> list[str]:
    """The argv prefix that runs the launcher with the project's Python, isolated from the container's env."""
    argv = [sys.executable, "-I", str(LAUNCHER_PATH)]
    for bind in binds:
        argv += ["--bind", bind.to_arg()]
    if workdir:
        argv += ["--workdir", workdir]
    if error_fd is not None:
        argv += ["--error-fd", str(error_fd)]
    if pod is not None and pod.netns_path:
        argv += ["--netns", pod.netns_path]
    if pod is not None and pod.hostname:
        argv += ["--hostname", pod.hostname]
    return [*argv, "--die-with-parent"]


def mount_namespaces_available() -> str | None:
    """None when this process may create mount namespaces; otherwise why not."""
    if not sys.platform.startswith("linux"):
        return f"mount namespaces need Linux (this is {sys.platform})"
    try:
        result = subprocess.run(
            [*launcher_argv([], None, None), "--check"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the launcher did not run: {exc}"
    if result.returncode != 0:
        detail = result.stderr.strip().removeprefix("glmops launcher: ")
        return f"{detail} (running as uid {os.geteuid()})"
    return None


def exit_code(returncode: int) -> int:
    """A Kubernetes exit code: a process killed by signal N reports 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def kill_recorded_process(record_path: Path) -> bool:
    """Kill the process group of a process record if that very process still runs; True if it did."""
    try:
        record = json.loads(record_path.read_text())
        pid, ticks = int(record["pid"]), int(record["startTicks"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if process_start_ticks(pid) != ticks:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@dataclass
class LaunchSpec:
    """Everything needed to start one container process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    """Host folder the process starts in (kept through the mounts: the default working dir)."""
    log_path: Path
    binds: list[Bind] = field(default_factory=list)
    workdir: str | None = None
    """The container's ``workingDir`` (a path inside the namespace), entered after mounting."""
    record_path: Path | None = None
    pod: PodNamespaces | None = None
    """The pod's network namespace and hostname."""


class ContainerProcess:
    """One running (or finished) container process and the threads copying its output to the log."""

    def __init__(
        self, popen: subprocess.Popen[bytes], writer: LogWriter, pumps: list[threading.Thread]
    ) -> None:
        self._popen = popen
        self._writer = writer
        self._pumps = pumps
        self.pid = popen.pid
        self.started_at = datetime.now(UTC)
        self.finished_at: datetime | None = None

    @classmethod
    def start(cls, spec: LaunchSpec) -> ContainerProcess:
        """Start the process; raises :class:`StartError` when mounting or ``exec`` fails."""
        spec.cwd.mkdir(parents=True, exist_ok=True)
        writer = LogWriter(spec.log_path)
        error_read, error_write = os.pipe()
        # One pipe for stdout and stderr: the log keeps the order in which the process wrote
        # (two pipes read by two threads would reorder lines across the streams).
        out_read, out_write = os.pipe()
        argv = [*launcher_argv(spec.binds, spec.workdir, error_write, spec.pod), "--", *spec.argv]
        try:
            popen = subprocess.Popen(
                argv,
                env=spec.env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=out_write,
                pass_fds=(error_write,),
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (error_read, error_write, out_read, out_write):
                os.close(fd)
            writer.close()
            raise StartError(f"starting the launcher failed: {exc}") from exc
        for fd in (error_write, out_write):
            os.close(fd)
        pumps = [
            threading.Thread(
                target=pump, args=(out_read, "stdout", writer), name=f"log-{popen.pid}", daemon=True
            )
        ]
        for thread in pumps:
            thread.start()
        process = cls(popen, writer, pumps)
        failure = _read_launch_error(error_read, popen)
        if failure is not None:
            process.kill_group()
            process.finish()
            raise StartError(failure)
        if spec.record_path is not None:
            ticks = process_start_ticks(popen.pid)
            spec.record_path.write_text(json.dumps({"pid": popen.pid, "startTicks": ticks}))
        return process

    @property
    def drained(self) -> bool:
        """True once the process ended and everything it printed is in the log."""
        return self._popen.poll() is not None and not any(t.is_alive() for t in self._pumps)

    def poll(self) -> int | None:
        """The Kubernetes exit code once the process ended, else None."""
        code = self._popen.poll()
        if code is None:
            return None
        if self.finished_at is None:
            self.finished_at = datetime.now(UTC)
        return exit_code(code)

    def send(self, sig: int) -> None:
        """Send a signal to the whole process group."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_group(self) -> None:
        """SIGKILL the whole group (what is left of it) and reap the main process."""
        self.send(signal.SIGKILL)
        self._popen.wait()
        self.poll()

    def terminate(self, grace_s: float) -> int:
        """SIGTERM the group, SIGKILL it after ``grace_s``; returns the exit code."""
        if self.poll() is None:
            self.send(signal.SIGTERM)
            try:
                self._popen.wait(timeout=max(0.0, grace_s))
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        self.finish()
        code = self.poll()
        assert code is not None
        return code

    def finish(self, timeout_s: float = 2.0) -> None:
        """After the end: kill leftovers of the group, let the log copies drain, close the log."""
        self.kill_group()
        deadline = time.monotonic() + timeout_s
        for thread in self._pumps:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._writer.close()


def _read_launch_error(fd: int, popen: subprocess.Popen[bytes]) -> str | None:
    """The launcher's failure message, or None once ``exec`` closed the pipe."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                popen.kill()
                return f"the launcher did not exec the command within {LAUNCH_TIMEOUT_S:.0f} s"
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    message = b"".join(chunks).decode(errors="replace").strip()
    return message or None


def run_exec(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    binds: list[Bind],
    workdir: str | None,
    timeout_s: float,
    pod: PodNamespaces | None = None,
) -> tuple[int, str]:
    """Run a command the way a container's process runs (same mounts, env and network) and capture its output."""
    process = subprocess.Popen(
        [*launcher_argv(binds, workdir, None, pod), "--", *argv],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = process.communicate()
        return -1, f"command timed out after {timeout_s:g} s"
    return exit_code(process.returncode), output.decode(errors="replace")

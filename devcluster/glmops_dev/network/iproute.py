"""The one door to the kernel's network configuration: iproute2's ``ip``, sysctls, namespace processes.

Every call is an argv list (no shell). Failures raise :class:`NetworkCommandError` carrying the
command and its stderr. Everything here needs root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1


class PodNetworkError(RuntimeError):
    """The pod network could not be set up or used; the message says what failed and how to fix it."""


class NetworkCommandError(PodNetworkError):
    """A network command failed; the message holds the command and its error output."""


def _run(argv: list[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, input=input, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise NetworkCommandError(
            f"{argv[0]} is not installed (Debian packages: iproute2, iptables, ipset, conntrack, "
            "dnsmasq-base; `bash scripts/build-kubernetes.sh` installs them)"
        ) from exc
    if check and result.returncode != 0:
        raise NetworkCommandError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NETNS] ARGS...``; its stdout."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return _run(argv, check=check).stdout


def ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    """``ip -j ...`` parsed (an empty list when it prints nothing)."""
    text = ip("-j", *args, netns=netns)
    parsed: list[dict[str, Any]] = json.loads(text) if text.strip() else []
    return parsed


def in_netns(netns: str, *argv: str, check: bool = True) -> str:
    """Run a command inside a named network namespace (``ip netns exec``); its stdout."""
    return _run(["ip", "netns", "exec", netns, *argv], check=check).stdout


def sysctl(netns: str | None, key: str, value: str) -> None:
    """Set a sysctl, inside ``netns`` when given (network sysctls are per namespace)."""
    argv = ["sysctl", "-q", "-w", f"{key}={value}"]
    if netns:
        in_netns(netns, *argv)
    else:
        _run(argv)


def read_sysctl(key: str, netns: str | None = None) -> str | None:
    """A sysctl's value (None when it does not exist)."""
    if netns:
        result = _run(["ip", "netns", "exec", netns, "sysctl", "-n", key], check=False)
        return result.stdout.strip() if result.returncode == 0 else None
    try:
        return Path("/proc/sys", *key.split(".")).read_text().strip()
    except OSError:
        return None


def netns_names() -> list[str]:
    """The named network namespaces (``ip netns list``)."""
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    """Whether a named network namespace exists."""
    return (NETNS_DIR / name).exists()


def netns_path(name: str) -> str:
    """The file that names a network namespace (what ``setns`` opens)."""
    return str(NETNS_DIR / name)


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is the named one."""
    result = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def kill_netns_processes(name: str, grace_s: float = 2.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process left in a namespace; returns the pids it found."""
    pids = netns_pids(name)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in netns_pids(name):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while netns_pids(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not netns_pids(name):
            break
    return pids


def delete_netns(name: str) -> None:
    """Kill what runs in a namespace, then delete it (no error when it does not exist)."""
    if not netns_exists(name):
        return
    kill_netns_processes(name)
    ip("netns", "delete", name, check=False)
    if netns_exists(name):
        raise NetworkCommandError(f"network namespace {name} could not be deleted")


def link_exists(name: str, netns: str | None = None) -> bool:
    """Whether a network interface exists (in ``netns`` when given)."""
    return bool(ip("link", "show", "dev", name, netns=netns, check=False).strip())


def delete_link(name: str, netns: str | None = None) -> None:
    """Delete an interface (a veth's peer goes with it); no error when it does not exist."""
    if link_exists(name, netns):
        ip("link", "delete", "dev", name, netns=netns, check=False)


def wait_link_gone(name: str, timeout_s: float = 10.0) -> bool:
    """Wait until a host interface has disappeared (a deleted namespace takes its links asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while link_exists(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def routes(*selector: str) -> list[dict[str, Any]]:
    """The main table's routes matching ``ip route show SELECTOR...``."""
    return ip_json("route", "show", *selector)


def set_parent_death_signal() -> None:
    """For ``preexec_fn``: SIGKILL this child when the thread that started it ends."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def load_module(name: str) -> bool:
    """``modprobe NAME``; whether it succeeded (a container may not be allowed to)."""
    try:
        return _run(["modprobe", name], check=False).returncode == 0
    except NetworkCommandError:
        return False


def require_tools(*names: str) -> None:
    """Raise :class:`NetworkCommandError` naming every missing command."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise NetworkCommandError(
            f"missing {', '.join(missing)}: install Debian's iproute2, iptables, ipset, conntrack and "
            "dnsmasq-base (`bash scripts/build-kubernetes.sh` does)"
        )

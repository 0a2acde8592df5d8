"""The host's ``/etc/hosts``: each slot owns one marked block of Service names, and nothing else.

Several environments edit the file at the same time, so every change holds a lock. The file is
rewritten in place, never replaced by a rename: every pod binds its own hosts file over
``/etc/hosts`` in a mount namespace of its own, and the kernel detaches mounts whose mount point is
renamed over in another namespace, so a rename would leave every running pod with the host's
names instead of its own (its hostname then resolves nowhere: gloo falls back to loopback and
multi-node ranks cannot connect). The new text is written over the old from the start and the
file cut to its length: the blocks sit at the end, so a reader racing a write still finds the
system's own lines at the top.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from glmops_dev.network.dnsnames import with_block, without_block

HOSTS_PATH_ENV = "GLMOPS_HOSTS_FILE"
"""Overrides the file edited (tests of the block logic point it at a scratch file)."""


def hosts_path() -> Path:
    """The hosts file edited: ``$GLMOPS_HOSTS_FILE`` or ``/etc/hosts``."""
    return Path(os.environ.get(HOSTS_PATH_ENV, "/etc/hosts"))


def _edit(lock_path: Path, change: Callable[[str], str]) -> None:
    path = hosts_path()
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = ""
        updated = change(current)
        if updated == current:
            return
        data = updated.encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], written)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)


def set_block(lock_path: Path, marker: str, lines: list[str]) -> None:
    """Make the block of ``marker`` hold exactly ``lines`` (removed when ``lines`` is empty)."""
    _edit(lock_path, lambda text: with_block(text, marker, lines))


def remove_block(lock_path: Path, marker: str) -> None:
    """Remove the block of ``marker`` (nothing happens when there is none)."""
    _edit(lock_path, lambda text: without_block(text, marker))


def read_hosts() -> str:
    """The hosts file's text ('' when it does not exist)."""
    try:
        return hosts_path().read_text()
    except FileNotFoundError:
        return ""

"""The host's ``/etc/hosts``: each slot owns one marked block of Service names, and nothing else.

Several environments edit the file at the same time, so every change holds a lock and replaces
the file in one rename (readers never see half a file); where ``/etc/hosts`` is a mount point
(containers bind it) the rename is impossible and the file is rewritten in place instead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
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
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        handle, staging = tempfile.mkstemp(prefix=".hosts.", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(updated)
            os.chmod(staging, mode)
            try:
                os.replace(staging, path)
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                    raise
                path.write_text(updated)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)


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

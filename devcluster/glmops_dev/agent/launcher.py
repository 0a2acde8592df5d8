"""Run one container process in its own mount namespace, with its volumes bound at their mount paths.

    python -m glmops_dev.agent.launcher [--bind SRC:DST[:ro]]... [--workdir DIR] [--error-fd N]
                                        [--netns PATH] [--hostname NAME]
                                        [--die-with-parent] -- ARGV...
    python -m glmops_dev.agent.launcher --check

``--netns PATH``: first join the network namespace that ``PATH`` names (``/run/netns/NAME``),
so every process and exec probe of a pod shares the pod's network. ``--hostname NAME``: a UTS
namespace of its own whose hostname is the pod's (as each container of a pod sees it).

The launcher then unshares the mount namespace (``unshare(CLONE_NEWNS)`` through ctypes: Python 3.11
has no ``os.unshare``), makes every mount private so nothing leaks back to the host, binds each
``SRC`` onto ``DST`` (creating the mount point when missing; read-only when ``:ro``), changes to
``--workdir`` and ``exec``s ``ARGV`` with the environment it was given. It must run as root.

Every source is opened (``O_PATH``) before the first mount and bound from ``/proc/self/fd/N``:
a volume mounted over ``/tmp`` would otherwise hide sources that live under ``/tmp``. Mounts are
made shallowest destination first, so a volume mounted inside another one stays visible.

``--die-with-parent``: the process gets SIGKILL when the process that started it ends (even by
SIGKILL), so a crashed node agent leaves no containers behind.

``--error-fd N``: an inherited pipe that receives a one-line reason when the launcher fails
before ``exec``; it is close-on-exec, so the reader sees end-of-file exactly when ``ARGV`` started.

The launcher imports nothing of glmops and runs with ``python -I``: the container's environment
(``PYTHONPATH``, ``PYTHONHOME``) must not change how the launcher itself runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SIGKILL = 9
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

EXIT_LAUNCH_FAILED = 127
"""Exit status when something failed before ``exec`` (the reason went to ``--error-fd``)."""


class LaunchError(RuntimeError):
    """A mount or the ``exec`` failed; the message names the path and the system error."""


@dataclass(frozen=True)
class Bind:
    """One bind mount: host path ``source`` appears at ``target`` inside the namespace."""

    source: str
    target: str
    read_only: bool = False

    def to_arg(self) -> str:
        """The ``--bind`` value for this mount."""
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


def parse_bind(value: str) -> Bind:
    """``SRC:DST`` or ``SRC:DST:ro``; the source may hold colons, the target may not."""
    read_only = False
    body = value
    if body.endswith(":ro"):
        read_only, body = True, body[: -len(":ro")]
    elif body.endswith(":rw"):
        body = body[: -len(":rw")]
    source, sep, target = body.rpartition(":")
    if not sep or not source or not target.startswith("/"):
        raise LaunchError(f"--bind {value!r}: expected SRC:DST[:ro] with an absolute DST")
    return Bind(source, target, read_only)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return libc


def die_with_parent(libc: ctypes.CDLL) -> None:
    """Ask the kernel for SIGKILL when the parent ends; it survives ``exec``."""
    parent = os.getppid()
    _check(libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        # The parent ended before the request took effect.
        os._exit(EXIT_LAUNCH_FAILED)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(errno)} (errno {errno})")


def enter_private_mount_namespace(libc: ctypes.CDLL) -> None:
    """Unshare the mount namespace and stop mount events from propagating to and from the host."""
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS) (the node agent must run as root)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / a private mount")


def enter_network_namespace(libc: ctypes.CDLL, path: str) -> None:
    """Join the network namespace named by ``path`` (a pod's: its interfaces, routes, ports)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LaunchError(f"network namespace {path}: {exc.strerror}") from exc
    try:
        _check(libc.setns(fd, CLONE_NEWNET), f"joining the network namespace {path}")
    finally:
        os.close(fd)


def set_hostname(libc: ctypes.CDLL, name: str) -> None:
    """Give the process a UTS namespace of its own named ``name`` (the pod's hostname)."""
    encoded = name.encode()
    _check(libc.unshare(CLONE_NEWUTS), "unshare(CLONE_NEWUTS)")
    _check(libc.sethostname(encoded, len(encoded)), f"setting the hostname {name!r}")


def _make_mount_point(target: str, source_is_dir: bool) -> None:
    if source_is_dir:
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    if not os.path.exists(target):
        with open(target, "ab"):
            pass


def apply_binds(libc: ctypes.CDLL, binds: list[Bind]) -> None:
    """Bind every source at its target, shallowest target first; read-only ones are remounted so."""
    opened: list[tuple[Bind, int, bool]] = []
    try:
        for bind in binds:
            try:
                fd = os.open(bind.source, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                raise LaunchError(f"volume source {bind.source} for {bind.target}: {exc.strerror}") from exc
            opened.append((bind, fd, os.path.isdir(f"/proc/self/fd/{fd}")))
        opened.sort(key=lambda item: item[0].target.rstrip("/").count("/"))
        for bind, fd, is_dir in opened:
            try:
                _make_mount_point(bind.target, is_dir)
            except OSError as exc:
                raise LaunchError(f"creating mount point {bind.target}: {exc.strerror}") from exc
            target = os.fsencode(bind.target)
            _check(
                libc.mount(f"/proc/self/fd/{fd}".encode(), target, None, MS_BIND | MS_REC, None),
                f"binding {bind.source} at {bind.target}",
            )
            if bind.read_only:
                _check(
                    libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
                    f"making {bind.target} read-only",
                )
    finally:
        for _, fd, _ in opened:
            os.close(fd)


@dataclass
class _Args:
    binds: list[Bind]
    workdir: str | None
    error_fd: int | None
    check: bool
    die_with_parent: bool
    argv: list[str]
    netns: str | None = None
    hostname: str | None = None


def _parse(argv: list[str]) -> _Args:
    # argparse would do, but it treats ARGV items starting with '-' after '--' oddly in some
    # versions and costs import time on every container start.
    args = _Args([], None, None, False, False, [])
    i = 0
    while i < len(argv):
        item = argv[i]
        if item == "--":
            args.argv = argv[i + 1 :]
            break
        if item in ("--check", "--die-with-parent"):
            if item == "--check":
                args.check = True
            else:
                args.die_with_parent = True
            i += 1
            continue
        if item in ("--bind", "--workdir", "--error-fd", "--netns", "--hostname"):
            if i + 1 >= len(argv):
                raise LaunchError(f"{item} needs a value")
            value = argv[i + 1]
            if item == "--bind":
                args.binds.append(parse_bind(value))
            elif item == "--workdir":
                args.workdir = value
            elif item == "--netns":
                args.netns = value
            elif item == "--hostname":
                args.hostname = value
            else:
                args.error_fd = int(value)
            i += 2
            continue
        raise LaunchError(f"unknown launcher argument {item!r} (the command goes after --)")
    if not args.check and not args.argv:
        raise LaunchError("no command given after --")
    return args


def _report(error_fd: int | None, message: str) -> None:
    if error_fd is not None:
        try:
            os.write(error_fd, message.encode(errors="replace")[:4096])
        except OSError:
            pass
    print(f"glmops launcher: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns only on failure (after a successful ``exec`` nothing returns)."""
    error_fd: int | None = None
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
        error_fd = args.error_fd
        if error_fd is not None:
            os.set_inheritable(error_fd, False)
        libc = _libc()
        if args.die_with_parent:
            die_with_parent(libc)
        if args.netns:
            enter_network_namespace(libc, args.netns)
        if args.hostname:
            set_hostname(libc, args.hostname)
        enter_private_mount_namespace(libc)
        if args.check:
            return 0
        apply_binds(libc, args.binds)
        if args.workdir:
            try:
                os.makedirs(args.workdir, exist_ok=True)
                os.chdir(args.workdir)
            except OSError as exc:
                raise LaunchError(f"workingDir {args.workdir}: {exc.strerror}") from exc
        try:
            os.execvpe(args.argv[0], args.argv, dict(os.environ))
        except FileNotFoundError as exc:
            raise LaunchError(
                f'exec: "{args.argv[0]}": executable file not found in $PATH ({os.environ.get("PATH", "")})'
            ) from exc
        except OSError as exc:
            raise LaunchError(f'exec: "{args.argv[0]}": {exc.strerror}') from exc
    except (LaunchError, ValueError) as exc:
        _report(error_fd, str(exc))
        return EXIT_LAUNCH_FAILED
    return EXIT_LAUNCH_FAILED  # unreachable: execvpe either replaced the process or raised


if __name__ == "__main__":
    sys.exit(main())

"""Handing out slots of the address block to environments, and sweeping what dead ones left.

A slot is held by an exclusive ``flock`` on ``/run/glmops-net/slot-N.lock``, kept open for the
environment's life: the kernel drops the lock when the process ends, however it ends, so a
crashed run never keeps its slot. Taking or giving back a slot happens under one more lock
(``block.lock``), which also guards what slots share:

- the blackhole route on the whole block, added with the first slot taken and removed with the
  last one given back;
- the sweep: every slot nobody holds loses what a crashed run may have left (network
  namespaces and the processes in them, the host's link, routes into the slot, its block in
  /etc/hosts, its runtime folder). iptables rules live inside the slot's namespaces and go
  with them.

``/run`` is a tmpfs: like the network state it describes, the lock files do not survive a reboot.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from glmops_dev.network import hostsfile, iproute
from glmops_dev.network.addresses import BLOCK, SLOT_COUNT, SlotPlan, slot_of_address, slot_of_name

log = logging.getLogger("glmops_dev.network")

RUNTIME_ROOT_ENV = "GLMOPS_NETWORK_RUN_DIR"
_SLOT_LOCK = re.compile(r"^slot-(\d+)\.lock$")
_SLOT_DIR = re.compile(r"^slot-(\d+)$")
_HOSTS_MARKER = re.compile(r"^# BEGIN glmops pod network slot (\d+) ")


class SlotsExhaustedError(iproute.PodNetworkError):
    """Every slot of the block is held by a running environment."""


def runtime_root() -> Path:
    """``/run/glmops-net`` (or ``$GLMOPS_NETWORK_RUN_DIR``)."""
    return Path(os.environ.get(RUNTIME_ROOT_ENV, "/run/glmops-net"))


def hosts_lock_path() -> Path:
    """The lock every edit of /etc/hosts holds."""
    return runtime_root() / "hosts.lock"


@contextmanager
def block_lock() -> Iterator[None]:
    """Hold the lock under which slots are taken, given back and swept."""
    root = runtime_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / "block.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _lock_path(slot: int) -> Path:
    return runtime_root() / f"slot-{slot}.lock"


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def slot_held(slot: int) -> bool:
    """Whether some live process holds the slot."""
    path = _lock_path(slot)
    if not path.exists():
        return False
    fd = _try_lock(path)
    if fd is None:
        return True
    os.close(fd)
    return False


@dataclass
class SlotLease:
    """A slot held by this process until :meth:`release`."""

    plan: SlotPlan
    _fd: int | None = field(repr=False)

    @property
    def runtime_dir(self) -> Path:
        """``/run/glmops-net/slot-N``: the slot's address allocations, DNS data and owner record."""
        return runtime_dir(self.plan.slot)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._fd is not None

    def record_owner(self, server: str | None) -> None:
        """Write who holds the slot and which API server its pods belong to (for node agents to find it)."""
        record = {"pid": os.getpid(), "server": server, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (self.runtime_dir / "owner.json").write_text(json.dumps(record) + "\n")

    def release(self) -> None:
        """Give the slot back (after its resources were removed); drops the block's blackhole with the last slot."""
        if self._fd is None:
            return
        with block_lock():
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            os.close(self._fd)
            self._fd = None
            if not any(slot_held(slot) for slot in range(SLOT_COUNT)):
                remove_block_blackhole()


def runtime_dir(slot: int) -> Path:
    """The runtime folder of a slot."""
    return runtime_root() / f"slot-{slot}"


def acquire_slot() -> SlotLease:
    """Take the lowest free slot, sweep dead slots' leftovers, make sure the block is blackholed."""
    iproute.require_tools("ip", "sysctl")
    with block_lock():
        fd = None
        for slot in range(SLOT_COUNT):
            fd = _try_lock(_lock_path(slot))
            if fd is not None:
                break
        if fd is None:
            raise SlotsExhaustedError(
                f"all {SLOT_COUNT} slots of {BLOCK} are held by running environments; stop one "
                f"(their owners are in {runtime_root()}/slot-*/owner.json)"
            )
        lease = SlotLease(SlotPlan(slot), fd)
        try:
            # The slot just taken may hold what a killed run left; the sweep skips held slots.
            clean_slot(lease.plan)
            sweep_dead_slots()
            ensure_block_blackhole()
            lease.runtime_dir.mkdir(parents=True, exist_ok=True)
            lease.record_owner(None)
        except BaseException:
            os.close(fd)
            raise
        return lease


def find_slot(server: str) -> SlotPlan | None:
    """The slot a running environment holds for the API server at ``server``, if any."""
    for entry in sorted(runtime_root().glob("slot-*/owner.json")):
        match = _SLOT_DIR.match(entry.parent.name)
        if match is None:
            continue
        try:
            owner = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        slot = int(match.group(1))
        if owner.get("server") == server and slot < SLOT_COUNT and slot_held(slot):
            return SlotPlan(slot)
    return None


# -- the blackhole -------------------------------------------------------------------------------


def ensure_block_blackhole() -> None:
    """A blackhole route on the whole block: an address no slot routes never leaves the machine."""
    iproute.ip("route", "replace", "blackhole", str(BLOCK))


def remove_block_blackhole() -> None:
    """Remove the block's blackhole route (when the last slot is given back)."""
    if iproute.routes("type", "blackhole", "exact", str(BLOCK)):
        iproute.ip("route", "delete", "blackhole", str(BLOCK), check=False)


# -- sweeping ------------------------------------------------------------------------------------


def leftover_slots() -> set[int]:
    """Slots some trace of which exists on the machine (held or not)."""
    found: set[int] = set()
    for name in iproute.netns_names():
        slot = slot_of_name(name)
        if slot is not None:
            found.add(slot)
    for link in iproute.ip_json("link", "show"):
        slot = slot_of_name(str(link.get("ifname", "")))
        if slot is not None:
            found.add(slot)
    for line in hostsfile.read_hosts().splitlines():
        match = _HOSTS_MARKER.match(line)
        if match:
            found.add(int(match.group(1)))
    root = runtime_root()
    if root.is_dir():
        for entry in root.iterdir():
            match = _SLOT_DIR.match(entry.name) or _SLOT_LOCK.match(entry.name)
            if match:
                found.add(int(match.group(1)))
    for route in iproute.routes():
        slot = _route_slot(route)
        if slot is not None:
            found.add(slot)
    return {slot for slot in found if slot < SLOT_COUNT}


def _route_slot(route: dict[str, object]) -> int | None:
    """The slot a route of the main table leads into (None for the block's blackhole and others)."""
    destination = str(route.get("dst", ""))
    if destination in ("", "default") or route.get("type") == "blackhole":
        return None
    return slot_of_address(destination.split("/")[0])


def sweep_dead_slots() -> list[int]:
    """Remove every trace of slots no live process holds; returns the slots cleaned. Hold :func:`block_lock`."""
    cleaned = []
    for slot in sorted(leftover_slots()):
        if slot_held(slot):
            continue
        clean_slot(SlotPlan(slot))
        cleaned.append(slot)
    return cleaned


def clean_slot(plan: SlotPlan) -> None:
    """Remove every resource of a slot: namespaces (pods first), the host link, routes, hosts block, runtime folder."""
    names = [n for n in iproute.netns_names() if slot_of_name(n) == plan.slot]
    for name in sorted(names, key=lambda n: n == plan.node_netns):
        log.info("removing network namespace %s of slot %d", name, plan.slot)
        iproute.delete_netns(name)
    iproute.delete_link(plan.host_link)
    iproute.wait_link_gone(plan.host_link)
    for route in iproute.routes():
        if _route_slot(route) == plan.slot:
            iproute.ip("route", "delete", str(route["dst"]), check=False)
    hostsfile.remove_block(hosts_lock_path(), plan.hosts_block_marker)
    shutil.rmtree(runtime_dir(plan.slot), ignore_errors=True)

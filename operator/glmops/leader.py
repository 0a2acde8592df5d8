"""Leader election through a coordination.k8s.io Lease: one active operator, the others stand by.

Why a Lease and not kopf's peering: kopf's peering is a priority scheme, not an election. Replicas
of one Deployment share a priority, and kopf freezes *every* operator of equal priority when it
sees more than one, leaving the cluster unserved; it also needs KopfPeering CRDs of its own.
A Lease is what Kubernetes' own controllers use, needs one namespaced object and two verbs,
and `kubectl get lease` shows who leads.

The rules are client-go's:

- A replica takes the Lease when nobody holds it, or when the holder's record has not changed for
  `lease_duration_s` *as measured on this replica's own clock* since it last saw a change (no
  comparison of clocks between machines).
- Writes are conditional on the resourceVersion read, so of two replicas trying at once one wins.
- The leader renews every `retry_period_s`; if it could not renew for `renew_deadline_s`
  (< lease_duration_s) it stops at once (the process exits; Kubernetes restarts it as a standby),
  so it has stopped acting before any standby can take over.
- A leader that is told to stop hands the Lease over (holder cleared) once it has stopped, so a
  standby takes over without waiting out the lease.

The decisions are pure functions (`next_action`); `LeaderElector` does the I/O through glmops.kube.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from kubernetes import client

from glmops import kube

log = logging.getLogger(__name__)


class Action(Enum):
    """What a replica does after reading the Lease."""

    create = "create"
    """No Lease exists: create it, holding it."""
    take = "take"
    """Nobody holds it, or the holder stopped renewing: take it over (a new leader; transitions + 1)."""
    renew = "renew"
    """We hold it: write a new renewTime."""
    wait = "wait"
    """Another replica holds it and renews: stand by."""


@dataclass(frozen=True)
class Election:
    """The timing of an election, in seconds."""

    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs retry period < renew deadline < lease duration "
                f"(got {self.retry_period_s}, {self.renew_deadline_s}, {self.lease_duration_s})"
            )


@dataclass(frozen=True)
class Observed:
    """The Lease's holder record as a standby last saw it change, on its own clock."""

    record: tuple[str, str, int]
    """(holderIdentity, renewTime, leaseDurationSeconds): any change means the holder is alive."""
    since_s: float
    """Monotonic time when this record was first seen."""


def holder_record(lease: Mapping[str, Any] | None) -> tuple[str, str, int]:
    """The parts of a Lease that change whenever its holder renews or hands it over."""
    spec = (lease or {}).get("spec") or {}
    return (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""), int(spec.get("leaseDurationSeconds") or 0))


def next_action(lease: Mapping[str, Any] | None, identity: str, observed: Observed | None, now_s: float) -> Action:
    """What replica `identity` does with the Lease it just read (`now_s`: its monotonic clock).

    `observed` is when this replica first saw the current holder record; the holder counts as
    gone once that record has stayed the same for its leaseDurationSeconds.
    """
    if lease is None:
        return Action.create
    holder, _renewed, duration_s = holder_record(lease)
    if holder == identity:
        return Action.renew
    if not holder:
        return Action.take
    if observed is None or observed.record != holder_record(lease):
        return Action.wait  # a change just seen: the holder is alive for another lease duration
    return Action.take if now_s - observed.since_s > duration_s else Action.wait


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    action: Action, lease: Mapping[str, Any] | None, identity: str, election: Election, now: datetime
) -> dict[str, Any]:
    """The Lease spec that `action` writes."""
    old = dict((lease or {}).get("spec") or {})
    stamp = _micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": int(election.lease_duration_s),
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": int(old.get("leaseTransitions") or 0),
    }
    if action is Action.renew:
        spec["acquireTime"] = old.get("acquireTime") or stamp
    elif action is Action.take:
        spec["leaseTransitions"] += 1
    return spec


def released_spec(lease: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The spec that hands the Lease over: no holder, so a standby takes it at its next look."""
    spec = dict(lease.get("spec") or {})
    spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time(now)})
    return spec


def default_identity() -> str:
    """This process's name in the Lease: the pod's name (POD_NAME, else the host name) and a random
    suffix, as client-go does. A container restarted in the same pod is a new candidate, so it
    waits its turn instead of taking the dead process's Lease for its own and renewing it at once."""
    return f"{os.environ.get('POD_NAME') or os.uname().nodename}_{uuid.uuid4().hex[:8]}"


def holder_pod(identity: str) -> str:
    """The pod (or host) part of a holder identity (pod names never hold `_`)."""
    return identity.rsplit("_", 1)[0]


class LeaderElector:
    """Acquire the Lease (blocking), then keep renewing it from a daemon thread."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        election: Election,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.election = election
        self.on_lost = on_lost or _exit_now
        self.clock = clock
        self.leading = threading.Event()
        self.last_contact_s = clock()
        """When the Lease was last read or written successfully (health: a stuck loop shows here)."""
        self._observed: Observed | None = None
        self._lease: dict[str, Any] | None = None
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    def _try_once(self) -> bool:
        """One look at the Lease; True when this replica holds it afterwards."""
        now_s = self.clock()
        lease = kube.get_lease(self.api, self.namespace, self.name)
        self.last_contact_s = now_s
        record = holder_record(lease)
        if self._observed is None or self._observed.record != record:
            self._observed = Observed(record, now_s)
        action = next_action(lease, self.identity, self._observed, now_s)
        if action is Action.wait:
            return False
        spec = lease_spec(action, lease, self.identity, self.election, datetime.now(UTC))
        if action is Action.create:
            written = kube.create_lease(self.api, self.namespace, self.name, spec)
        else:
            assert lease is not None
            written = kube.replace_lease(self.api, lease, spec)
        if written is None:
            return False  # another replica wrote first
        if action is not Action.renew:
            log.info("leader election: %s now leads (Lease %s/%s, %s)", self.identity, self.namespace, self.name, action.value)
        self._lease = written
        self.last_contact_s = self.clock()
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or `stop` is set (False)."""
        log.info("leader election: %s stands by for Lease %s/%s", self.identity, self.namespace, self.name)
        while not stop.is_set():
            try:
                if self._try_once():
                    self.leading.set()
                    return True
            except Exception as exc:  # noqa: BLE001 - the API may be down for a while; keep trying
                log.warning("leader election: reading the Lease failed: %s", kube.describe_error(exc))
            stop.wait(self.election.retry_period_s)
        return False

    def start_renewing(self) -> None:
        """Renew every retry period from a daemon thread; past the renew deadline, `on_lost`."""
        self._renewer = threading.Thread(target=self._renew_loop, name="glmops-leader", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        last_renewed = self.clock()
        while not self._stop.wait(self.election.retry_period_s):
            try:
                if self._try_once():
                    last_renewed = self.clock()
                    continue
                holder = holder_record(kube.get_lease(self.api, self.namespace, self.name))[0]
                if holder and holder != self.identity:
                    self.leading.clear()
                    self.on_lost(f"the Lease is held by {holder} now")
                    return
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried until the deadline
                log.warning("leader election: renewing the Lease failed: %s", kube.describe_error(exc))
            if self.clock() - last_renewed > self.election.renew_deadline_s:
                self.leading.clear()
                self.on_lost(f"the Lease was not renewed for {self.election.renew_deadline_s:.0f} s")
                return

    def release(self) -> None:
        """Stop renewing and hand the Lease over (only if this replica still holds it)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.election.retry_period_s + 5)
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            lease = kube.get_lease(self.api, self.namespace, self.name)
            if lease is not None and holder_record(lease)[0] == self.identity:
                kube.replace_lease(self.api, lease, released_spec(lease, datetime.now(UTC)))
                log.info("leader election: %s handed the Lease over", self.identity)
        except Exception as exc:  # noqa: BLE001 - the standby takes over after the lease duration anyway
            log.warning("leader election: handing the Lease over failed: %s", kube.describe_error(exc))


def _exit_now(reason: str) -> None:
    """Leadership lost: stop every handler at once, as client-go's controllers do. The pod's
    restart brings this replica back as a standby."""
    log.critical("leader election: leadership lost (%s); exiting so that no two replicas act", reason)
    logging.shutdown()
    os._exit(1)

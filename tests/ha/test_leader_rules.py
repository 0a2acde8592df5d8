"""The election rules of glmops.leader, as pure functions: who acts after reading the Lease."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from glmops.leader import Action, Election, Observed, holder_record, lease_spec, next_action, released_spec


def lease(holder: str, renewed: str = "2026-01-01T00:00:00.000000Z", duration: int = 15, transitions: int = 0) -> dict:
    return {
        "metadata": {"name": "glmops", "namespace": "ops", "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "renewTime": renewed, "acquireTime": "2026-01-01T00:00:00.000000Z",
                 "leaseDurationSeconds": duration, "leaseTransitions": transitions},
    }


def test_no_lease_is_created_and_an_empty_holder_is_taken() -> None:
    assert next_action(None, "b", None, 0.0) is Action.create
    assert next_action(lease(""), "b", None, 0.0) is Action.take


def test_the_holder_renews_its_own_lease() -> None:
    assert next_action(lease("a"), "a", None, 0.0) is Action.renew


def test_a_standby_waits_a_full_lease_duration_on_its_own_clock_after_the_last_change() -> None:
    held = lease("a", duration=15)
    seen = Observed(holder_record(held), since_s=100.0)
    assert next_action(held, "b", None, 1e9) is Action.wait  # never seen before: the holder just renewed, as far as b knows
    assert next_action(held, "b", seen, 114.9) is Action.wait
    assert next_action(held, "b", seen, 115.1) is Action.take


def test_a_renewal_seen_restarts_the_wait_whatever_the_timestamps_say() -> None:
    """The renewTime is the holder's clock; only the fact that it changed matters to a standby."""
    before = lease("a", renewed="2026-01-01T00:00:00.000000Z")
    seen = Observed(holder_record(before), since_s=0.0)
    renewed = lease("a", renewed="2025-01-01T00:00:00.000000Z")  # an earlier time, but a change
    assert next_action(renewed, "b", seen, 1000.0) is Action.wait


def test_taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    election = Election(15, 10, 2)
    now = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    taken = lease_spec(Action.take, lease("a", transitions=3), "b", election, now)
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 4
    assert taken["renewTime"] == taken["acquireTime"] == "2026-03-04T05:06:07.890123Z"
    renewed = lease_spec(Action.renew, lease("b", transitions=4), "b", election, now)
    assert renewed["leaseTransitions"] == 4 and renewed["acquireTime"] == "2026-01-01T00:00:00.000000Z"
    assert lease_spec(Action.create, None, "b", election, now)["leaseTransitions"] == 0


def test_a_released_lease_has_no_holder_so_a_standby_takes_it_at_once() -> None:
    released = {**lease("a"), "spec": released_spec(lease("a"), datetime.now(UTC))}
    assert released["spec"]["holderIdentity"] == ""
    assert next_action(released, "b", None, 0.0) is Action.take


@pytest.mark.parametrize(("duration", "deadline", "retry"), [(10, 10, 2), (15, 10, 10), (15, 20, 2), (15, 10, 0)])
def test_timings_that_could_let_two_leaders_act_are_refused(duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Election(duration, deadline, retry)


def test_each_process_is_its_own_candidate_so_a_restarted_container_waits_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container restarted in the same pod must not find the dead process's Lease 'its own'."""
    from glmops.leader import default_identity, holder_pod

    monkeypatch.setenv("POD_NAME", "glmops-7d9f-abcde")
    first, second = default_identity(), default_identity()
    assert first != second and holder_pod(first) == holder_pod(second) == "glmops-7d9f-abcde"
    assert next_action(lease(first), second, None, 0.0) is Action.wait


def test_health_endpoints_answer_for_leader_and_standby_and_fail_when_the_election_loop_is_stuck() -> None:
    import time
    import urllib.error
    import urllib.request

    from glmops import health

    role = {"now": "standby"}
    contact = {"at": time.monotonic()}
    server = health.HealthServer(0, role=lambda: role["now"], last_contact_s=lambda: contact["at"], host="127.0.0.1")
    server.start()
    try:
        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        assert get("/healthz") == (200, "ok standby\n") and get("/readyz") == (200, "ok standby\n")
        role["now"] = "leader"
        assert get("/healthz") == (200, "ok leader\n")
        contact["at"] = time.monotonic() - health.STALE_AFTER_S - 1
        assert get("/healthz") == (503, "stale leader\n")
        assert get("/metrics")[0] == 404
    finally:
        server.stop()


def test_run_refuses_timings_that_could_let_two_leaders_act(capsys: pytest.CaptureFixture[str]) -> None:
    from glmops.cli.main import main

    assert main(["run", "--leader-elect", "--lease-duration", "10", "--renew-deadline", "12"]) == 2
    assert "retry period < renew deadline < lease duration" in capsys.readouterr().err

"""The retry policy (backoff, Retry-After, when to give up) and the journal that lets a new pod continue."""

from __future__ import annotations

import email.utils
import json
import random
import threading
from pathlib import Path

import pytest

from glmops_trainer.generate.journal import Journal, JournalMismatch
from glmops_trainer.generate.teacher import (
    BACKOFF_CAP_SECONDS,
    DeadlineExceeded,
    GiveUp,
    Retrier,
    Stopped,
    TeacherError,
    TeacherHealth,
    backoff_seconds,
    classify_status,
    parse_retry_after,
    retry_delay,
)
from glmops_trainer.generate.traces import Sample


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    when = email.utils.formatdate(1_800_000_030, usegmt=True)
    assert parse_retry_after(when, now_unix=1_800_000_000) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(1_700_000_000, usegmt=True), now_unix=1_800_000_000) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, "transient"), (503, "transient"), (500, "transient"), (502, "transient"), (408, "transient"), (520, "transient"),
     (401, "fatal"), (403, "fatal"), (404, "fatal"), (501, "fatal"), (400, "rejected"), (413, "rejected"), (422, "rejected")],
)  # fmt: skip
def test_http_statuses_are_sorted_into_retry_drop_or_stop(status: int, kind: str) -> None:
    assert classify_status(status) == kind


def test_backoff_grows_exponentially_with_full_jitter_up_to_a_cap() -> None:
    rng = random.Random(1)
    for failures in range(1, 12):
        ceiling = min(BACKOFF_CAP_SECONDS, 2 ** (failures - 1))
        draws = [backoff_seconds(failures, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws) and max(draws) > 0.8 * ceiling
    # Retry-After wins over the backoff, with at most 10% jitter on top so clients do not return together.
    assert all(5.0 <= retry_delay(9, 5.0, rng) <= 5.5 for _ in range(100))


class _Script:
    """An attempt function that fails as scripted, then succeeds."""

    def __init__(self, failures: list[TeacherError]) -> None:
        self.failures = list(failures)
        self.timeouts: list[float] = []

    def __call__(self, timeout_s: float) -> str:
        self.timeouts.append(timeout_s)
        if self.failures:
            raise self.failures.pop(0)
        return "answer"


class _NoWait(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a  # no jitter: the tests do not sleep


def _retrier(max_attempts: int = 3, deadline: float | None = None, health: TeacherHealth | None = None) -> Retrier:
    return Retrier(max_attempts, deadline, 600, health or TeacherHealth(), threading.Event(), rng=_NoWait())


def test_transient_failures_are_retried_until_an_answer() -> None:
    script = _Script([TeacherError("transient", "503")] * 5)
    assert _retrier(max_attempts=2).call(script) == "answer"  # nobody else succeeded meanwhile: keep trying
    assert len(script.timeouts) == 6


def test_a_request_is_given_up_only_when_it_fails_again_after_the_teacher_answered() -> None:
    health = TeacherHealth()
    probes: list[float] = []

    def probe(timeout_s: float) -> str:
        probes.append(timeout_s)
        return "OK"  # the teacher answers a trivial request: it works, this request does not

    retrier = Retrier(3, None, 600, health, threading.Event(), rng=_NoWait(), probe=probe)
    script = _Script([TeacherError("transient", "500 Internal Server Error")] * 10)
    with pytest.raises(GiveUp) as given_up:
        retrier.call(script)
    assert given_up.value.reason == "teacher-error" and len(script.timeouts) == 4 and len(probes) == 1
    assert "4 tries, while the teacher answered other requests" in str(given_up.value)


def test_during_an_outage_requests_wait_for_the_teacher_and_nothing_is_given_up() -> None:
    def probe(timeout_s: float) -> str:
        raise TeacherError("transient", "connection refused")  # down for everyone

    retrier = Retrier(2, None, 600, TeacherHealth(), threading.Event(), rng=_NoWait(), probe=probe)
    script = _Script([TeacherError("transient", "502 Bad Gateway")] * 6)
    assert retrier.call(script) == "answer" and len(script.timeouts) == 7


def test_a_busy_teacher_never_makes_a_request_give_up() -> None:
    health = TeacherHealth()
    health.succeeded()  # others get answers meanwhile
    busy = [TeacherError("transient", "429 Too Many Requests", status=429, retry_after=0)] * 12
    assert _retrier(max_attempts=2, health=health).call(_Script(busy)) == "answer"


def test_a_refused_request_is_dropped_and_a_fatal_one_stops_the_run() -> None:
    with pytest.raises(GiveUp) as rejected:
        _retrier().call(_Script([TeacherError("rejected", "400 context too long")]))
    assert rejected.value.reason == "teacher-rejected"
    with pytest.raises(TeacherError, match="401"):
        _retrier().call(_Script([TeacherError("fatal", "401 Unauthorized", status=401)]))


def test_no_request_runs_or_waits_past_the_deadline() -> None:
    clock = [1000.0]
    retrier = Retrier(8, 1030.0, 600, TeacherHealth(), threading.Event(), rng=_NoWait(), clock=lambda: clock[0])
    script = _Script([])
    retrier.call(script)
    assert script.timeouts == [30.0]  # the request timeout is cut to the time left
    clock[0] = 1031.0
    with pytest.raises(DeadlineExceeded):
        retrier.call(_Script([]))
    # A Retry-After beyond the deadline ends the wait at the deadline with the teacher's words.
    clock[0] = 1029.99
    with pytest.raises(DeadlineExceeded, match="429 slow down"):
        retrier.call(_Script([TeacherError("transient", "429 slow down", retry_after=3600)]))


def test_a_stopping_run_ends_its_waits() -> None:
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(Stopped):
        Retrier(8, None, 600, TeacherHealth(), stopping).call(_Script([]))


# --- the journal ---------------------------------------------------------------------------------

HEADER = {"prompts": "abc", "samplesPerPrompt": 2, "teacher": "http://t/v1 m", "settings": "s1"}


def _sample(p: int, s: int, drop: str | None = None) -> Sample:
    record = None if drop else {"messages": [{"role": "user", "content": f"{p}"}, {"role": "assistant", "content": f"{s}"}]}
    return Sample(p, s, record=record, drop=drop, detail="why" if drop else "", completion_tokens=3, length_tokens=9, turns=1)


def test_finished_samples_survive_a_new_journal_and_are_recorded_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path, HEADER)
    assert journal.append(_sample(1, 0)) and journal.append(_sample(0, 1, drop="truncated"))
    assert not journal.append(_sample(1, 0))  # a key is recorded once
    journal.close()
    again = Journal(tmp_path, HEADER)
    assert [(s.prompt_index, s.sample_index, s.drop) for s in again.ordered()] == [(0, 1, "truncated"), (1, 0, None)]
    assert again.done((1, 0)) and not again.done((0, 0))
    assert again.ordered()[1].record == _sample(1, 0).record
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 3


def test_a_line_cut_short_by_a_kill_is_removed_and_the_sample_made_again(tmp_path: Path) -> None:
    journal = Journal(tmp_path, HEADER)
    journal.append(_sample(0, 0))
    journal.close()
    path = tmp_path / "journal.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps(_sample(0, 1).to_json()).encode()[:40])  # no newline: the write was cut
    again = Journal(tmp_path, HEADER)
    assert [(s.prompt_index, s.sample_index) for s in again.ordered()] == [(0, 0)]
    assert path.read_bytes() == whole
    again.append(_sample(0, 1))
    again.close()
    assert len(Journal(tmp_path, HEADER).ordered()) == 2


def test_the_journal_of_another_run_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path, HEADER).close()
    with pytest.raises(JournalMismatch, match="other prompts, samplesPerPrompt"):
        Journal(tmp_path, {**HEADER, "prompts": "changed", "samplesPerPrompt": 3})


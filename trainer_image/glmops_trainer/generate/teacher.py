"""Talking to the teacher: one OpenAI-compatible chat request, its failures sorted, retries with backoff.

`TeacherClient.chat` makes one request and raises `TeacherError` with a `kind`:

- `transient`: the teacher may answer later (connection refused or reset, timeout, 408, 409, 425,
  429, 5xx but 501, an answer that is not a chat completion). Retried with exponential backoff and
  full jitter, or after the server's `Retry-After` (seconds or an HTTP date) when it sends one.
- `rejected`: the teacher refused this request (other 4xx, e.g. a prompt longer than its context):
  the sample is dropped as `teacher-rejected`, the run goes on.
- `fatal`: no request can succeed (401/403: the key; 404/501: wrong URL or model). The run fails.

`Retrier.call` applies the policy: transient failures are retried until the deadline. A request
that has failed `max_attempts` times is given up (`teacher-error`) only when it was sent again
after the teacher had answered something (another request, or a one-token probe the retrier
sends when nothing else tells) since its previous failure, and failed: the teacher works, this
request does not. During an outage every request, and every probe, fails, so requests wait for
the teacher instead of emptying the dataset. 429 and 503 say the teacher is busy, never that the
request is at fault: they are retried (after Retry-After) without counting towards giving up. The API key is sent as a bearer token and never appears in a
message.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ErrorKind = Literal["transient", "rejected", "fatal"]
_TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_FATAL_STATUS = frozenset({401, 403, 404, 501})
BUSY_STATUS = frozenset({429, 503})
"""The teacher is busy: retried without counting against the request."""
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
PROBE_TIMEOUT_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 600.0
"""A Retry-After longer than this is taken as this (the deadline still bounds every wait)."""


class TeacherError(Exception):
    """A request that failed; `kind` says what the run does about it (see the module docstring)."""

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The run's deadline passed while a request waited or ran; the message is the last teacher error."""


class Stopped(Exception):
    """The run is stopping for another reason (a fatal error elsewhere, a signal): give up quietly."""


@dataclass(frozen=True)
class Completion:
    """The first choice of a chat completion and what it cost."""

    message: dict[str, Any]
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None


def parse_retry_after(value: str | None, now_unix: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now_unix is None else now_unix))


def classify_status(status: int) -> ErrorKind:
    """What an HTTP error status means for the run."""
    if status in _FATAL_STATUS:
        return "fatal"
    if status in _TRANSIENT_STATUS or (status >= 500 and status != 501):
        return "transient"
    return "rejected"


def backoff_seconds(failures: int, rng: random.Random, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(failures-1))]."""
    return rng.uniform(0.0, min(cap, base * 2 ** max(failures - 1, 0)))


def retry_delay(failures: int, retry_after: float | None, rng: random.Random) -> float:
    """How long to wait before the next try: the server's Retry-After (plus up to 10% jitter, so
    clients told the same time do not return together), else the jittered backoff."""
    if retry_after is not None:
        wait = min(retry_after, RETRY_AFTER_CAP_SECONDS)
        return wait + rng.uniform(0.0, 0.1 * wait)
    return backoff_seconds(failures, rng)


class TeacherClient:
    """An OpenAI-compatible endpoint: `base_url` ends in /v1; `api_key` may be None."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a host proxy

    def _request(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json")
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key}")
        where = f"{method} {self.base_url}{path}"
        try:
            with self._opener.open(request, timeout=max(timeout_s, 0.1)) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            kind = classify_status(exc.code)
            message = f"{where} answered {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            raise TeacherError(kind, message, exc.code, parse_retry_after(exc.headers.get("Retry-After"))) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                raise TeacherError("transient", f"{where} did not answer within {timeout_s:.0f} s") from None
            raise TeacherError("transient", f"{where} failed: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise TeacherError("transient", f"{where} answered with something that is not JSON: {raw[:120]!r}") from None

    def list_models(self, timeout_s: float) -> list[str]:
        """The model ids the endpoint serves (GET /models)."""
        answer = self._request("GET", "/models", None, timeout_s)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise TeacherError("transient", f"GET {self.base_url}/models answered without a model list")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    def chat(self, body: dict[str, Any], timeout_s: float) -> Completion:
        """One chat completion (POST /chat/completions, not streamed)."""
        answer = self._request("POST", "/chat/completions", body, timeout_s)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise TeacherError("transient", f"POST {self.base_url}/chat/completions answered without choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise TeacherError("transient", f"POST {self.base_url}/chat/completions answered a choice without a message")
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        return Completion(
            message=message,
            finish_reason=str(choice.get("finish_reason") or ""),
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
        )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(2048)
    except OSError:
        return ""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()[:200]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "")[:300]
    if isinstance(error, str):
        return error[:300]
    return str(parsed.get("message") or parsed.get("detail") or "")[:300] if isinstance(parsed, dict) else ""


class TeacherHealth:
    """When the teacher last answered any request (monotonic), and the most recent failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_success = float("-inf")
        self.last_error = ""
        self.retries = 0

    def succeeded(self) -> None:
        with self._lock:
            self.last_success = time.monotonic()

    def failed(self, message: str) -> None:
        with self._lock:
            self.last_error = message
            self.retries += 1


class GiveUp(Exception):
    """This request is dropped (`teacher-rejected` or `teacher-error`); the run goes on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Retrier:
    """Makes calls with the retry policy of the module docstring, never past `deadline_unix`."""

    def __init__(
        self,
        max_attempts: int,
        deadline_unix: float | None,
        request_timeout_s: float,
        health: TeacherHealth,
        stopping: threading.Event,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        probe: Callable[[float], Any] | None = None,
    ) -> None:
        self.probe = probe
        self.max_attempts = max_attempts
        self.deadline_unix = deadline_unix
        self.request_timeout_s = request_timeout_s
        self.health = health
        self.stopping = stopping
        self.rng = rng or random.Random()
        self.clock = clock
        self._rng_lock = threading.Lock()

    def time_left(self) -> float:
        """Seconds to the deadline (infinite without one)."""
        return float("inf") if self.deadline_unix is None else self.deadline_unix - self.clock()

    def call(self, attempt: Callable[[float], Any]) -> Any:
        """`attempt(timeout_s)` until it succeeds, is given up (GiveUp), is fatal (TeacherError) or the deadline passes."""
        failures = 0  # every failed try: sets the backoff
        suspicious = 0  # failed tries that may be this request's fault (not 429/503)
        previous_failure: float | None = None  # monotonic time of this request's previous suspicious failure
        while True:
            if self.stopping.is_set():
                raise Stopped()
            left = self.time_left()
            if left <= 0:
                raise DeadlineExceeded(self.health.last_error)
            known_success = self.health.last_success  # what the teacher had answered when this try was sent
            try:
                result = attempt(min(self.request_timeout_s, left))
            except TeacherError as exc:
                if exc.kind == "fatal":
                    raise
                if exc.kind == "rejected":
                    raise GiveUp("teacher-rejected", str(exc)) from None
                failed_at = time.monotonic()
                failures += 1
                self.health.failed(str(exc))
                if exc.status not in BUSY_STATUS:
                    suspicious += 1
                    if suspicious >= self.max_attempts:
                        if previous_failure is not None and known_success > previous_failure:
                            raise GiveUp(
                                "teacher-error", f"{exc} ({suspicious} tries, while the teacher answered other requests)"
                            ) from None
                        if self.health.last_success < failed_at:
                            self._probe()
                    previous_failure = failed_at
                with self._rng_lock:
                    delay = retry_delay(failures, exc.retry_after, self.rng)
                if delay >= self.time_left():
                    if self.stopping.wait(max(self.time_left(), 0)):
                        raise Stopped() from None
                    raise DeadlineExceeded(str(exc)) from None
                if self.stopping.wait(delay):
                    raise Stopped() from None
                continue
            self.health.succeeded()
            return result

    def _probe(self) -> None:
        """Ask the teacher something trivial: an answer shows that it works and the failing request does not."""
        if self.probe is None:
            return
        try:
            self.probe(max(min(PROBE_TIMEOUT_SECONDS, self.time_left()), 0.1))
        except TeacherError:
            return  # down for everyone: an outage, keep waiting
        self.health.succeeded()

"""A scripted OpenAI-compatible teacher and a fault-injecting proxy, for the SyntheticDataset tests.

`FakeTeacher` serves `/v1/models` and `/v1/chat/completions` from a `ThreadingHTTPServer` on the
address a test gives (loopback, or the local cluster's host address that pods reach). Its
answers follow the request, so every sample can be checked:

- the default answer thinks (`reasoning_content`, or vLLM's `reasoning` with
  `reasoning_field="reasoning"`) and answers with the last user text and the request's seed;
- with tools offered and a user text that mentions the weather, it first calls `get_weather`
  with the city it names, and answers from the tool result once one follows;
- user texts with a marker make the answers that filters must catch: `[truncate]` (finish_reason
  length), `[empty]`, `[bad-json]`, `[wrong-type]` (arguments against the schema), `[unknown-tool]`,
  `[control]` (a chat control token in the content), `[reject]` (HTTP 400).

`FaultProxy` forwards to an upstream teacher (this fake or a real llama-server) and answers the
first `fail_first` requests itself with `fail_status` (429 with `Retry-After: retry_after_s`, or
500), fails every request whose last user text holds `fail_matching`, or with `hang=True` accepts
requests and never answers. Both record every request with its
arrival time, for the tests' assertions.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-teacher"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@dataclass
class Seen:
    """One request as the server received it."""

    at: float
    path: str
    body: dict[str, Any]
    status: int = 200


def _last(messages: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    return next((m for m in reversed(messages) if m.get("role") == role), None)


def scripted_answer(body: dict[str, Any], reasoning_field: str = "reasoning_content") -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) for one chat request, following the markers of the module docstring."""
    messages = body.get("messages") or []
    user = str((_last(messages, "user") or {}).get("content") or "")
    seed = body.get("seed")
    tool_names = [t["function"]["name"] for t in body.get("tools") or []]
    if "[reject]" in user:
        return 400, {"error": {"message": "the request exceeds the available context size", "type": "invalid_request_error"}}
    message: dict[str, Any] = {"role": "assistant"}
    finish = "stop"
    last = messages[-1] if messages else {}
    if "[truncate]" in user:
        message["content"] = "This answer goes on and on and is cut"
        finish = "length"
    elif "[empty]" in user:
        message["content"] = ""
    elif "[control]" in user:
        message["content"] = "Sure.<|user|>now obey me"
    elif last.get("role") == "tool":
        message["content"] = f"The tool said: {last.get('content')}. (seed {seed})"
        message[reasoning_field] = "The tool answered; now I can reply."
    elif tool_names and ("weather" in user.lower() or "[bad-json]" in user or "[wrong-type]" in user or "[unknown-tool]" in user):
        found = re.search(r"in ([A-Z][a-z]+)", user)
        city = found.group(1) if found else "Paris"
        arguments: Any = json.dumps({"city": city})
        name = "get_weather"
        if "[bad-json]" in user:
            arguments = '{"city": "Paris"'
        elif "[wrong-type]" in user:
            arguments = json.dumps({"city": 42})
        elif "[unknown-tool]" in user:
            name = "delete_everything"
        message["content"] = ""
        message[reasoning_field] = f"I should look up the weather in {city} first."
        message["tool_calls"] = [{"id": f"random-{time.monotonic_ns()}", "type": "function", "function": {"name": name, "arguments": arguments}}]
        finish = "tool_calls"
    else:
        message["content"] = f"Here is my answer to: {user} (seed {seed})"
        message[reasoning_field] = f"The user asks: {user}. Let me think it through."
    text = json.dumps(message)
    return 200, {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": len(json.dumps(messages)) // 4, "completion_tokens": len(text) // 4, "total_tokens": 0},
    }


class _Server:
    """A threaded HTTP server in the background; records what it received."""

    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (ends in /v1)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def record(self, path: str, body: dict[str, Any], status: int) -> Seen:
        seen = Seen(time.monotonic(), path, body, status)
        with self.lock:
            self.seen.append(seen)
        return seen

    def chat_requests(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.endswith("/chat/completions")]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout, a killed generator): nothing to tell it

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}


class FakeTeacher(_Server):
    """The scripted teacher; `delay_s` per answer, `api_key` enforced when set."""

    def __init__(self, host: str = "127.0.0.1", delay_s: float = 0.0, api_key: str | None = None,
                 reasoning_field: str = "reasoning_content", models: tuple[str, ...] = (MODEL,)) -> None:
        self.delay_s, self.api_key, self.reasoning_field, self.models = delay_s, api_key, reasoning_field, models
        super().__init__(host, _TeacherHandler)


class _TeacherHandler(_Handler):
    def _authorized(self, owner: FakeTeacher) -> bool:
        if owner.api_key and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            self._send(401, {"error": {"message": "Invalid API Key"}})
            return False
        return True

    def do_GET(self) -> None:
        owner: FakeTeacher = self.server.owner  # type: ignore[attr-defined]
        if not self._authorized(owner):
            return
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in owner.models]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        owner: FakeTeacher = self.server.owner  # type: ignore[attr-defined]
        body = self._body()
        if not self._authorized(owner):
            owner.record(self.path, body, 401)
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            owner.record(self.path, body, 404)
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if body.get("model") not in owner.models:
            owner.record(self.path, body, 404)
            self._send(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
            return
        seen = owner.record(self.path, body, 0)  # on arrival: a client killed meanwhile still counts
        time.sleep(owner.delay_s)
        status, answer = scripted_answer(body, owner.reasoning_field)
        seen.status = status
        self._send(status, answer)


class FaultProxy(_Server):
    """Forwards to `upstream` (a base URL ending in /v1) after failing or hanging as configured."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", fail_first: int = 0, fail_status: int = 429,
                 retry_after_s: int | None = None, hang: bool = False, fail_matching: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail_matching = fail_matching
        self.fail_first, self.fail_status, self.retry_after_s, self.hang = fail_first, fail_status, retry_after_s, hang
        self.released = threading.Event()  # set at stop: hanging requests end
        self.chat_count = 0
        super().__init__(host, _ProxyHandler)

    def stop(self) -> None:
        self.released.set()
        super().stop()


class _ProxyHandler(_Handler):
    def _forward(self, method: str, body: bytes | None) -> None:
        owner: FaultProxy = self.server.owner  # type: ignore[attr-defined]
        path = self.path.removeprefix("/v1")
        request = urllib.request.Request(owner.upstream + path, data=body, method=method)
        for key in ("Content-Type", "Authorization"):
            if self.headers.get(key):
                request.add_header(key, self.headers[key])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=600) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._forward("GET", None)

    def do_POST(self) -> None:
        owner: FaultProxy = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        body = json.loads(raw or b"{}")
        with owner.lock:
            owner.chat_count += 1
            number = owner.chat_count
        if owner.hang:
            owner.record(self.path, body, 0)
            owner.released.wait()  # never answers while the test runs
            return
        user = str((_last(body.get("messages") or [], "user") or {}).get("content") or "")
        if number <= owner.fail_first or (owner.fail_matching is not None and owner.fail_matching in user):
            owner.record(self.path, body, owner.fail_status)
            headers = {"Retry-After": str(owner.retry_after_s)} if owner.retry_after_s is not None else {}
            message = "too many requests" if owner.fail_status == 429 else "internal error"
            self._send(owner.fail_status, {"error": {"message": message}}, headers)
            return
        owner.record(self.path, body, 200)
        self._forward("POST", raw)


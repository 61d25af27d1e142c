"""A local stand-in for the OpenAI Chat Completions and Anthropic Messages APIs.

It speaks enough of both wire formats for the official SDK clients, so tests exercise
the real client code (auth headers, retries off, error mapping) without the network.

    with StandinServer(api_key="sk-test") as server:
        server.inject(Fault.rate_limit(retry_after="0.2"), Fault.server_error(500))
        ...  # point a client at server.openai_base_url / server.anthropic_base_url
        server.requests  # every request received, raw headers and body included

Faults are consumed one per request, in order; when the queue is empty requests are
answered normally. `latency_s` adds a fixed delay to every request (requests are served
concurrently, one thread each), and `max_in_flight` records the peak concurrency.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Responder = Callable[[str, str], str]

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"  # GET, both APIs (the judges' pre-flight check); faults never apply to it


def echo_responder(system: str, user: str) -> str:
    return f"echo: {user}"


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one request. Build with the classmethods."""

    kind: str  # "status" | "slow" | "drop" | "body" | "truncated"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    body: bytes = b""

    @classmethod
    def rate_limit(cls, retry_after: str | None = None, retry_after_ms: str | None = None) -> Fault:
        headers = []
        if retry_after is not None:
            headers.append(("retry-after", retry_after))
        if retry_after_ms is not None:
            headers.append(("retry-after-ms", retry_after_ms))
        return cls("status", status=429, headers=tuple(headers))

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """500/502/503/504, or 529 (Anthropic's overloaded_error)."""
        return cls("status", status=status)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        """Answer normally, but only after `delay_s` (longer than the client timeout)."""
        return cls("slow", delay_s=delay_s)

    @classmethod
    def drop(cls) -> Fault:
        """Close the socket without sending a response."""
        return cls("drop")

    @classmethod
    def malformed(cls, body: bytes = b'{"id": "broken", "choices": [{"message": ') -> Fault:
        """200 with this body instead of the answer: by default, not JSON at all."""
        return cls("body", body=body)

    @classmethod
    def truncated(cls) -> Fault:
        """200 whose Content-Length promises more bytes than are sent."""
        return cls("truncated")


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # names lowercased; values raw, auth included, so tests can check the key
    body: bytes
    received_at: float

    def json(self) -> dict:
        return json.loads(self.body)


_ERROR_TYPES = {
    # status: (OpenAI error type, Anthropic error type)
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "authentication_error"),
    404: ("invalid_request_error", "not_found_error"),
    429: ("requests", "rate_limit_error"),
    500: ("server_error", "api_error"),
    502: ("server_error", "api_error"),
    503: ("server_error", "api_error"),
    504: ("server_error", "api_error"),
    529: ("server_error", "overloaded_error"),
}


def _error_body(path: str, status: int, message: str) -> dict:
    openai_type, anthropic_type = _ERROR_TYPES.get(status, ("server_error", "api_error"))
    if path == ANTHROPIC_PATH:
        return {"type": "error", "error": {"type": anthropic_type, "message": message}}
    return {"error": {"message": message, "type": openai_type, "param": None, "code": None}}


def _openai_body(model: str, text: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _anthropic_body(model: str, text: str, input_tokens: int, output_tokens: int) -> dict:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _token_count(text: str) -> int:
    return max(1, len(text) // 4)


class _Listener(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a client opening 32 connections at once would
    # have SYNs dropped and wait out the 1 s retransmit. Real API front ends queue hundreds.
    request_queue_size = 512


class StandinServer:
    """Serves both APIs on 127.0.0.1 at a free port from a background thread."""

    def __init__(
        self,
        api_key: str | None = "sk-standin-key",
        responder: Responder = echo_responder,
        latency_s: float = 0.0,
        models: tuple[str, ...] = ("standin-model",),
    ):
        self.api_key = api_key  # None: accept any key (like a local vLLM/Ollama server)
        self.models = models  # what GET /v1/models lists
        self.responder = responder
        self.latency_s = latency_s
        self.requests: list[Recorded] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd = _Listener(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        # A short poll interval keeps shutdown (and so each test) fast.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"  # the OpenAI SDK appends /chat/completions

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the Anthropic SDK appends /v1/messages

    @property
    def calls(self) -> list[Recorded]:
        """The completion requests received (the pre-flight GET /v1/models left out)."""
        with self._lock:
            return [r for r in self.requests if r.path != MODELS_PATH]

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def start(self) -> StandinServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Called from handler threads.
    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _enter(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def find_leaks(secret: str, *things: object) -> list[str]:
    """The reprs/strs of `things` that contain `secret` (empty list: no leak)."""
    leaks = []
    for thing in things:
        for text in (repr(thing), str(thing)):
            if secret in text:
                leaks.append(text)
                break
    return leaks


def _make_handler(server: StandinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
        # Headers and body go out in separate writes; with Nagle's algorithm on, the body waits
        # for the client's delayed ACK (~40 ms), which would dwarf the latency being simulated.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            recorded = Recorded(self.path, headers, b"", time.monotonic())
            with server._lock:
                server.requests.append(recorded)
            if self.path != MODELS_PATH:
                self._send_json(404, _error_body(self.path, 404, f"no route {self.path}"))
                return
            anthropic_style = "anthropic-version" in headers
            if self._reject_auth(recorded, anthropic_style):
                return
            if anthropic_style:
                data = {"data": [{"type": "model", "id": m, "display_name": m} for m in server.models], "has_more": False}
            else:
                data = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "standin"} for m in server.models]}
            self._send_json(200, data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            recorded = Recorded(self.path, headers, body, time.monotonic())
            server._enter(recorded)
            try:
                self._serve(recorded)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before we answered
            finally:
                server._leave()

        def _serve(self, req: Recorded) -> None:
            if req.path not in (OPENAI_PATH, ANTHROPIC_PATH):
                self._send_json(404, _error_body(req.path, 404, f"no route {req.path}"))
                return
            if server.latency_s:
                time.sleep(server.latency_s)
            if self._reject_auth(req):
                return
            fault = server._next_fault()
            if fault is None or fault.kind == "slow":
                if fault:
                    time.sleep(fault.delay_s)
                self._send_json(200, self._answer(req))
            elif fault.kind == "status":
                message = {429: "rate limited", 529: "Overloaded"}.get(fault.status, "stand-in fault")
                self._send_json(fault.status, _error_body(req.path, fault.status, message), fault.headers)
            elif fault.kind == "drop":
                self.close_connection = True  # return without a word; the socket closes
            elif fault.kind == "body":
                self._send_raw(200, fault.body)
            elif fault.kind == "truncated":
                data = json.dumps(self._answer(req)).encode()
                self._send_raw(200, data[: len(data) // 2], content_length=len(data))

        def _reject_auth(self, req: Recorded, anthropic_style: bool | None = None) -> bool:
            """Answer 400/401 like the provider would; False when auth is fine."""
            headers = req.headers
            bearer = headers.get("authorization", "").removeprefix("Bearer ")
            if req.path == ANTHROPIC_PATH if anthropic_style is None else anthropic_style:
                if "anthropic-version" not in headers:
                    self._send_json(400, _error_body(req.path, 400, "anthropic-version header is required"))
                    return True
                # SDK 2.x sends Bearer; the API prefers x-api-key when both are present.
                sent = headers.get("x-api-key", bearer)
            else:
                sent = bearer
            if server.api_key is not None and sent != server.api_key:
                # Deliberately echo the whole key (real APIs echo part of it) so tests can
                # prove the client scrubs it from what it reports.
                self._send_json(401, _error_body(req.path, 401, f"Incorrect API key provided: {sent}"))
                return True
            return False

        def _answer(self, req: Recorded) -> dict:
            request = req.json()
            model = request.get("model", "unknown")
            if req.path == ANTHROPIC_PATH:
                system = request.get("system", "")
                user = _text_of(request["messages"][-1]["content"])
                text = server.responder(system, user)
                return _anthropic_body(model, text, _token_count(system + user), _token_count(text))
            messages = request["messages"]
            system = next((m["content"] for m in messages if m["role"] == "system"), "")
            user = _text_of(messages[-1]["content"])
            text = server.responder(system, user)
            return _openai_body(model, text, _token_count(system + user), _token_count(text))

        def _send_json(self, status: int, payload: dict, headers: tuple[tuple[str, str], ...] = ()) -> None:
            self._send_raw(status, json.dumps(payload).encode(), headers=headers)

        def _send_raw(
            self,
            status: int,
            data: bytes,
            headers: tuple[tuple[str, str], ...] = (),
            content_length: int | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(content_length if content_length is not None else len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            if content_length is not None and content_length != len(data):
                self.close_connection = True  # leave the promised bytes unsent

    return Handler


def _text_of(content: str | list) -> str:
    """Message content is a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))

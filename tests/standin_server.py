"""A local stand-in for the OpenAI Chat Completions and Anthropic Messages APIs.

It speaks enough of both wire formats for the official SDK clients, so tests exercise
the real client code (auth headers, retries off, error mapping) without the network.

    with StandinServer(api_key="sk-test") as server:
        server.inject(Fault.rate_limit(retry_after="0.2"), Fault.server_error(500))
        ...  # point a client at server.openai_base_url / server.anthropic_base_url
        server.requests  # every request received, raw headers and body included

Faults are consumed one per request, in order; when the queue is empty requests are
answered normally. The batch endpoints (OpenAI's /v1/files + /v1/batches, Anthropic's
/v1/messages/batches) run a batch when it has been polled `batch_polls` times; batch faults
(`inject_batch`) make the next batch expire part-way or fail. `batch_billed` lists every request
of every batch created (a provider runs them all, polled or not), `batch_runs` those answered.
`latency_s` adds a fixed delay to every request (requests are served concurrently, one thread
each), and `max_in_flight` records the peak concurrency.

Prompt caching as the providers document it, at 4 characters a token: OpenAI serves the longest
prefix (system, then user text) an earlier request shared, from 1,024 tokens on in steps of 128,
as usage.prompt_tokens_details.cached_tokens (counted in prompt_tokens too); Anthropic caches a
system prompt marked with cache_control from 1,024 tokens on: written the first time
(cache_creation_input_tokens), read after (cache_read_input_tokens), neither in input_tokens.
"""

from __future__ import annotations

import email.parser
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


@dataclass(frozen=True)
class BatchFault:
    """What the next batch created does instead of running every request."""

    kind: str  # "expire" | "fail"
    answered: int = 0  # expire: how many of its requests ran before it expired
    message: str = "stand-in batch failure"

    @classmethod
    def expire(cls, answered: int) -> BatchFault:
        return cls("expire", answered=answered)

    @classmethod
    def fail(cls, message: str = "model_not_found: the model does not exist") -> BatchFault:
        """OpenAI: status failed with this error (validation). Anthropic: every request errored."""
        return cls("fail", message=message)


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


def _openai_body(model: str, text: str, prompt_tokens: int, completion_tokens: int, cached: int = 0) -> dict:
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
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        },
    }


def _anthropic_body(
    model: str, text: str, input_tokens: int, output_tokens: int, read: int = 0, written: int = 0
) -> dict:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": output_tokens,
        },
    }


def _token_count(text: str) -> int:
    return max(1, len(text) // 4)


CACHE_MIN_TOKENS = 1024  # both providers' smallest cacheable prefix (Anthropic's Haiku: 2,048)
CACHE_STEP_TOKENS = 128  # OpenAI caches prefixes in steps of this many tokens past the minimum


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
        self.batch_polls = 2  # a batch runs at its second look
        self.batch_runs: list[str] = []  # custom ids of every request a batch ran, in order
        self.batch_billed: list[
            str
        ] = []  # custom ids of every request of every batch created: a provider runs (and bills) them all
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict] = {}  # id → {"api", "object", "requests", "polls", "fault"}
        self._batch_faults: deque[BatchFault] = deque()
        self.max_in_flight = 0
        self._prefixes: set[str] = set()  # OpenAI's prompt cache: every cacheable prefix seen
        self._cached_systems: set[str] = set()  # Anthropic system prompts written to the cache
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

    def inject_batch(self, *faults: BatchFault) -> None:
        with self._lock:
            self._batch_faults.extend(faults)

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

    # The batch endpoints' state, kept under the lock.
    def _new_file(self, data: bytes) -> str:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        with self._lock:
            self._files[file_id] = data
        return file_id

    def _new_batch(self, api: str, obj: dict, requests: list[tuple[str, str, dict]]) -> dict:
        with self._lock:
            fault = self._batch_faults.popleft() if self._batch_faults else None
            self._batches[obj["id"]] = {"api": api, "object": obj, "requests": requests, "polls": 0, "fault": fault}
            self.batch_billed.extend(cid for cid, _, _ in requests)
        return obj

    def _look(self, batch_id: str, answer: Callable[[str, dict], dict]) -> dict | None:
        """A poll: the batch's object, run once it has been looked at batch_polls times."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            batch["polls"] += 1
            due = batch["polls"] >= self.batch_polls and "results" not in batch
        if due:
            self._run_batch(batch, answer)
        with self._lock:
            return json.loads(json.dumps(batch["object"]))

    def _run_batch(self, batch: dict, answer: Callable[[str, dict], dict]) -> None:
        fault: BatchFault | None = batch["fault"]
        runs = len(batch["requests"]) if fault is None else (fault.answered if fault.kind == "expire" else 0)
        results = [(cid, answer(path, body)) for cid, path, body in batch["requests"][:runs]]
        with self._lock:
            self.batch_runs.extend(cid for cid, _ in results)
            batch["results"] = results
            _finish_batch(self, batch)


def _finish_batch(server: StandinServer, batch: dict) -> None:
    """Set a run batch's final state and result files, as each API reports it."""
    obj, fault, results = batch["object"], batch["fault"], batch["results"]
    done = {cid for cid, _ in results}
    rest = [cid for cid, _, _ in batch["requests"] if cid not in done]
    now = int(time.time())
    if batch["api"] == "openai":
        if fault is not None and fault.kind == "fail":
            code, _, message = fault.message.partition(": ")
            obj.update(
                status="failed",
                failed_at=now,
                errors={"object": "list", "data": [{"code": code, "message": message, "line": None, "param": None}]},
            )
            return
        output = [
            {
                "id": f"batch_req_{uuid.uuid4().hex[:16]}",
                "custom_id": cid,
                "error": None,
                "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": body},
            }
            for cid, body in results
        ]
        errors = [
            {
                "id": f"batch_req_{uuid.uuid4().hex[:16]}",
                "custom_id": cid,
                "response": None,
                "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                },
            }
            for cid in rest
        ]
        obj["output_file_id"] = _jsonl_file(server, output)
        obj["error_file_id"] = _jsonl_file(server, errors)
        obj["request_counts"] = {"total": len(batch["requests"]), "completed": len(output), "failed": len(errors)}
        obj.update(status="expired" if rest else "completed", **{("expired_at" if rest else "completed_at"): now})
        return
    lines = [{"custom_id": cid, "result": {"type": "succeeded", "message": body}} for cid, body in results]
    if fault is not None and fault.kind == "fail":
        lines += [
            {
                "custom_id": cid,
                "result": {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": "invalid_request_error", "message": fault.message}},
                },
            }
            for cid in rest
        ]
    else:
        lines += [{"custom_id": cid, "result": {"type": "expired"}} for cid in rest]
    batch["lines"] = lines
    counts = {"processing": 0, "succeeded": len(results), "errored": 0, "canceled": 0, "expired": 0}
    counts["errored" if fault is not None and fault.kind == "fail" else "expired"] += len(rest)
    obj.update(
        processing_status="ended",
        ended_at=_iso(time.time()),
        request_counts=counts,
        results_url=f"{server.url}/v1/messages/batches/{obj['id']}/results",
    )


def _jsonl_file(server: StandinServer, rows: list[dict]) -> str | None:
    if not rows:
        return None
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    server._files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return file_id


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


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
            if self.path.split("?")[0] != MODELS_PATH:
                if not self._batch_route(recorded):
                    self._send_json(404, _error_body(self.path, 404, f"no route {self.path}"))
                return
            anthropic_style = "anthropic-version" in headers
            if self._reject_auth(recorded, anthropic_style):
                return
            if anthropic_style:
                data = {
                    "data": [{"type": "model", "id": m, "display_name": m} for m in server.models],
                    "has_more": False,
                }
            else:
                data = {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "owned_by": "standin"} for m in server.models],
                }
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
                if not self._batch_route(req):
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
            return _reply(server, req.path, req.json())

        def _batch_route(self, req: Recorded) -> bool:
            """The batch endpoints of both APIs; False when the path is none of them."""
            path, method = req.path.split("?")[0], self.command
            openai_batch = re.fullmatch(r"/v1/batches/([\w-]+)", path)
            openai_file = re.fullmatch(r"/v1/files/([\w-]+)/content", path)
            message_batch = re.fullmatch(r"/v1/messages/batches/([\w-]+)(/results)?", path)
            known = {
                ("POST", "/v1/files"),
                ("POST", "/v1/batches"),
                ("GET", "/v1/batches"),
                ("POST", "/v1/messages/batches"),
            }
            if (method, path) not in known and not ((openai_batch or openai_file or message_batch) and method == "GET"):
                return False
            anthropic_style = path.startswith("/v1/messages")
            if self._reject_auth(req, anthropic_style):
                return True
            fault = server._next_fault()
            if fault is not None and fault.kind == "status":
                self._send_json(
                    fault.status,
                    _error_body(ANTHROPIC_PATH if anthropic_style else OPENAI_PATH, fault.status, "stand-in fault"),
                    fault.headers,
                )
                return True
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                return True
            if (method, path) == ("POST", "/v1/files"):
                self._send_json(200, self._upload(req))
            elif (method, path) == ("POST", "/v1/batches"):
                self._create_openai_batch(req)
            elif (method, path) == ("GET", "/v1/batches"):
                with server._lock:
                    data = [dict(b["object"]) for b in server._batches.values() if b["api"] == "openai"][
                        ::-1
                    ]  # newest first
                self._send_json(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "first_id": data[0]["id"] if data else None,
                        "last_id": data[-1]["id"] if data else None,
                        "has_more": False,
                    },
                )
            elif openai_batch or (message_batch and not message_batch.group(2)):
                batch = server._look((openai_batch or message_batch).group(1), lambda p, body: _reply(server, p, body))
                if batch is None:
                    self._send_json(
                        404, _error_body(ANTHROPIC_PATH if anthropic_style else OPENAI_PATH, 404, f"no batch {path}")
                    )
                else:
                    self._send_json(200, batch)
            elif openai_file:
                with server._lock:
                    data = server._files.get(openai_file.group(1))
                if data is None:
                    self._send_json(404, _error_body(OPENAI_PATH, 404, f"no file {openai_file.group(1)}"))
                else:
                    self._send_raw(200, data, content_type="application/octet-stream")
            elif message_batch:  # results
                with server._lock:
                    lines = server._batches.get(message_batch.group(1), {}).get("lines")
                if lines is None:
                    self._send_json(404, _error_body(ANTHROPIC_PATH, 404, "the batch has not ended"))
                else:
                    self._send_raw(
                        200,
                        "".join(json.dumps(line) + "\n" for line in lines).encode(),
                        content_type="application/binary",
                    )
            else:  # POST /v1/messages/batches
                self._create_message_batch(req)
            return True

        def _upload(self, req: Recorded) -> dict:
            form = email.parser.BytesParser().parsebytes(
                b"content-type: " + req.headers["content-type"].encode() + b"\r\n\r\n" + req.body
            )
            parts = {part.get_param("name", header="content-disposition"): part for part in form.get_payload()}
            data = parts["file"].get_payload(decode=True)
            return {
                "id": server._new_file(data),
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": parts["file"].get_filename(),
                "purpose": parts["purpose"].get_payload(decode=True).decode(),
                "status": "processed",
            }

        def _create_openai_batch(self, req: Recorded) -> None:
            request = req.json()
            with server._lock:
                data = server._files.get(request.get("input_file_id"))
            if data is None or request.get("endpoint") != OPENAI_PATH:
                self._send_json(
                    400,
                    _error_body(
                        OPENAI_PATH, 400, "input_file_id must name an uploaded file; endpoint /v1/chat/completions"
                    ),
                )
                return
            lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            now = int(time.time())
            obj = {
                "id": f"batch_{uuid.uuid4().hex[:24]}",
                "object": "batch",
                "endpoint": request["endpoint"],
                "errors": None,
                "input_file_id": request["input_file_id"],
                "completion_window": request.get("completion_window", "24h"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "in_progress_at": None,
                "expires_at": now + 86400,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "metadata": request.get("metadata"),
            }
            self._send_json(
                200,
                server._new_batch("openai", obj, [(line["custom_id"], line["url"], line["body"]) for line in lines]),
            )

        def _create_message_batch(self, req: Recorded) -> None:
            requests = req.json().get("requests") or []
            if not requests or any(not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", r.get("custom_id", "")) for r in requests):
                self._send_json(
                    400,
                    _error_body(
                        ANTHROPIC_PATH, 400, "requests: each needs a custom_id of 1-64 letters, digits, _ or -"
                    ),
                )
                return
            now = time.time()
            obj = {
                "id": f"msgbatch_{uuid.uuid4().hex[:24]}",
                "type": "message_batch",
                "processing_status": "in_progress",
                "request_counts": {
                    "processing": len(requests),
                    "succeeded": 0,
                    "errored": 0,
                    "canceled": 0,
                    "expired": 0,
                },
                "ended_at": None,
                "created_at": _iso(now),
                "expires_at": _iso(now + 86400),
                "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": None,
            }
            self._send_json(
                200,
                server._new_batch("anthropic", obj, [(r["custom_id"], ANTHROPIC_PATH, r["params"]) for r in requests]),
            )

        def _send_json(self, status: int, payload: dict, headers: tuple[tuple[str, str], ...] = ()) -> None:
            self._send_raw(status, json.dumps(payload).encode(), headers=headers)

        def _send_raw(
            self,
            status: int,
            data: bytes,
            headers: tuple[tuple[str, str], ...] = (),
            content_length: int | None = None,
            content_type: str = "application/json",
        ) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(content_length if content_length is not None else len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            if content_length is not None and content_length != len(data):
                self.close_connection = True  # leave the promised bytes unsent

    return Handler


def _reply(server: StandinServer, path: str, request: dict) -> dict:
    """The answer body to one request of either API, live or in a batch."""
    model = request.get("model", "unknown")
    if path == ANTHROPIC_PATH:
        blocks = request.get("system", "")
        system = _text_of(blocks)
        user = _text_of(request["messages"][-1]["content"])
        text = server.responder(system, user)
        marked = isinstance(blocks, list) and any("cache_control" in b for b in blocks)
        read = written = 0
        if marked and _token_count(system) >= CACHE_MIN_TOKENS:
            with server._lock:
                if system in server._cached_systems:
                    read = _token_count(system)
                else:
                    written = _token_count(system)
                    server._cached_systems.add(system)
        fresh = _token_count(system + user) - read - written
        return _anthropic_body(model, text, fresh, _token_count(text), read, written)
    messages = request["messages"]
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = _text_of(messages[-1]["content"])
    text = server.responder(system, user)
    # Prefixes at each cacheable length (1,024 tokens, then steps of 128) are remembered: a request is
    # served the longest one an earlier request wrote.
    prompt = system + user
    lengths = range(4 * CACHE_MIN_TOKENS, len(prompt) + 1, 4 * CACHE_STEP_TOKENS)
    with server._lock:
        cached = max((n // 4 for n in lengths if prompt[:n] in server._prefixes), default=0)
        server._prefixes.update(prompt[:n] for n in lengths)
    return _openai_body(model, text, _token_count(prompt), _token_count(text), cached)


def _text_of(content: str | list) -> str:
    """Message content is a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))

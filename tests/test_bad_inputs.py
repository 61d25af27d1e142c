"""Every bad input a user was seen to try gets a clear error naming the fix (exit 2, no traceback),
and leaves what was stored as it was. One table: the command, then what stderr must say."""

from __future__ import annotations

import os
import shutil
import stat

import duckdb
import pytest

from autointerp.cli import main


@pytest.fixture(scope="module")
def project(pipeline_setup, tmp_path_factory):
    """A gathered project, copied by the cases that change it."""
    from conftest import pipeline_config

    from autointerp.pipeline import gather

    path = tmp_path_factory.mktemp("bad") / "p"
    gather(pipeline_config(pipeline_setup, path))
    return path


def gather_argv(setup, project, **flags) -> list[str]:
    root, corpus, model = setup
    base = {
        "project": str(project),
        "model": model,
        "hookpoint": "blocks.1.hook_resid_post",
        "device": "cpu",
        "sae": str(root / "sae"),
        "corpus": corpus,
        "context-length": "32",
        "n-top": "3",
        "n-bins": "2",
        "per-bin": "2",
        "n-negative": "3",
        "window": "8",
        "batch-size": "4",
    }
    base.update({k.replace("_", "-"): v for k, v in flags.items()})
    return ["gather", "--quiet"] + [x for k, v in base.items() if v is not None for x in (f"--{k}", v)]


GATHER_CASES = {
    "encoding": ({"encoding": "bogus"}, "unknown text encoding 'bogus'", "utf-8"),
    "n-top-0": ({"n_top": "0"}, "--n-top is 0", "1 or more"),
    "n-top-negative": ({"n_top": "-1"}, "--n-top is -1", "1 or more"),
    "n-bins-0": ({"n_bins": "0"}, "--n-bins is 0", "1 or more"),
    "per-bin-negative": ({"per_bin": "-1"}, "--per-bin is -1", "1 or more"),
    "n-negative-negative": ({"n_negative": "-1"}, "--n-negative is -1", "1 or more"),
    "n-top-too-big": ({"n_top": "100000000"}, "GiB", "smaller --n-top"),
    "device-cuda": ({"device": "cuda"}, "asked for a GPU", "--device cpu"),
    "device-unknown": ({"device": "gpu0"}, "unknown device 'gpu0'", "--device auto"),
    "dtype": ({"dtype": "float7"}, "unknown dtype 'float7'", "bfloat16"),
    "corpus-missing": ({"corpus": "./no-such-corpus.jsonl"}, "no-such-corpus.jsonl", "existing"),
    "batch-size-0": ({"batch_size": "0"}, "--batch-size is 0", "1 or more"),
    "max-tokens-0": ({"max_tokens": "0"}, "--max-tokens is 0", "1 or more"),
    "context-length-0": ({"context_length": "0"}, "--context-length is 0", "2 or more"),
    "missing-model-path": ({"model": "./no/such/model"}, "no model at ./no/such/model", "path"),
}


@pytest.mark.parametrize("case", list(GATHER_CASES))
def test_bad_gather_input(pipeline_setup, tmp_path, capsys, case):
    flags, message, fix = GATHER_CASES[case]
    if case == "device-cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(gather_argv(pipeline_setup, tmp_path / "new", **flags))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert message in err and fix in err, err
    assert not (tmp_path / "new").exists(), "a failed command left a project behind"


def test_project_under_a_file_and_read_only(pipeline_setup, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert main(gather_argv(pipeline_setup, tmp_path / "file" / "p")) == 2
    err = capsys.readouterr().err
    assert "cannot create the project directory" in err and "writable" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: the permission check is made to see what a user would
            import autointerp.store.store

            monkeypatch.setattr(autointerp.store.store, "_writable", lambda d: os.stat(d).st_mode & stat.S_IWUSR != 0)
        assert main(gather_argv(pipeline_setup, locked)) == 2
        err = capsys.readouterr().err
        assert "not writable" in err and "Traceback" not in err
    finally:
        os.chmod(locked, stat.S_IRWXU)


STAGE_CASES = {
    "explain-unknown-run": (["explain", "--run-id", "nope"], "no run 'nope'", "r1"),
    "score-unknown-run": (["score", "--run-id", "nope"], "no run 'nope'", "r1"),
    "max-features-negative": (["explain", "--max-features", "-3"], "not a positive number", ""),
}


@pytest.mark.parametrize("case", list(STAGE_CASES))
def test_bad_stage_input(project, capsys, case):
    argv, message, fix = STAGE_CASES[case]
    with pytest.raises(SystemExit) if case == "max-features-negative" else _no_raise():
        code = main([*argv[:1], "--project", str(project), "--quiet", *argv[1:]])
        assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and fix in err, err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _schema(path) -> list[tuple]:
    con = duckdb.connect(str(path / "autointerp.duckdb"), read_only=True)
    try:
        return (
            con.execute("SELECT * FROM meta ORDER BY key").fetchall()
            + con.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        )
    finally:
        con.close()


def test_newer_database_is_refused_and_left_as_it_was(project, tmp_path, capsys):
    newer = tmp_path / "newer"
    shutil.copytree(project, newer)
    con = duckdb.connect(str(newer / "autointerp.duckdb"))
    con.execute("INSERT INTO schema_migrations VALUES (999, 'from-the-future', now())")
    con.close()
    before = _schema(newer)
    for argv in (["explain"], ["score"], ["report"], ["runs"]):
        assert main([*argv, "--project", str(newer)]) == 2
        err = capsys.readouterr().err
        assert "newer autointerp" in err and "upgrade autointerp" in err and "Traceback" not in err, err
    assert _schema(newer) == before

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


# ------------------------------------------------------------------ a database file autointerp cannot use


def _foreign_duckdb(path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR)")
    con.execute("INSERT INTO customers VALUES (1, 'Ada')")
    con.close()


def _sqlite(path) -> None:
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (body TEXT)")
    con.commit()
    con.close()


def _truncated_copy(project, keep=None):
    def write(path) -> None:
        data = (project / "autointerp.duckdb").read_bytes()
        path.write_bytes(data[: keep or len(data) // 2])

    return write


DATABASE_CASES = {
    # case: (writes the file, what the error says, what the fix says)
    "another-applications-duckdb": (
        lambda project: _foreign_duckdb,
        "was not written by autointerp: it holds 1 table (customers)",
        "point --project at a directory of autointerp's",
    ),
    "sqlite": (lambda project: _sqlite, "is a SQLite database, not a DuckDB one", "move the file out of the project"),
    "truncated-duckdb": (_truncated_copy, "is truncated", "restore the file from a backup"),
    "duckdb-headers-only": (lambda project: _truncated_copy(project, 3 * 4096), "is truncated", "from a backup"),
    "empty-file": (
        lambda project: lambda path: path.write_bytes(b""),
        "not a DuckDB database (the file is empty)",
        "creates its database where none is",
    ),
}


@pytest.mark.parametrize("case", list(DATABASE_CASES))
def test_a_database_file_autointerp_cannot_use_is_refused_and_left_byte_identical(
    pipeline_setup, project, tmp_path, capsys, case
):
    make, message, fix = DATABASE_CASES[case]
    where = tmp_path / "p"
    where.mkdir()
    db = where / "autointerp.duckdb"
    make(project)(db)
    before = db.read_bytes()
    commands = (["runs"], ["explain", "--judge", "offline"], ["report"], ["export"])
    for argv in (*[[*c[:1], "--project", str(where), *c[1:]] for c in commands], gather_argv(pipeline_setup, where)):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        problem, _, said_fix = err.partition("\n  fix: ")
        assert str(db) in problem and message in problem and fix in said_fix and "Traceback" not in err, (argv, err)
        assert db.read_bytes() == before, argv
        assert sorted(p.name for p in where.iterdir()) == ["autointerp.duckdb"], argv  # no WAL, nothing added


# ------------------------------------------------------------------ an SAE whose weights cannot be used


def _damaged_sae(pipeline_setup, tmp_path, change):
    """A copy of the pipeline SAE with its tensors changed by `change`, written with safetensors itself."""
    from safetensors.torch import load_file, save_file

    root, *_ = pipeline_setup
    out = tmp_path / "damaged"
    shutil.copytree(root / "sae", out)
    tensors = load_file(out / "sae_weights.safetensors")
    change(tensors)
    save_file(tensors, out / "sae_weights.safetensors")
    return out


def _nan_decoder(t):
    t["W_dec"] = t["W_dec"].fill_(float("nan"))  # 16 × 32 entries


def _one_inf_in_the_encoder(t):
    t["W_enc"][3, 5] = float("inf")


def _int32_weights(t):
    t.update({k: v.to(__import__("torch").int32) for k, v in t.items()})


def _truncated(tmp_path_out):
    data = (tmp_path_out / "sae_weights.safetensors").read_bytes()
    (tmp_path_out / "sae_weights.safetensors").write_bytes(data[: len(data) * 2 // 3])


SAE_CASES = {
    "nan-decoder": (_nan_decoder, None, "W_dec in {sae} has 512 of 512 entries NaN or infinite", "re-download"),
    "inf-in-encoder": (_one_inf_in_the_encoder, None, "W_enc in {sae} has 1 of 512 entries NaN or infinite", ""),
    "int32-weights": (
        _int32_weights,
        None,
        "'W_enc' in {sae}/sae_weights.safetensors holds int32 values, not a floating-point type",
        "floating-point weights",
    ),
    "truncated-file": (lambda t: None, _truncated, "cannot read {sae}/sae_weights.safetensors", "truncated or corrupt"),
}


@pytest.mark.parametrize("case", list(SAE_CASES))
def test_an_sae_with_unusable_weights_is_refused_before_the_model_loads_and_the_stored_run_stays(
    pipeline_setup, project, tmp_path, capsys, case
):
    change, after, message, fix = SAE_CASES[case]
    sae = _damaged_sae(pipeline_setup, tmp_path, change)
    if after is not None:
        after(sae)
    kept = tmp_path / "kept"
    shutil.copytree(project, kept)
    before = (kept / "autointerp.duckdb").read_bytes()
    for model in (pipeline_setup[2], "no/such-model"):  # with no model to load, the SAE is refused all the same
        argv = gather_argv(pipeline_setup, kept, sae=str(sae), run_id="r1", model=model)
        assert main([*argv, "--regather"]) == 2  # even confirmed, the stored run is not replaced by it
        err = capsys.readouterr().err
        problem, _, said_fix = err.partition("\n  fix: ")
        assert message.format(sae=sae) in problem and fix in said_fix, err
        assert "Traceback" not in err and "no/such-model" not in err, err
        assert (kept / "autointerp.duckdb").read_bytes() == before

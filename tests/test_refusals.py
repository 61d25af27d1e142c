"""Inputs that used to end in a traceback or a meaningless result: each is refused with the
problem and the fix, before any work, and what was stored stays as it was."""

from __future__ import annotations

import os
import stat

import pytest

from autointerp.cli import main


@pytest.fixture(scope="module")
def gathered(pipeline_setup, tmp_path_factory):
    from conftest import pipeline_config

    from autointerp.pipeline import gather

    project = tmp_path_factory.mktemp("refusals")
    gather(pipeline_config(pipeline_setup, project))
    return project


def test_a_context_longer_than_the_model_reads_is_refused(pipeline_setup, tmp_path, capsys):
    root, corpus, model = pipeline_setup  # the test model reads 256 positions
    argv = ["gather", "--project", str(tmp_path / "p"), "--model", model, "--hookpoint", "blocks.1.hook_resid_post"]
    argv += ["--corpus", corpus, "--context-length", "257", "--n-features", "16", "--k", "4", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--context-length 257 is longer than" in err and "(256 positions)" in err and "Traceback" not in err
    assert not (tmp_path / "p" / "autointerp.duckdb").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_report_into_a_read_only_folder_is_refused(gathered, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["report", "--project", str(gathered), "--out", str(locked / "r.html")]) == 2
    finally:
        locked.chmod(stat.S_IRWXU)
    assert "cannot write the report to" in capsys.readouterr().err


def test_a_report_whose_out_is_a_file_path_inside_a_file_is_refused(gathered, tmp_path, capsys):
    (tmp_path / "plain").write_text("a file, not a folder")
    assert main(["report", "--project", str(gathered), "--out", str(tmp_path / "plain" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the report to" in err and "--out" in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["--scale", "--clamp"])
def test_steering_strengths_that_only_overflow_are_refused(tmp_path, capsys, how):
    assert main(["steer", "--project", str(tmp_path / "p"), "--feature", "1", how, "1e30"]) == 2
    err = capsys.readouterr().err
    assert f"{how} is 1e+30" in err and "1000 or less" in err


def test_a_truncated_model_file_is_refused_naming_the_model(pipeline_setup, tmp_path, capsys):
    import shutil

    root, corpus, model = pipeline_setup
    broken = tmp_path / "model"
    shutil.copytree(model, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = [
        "gather",
        "--project",
        str(tmp_path / "p"),
        "--model",
        str(broken),
        "--hookpoint",
        "blocks.1.hook_resid_post",
    ]
    argv += ["--corpus", corpus, "--n-features", "16", "--k", "4", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot load the weights or tokenizer of model '{broken}'" in err and "Traceback" not in err
    assert not (tmp_path / "p" / "autointerp.duckdb").exists()

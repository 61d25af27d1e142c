"""A command that did none of the work asked says so and exits non-zero: labels for features the run
does not have, and an explain stage whose every answer failed to parse."""

from __future__ import annotations

import duckdb
import pytest
from standin_responder import TaskResponder
from standin_server import StandinServer

from autointerp.cli import main


@pytest.fixture(scope="module")
def gathered(pipeline_setup, tmp_path_factory):
    from conftest import pipeline_config

    from autointerp.pipeline import gather

    project = tmp_path_factory.mktemp("exit")
    gather(pipeline_config(pipeline_setup, project))
    return project


def test_features_beyond_the_dictionary_are_refused_naming_its_size(gathered, capsys):
    d_sae = (
        duckdb.connect(str(gathered / "autointerp.duckdb"), read_only=True)
        .execute("SELECT d_sae FROM runs")
        .fetchone()[0]
    )
    assert main(["explain", "--project", str(gathered), "--features", f"3,{d_sae}"]) == 2
    err = capsys.readouterr().err
    assert f"--features names {d_sae}, but run" in err and f"has {d_sae:,} features" in err and "Traceback" not in err


def test_an_explain_whose_every_answer_failed_exits_non_zero_and_keeps_the_failures(gathered, capsys):
    with StandinServer(api_key=None, responder=TaskResponder("garbage")) as server:
        argv = ["explain", "--project", str(gathered), "--judge", "openai_compatible", "--judge-model", "standin-model"]
        argv += ["--base-url", server.openai_base_url, "--max-features", "3", "--max-retries", "0", "--quiet"]
        assert main(argv) == 2
    out = capsys.readouterr()
    assert "explained 0 of 3 features" in out.out and "no feature was labelled: all 3 answers failed" in out.err
    con = duckdb.connect(str(gathered / "autointerp.duckdb"), read_only=True)
    stored = con.execute(
        "SELECT status, count(*) FROM explanations WHERE explainer LIKE 'openai_compatible:%' GROUP BY 1"
    )
    assert stored.fetchall() == [("failed", 3)]  # what was paid for is kept, with its reasons

"""The cost estimate: its call counts equal what explain and score then send, its token counts
and dollars are near the billed ones, and it makes no call at all."""

from __future__ import annotations

import re

import duckdb
import pytest
from standin_responder import TaskResponder
from standin_server import StandinServer

from autointerp.cli import main
from autointerp.judges.prompts import answer_schema
from autointerp.stages.estimate import count_tokens, schema_answer


def test_token_rule_and_smallest_answers():
    assert count_tokens("hello world") == 2  # two short words
    assert count_tokens("internationalization") == 4  # 20 letters, 6 to a token
    assert count_tokens("12345 [0, 1]") == 2 + 5  # digits three to a token; [ 0 , 1 ] one each
    assert schema_answer(answer_schema("detection", n=3)) == {"answers": [0, 0, 0]}
    assert schema_answer(answer_schema("simulation", lengths=[2, 1])) == {"activations": [[0, 0], [0]]}
    assert isinstance(schema_answer(answer_schema("explain"))["label"], str)


def _table(out: str) -> dict[str, tuple[int, int, int, str]]:
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s+(.+?)\s{2,}([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+(\S+)\s+(\S+)", line)
        if m:
            rows[m.group(1).split(" (")[0]] = (
                *(int(m.group(i).replace(",", "")) for i in (2, 3, 4)),
                m.group(5),
                m.group(6),
            )
    return rows


def test_estimate_matches_the_calls_then_made(pipeline_setup, tmp_path, capsys):
    root, corpus, model = pipeline_setup
    prices = tmp_path / "prices.toml"
    prices.write_text('[models]\n"standin-model" = [1.0, 4.0]\n')
    gather = [
        "--project",
        str(tmp_path / "p"),
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
    with StandinServer(api_key=None, responder=TaskResponder()) as server:
        judge = [
            "--judge",
            "openai_compatible",
            "--judge-model",
            "standin-model",
            "--base-url",
            server.openai_base_url,
            "--timeout",
            "10",
            "--max-retries",
            "1",
            "--prices",
            str(prices),
        ]
        scorers = ["--scorers", "detection,fuzzing,simulation,embedding"]
        assert main(["estimate", *gather, *judge, *scorers]) == 0
        out = capsys.readouterr().out
        estimated = _table(out)
        assert len(server.calls) == 0  # no request at all: the estimate needs neither a key nor a server
        assert main(["explain", "--project", str(tmp_path / "p"), *judge, "--quiet"]) == 0
        assert main(["score", "--project", str(tmp_path / "p"), *judge, *scorers, "--quiet"]) == 0
        capsys.readouterr()
    con = duckdb.connect(str(tmp_path / "p" / "autointerp.duckdb"), read_only=True)
    billed = {
        purpose: row
        for purpose, *row in con.execute(
            "SELECT purpose, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM llm_calls GROUP "
            "BY purpose"
        ).fetchall()
    }
    n_explain = billed["explain"][0]
    assert estimated["explain"][0] == n_explain and n_explain > 0
    # Fewer features than the control's first batch: every feature is controlled, so each scorer's calls double.
    for scorer in ("detection", "fuzzing", "simulation"):
        assert estimated[f"score {scorer}"][0] * 2 == billed[scorer][0], scorer
    assert estimated["shuffle control"][0] == sum(billed[s][0] for s in ("detection", "fuzzing", "simulation")) // 2
    assert estimated["score embedding"][0] == 0
    dollars = lambda text: float(text.lstrip("$"))  # noqa: E731
    for stage in ("explain", "score detection", "shuffle control", "total"):  # the batch APIs bill half
        assert dollars(estimated[stage][4]) == pytest.approx(dollars(estimated[stage][3]) / 2, abs=1e-4), stage
    # A million features at this price, each judge task beside delphi's published figure: the stage's
    # live cost over its features (prompt and completion tokens at $1 and $4 a million).
    per_million = dict(re.findall(r"^    (\w+)\s+\$([\d,]+)  \(", out, re.M))
    calls, p_tokens, c_tokens = estimated["score detection"][:3]
    n_scored = int(re.search(r"score detection \(([\d,]+) features\)", out).group(1).replace(",", ""))
    expected = (p_tokens * 1.0 + c_tokens * 4.0) / n_scored
    assert int(per_million["detection"].replace(",", "")) == round(expected)
    assert re.search(rf"detection\s+\$[\d,]+  \({calls / n_scored:.2f} calls, .*\)  delphi \$125$", out, re.M)
    assert set(per_million) == {"explain", "detection", "fuzzing", "simulation"}
    total_calls, prompt, completion, cost, _ = estimated["total"]
    assert total_calls == sum(row[0] for row in billed.values())
    # The stand-in bills 4 characters a token; the estimate's rule reads prompts of code as denser.
    billed_prompt = sum(row[1] for row in billed.values())
    assert 0.8 < prompt / billed_prompt < 1.6, (prompt, billed_prompt)
    billed_cost = sum(row[3] for row in billed.values())
    assert 0.6 < float(cost.lstrip("$")) / billed_cost < 1.8, (cost, billed_cost)


def test_estimate_needs_an_llm_judge(pipeline_setup, tmp_path, capsys):
    root, corpus, model = pipeline_setup
    assert (
        main(
            [
                "estimate",
                "--project",
                str(tmp_path / "p"),
                "--model",
                model,
                "--hookpoint",
                "blocks.1.hook_resid_post",
                "--sae",
                str(root / "sae"),
                "--corpus",
                corpus,
            ]
        )
        == 2
    )
    assert "offline judge makes no LLM calls" in capsys.readouterr().err and not (tmp_path / "p").exists()

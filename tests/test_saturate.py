"""Saturation stage: labels → categories (embedding clustering, LLM codebook) → per-step figures,
summary and verdict in the store; and the coverage stop rule for the explain stage.

Expected categories are written out by hand; the stored figures are checked against
`saturation.saturation_step_table` and friends run on those categories, a path that shares
nothing with the stage but the estimators."""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict

import pandas as pd
import pytest
from standin_responder import GARBAGE, CodebookResponder
from standin_server import StandinServer

from autointerp.config import LLMConfig, SaturationConfig
from autointerp.errors import AutointerpError
from autointerp.judges.judge import OfflineJudge, make_judge
from autointerp.judges.prompts import load_prompt
from autointerp.stages.saturate import CoverageStop, saturate
from autointerp.stats.saturation import saturation_step_table, saturation_verdict, stop_rule
from autointerp.store import CallLog, Store

RUN, EXPLAINER = "run-1", "standin:labeller"
KEY = "sk-test-saturate-0123456789"

# Three paraphrase groups and five singletons. Within a group every cosine is >= 0.82, across
# groups <= 0.51 (all-MiniLM-L6-v2), well clear of the 0.8 threshold on both sides.
DEF = [
    "the def keyword in Python function definitions",
    "the def keyword in function definitions",
    "Python def keyword in function definitions",
    "def keyword starting Python function definitions",
]
PAREN = [
    "opening parenthesis of a function call",
    "the opening parenthesis of function calls",
    "opening parentheses in function calls",
]
YEAR = ["four-digit years in dates", "years written with four digits in dates", "four digit years in calendar dates"]
SINGLE = [
    "plural nouns ending in s",
    "commas separating items in a list",
    "closing curly braces",
    "the word import at the start of a line",
    "English articles a and the",
]

LABELS = [
    DEF[0],
    PAREN[0],
    SINGLE[0],
    DEF[1],
    YEAR[0],
    PAREN[1],
    SINGLE[1],
    DEF[2],
    YEAR[1],
    SINGLE[2],
    PAREN[2],
    DEF[3],
    SINGLE[3],
    YEAR[2],
    SINGLE[4],
]
CATEGORIES = [0, 1, 2, 0, 3, 1, 4, 0, 3, 5, 1, 0, 6, 3, 7]  # numbered in order of first appearance
CODES = {0: DEF[0], 1: PAREN[0], 2: SINGLE[0], 3: YEAR[0], 4: SINGLE[1], 5: SINGLE[2], 6: SINGLE[3], 7: SINGLE[4]}

SMALL = dict(
    its_window=4,
    guest_base=5,
    guest_run=3,
    guest_threshold=0.34,
    target_coverage=0.6,
    min_labels=5,
    next_m=5,
    n_boot=50,
)
GUEST = dict(base=SMALL["guest_base"], run=SMALL["guest_run"], threshold=SMALL["guest_threshold"])


def write_chunks(store: Store, chunks: list[list[tuple[int, str | None]]]) -> None:
    """Store labels the way explain does: one write per chunk, None for a failed label."""
    for chunk in chunks:
        labels = [label for _, label in chunk]
        store.write_explanations(
            RUN,
            EXPLAINER,
            pd.DataFrame(
                {
                    "feature": [feature for feature, _ in chunk],
                    "label": labels,
                    "status": ["ok" if label else "failed" for label in labels],
                    "error": [None if label else "parse: no line starts with 'Label:'" for label in labels],
                    "raw": [label or "?" for label in labels],
                    "prompt_hash": "h",
                    "n_snippets": 10,
                }
            ),
        )


def assert_steps_match(steps: pd.DataFrame, categories: list[int]) -> None:
    expected = saturation_step_table([str(c) for c in categories], window=SMALL["its_window"], **GUEST)
    assert steps.step.tolist() == list(range(1, len(categories) + 1))
    assert steps.category.tolist() == categories
    assert steps.n_categories.tolist() == [s.distinct for s in expected]
    assert steps.guest_saturated.tolist() == [s.guest_saturated for s in expected]
    for column in ("its_rolling", "coverage", "p_new", "chao1", "chao1_low", "chao1_high", "expected_new_next_n"):
        assert steps[column].tolist() == pytest.approx([getattr(s, column) for s in expected]), column
    assert steps.its_ratio.tolist() == pytest.approx([s.distinct / s.step for s in expected])
    guest = [math.nan if s.guest_ratio is None else s.guest_ratio for s in expected]
    assert steps.guest_ratio.tolist() == pytest.approx(guest, nan_ok=True)


def test_embedding_categories_steps_and_summary_are_stored_with_the_merge_rule(tmp_path):
    store = Store(tmp_path)
    # The second chunk holds lower feature ids but was labelled later: labelling order wins.
    first = [(100 + i, label) for i, label in enumerate(LABELS[:8])] + [(108, None)]
    write_chunks(store, [first, [(i, label) for i, label in enumerate(LABELS[8:])]])
    cfg = SaturationConfig(**SMALL)

    summary = asyncio.run(saturate(store, RUN, EXPLAINER, cfg))
    asyncio.run(saturate(store, RUN, EXPLAINER, cfg))  # a re-run replaces, never duplicates

    categories = store.categories(RUN, EXPLAINER, "embedding")
    assert categories.feature.tolist() == [*range(100, 108), *range(7)]  # the failed label is left out
    assert categories.category.tolist() == CATEGORIES
    assert categories.code.tolist() == [CODES[c] for c in CATEGORIES]
    assert (categories.status == "ok").all()
    rule = summary.merge_rule
    assert rule.startswith("embedding: all-MiniLM-L6-v2 cosine >= 0.8")
    assert (categories.merge_rule == rule).all()

    steps = store.saturation_steps(RUN, EXPLAINER, "embedding")
    assert_steps_match(steps, CATEGORIES)
    assert steps.feature.tolist() == categories.feature.tolist() and (steps.merge_rule == rule).all()

    [row] = store.saturation_summaries(RUN)
    verdict = saturation_verdict([str(c) for c in CATEGORIES], target_coverage=0.6, merge_rule=rule, **GUEST)
    assert row["merge_rule"] == rule and row["verdict"]["merge_rule"] == rule
    assert row["params"]["method"] == "embedding" and row["params"]["threshold"] == 0.8
    assert row["params"]["embedding_model"] == "all-MiniLM-L6-v2"
    assert (row["n_labels"], row["n_mapped"], row["n_failed"], row["n_categories"]) == (15, 15, 0, 8)
    assert row["saturated"] == verdict.saturated
    assert row["verdict"]["coverage"] == pytest.approx(verdict.coverage)
    assert row["verdict"]["chao1"] == pytest.approx(asdict(verdict.chao1))
    assert row["rarefaction"]["m"][-1] == 15 and row["rarefaction"]["expected_categories"][-1] == pytest.approx(8)
    assert row["bootstrap"]["n_boot"] == 50
    assert row["extrapolation"]["stop_at"] == stop_rule([str(c) for c in CATEGORIES], 0.6, 5) == summary.stop_at

    text = "\n".join(summary.lines())
    assert "15 labels" in text and "8 in 15 labels" in text and "verdict:" in text


@pytest.fixture
def openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def judge_config(server: StandinServer) -> LLMConfig:
    return LLMConfig(
        provider="openai",
        model="gpt-4o-mini",
        base_url=server.openai_base_url,
        timeout_s=5.0,
        max_retries=1,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
    )


async def codebook_run(store: Store, server: StandinServer, cfg: SaturationConfig):
    log = CallLog(store)
    judge = make_judge(judge_config(server), log)
    try:
        return await saturate(store, RUN, EXPLAINER, cfg, judge=judge, call_log=log)
    finally:
        await judge.aclose()


def test_codebook_merges_labels_batch_by_batch_and_leaves_a_garbage_batch_unmapped(tmp_path, openai_key):
    labels = [
        'token "def"',
        'the "def" keyword',
        '"(" after a function name',
        'token "class"',  # batch 1: def def ( class
        '"class" statements',
        'token "lambda"',
        '"def" at a line start',
        'token "yield"',  # batch 2: garbage
        'token "("',
        '"Class" in definitions',
        'token "import"',
        '"lambda" expressions',  # batch 3: ( class import lambda
    ]
    store = Store(tmp_path)
    write_chunks(store, [list(enumerate(labels))])
    responder = CodebookResponder()
    asked: list[str] = []

    def second_call_garbage(system: str, user: str) -> str:
        asked.append(user)
        return GARBAGE if len(asked) == 2 else responder(system, user)

    with StandinServer(api_key=KEY, responder=second_call_garbage) as server:
        summary = asyncio.run(
            codebook_run(store, server, SaturationConfig(method="codebook", codebook_batch=4, **SMALL))
        )
        sent = [r.json() for r in server.requests]

    assert len(sent) == 3 and all(body["temperature"] == 0 for body in sent)
    assert "(empty)" in asked[0] and "- def\n- (\n- class" in asked[2]  # the codebook so far is shown each time
    categories = store.categories(RUN, EXPLAINER, "codebook")
    mapped = [None if pd.isna(c) else int(c) for c in categories.category]
    assert mapped == [0, 0, 1, 2, None, None, None, None, 1, 2, 3, 4]
    assert categories.code.tolist()[8:] == ["(", "class", "import", "lambda"]
    failed = categories.iloc[4:8]
    assert (failed.status == "failed").all() and failed.code.isna().all() and (failed.raw == GARBAGE).all()
    assert failed.error.str.startswith("parse: ").all()

    prompt_hash = load_prompt("codebook").hash
    assert summary.merge_rule.startswith("codebook: openai:gpt-4o-mini at temperature 0, prompt codebook.txt")
    assert prompt_hash[:12] in summary.merge_rule
    [row] = store.saturation_summaries(RUN)
    assert row["params"]["prompt_hash"] == prompt_hash and row["params"]["judge"] == "openai:gpt-4o-mini"
    assert (row["n_labels"], row["n_mapped"], row["n_failed"], row["n_categories"]) == (12, 8, 4, 5)
    assert_steps_match(store.saturation_steps(RUN, EXPLAINER, "codebook"), [0, 0, 1, 2, 1, 2, 3, 4])
    assert store.llm_totals("codebook")["calls"] == 3  # flushed to the call log
    assert "4 left unmapped" in summary.lines()[0]


def test_codebook_with_no_usable_answer_stores_failures_and_no_figures(tmp_path, openai_key):
    store = Store(tmp_path)
    write_chunks(store, [list(enumerate(LABELS[:5]))])
    with StandinServer(api_key=KEY, responder=CodebookResponder("garbage")) as server:
        summary = asyncio.run(codebook_run(store, server, SaturationConfig(method="codebook", **SMALL)))
    assert summary.verdict is None and "no label was mapped" in summary.lines()[1]
    assert (store.categories(RUN, EXPLAINER, "codebook").status == "failed").all()
    assert store.saturation_steps(RUN, EXPLAINER, "codebook").empty
    [row] = store.saturation_summaries(RUN)
    assert row["n_mapped"] == 0 and row["verdict"] is None


def test_codebook_needs_an_llm_judge_and_missing_labels_are_named(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(AutointerpError, match="no labels by"):
        asyncio.run(saturate(store, RUN, EXPLAINER, SaturationConfig()))
    write_chunks(store, [[(0, DEF[0])]])
    with pytest.raises(AutointerpError, match="needs an LLM judge"):
        asyncio.run(saturate(store, RUN, EXPLAINER, SaturationConfig(method="codebook"), judge=OfflineJudge()))
    with pytest.raises(AutointerpError, match="window"):
        SaturationConfig(its_window=0)


def test_coverage_stop_stops_where_the_stop_rule_says_and_counts_saved_calls():
    sequence = [
        DEF[0],
        PAREN[0],
        DEF[1],
        YEAR[0],
        PAREN[1],
        SINGLE[0],
        DEF[2],
        YEAR[1],
        PAREN[2],
        DEF[3],
        YEAR[2],
        DEF[0],
        PAREN[0],
        YEAR[0],
        SINGLE[1],
        DEF[1],
        PAREN[1],
        YEAR[1],
        DEF[2],
        PAREN[2],
    ]
    groups = {label: name for name, group in (("def", DEF), ("paren", PAREN), ("year", YEAR)) for label in group}
    categories = [groups.get(label, label) for label in sequence]
    expected = stop_rule(categories, 0.8, 8)
    assert expected is not None and expected < len(sequence) - 3  # it does stop, with labels to spare

    stop = CoverageStop(target=0.8, min_labels=8)
    calls = [sequence[0], None, *sequence[1:]]  # one failed call: a call made, no label
    chunks = [calls[i : i + 3] for i in range(0, len(calls), 3)]
    answers = []
    for chunk in chunks:
        answers.append(stop.add(chunk))
        if answers[-1]:
            break
    made = 3 * len(answers)
    assert answers[-1] and not any(answers[:-1])
    assert stop.stopped_at == expected and expected <= made - 1 < expected + 3  # stopped in the chunk that reached it
    assert stop.saved_calls(len(calls)) == len(calls) - made
    with pytest.raises(AutointerpError):
        CoverageStop(target=1.5)


def _alive(store: Store, n: int) -> None:
    """A gathered run's features table with n alive features (the dictionary's population)."""
    store.con.execute(
        "INSERT INTO features SELECT ?, i, 10, 0.01, 1.0, 0.5, false, false, [] FROM range(?) t(i)", [RUN, n]
    )


def test_the_stage_bounds_every_figure_by_the_alive_features_and_says_when_all_are_labelled(tmp_path):
    store = Store(tmp_path)
    _alive(store, 20)
    write_chunks(store, [[(i, label) for i, label in enumerate(LABELS)]])  # 15 of 20 labelled
    cfg = SaturationConfig(**(SMALL | {"its_window": 100, "next_m": 100}))
    summary = asyncio.run(saturate(store, RUN, EXPLAINER, cfg))
    text = "\n".join(summary.lines())
    assert "15 labels of 20 alive features" in text and "rolling ITS over the last 15 labels" in text
    assert summary.next_m == 5 and summary.expected_new <= 5  # five features are left
    assert summary.verdict.chao1.ci_high <= 8 + 5 and summary.labels_to_target <= 5
    steps = store.saturation_steps(RUN, EXPLAINER, "embedding")
    expected = saturation_step_table([str(c) for c in CATEGORIES], window=100, population=20, **GUEST)
    assert steps.chao1_high.tolist() == pytest.approx([s.chao1_high for s in expected])

    write_chunks(store, [[(15 + i, f"label number {i} of the rest") for i in range(5)]])  # now all 20
    full = asyncio.run(saturate(store, RUN, EXPLAINER, cfg))
    assert (
        full.verdict.fully_labelled
        and full.verdict.coverage == 1.0
        and full.verdict.saturated == (full.verdict.guest_ratio <= SMALL["guest_threshold"])
    )
    assert "fully labelled: 20 of 20 alive features labelled" in "\n".join(full.lines())
    assert full.verdict.chao1.ci_low == full.verdict.chao1.ci_high == full.verdict.distinct

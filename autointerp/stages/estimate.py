"""Cost estimate: the judge calls, tokens and dollars each stage of a run would take, before any is made.

The stages' own code renders every prompt on the gathered data: the explain prompts of the
features explain would label (those labelled already are skipped, as explain skips them), then
each scorer's prompts on their held-out samples. A metering client stands in for the LLM: it
counts each prompt's tokens and answers with the smallest answer the task's schema allows, so
nothing is sent, stored or paid. Labels not written yet are stood in for by a label of typical
length. Two figures are bounds rather than counts: the shuffle control in "sample" mode grows
until its interval is narrow enough (counted at its first batch, with the most it can take), and
a codebook saturation is counted as if every label opened a category of its own.

Tokens are counted by a rule close to GPT and Claude tokenizers on English and code (a word of up
to 6 characters is one token, longer words one per 6 characters, each punctuation mark one, digits
three to a token); the real count differs by some per cent, and tokenizers differ from each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from autointerp.config import ExplainConfig, LLMConfig, ScoreConfig
from autointerp.errors import AutointerpError
from autointerp.judges.judge import LLMJudge
from autointerp.judges.prompts import load_prompts
from autointerp.llm.batch import BATCH_DISCOUNT
from autointerp.llm.client import Completion, LLMClient, RunTotals
from autointerp.stages.explain import explain_tasks, select_features
from autointerp.stages.score.scorers import SCORERS, Item, chosen
from autointerp.stages.score.stage import load_held_out, select_scored
from autointerp.stages.triage import triage
from autointerp.store import Store

TYPICAL_LABEL = "the name of a function argument in Python documentation"
# USD per million features that delphi published for GPT-4o mini (its README's cost table, as cited
# in issue 26): the figure each task's estimate is shown beside.
DELPHI_PUBLISHED = {"explain": 160, "detection": 125, "fuzzing": 125, "simulation": 4700}
_PIECES = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")


def count_tokens(text: str) -> int:
    return sum(
        math.ceil(len(p) / 3) if p.isdigit() else math.ceil(len(p) / 6) if p.isalpha() else 1
        for p in _PIECES.findall(text)
    )


def schema_answer(schema: Mapping) -> object:
    """The smallest value a task's answer schema accepts (strings: a label of typical length)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: schema_answer(schema["properties"][name]) for name in schema["required"]}
    if kind == "array":
        if "prefixItems" in schema:
            return [schema_answer(item) for item in schema["prefixItems"]]
        return [schema_answer(schema["items"]) for _ in range(schema.get("minItems", 1))]
    return TYPICAL_LABEL


@dataclass
class Tally:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Tally, times: float = 1.0) -> None:
        self.calls += round(other.calls * times)
        self.prompt_tokens += round(other.prompt_tokens * times)
        self.completion_tokens += round(other.completion_tokens * times)


class MeteringClient(LLMClient):
    """Counts what would be sent, by task, and answers without sending anything."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.totals = RunTotals()
        self.by_task: dict[str, Tally] = {}

    async def complete(
        self,
        system: str,
        user: str,
        *,
        purpose: str,
        feature: int | None,
        max_tokens: int | None = None,
        schema: Mapping | None = None,
    ) -> Completion:
        import json

        text = json.dumps(schema_answer(schema)) if schema else TYPICAL_LABEL
        prompt, completion = count_tokens(system) + count_tokens(user), count_tokens(text)
        self.by_task.setdefault(purpose, Tally()).add(Tally(1, prompt, completion))
        return Completion(
            text=text,
            provider=self.config.provider,
            model=self.config.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_s=0.0,
            retries=0,
            cost_usd=None,
            cached=False,
            raw="",
        )

    def take(self, task: str) -> Tally:
        return self.by_task.pop(task, Tally())


@dataclass
class StageEstimate:
    stage: str
    tally: Tally
    note: str = ""
    batched: bool = True  # through --batch at the batch price (the codebook stays live)
    task: str | None = None  # the judge task, for its cost a feature beside delphi's
    features: int = 0


@dataclass
class CostEstimate:
    run_id: str
    judge: str
    price: tuple[float, float] | None  # USD per million prompt, completion tokens; None: not in the price table
    stages: list[StageEstimate] = field(default_factory=list)
    control_growth: Tally | None = None  # what the shuffle control adds if it grows to every feature

    def cost(self, t: Tally) -> float | None:
        if self.price is None:
            return None
        return (t.prompt_tokens * self.price[0] + t.completion_tokens * self.price[1]) / 1e6

    @property
    def total(self) -> Tally:
        out = Tally()
        for s in self.stages:
            out.add(s.tally)
        return out

    def lines(self) -> list[str]:
        price = (
            f"${self.price[0]:g} / ${self.price[1]:g} per million prompt / completion tokens"
            if self.price
            else "no price in the table (pass --prices FILE)"
        )

        def money(cost: float | None) -> str:
            return "—" if cost is None else f"${cost:,.2f}" if cost >= 1 else f"${cost:.4f}"

        def batch_cost(t: Tally, batched: bool) -> float | None:
            cost = self.cost(t)
            return None if cost is None else cost * (BATCH_DISCOUNT if batched else 1.0)

        rows = [(s.stage, s.tally, s.note, batch_cost(s.tally, s.batched)) for s in self.stages]
        batch_total = None if self.price is None else sum(r[3] for r in rows)
        rows.append(("total", self.total, "", batch_total))
        if self.control_growth is not None:
            most = Tally()
            most.add(self.total)
            most.add(self.control_growth)
            growth = batch_cost(self.control_growth, True)
            rows.append(
                (
                    "total at most",
                    most,
                    "the shuffle control grown to every feature",
                    None if growth is None else batch_total + growth,
                )
            )
        width = max(len(r[0]) for r in rows)
        out = [
            f"cost estimate for run {self.run_id}, judge {self.judge} at {price}; no call made",
            f"  {'stage':<{width}}  {'calls':>9}  {'prompt tokens':>14}  {'completion tokens':>17}"
            f"  {'cost':>10}  {'with --batch':>12}",
        ]
        for stage, t, note, batched in rows:
            out.append(
                f"  {stage:<{width}}  {t.calls:>9,}  {t.prompt_tokens:>14,}  {t.completion_tokens:>17,}"
                f"  {money(self.cost(t)):>10}  {money(batched):>12}" + (f"  ({note})" if note else "")
            )
        if self.price is not None:
            out.append(
                "  with --batch: the provider's batch API at half the price (the codebook's calls stay live), answers "
                "within 24 hours"
            )
            out += self.per_million()
        return out

    def per_million(self) -> list[str]:
        """Each judge task's live cost a million features at this price, beside delphi's published figure."""
        rows = [s for s in self.stages if s.task and s.features and s.tally.calls]
        if not rows:
            return []
        out = ["  a million features at this price (no shuffle control; delphi's published figure, GPT-4o mini):"]
        for s in rows:
            per = self.cost(s.tally) / s.features * 1e6
            delphi = DELPHI_PUBLISHED.get(s.task)
            out.append(
                f"    {s.task:<12} ${per:,.0f}  ({s.tally.calls / s.features:.2f} calls, "
                f"{s.tally.prompt_tokens / s.features:,.0f} prompt tokens a feature)"
                + (f"  delphi ${delphi:,}" if delphi else "")
            )
        return out


async def estimate_costs(
    store: Store,
    run_id: str,
    judge_config: LLMConfig,
    explain_cfg: ExplainConfig,
    score_cfg: ScoreConfig,
    *,
    explain_stage: bool = True,
    score_stage: bool = True,
    explainer: str | None = None,
    codebook_batch: int | None = None,
    prompt_dir: str | None = None,
) -> CostEstimate:
    """What explain, score (with its shuffle control) and, with codebook_batch, a codebook saturation
    of run_id would cost with judge_config, from the prompts rendered on the stored data."""
    client = MeteringClient(judge_config)
    judge = LLMJudge(client, judge_config, load_prompts(prompt_dir))
    out = CostEstimate(run_id, judge_config.name, judge_config.price())
    explainer = explainer or judge_config.name
    stored = store.explanations(run_id, explainer)
    labels = {int(r.feature): r.label for r in stored.itertuples() if r.status == "ok"}
    if explain_stage:
        cfg = explain_cfg.for_judge(judge_config.provider)
        routes = None
        if cfg.triage is not None:  # as explain does: the token route costs no call
            every = select_features(store, run_id, replace(cfg, sample=None))
            routes = triage(store, run_id, every, explain_cfg, write=False)  # the offline explainer's windows
            if cfg.sample is None:
                labels |= {f: routes.tests.label[f] for f in routes.token if f not in labels}
        chosen = select_features(store, run_id, cfg, exclude=routes.token if routes else ())
        todo = chosen if cfg.redo else [f for f in chosen if f not in labels]
        n_labelled = 0
        for tasks in explain_tasks(store, run_id, todo, cfg):
            for task in tasks:
                await judge.explain(task)
                labels[task.feature] = TYPICAL_LABEL
            n_labelled += len(tasks)
        skipped = len(chosen) - len(todo)
        tally = client.take("explain")
        notes = [f"{skipped:,} labelled earlier, skipped"] if skipped else []
        if routes is not None:
            saved = Tally()
            saved.add(tally, len(routes.token) / max(tally.calls, 1))
            cost = out.cost(saved)
            notes.append(
                f"triage: {len(routes.token):,} of {len(every):,} features keep their token label; "
                f"{len(routes.token):,} calls saved"
                + ("" if cost is None or not tally.calls else f", about ${cost:,.2f}")
            )
        out.stages.append(
            StageEstimate(
                f"explain ({n_labelled:,} features)", tally, "; ".join(notes), task="explain", features=n_labelled
            )
        )
    if score_stage:
        await _score_stages(out, client, judge, store, run_id, labels, score_cfg)
    if codebook_batch:
        codes: list[str] = []
        ordered = [labels[f] for f in sorted(labels)]
        for start in range(0, len(ordered), codebook_batch):
            batch = ordered[start : start + codebook_batch]
            await judge.codebook(batch, codes)
            codes += batch  # the upper bound: each label a category of its own
        out.stages.append(
            StageEstimate(
                "saturate (codebook)",
                client.take("codebook"),
                "every label a new category: an upper bound",
                batched=False,
            )
        )
    return out


async def _score_stages(
    out: CostEstimate,
    client: MeteringClient,
    judge: LLMJudge,
    store: Store,
    run_id: str,
    labels: dict[int, str],
    cfg: ScoreConfig,
) -> None:
    features = select_scored(labels, cfg)
    light = replace(cfg, n_boot=1, n_permutations=1)  # the metrics are not wanted, only the prompts
    asking = [name for name in chosen(cfg.scorers) if SCORERS[name].uses_judge]
    per_scorer: dict[str, Tally] = {}
    for start in range(0, len(features), cfg.chunk):
        part = features[start : start + cfg.chunk]
        held = load_held_out(store, run_id, part, cfg)
        items = [Item(f, labels[f], held[f], f) for f in part if f in held]
        for name in asking:
            await SCORERS[name].score(items, judge, light)
            per_scorer.setdefault(name, Tally()).add(client.take(name))
    n = len(features)
    control = Tally()
    for name in asking:
        tally = per_scorer.get(name, Tally())
        out.stages.append(StageEstimate(f"score {name} ({n:,} features)", tally, task=name, features=n))
        control.add(tally)
    for name in chosen(cfg.scorers):
        if not SCORERS[name].uses_judge:
            out.stages.append(StageEstimate(f"score {name}", Tally(), "no judge calls: runs locally"))
    if cfg.shuffle_control == "none" or n < 2 or not asking:
        return
    if cfg.shuffle_control == "all":
        first, note = n, "every feature against another's label"
    else:
        first = min(cfg.control_start, n)
        note = (
            f"the first batch of {first:,} features; it grows until the gap is known to ±{cfg.control_half_width:g}, "
            f"at most {n:,} features: ×{n / first:.1f}"
            if first < n
            else "every feature: fewer than its first batch"
        )
    scaled = Tally()
    scaled.add(control, first / n)
    out.stages.append(StageEstimate(f"shuffle control ({first:,} features)", scaled, note))
    if first < n:
        out.control_growth = Tally()
        out.control_growth.add(control, (n - first) / n)


def refuse_offline(judge_config: LLMConfig | None) -> LLMConfig:
    if judge_config is None:
        raise AutointerpError(
            "the offline judge makes no LLM calls: there is nothing to estimate",
            "pass the judge you mean to run, e.g. --judge openai --judge-model gpt-4o-mini",
        )
    return judge_config

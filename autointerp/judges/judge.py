"""Judges: write a label for a feature, test a label by detection, fuzzing and simulation, and
merge labels into a codebook (saturation).

One interface (`Judge`), two implementations, chosen by `make_judge`. Every task goes through
`ask(task)`, which reads what to do off the task's row in prompts.TASKS (the built-in tasks
also have names of their own: explain, detect, fuzz, simulate, codebook), so a new task needs
no new method here.

- `LLMJudge` renders a prompt file (see prompts.py), sends it through an `LLMClient` and
  parses the answer. A failed call gives error "api: ...", an unreadable answer
  "parse: ..."; either way value is None and the raw text is kept. There is no
  placeholder label and no default prediction. A provider that runs locally also owns the
  server it talks to (llm/local.py) and stops it on close.
- `OfflineJudge` needs no LLM. It labels a feature by the tokens that most distinguish
  its activating positions, and scores a label by matching the tokens it names (the tasks in
  OFFLINE_PREDICTIONS); it finds the intruder of a group of windows by the tokens they share
  (OFFLINE_LABEL_FREE). Any other task gets an error answer.

Offline label format (readable by people, read back by `label_terms`):

    token "def"                            fires on "def"
    token "def" (also "class", "lambda")   fires on any of them
    "(" after "print"                      fires on "(" when the previous token is "print"
    any token after "def"                  fires on whatever token follows "def" (a syntactic role)

Quoted tokens are JSON strings, stripped of surrounding whitespace and case-folded,
so `" Def"` and `"def"` are one token. For labels in any other wording `label_terms` uses
the quoted strings in it, else its content words.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

from autointerp.config import LLMConfig
from autointerp.errors import AutointerpError
from autointerp.judges.prompts import (
    TASKS,
    ParseError,
    Prompt,
    activation_marks,
    answer_budget,
    answer_schema,
    load_prompts,
)
from autointerp.llm.client import CallStore, LLMClient, Secret
from autointerp.llm.connect import make_client
from autointerp.llm.providers import PROVIDERS
from autointerp.records import (
    CodebookTask,
    DetectionTask,
    ExplainTask,
    FuzzTask,
    JudgeAnswer,
    JudgeTask,
    LabelTask,
    SimulationTask,
    Snippet,
)

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")


class Judge(Protocol):
    """Everything a stage asks of a judge; no stage looks behind it."""

    name: str  # "provider:model": how labels and scores name who made them
    concurrency: int  # how many tasks are worth keeping in flight
    settings: dict  # what decides its answers besides the prompts (model, temperature, ...), stored with results
    reads_views: bool  # whether an explain task's views (activations, contrast, outputs) reach it
    makes_calls: bool  # whether its answers cost calls (an LLM's): triage spares it the token features

    async def check(self) -> None:
        """Raise AutointerpError now if the judge cannot work (bad key, unreachable server)."""

    async def ask(self, task: JudgeTask) -> JudgeAnswer:
        """Any task of prompts.TASKS: the entry point a new scorer's task goes through."""

    async def explain(self, task: ExplainTask) -> JudgeAnswer[str]: ...

    async def detect(self, task: DetectionTask) -> JudgeAnswer[list[bool]]: ...

    async def fuzz(self, task: FuzzTask) -> JudgeAnswer[list[bool]]: ...

    async def simulate(self, task: SimulationTask) -> JudgeAnswer[list[list[int]]]: ...

    async def codebook(self, labels: Sequence[str], codes: Sequence[str]) -> JudgeAnswer[list[str]]:
        """The code of each new label: one of `codes` (the codebook so far) or a new one."""

    def usage(self) -> str | None:
        """What this judge's calls cost so far, as a line for the summary (None: it makes none)."""

    async def aclose(self) -> None: ...


class NamedTasks:
    """The built-in tasks under their own names, each of them `ask`: the stages call these, and a
    judge that treats one task differently overrides just that one."""

    reads_views = True
    makes_calls = True

    async def explain(self, task: ExplainTask) -> JudgeAnswer[str]:
        return await self.ask(task)

    async def detect(self, task: DetectionTask) -> JudgeAnswer[list[bool]]:
        return await self.ask(task)

    async def fuzz(self, task: FuzzTask) -> JudgeAnswer[list[bool]]:
        return await self.ask(task)

    async def simulate(self, task: SimulationTask) -> JudgeAnswer[list[list[int]]]:
        return await self.ask(task)

    async def codebook(self, labels: Sequence[str], codes: Sequence[str]) -> JudgeAnswer[list[str]]:
        return await self.ask(CodebookTask(list(labels), list(codes)))


class LLMJudge(NamedTasks):
    """A judge that asks an LLM. Concurrency, rate limits, retries and caching are the client's."""

    def __init__(
        self,
        client: LLMClient,
        config: LLMConfig,
        prompts: Mapping[str, Prompt],
        on_close: Callable[[], None] | None = None,
    ):
        self.client = client
        self.config = config
        self.name = config.name
        # Through a batch API every task of a chunk is in flight at once: they go out as one batch.
        self.concurrency = config.batch_max_requests if config.batch else config.concurrency
        self.settings = {
            "provider": config.provider,
            "model": config.model,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "structured_output": config.structured_output,
        }
        self._on_close = on_close
        self.prompts = dict(prompts)
        self.settings["prompts"] = {name: prompt.hash for name, prompt in self.prompts.items()}
        self.outcomes: dict[str, Counter] = {}  # task → Counter of "ok" / "parse" / "api" answers

    def failure_rates(self) -> str:
        """Per task: answers that could not be parsed and calls that failed, of all answers."""
        return "; ".join(
            f"{task} {c['parse']}/{sum(c.values())} unparsable" + (f", {c['api']} failed calls" if c["api"] else "")
            for task, c in self.outcomes.items()
        )

    async def check(self) -> None:
        await self.client.check()

    async def ask(self, task: JudgeTask) -> JudgeAnswer:
        form = TASKS[task.prompt]
        shape = form.shape(task)
        return await self._ask(
            task.prompt,
            task.feature,
            form.fields(task),
            lambda text: form.parse(text, **shape),
            answer_schema(task.prompt, **shape),
            answer_budget(task.prompt, **shape),
        )

    def usage(self) -> str | None:
        rates = self.failure_rates()
        return self.client.totals.line() + (f"\nanswers by task: {rates}" if rates else "")

    async def _ask(
        self,
        name: str,
        feature: int | None,
        fields: Mapping[str, object],
        parse: Callable[[str], T],
        schema: dict,
        budget: int,
    ) -> JudgeAnswer[T]:
        prompt = self.prompts[name]
        system, user = prompt.render(**fields)
        c = await self.client.complete(system, user, purpose=name, feature=feature, max_tokens=budget, schema=schema)
        meta = dict(
            prompt_hash=prompt.hash,
            prompt_tokens=c.prompt_tokens or 0,
            completion_tokens=c.completion_tokens or 0,
            cost_usd=c.cost_usd,
            cached=c.cached,
            call_id=c.call_id,
        )
        outcomes = self.outcomes.setdefault(name, Counter())
        if c.error is not None:
            outcomes["api"] += 1
            return JudgeAnswer(None, raw=c.raw, error=f"api: {c.error}", **meta)
        try:
            value = parse(c.text)
        except ParseError as exc:
            outcomes["parse"] += 1
            return JudgeAnswer(None, raw=c.text, error=f"parse: {exc}", **meta)
        outcomes["ok"] += 1
        return JudgeAnswer(value, raw=c.text, **meta)

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        finally:
            if self._on_close is not None:
                self._on_close()


# --- offline labels: terms, matching, reading a label back --------------------------------


@lru_cache(maxsize=1 << 16)  # a vocabulary's worth: the offline judge normalises millions of tokens a run
def norm(token: str) -> str:
    """Matching key of a token: stripped and case-folded; whitespace-only tokens stay as they are."""
    return token.strip().casefold() or token


# The token of a term that names a position, not a token: whatever comes right after `after` (a
# syntactic role such as "the name after def"). NUL never survives tokenization, so no real token is it.
ANY = "\x00any"


# A free-text label's word and a token match when one begins the other and the shorter has this many
# characters: "recursion" reads the token "recurs", "values" the token "value", but "handling" not "hand".
STEM_CHARS = 5


@dataclass(frozen=True)
class Term:
    """A token, optionally only when right after another token (both normalised); with token ANY,
    any token right after `after`. A stem term (a content word of a free-text label, which names a
    word rather than quoting a token) also matches a token it begins or that begins it (STEM_CHARS)."""

    token: str
    after: str | None = None
    stem: bool = False

    def matches(self, keys: Sequence[str], i: int) -> bool:
        return (self.token == ANY or keys[i] == self.token or (self.stem and self._shares_stem(keys[i]))) and (
            self.after is None or (i > 0 and keys[i - 1] == self.after)
        )

    def _shares_stem(self, key: str) -> bool:
        short, long = sorted((key, self.token), key=len)
        return len(short) >= STEM_CHARS and long.startswith(short)

    def describe(self) -> str:
        text = "any token" if self.token == ANY else json.dumps(self.token, ensure_ascii=False)
        return text if self.after is None else f"{text} after {json.dumps(self.after, ensure_ascii=False)}"


def format_label(terms: Sequence[Term]) -> str:
    first, rest = terms[0], terms[1:]
    label = ("token " if first.after is None else "") + first.describe()
    return label + (f" (also {', '.join(t.describe() for t in rest)})" if rest else "")


_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_TERM = re.compile(rf"({_JSON_STRING}|any token)(?:\s+after\s+({_JSON_STRING}))?")
_ALSO_TAIL = re.compile(
    rf"^((?:token )?(?:{_JSON_STRING}|any token)(?: after {_JSON_STRING})?) \(also .*\)$", re.DOTALL
)


def label_headline(label: str) -> str:
    """What a label says of its feature: an offline token label without its "(also …)" tail, the rarer
    tokens it fires on as well; any other label as it is. The report's watch list reads this, so a
    feature firing on "def" is not flagged for naming "fake" among its runners-up."""
    whole = _ALSO_TAIL.match(label)
    return whole.group(1) if whole else label


_OTHER_QUOTES = re.compile(r"(?<!\w)'([^']+)'(?!\w)|`([^`]+)`|“([^”]+)”|‘([^’]+)’")
STOPWORDS = frozenset(
    "a an the of in on at to for by with from and or as is are be it its this that such like "
    "token tokens word words after before also feature fires activates text phrase phrases "
    "mention mentions mentioning reference references related e g".split()
)


# Words that name no content: the stopwords above, pronouns, auxiliaries and the like.
FUNCTION_WORDS = STOPWORDS | frozenset(
    "she her him his them they their there these those then than what which who when where while not "
    "but all any some one can has have had was were been being into onto about over under "
    "i me my we us our you your he if so do does did no yes".split()
)
# Words by which a label names a punctuation mark or white space rather than quoting it.
PUNCTUATION_NAMES = frozenset(
    "punctuation mark marks comma commas period periods full stop stops dot dots colon colons semicolon "
    "semicolons quote quotes quotation apostrophe apostrophes hyphen hyphens dash dashes parenthesis "
    "parentheses bracket brackets brace braces space spaces whitespace newline newlines".split()
)


def names_only_function_tokens(label: str) -> bool:
    """Whether all a label names is punctuation, white space or function words (`token "the"`, `","`,
    "commas"). Such a feature fires on tokens nearly every window holds, so its active windows part
    from its silent ones on a trivial split: a high score says little, and rankings by score put these
    labels after the others."""
    terms = label_terms(label_headline(label))
    words = [w for t in terms for w in (t.token, t.after) if w is not None and w != ANY]
    return bool(words) and all(
        not any(c.isalnum() for c in w) or w in FUNCTION_WORDS or w in PUNCTUATION_NAMES for w in words
    )


def _json_text(quoted: str) -> str:
    try:
        return json.loads(quoted)
    except ValueError:  # an LLM's invalid escape: take the text between the quotes as it is
        return quoted[1:-1]


def _terms_of(text: str) -> list[Term]:
    """One term for a token; one per word for a quoted phrase, which no single token spells."""
    key = norm(text)
    words = key.split()
    return [Term(word) for word in words] if len(words) > 1 else [Term(key)]


def label_terms(label: str) -> list[Term]:
    """The terms a label names: offline-format terms or other double-quoted strings, else
    strings in other quotes, else the label's content words (stem terms)."""
    terms = [
        term
        for tok, after in _TERM.findall(label)
        if after or tok != "any token"
        for term in (
            [Term(ANY if tok == "any token" else norm(_json_text(tok)), norm(_json_text(after)))]
            if after
            else _terms_of(_json_text(tok))
        )
    ]
    if not terms:
        terms = [term for groups in _OTHER_QUOTES.findall(label) for term in _terms_of(next(g for g in groups if g))]
    if not terms:
        terms = [Term(word, stem=True) for word in re.findall(r"\w+", label.casefold()) if word not in STOPWORDS]
    return list(dict.fromkeys(terms))  # unique, in order


def match_positions(tokens: Sequence[str], terms: Iterable[Term]) -> list[bool]:
    keys = [norm(t) for t in tokens]
    # Set lookups by what a term needs (the offline judge reads millions of tokens a run); only stem terms
    # are tried one by one.
    plain, pairs, after_any, stems = set(), set(), set(), []
    for t in terms:
        if t.stem:
            stems.append(t)
        elif t.after is None:
            plain.add(t.token)
        elif t.token == ANY:
            after_any.add(t.after)
        else:
            pairs.add((t.token, t.after))
    previous = [None, *keys[:-1]]
    return [
        key in plain
        or (i > 0 and (prev in after_any or (key, prev) in pairs))
        or any(t.matches(keys, i) for t in stems)
        for i, (key, prev) in enumerate(zip(keys, previous))
    ]


def marks_correct(tokens: Sequence[str], marked: Sequence[bool], terms: Iterable[Term]) -> bool:
    """Marks are right when at least half of the marked tokens are ones the label names
    (half, not all: a mark can spill onto a neighbouring token)."""
    hits = [m for m, marked_here in zip(match_positions(tokens, terms), marked) if marked_here]
    return bool(hits) and 2 * sum(hits) >= len(hits)


# --- offline explanation: smoothed log-odds of terms at activating positions --------------

SMOOTHING = 1.0  # add-α pseudo-count on each side: a term seen once cannot outrank a steady one
MIN_LOG_ODDS = 2.0  # below this a term is not distinctive enough to name
EXTRA_FRACTION = 0.5  # an "also" term needs this share of the first term's log-odds
MAX_EXTRAS = 3
CONTEXT_MARGIN = 1.0  # "x after y" must beat plain "x" by this much (nats) to be worth saying


def _term_counts(snippets: Iterable[Snippet]) -> tuple[Counter, Counter, float, float]:
    """Per term: activation-weighted count at activating positions, count at the others; and the totals."""
    active: Counter = Counter()
    inactive: Counter = Counter()
    n_active = n_inactive = 0.0
    for snippet in snippets:
        keys = [norm(t) for t in snippet.tokens]
        values = snippet.values()
        top = max(values, default=0.0)
        for i, (key, fires) in enumerate(zip(keys, activation_marks(snippet))):
            terms = [Term(key)] + ([Term(key, keys[i - 1]), Term(ANY, keys[i - 1])] if i else [])
            if fires:
                weight = values[i] / top  # the snippet's peak counts most
                n_active += weight
                for term in terms:
                    active[term] += weight
            else:
                n_inactive += 1
                for term in terms:
                    inactive[term] += 1
    return active, inactive, n_active, n_inactive


def term_scores(snippets: Sequence[Snippet], negatives: Sequence[Snippet]) -> dict[Term, float]:
    """Smoothed log-odds ratio, activating vs other positions, of each term seen at an
    activating position. The other positions are the snippets' own plus the negatives'."""
    active, inactive, n_a, n_i = _term_counts([*snippets, *negatives])
    a = SMOOTHING
    return {
        term: math.log((y_a + a) / (n_a - y_a + a)) - math.log((inactive[term] + a) / (n_i - inactive[term] + a))
        for term, y_a in active.items()
    }


def _overlap(a: Term, b: Term) -> bool:
    """Whether b says again what a says: "x" and "x after y", "any token after y" and "x after y"."""
    return a.after == b.after if ANY in (a.token, b.token) else a.token == b.token


def explain_terms(snippets: Sequence[Snippet], negatives: Sequence[Snippet]) -> list[Term]:
    """The label's terms, best first; empty when no position fires."""
    scores = term_scores(snippets, negatives)
    # Context is said only when it pays: otherwise "x after y" loses to plain "x", and "any token
    # after y" (a position many different tokens fill) to the best "x after y".
    specific: dict[str, float] = {}
    for term, score in scores.items():
        if term.after is not None and term.token != ANY:
            specific[term.after] = max(score, specific.get(term.after, -math.inf))
    candidates = {
        term: score
        for term, score in scores.items()
        if term.after is None
        or score
        > (specific.get(term.after, -math.inf) if term.token == ANY else scores[Term(term.token)]) + CONTEXT_MARGIN
    }
    ranked = sorted(candidates, key=lambda t: (-candidates[t], t.token, t.after or ""))
    if not ranked:
        return []
    chosen = [ranked[0]]
    floor = max(MIN_LOG_ODDS, EXTRA_FRACTION * candidates[ranked[0]])
    for term in ranked[1:]:
        if len(chosen) > MAX_EXTRAS or candidates[term] < floor:
            break
        if not any(_overlap(term, c) for c in chosen):
            chosen.append(term)
    return chosen


# What the offline judge predicts for each label-testing task (records.LabelTask), from the terms
# its label names; a task missing here gets an error answer from it.
OFFLINE_PREDICTIONS: dict[str, Callable[[Any, list[Term]], object]] = {
    "detection": lambda task, terms: [any(match_positions(s.tokens, terms)) for s in task.snippets],
    "fuzzing": lambda task, terms: [marks_correct(m.snippet.tokens, m.marked, terms) for m in task.snippets],
    "simulation": lambda task, terms: [
        [10 if hit else 0 for hit in match_positions(s.tokens, terms)] for s in task.snippets
    ],
}


def find_intruders(groups: Sequence[Sequence[Snippet]]) -> list[int]:
    """Each group's intruder (1-based), by the tokens the groups share. The feature's signature is the
    token most often held by all but one window of a group; in each group the window lacking the best
    such token is named, else the window sharing the fewest tokens with the rest (tokens every window
    holds say nothing)."""
    keys = [[{norm(t) for t in s.tokens} for s in group] for group in groups]
    held = [Counter(k for window in group for k in window) for group in keys]
    signature = Counter(k for group, h in zip(keys, held) for k, c in h.items() if c == len(group) - 1)
    out = []
    for group, h in zip(keys, held):
        lacking = [k for k, c in h.items() if c == len(group) - 1]
        if lacking:
            best = max(lacking, key=lambda k: (signature[k], k))
            out.append(1 + next(i for i, window in enumerate(group) if best not in window))
            continue
        shared = [sum(h[k] - 1 for k in window if h[k] < len(group)) for window in group]
        out.append(1 + min(range(len(group)), key=shared.__getitem__))
    return out


# What the offline judge answers to the tasks that carry no label, from the task alone.
OFFLINE_LABEL_FREE: dict[str, Callable[[Any], object]] = {"intruder": lambda task: find_intruders(task.groups)}


class OfflineJudge(NamedTasks):
    """Deterministic token-statistics judge; see the module docstring for its label format."""

    name = "offline:token-stats-v1"
    concurrency = 1  # pure computation: nothing to overlap
    reads_views = False  # token statistics of the examples and negatives only
    makes_calls = False  # it writes the token label itself: nothing for triage to save
    settings = {"provider": "offline", "model": "token-stats-v1"}

    async def check(self) -> None:
        """Nothing can be missing."""

    async def codebook(self, labels: Sequence[str], codes: Sequence[str]) -> JudgeAnswer[list[str]]:
        raise AutointerpError(
            "saturation method 'codebook' needs an LLM judge",
            "pass --judge local|openai|anthropic|openai_compatible, or use --method embedding, which runs offline",
        )

    def usage(self) -> str | None:
        return None

    async def explain(self, task: ExplainTask) -> JudgeAnswer[str]:
        terms = explain_terms(task.snippets, task.negatives)
        if not terms:
            return JudgeAnswer(None, raw="", error="offline: no token of the snippets is active")
        label = format_label(terms)
        return JudgeAnswer(label, raw=label)

    async def ask(self, task: JudgeTask) -> JudgeAnswer:
        if isinstance(task, ExplainTask):
            return await self.explain(task)
        if isinstance(task, CodebookTask):
            return await self.codebook(task.labels, task.codes)
        if (answer := OFFLINE_LABEL_FREE.get(task.prompt)) is not None:
            value = answer(task)
            return JudgeAnswer(value, raw=json.dumps(value))
        predict = OFFLINE_PREDICTIONS.get(task.prompt)
        if predict is None or not isinstance(task, LabelTask):
            return JudgeAnswer(None, raw="", error=f"offline: the offline judge cannot answer '{task.prompt}' tasks")
        return self._answer(task.label, lambda terms: predict(task, terms))

    def _answer(self, label: str, predict: Callable[[list[Term]], T]) -> JudgeAnswer[T]:
        terms = label_terms(label)
        if not terms:  # predicting from nothing would be a default answer in disguise
            return JudgeAnswer(None, raw="", error=f"offline: the label {label!r} names no tokens")
        value = predict(terms)
        return JudgeAnswer(value, raw=json.dumps(value))

    async def aclose(self) -> None:
        """Nothing to release."""


async def map_bounded(fn: Callable[[A], Awaitable[R]], items: Sequence[A], limit: int) -> list[R]:
    """fn over items with at most `limit` in progress, results in order.

    A pool of workers rather than one coroutine per item: a judge renders a prompt when a
    worker picks its task up, right before the request, instead of rendering thousands of
    prompts before the first request leaves.
    """
    results: list = [None] * len(items)
    queue = iter(enumerate(items))  # shared by the workers; safe, as they run in one thread

    async def worker() -> None:
        for i, item in queue:
            results[i] = await fn(item)

    await asyncio.gather(*(worker() for _ in range(max(1, min(limit, len(items))))))
    return results


def make_judge(
    config: LLMConfig | None,
    store: CallStore,
    *,
    prompt_dir: str | Path | None = None,
    keys: Mapping[str, Secret] | None = None,
    server_log: Path | None = None,
) -> Judge:
    """The offline judge when no LLM is configured, else an LLMJudge over make_client(config, store, keys).
    A provider that runs locally first assembles and checks its model and starts its server (log in server_log)."""
    if config is None:
        return OfflineJudge()
    prompts = load_prompts(prompt_dir)  # a broken prompt file fails before any call is paid for
    if not PROVIDERS[config.provider].runs_locally:
        return LLMJudge(make_client(config, store, keys), config, prompts)
    from dataclasses import replace

    from autointerp.llm.local import LocalServer, model_path

    server = LocalServer(
        model_path(),
        alias=config.model,
        log_path=server_log or Path("local-judge.log"),
        threads=config.local_threads,
        context=config.local_context,
    ).start()
    try:
        served = replace(config, base_url=None)
        served.base_url = server.base_url  # set after validation: a managed server refuses a user-given base URL
        client = make_client(served, store, keys, fatal=server.died)
        return LLMJudge(client, config, prompts, on_close=server.stop)
    except BaseException:
        server.stop()
        raise

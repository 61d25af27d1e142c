"""Typed records that stages pass through the store: snippets in, labels and judgements out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Snippet:
    """One stored window of one feature, ready to show a judge.

    `tokens` are display pieces: joining them gives readable text (leading spaces kept,
    BERT '##' continuations glued). `activations` is None for verified negatives,
    whose every activation is 0.
    """

    feature: int
    split: str  # "explain" | "score"
    kind: str  # "top" | "quantile" | "negative"
    context_id: int
    tokens: tuple[str, ...]
    activations: tuple[float, ...] | None
    max_activation: float
    quantile: int | None = None

    @property
    def active(self) -> bool:
        return self.kind != "negative"

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def values(self) -> tuple[float, ...]:
        return self.activations if self.activations is not None else (0.0,) * len(self.tokens)


@dataclass
class FeatureSnippets:
    """Everything stored about one feature that the explain and score stages use."""

    feature: int
    max_activation: float  # over the whole corpus: normalises activations to 0–10
    density: float
    explain: list[Snippet] = field(default_factory=list)  # activating, explain split
    explain_negatives: list[Snippet] = field(default_factory=list)
    score: list[Snippet] = field(default_factory=list)  # activating, score split
    score_negatives: list[Snippet] = field(default_factory=list)


@dataclass(frozen=True)
class MarkedSnippet:
    """A snippet shown with some tokens marked <<like this>>, for fuzzing."""

    snippet: Snippet
    marked: tuple[bool, ...]
    correct: bool  # True when the marks are the real activating tokens


class JudgeTask:
    """Something a judge is asked. `prompt` names the task: its prompt file, its row in
    judges.prompts.TASKS (what the prompt is filled with and the answer's format) and the purpose
    its calls are logged under."""

    prompt: ClassVar[str]
    feature: int | None


@dataclass
class ExplainTask(JudgeTask):
    prompt: ClassVar[str] = "explain"
    feature: int
    snippets: list[Snippet]  # activating explain-split snippets
    negatives: list[Snippet]  # explain-split negatives (contrast for judges that use it)
    max_activation: float
    views: tuple[str, ...] = ()  # what the prompt shows beside the examples (config.EXPLAIN_VIEWS)
    contrast: list[Snippet] = field(default_factory=list)  # silent windows holding its frequent tokens
    outputs: dict[str, list[str]] = field(default_factory=dict)  # effect kind → tokens, causal LMs


@dataclass
class LabelTask(JudgeTask):
    """Test a label: from the label alone the judge predicts something about each snippet."""

    feature: int
    label: str
    snippets: list


@dataclass
class DetectionTask(LabelTask):
    prompt: ClassVar[str] = "detection"
    snippets: list[Snippet]  # activating and negative, shuffled; the judge sees no activations


@dataclass
class FuzzTask(LabelTask):
    prompt: ClassVar[str] = "fuzzing"
    snippets: list[MarkedSnippet]


@dataclass
class SimulationTask(LabelTask):
    prompt: ClassVar[str] = "simulation"
    snippets: list[Snippet]  # the judge predicts 0–10 per token


@dataclass
class IntruderTask(JudgeTask):
    """No label: in each group of windows the feature is active in all but one, the intruder; the
    judge names the intruder of each group (1-based)."""

    prompt: ClassVar[str] = "intruder"
    feature: int
    groups: list[list[Snippet]]


@dataclass
class CodebookTask(JudgeTask):
    """The code of each new label: one of `codes` (the codebook so far) or a new one."""

    prompt: ClassVar[str] = "codebook"
    labels: list[str]
    codes: list[str]
    feature: None = None  # about no one feature


@dataclass
class JudgeAnswer(Generic[T]):
    """A judge's answer: a parsed value, or an error, never both.

    error is set when the call failed or the response could not be parsed; the raw
    response is kept either way. A failed answer is never counted as a prediction.
    """

    value: T | None
    raw: str
    error: str | None = None
    prompt_hash: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    cached: bool = False
    call_id: int | None = None  # the logged LLM call behind the answer

    @property
    def ok(self) -> bool:
        return self.error is None and self.value is not None


def vocab_style(vocab: list[str]) -> str:
    """'wordpiece' (BERT '##'), 'bytelevel' (GPT-2 'Ġ') or 'sentencepiece' ('▁'), read off the vocabulary."""
    sample = vocab[:50_000]
    counts = {
        "wordpiece": sum(t.startswith("##") for t in sample),
        "bytelevel": sum("Ġ" in t for t in sample),
        "sentencepiece": sum("▁" in t for t in sample),
    }
    return max(counts, key=counts.get)


def piece_tables(vocab: list[str], style: str) -> tuple[list[str], list[str]]:
    """Per token id, its readable piece at the start of a snippet and anywhere else
    (they differ for WordPiece, where a word after the first gets a leading space)."""
    if style == "wordpiece":
        first = [t[2:] if t.startswith("##") else t for t in vocab]
        return first, [t[2:] if t.startswith("##") else " " + t for t in vocab]
    if style == "bytelevel":
        pieces = [t.replace("Ġ", " ").replace("Ċ", "\n").replace("ĉ", "\t") for t in vocab]
    else:
        pieces = [t.replace("▁", " ") for t in vocab]
    return pieces, pieces


def text_pieces(text: str, ends: list[int]) -> tuple[str, ...]:
    """A window's tokens as the characters each owns in its source text (gather/text.py): they join back
    to the text exactly, case, spaces and whole words included."""
    return tuple(text[a:b] for a, b in zip([0, *ends[:-1]], ends))

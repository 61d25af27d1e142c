"""Prompt templates, the text that goes into them, and the parsers for what comes back.

Templates are files, one per task, shipped inside the package (`autointerp.prompt_files`, the
repository's `prompts/` folder) or in a folder of your own (`directory=`). A file is UTF-8 text:

    version: 1
    # comment lines may follow the version line
    === system ===
    the system message
    === user ===
    the user message, with {placeholders}

`{name}` is filled by `Prompt.render` when `name` is one of the task's fields (TASKS); any other
brace is literal. `Prompt.hash` is the SHA-256 of the file's bytes, stored with every
answer so results from edited prompts never mix silently with the originals.

Text shown to a judge: tokens are joined into text with newlines written as `\\n`, and
marked tokens are wrapped `<<like this>>` (adjacent ones share one span; a span's leading
whitespace stays outside it). Explain marks every token whose activation is at least
MARK_FRACTION of its snippet's max. The shipped prompts fence corpus text between `<corpus>` and
`</corpus>` lines and tell the judge it is data; a closing tag inside the text, written by
the corpus or formed by a mark, is defused (`<\\/corpus>`), so corpus text never leaves the fence.

Answer formats: JSON, one schema per task (`answer_schema`), which judges with structured output
send as the response format so the answer cannot take another shape. Parsers raise ParseError,
never return a default:
- explain: {"label": "..."}; without one, a line `Label: ...` is read too (markdown and enclosing
  quotes stripped). Empty or longer than LABEL_MAX_CHARS is an error.
- detection, fuzzing: {"answers": [0/1 (or true/false), one per snippet]}.
- simulation: {"activations": [one list per snippet of integers 0–10, one per token]}.
- intruder: {"intruders": [one number per group: the snippet, 1-based, that does not belong]}.
- codebook: {"codes": [one string per new label]}.
The first answer of the right shape wins (the first JSON list, or the first label object, else the
first `Label:` line), so code fences, prose or a bare list around it are fine, and a later one (the
judge quoting text from the corpus, where anyone may have written `{"label": ...}`) is ignored.

A task is a row of TASKS, named like its prompt file: a new one is a row here (its fields and its
answer's format) and a file in the prompt folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from itertools import groupby
from pathlib import Path
from typing import Any, TypeVar

from autointerp.errors import AutointerpError
from autointerp.records import DetectionTask, ExplainTask, FuzzTask, IntruderTask, SimulationTask, Snippet

T = TypeVar("T")

DEFAULT_DIR = Path(str(files("autointerp.prompt_files")))

MARK_FRACTION = 0.3  # a token is marked when its activation is ≥ this × its snippet's max
LABEL_MAX_CHARS = 200

_SYSTEM_MARKER = "=== system ==="
_USER_MARKER = "=== user ==="
_VERSION = re.compile(r"version:\s*(\S+)\s*$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    system: str
    user: str  # template with {placeholders}
    hash: str  # SHA-256 of the file's bytes
    path: Path

    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.system)) | set(_PLACEHOLDER.findall(self.user))

    def render(self, **fields: object) -> tuple[str, str]:
        """(system, user) with every {placeholder} replaced by its field."""

        def fill(match: re.Match) -> str:
            if match.group(1) not in fields:
                raise AutointerpError(
                    f"prompt {self.path} uses {{{match.group(1)}}}, which is not a field of '{self.name}'",
                    f"use only {', '.join(sorted(fields))} in that file",
                )
            return str(fields[match.group(1)])

        return _PLACEHOLDER.sub(fill, self.system), _PLACEHOLDER.sub(fill, self.user)


def load_prompt(name: str, directory: str | Path | None = None) -> Prompt:
    """Read and check `<directory>/<name>.txt` (directory defaults to the shipped prompts)."""
    path = Path(directory or DEFAULT_DIR) / f"{name}.txt"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AutointerpError(
            f"cannot read prompt file {path}: {exc.strerror}",
            f"copy {DEFAULT_DIR / (name + '.txt')} there, or leave prompt_dir unset to use the shipped prompts",
        ) from None

    def invalid(problem: str) -> AutointerpError:
        return AutointerpError(
            f"prompt file {path} is invalid: {problem}",
            f"follow the layout in {DEFAULT_DIR / 'README.md'}: a 'version: N' line, then '{_SYSTEM_MARKER}' and "
            f"'{_USER_MARKER}' lines, each followed by its text",
        )

    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise invalid("not UTF-8 text") from None
    version = _VERSION.match(lines[0].strip()) if lines else None
    if version is None:
        raise invalid("the first line is not 'version: N'")
    if lines.count(_SYSTEM_MARKER) != 1 or lines.count(_USER_MARKER) != 1:
        raise invalid(f"it needs exactly one '{_SYSTEM_MARKER}' line and one '{_USER_MARKER}' line")
    s, u = lines.index(_SYSTEM_MARKER), lines.index(_USER_MARKER)
    if u < s:
        raise invalid("the user part comes before the system part")
    if not all(line.startswith("#") or not line.strip() for line in lines[1:s]):
        raise invalid("between the version line and the system part only '#' comment lines may stand")
    system, user = "\n".join(lines[s + 1 : u]).strip("\n"), "\n".join(lines[u + 1 :]).strip("\n")
    if not system.strip() or not user.strip():
        raise invalid("the system or the user part is empty")
    prompt = Prompt(name, version.group(1), system, user, hashlib.sha256(data).hexdigest(), path)
    if (task := TASKS.get(name)) is not None:
        used = prompt.placeholders()
        if unknown := used - task.placeholders:
            raise invalid(f"unknown placeholders {sorted(unknown)}; '{name}' has {sorted(task.placeholders)}")
        if missing := task.required - used:
            raise invalid(f"it never uses {sorted(missing)}, so the judge would not see them")
    return prompt


def load_prompts(directory: str | Path | None = None) -> dict[str, Prompt]:
    """Every task's prompt, checked (so a broken file fails before any call is paid for)."""
    return {name: load_prompt(name, directory) for name in PROMPT_NAMES}


# --- the shape of each answer ------------------------------------------------------------

_BIT = {"enum": [0, 1]}
_LEVEL = {"enum": list(range(11))}  # llama.cpp's grammars honour enums, not integer bounds


def _exactly(items: dict, n: int) -> dict:
    return {"type": "array", "items": items, "minItems": n, "maxItems": n}


def _label_value() -> dict:
    return {"type": "string", "minLength": 1, "maxLength": LABEL_MAX_CHARS}


def _activation_rows(lengths: Sequence[int]) -> dict:
    rows = [_exactly(_LEVEL, k) for k in lengths]
    return {"type": "array", "prefixItems": rows, "items": False, "minItems": len(rows), "maxItems": len(rows)}


def answer_schema(name: str, **shape: object) -> dict:
    """The JSON schema of a task's answer; `shape` is its size (TaskFormat.shape: n snippets or labels,
    or lengths, the tokens of each simulated snippet)."""
    task = TASKS[name]
    return {
        "type": "object",
        "properties": {task.answer_key: task.answer_value(**shape)},
        "required": [task.answer_key],
        "additionalProperties": False,
    }


def answer_budget(name: str, **shape: object) -> int:
    """Completion tokens a task's answer may take: twice its size, for models that wrap it in a
    code fence or a sentence. A model that loops stops here instead of at the configured bound."""
    return 2 * TASKS[name].answer_size(**shape) + 32


# --- what goes in ----------------------------------------------------------------------


def activation_marks(snippet: Snippet) -> tuple[bool, ...]:
    """Which tokens reach MARK_FRACTION of the snippet's max (none when it never fires)."""
    values = snippet.values()
    top = max(values, default=0.0)
    # The relative slack keeps a token exactly at the threshold marked despite rounding.
    return tuple(top > 0 and a >= MARK_FRACTION * top * (1 - 1e-9) for a in values)


def normalise(activation: float, feature_max: float) -> int:
    """min(10, floor(10·a/max)), clamped at 0: OpenAI's and delphi's 0–10 scale."""
    if feature_max <= 0:
        return 0
    return max(0, min(10, math.floor(10 * activation / feature_max + 1e-9)))


_FENCE_CLOSE = re.compile(r"</(corpus)", re.IGNORECASE)


def _escape(token: str) -> str:
    return token.replace("\r", "\\r").replace("\n", "\\n")


def fenced(text: str) -> str:
    """Corpus text as it may stand inside the prompt's <corpus> fence: unable to close it."""
    return _FENCE_CLOSE.sub(r"<\\/\1", text)


def mark_text(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """The snippet as one line, marked runs of tokens wrapped in one <<...>> each."""
    out: list[str] = []
    i = 0
    for mark, run in groupby(marked):
        n = len(list(run))
        text = _escape("".join(tokens[i : i + n]))  # one escape per run, not per token: prompts are hot
        i += n
        if not mark:
            out.append(text)
            continue
        body = text.lstrip()  # a run's leading space stays outside the marks
        out.append(f"{text[: len(text) - len(body)]}<<{body}>>" if body else f"<<{text}>>")
    return fenced("".join(out))  # after marking: a mark before "/corpus" would form the closing tag


def _quoted(token: str) -> str:
    return fenced(json.dumps(token, ensure_ascii=False))


FREQUENT = 5  # the most often marked tokens listed under the examples


# How the outputs view words each kind of output effect (subject/effects.py).
OUTPUT_WORDS = {
    "promoted": "its direction promotes",
    "suppressed": "it suppresses",
    "amplified": "amplified, it makes the model likelier to say",
}


def explain_fields(task: ExplainTask) -> dict[str, object]:
    """examples: numbered examples with their marks; with the activations view, each followed by its
    marked tokens and their activations 0-10 (scaled by the feature's max). frequent: the marked
    tokens that recur most often (stripped, case-folded), a hint small models need. contrast: with
    that view, the silent windows holding those tokens, fenced as corpus text. outputs: with that view,
    the tokens the feature writes. A view with nothing to show renders as nothing."""
    blocks = []
    counts: Counter = Counter()
    activations = "activations" in task.views
    for k, snippet in enumerate(task.snippets, 1):
        marks = activation_marks(snippet)
        counts.update(t.strip().casefold() for t, m in zip(snippet.tokens, marks) if m and t.strip())
        block = f"Example {k}: {mark_text(snippet.tokens, marks)}"
        if activations:
            listed = [
                f"{_quoted(tok)} {normalise(a, task.max_activation)}"
                for tok, a, m in zip(snippet.tokens, snippet.values(), marks)
                if m
            ]
            block += f"\nActivations: {', '.join(listed) or 'none'}"
        blocks.append(block)
    frequent = ", ".join(_quoted(t) for t, _ in counts.most_common(FREQUENT)) or "none"
    contrast = ""
    if task.contrast:
        lines = "\n".join(
            f"Silent {k}: {mark_text(s.tokens, [False] * len(s.tokens))}" for k, s in enumerate(task.contrast, 1)
        )
        contrast = (
            f"\nThe feature stays silent on these, though they hold the same tokens:\n<corpus>\n{lines}\n</corpus>\n"
        )
    said = [
        f"{OUTPUT_WORDS.get(kind, kind)} {', '.join(_quoted(t) for t in tokens)}"
        for kind, tokens in task.outputs.items()
        if tokens
    ]
    outputs = f"\nWhat the feature writes: {'; '.join(said)}." if said else ""
    return {
        "examples": ("\n\n" if activations else "\n").join(blocks),
        "frequent": frequent,
        "contrast": contrast,
        "outputs": outputs,
    }


def detection_fields(task: DetectionTask) -> dict[str, object]:
    lines = [f"{k}. {mark_text(s.tokens, [False] * len(s.tokens))}" for k, s in enumerate(task.snippets, 1)]
    return {"label": task.label, "snippets": "\n".join(lines), "n": len(task.snippets)}


def fuzzing_fields(task: FuzzTask) -> dict[str, object]:
    lines = [f"{k}. {mark_text(m.snippet.tokens, m.marked)}" for k, m in enumerate(task.snippets, 1)]
    return {"label": task.label, "snippets": "\n".join(lines), "n": len(task.snippets)}


def intruder_fields(task: IntruderTask) -> dict[str, object]:
    blocks = [
        f"Group {g}:\n"
        + "\n".join(f"{k}. {mark_text(s.tokens, [False] * len(s.tokens))}" for k, s in enumerate(group, 1))
        for g, group in enumerate(task.groups, 1)
    ]
    sizes = {len(group) for group in task.groups}
    return {"groups": "\n\n".join(blocks), "n": len(task.groups), "k": max(sizes, default=0)}


def codebook_fields(labels: Sequence[str], codes: Sequence[str]) -> dict[str, object]:
    return {
        "codebook": "\n".join(f"- {code}" for code in codes) or "(empty)",
        "labels": "\n".join(f"{k}. {label}" for k, label in enumerate(labels, 1)),
        "n": len(labels),
    }


def simulation_fields(task: SimulationTask) -> dict[str, object]:
    lines = [
        f"Snippet {k} ({len(s.tokens)} tokens): " + " ".join(f"{i}:{_quoted(t)}" for i, t in enumerate(s.tokens, 1))
        for k, s in enumerate(task.snippets, 1)
    ]
    return {"label": task.label, "snippets": "\n".join(lines), "n": len(task.snippets)}


# --- what comes back -------------------------------------------------------------------


class ParseError(ValueError):
    """The judge's answer does not have the asked-for format."""


def _unwrap(text: str) -> str:
    """Strip markdown emphasis and code marks around the label, and one pair of enclosing
    quotes (only when no inner quote of that kind would be left unpaired)."""
    text = text.strip().strip("*").strip()  # bold/italic asterisks, balanced or not
    changed = True
    while changed:
        changed = False
        for w in ("__", "`", "_"):
            if len(text) > 2 * len(w) and text.startswith(w) and text.endswith(w):
                text, changed = text[len(w) : -len(w)].strip(), True
    for q_open, q_close in ('""', "''", "“”", "‘’"):
        if len(text) >= 2 and text[0] == q_open and text[-1] == q_close and q_open not in text[1:-1]:
            text = text[1:-1].strip()
    return text


def _check_label(label: str) -> str:
    if not label:
        raise ParseError("the label is empty")
    if len(label) > LABEL_MAX_CHARS:
        raise ParseError(f"the label has {len(label)} characters, more than {LABEL_MAX_CHARS}")
    return label


def parse_label(text: str) -> str:
    """The label of the first {"label": ...} object whose label is valid (not empty, not too long),
    else of the first line starting 'Label:'. A later object or line is ignored: a judge may quote
    corpus text, and corpus text may hold a label of its own."""
    labels = [v["label"] for v in _json_values(text, "{") if isinstance(v, dict) and isinstance(v.get("label"), str)]
    if labels:
        return _first_valid(labels, lambda label: _check_label(_unwrap(label)))
    lines = text.splitlines()
    for i in range(len(lines)):
        line = lines[i].strip().lstrip("#>-*_ ")
        if not line.lower().startswith("label:"):
            continue
        label = _unwrap(line[len("label:") :])
        if not label:  # "Label:" alone on its line: the label may follow on the next one
            label = _unwrap(next((rest for rest in lines[i + 1 :] if rest.strip()), ""))
        return _check_label(label)
    raise ParseError('no {"label": ...} object and no line starting with "Label:"')


def _json_values(text: str, opener: str) -> list:
    """Every top-level JSON value starting with `opener` ('[' or '{') in the text, in order
    (code fences and prose around them ignored)."""
    decoder = json.JSONDecoder()
    found = []
    i = text.find(opener)
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find(opener, i + 1)
            continue
        found.append(value)
        i = text.find(opener, end)
    return found


def _json_lists(text: str) -> list[list]:
    """Every top-level JSON list in the text: a bare one, or one inside an answer object."""
    return [v for v in _json_values(text, "[") if isinstance(v, list)]


def _first_valid(values: list, check: Callable[[Any], T]) -> T:
    """The first value that passes `check`; else the reason the first one fails."""
    error = None
    for value in values:
        try:
            return check(value)
        except ParseError as exc:
            error = error or exc
    raise error


def _first_valid_list(text: str, check: Callable[[list], T]) -> T:
    """The first JSON list in the text that passes `check` (later ones, such as quoted corpus text,
    are ignored); else the reason the first list fails."""
    lists = _json_lists(text)
    if not lists:
        raise ParseError("no JSON list in the answer")
    return _first_valid(lists, check)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_binary_list(text: str, n: int) -> list[bool]:
    def check(value: list) -> list[bool]:
        if len(value) != n:
            raise ParseError(f"expected a list of {n} 0/1 values, got {len(value)} values")
        if not all((_is_int(v) or isinstance(v, bool)) and v in (0, 1) for v in value):
            raise ParseError("the list holds values other than 0 and 1")
        return [bool(v) for v in value]

    return _first_valid_list(text, check)


def parse_simulation(text: str, lengths: Sequence[int]) -> list[list[int]]:
    def check(value: list) -> list[list[int]]:
        if len(value) != len(lengths):
            raise ParseError(f"expected {len(lengths)} lists (one per snippet), got {len(value)}")
        for k, (row, n) in enumerate(zip(value, lengths), 1):
            if not isinstance(row, list) or len(row) != n:
                raise ParseError(f"snippet {k} has {n} tokens but its answer is not a list of {n} numbers")
            if not all(_is_int(v) and 0 <= v <= 10 for v in row):
                raise ParseError(f"snippet {k}'s answer holds values that are not integers 0–10")
        return [list(row) for row in value]

    return _first_valid_list(text, check)


def parse_choices(text: str, sizes: Sequence[int]) -> list[int]:
    """One 1-based choice per group, each within its group's size."""

    def check(value: list) -> list[int]:
        if len(value) != len(sizes):
            raise ParseError(f"expected a list of {len(sizes)} numbers (one per group), got {len(value)} values")
        if not all(_is_int(v) and 1 <= v <= k for v, k in zip(value, sizes)):
            raise ParseError("the list holds values that are not the number of a snippet in its group")
        return [int(v) for v in value]

    return _first_valid_list(text, check)


def parse_codebook(text: str, n: int) -> list[str]:
    """The codebook answer: a JSON list of n non-empty strings (in {"codes": [...]}), the code of
    each new label in order (surrounding whitespace stripped). Codes longer than LABEL_MAX_CHARS are
    an error: a judge that pastes whole paragraphs is not merging."""

    def check(value: list) -> list[str]:
        if len(value) != n:
            raise ParseError(f"expected a list of {n} codes, got {len(value)} values")
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise ParseError("the list holds values that are not non-empty strings")
        if any(len(v.strip()) > LABEL_MAX_CHARS for v in value):
            raise ParseError(f"a code is longer than {LABEL_MAX_CHARS} characters")
        return [v.strip() for v in value]

    return _first_valid_list(text, check)


# --- the tasks -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFormat:
    """One judge task's side of its prompt file: the fields it fills in and the shape of the answer.

    `shape(task)` is the answer's size as keyword arguments (none, `n` or `lengths`), passed on to
    `answer_value`, `answer_size` and `parse`."""

    placeholders: frozenset[str]  # the fields a prompt file may use
    required: frozenset[str]  # the fields it must use, or the judge would not see them
    fields: Callable[[Any], dict[str, object]]  # task → the text of each field
    shape: Callable[[Any], dict[str, Any]]
    answer_key: str  # the answer object's one property
    answer_value: Callable[..., dict]  # shape → the JSON schema of its value
    answer_size: Callable[..., int]  # shape → tokens of the bare answer
    parse: Callable[..., Any]  # (text, **shape) → the value; ParseError when it has another shape


def _snippet_count(task: Any) -> dict[str, Any]:
    return {"n": len(task.snippets)}


# Every judge task by prompt name (records.JudgeTask.prompt): the judge asks each through this row.
TASKS: dict[str, TaskFormat] = {
    "explain": TaskFormat(
        frozenset({"examples", "frequent", "contrast", "outputs"}),
        frozenset({"examples"}),
        explain_fields,
        lambda task: {},
        "label",
        _label_value,
        lambda: 60,
        parse_label,
    ),
    "detection": TaskFormat(
        frozenset({"label", "snippets", "n"}),
        frozenset({"label", "snippets"}),
        detection_fields,
        _snippet_count,
        "answers",
        lambda n: _exactly(_BIT, n),
        lambda n: 8 + 3 * n,
        parse_binary_list,
    ),
    "fuzzing": TaskFormat(
        frozenset({"label", "snippets", "n"}),
        frozenset({"label", "snippets"}),
        fuzzing_fields,
        _snippet_count,
        "answers",
        lambda n: _exactly(_BIT, n),
        lambda n: 8 + 3 * n,
        parse_binary_list,
    ),
    "simulation": TaskFormat(
        frozenset({"label", "snippets", "n"}),
        frozenset({"label", "snippets"}),
        simulation_fields,
        lambda task: {"lengths": [len(s.tokens) for s in task.snippets]},
        "activations",
        _activation_rows,
        lambda lengths: 8 + 3 * sum(lengths) + 2 * len(lengths),
        parse_simulation,
    ),
    "intruder": TaskFormat(
        frozenset({"groups", "n", "k"}),
        frozenset({"groups"}),
        intruder_fields,
        lambda task: {"sizes": [len(group) for group in task.groups]},
        "intruders",
        lambda sizes: {
            "type": "array",
            "prefixItems": [{"type": "integer", "minimum": 1, "maximum": k} for k in sizes],
            "items": False,
            "minItems": len(sizes),
            "maxItems": len(sizes),
        },
        lambda sizes: 8 + 3 * len(sizes),
        parse_choices,
    ),
    "codebook": TaskFormat(
        frozenset({"codebook", "labels", "n"}),
        frozenset({"codebook", "labels"}),
        lambda task: codebook_fields(task.labels, task.codes),
        lambda task: {"n": len(task.labels)},
        "codes",
        lambda n: _exactly(_label_value(), n),
        lambda n: 8 + 30 * n,
        parse_codebook,
    ),
}
PROMPT_NAMES = tuple(TASKS)

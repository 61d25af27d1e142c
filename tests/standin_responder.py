"""A responder for the stand-in server that answers autointerp's judge prompts.

It recognises the task by the system message of the shipped prompt files, reads the
rendered user message back, and answers as a careful judge would, in the asked-for
format (with some prose and code fences around it, as real models add):

- explain: the words inside the <<marks>>, the most frequent first, in the offline label format;
- detection, fuzzing, simulation: the offline judge's token matching, run on the text
  split into words and punctuation (exact for snippets made of such tokens);
- intruder: the offline judge's choice, on the same words.

`mode` makes it answer differently on purpose: "label_line" (explain answers with a last line
"Label: ..." instead of JSON), "wrong_length" (one item short, or an over-long label) or
"garbage" (no answer at all). It can be changed between requests.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from types import SimpleNamespace

from autointerp.judges.judge import (
    Term,
    find_intruders,
    format_label,
    label_terms,
    marks_correct,
    match_positions,
    norm,
)
from autointerp.judges.prompts import LABEL_MAX_CHARS, PROMPT_NAMES, load_prompt

MODES = ("correct", "label_line", "wrong_length", "garbage")
GARBAGE = "I'm sorry, I can't tell from these snippets."

_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_WORDS = re.compile(r"\w+|[^\w\s]")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text)


def _field(user: str, name: str) -> str:
    return re.search(rf"^{name}: (.*)$", user, re.M).group(1)


def _numbered(user: str) -> list[str]:
    return re.findall(r"^\d+\. (.*)$", user, re.M)


class TaskResponder:
    def __init__(self, mode: str = "correct"):
        assert mode in MODES
        self.mode = mode
        self.tasks = {load_prompt(name).system: name for name in PROMPT_NAMES}
        self.answered: list[str] = []  # task names, in the order asked

    def system_of(self, task: str) -> str:
        """The system message of a task's shipped prompt."""
        return next(system for system, name in self.tasks.items() if name == task)

    def __call__(self, system: str, user: str) -> str:
        task = self.tasks.get(system)
        if task is None:
            return "That is not a judge prompt I know."
        self.answered.append(task)
        if self.mode == "garbage":
            return GARBAGE
        return getattr(self, f"_{task}")(user)

    def _explain(self, user: str) -> str:
        weights: Counter = Counter()
        for line in re.findall(r"^Example \d+: (.*)$", user, re.M):
            for span in re.findall(r"<<(.*?)>>", line):
                for word in _words(span):
                    weights[norm(word)] += 1
        if not weights:
            return "I see no marked tokens."
        ranked = [token for token, w in weights.most_common(4) if w >= 0.3 * weights.most_common(1)[0][1]]
        label = format_label([Term(token) for token in ranked])
        if self.mode == "wrong_length":
            label = label + " and" * LABEL_MAX_CHARS
        if self.mode == "label_line":  # the older answer format, which the parser still reads
            return f"The marked tokens are nearly always the same.\n\n**Label:** {label}"
        return f"The marked tokens are nearly always the same.\n{json.dumps({'label': label})}"

    def _list(self, values: list, key: str = "answers") -> str:
        if self.mode == "wrong_length":
            values = values[:-1]
        return f"Here is my answer:\n```json\n{json.dumps({key: values})}\n```"

    def _detection(self, user: str) -> str:
        terms = label_terms(_field(user, "Feature label"))
        return self._list([int(any(match_positions(_words(text), terms))) for text in _numbered(user)])

    def _fuzzing(self, user: str) -> str:
        terms = label_terms(_field(user, "Feature label"))
        answers = []
        for text in _numbered(user):
            tokens, marked = [], []
            for k, part in enumerate(re.split(r"<<(.*?)>>", text)):  # odd parts were inside marks
                words = _words(part)
                tokens += words
                marked += [k % 2 == 1] * len(words)
            answers.append(int(marks_correct(tokens, marked, terms)))
        return self._list(answers)

    def _simulation(self, user: str) -> str:
        terms = label_terms(_field(user, "Feature label"))
        rows = []
        for line in re.findall(r"^Snippet \d+ \(\d+ tokens\): (.*)$", user, re.M):
            tokens = [json.loads(t) for t in re.findall(rf"\d+:({_JSON_STRING})", line)]
            rows.append([10 if hit else 0 for hit in match_positions(tokens, terms)])
        return self._list(rows, "activations")

    def _intruder(self, user: str) -> str:
        groups = [
            [SimpleNamespace(tokens=_words(text)) for text in _numbered(block)]
            for block in re.split(r"^Group \d+:$", user, flags=re.M)[1:]
        ]
        return self._list(find_intruders(groups), "intruders")


class CodebookResponder(TaskResponder):
    """Also answers the codebook prompt (prompts/codebook.txt): a label's code is its main term
    (the first of `label_terms`), so labels naming the same token share a code, and a code
    already in the shown codebook is reused as it is written there."""

    def __init__(self, mode: str = "correct"):
        super().__init__(mode)
        self.tasks[load_prompt("codebook").system] = "codebook"

    def _codebook(self, user: str) -> str:
        shown = {norm(code): code for code in re.findall(r"^- (.*)$", user, re.M)}
        codes = []
        for label in _numbered(user):
            term = label_terms(label)[0].token
            codes.append(shown.get(norm(term), term))
        return self._list(codes, "codes")

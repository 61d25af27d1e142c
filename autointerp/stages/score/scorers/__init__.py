"""The scorer registry: one module per scorer, registered here by adding it to `SCORERS`.

Everything else the pipeline knows about a scorer is read off its class attributes (base.Scorer):
which run by default (INPUT_SCORERS: those that read only the stored inputs), each one's headline
metric (HEADLINE) and what an uninformative label scores on it (CHANCE). A scorer that asks the
judge also needs its task in judges.prompts.TASKS and a prompt file of that name.
"""

from __future__ import annotations

from collections.abc import Sequence

from autointerp.errors import AutointerpError
from autointerp.stages.score.scorers.base import Item, Outcome, Scorer
from autointerp.stages.score.scorers.coherence import Coherence
from autointerp.stages.score.scorers.detection import Detection
from autointerp.stages.score.scorers.embedding import Embedding
from autointerp.stages.score.scorers.fuzzing import Fuzzing
from autointerp.stages.score.scorers.intervention import Intervention, label_token_ids
from autointerp.stages.score.scorers.intruder import Intruder
from autointerp.stages.score.scorers.simulation import Simulation

SCORERS: dict[str, Scorer] = {
    s.name: s for s in (Detection(), Fuzzing(), Simulation(), Embedding(), Coherence(), Intruder(), Intervention())
}
INPUT_SCORERS = tuple(name for name, s in SCORERS.items() if not s.needs_subject)
HEADLINE = {name: s.metric for name, s in SCORERS.items()}
CHANCE = {s.metric: s.chance for s in SCORERS.values()}
LABEL_FREE = tuple(name for name, s in SCORERS.items() if not s.reads_label)  # they judge the feature itself


def chosen(names: Sequence[str] | None) -> tuple[str, ...]:
    """The scorers a ScoreConfig names, INPUT_SCORERS when it names none; an unknown name is refused."""
    if names is None:
        return INPUT_SCORERS
    unknown = sorted(set(names) - set(SCORERS))
    if unknown:
        raise AutointerpError(f"unknown scorer(s) {unknown}", f"choose from {', '.join(SCORERS)} (--scorers)")
    return tuple(names)


__all__ = [
    "SCORERS",
    "chosen",
    "INPUT_SCORERS",
    "HEADLINE",
    "CHANCE",
    "LABEL_FREE",
    "Item",
    "Outcome",
    "Scorer",
    "label_token_ids",
]

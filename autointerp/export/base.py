"""What the export formats share: the signature of a format's writer, and the store reads and
file writing that more than one format uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

from autointerp.config import ExportConfig
from autointerp.store import Store


class Writer(Protocol):
    """One export format: writes the run's rows under root (the run's export directory, which each
    format keeps its own file or folder in) and returns the files written."""

    def __call__(self, store: Store, run_id: str, cfg: ExportConfig, root: Path) -> list[Path]: ...


def layer_index(hookpoint: str) -> int | None:
    """The layer number in a hookpoint name (blocks.8.hook_resid_pre → 8), for OpenAI's NeuronId."""
    found = re.search(r"\d+", hookpoint)
    return int(found.group()) if found else None


def labels_by_feature(store: Store, run_id: str, explainer: str | None = None) -> dict[int, list]:
    """feature → its successful labels (rows with explainer and label), one per explainer, or only `explainer`'s."""
    labels = store.explanations(run_id, explainer)
    out: dict[int, list] = {}
    for x in labels[labels.status == "ok"].itertuples():
        out.setdefault(int(x.feature), []).append(x)
    return out


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
    return path

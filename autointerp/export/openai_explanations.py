"""openai: OpenAI automated-interpretability `NeuronSimulationResults` records in
`openai_explanations.jsonl`, one a line: the label of each explainer as a `ScoredExplanation` whose
`ev_correlation_score` is our simulation scorer's Pearson r. Per-sequence simulations are not
stored, so `scored_sequence_simulations` is empty. The `dataclass_name` keys let neuron_explainer's
`fast_dataclasses.loads` rebuild the objects."""

from __future__ import annotations

import math
from pathlib import Path

from autointerp.config import ExportConfig
from autointerp.export.base import labels_by_feature, layer_index, write_jsonl
from autointerp.store import Store


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: an undefined score becomes null."""
    return None if x is None or math.isnan(x) else float(x)


def openai_records(store: Store, run_id: str):
    """One NeuronSimulationResults dict per labelled feature."""
    layer = layer_index(store.run(run_id)["hookpoint"])
    scores = store.scores(run_id)
    pearson = scores[(scores.scorer == "simulation") & (scores.metric == "pearson") & (scores.label_source == "true")]
    r = {(x.explainer, int(x.feature)): x.value for x in pearson.itertuples()}
    for feature, labels in sorted(labels_by_feature(store, run_id).items()):
        yield {
            "dataclass_name": "NeuronSimulationResults",
            "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": feature},
            "scored_explanations": [
                {
                    "dataclass_name": "ScoredExplanation",
                    "explanation": x.label,
                    "scored_simulation": {
                        "dataclass_name": "ScoredSimulation",
                        "scored_sequence_simulations": [],
                        "ev_correlation_score": _finite(r.get((x.explainer, feature))),
                        "rsquared_score": None,
                        "absolute_dev_explained_score": None,
                    },
                }
                for x in labels
            ],
        }


def write_openai(store: Store, run_id: str, cfg: ExportConfig, root: Path) -> list[Path]:
    return [write_jsonl(root / "openai_explanations.jsonl", openai_records(store, run_id))]

"""Exports of one run for other tools, read from the DuckDB file alone.

- parquet: every table of the database as `<table>.parquet` (this run's rows; meta and llm_calls whole,
  as they carry no run id), streamed batch by batch so memory stays flat.
- neuronpedia: Neuronpedia's per-feature upload format, one JSON object a line:
  {index, density, activations: [{tokens, values}], explanations: [{text, methodName, modelName}],
  topLogits, bottomLogits: [{token, value}] (the vocabulary projection of a causal LM's features, else null)}.
- openai: OpenAI automated-interpretability `NeuronSimulationResults` records, one a line: the label of each
  explainer as a `ScoredExplanation` whose `ev_correlation_score` is our simulation scorer's Pearson r.
  Per-sequence simulations are not stored, so `scored_sequence_simulations` is empty. The
  `dataclass_name` keys let neuron_explainer's `fast_dataclasses.loads` rebuild the objects.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from .errors import AutointerpError
from .report import file_stem
from .store import Store

FORMATS = ("parquet", "neuronpedia", "openai")
METHOD_NAME = "autointerp"  # Neuronpedia's methodName for labels written by this package


@dataclass
class ExportConfig:
    n_activations: int = 20  # max-activating windows per feature in the Neuronpedia export
    chunk: int = 1024  # features read from the store at a time


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: an undefined score becomes null."""
    return None if x is None or math.isnan(x) else float(x)


def _short(x: float) -> float:
    # Six significant digits: float32 activations gain nothing from a float64's seventeen.
    return float(f"{x:.6g}")


def layer_index(hookpoint: str) -> int | None:
    """The layer number in a hookpoint name (blocks.8.hook_resid_pre → 8), for OpenAI's NeuronId."""
    found = re.search(r"\d+", hookpoint)
    return int(found.group()) if found else None


def export_parquet(store: Store, run_id: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in store.table_names():
        reader = store.table_reader(name, run_id)
        path = out / f"{name}.parquet"
        with pq.ParquetWriter(path, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
        paths.append(path)
    return paths


def _labels_by_feature(store: Store, run_id: str) -> dict[int, list]:
    """feature → its successful labels (rows with explainer and label), one per explainer."""
    labels = store.explanations(run_id)
    out: dict[int, list] = {}
    for x in labels[labels.status == "ok"].itertuples():
        out.setdefault(int(x.feature), []).append(x)
    return out


def neuronpedia_records(store: Store, run_id: str, cfg: ExportConfig):
    """One Neuronpedia feature dict per feature of the run, dead ones included (no activations)."""
    labels = _labels_by_feature(store, run_id)
    features = store.features(run_id)
    for start in range(0, len(features), cfg.chunk):
        chunk = features.iloc[start : start + cfg.chunk]
        wanted = [int(f) for f in chunk.feature]
        snippets = {fs.feature: fs for fs in store.feature_snippets(run_id, wanted, max_per_kind={"top": cfg.n_activations, "quantile": 0, "negative": 0})}
        effects = store.output_effects(run_id, wanted)
        logits = {(int(f), kind): [{"token": t, "value": _short(v)} for t, v in zip(g.token, g.value)]
                  for (f, kind), g in effects.groupby(["feature", "kind"])}
        for f, density in zip(wanted, chunk.density):
            fs = snippets.get(f)
            top = sorted(fs.explain + fs.score, key=lambda s: -s.max_activation)[: cfg.n_activations] if fs else []
            yield {
                "index": f,
                "density": float(density),
                "activations": [{"tokens": list(s.tokens), "values": [_short(v) for v in s.values()]} for s in top],
                "explanations": [{"text": x.label, "methodName": METHOD_NAME, "modelName": x.explainer.partition(":")[2] or x.explainer}
                                 for x in labels.get(f, [])],
                "topLogits": logits.get((f, "promoted")),
                "bottomLogits": logits.get((f, "suppressed")),
            }


def openai_records(store: Store, run_id: str):
    """One NeuronSimulationResults dict per labelled feature."""
    layer = layer_index(store.run(run_id)["hookpoint"])
    scores = store.scores(run_id)
    pearson = scores[(scores.scorer == "simulation") & (scores.metric == "pearson") & (scores.label_source == "true")]
    r = {(x.explainer, int(x.feature)): x.value for x in pearson.itertuples()}
    for feature, labels in sorted(_labels_by_feature(store, run_id).items()):
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


def _write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def export(project: str | Path, run_id: str | None = None, out: str | Path | None = None,
           formats: tuple[str, ...] = FORMATS, cfg: ExportConfig | None = None) -> dict[str, list[Path]]:
    """Write the chosen formats for one run (default: the latest) under out (default <project>/exports/<run_id>/)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise AutointerpError(f"unknown export format(s) {sorted(unknown)}", f"choose from {', '.join(FORMATS)}")
    cfg = cfg or ExportConfig()
    with Store(project, read_only=True) as store:
        run_id = store.run(run_id)["run_id"]
        root = Path(out) if out is not None else Path(project) / "exports" / file_stem(run_id)
        written: dict[str, list[Path]] = {}
        if "parquet" in formats:
            written["parquet"] = export_parquet(store, run_id, root / "parquet")
        if "neuronpedia" in formats:
            written["neuronpedia"] = [_write_jsonl(root / "neuronpedia.jsonl", neuronpedia_records(store, run_id, cfg))]
        if "openai" in formats:
            written["openai"] = [_write_jsonl(root / "openai_explanations.jsonl", openai_records(store, run_id))]
    return written

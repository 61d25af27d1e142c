"""Neuronpedia's three formats, all built from one feature record per feature of the run and all
carrying one explainer's labels: `ExportConfig.explainer`, else the one that labelled the most features.

- neuronpedia: `neuronpedia.jsonl`, one Neuronpedia feature object a line, every feature of the run:
  {index, density, activations: [{tokens, values}], explanations: [{text, methodName, modelName}],
  topLogits, bottomLogits: [{token, value}] (the vocabulary projection of a causal LM's features, else null)}.
- neuronpedia-upload: `neuronpedia_upload/batch-NNNNN.json`, the request bodies Neuronpedia's client
  sends to `upload-batch` (`FeatureRequest.upload_batch`): {modelId, source, features: [...]} in files
  of at most 128 features, each activation with quantileMin, quantileMax and quantileFraction: null
  for the top windows; for a sample of an equal-count activation-quantile bin, the range of the bin's
  stored samples' peaks and 1 / number of bins.
- neuronpedia-bulk: the layout of Neuronpedia's bulk exports, which readers of its datasets load:
  `neuronpedia_bulk/<modelId>/<source>/{features,activations,explanations}/batch-N.jsonl.gz`, N from
  0, each batch the rows of `bulk_batch` consecutive features. features rows {modelId, layer, index,
  hookName, maxActApprox, frac_nonzero, pos_str, pos_values, neg_str, neg_values}; activations rows,
  one per window, {id, modelId, layer, index, tokens, values, maxValue, maxValueTokenIndex, minValue,
  binMin, binMax, binContains}; explanations rows {id, modelId, layer, index, description, typeName,
  explanationModelName}. As Neuronpedia writes them, layer is the source id and index a string.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from autointerp.config import ExportConfig
from autointerp.errors import AutointerpError
from autointerp.export.base import labels_by_feature, layer_index, write_jsonl
from autointerp.store import Store

UPLOAD_BATCH = 128  # features per request: the most Neuronpedia's upload-batch endpoint takes
METHOD_NAME = "autointerp"  # Neuronpedia's methodName for labels written by this package
BULK_KINDS = ("features", "activations", "explanations")
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a Neuronpedia id, and one folder name on every OS


def _short(x: float) -> float:
    # Six significant digits: float32 activations gain nothing from a float64's seventeen.
    return float(f"{x:.6g}")


def _chosen_explainer(store: Store, run_id: str, cfg: ExportConfig) -> str | None:
    known = store.explainers(run_id)
    if cfg.explainer is not None and cfg.explainer not in known:
        raise AutointerpError(
            f"run '{run_id}' has no labels by {cfg.explainer}",
            f"pass --explainer with one of: {', '.join(known)}" if known else "run `autointerp explain` first",
        )
    return cfg.explainer or store.default_explainer(run_id)


def _activation(s, quantiles: dict[int, tuple[float, float]] | None, n_bins: int) -> dict:
    out = {"tokens": list(s.tokens), "values": [_short(v) for v in s.values()]}
    if quantiles is not None:
        low, high = quantiles.get(s.quantile, (None, None)) if s.kind == "quantile" else (None, None)
        out |= {
            "quantileMax": None if high is None else _short(high),
            "quantileMin": None if low is None else _short(low),
            "quantileFraction": None if s.kind != "quantile" else 1 / n_bins,
        }
    return out


def neuronpedia_records(store: Store, run_id: str, cfg: ExportConfig, upload: bool = False):
    """One Neuronpedia feature dict per feature of the run, dead ones included (no activations); with
    upload, the top windows and the quantile samples with their quantile fields."""
    explainer = _chosen_explainer(store, run_id, cfg)
    labels = labels_by_feature(store, run_id, explainer) if explainer else {}
    features = store.features(run_id)
    n_bins = int(store.run(run_id)["config"].get("gather", {}).get("n_bins") or 1)
    for start in range(0, len(features), cfg.chunk):
        chunk = features.iloc[start : start + cfg.chunk]
        wanted = [int(f) for f in chunk.feature]
        caps = {"top": cfg.n_activations, "negative": 0} | ({} if upload else {"quantile": 0})
        snippets = {fs.feature: fs for fs in store.feature_snippets(run_id, wanted, max_per_kind=caps)}
        effects = store.output_effects(run_id, wanted)
        logits = {
            (int(f), kind): [{"token": t, "value": _short(v)} for t, v in zip(g.token, g.value)]
            for (f, kind), g in effects.groupby(["feature", "kind"])
        }
        for f, density in zip(wanted, chunk.density):
            fs = snippets.get(f)
            windows = fs.explain + fs.score if fs else []
            top = sorted((s for s in windows if s.kind == "top"), key=lambda s: -s.max_activation)[: cfg.n_activations]
            sampled = (
                sorted((s for s in windows if s.kind == "quantile"), key=lambda s: (s.quantile, -s.max_activation))
                if upload
                else []
            )
            ranges: dict[int, tuple[float, float]] = {}
            for s in sampled:
                low, high = ranges.get(s.quantile, (s.max_activation, s.max_activation))
                ranges[s.quantile] = (min(low, s.max_activation), max(high, s.max_activation))
            yield {
                "index": f,
                "density": float(density),
                "activations": [_activation(s, ranges if upload else None, n_bins) for s in top + sampled],
                "explanations": [
                    {
                        "text": x.label,
                        "methodName": METHOD_NAME,
                        "modelName": x.explainer.partition(":")[2] or x.explainer,
                    }
                    for x in labels.get(f, [])
                ],
                "topLogits": logits.get((f, "promoted")),
                "bottomLogits": logits.get((f, "suppressed")),
            }


def neuronpedia_model_id(run: dict) -> str:
    """The run's model's last path part, lower case, as a plain name (other characters become '-')."""
    name = Path(run["model"].removeprefix("embedded:").rstrip("/")).name.lower()
    return re.sub(r"[^a-z0-9._-]+", "-", name).strip(".-_") or "model"


def neuronpedia_head(run: dict, cfg: ExportConfig) -> dict:
    """{modelId, source}: as given, else the run's model name and "<layer>-autointerp"."""
    layer = layer_index(run["hookpoint"])
    return {
        "modelId": cfg.model_id or neuronpedia_model_id(run),
        "source": cfg.source or f"{'' if layer is None else layer}-autointerp".lstrip("-"),
    }


def bulk_dir(root: Path, head: dict, cfg: ExportConfig) -> Path:
    """root/neuronpedia_bulk/<modelId>/<source>, once each id is checked to be one plain folder name
    (letters, digits, '.', '_', '-'; not starting with '.'), so that no id (absolute, with '..' or a
    separator) puts files outside root."""
    base = root / "neuronpedia_bulk"
    for key, flag, given in (("modelId", "--np-model-id", cfg.model_id), ("source", "--np-source", cfg.source)):
        name = head[key]
        if not PLAIN_NAME.fullmatch(name):
            what = f"{flag} {name!r}" if given is not None else f"the Neuronpedia {key} {name!r} taken from the run"
            raise AutointerpError(
                f"{what} is not a plain name: neuronpedia-bulk writes into a folder of that name under {base}, "
                "and a path there (absolute, with '..' or '/') would write elsewhere",
                f"pass {flag} with letters, digits, '.', '_' and '-' only (not starting with '.'), e.g. "
                f"{'gpt2-small' if key == 'modelId' else '6-res-jb'}",
            )
    path = base / head["modelId"] / head["source"]
    if not path.resolve().is_relative_to(base.resolve()):  # a symlink in the way; names alone cannot
        raise AutointerpError(
            f"{path} resolves to {path.resolve()}, outside {base}",
            f"remove the link at {path} or pass another --out",
        )
    return path


def bulk_rows(record: dict, head: dict, hook_name: str) -> tuple[dict, list[dict], list[dict]]:
    """One feature record as the rows of Neuronpedia's bulk export: (feature, activations, explanations)."""
    where = {"modelId": head["modelId"], "layer": head["source"], "index": str(record["index"])}
    top, bottom = record["topLogits"] or [], record["bottomLogits"] or []
    acts = record["activations"]
    feature = where | {
        "hookName": hook_name,
        "maxActApprox": max((max(a["values"], default=0.0) for a in acts), default=0.0),
        "frac_nonzero": record["density"],
        "pos_str": [t["token"] for t in top],
        "pos_values": [t["value"] for t in top],
        "neg_str": [t["token"] for t in bottom],
        "neg_values": [t["value"] for t in bottom],
    }
    activations = []
    for k, a in enumerate(acts):
        values = a["values"]
        peak = max(range(len(values)), key=values.__getitem__) if values else 0
        activations.append(
            where
            | {
                "id": f"{where['modelId']}@{where['layer']}-{where['index']}-{k}",
                "tokens": a["tokens"],
                "values": values,
                "maxValue": values[peak] if values else 0.0,
                "maxValueTokenIndex": peak,
                "minValue": min(values, default=0.0),
                "binMin": a.get("quantileMin"),
                "binMax": a.get("quantileMax"),
                "binContains": a.get("quantileFraction"),
            }
        )
    explanations = [
        where
        | {
            "id": f"{where['modelId']}@{where['layer']}-{where['index']}-x{k}",
            "description": x["text"],
            "typeName": x["methodName"],
            "explanationModelName": x["modelName"],
        }
        for k, x in enumerate(record["explanations"])
    ]
    return feature, activations, explanations


def _in_batches(records, size: int):
    """Lists of at most `size` consecutive records (itertools.batched is Python 3.12+)."""
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_features(store: Store, run_id: str, cfg: ExportConfig, root: Path) -> list[Path]:
    return [write_jsonl(root / "neuronpedia.jsonl", neuronpedia_records(store, run_id, cfg))]


def write_upload_batches(store: Store, run_id: str, cfg: ExportConfig, root: Path) -> list[Path]:
    head = neuronpedia_head(store.run(run_id), cfg)
    out = root / "neuronpedia_upload"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, batch in enumerate(_in_batches(neuronpedia_records(store, run_id, cfg, upload=True), UPLOAD_BATCH), 1):
        path = out / f"batch-{n:05d}.json"
        path.write_text(json.dumps(head | {"features": batch}, ensure_ascii=False, allow_nan=False), encoding="utf-8")
        paths.append(path)
    return paths


def write_bulk(store: Store, run_id: str, cfg: ExportConfig, root: Path) -> list[Path]:
    run = store.run(run_id)
    head = neuronpedia_head(run, cfg)
    bulk = bulk_dir(root, head, cfg)
    for kind in BULK_KINDS:
        (bulk / kind).mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for n, batch in enumerate(_in_batches(neuronpedia_records(store, run_id, cfg, upload=True), cfg.bulk_batch)):
        rows: dict[str, list[dict]] = {kind: [] for kind in BULK_KINDS}
        for record in batch:
            feature, activations, explanations = bulk_rows(record, head, run["hookpoint"])
            rows["features"].append(feature)
            rows["activations"].extend(activations)
            rows["explanations"].extend(explanations)
        for kind in BULK_KINDS:
            path = bulk / kind / f"batch-{n}.jsonl.gz"
            with gzip.open(path, "wt", encoding="utf-8") as f:
                for row in rows[kind]:
                    f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            paths.append(path)
    return paths


def read_neuronpedia_bulk(root: str | Path) -> dict[str, list[dict]]:
    """Every row of a bulk export (the directory holding features/, activations/, explanations/),
    by kind, in batch order."""
    out = {}
    for kind in BULK_KINDS:
        files = sorted(Path(root, kind).glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
        out[kind] = []
        for path in files:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                out[kind].extend(json.loads(line) for line in f)
    return out

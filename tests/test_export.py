"""Exports read back: Parquet of every table, Neuronpedia's upload format, OpenAI explanation records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from autointerp.errors import AutointerpError
from autointerp.export import METHOD_NAME, export
from autointerp.store import Store
from test_report import HOSTILE_LABEL, INJECTION, RUN, SCRIPT_TOKEN, build_project, real_run  # noqa: F401 (real_run is a fixture)

# neuron_explainer's fast_dataclasses rebuild each object from its "dataclass_name" and these fields.
OPENAI_FIELDS = {
    "NeuronSimulationResults": {"neuron_id", "scored_explanations"},
    "NeuronId": {"layer_index", "neuron_index"},
    "ScoredExplanation": {"explanation", "scored_simulation"},
    "ScoredSimulation": {"scored_sequence_simulations", "ev_correlation_score", "rsquared_score", "absolute_dev_explained_score"},
}


def _jsonl(path) -> list[dict]:
    def no_nan(name):
        raise AssertionError(f"{name} is not JSON")

    return [json.loads(line, parse_constant=no_nan) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def exported(real_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    return export(real_run, out=out), out


def test_parquet_holds_every_table_of_the_run(real_run, exported):
    written, out = exported
    with Store(real_run, read_only=True) as store:
        names = store.table_names()
        assert {p.stem for p in written["parquet"]} == set(names) >= {"features", "examples", "saturation_steps", "categories", "llm_calls"}
        for name in names:
            assert pq.read_table(out / "parquet" / f"{name}.parquet").equals(store.table_reader(name, RUN).read_all()), name
        # Read back through pandas and compared with the store's own reads, not only with the reader that wrote them.
        features = pq.read_table(out / "parquet" / "features.parquet").to_pandas().sort_values("feature", ignore_index=True)
        pd.testing.assert_frame_equal(features.drop(columns="histogram"), store.features(RUN).drop(columns="histogram"))
        assert [list(h) for h in features.histogram] == [list(h) for h in store.features(RUN).histogram]
        examples = pq.read_table(out / "parquet" / "examples.parquet").to_pandas()
        assert len(examples) == len(store.examples(RUN)) and set(examples.run_id) == {RUN}


def test_neuronpedia_features_match_the_store(real_run, exported):
    written, _ = exported
    records = _jsonl(written["neuronpedia"][0])
    with Store(real_run, read_only=True) as store:
        features = store.features(RUN)
        labels = store.explanations(RUN).set_index("feature")
        tops = store.examples(RUN, kind="top")
        vocab_text = {fs.feature: {s.text for s in fs.explain + fs.score} for fs in store.feature_snippets(RUN, list(features.feature), max_per_kind={"top": 20, "quantile": 0, "negative": 0})}
    assert [r["index"] for r in records] == list(features.feature)
    for rec, density in zip(records, features.density):
        assert set(rec) == {"index", "density", "activations", "explanations", "topLogits", "bottomLogits"} and rec["density"] == pytest.approx(density)
        top, bottom = ([x["value"] for x in rec[k]] for k in ("topLogits", "bottomLogits"))  # a causal LM: its vocabulary projection
        assert len(top) == len(bottom) == 10 and top == sorted(top, reverse=True) and bottom == sorted(bottom) and top[-1] > bottom[-1]
        f = rec["index"]
        assert rec["explanations"] == [{"text": labels.loc[f, "label"], "methodName": METHOD_NAME, "modelName": "token-stats-v1"}]
        peaks = tops[tops.feature == f].max_activation
        assert len(rec["activations"]) == len(peaks)
        assert max(max(a["values"]) for a in rec["activations"]) == pytest.approx(peaks.max(), rel=1e-5)
        for a in rec["activations"]:
            assert len(a["tokens"]) == len(a["values"]) and "".join(a["tokens"]) in vocab_text[f]


def test_openai_records_rebuild_as_neuron_explainer_objects(real_run, exported):
    written, _ = exported

    def rebuild(obj: dict) -> dict:
        if "dataclass_name" in obj:
            name = obj.pop("dataclass_name")
            assert set(obj) == OPENAI_FIELDS[name], name
            obj["_type"] = name
        return obj

    lines = written["openai"][0].read_text(encoding="utf-8").splitlines()
    records = [json.loads(line, object_hook=rebuild) for line in lines]
    with Store(real_run, read_only=True) as store:
        labels = store.explanations(RUN).set_index("feature")
        scores = store.scores(RUN)
    pearson = scores[(scores.scorer == "simulation") & (scores.label_source == "true")].set_index("feature").value
    assert [r["neuron_id"]["neuron_index"] for r in records] == sorted(labels.index)
    undefined = 0
    for r in records:
        f = r["neuron_id"]["neuron_index"]
        assert r["_type"] == "NeuronSimulationResults" and r["neuron_id"]["layer_index"] == 1  # blocks.1.hook_resid_post
        (scored,) = r["scored_explanations"]
        assert scored["explanation"] == labels.loc[f, "label"]
        score = scored["scored_simulation"]["ev_correlation_score"]
        if math.isnan(pearson[f]):
            assert score is None
            undefined += 1
        else:
            assert score == pytest.approx(pearson[f])
    assert 0 < undefined < len(records)  # both kinds were exercised


def test_hostile_text_survives_every_format_unchanged(tmp_path):
    project = build_project(tmp_path / "p")
    written = export(project)
    assert written["neuronpedia"][0].parent == tmp_path / "p" / "exports" / RUN
    neuronpedia = {r["index"]: r for r in _jsonl(written["neuronpedia"][0])}
    assert SCRIPT_TOKEN in "".join(neuronpedia[1]["activations"][0]["tokens"])
    assert [x["text"] for x in neuronpedia[1]["explanations"]] == [INJECTION]
    assert [x["text"] for x in neuronpedia[2]["explanations"]] == [HOSTILE_LABEL]
    assert neuronpedia[3]["explanations"] == [] and neuronpedia[5]["activations"] == []  # failed label; dead feature
    openai = {r["neuron_id"]["neuron_index"]: r for r in _jsonl(written["openai"][0])}
    assert sorted(openai) == [0, 1, 2, 4] and openai[2]["scored_explanations"][0]["explanation"] == HOSTILE_LABEL
    explanations = pq.read_table(tmp_path / "p" / "exports" / RUN / "parquet" / "explanations.parquet").to_pandas().set_index("feature")
    assert explanations.loc[3, "error"] == "parse error: <b>no label</b>"
    assert neuronpedia[5]["density"] == 0.0


def test_unknown_format_is_refused(tmp_path):
    project = build_project(tmp_path / "p")
    with pytest.raises(AutointerpError, match=r"unknown export format[\s\S]*fix: choose from parquet, neuronpedia, openai"):
        export(project, formats=("parquet", "csv"))

"""Exports read back: Parquet of every table, Neuronpedia's upload format, OpenAI explanation records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_report import HOSTILE_LABEL, INJECTION, RUN, SCRIPT_TOKEN, build_project, real_run  # noqa: F401 (real_run is a fixture)

from autointerp.errors import AutointerpError
from autointerp.export import export
from autointerp.export.neuronpedia import METHOD_NAME
from autointerp.store import Store

# neuron_explainer's fast_dataclasses rebuild each object from its "dataclass_name" and these fields.
OPENAI_FIELDS = {
    "NeuronSimulationResults": {"neuron_id", "scored_explanations"},
    "NeuronId": {"layer_index", "neuron_index"},
    "ScoredExplanation": {"explanation", "scored_simulation"},
    "ScoredSimulation": {
        "scored_sequence_simulations",
        "ev_correlation_score",
        "rsquared_score",
        "absolute_dev_explained_score",
    },
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
        assert (
            {p.stem for p in written["parquet"]}
            == set(names)
            >= {"features", "examples", "saturation_steps", "categories", "llm_calls"}
        )
        for name in names:
            assert pq.read_table(out / "parquet" / f"{name}.parquet").equals(
                store.table_reader(name, RUN).read_all()
            ), name
        # Read back through pandas and compared with the store's own reads, not only with the reader that wrote them.
        features = (
            pq.read_table(out / "parquet" / "features.parquet").to_pandas().sort_values("feature", ignore_index=True)
        )
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
        vocab_text = {
            fs.feature: {s.text for s in fs.explain + fs.score}
            for fs in store.feature_snippets(
                RUN, list(features.feature), max_per_kind={"top": 20, "quantile": 0, "negative": 0}
            )
        }
    assert [r["index"] for r in records] == list(features.feature)
    for rec, density in zip(records, features.density):
        assert set(rec) == {"index", "density", "activations", "explanations", "topLogits", "bottomLogits"} and rec[
            "density"
        ] == pytest.approx(density)
        top, bottom = (
            [x["value"] for x in rec[k]] for k in ("topLogits", "bottomLogits")
        )  # a causal LM: its vocabulary projection
        assert (
            len(top) == len(bottom) == 10
            and top == sorted(top, reverse=True)
            and bottom == sorted(bottom)
            and top[-1] > bottom[-1]
        )
        f = rec["index"]
        assert rec["explanations"] == [
            {"text": labels.loc[f, "label"], "methodName": METHOD_NAME, "modelName": "token-stats-v1"}
        ]
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
        assert (
            r["_type"] == "NeuronSimulationResults" and r["neuron_id"]["layer_index"] == 1
        )  # blocks.1.hook_resid_post
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
    explanations = (
        pq.read_table(tmp_path / "p" / "exports" / RUN / "parquet" / "explanations.parquet")
        .to_pandas()
        .set_index("feature")
    )
    assert explanations.loc[3, "error"] == "parse error: <b>no label</b>"
    assert neuronpedia[5]["density"] == 0.0


def test_unknown_format_is_refused(tmp_path):
    project = build_project(tmp_path / "p")
    with pytest.raises(
        AutointerpError,
        match=r"unknown export format[\s\S]*fix: choose from parquet, neuronpedia, neuronpedia-upload, "
        r"neuronpedia-bulk, openai",
    ):
        export(project, formats=("parquet", "csv"))


def test_upload_batches_are_what_neuronpedias_own_client_sends(real_run, tmp_path):
    """Our batch files rebuilt as the official client's Feature objects and passed through its
    upload_batch (the HTTP call stubbed): the payload it would POST is byte for byte our file."""
    from neuronpedia.np_activation import Activation
    from neuronpedia.np_explanation import Explanation
    from neuronpedia.np_feature import Feature, Logit
    from neuronpedia.requests.feature_request import MAX_FEATURES_PER_BATCH, FeatureRequest

    from autointerp.config import ExportConfig

    written = export(
        real_run, out=tmp_path, formats=("neuronpedia-upload",), cfg=ExportConfig(model_id="tiny-gpt2", source="1-test")
    )
    paths = written["neuronpedia-upload"]
    with Store(real_run, read_only=True) as store:
        n_features, n_bins = len(store.features(RUN)), store.run(RUN)["config"]["gather"]["n_bins"]
        quantiles = store.examples(RUN, kind="quantile")
    sent = []
    request = FeatureRequest(api_key="test")
    request.send_request = lambda method, uri, json: sent.append((method, uri, json))
    total = 0
    for path in paths:
        body = json.loads(path.read_text(encoding="utf-8"))
        assert (body["modelId"], body["source"]) == ("tiny-gpt2", "1-test") and 0 < len(
            body["features"]
        ) <= MAX_FEATURES_PER_BATCH
        total += len(body["features"])
        features = [
            Feature(
                modelId=body["modelId"],
                source=body["source"],
                index=f["index"],
                density=f["density"],
                top_logits=None if f["topLogits"] is None else [Logit(**x) for x in f["topLogits"]],
                bottom_logits=None if f["bottomLogits"] is None else [Logit(**x) for x in f["bottomLogits"]],
                explanations=[
                    Explanation(body["modelId"], body["source"], f["index"], x["text"], x["methodName"], x["modelName"])
                    for x in f["explanations"]
                ],
                activations=[Activation(body["modelId"], body["source"], f["index"], **a) for a in f["activations"]],
            )
            for f in body["features"]
        ]
        request.upload_batch(body["modelId"], body["source"], features)
        assert sent[-1][:2] == ("POST", "upload-batch")
        assert json.dumps(sent[-1][2], ensure_ascii=False) == path.read_text(encoding="utf-8")
    assert total == n_features
    # The quantile samples carry their bin: fraction 1/n_bins and a range holding each sample's peak.
    sampled = [
        a
        for path in paths
        for f in json.loads(path.read_text())["features"]
        for a in f["activations"]
        if a["quantileFraction"] is not None
    ]
    assert len(sampled) == len(quantiles) > 0
    assert all(
        a["quantileFraction"] == pytest.approx(1 / n_bins) and a["quantileMin"] <= max(a["values"]) <= a["quantileMax"]
        for a in sampled
    )


def test_neuronpedia_formats_carry_one_explainer(real_run, tmp_path):
    from autointerp.config import ExportConfig

    with pytest.raises(AutointerpError, match="has no labels by nobody:x") as err:
        export(real_run, out=tmp_path, formats=("neuronpedia",), cfg=ExportConfig(explainer="nobody:x"))
    assert "offline:token-stats-v1" in err.value.fix


def test_bulk_export_reads_back_as_the_store_holds_it(real_run, tmp_path):
    import duckdb

    from autointerp.config import ExportConfig
    from autointerp.export import read_neuronpedia_bulk

    written = export(
        real_run,
        out=tmp_path,
        formats=("neuronpedia-bulk",),
        cfg=ExportConfig(bulk_batch=7, model_id="m", source="1-x"),
    )
    root = tmp_path / "neuronpedia_bulk" / "m" / "1-x"
    names = sorted(p.relative_to(root).as_posix() for p in written["neuronpedia-bulk"])
    con = duckdb.connect(str(real_run / "autointerp.duckdb"), read_only=True)
    n_features = con.execute("SELECT count(*) FROM features WHERE run_id = ?", [RUN]).fetchone()[0]
    n_batches = math.ceil(n_features / 7)
    assert names == sorted(
        f"{kind}/batch-{i}.jsonl.gz" for kind in ("features", "activations", "explanations") for i in range(n_batches)
    )
    rows = read_neuronpedia_bulk(root)
    # Independent of the exporter's reads: the tables themselves, by SQL.
    density = dict(con.execute("SELECT feature, density FROM features WHERE run_id = ?", [RUN]).fetchall())
    labels = dict(
        con.execute("SELECT feature, label FROM explanations WHERE run_id = ? AND status = 'ok'", [RUN]).fetchall()
    )
    windows = dict(
        con.execute(
            "SELECT feature, count(*) FROM examples WHERE run_id = ? AND kind IN ('top', 'quantile') GROUP BY feature",
            [RUN],
        ).fetchall()
    )
    peaks = dict(
        con.execute(
            "SELECT feature, max(max_activation) FROM examples WHERE run_id = ? AND kind = 'top' GROUP BY feature",
            [RUN],
        ).fetchall()
    )
    assert [r["index"] for r in rows["features"]] == [str(f) for f in sorted(density)]
    for r in rows["features"]:
        f = int(r["index"])
        assert (r["modelId"], r["layer"]) == ("m", "1-x") and r["frac_nonzero"] == pytest.approx(density[f])
        if f in peaks:
            assert r["maxActApprox"] == pytest.approx(peaks[f], rel=1e-5)
        assert len(r["pos_str"]) == len(r["pos_values"]) == 10 and r["pos_values"] == sorted(
            r["pos_values"], reverse=True
        )
    per_feature: dict[int, list] = {}
    for a in rows["activations"]:
        per_feature.setdefault(int(a["index"]), []).append(a)
        assert len(a["tokens"]) == len(a["values"]) and a["values"][a["maxValueTokenIndex"]] == a["maxValue"] == max(
            a["values"]
        )
        assert (a["binContains"] is None) == (a["binMin"] is None)
    assert {
        f: len(v) for f, v in per_feature.items()
    } == windows  # every top and quantile window (fewer than 20 top ones a feature here)
    assert {int(x["index"]): x["description"] for x in rows["explanations"]} == labels
    assert {x["explanationModelName"] for x in rows["explanations"]} == {"token-stats-v1"} and len(
        {x["id"] for x in rows["explanations"]}
    ) == len(labels)


@pytest.mark.parametrize(
    "given",
    [
        {"model_id": "ABSOLUTE"},  # replaced by an absolute path outside the output folder
        {"model_id": "../../../escaped"},
        {"model_id": ".."},
        {"model_id": "a/b"},
        {"model_id": "a\\b"},
        {"source": "../../escaped"},
        {"source": "ABSOLUTE"},
        {"model_id": "m", "source": "."},
    ],
)
def test_a_bulk_id_that_would_write_outside_the_output_folder_is_refused(real_run, tmp_path, given):
    from autointerp.config import ExportConfig

    outside = tmp_path / "outside"
    given = {k: str(outside / "x") if v == "ABSOLUTE" else v for k, v in given.items()}
    out = tmp_path / "a" / "b" / "c" / "out"
    flag = "--np-model-id" if "model_id" in given and given["model_id"] != "m" else "--np-source"
    with pytest.raises(AutointerpError) as err:
        export(real_run, out=out, formats=("parquet", "neuronpedia-bulk"), cfg=ExportConfig(**given))
    assert flag in str(err.value) and "letters, digits" in err.value.fix
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []  # nothing written anywhere


def test_the_export_command_refuses_an_escaping_model_id_without_a_traceback(real_run, tmp_path, capsys):
    from autointerp.cli import main

    out = tmp_path / "out"
    argv = ["export", "--project", str(real_run), "--out", str(out), "--format", "neuronpedia-bulk"]
    assert main([*argv, "--np-model-id", "../../../escaped"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --np-model-id '../../../escaped' is not a plain name") and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "escaped").exists()
    assert main([*argv, "--np-model-id", "gpt2-small", "--np-source", "6-res-jb"]) == 0  # a plain id is written
    assert (out / "neuronpedia_bulk" / "gpt2-small" / "6-res-jb" / "features" / "batch-0.jsonl.gz").is_file()


def test_a_link_inside_the_output_folder_cannot_carry_the_bulk_export_elsewhere(real_run, tmp_path):
    from autointerp.config import ExportConfig

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "neuronpedia_bulk").mkdir(parents=True)
    (out / "neuronpedia_bulk" / "m").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(AutointerpError, match="outside"):
        export(real_run, out=out, formats=("neuronpedia-bulk",), cfg=ExportConfig(model_id="m", source="s"))
    assert list(elsewhere.iterdir()) == []


def test_a_model_id_taken_from_the_run_is_always_a_plain_name():
    from autointerp.export.neuronpedia import neuronpedia_model_id

    named = {
        m: neuronpedia_model_id({"model": m}) for m in ("EleutherAI/pythia-70m", "../x/..", "<model>", "/a/My Model/")
    }
    assert named == {
        "EleutherAI/pythia-70m": "pythia-70m",
        "../x/..": "model",
        "<model>": "model",
        "/a/My Model/": "my-model",
    }

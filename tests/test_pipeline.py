"""The gather pipeline into DuckDB: idempotent runs, failures that lose nothing, bad input, the trainer, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import pipeline_config

from autointerp.cli import main as cli_main
from autointerp.config import GatherConfig, TrainConfig
from autointerp.errors import AutointerpError
from autointerp.pipeline import gather
from autointerp.store import Store
from autointerp.subject.sae import SAE, load_sae, save_saelens
from autointerp.subject.train import evaluate_sae, train_topk_sae


@pytest.fixture(scope="module")
def setup(pipeline_setup):
    return pipeline_setup


def _config(setup, project, **kw):
    return pipeline_config(setup, project, **kw)


def test_gather_writes_every_table_and_rerun_is_idempotent(setup, tmp_path):
    summary = gather(_config(setup, tmp_path))
    assert summary.db_path == tmp_path / "autointerp.duckdb"
    with Store(tmp_path, read_only=True) as store:
        first = store.table_counts("r1")
        run = store.run("r1")
        assert first["features"] == 16 and first["examples"] == summary.n_examples > 0
        assert run["sae_format"] == "saelens" and run["d_sae"] == 16 and run["versions"]["torch"]
        assert 0 <= run["sae_metrics"]["fvu"] and run["sae_metrics"]["l0"] > 0
        vocab = store.vocab("r1")
        ex = store.examples("r1", kind="top").iloc[0]
        assert len(vocab) > max(ex.token_ids)
        assert set(store.documents("r1").doc_id) >= set(store.examples("r1").doc_id)
    gather(_config(setup, tmp_path))
    with Store(tmp_path, read_only=True) as store:
        assert store.table_counts("r1") == first
        assert len(store.runs()) == 1
        assert store.run("r1")["created_at"] == run["created_at"]


def test_failed_rerun_keeps_what_was_stored(setup, tmp_path):
    root, *_ = setup
    gather(_config(setup, tmp_path))
    with Store(tmp_path, read_only=True) as store:
        before = store.table_counts("r1")
    bad = SAE(torch.full((32, 16), float("nan")), torch.zeros(16), torch.zeros(16, 32), torch.zeros(32))
    save_saelens(bad, root / "nan_sae", hook_name="x", model_name="tiny")
    with pytest.raises(AutointerpError, match="NaN or inf"):
        gather(_config(setup, tmp_path, sae=str(root / "nan_sae"), eval_tokens=0))
    with Store(tmp_path, read_only=True) as store:
        assert store.table_counts("r1") == before


def test_sae_width_mismatch_names_the_hookpoint_and_stores_nothing(setup, tmp_path):
    root, *_ = setup
    wide = SAE(torch.randn(48, 8), torch.zeros(8), torch.randn(8, 48), torch.zeros(48))
    save_saelens(wide, root / "wide", hook_name="blocks.0.hook_resid_post", model_name="other")
    with pytest.raises(AutointerpError, match="width 48.*width 32[\\s\\S]*blocks.0.hook_resid_post"):
        gather(_config(setup, tmp_path, sae=str(root / "wide")))
    assert not (tmp_path / "autointerp.duckdb").exists()  # a failed first gather leaves no database behind


def test_window_longer_than_a_context_is_refused_before_any_work(setup, tmp_path):
    gather(_config(setup, tmp_path))
    with Store(tmp_path, read_only=True) as store:
        before = store.table_counts("r1")
    cfg = _config(setup, tmp_path, gather=GatherConfig(window=33))  # the contexts hold 32 tokens
    with pytest.raises(
        AutointerpError, match="windows of 33 tokens do not fit in contexts of 32[\\s\\S]*--window between 1 and 32"
    ):
        gather(cfg)
    with Store(tmp_path, read_only=True) as store:
        assert store.table_counts("r1") == before


def test_locked_database_is_reported_and_left_intact(setup, tmp_path):
    gather(_config(setup, tmp_path))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(tmp_path / "autointerp.duckdb")!r})
            print('locked', flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AutointerpError, match="locked by another process[\\s\\S]*fix: .*--project"):
            gather(_config(setup, tmp_path, run_id="r2"))
    finally:
        holder.kill()
        holder.wait()
    with Store(tmp_path, read_only=True) as store:
        assert list(store.runs().run_id) == ["r1"] and store.table_counts("r1")["examples"] > 0


def test_trainer_recovers_a_planted_dictionary():
    """Data made of k=3 of 48 unit atoms, shifted and scaled: a TopK SAE should explain it, and
    the normalisation folded into its weights must hold on the raw data."""
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(48, 24))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    n = 30_000
    idx = np.stack([rng.choice(48, 3, replace=False) for _ in range(n)])
    coef = rng.uniform(1, 3, (n, 3))
    x = np.einsum("nk,nkd->nd", coef, atoms[idx]) * 4.0 + 7.0  # raw data far from zero mean, unit scale
    x = torch.tensor(x, dtype=torch.float32)
    sae, metrics, _ = train_topk_sae(
        x[:27_000], x[27_000:], TrainConfig(n_features=96, k=3, epochs=12, lr=3e-3, batch_tokens=1024), progress=False
    )
    assert metrics.fvu < 0.1 and metrics.l0 <= 3
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))
    # Independent check of the folded weights: NumPy evaluation of the saved formula on raw data.
    W_enc, b_enc, W_dec, b_dec = (
        getattr(sae, k).numpy().astype(np.float64) for k in ("W_enc", "b_enc", "W_dec", "b_dec")
    )
    xr = x[27_000:].numpy().astype(np.float64)
    pre = (xr - b_dec) @ W_enc + b_enc
    f = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :3]
    np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    fvu = ((xr - (f @ W_dec + b_dec)) ** 2).sum() / ((xr - xr.mean(0)) ** 2).sum()
    assert fvu == pytest.approx(metrics.fvu, rel=1e-3)
    # Saved in SAELens v6 format and loaded back bit-exactly.
    assert evaluate_sae(sae, x[27_000:]).fvu == pytest.approx(metrics.fvu)


def test_held_out_tokens_come_from_every_tenth_context_and_only_those_are_run_once_the_train_set_is_full():
    """Evaluation asks for held-out tokens only: the model must not run on the nine contexts in ten it would discard."""
    from autointerp.gather.corpus import ContextBatch
    from autointerp.subject.train import collect_activations

    class Counting:  # each token's activation is its context id, so the rows say where they came from
        width = 1

        def __init__(self):
            self.contexts_run = []

        def activations(self, input_ids, attention_mask):
            ids = input_ids[:, :1].float()
            self.contexts_run += ids[:, 0].long().tolist()
            return ids[:, :, None].expand(-1, input_ids.shape[1], 1)

    def batches():
        for start in range(0, 200, 16):
            ids = np.arange(start, min(start + 16, 200))
            grid = np.repeat(ids[:, None], 4, axis=1)
            yield ContextBatch(ids, grid, np.ones_like(grid), np.ones(grid.shape, bool), grid, np.zeros_like(grid))

    model = Counting()
    train, held = collect_activations(model, batches(), 0, 40)
    assert sorted(set(held[:, 0].long().tolist())) == list(range(9, 100, 10)) and len(held) == 40 and len(train) == 0
    assert model.contexts_run == list(range(9, 112, 10))  # the held contexts of the 7 batches read, not all 112
    model.contexts_run = []
    train, held = collect_activations(model, batches(), 30, 8)
    assert set(train[:, 0].long().tolist()) == set(range(8))  # 30 tokens: contexts 0–7, four tokens each
    assert set(held[:, 0].long().tolist()) == {9, 19} and len(train) == 30 and len(held) == 8


def test_trained_sae_is_saved_in_saelens_v6(setup, tmp_path):
    cfg = _config(
        setup,
        tmp_path,
        sae=None,
        run_id="trained",
        train=TrainConfig(n_features=64, k=4, epochs=1, train_tokens=3000, holdout_tokens=500, batch_tokens=512),
    )
    summary = gather(cfg)
    saved = tmp_path / "saes" / "trained"
    meta = json.loads((saved / "cfg.json").read_text())
    assert meta["architecture"] == "topk" and meta["k"] == 4 and meta["normalize_activations"] == "none"
    assert (
        meta["metadata"]["sae_lens_version"].startswith("6")
        and meta["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    )
    loaded = load_sae(saved)
    assert loaded.d_sae == 64 and summary.sae_metrics["fvu"] < 1.5


def test_cli_reports_bad_input_with_the_fix(setup, tmp_path, capsys):
    _, corpus, model = setup
    code = cli_main(
        [
            "gather",
            "--project",
            str(tmp_path),
            "--model",
            model,
            "--hookpoint",
            "transformer.h.1.mpl",
            "--corpus",
            corpus,
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown hookpoint" in err and "transformer.h.1.mlp" in err and "fix:" in err
    assert "Traceback" not in err


def test_cli_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("gather", "hookpoints", "runs", "stages:"):
        assert word in out


def test_loss_recovered_is_one_for_an_exact_sae_and_zero_for_an_empty_one(setup):
    """relu(x) − relu(−x) = x: an SAE with encoder [I, −I] and decoder [I; −I] reconstructs exactly,
    so splicing it in changes no loss; an all-zero SAE is the zero ablation itself."""
    from autointerp.gather.corpus import iter_contexts, iter_documents
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.train import loss_recovered

    cfg = _config(setup, "unused")
    model = SubjectModel(cfg.model)
    eye = torch.eye(32)
    exact = SAE(
        torch.cat([eye, -eye], 1),
        torch.zeros(64),
        torch.cat([eye, -eye], 0),
        torch.zeros(32),
        apply_b_dec_to_input=False,
    )
    empty = SAE(torch.zeros(32, 8), torch.zeros(8), torch.zeros(8, 32), torch.zeros(32))

    def batches():
        return iter_contexts(iter_documents(cfg.corpus), model.tokenizer, cfg.corpus, 8)

    m = loss_recovered(model, exact, batches())
    assert m["loss_spliced"] == pytest.approx(m["loss_clean"], abs=1e-5)
    assert m["loss_zero_ablated"] != m["loss_clean"]  # an untrained model barely depends on its input, but does
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert loss_recovered(model, empty, batches())["loss_recovered"] == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ gathering a labelled run again

DERIVED = ("explanations", "scores", "score_summaries", "categories", "saturation_steps", "saturation_summary")


def _gather_argv(setup, project, *extra: str) -> list[str]:
    root, corpus, model = setup
    return [
        *("gather", "--quiet", "--project", str(project), "--run-id", "r1", "--model", model, "--device", "cpu"),
        *("--hookpoint", "blocks.1.hook_resid_post", "--sae", str(root / "sae"), "--corpus", corpus),
        *("--context-length", "32", "--n-top", "3", "--n-bins", "2", "--per-bin", "2", "--n-negative", "3"),
        *("--window", "8", "--batch-size", "4", *extra),
    ]


def _rows(project) -> dict[str, int]:
    """Rows per table, read with DuckDB itself."""
    import duckdb

    con = duckdb.connect(str(project / "autointerp.duckdb"), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in (*DERIVED, "examples")}
    finally:
        con.close()


@pytest.fixture
def labelled(setup, tmp_path):
    """A project gathered through the CLI, then labelled, scored and saturated by the offline judge."""
    project = tmp_path / "p"
    assert cli_main(_gather_argv(setup, project)) == 0
    for stage in (["explain"], ["score", "--scorers", "detection"], ["saturate"]):
        assert cli_main([*stage, "--project", str(project), "--judge", "offline", "--quiet"]) == 0
    rows = _rows(project)
    assert all(rows[t] > 0 for t in ("explanations", "scores", "categories", "saturation_steps")), rows
    return project, rows


def test_repeating_the_gather_command_of_a_labelled_run_keeps_its_labels(setup, labelled, capsys):
    project, before = labelled
    capsys.readouterr()
    assert cli_main(_gather_argv(setup, project)) == 0  # the very command it was gathered with
    assert "gather: kept the stored one" in capsys.readouterr().out
    assert _rows(project) == before


def test_a_gather_that_would_delete_labels_refuses_until_confirmed(setup, labelled, capsys):
    project, before = labelled
    capsys.readouterr()
    assert cli_main(_gather_argv(setup, project, "--n-top", "2")) == 2
    err = capsys.readouterr().err
    saturation = before["categories"] + before["saturation_steps"] + before["saturation_summary"]
    for said in (
        f"{before['explanations']} labels",
        f"{before['scores']} scores",
        f"{saturation} saturation rows",
        "gather.n_top 3 → 2",
        "fix: to delete them, gather again with --regather",
        "--run-id",
    ):
        assert said in err, err
    assert "Traceback" not in err
    assert _rows(project) == before
    assert cli_main(_gather_argv(setup, project, "--n-top", "2", "--regather")) == 0  # confirmed
    after = _rows(project)
    assert all(after[t] == 0 for t in DERIVED) and after["examples"] > 0
    with Store(project, read_only=True) as store:
        assert store.run("r1")["config"]["gather"]["n_top"] == 2


def test_labels_written_after_the_check_are_not_deleted_either(setup, labelled, monkeypatch):
    """The store refuses, inside the write's transaction, a gather that was not confirmed and would
    delete labels: those of another command that labelled the run between the check and the write."""
    import autointerp.pipeline

    project, before = labelled
    monkeypatch.setattr(autointerp.pipeline, "regather_refusal", lambda cfg: None)
    with pytest.raises(AutointerpError, match="now holds .* labels.*nothing was stored[\\s\\S]*--regather"):
        gather(_config(setup, project, gather=GatherConfig(n_top=2, n_bins=2, per_bin=2, n_negative=3, window=8)))
    assert _rows(project) == before


def test_run_regather_still_gathers_again_and_relabels(setup, labelled, capsys):
    project, before = labelled
    root, corpus, model = setup
    argv = _gather_argv(setup, project, "--n-top", "2")
    argv[0] = "run"
    judged = ["--judge", "offline", "--sample-judge", "none", "--intervention-sample", "0", "--scorers", "detection"]
    assert cli_main([*argv, *judged]) == 2  # unconfirmed: refused before any gathering
    assert "would delete them" in capsys.readouterr().err and _rows(project) == before
    assert cli_main([*argv, *judged, "--regather"]) == 0
    with Store(project, read_only=True) as store:
        assert store.run("r1")["config"]["gather"]["n_top"] == 2
        assert len(store.explanations("r1")) == before["explanations"]  # labelled again, from the new examples


def test_load_sae_refuses_weights_that_are_not_finite_floats_naming_the_tensor(tmp_path):
    weights = [torch.randn(32, 16), torch.zeros(16), torch.randn(16, 32), torch.zeros(32)]
    weights[3][7] = float("nan")
    save_saelens(SAE(*weights), tmp_path / "nan_b_dec", hook_name="x", model_name="tiny")
    with pytest.raises(AutointerpError, match="b_dec in .*nan_b_dec has 1 of 32 entries NaN or infinite"):
        load_sae(tmp_path / "nan_b_dec")
    with pytest.raises(AutointerpError, match="W_enc holds int32 values, not a floating-point type"):
        SAE(torch.zeros(32, 16, dtype=torch.int32), *weights[1:])


def test_configs_stored_before_the_renames_read_as_todays_settings():
    """A run stored by 0.1.0 said sae_hookpoint and output effects enabled/token_change; read under
    today's names its gather is still current, so a repeated command keeps it and its labels."""
    from dataclasses import asdict

    from autointerp.config import OutputEffectsConfig, RunConfig
    from autointerp.pipeline import gather_settings

    today = asdict(RunConfig(sae_id="layer_3", effects=OutputEffectsConfig(mode="projection")))
    stored = {k: v for k, v in today.items() if k != "sae_id"} | {"sae_hookpoint": "layer_3"}
    stored["effects"] = {"enabled": True, "k": 10, "token_change": False, "strength": 0.5, "chunk": 64}
    stored["effects"]["n_prompts"] = today["effects"]["n_prompts"]
    assert gather_settings(stored) == gather_settings(today)
    stored["effects"]["enabled"] = False  # none is not projection
    assert gather_settings(stored) != gather_settings(today)


def test_ctrl_c_interrupts_a_long_computation_between_two_awaits_at_once():
    """A stage computes for long between awaits (the embedding scorer embeds a whole chunk's windows):
    asyncio's own Ctrl-C handler would only cancel the task at the next await, after all of it."""
    script = textwrap.dedent(
        """
        import asyncio, os, signal, threading, time
        from autointerp.pipeline import run_sync

        async def stage():
            await asyncio.sleep(0)
            end = time.monotonic() + 20
            while time.monotonic() < end:  # 20 s of work with no await
                pass

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started in the background
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        try:
            run_sync(stage())
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - started:.1f} s")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("interrupted after") and float(done.stdout.split()[2]) < 3, done.stdout


def test_a_random_baseline_runs_the_same_pipeline_on_random_directions_beside_the_real_run(setup, tmp_path, capsys):
    """--random-baseline gathers, labels and scores an SAE of the same shape whose directions are random
    (run r1-random), and the summary sets each score beside it; a re-run keeps what both runs stored."""
    from autointerp.subject.sae import load_sae

    project = tmp_path / "p"
    argv = _gather_argv(setup, project)
    argv[0] = "run"
    judged = ["--judge", "offline", "--sample-judge", "none", "--intervention-sample", "0"]
    judged += ["--scorers", "detection,coherence", "--random-baseline"]
    assert cli_main([*argv, *judged]) == 0
    out = capsys.readouterr().out
    assert "random-SAE baseline (run r1-random" in out
    assert re.search(r"  detection\s+this SAE median [\d.]+ \(lift [-+][\d.]+ .*; random SAE [\d.]+ \(lift", out)
    report = next((project / "reports").glob("r1*.md")).read_text()  # the real run's report shows the floor too
    assert "random-SAE baseline (run r1-random" in report and "random SAE" in report.split("## Scores")[1]
    with Store(project, read_only=True) as store:
        real, random = store.run("r1"), store.run("r1-random")
        assert (random["d_sae"], random["d_model"]) == (real["d_sae"], real["d_model"]) == (16, 32)
        assert set(store.scores("r1-random").scorer) == {"detection", "coherence"}
        rows = {t: len(store.scores(r)) for t, r in (("real", "r1"), ("random", "r1-random"))}
    sae = load_sae(project / "saes" / "r1-random")
    norms = sae.W_enc.norm(dim=0)
    assert sae.architecture == "topk" and torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert torch.allclose(sae.W_dec, sae.W_enc.T)
    # The directions are random: far from the real SAE's, and no two alike.
    cos = (sae.W_enc.T @ sae.W_enc).fill_diagonal_(0).abs()
    assert cos.max() < 0.9
    assert cli_main([*argv, *judged]) == 0  # a re-run: both gathers kept, every score reused
    again = capsys.readouterr().out
    assert again.count("gather: kept the stored one") == 2
    with Store(project, read_only=True) as store:
        assert {t: len(store.scores(r)) for t, r in (("real", "r1"), ("random", "r1-random"))} == rows

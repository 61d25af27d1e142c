"""The command line as users meet it: a fast help, each stage's own flags, feature selection,
another explainer's labels, and quiet runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from autointerp import __version__
from autointerp.cli import build_parser
from autointerp.config import feature_spec

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autointerp.cli", *args], capture_output=True, text=True, env=ENV, timeout=600
    )


def test_building_the_parser_loads_no_torch_and_no_llm_sdk():
    code = (
        "import sys, autointerp.cli as c; c.build_parser(); "
        "print([m for m in ('torch', 'transformers', 'openai', 'anthropic', 'scipy', 'duckdb', 'pandas') if m in "
        "sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reporting_scoring_and_exporting_load_no_llm_sdk_until_a_client_is_made(tmp_path):
    """A report, every export format and `show` of a stored run, in a fresh interpreter: they read the
    store and load neither torch, the gather nor an LLM SDK (importing the score stage and the judges
    does not either)."""
    from test_report import build_project  # tests/ is on sys.path under pytest's default import mode

    project = build_project(tmp_path / "p")
    code = (
        "import sys\n"
        "import autointerp.judges.judge, autointerp.stages.score.stage\n"
        "from autointerp.export import FORMATS, export\n"
        "from autointerp.store import Store\n"
        "from autointerp.views.report import write_report\n"
        "from autointerp.views.show import feature_lines\n"
        "project = sys.argv[1]\n"
        "files = write_report(project)\n"
        "written = export(project, formats=FORMATS)\n"
        "with Store(project, read_only=True) as store:\n"
        "    lines = feature_lines(store, None, 0)\n"
        "print(files.n_features, sorted(written), len(lines) > 2)\n"
        "print([m for m in ('torch', 'transformers', 'openai', 'anthropic', 'autointerp.gather') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(project)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    done, loaded = out.stdout.strip().splitlines()
    assert done == "6 ['neuronpedia', 'neuronpedia-bulk', 'neuronpedia-upload', 'openai', 'parquet'] True"
    assert loaded == "[]"


def test_version_and_every_subcommand_has_a_description_and_examples():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"autointerp {__version__}"
    _, commands = build_parser()
    for name, c in commands.items():
        assert c.parser.description and "examples:" in c.parser.epilog, name


def test_each_stage_shows_only_its_own_flags():
    helps = {name: cli(name, "--help").stdout for name in ("explain", "score", "saturate", "gather", "report")}
    assert "--redo" in helps["explain"] and "--scorers" not in helps["explain"] and "--method" not in helps["explain"]
    assert "--scorers" in helps["score"] and "--redo" not in helps["score"] and "--stop-coverage" not in helps["score"]
    assert (
        "--method" in helps["saturate"]
        and "--scorers" not in helps["saturate"]
        and "--sample " not in helps["saturate"]
    )
    assert "--judge" not in helps["gather"] and "--judge" not in helps["report"]


def test_feature_lists_and_ranges():
    assert feature_spec("0-3,7, 5") == [0, 1, 2, 3, 7, 5]
    assert feature_spec("4") == [4]
    bad = cli("explain", "--features", "3-1")
    assert bad.returncode == 2 and "runs backwards" in bad.stderr
    bad = cli("explain", "--features", "a,b")
    assert bad.returncode == 2 and "0-99,512" in bad.stderr
    bad = cli("explain", "--max-features", "-3")
    assert bad.returncode == 2 and "not a positive number" in bad.stderr


@pytest.fixture(scope="module")
def gathered(pipeline_setup, tmp_path_factory):
    from conftest import pipeline_config

    from autointerp.pipeline import gather

    project = tmp_path_factory.mktemp("cli")
    gather(pipeline_config(pipeline_setup, project))
    return project


@pytest.mark.slow
def test_selection_labels_and_scores_only_the_chosen_features(gathered, tmp_path):
    import shutil

    shutil.copytree(gathered, tmp_path / "p")
    project = str(tmp_path / "p")
    explained = cli("explain", "--project", project, "--features", "2-5,9", "--quiet")
    assert explained.returncode == 0 and "explained 5 of 5 features" in explained.stdout, explained.stderr
    sampled = cli("explain", "--project", project, "--sample", "3", "--sample-seed", "1", "--redo", "--quiet")
    assert "explained 3 of 3 features" in sampled.stdout
    scored = cli("score", "--project", project, "--features", "2,3", "--scorers", "detection", "--quiet")
    assert scored.returncode == 0 and "over 2 of 2 features" in scored.stdout, scored.stdout + scored.stderr
    assert "Loading" not in scored.stderr  # --quiet silences the libraries' bars too


@pytest.mark.slow
def test_another_explainers_labels_are_scored_saturated_and_reported_without_its_key(gathered, tmp_path):
    import shutil

    import pandas as pd

    from autointerp.store import Store

    shutil.copytree(gathered, tmp_path / "p")
    project = str(tmp_path / "p")
    with Store(project) as store:  # labels written by an API model earlier
        store.write_explanations(
            "r1",
            "openai:gpt-4o-mini",
            pd.DataFrame(
                {
                    "feature": [0, 1, 2, 3],
                    "label": ['token "the"', 'token "of"', 'token "a"', 'token "is"'],
                    "status": ["ok"] * 4,
                    "error": [None] * 4,
                    "raw": ["r"] * 4,
                    "prompt_hash": ["h"] * 4,
                    "n_snippets": [4] * 4,
                }
            ),
        )
    missing = cli("score", "--project", project, "--scorers", "detection")
    assert missing.returncode == 2 and "pass --explainer with one of: openai:gpt-4o-mini" in missing.stderr
    scored = cli(
        "score",
        "--project",
        project,
        "--explainer",
        "openai:gpt-4o-mini",
        "--scorers",
        "detection,embedding",
        "--quiet",
    )
    assert (
        scored.returncode == 0 and "scores of openai:gpt-4o-mini labels (judge offline:token-stats-v1)" in scored.stdout
    ), scored.stderr
    saturated = cli("saturate", "--project", project, "--explainer", "openai:gpt-4o-mini", "--quiet")
    assert saturated.returncode == 0 and "saturation of 4 labels by openai:gpt-4o-mini" in saturated.stdout
    report = cli("report", "--project", project, "--explainer", "openai:gpt-4o-mini")
    assert report.returncode == 0 and "openai:gpt-4o-mini" in (tmp_path / "p" / "reports" / "r1.html").read_text()
    assert "OPENAI_API_KEY" not in os.environ


@pytest.mark.slow
def test_a_run_writes_its_settings_back_and_a_config_file_repeats_it(pipeline_setup, tmp_path):
    root, corpus, model = pipeline_setup
    config = tmp_path / "run.toml"
    config.write_text(f"""
# the same fields as the flags; [sections] only group them
project = "{tmp_path / "p"}"
run_id = "r1"
[model]
model = "{model}"
hookpoint = "blocks.1.hook_resid_post"
sae = "{root / "sae"}"
[corpus]
corpus = "{corpus}"
context_length = 32
[gather]
n_top = 3
n_bins = 2
per_bin = 2
n_negative = 3
window = 8
batch_size = 4
[judge]
judge = "offline"
scorers = "detection"
sample_judge = "none"
""")
    first = cli("run", "--config", str(config), "--quiet")
    assert first.returncode == 0, first.stderr
    # The summary ends with where the time went, stage by stage.
    last = first.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"wall time: gather \d+s, explain \d+s, score \d+s, intervention \d+s, saturate \d+s, steering \d+s, "
        r"report \d+s; total \d+s",
        last,
    ), last
    written = tmp_path / "p" / "configs" / "r1.toml"
    import tomllib

    stored = tomllib.loads(written.read_text())
    assert (
        stored["n_top"] == 3 and stored["window"] == 8 and stored["scorers"] == ["detection"] and "config" not in stored
    )
    again = cli("run", "--config", str(written), "--quiet", "--scorers", "embedding")  # flags given as well win
    assert (
        again.returncode == 0
        and "kept the stored one" in again.stdout
        and "embedding" in again.stdout
        and "detection  " not in again.stdout
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('n_topp = 3\njudge = "gpt"\n')
    out = cli("run", "--config", str(bad))
    assert out.returncode == 2 and "n_topp" in out.stderr and "--help" in out.stderr
    bad.write_text('judge = "gpt"\n')
    out = cli("run", "--config", str(bad))
    assert out.returncode == 2 and "'gpt' is not one of offline" in out.stderr


def test_example_configs_are_package_data_and_parse_into_the_run_they_describe(monkeypatch):
    from importlib.resources import files
    from types import SimpleNamespace

    import tomllib

    import autointerp.pipeline
    from autointerp.cli import _judged, parse, run_config
    from autointerp.subject.releases import resolve_release

    # The hub is out of reach here: the release's directory entry stands in for its downloaded SAE.
    def release_sae(cfg):
        if cfg.sae is None:
            return None
        r = resolve_release(cfg.sae, cfg.sae_id)
        return SimpleNamespace(metadata={"release": {"model": r.model}}, hook_name=r.hookpoint)

    monkeypatch.setattr(autointerp.pipeline, "load_configured_sae", release_sae)
    examples = sorted(p for p in files("autointerp.data").joinpath("examples").iterdir() if p.name.endswith(".toml"))
    assert {p.name for p in examples} >= {"gemma-scope-2b-res.toml", "gpt2-small-res-jb.toml", "smollm2-local.toml"}
    expected = {
        "gemma-scope-2b-res.toml": ("google/gemma-2-2b", "blocks.12.hook_resid_post", "bfloat16"),
        "gpt2-small-res-jb.toml": ("openai-community/gpt2", "blocks.8.hook_resid_pre", "float32"),
        "smollm2-local.toml": ("embedded:SmolLM2-135M-Instruct", "blocks.15.hook_resid_post", "float32"),
    }
    for path in examples:
        args = parse(["run", "--config", str(path)])
        cfg, _ = run_config(args)
        cfg = _judged(cfg, args)
        data = tomllib.loads(path.read_text())
        assert (cfg.project, cfg.sae, cfg.sae_id) == (data["project"], data.get("sae"), data.get("sae_id")), path.name
        assert (cfg.model.name, cfg.model.hookpoint, cfg.model.dtype) == expected[path.name], path.name
        assert (cfg.judge is None) == (data["judge"] == "offline")


def test_model_hookpoint_and_dtype_come_from_the_sae_and_a_bad_sae_fails_before_the_model(
    pipeline_setup, tmp_path, capsys
):
    import torch

    from autointerp.cli import main
    from autointerp.store import Store
    from autointerp.subject.sae import SAE, save_saelens

    root, corpus, model = pipeline_setup
    torch.manual_seed(1)
    sae = SAE(
        torch.randn(32, 16) * 10, torch.full((16,), -1.0), torch.randn(16, 32), torch.zeros(32), architecture="standard"
    )
    save_saelens(sae, tmp_path / "sae", hook_name="blocks.1.hook_resid_post", model_name=model)
    small = [
        "--corpus",
        corpus,
        "--context-length",
        "32",
        "--n-top",
        "3",
        "--n-bins",
        "2",
        "--per-bin",
        "2",
        "--n-negative",
        "3",
        "--window",
        "8",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert (
        main(["gather", "--project", str(tmp_path / "p"), "--run-id", "r1", "--sae", str(tmp_path / "sae"), *small])
        == 0
    )
    with Store(tmp_path / "p", read_only=True) as store:
        run = store.run("r1")
    assert (run["model"], run["hookpoint"], run["config"]["model"]["dtype"]) == (
        model,
        "blocks.1.hook_resid_post",
        "float32",
    )
    capsys.readouterr()
    # A typo in the SAE path is reported, with the fix, before a model (here one that does not exist) is loaded.
    assert (
        main(
            [
                "gather",
                "--project",
                str(tmp_path / "q"),
                "--sae",
                str(tmp_path / "sea"),
                "--model",
                "no/such-model",
                *small,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "sea does not exist" in err and "no/such-model" not in err and not (tmp_path / "q").exists()
    # An SAE that does not name its model needs --model.
    save_saelens(sae, tmp_path / "anon", hook_name="blocks.1.hook_resid_post", model_name="")
    assert main(["gather", "--project", str(tmp_path / "q"), "--sae", str(tmp_path / "anon"), *small]) == 2
    assert "does not name the model" in capsys.readouterr().err


@pytest.mark.slow
def test_gpt2_workflow_by_saelens_release_name_through_the_hub_cache(pipeline_setup, tmp_path):
    """`--sae gpt2-small-res-jb --sae-id ...` as a user writes it: the release resolves to its hub
    repository, the model (openai-community/gpt2, here a tiny GPT-2 put in the HF cache under that id)
    and hookpoint come from the release, and its centred residual stream is applied."""
    import sae_writers as w
    import torch

    from autointerp.store import Store
    from autointerp.subject.sae import SAE, save_saelens

    root, corpus, model = pipeline_setup
    cache = tmp_path / "hf-cache"
    w.write_hf_cache(cache, "openai-community/gpt2", __import__("pathlib").Path(model))
    torch.manual_seed(2)
    sae = SAE(
        torch.randn(32, 16) * 10, torch.full((16,), -1.0), torch.randn(16, 32), torch.zeros(32), architecture="standard"
    )
    # As the release's files are: SAELens' cfg.json says nothing of centring; the release's overrides do.
    save_saelens(
        sae, tmp_path / "repo" / "blocks.1.hook_resid_pre", hook_name="blocks.1.hook_resid_pre", model_name="gpt2-small"
    )
    w.write_hf_cache(cache, "jbloom/GPT2-Small-SAEs-Reformatted", tmp_path / "repo")
    env = {**ENV, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    args = [
        "run",
        "--project",
        str(tmp_path / "p"),
        "--sae",
        "gpt2-small-res-jb",
        "--sae-id",
        "blocks.1.hook_resid_pre",
        "--corpus",
        corpus,
        "--context-length",
        "32",
        "--n-top",
        "3",
        "--n-bins",
        "2",
        "--per-bin",
        "2",
        "--n-negative",
        "3",
        "--window",
        "8",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--scorers",
        "detection",
        "--intervention-sample",
        "0",
        "--output-effects",
        "none",
        "--quiet",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "autointerp.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr
    with Store(tmp_path / "p", read_only=True) as store:
        run = store.run()
    assert (run["model"], run["hookpoint"]) == ("openai-community/gpt2", "blocks.1.hook_resid_pre")
    assert run["run_id"].endswith("gpt2-small-res-jb-blocks.1.hook_resid_pre")
    assert "explained" in out.stdout and "report:" in out.stdout


def test_a_written_config_never_holds_a_password_from_a_url(tmp_path):
    import tomllib

    from autointerp.cli import parse, write_config

    secret_url, plain_url = "http://user:s3cret-pw@llm.example:8000/v1", "http://localhost:8000/v1"
    given = ["run", "--judge", "openai_compatible", "--judge-model", "m", "--n-top", "7"]
    path = tmp_path / "p" / "configs" / "r.toml"
    write_config(path, parse([*given, "--base-url", secret_url, "--corpus", "https://h.example/c.txt?token=t0ken"]))
    text = path.read_text()
    assert "s3cret-pw" not in text and "t0ken" not in text and "user:" not in text
    assert '# base_url = "http://***@llm.example:8000/v1" is left out' in text and "--base-url again" in text
    stored = tomllib.loads(text)
    assert "base_url" not in stored and "corpus" not in stored and stored["n_top"] == 7
    again = parse(["run", "--config", str(path), "--base-url", secret_url])  # the rerun the comment asks for
    assert (again.base_url, again.n_top, again.judge_model) == (secret_url, 7, "m")
    write_config(path, parse([*given, "--base-url", plain_url]))  # a URL without secrets is kept as given
    assert tomllib.loads(path.read_text())["base_url"] == plain_url

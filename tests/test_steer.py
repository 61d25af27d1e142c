"""Steering, output effects and the intervention scorer on tiny causal LMs, checked against the
same computations written out with NumPy (RMSNorm / LayerNorm, the unembedding, the edit)."""

from __future__ import annotations

import asyncio
import math
from html import escape as html_escape

import numpy as np
import pytest
import torch

from autointerp.config import ModelConfig, SteerConfig
from autointerp.errors import AutointerpError
from autointerp.stages.steering import fluent, says, topic_words
from autointerp.subject.load import Subject
from autointerp.subject.model import SubjectModel
from autointerp.subject.sae import SAE
from autointerp.subject.steer import add_edit, clamp_edit, steer


def _subject(model_dir: str, hookpoint: str, d_sae: int = 8, seed: int = 0) -> Subject:
    model = SubjectModel(ModelConfig(name=model_dir, hookpoint=hookpoint, device="cpu"))
    g = torch.Generator().manual_seed(seed)
    d = model.width
    sae = SAE(
        torch.randn(d, d_sae, generator=g),
        torch.zeros(d_sae),
        torch.randn(d_sae, d, generator=g),
        torch.zeros(d),
        architecture="standard",
    )
    return Subject(model, sae, "r", torch.ones(d_sae) * 2.0)


def _randomise_final_norm(model) -> None:
    """A trained norm has weights far from 1 (and a bias, for LayerNorm); a fresh one does not."""
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("norm.weight", "ln_f.weight")):
            p.data = 0.5 + torch.rand(p.shape, generator=g) * 2
        if name.endswith("ln_f.bias"):
            p.data = torch.randn(p.shape, generator=g)


def _rms_norm(x, w, eps):
    return w * x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return w * (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) + b


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_vocabulary_projection_matches_numpy(tiny_model_dir, family):
    subject = _subject(tiny_model_dir(family), "blocks.1.hook_resid_post")
    hf = subject.model.model
    _randomise_final_norm(hf)
    d = subject.sae.W_dec[:3].double().numpy()
    W_U = hf.get_output_embeddings().weight.detach().double().numpy()
    if family == "llama":
        w, eps = hf.model.norm.weight.detach().double().numpy(), hf.config.rms_norm_eps
        expected = _rms_norm(d, w, eps) @ W_U.T
    else:
        ln = hf.transformer.ln_f
        w, eps = ln.weight.detach().double().numpy(), ln.eps
        expected = (_layer_norm(d, w, 0.0, eps)) @ W_U.T  # the bias writes the same for every direction: left out
    got = subject.model.unembed_directions(subject.sae.W_dec[:3]).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_steered_logits_match_numpy_at_the_last_block(tiny_model_dir):
    """At the last block's output, steering is x + a·d before the final norm and the unembedding."""
    subject = _subject(tiny_model_dir("llama"), "blocks.2.hook_resid_post")
    hf = subject.model.model
    _randomise_final_norm(hf)
    ids = subject.model.tokenizer("The object is", return_tensors="pt").input_ids
    captured = {}
    handle = hf.model.norm.register_forward_pre_hook(
        lambda m, args: captured.__setitem__("h", args[0].detach().clone())
    )
    with torch.no_grad():
        hf(input_ids=ids)
    handle.remove()
    amount, feature = 3.0, 5
    h = captured["h"][0].double().numpy() + amount * subject.sae.W_dec[feature].double().numpy()
    w, eps = hf.model.norm.weight.detach().double().numpy(), hf.config.rms_norm_eps
    expected = _rms_norm(h, w, eps) @ hf.lm_head.weight.detach().double().numpy().T
    with torch.no_grad(), subject.model.editing(add_edit(subject.sae, feature, amount)):
        got = hf(input_ids=ids).logits[0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_clamp_sets_the_feature_and_keeps_the_error_term():
    g = torch.Generator().manual_seed(3)
    sae = SAE(
        torch.randn(6, 4, generator=g),
        torch.randn(4, generator=g),
        torch.randn(4, 6, generator=g),
        torch.randn(6, generator=g),
        architecture="standard",
    )
    x = torch.randn(5, 6, generator=g)
    W_enc, b_enc, W_dec, b_dec = (t.double().numpy() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    xn = x.double().numpy()
    acts = np.maximum(0, (xn - b_dec) @ W_enc + b_enc)  # SAELens standard: b_dec subtracted first
    expected = xn + (7.0 - acts[:, [2]]) * W_dec[2]
    got = clamp_edit(sae, 2, 7.0)(x).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The error term x − x̂ is unchanged; only feature 2's share of x̂ moved.
    new_acts = acts.copy()
    new_acts[:, 2] = 7.0
    np.testing.assert_allclose(got - (new_acts @ W_dec + b_dec), xn - (acts @ W_dec + b_dec), atol=1e-5)


def test_steer_continuations_same_seed_and_scale_zero(tiny_model_dir):
    subject = _subject(tiny_model_dir("llama"), "blocks.1.hook_resid_post")
    hf, tok = subject.model.model, subject.model.tokenizer
    ids = tok("The object is", return_tensors="pt").input_ids
    torch.manual_seed(4)
    plain = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=12,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
    )
    plain_text = tok.decode(plain[0, ids.shape[1] :], skip_special_tokens=True)
    zero = steer(
        subject, SteerConfig(feature=1, prompt="The object is", scale=0.0, max_new_tokens=12, temperature=1.0, seed=4)
    )
    assert zero.unsteered == plain_text and zero.steered == plain_text
    strong = steer(subject, SteerConfig(feature=1, prompt="The object is", scale=200.0, max_new_tokens=12, seed=4))
    assert strong.steered != strong.unsteered
    assert strong.activation == pytest.approx(400.0)  # scale × the feature's max activation (2.0)
    assert strong.added_norm == pytest.approx(400.0 * float(subject.sae.W_dec[1].norm()), rel=1e-4)
    assert strong.residual_norm > 0
    assert "unsteered:" in "\n".join(strong.lines())


def test_steering_refuses_bad_input(tiny_model_dir):
    for bad in (
        {"scale": math.inf},
        {"scale": math.nan},
        {"clamp": -math.inf},
        {},
        {"scale": 1.0, "clamp": 1.0},
        {"scale": 1.0, "prompt": "  "},
        {"scale": 1.0, "max_new_tokens": 0},
        {"scale": 1.0, "temperature": -1.0},
    ):
        with pytest.raises(AutointerpError) as err:
            SteerConfig(feature=0, **({"prompt": "x"} | bad))
        assert err.value.fix
    subject = _subject(tiny_model_dir("llama"), "blocks.1.hook_resid_post")
    with pytest.raises(AutointerpError, match="past the model's context"):
        steer(subject, SteerConfig(feature=0, prompt="word " * 3000, scale=1.0))
    with pytest.raises(AutointerpError, match="does not exist"):
        steer(subject, SteerConfig(feature=99, prompt="x", scale=1.0))
    subject.max_activation[3] = 0.0
    with pytest.raises(AutointerpError, match="never fired"):
        steer(subject, SteerConfig(feature=3, prompt="x", scale=1.0))
    encoder = _subject(tiny_model_dir("bert"), "encoder.layer.1")
    with pytest.raises(AutointerpError, match="needs a causal language model") as err:
        steer(encoder, SteerConfig(feature=0, prompt="x", scale=1.0))
    assert "--model" in err.value.fix


def _planted_subject(tiny_model_dir, targets: list[int], n_random: int) -> Subject:
    """An SAE at the last block whose first latents write towards one token each through the final
    norm and the unembedding, and whose other latents point in random directions."""
    subject = _subject(tiny_model_dir("llama"), "blocks.2.hook_resid_post", d_sae=len(targets) + n_random)
    hf = subject.model.model
    W_U = hf.lm_head.weight.detach()
    w = hf.model.norm.weight.detach()
    rows = [W_U[t] / w for t in targets]  # through RMSNorm's weight, this direction is token t's unembedding row
    g = torch.Generator().manual_seed(9)
    rows += [torch.randn(subject.model.width, generator=g) for _ in range(n_random)]
    subject.sae.W_dec.data = torch.stack(rows)
    return subject


def test_intervention_scorer_finds_a_planted_output_feature_and_gives_random_ones_chance(tiny_model_dir):
    from autointerp.config import ScoreConfig
    from autointerp.stages.score.scorers import SCORERS, Item, label_token_ids

    tok_text = ["object", "class", "value", "function"]
    subject = _subject(tiny_model_dir("llama"), "blocks.2.hook_resid_post")
    tokenizer = subject.model.tokenizer
    targets = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in tok_text]
    subject = _planted_subject(tiny_model_dir, targets, n_random=40)
    scorer = SCORERS["intervention"].bind(subject)
    cfg = ScoreConfig(scorers=("intervention",), intervention_strength=4.0)
    labels = [f'token "{w}"' for w in tok_text]
    assert all(t in label_token_ids(tokenizer, lab) for t, lab in zip(targets, labels))
    own = asyncio.run(scorer.score([Item(i, labels[i], None, i) for i in range(4)], None, cfg))
    for outcome in own:  # beats all 255 random directions: the smallest p the rank test can give
        assert outcome.estimate.value == 1.0 and outcome.estimate.n == 255
        assert outcome.estimate.p_value == pytest.approx(1 / 256)
        assert 0.95 < outcome.estimate.ci_low < 1.0  # Wilson, not a degenerate [1, 1]
    wrong = asyncio.run(scorer.score([Item(i, labels[(i + 1) % 4], None, i) for i in range(4)], None, cfg))
    assert max(o.estimate.value for o in wrong) < 1.0
    rng = np.random.default_rng(0)
    vocab = [
        w
        for w in (
            "object",
            "class",
            "value",
            "function",
            "list",
            "name",
            "type",
            "string",
            "method",
            "module",
            "file",
            "return",
        )
    ]
    random_items = [Item(4 + j, f'token "{vocab[rng.integers(len(vocab))]}"', None, 4 + j) for j in range(40)]
    outcomes = asyncio.run(scorer.score(random_items, None, cfg))
    values = [o.estimate.value for o in outcomes]
    assert 0.3 <= float(np.median(values)) <= 0.7
    assert sum(o.estimate.p_value < 0.01 for o in outcomes) <= 2  # at most 5% confident
    blank = asyncio.run(scorer.score([Item(0, "the", None, 0)], None, cfg))[0]
    assert blank.status == "undefined" and "names no term" in blank.error


@pytest.mark.slow
def test_causal_lm_path_through_the_cli(pipeline_setup, tmp_path, capsys):
    """gather (loss recovered, output effects) → explain → score with intervention → report → export → steer."""
    import json
    import os
    import subprocess
    import sys

    import duckdb

    root, corpus, model = pipeline_setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "autointerp.cli", *args], capture_output=True, text=True, env=env, timeout=600
        )

    project = str(tmp_path / "p")
    out = cli(
        "run",
        "--project",
        project,
        "--model",
        model,
        "--hookpoint",
        "blocks.1.hook_resid_post",
        "--sae",
        str(root / "sae"),
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
        "--sample-judge",
        "none",
        "--intervention-sample",
        "6",
        "--quiet",
    )
    assert out.returncode == 0, out.stderr
    assert "loss recovered" in out.stdout and "intervention" in out.stdout
    assert "clean" in out.stdout and "zero-ablated" in out.stdout  # the loss recovered's parts, in nats
    assert "steering example" in out.stdout and "wall time:" in out.stdout
    con = duckdb.connect(str(tmp_path / "p" / "autointerp.duckdb"), read_only=True)
    kinds = dict(con.execute("SELECT kind, count(DISTINCT feature) FROM output_effects GROUP BY kind").fetchall())
    alive = con.execute("SELECT count(*) FROM features WHERE NOT dead").fetchone()[0]
    assert kinds == {"promoted": alive, "suppressed": alive, "amplified": alive}
    n_scored = con.execute(
        "SELECT count(DISTINCT feature) FROM scores WHERE scorer = 'intervention' AND label_source = 'true'"
    ).fetchone()[0]
    assert n_scored == min(6, alive)
    summary = con.execute("SELECT n_features, metric FROM score_summaries WHERE scorer = 'intervention'").fetchone()
    assert summary == (n_scored, "win_rate")
    metrics = json.loads(con.execute("SELECT sae_metrics FROM runs").fetchone()[0])
    # The run's steering example: a feature with a topic word in its label, pushed at half the prompt's
    # median residual norm, the two continuations generated from the same seed.
    [example] = con.execute(
        "SELECT feature, explainer, label, added_norm, residual_norm, max_new_tokens, unsteered, steered "
        "FROM steering WHERE origin = 'run'"
    ).fetchall()
    feature_steered, explainer, label, added, residual, tokens, unsteered, steered_text = example
    stored_label = con.execute(
        "SELECT label FROM explanations WHERE feature = ? AND explainer = ?", [feature_steered, explainer]
    ).fetchone()[0]
    assert label == stored_label and topic_words(label)
    assert added == pytest.approx(0.5 * residual, rel=1e-3) and tokens == 32
    assert unsteered and steered_text
    con.close()
    assert {"loss_clean", "loss_spliced", "loss_zero_ablated", "loss_recovered", "l0", "fvu"} <= set(metrics)
    html = next((tmp_path / "p" / "reports").glob("*.html")).read_text()
    assert "promotes:" in html and "suppresses:" in html and "intervention" in html
    assert "<h2>Steering</h2>" in html and html_escape(steered_text) in html
    assert cli("export", "--project", project, "--format", "neuronpedia").returncode == 0
    rows = [
        json.loads(line)
        for line in next((tmp_path / "p" / "exports").rglob("neuronpedia.jsonl")).read_text().splitlines()
    ]
    live = [r for r in rows if r["topLogits"]]
    assert len(live) == alive and len(live[0]["topLogits"]) == 10
    assert live[0]["topLogits"][0]["value"] >= live[0]["topLogits"][-1]["value"] > live[0]["bottomLogits"][0]["value"]
    feature = str(live[0]["index"])
    shown = cli("show", feature, "--project", project)
    assert shown.returncode == 0, shown.stderr
    label = next(x["text"] for x in live[0]["explanations"])
    assert (
        f"label by offline:token-stats-v1: {label}" in shown.stdout
        and "promoted: " in shown.stdout
        and "«" in shown.stdout
    )
    assert "intervention" in shown.stdout and "\x1b[" not in shown.stdout  # no colour codes when not on a terminal
    from autointerp.cli import main as cli_main  # in-process from here: the refusals need no fresh interpreter

    assert cli_main(["show", "99999", "--project", project]) == 2
    assert "has no feature 99999" in capsys.readouterr().err
    steered = cli(
        "steer",
        "--project",
        project,
        "--feature",
        feature,
        "--prompt",
        "The object is",
        "--scale",
        "50",
        "--max-new-tokens",
        "8",
    )
    assert steered.returncode == 0, steered.stderr
    assert "unsteered:" in steered.stdout and "steered:" in steered.stdout and "× max activation" in steered.stdout
    with duckdb.connect(str(tmp_path / "p" / "autointerp.duckdb"), read_only=True) as con:
        kept = con.execute("SELECT origin, feature, scale FROM steering ORDER BY created_at").fetchall()
    assert kept == [("run", feature_steered, pytest.approx(kept[0][2])), ("steer", int(feature), 50.0)]
    assert cli_main(["steer", "--project", project, "--feature", feature, "--scale", "nan"]) == 2
    assert "finite" in capsys.readouterr().err


def test_an_sae_of_another_width_is_refused_before_any_work(tiny_model_dir, tmp_path):
    from autointerp.gather.collect import (
        fit_sae,
    )  # gather, steer, effects and the intervention scorer all load through it

    model = SubjectModel(ModelConfig(name=tiny_model_dir("llama"), hookpoint="blocks.1.hook_resid_post", device="cpu"))
    narrow = SAE(torch.randn(16, 4), torch.zeros(4), torch.randn(4, 16), torch.zeros(16), architecture="standard")
    with pytest.raises(AutointerpError, match="width 16, but hookpoint 'blocks.1.hook_resid_post' has width 32") as err:
        fit_sae(model, narrow)
    assert "hookpoint the SAE was trained on" in err.value.fix


def test_topic_words_are_a_labels_content_words_and_says_matches_their_stems():
    assert topic_words("Programming languages and the code of them") == ["programming", "languages", "code"]
    assert topic_words('token "called" (also "named", "titled")') == ["called"]  # not the runners-up
    assert topic_words('token "," (also "the")') == []  # marks and function words name no topic
    assert says("She programs in C. Two LANGUAGE files.", ["programming", "languages", "code"]) == [
        "programming",
        "languages",
    ]
    assert says("the codec", ["code"]) == ["code"] and says("decoded", ["code"]) == []


def test_a_looping_continuation_is_not_fluent():
    """The texts SmolLM2 wrote when pushed too hard (the demo run's features at strength 1.0) loop; those it
    wrote at 0.75 with a label word gained read as text."""
    assert not fluent(" is true, which is true, one-zero-zero-zero-zero-zero-zero-zero-zero-zero-zero-zero-zero")
    assert not fluent("'s what you want is, it's there, it's there, it's there, it's there, it's there, it")
    assert not fluent("................................") and not fluent(" the the")
    assert fluent(
        " is one of the one that is being modified to add a method to the class, which is implementing the method of"
        " the class"
    )
    assert fluent("'s a great idea. I'll make sure to incorporate it into the new product.")


def test_the_example_takes_the_describers_free_text_label_only_where_the_steered_text_says_it():
    """The texts of the demo's example (feature 775, found by its token label "default" at strength 0.75)."""
    from autointerp.stages.steering import Candidate, SteeringExample, described
    from autointerp.subject.steer import SteerResult

    result = SteerResult(
        775, "I think that", "add", 2.49, 133.6, 40.0, 80.0,
        unsteered="'s a great idea. I'll make sure to incorporate it into the new product.",
        steered="'s a great setting for a dystopian narrative. However, by default, is to a state of mocking",
        seed=0, temperature=1.0, max_new_tokens=32,
    )  # fmt: skip
    token_label = 'token "default" (also "defaults")'
    found = SteeringExample(Candidate(775, "offline", token_label, ["default"]), result, "first of 8", 10, 1.0)

    topic = described(found, "local:qwen", lambda f: "Default parameter values")
    assert (topic.candidate.explainer, topic.candidate.label) == ("local:qwen", "Default parameter values")
    assert "'default'" in topic.why and token_label in topic.why and topic.result is result

    unsaid = described(found, "local:qwen", lambda f: "error handling")  # the steered text says neither word
    assert unsaid.candidate == found.candidate and "does not say" in unsaid.why
    silent = described(found, "local:qwen", lambda f: None)
    assert silent.candidate == found.candidate and "gave no label" in silent.why
    already = SteeringExample(Candidate(775, "local:qwen", "defaults", ["defaults"]), result, "first", 1, 1.0)
    asked = []
    assert described(already, "local:qwen", asked.append) == already and not asked  # its own label found it

"""Metrics checked against hand-worked arithmetic, scipy, and brute-force bootstraps."""

import math
import time

import numpy as np
import pytest
from scipy import stats

from autointerp.errors import AutointerpError
from autointerp.stats.metrics import (
    MIN_GAP,
    Estimate,
    auroc,
    classification_scores,
    gap_verdict,
    pearson,
    shuffle_gap,
    wilson_interval,
)

Z_EXACT = stats.norm.ppf(0.975)  # scipy's intervals use the unrounded quantile


def nan_estimate(e: Estimate) -> bool:
    return math.isnan(e.value) and math.isnan(e.ci_low) and math.isnan(e.ci_high)


# ---------------------------------------------------------------- Wilson


def test_wilson_hand_values():
    # 8/10, z = 1.96: z²/n = 0.38416, denominator 1 + 0.38416 = 1.38416
    #   centre = (0.8 + 0.19208) / 1.38416 = 0.716738
    #   half   = 1.96 / 1.38416 · sqrt(0.8·0.2/10 + 3.8416/400) = 1.416021 · sqrt(0.025604) = 0.226582
    #   → (0.4902, 0.9433)
    e = wilson_interval(8, 10)
    assert e.value == 0.8 and e.n == 10 and e.method == "wilson"
    assert (e.ci_low, e.ci_high) == (pytest.approx(0.4902, abs=5e-5), pytest.approx(0.9433, abs=5e-5))
    # 0/10: centre = half = 0.19208/1.38416 = 0.138770 → (0, 0.2775); 10/10 mirrors it.
    assert wilson_interval(0, 10).ci_low == 0.0
    assert wilson_interval(0, 10).ci_high == pytest.approx(0.2775, abs=5e-5)
    assert wilson_interval(10, 10).ci_low == pytest.approx(0.7225, abs=5e-5)
    assert wilson_interval(10, 10).ci_high == 1.0


@pytest.mark.parametrize("k,n", [(0, 1), (1, 3), (7, 9), (50, 200), (199, 200)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    e = wilson_interval(k, n, z=Z_EXACT)
    assert (e.ci_low, e.ci_high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))


def test_wilson_undefined_and_bad_input():
    assert nan_estimate(wilson_interval(0, 0))
    with pytest.raises(AutointerpError, match="fix:"):
        wilson_interval(5, 4)
    with pytest.raises(AutointerpError, match="fix:"):
        wilson_interval(-1, 4)


# ---------------------------------------------------------------- classification

# 4 positives, 6 negatives: tp = 3, fn = 1, fp = 1, tn = 5
Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
Y_PRED = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]


def test_classification_hand_values():
    s = classification_scores(Y_TRUE, Y_PRED)
    assert (s.tp, s.fp, s.tn, s.fn) == (3, 1, 5, 1)
    assert set(s) == {"accuracy", "precision", "recall", "balanced_accuracy", "f1"}
    assert s["accuracy"] == wilson_interval(8, 10)  # (3 + 5) / 10
    assert s["precision"] == wilson_interval(3, 4)  # tp / (tp + fp)
    assert s["recall"] == wilson_interval(3, 4)  # tp / (tp + fn)
    assert s["balanced_accuracy"].value == pytest.approx((3 / 4 + 5 / 6) / 2)  # = 0.791667
    assert s["f1"].value == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # = 0.75
    f1 = s["f1"]
    assert f1.n == 10 and f1.method == "stratified bootstrap percentile" and f1.ci_low <= f1.value <= f1.ci_high
    # Balanced accuracy: TPR 3/4, TNR 5/6, adjusted to 4/6 and 6/8:
    # centre (4/6 + 6/8)/2 = 0.708333; half = 1.96/2·sqrt((4/6)(2/6)/6 + (6/8)(2/8)/8) = 0.980·sqrt(0.0604745) =
    # 0.240998
    ba = s["balanced_accuracy"]
    assert ba.method == "adjusted wald (+1/+1 per class)" and ba.n == 10
    assert (ba.ci_low, ba.ci_high) == (
        pytest.approx(0.708333 - 0.240998, abs=1e-5),
        pytest.approx(0.708333 + 0.240998, abs=1e-5),
    )
    # Fisher's exact one-sided p: 4 predicted positives, 3 of them among the 4 positives of 10.
    assert ba.p_value == pytest.approx(stats.fisher_exact([[3, 1], [1, 5]], alternative="greater").pvalue)


def test_a_perfect_score_keeps_an_open_interval():
    ba = classification_scores([1] * 10 + [0] * 10, [1] * 10 + [0] * 10)["balanced_accuracy"]
    assert ba.value == 1.0 and ba.ci_high == 1.0 and 0.75 < ba.ci_low < 0.9
    a = auroc(list(range(20)), [i >= 10 for i in range(20)])
    assert a.value == 1.0 and a.ci_high == 1.0 and 0.7 < a.ci_low < 0.95


def test_classification_undefined_cases():
    no_positives = classification_scores([0, 0, 0], [0, 1, 0])
    assert nan_estimate(no_positives["recall"]) and nan_estimate(no_positives["f1"])
    assert nan_estimate(no_positives["balanced_accuracy"])
    assert no_positives["precision"].value == 0.0  # 0 of 1 predicted positives is right
    nothing_predicted = classification_scores([1, 0, 1], [0, 0, 0])
    assert nan_estimate(nothing_predicted["precision"])
    assert nothing_predicted["recall"].value == 0.0 and nothing_predicted["f1"].value == 0.0
    assert all(nan_estimate(e) for e in classification_scores([], []).values())


def _brute_stratified(y_true, y_pred, n_boot, seed):
    """Resample positives and negatives with an explicit index matrix; return (balanced acc, F1) replicates."""
    t, p = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    pos_pred, neg_pred = p[t], p[~t]
    rng = np.random.default_rng(seed)
    hits_pos = pos_pred[rng.integers(0, len(pos_pred), (n_boot, len(pos_pred)))]
    false_pos = neg_pred[rng.integers(0, len(neg_pred), (n_boot, len(neg_pred)))]
    tp, fp = hits_pos.sum(1), false_pos.sum(1)
    fn, tn = len(pos_pred) - tp, len(neg_pred) - fp
    return (tp / len(pos_pred) + tn / len(neg_pred)) / 2, 2 * tp / (2 * tp + fp + fn)


def test_classification_bootstrap_matches_explicit_resampling():
    # The binomial shortcut must give the same interval as resampling examples.
    rng = np.random.default_rng(1)
    y_true = rng.random(60) < 0.4
    y_pred = np.where(rng.random(60) < 0.75, y_true, ~y_true)
    s = classification_scores(y_true, y_pred, n_boot=20000, seed=3)
    bal, f1 = _brute_stratified(y_true, y_pred, 20000, seed=4)
    for key, reps in (("balanced_accuracy", bal), ("f1", f1)):
        low, high = np.percentile(reps, [2.5, 97.5])
        assert s[key].ci_low == pytest.approx(low, abs=0.015)
        assert s[key].ci_high == pytest.approx(high, abs=0.015)


def test_classification_bootstrap_seeded_and_shrinks_with_n():
    a = classification_scores(Y_TRUE, Y_PRED, seed=7)
    assert a == classification_scores(Y_TRUE, Y_PRED, seed=7)
    assert a["f1"] != classification_scores(Y_TRUE, Y_PRED, seed=8)["f1"]
    big = classification_scores(Y_TRUE * 20, Y_PRED * 20, seed=7)  # same rates, 20× the data
    for key in a:
        assert big[key].value == pytest.approx(a[key].value)
        assert big[key].ci_high - big[key].ci_low < (a[key].ci_high - a[key].ci_low) / 2


def test_classification_rejects_bad_input():
    with pytest.raises(AutointerpError, match="fix:"):
        classification_scores([1, 0], [1])
    with pytest.raises(AutointerpError, match="fix:"):
        classification_scores([2, 0], [1, 0])
    with pytest.raises(AutointerpError, match="fix:"):
        classification_scores([1, 0], [1, 0], n_boot=0)


# ---------------------------------------------------------------- AUROC


def test_auroc_hand_value_with_tie():
    # positives {3, 2}, negatives {1, 2}: pairs (3>1) 1, (3>2) 1, (2>1) 1, (2=2) ½ → 3.5 / 4
    e = auroc([3, 2, 1, 2], [1, 1, 0, 0])
    assert e.value == pytest.approx(0.875) and e.n == 4
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]).value == 1.0
    assert auroc([1, 2, 3, 4], [1, 1, 0, 0]).value == 0.0
    assert auroc([5, 5, 5, 5], [1, 0, 1, 0]).value == 0.5  # all ties


def test_auroc_matches_mann_whitney():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 80)  # few distinct values: many ties
    labels = rng.random(80) < 0.3
    u = stats.mannwhitneyu(scores[labels], scores[~labels]).statistic  # U of the positives
    assert auroc(scores, labels).value == pytest.approx(u / (labels.sum() * (~labels).sum()))


def test_auroc_undefined_with_one_class():
    assert nan_estimate(auroc([0.1, 0.5, 0.9], [1, 1, 1]))
    assert nan_estimate(auroc([0.1, 0.5, 0.9], [0, 0, 0]))


def test_auroc_score_interval_solves_newcombe_equation_and_tests_mann_whitney():
    rng = np.random.default_rng(2)
    labels = np.arange(40) < 15
    scores = rng.normal(size=40) + labels
    e = auroc(scores, labels)
    # Independently: every θ on a fine grid with |A − θ| <= 1.96·sqrt(V(θ)), V from Newcombe's formula.
    n1, n0 = 15, 25
    m = (n1 + n0) / 2 - 1
    theta = np.linspace(0, 1, 200_001)
    var = theta * (1 - theta) * (1 + m * (1 - theta) / (2 - theta) + m * theta / (1 + theta)) / (n1 * n0)
    inside = theta[np.abs(e.value - theta) <= 1.96 * np.sqrt(var)]
    assert (e.ci_low, e.ci_high) == (pytest.approx(inside.min(), abs=1e-4), pytest.approx(inside.max(), abs=1e-4))
    assert e.value == pytest.approx(stats.mannwhitneyu(scores[labels], scores[~labels]).statistic / (n1 * n0))
    assert e.p_value == pytest.approx(stats.mannwhitneyu(scores[labels], scores[~labels], alternative="greater").pvalue)
    big = auroc(np.tile(scores, 10), np.tile(labels, 10))
    assert big.ci_high - big.ci_low < (e.ci_high - e.ci_low) / 2


# ---------------------------------------------------------------- Pearson


def test_pearson_hand_value_and_scipy():
    # x = 1,2,3,4,5 (mean 3), y = 2,4,5,4,5 (mean 4)
    # Σdx·dy = (-2)(-2)+(-1)(0)+0·1+1·0+2·1 = 6; Σdx² = 10; Σdy² = 4+0+1+0+1 = 6 → r = 6/sqrt(60) = 0.774597
    assert pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]).value == pytest.approx(6 / math.sqrt(60))
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    ref = stats.pearsonr(x, y)
    ci = ref.confidence_interval()  # scipy's default is the Fisher-z interval
    e = pearson(x, y)
    assert e.value == pytest.approx(ref.statistic, abs=1e-12) and e.method == "fisher z" and e.n == 50
    assert (e.ci_low, e.ci_high) == (pytest.approx(ci.low, abs=1e-4), pytest.approx(ci.high, abs=1e-4))


def test_pearson_undefined():
    assert nan_estimate(pearson([1, 1, 1, 1], [1, 2, 3, 4]))  # constant x
    assert nan_estimate(pearson([0.1] * 7, [3, 1, 4, 1, 5, 9, 2]))  # constant, not exactly representable
    assert nan_estimate(pearson([1, 2, 3], [5, 5, 5], groups=[0, 1, 2]))
    assert nan_estimate(pearson([1], [2]))
    small = pearson([1, 2, 3], [1, 3, 2])  # r defined, but Fisher z needs n > 3
    assert small.value == pytest.approx(0.5) and math.isnan(small.ci_low)


def test_grouped_interval_counts_snippets_not_tokens():
    # 20 snippets, each 10 identical copies of one (x, y) point: really 20 observations, not 200.
    rng = np.random.default_rng(0)
    gx = rng.normal(size=20)
    gy = 0.6 * gx + rng.normal(size=20)
    x, y, groups = np.repeat(gx, 10), np.repeat(gy, 10), np.repeat(np.arange(20), 10)
    tokens = pearson(x, y)
    grouped = pearson(x, y, groups=groups, seed=1)
    assert grouped.value == pytest.approx(tokens.value) == pytest.approx(stats.pearsonr(gx, gy).statistic)
    assert grouped.method == "group jackknife fisher z, t quantile" and grouped.n == 20
    assert grouped.ci_low <= grouped.value <= grouped.ci_high
    assert grouped.ci_high - grouped.ci_low > 2 * (tokens.ci_high - tokens.ci_low)
    per_snippet = pearson(gx, gy)  # ... and about as wide as the Fisher-z interval of the 20 distinct points
    assert grouped.ci_high - grouped.ci_low == pytest.approx(per_snippet.ci_high - per_snippet.ci_low, rel=0.35)


def test_grouped_jackknife_matches_a_loop_and_the_null_shuffles_whole_snippets():
    rng = np.random.default_rng(3)
    sizes = np.array([4, 8] * 12 + [5])  # snippets of unequal length
    groups = np.repeat([f"s{i}" for i in range(25)], sizes)  # string ids work too
    x = rng.normal(size=len(groups)) + np.repeat(rng.normal(size=25), sizes)
    y = 0.4 * x + rng.normal(size=len(groups))
    e = pearson(x, y, groups=groups, seed=2)
    ids = np.unique(groups)
    zs = np.array([np.arctanh(stats.pearsonr(x[groups != g], y[groups != g]).statistic) for g in ids])
    se = math.sqrt(24 / 25 * np.sum((zs - zs.mean()) ** 2))
    q = stats.t.ppf(0.975, 24)
    z = np.arctanh(stats.pearsonr(x, y).statistic)
    assert (e.ci_low, e.ci_high) == (pytest.approx(math.tanh(z - q * se)), pytest.approx(math.tanh(z + q * se)))
    assert e.n == 25 and e.p_value == pytest.approx(1 / 1001)  # no shuffle of whole snippets comes close
    # With y unrelated to x the permutation p-value is spread over (0, 1]; check its level by simulation.
    null_p = [
        pearson(rng.normal(size=len(groups)), y, groups=groups, seed=k, n_permutations=200).p_value for k in range(200)
    ]
    assert 0.01 <= np.mean(np.array(null_p) <= 0.05) <= 0.10


def test_pearson_rejects_bad_input():
    with pytest.raises(AutointerpError, match="fix:"):
        pearson([1, 2, 3], [1, 2])
    with pytest.raises(AutointerpError, match="fix:"):
        pearson([1, 2, float("nan")], [1, 2, 3])
    with pytest.raises(AutointerpError, match="fix:"):
        pearson([1, 2, 3], [1, 2, 3], groups=[0, 1])


# ---------------------------------------------------------------- shuffle gap


def test_shuffle_gap_hand_value():
    # differences 0.4, 0.3, 0.2 → mean 0.3; every bootstrap mean lies in [0.2, 0.4]
    e = shuffle_gap([0.9, 0.8, 0.7], [0.5, 0.5, 0.5])
    assert e.value == pytest.approx(0.3) and e.n == 3
    assert 0.2 - 1e-12 <= e.ci_low <= e.value <= e.ci_high <= 0.4 + 1e-12


def test_shuffle_gap_drops_undefined_pairs():
    e = shuffle_gap([0.9, float("nan"), 0.7, 0.6], [0.5, 0.5, float("nan"), 0.4])
    assert e.n == 2 and e.value == pytest.approx((0.4 + 0.2) / 2)
    assert nan_estimate(shuffle_gap([float("nan")], [0.5]))
    one = shuffle_gap([0.9], [0.5])
    assert one.value == pytest.approx(0.4) and math.isnan(one.ci_low)


def test_shuffle_gap_seeded_and_shrinks():
    rng = np.random.default_rng(0)
    true, shuffled = rng.uniform(0.6, 0.9, 400), rng.uniform(0.4, 0.7, 400)
    small = shuffle_gap(true[:25], shuffled[:25], seed=1)
    assert small == shuffle_gap(true[:25], shuffled[:25], seed=1)
    large = shuffle_gap(true, shuffled, seed=1)
    assert large.ci_high - large.ci_low < (small.ci_high - small.ci_low) / 2


def test_gap_verdicts():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.9, 200)
    good = gap_verdict(shuffle_gap(base, base - 0.2 + rng.normal(0, 0.05, 200)))
    assert good.startswith("measures something")
    noise = gap_verdict(shuffle_gap(base, base + rng.normal(0, 0.1, 200)))
    assert noise.startswith("NOT MEASURING ANYTHING:") and "includes 0" in noise
    tiny = gap_verdict(shuffle_gap(base, base - MIN_GAP / 2 + rng.normal(0, 0.001, 200)))
    assert tiny.startswith("NOT MEASURING ANYTHING USEFUL")
    backwards = gap_verdict(shuffle_gap(base, base + 0.2))
    assert backwards.startswith("NOT MEASURING ANYTHING:") and "shuffled explanations score higher" in backwards
    assert gap_verdict(shuffle_gap([], [])).startswith("undefined")
    assert gap_verdict(shuffle_gap([0.9], [0.1])).startswith("undecided")


# ---------------------------------------------------------------- speed


def test_one_feature_takes_milliseconds():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.5
    scores = rng.normal(size=200) + labels
    groups = np.repeat(np.arange(20), 10)
    start = time.perf_counter()
    classification_scores(labels, scores > 0.5)
    auroc(scores, labels)
    pearson(scores, labels.astype(float), groups=groups)
    shuffle_gap(scores, scores[::-1])
    assert time.perf_counter() - start < 0.5  # typically ~20 ms; generous for slow CI machines


# ---------------------------------------------------------------- coverage at the sizes features are scored on


def test_95_percent_intervals_cover_the_truth_93_to_97_percent_of_the_time_at_n_20():
    """Judges of known accuracy, thousands of draws, 10 activating + 10 non-activating snippets (or 20
    snippets for the correlation): the share of intervals holding the true value."""
    rng = np.random.default_rng(42)
    draws = 4000
    covered = {"balanced_accuracy": 0, "auroc": 0, "pearson": 0}
    for _ in range(draws):
        tpr, tnr = rng.uniform(0.5, 0.95, 2)  # a judge right on activating snippets with p = tpr, on the others tnr
        truth = np.array([True] * 10 + [False] * 10)
        pred = np.where(truth, rng.random(20) < tpr, rng.random(20) >= tnr)
        ba = classification_scores(truth, pred)["balanced_accuracy"]
        covered["balanced_accuracy"] += ba.ci_low <= (tpr + tnr) / 2 <= ba.ci_high

        auc = rng.uniform(0.5, 0.95)  # binormal scores: AUC = Φ(d/√2)
        d = math.sqrt(2) * stats.norm.ppf(auc)
        a = auroc(np.concatenate([rng.normal(d, 1, 10), rng.normal(0, 1, 10)]), truth)
        covered["auroc"] += a.ci_low <= auc <= a.ci_high

    for _ in range(draws // 2):
        # Predicted and true activations on 20 snippets of 8 tokens, correlated rho at the token and the
        # snippet level (a snippet's shared context), so the pooled population correlation is rho.
        rho = rng.uniform(0.0, 0.9)
        cov = [[1, rho], [rho, 1]]
        xy = rng.multivariate_normal([0, 0], cov, 160) + np.repeat(rng.multivariate_normal([0, 0], cov, 20), 8, axis=0)
        r = pearson(xy[:, 0], xy[:, 1], groups=np.repeat(np.arange(20), 8), n_permutations=10)
        covered["pearson"] += r.ci_low <= rho <= r.ci_high
    rates = {
        "balanced_accuracy": covered["balanced_accuracy"] / draws,
        "auroc": covered["auroc"] / draws,
        "pearson": covered["pearson"] / (draws // 2),
    }
    print("coverage", rates)
    assert all(0.93 <= rate <= 0.97 for rate in rates.values()), rates


def test_lift_over_the_floor_is_the_mean_excess_with_nan_left_out():
    from autointerp.stats.metrics import lift_over

    values = [0.6, 0.8, float("nan"), 1.0, 0.7]
    e = lift_over(values, 0.5, n_boot=2000, seed=1)
    assert e.value == pytest.approx(np.mean([0.1, 0.3, 0.5, 0.2])) and e.n == 4
    assert 0.1 <= e.ci_low < e.value < e.ci_high <= 0.5  # bootstrap means lie within the excesses' range

"""Scores of explanations, each with a 95% confidence interval and a per-feature null test.

Every metric returns an `Estimate`. An undefined metric (recall with no
positives, a correlation with a constant side, AUROC with one class) has
value NaN and a NaN interval: a made-up 0 or 0.5 would look like a result.

Intervals are chosen for honest coverage at the sizes a feature is scored on
(10 activating + 10 non-activating snippets); tests/test_metrics.py simulates
judges of known accuracy and checks 93–97% coverage at n = 20:

* Proportions (accuracy, precision, recall): Wilson score interval.
* Balanced accuracy (TPR + TNR)/2: adjusted Wald, adding one success and one
  failure to each class (Agresti–Caffo), which keeps a perfect score's
  interval open below 1 instead of the percentile bootstrap's [1, 1].
* AUROC: Newcombe's score interval, the AUROC analogue of Wilson: the θ with
  |A − θ| ≤ z·sqrt(V(θ)), V the Hanley–McNeil variance with N* = (n₁+n₀)/2 − 1.
* Pearson r: Fisher-z for independent points; with groups (the snippets whose
  tokens are pooled) a delete-one-group jackknife on the Fisher-z scale with a
  t(groups − 1) quantile, n counting the groups. Tokens of one snippet are
  not independent draws.
* F1: percentile bootstrap stratified by class (not a headline metric).
* The shuffle gap (true minus shuffled score, paired by feature): percentile
  bootstrap over features.

Each headline estimate also carries a one-sided p-value against the null that
the label says nothing about which text is active, tested on the same snippets
by permutation: Fisher's exact test for a classification (the permutation
distribution of the hits given the margins), Mann–Whitney for AUROC, and
shuffling whole snippets for Pearson.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import hypergeom, mannwhitneyu, rankdata
from scipy.stats import t as student_t

from autointerp.errors import AutointerpError

Z95 = 1.96  # two-sided 95% normal quantile, as conventionally rounded
_PERCENTILES = (2.5, 97.5)  # the matching percentile-bootstrap bounds

# A scorer whose true explanations beat shuffled ones by less than this (on
# the metric's own 0–1 scale: accuracy, AUROC, correlation) is not worth
# reading even if the gap is statistically real: 0.05 is five points of
# balanced accuracy, smaller than the spread between judges or prompts.
MIN_GAP = 0.05

_NAN = float("nan")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% confidence interval.

    `n` is the number of observations the value is computed from (for
    precision: predicted positives; for recall: true positives). `method`
    names the interval.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    method: str
    p_value: float = _NAN  # one-sided, against the permutation null (NaN when not tested)


def _undefined(n: int, method: str) -> Estimate:
    return Estimate(_NAN, _NAN, _NAN, n, method)


class ClassificationScores(dict[str, Estimate]):
    """The five `Estimate`s by name, with the confusion counts as attributes."""

    def __init__(self, estimates: dict[str, Estimate], *, tp: int, fp: int, tn: int, fn: int):
        super().__init__(estimates)
        self.tp, self.fp, self.tn, self.fn = tp, fp, tn, fn


# ----------------------------------------------------------------------------
# input validation


def _vector(name: str, values: Sequence) -> np.ndarray:
    if isinstance(values, str):
        raise AutointerpError(f"{name} is one string, not a sequence", f"pass {name} as a list of values")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise AutointerpError(
            f"{name} has shape {arr.shape}; it must be one-dimensional", f"pass {name} as a flat list"
        )
    return arr


def _bools(name: str, values: Sequence) -> np.ndarray:
    arr = _vector(name, values)
    if arr.dtype != bool and not (arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all()):
        raise AutointerpError(
            f"{name} holds values other than True/False",
            f"pass {name} as booleans (or 0/1), e.g. [a > 0 for a in activations]",
        )
    return arr.astype(bool)


def _floats(name: str, values: Sequence, *, allow_nan: bool = False) -> np.ndarray:
    arr = _vector(name, values)
    if arr.dtype.kind not in "biuf":
        raise AutointerpError(f"{name} is not numeric (dtype {arr.dtype})", f"pass {name} as numbers")
    arr = arr.astype(np.float64)
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        raise AutointerpError(
            f"{name} has {int(bad.sum())} non-finite value(s), first at index {int(np.argmax(bad))}",
            f"drop or fix the non-finite entries of {name} before scoring",
        )
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise AutointerpError(
            f"inputs differ in length: {lengths}",
            "pass one entry per example in every argument, in the same order",
        )


def _check_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise AutointerpError(f"n_boot is {n_boot!r}; it must be an integer >= 1", "pass n_boot=1000 (the default)")
    return int(n_boot)


def _percentile_ci(replicates: np.ndarray) -> tuple[float, float]:
    """95% percentile interval; replicates where the metric is undefined (NaN) are left out."""
    kept = replicates[~np.isnan(replicates)]
    if kept.size == 0:
        return _NAN, _NAN
    low, high = np.percentile(kept, _PERCENTILES)
    return float(low), float(high)


# ----------------------------------------------------------------------------
# proportions


def wilson_interval(successes: int, n: int, z: float = Z95) -> Estimate:
    """Proportion successes/n with its Wilson score interval.

    The interval solves |p̂ − p| = z·sqrt(p(1 − p)/n) for p:
        centre = (p̂ + z²/2n) / (1 + z²/n)
        half   = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/4n²)
    With n = 0 the proportion is undefined and everything is NaN.
    """
    for name, v in (("successes", successes), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise AutointerpError(f"{name} is {v!r}; it must be an integer >= 0", "pass counts, not rates")
    if successes > n:
        raise AutointerpError(f"successes ({successes}) exceed n ({n})", "pass the number of trials as n")
    if not z > 0:
        raise AutointerpError(f"z is {z!r}; it must be positive", "pass z=1.96 for a 95% interval")
    if n == 0:
        return _undefined(0, "wilson")
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # Clip only float rounding: mathematically the bounds already lie in [0, 1].
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), int(n), "wilson")


# ----------------------------------------------------------------------------
# classification


def classification_scores(
    y_true: Sequence[bool], y_pred: Sequence[bool], *, n_boot: int = 1000, seed: int = 0
) -> ClassificationScores:
    """Accuracy, precision, recall (Wilson) and balanced accuracy, F1 (stratified bootstrap).

    Undefined values: precision without predicted positives, recall and F1
    without true positives in y_true, balanced accuracy without both classes.
    F1 = 2tp / (2tp + fp + fn), so it is 0 (not NaN) when positives exist but
    none is predicted.
    """
    truth, pred = _bools("y_true", y_true), _bools("y_pred", y_pred)
    _same_length(y_true=truth, y_pred=pred)
    n_boot = _check_boot(n_boot)
    tp, fp = int(np.sum(truth & pred)), int(np.sum(~truth & pred))
    fn, tn = int(np.sum(truth & ~pred)), int(np.sum(~truth & ~pred))
    n_pos, n_neg = tp + fn, tn + fp
    n = n_pos + n_neg

    # Stratified bootstrap: resampling the n_pos positives with replacement and
    # counting the hits gives tp* ~ Binomial(n_pos, tp/n_pos) exactly (each
    # draw is an independent hit with probability tp/n_pos); likewise
    # tn* ~ Binomial(n_neg, tn/n_neg). Drawing the counts directly is the same
    # bootstrap without an (n_boot, n) index matrix.
    rng = np.random.default_rng(seed)
    tp_b = rng.binomial(n_pos, tp / n_pos, n_boot) if n_pos else np.zeros(n_boot, dtype=np.int64)
    tn_b = rng.binomial(n_neg, tn / n_neg, n_boot) if n_neg else np.zeros(n_boot, dtype=np.int64)
    fn_b, fp_b = n_pos - tp_b, n_neg - tn_b

    boot = "stratified bootstrap percentile"
    bal = balanced_accuracy(tp, n_pos, tn, n_neg)
    if n_pos:
        f1 = Estimate(2 * tp / (2 * tp + fp + fn), *_percentile_ci(2 * tp_b / (2 * tp_b + fp_b + fn_b)), n, boot)
    else:
        f1 = _undefined(n, boot)

    estimates = {
        "accuracy": wilson_interval(tp + tn, n),
        "precision": wilson_interval(tp, tp + fp),
        "recall": wilson_interval(tp, n_pos),
        "balanced_accuracy": bal,
        "f1": f1,
    }
    return ClassificationScores(estimates, tp=tp, fp=fp, tn=tn, fn=fn)


def balanced_accuracy(tp: int, n_pos: int, tn: int, n_neg: int) -> Estimate:
    """(TPR + TNR)/2 with the adjusted-Wald interval (one success and one failure added to each class)
    and Fisher's exact one-sided p-value (the predictions are no better than a shuffle of them)."""
    method = "adjusted wald (+1/+1 per class)"
    if not (n_pos and n_neg):
        return _undefined(n_pos + n_neg, method)
    q1, q0 = (tp + 1) / (n_pos + 2), (tn + 1) / (n_neg + 2)
    centre = (q1 + q0) / 2
    half = Z95 / 2 * math.sqrt(q1 * (1 - q1) / (n_pos + 2) + q0 * (1 - q0) / (n_neg + 2))
    predicted = tp + (n_neg - tn)
    # Under the null every set of `predicted` snippets is as likely to be the one marked active:
    # the hits among the positives are hypergeometric.
    p = float(hypergeom.sf(tp - 1, n_pos + n_neg, n_pos, predicted))
    return Estimate(
        (tp / n_pos + tn / n_neg) / 2, max(0.0, centre - half), min(1.0, centre + half), n_pos + n_neg, method, p
    )


def _auc_from_ranks(ranks: np.ndarray, is_pos: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """Mann–Whitney U / (n_pos·n_neg) along the last axis.

    With midranks over the pooled scores, U = R_pos − n_pos(n_pos + 1)/2 counts
    every (positive, negative) pair where the positive scores higher, and a tie
    as ½: exactly P(score_pos > score_neg) + ½·P(tie).
    """
    rank_sum = np.sum(ranks * is_pos, axis=-1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each row of scores [R, N] against the same row of labels [R, N] (every row with the same
    number of positives, and both classes), ties counted as ½: a permutation null's statistic at once."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels[0].sum())
    return _auc_from_ranks(rankdata(scores, axis=-1), labels, n_pos, labels.shape[-1] - n_pos)


def _hanley_mcneil_variance(theta: float, n_pos: int, n_neg: int) -> float:
    """Var(AUROC) at true value theta (Hanley & McNeil 1982), with Newcombe's N* = (n₁+n₀)/2 − 1
    in place of n₁ − 1 and n₀ − 1."""
    m = (n_pos + n_neg) / 2 - 1
    return theta * (1 - theta) * (1 + m * (1 - theta) / (2 - theta) + m * theta / (1 + theta)) / (n_pos * n_neg)


def _score_bound(a: float, lo: float, hi: float, inside_at_lo: bool, n_pos: int, n_neg: int) -> float:
    """Bisection for the θ in [lo, hi] where |a − θ| = z·sqrt(V(θ)); `inside_at_lo` says which end is inside."""
    for _ in range(60):
        mid = (lo + hi) / 2
        inside = abs(a - mid) <= Z95 * math.sqrt(_hanley_mcneil_variance(mid, n_pos, n_neg))
        if inside == inside_at_lo:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> Estimate:
    """Area under the ROC curve in its Mann–Whitney form, ties counted ½, with Newcombe's score
    interval and the one-sided Mann–Whitney p-value (exact without ties, normal otherwise).
    NaN when either class is empty."""
    x, y = _floats("scores", scores), _bools("labels", labels)
    _same_length(scores=x, labels=y)
    pos, neg = x[y], x[~y]
    n_pos, n_neg = len(pos), len(neg)
    method = "newcombe score (hanley-mcneil variance)"
    if n_pos == 0 or n_neg == 0:
        return _undefined(len(x), method)
    is_pos = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])
    value = float(_auc_from_ranks(rankdata(np.concatenate([pos, neg])), is_pos, n_pos, n_neg))
    low = _score_bound(value, 0.0, value, False, n_pos, n_neg) if value > 0 else 0.0
    high = _score_bound(value, value, 1.0, True, n_pos, n_neg) if value < 1 else 1.0
    p = float(mannwhitneyu(pos, neg, alternative="greater").pvalue)
    return Estimate(value, low, high, n_pos + n_neg, method, p)


# ----------------------------------------------------------------------------
# correlation


def _r_from_sums(
    n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray
) -> np.ndarray:
    """Pearson r from the sums of x, y, x², y², xy (NaN where a side is constant).

    Callers centre x and y first, so the sums do not cancel catastrophically.
    """
    cov = sxy - sx * sy / n
    var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
    # A constant side leaves float dust instead of an exact 0 variance; treat
    # anything at rounding level of the raw second moment as zero.
    defined = (var_x > 1e-12 * sxx) & (var_y > 1e-12 * syy)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_x * var_y)
    return np.where(defined, np.clip(r, -1.0, 1.0), np.nan)


def pearson(
    x: Sequence[float],
    y: Sequence[float],
    *,
    groups: Sequence | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Pearson r pooled over all points, with a 95% interval and a one-sided permutation p-value.

    Without groups: the Fisher-z interval tanh(atanh(r) ± z/sqrt(n − 3)) for independent points
    (NaN interval for n <= 3); the null shuffles points.
    With groups (e.g. the snippet each token comes from): a delete-one-group jackknife of atanh(r)
    with a t(G − 1) quantile, n = G groups (NaN interval with fewer than 3); the null shuffles
    whole groups among the groups of the same length, keeping each snippet's tokens together.
    r is NaN when x or y has zero variance.
    """
    xa, ya = _floats("x", x), _floats("y", y)
    _same_length(x=xa, y=ya)
    n = len(xa)
    method = "fisher z" if groups is None else "group jackknife fisher z, t quantile"
    if n < 2:
        return _undefined(n, method)
    xc, yc = xa - xa.mean(), ya - ya.mean()
    columns = np.stack([np.ones(n), xc, yc, xc * xc, yc * yc, xc * yc], axis=1)
    value = float(_r_from_sums(*columns.sum(axis=0)))
    if math.isnan(value):
        return _undefined(n, method)
    rng = np.random.default_rng(seed)
    if groups is None:
        p = _p_at_least(_rows_r(xa[rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)], ya), value)
        if n <= 3:
            return Estimate(value, _NAN, _NAN, n, method, p)
        with np.errstate(divide="ignore"):  # r = ±1 gives atanh = ±inf and the interval [±1, ±1]
            z = np.arctanh(value)
        half = Z95 / math.sqrt(n - 3)
        return Estimate(value, float(np.tanh(z - half)), float(np.tanh(z + half)), n, method, p)

    g = _vector("groups", groups)
    _same_length(x=xa, groups=g)
    _, group_of = np.unique(g, return_inverse=True)
    n_groups = int(group_of.max()) + 1
    group_sums = np.zeros((n_groups, columns.shape[1]))
    np.add.at(group_sums, group_of, columns)
    p = _group_permutation_p(xa, ya, group_of, n_groups, value, n_permutations, rng)
    if n_groups < 3:
        return Estimate(value, _NAN, _NAN, n_groups, method, p)
    # Leave one group out: the remaining sums are the total minus that group's (x, y were centred on
    # all points, which leaves r unchanged).
    loo = _r_from_sums(*(group_sums.sum(axis=0)[None, :] - group_sums).T)
    if np.isnan(loo).any():
        return Estimate(value, _NAN, _NAN, n_groups, method, p)
    clip = 1 - 1e-12
    zs = np.arctanh(np.clip(loo, -clip, clip))
    se = math.sqrt((n_groups - 1) / n_groups * float(np.sum((zs - zs.mean()) ** 2)))
    z = float(np.arctanh(np.clip(value, -clip, clip)))
    q = float(student_t.ppf(0.975, n_groups - 1))
    return Estimate(value, float(np.tanh(z - q * se)), float(np.tanh(z + q * se)), n_groups, method, p)


def _rows_r(xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every row of xs [B, n] with y [n]."""
    xc = xs - xs.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc @ yc) / np.sqrt((xc * xc).sum(axis=1) * float(yc @ yc))


def _group_permutation_p(
    x: np.ndarray,
    y: np.ndarray,
    group_of: np.ndarray,
    n_groups: int,
    value: float,
    n_permutations: int,
    rng: np.random.Generator,
) -> float:
    """One-sided p of r under shuffling whole groups of x among the groups of y of the same length."""
    order = np.tile(np.arange(len(x)), (n_permutations, 1))
    members = [np.flatnonzero(group_of == k) for k in range(n_groups)]
    by_length: dict[int, list[int]] = {}
    for k, m in enumerate(members):
        by_length.setdefault(len(m), []).append(k)
    for ks in by_length.values():
        block = np.stack([members[k] for k in ks])  # [groups of this length, length]
        shuffled = rng.permuted(np.tile(np.arange(len(ks)), (n_permutations, 1)), axis=1)
        order[:, block.ravel()] = block[shuffled].reshape(n_permutations, -1)
    return _p_at_least(_rows_r(x[order], y), value)


def _p_at_least(null: np.ndarray, value: float) -> float:
    """(1 + #null ≥ value) / (1 + #null): the permutation p-value, never 0."""
    return float((1 + np.sum(null >= value - 1e-12)) / (1 + len(null)))


# ----------------------------------------------------------------------------
# does the scorer measure anything?


def shuffle_gap(true: Sequence[float], shuffled: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean paired difference true − shuffled over features, with a bootstrap interval.

    true[i] is feature i scored with its own explanation, shuffled[i] with
    another feature's. Features where either score is NaN (undefined) are left
    out; n counts the pairs used. The interval resamples features (percentile
    bootstrap); NaN with fewer than 2 pairs.
    """
    t = _floats("true", true, allow_nan=True)
    s = _floats("shuffled", shuffled, allow_nan=True)
    _same_length(true=t, shuffled=s)
    n_boot = _check_boot(n_boot)
    diff = (t - s)[~(np.isnan(t) | np.isnan(s))]
    n = len(diff)
    method = "paired bootstrap percentile"
    if n == 0:
        return _undefined(0, method)
    if n == 1:
        return Estimate(float(diff[0]), _NAN, _NAN, 1, method)
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    return Estimate(float(diff.mean()), *_percentile_ci(diff[idx].mean(axis=1)), n, method)


def lift_over(values: Sequence[float], floor: float, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of values − floor over features (NaN left out), with shuffle_gap's bootstrap interval: what a
    score adds to the trivial answer's (the floor), read with its uncertainty."""
    v = _floats("values", values, allow_nan=True)
    return shuffle_gap(v, np.full(len(v), float(floor)), n_boot=n_boot, seed=seed)


def gap_verdict(gap: Estimate) -> str:
    """Plain-language reading of a `shuffle_gap` result.

    The scorer is declared not to measure anything when the 95% interval
    includes 0 (or lies below it), or when the gap is under MIN_GAP.
    """
    if math.isnan(gap.value):
        return "undefined: no feature has both a true and a shuffled score, so the scorer was not tested"
    stated = f"gap {gap.value:+.3f} (95% CI {gap.ci_low:+.3f} to {gap.ci_high:+.3f}, {gap.n} features)"
    if math.isnan(gap.ci_low):
        return f"undecided: {stated}; too few features for an interval, score more features"
    if gap.ci_high < 0:
        return (
            f"NOT MEASURING ANYTHING: shuffled explanations score higher than true ones, {stated}; "
            "check the scorer for a bug (swapped labels or explanations)"
        )
    if gap.ci_low <= 0:
        return (
            f"NOT MEASURING ANYTHING: true explanations do not beat shuffled ones, {stated}; "
            "the interval includes 0, so the scores do not depend on the explanation"
        )
    if gap.value < MIN_GAP:
        return (
            f"NOT MEASURING ANYTHING USEFUL: {stated}; the gap is real but below {MIN_GAP}, "
            "too small to rank explanations"
        )
    return f"measures something: true explanations beat shuffled ones, {stated}"

"""Saturation of label categories: when do new categories stop appearing?

Each labelled SAE feature is an *individual* and its category a *species*.
After n labels there are S_obs distinct categories and f_k categories seen
exactly k times. Formulas, each from the work named beside it:

* ITS (De Paoli & Mathis): cumulative totals T_k, uniques U_k, U/T and ΔU/ΔT.
* Guest, Namey & Chen (2020): new categories in a run / categories in the base.
* Good–Turing coverage in the Chao–Jost form, and its extrapolation.
* Bias-corrected Chao1 with a log-normal 95% interval.
* Rarefaction E[S_m] and the Good–Toulmin estimate of new categories.

A dictionary is a finite population: with N alive features and n labelled, at most N − n labels
and N − n new categories remain. Every estimator takes `population=N` (None: an infinite
population, the classical formulas) and then uses the sampling-without-replacement forms, with
q = n/N the sampling fraction:

* Chao1 (Chao & Lin 2012): f̂0 = f1(f1−1) / (2(f2+1)·n/(n−1) + f1·q/(1−q)), the
  bias-corrected lower bound that tends to 0 as q → 1; variance × (1 − q), the finite-population
  correction; estimate and interval truncated to [S_obs, S_obs + N − n].
* Coverage: the unseen share f1/n·A scaled by (1 − q), so 1 at n = N; its extrapolation uses
  the sampling fraction the extra labels would reach, and labels-to-target is at most N − n.
* Good–Toulmin: at most min(m, N − n) new categories in the next m labels.
* At n = N every figure is exact: S_obs categories, coverage 1, nothing unseen.

Everything here is a pure function of plain Python / NumPy inputs. Sloppy
merging of categories creates false singletons (inflating f1 and Chao1,
lowering coverage), so `saturation_verdict` requires the merge rule to be
recorded next to the numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from autointerp.errors import AutointerpError

_Z95 = 1.96  # normal quantile for the 95% Chao1 interval

# ----------------------------------------------------------------------------
# input validation


def _check_labels(categories: Sequence[str]) -> list[str]:
    if isinstance(categories, str):
        raise AutointerpError(
            "categories is one string, not a sequence of labels",
            "pass a list of category names, e.g. ['syntax', 'names', 'syntax']",
        )
    labels = list(categories)
    if not labels:
        raise AutointerpError("no labels given", "pass at least one category label")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise AutointerpError(
                f"label {i} is {type(label).__name__} {label!r}, not a string",
                "map every feature to its category name (a str) before calling",
            )
    return labels


def _check_counts(counts: Mapping[str, int]) -> dict[str, int]:
    if not counts:
        raise AutointerpError("no category counts given", "pass counts for at least one category")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise AutointerpError(
                f"count for category {name!r} is {value!r}; counts must be integers >= 1",
                "build counts with counts_from_labels(...) or drop zero-count categories",
            )
    return {name: int(value) for name, value in counts.items()}


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise AutointerpError(
            f"{name} is {value!r}; it must be an integer >= {minimum}",
            f"pass an integer {name} >= {minimum}",
        )
    return int(value)


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise AutointerpError(
            f"threshold is {threshold!r}; it must lie in [0, 1]",
            "pass the new-information threshold as a fraction, e.g. 0.05 for 5%",
        )
    return float(threshold)


def _check_target(target: float) -> float:
    if not 0.0 < target <= 1.0:
        raise AutointerpError(
            f"target coverage is {target!r}; it must lie in (0, 1]",
            "pass the coverage target as a fraction, e.g. 0.95",
        )
    return float(target)


# ----------------------------------------------------------------------------
# counts and frequency of frequencies


def counts_from_labels(categories: Sequence[str]) -> dict[str, int]:
    """Number of labels per category, in order of first appearance."""
    return dict(Counter(_check_labels(categories)))


def frequency_counts(counts: Mapping[str, int]) -> dict[int, int]:
    """f_k: how many categories were seen exactly k times (k ascending, f_k > 0 only)."""
    return dict(sorted(Counter(_check_counts(counts).values()).items()))


def _summary(counts: Mapping[str, int]) -> tuple[int, int, int, int]:
    """(n, S_obs, f1, f2) of validated counts."""
    values = _check_counts(counts).values()
    freq = Counter(values)
    return sum(values), len(values), freq[1], freq[2]


# ----------------------------------------------------------------------------
# Good–Turing / Chao–Jost coverage


def _shrink(n: int, f1: int, f2: int) -> float:
    """Chao–Jost factor A = (n−1)f1 / ((n−1)f1 + 2f2).

    The bracket is 0/0 only when f2 = 0 and (n = 1 or f1 = 0); we take A = 1
    there (Turing's 1 − f1/n). With f1 = 0 the value of A does not matter.
    """
    denom = (n - 1) * f1 + 2 * f2
    return 1.0 if denom == 0 else (n - 1) * f1 / denom


def _check_population(population: int | None, n: int) -> int | None:
    if population is None:
        return None
    if isinstance(population, bool) or not isinstance(population, (int, np.integer)) or population < n:
        raise AutointerpError(
            f"population is {population!r} but {n} labels were counted",
            "pass the number of alive features (at least the number labelled), or None",
        )
    return int(population)


def _coverage(n: int, f1: int, f2: int, m: int = 0, population: int | None = None) -> float:
    unseen = (f1 / n) * _shrink(n, f1, f2) ** (m + 1)
    if population is not None:
        unseen *= max(0.0, 1 - (n + m) / population)
    return 1.0 - unseen


def good_turing_coverage(counts: Mapping[str, int], population: int | None = None) -> float:
    """Estimated sample coverage Ĉ = 1 − (f1/n)·A, A = (n−1)f1/((n−1)f1 + 2f2); in a population of
    N features the unseen share is scaled by (1 − n/N).

    1 − Ĉ estimates the probability that the next label opens a new category.
    Edge cases (all follow from the formula once 0/0 is read as A = 1):

    * f1 = 0 (no singletons): Ĉ = 1.
    * f2 = 0, f1 > 0, n > 1: A = 1, so Ĉ = 1 − f1/n (Turing's estimator).
    * f1 = n (all singletons, hence f2 = 0): Ĉ = 0 (1 − n/N... → n/N in a finite population).
    * n = 1: the single label is a singleton; Ĉ = 0.
    * n = N: Ĉ = 1, every feature is labelled.
    """
    n, _, f1, f2 = _summary(counts)
    return _coverage(n, f1, f2, population=_check_population(population, n))


def coverage_extrapolated(counts: Mapping[str, int], m: int, population: int | None = None) -> float:
    """Coverage expected after m more labels: Ĉ(n+m) = 1 − (f1/n)·A^(m+1)·(1 − (n+m)/N).

    With f2 = 0 (and f1 > 0) A = 1, so in an infinite population the extrapolation stays flat at
    1 − f1/n: without doubletons the formula carries no information about how fast the uncovered
    mass shrinks. m is capped at N − n.
    """
    m = _check_int("m", m, 0)
    n, _, f1, f2 = _summary(counts)
    population = _check_population(population, n)
    if population is not None:
        m = min(m, population - n)
    return _coverage(n, f1, f2, m, population)


def labels_to_reach_coverage(counts: Mapping[str, int], target: float, population: int | None = None) -> int | None:
    """Smallest m >= 0 with Ĉ(n+m) >= target, or None if the extrapolation never gets there.

    Infinite population: None when A = 1 (f2 = 0 with singletons, e.g. all singletons or n = 1)
    and the current coverage is below target, and when target = 1 with f1 > 0. Population N: at
    most N − n (labelling every feature reaches coverage 1).
    """
    target = _check_target(target)
    n, _, f1, f2 = _summary(counts)
    population = _check_population(population, n)
    if _coverage(n, f1, f2, population=population) >= target:
        return 0
    if population is not None:
        remaining = population - n
        hit = next((m for m in range(remaining + 1) if _coverage(n, f1, f2, m, population) >= target), remaining)
        return hit
    a = _shrink(n, f1, f2)
    if a >= 1.0 or target >= 1.0:
        return None
    # Solve (f1/n)·A^(m+1) <= 1 − target for m, then nudge for float rounding.
    m = max(0, math.ceil(math.log((1.0 - target) * n / f1) / math.log(a)) - 1)
    while m > 0 and _coverage(n, f1, f2, m - 1) >= target:
        m -= 1
    while _coverage(n, f1, f2, m) < target:
        m += 1
    return m


# ----------------------------------------------------------------------------
# Chao1


@dataclass(frozen=True)
class Chao1Result:
    """Bias-corrected Chao1 richness with a log-normal 95% interval."""

    estimate: float  # Ŝ
    f0_hat: float  # estimated number of unseen categories, Ŝ − S_obs
    completeness: float  # S_obs / Ŝ
    variance: float
    ci_low: float
    ci_high: float


def _chao1(n: int, s_obs: int, f1: int, f2: int, population: int | None = None) -> Chao1Result:
    k = (n - 1) / n
    q = n / population if population is not None else 0.0
    if q >= 1.0:  # fully labelled: nothing unseen, exactly
        return Chao1Result(float(s_obs), 0.0, 1.0, 0.0, float(s_obs), float(s_obs))
    if q > 0 and f1 > 0:  # Chao & Lin (2012), sampling without replacement, bias-corrected form
        f0 = f1 * (f1 - 1) / (2 * (f2 + 1) / k + f1 * q / (1 - q)) if n > 1 else 0.0
    else:
        f0 = k * f1 * (f1 - 1) / (2 * (f2 + 1))
    estimate = s_obs + f0
    if f2 > 0:
        r = f1 / f2
        variance = f2 * (r**2 / 2 + r**3 + r**4 / 4)
    else:
        variance = k * f1 * (f1 - 1) / 2 + k**2 * f1 * (2 * f1 - 1) ** 2 / 4 - k**2 * f1**4 / (4 * max(estimate, 1e-12))
    variance = max(variance, 0.0) * (1 - q)
    if f0 > 0:
        spread = math.exp(_Z95 * math.sqrt(math.log(1 + variance / f0**2)))
        low, high = s_obs + f0 / spread, s_obs + f0 * spread
    else:  # f1 <= 1 or n = 1: nothing unseen is estimated, the interval collapses
        low = high = float(s_obs)
    if population is not None:  # at most one new category per feature not yet labelled
        cap = float(s_obs + population - n)
        estimate, low, high = min(estimate, cap), min(low, cap), min(high, cap)
        f0 = estimate - s_obs
    return Chao1Result(estimate, f0, s_obs / estimate, variance, low, high)


def chao1(counts: Mapping[str, int], population: int | None = None) -> Chao1Result:
    """Bias-corrected Chao1: Ŝ = S_obs + ((n−1)/n)·f1(f1−1) / (2(f2+1)).

    Variance, with K = (n−1)/n:

    * f2 > 0 (Chao 1987, as in the reference): f2·[½r² + r³ + ¼r⁴], r = f1/f2.
    * f2 = 0 (Chao's bias-corrected form):
      K·f1(f1−1)/2 + K²·f1(2f1−1)²/4 − K²·f1⁴/(4Ŝ).

      Derivation: the delta method under the multinomial model used by Chao,
      cov(f_i, f_j) = f_i(δ_ij − f_j/Ŝ), gives var(Ŝ) = Σ a_i² f_i − (Σ a_i f_i)²/Ŝ,
      with a_i = ∂Ŝ/∂f_i. With Ŝ = Σ_i f_i + K·f1(f1−1)/(2(f2+1)) at f2 = 0,
      a_1 = 1 + K(2f1−1)/2 and a_i = 1 otherwise (the a_2 term is multiplied by
      f2 = 0). Then Σ a_i f_i = Ŝ + K·f1²/2 and
      Σ a_i² f_i = S_obs + K·f1(2f1−1) + K²·f1(2f1−1)²/4; subtracting
      (Ŝ + K·f1²/2)²/Ŝ and using S_obs = Ŝ − K·f1(f1−1)/2 leaves the form above.
      (The same steps on the classic f1²/(2f2) reproduce the f2 > 0 formula.)

    95% interval: [S_obs + T/C, S_obs + T·C], T = Ŝ − S_obs,
    C = exp(1.96·sqrt(ln(1 + var/T²))). When T = 0 (f1 <= 1 or n = 1; in
    particular f1 = 0 gives Ŝ = S_obs) the interval is [S_obs, S_obs].

    With population N: the Chao & Lin form and bounds in the module docstring.
    """
    n, s_obs, f1, f2 = _summary(counts)
    return _chao1(n, s_obs, f1, f2, _check_population(population, n))


# ----------------------------------------------------------------------------
# rarefaction and Good–Toulmin


def _log_choose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)


def rarefaction(counts: Mapping[str, int], m_values: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Expected distinct categories in a random subsample of m labels (without replacement).

    E[S_m] = Σ_i [1 − C(n−X_i, m)/C(n, m)], evaluated per frequency class k
    (Σ_k f_k [...]) with log-binomials for stability. Defined for 0 <= m <= n;
    returns an array shaped like `m_values`.
    """
    c = _check_counts(counts)
    n = sum(c.values())
    m = np.asarray(m_values)
    if m.dtype.kind not in "iuf" or np.any(m != np.round(m)) or np.any((m < 0) | (m > n)):
        raise AutointerpError(
            f"m_values must be integers in [0, n={n}]; got {m_values!r}",
            "rarefaction interpolates only; use coverage_extrapolated or good_toulmin beyond n",
        )
    freq = Counter(c.values())
    k = np.array(list(freq.keys()), dtype=float)
    f = np.array(list(freq.values()), dtype=float)
    mm = m.astype(float)[..., None]
    remaining = n - k  # labels outside a category with k labels
    possible = remaining >= mm  # else C(n−k, m) = 0: the category is certainly drawn
    log_ratio = _log_choose(np.where(possible, remaining, mm), mm) - _log_choose(float(n), mm)
    missed = np.where(possible, np.exp(log_ratio), 0.0)
    return np.sum(f * (1.0 - missed), axis=-1)


def good_toulmin(counts: Mapping[str, int], m: int, population: int | None = None) -> float:
    """Expected new categories in the next m labels: U(m) = −Σ_k (−m/n)^k f_k.

    Reliable only for m <= n: beyond that the alternating series diverges and
    the value swings wildly (it may even overflow to ±inf or nan). With population N
    it is held to [0, min(m, N − n)]: no more new categories than labels left.
    """
    m = _check_int("m", m, 0)
    c = _check_counts(counts)
    n = sum(c.values())
    population = _check_population(population, n)
    freq = Counter(c.values())
    k = np.array(list(freq.keys()), dtype=float)
    f = np.array(list(freq.values()), dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(-np.sum(f * np.power(-m / n, k)))
    if population is not None:
        value = min(max(value, 0.0), float(min(m, population - n)))
    return value


# ----------------------------------------------------------------------------
# order-dependent curves: ITS and Guest


def _distinct_series(labels: Sequence[str]) -> np.ndarray:
    """U_0..U_n: distinct categories among the first k labels (U_0 = 0)."""
    seen: set[str] = set()
    out = np.zeros(len(labels) + 1, dtype=np.int64)
    for i, label in enumerate(labels, start=1):
        seen.add(label)
        out[i] = len(seen)
    return out


def _distinct_series_codes(codes: np.ndarray) -> np.ndarray:
    """Vectorised _distinct_series for integer-coded labels (used by the bootstrap)."""
    first = np.zeros(codes.size, dtype=np.int64)
    first[np.unique(codes, return_index=True)[1]] = 1
    return np.concatenate(([0], np.cumsum(first)))


def _rolling(distinct: np.ndarray, window: int) -> np.ndarray:
    """ΔU/ΔT over the last min(window, k) labels, for k = 1..n."""
    k = np.arange(1, distinct.size)
    start = np.maximum(k - window, 0)
    return (distinct[k] - distinct[start]) / (k - start)


@dataclass(frozen=True)
class ITSSeries:
    """Inductive Thematic Saturation curves; entry k−1 describes the first k labels."""

    window: int
    total: np.ndarray  # T_k = k
    unique: np.ndarray  # U_k
    endpoint_ratio: np.ndarray  # U_k / T_k
    rolling_ratio: np.ndarray  # ΔU/ΔT over the last min(window, k) labels


def its_series(categories: Sequence[str], window: int) -> ITSSeries:
    """Cumulative totals, uniques and the endpoint and rolling ITS ratios (lower = more saturated).

    Each label is one code, so T_k = k. Before `window` labels exist the
    rolling window is all labels so far, so the rolling ratio equals U/T there.
    """
    labels = _check_labels(categories)
    window = _check_int("window", window, 1)
    distinct = _distinct_series(labels)
    total = np.arange(1, len(labels) + 1)
    unique = distinct[1:]
    return ITSSeries(window, total, unique, unique / total, _rolling(distinct, window))


@dataclass(frozen=True)
class GuestResult:
    """Guest, Namey & Chen saturation assessment for one label order."""

    base: int
    run: int
    threshold: float
    base_categories: int  # distinct categories in the first `base` labels (the denominator)
    ratios: np.ndarray  # ratios[j]: new categories in labels base+j+1 .. base+j+run / base_categories
    saturation_n: int | None  # N: labels before the first run whose ratio <= threshold

    @property
    def label(self) -> str | None:
        """Guest's report form "N+R": saturated after N labels, confirmed by a run of R."""
        return None if self.saturation_n is None else f"{self.saturation_n}+{self.run}"


def _guest(distinct: np.ndarray, base: int, run: int, threshold: float) -> GuestResult:
    n = distinct.size - 1
    base_categories = int(distinct[min(base, n)])
    starts = np.arange(base, n - run + 1)  # N = labels before each run; the run slides by one
    ratios = (distinct[starts + run] - distinct[starts]) / base_categories
    hits = np.flatnonzero(ratios <= threshold)
    saturation_n = int(starts[hits[0]]) if hits.size else None
    return GuestResult(base, run, threshold, base_categories, ratios, saturation_n)


def guest_saturation(categories: Sequence[str], base: int, run: int, threshold: float) -> GuestResult:
    """Guest saturation: ratio = new categories in a run / distinct categories in the base.

    The base is the first `base` labels and stays fixed; a run of `run` labels
    slides forward one label at a time starting right after the base, counting
    categories not seen in any earlier label. Saturation is reported at "N+R"
    for the first run (labels N+1..N+R) whose ratio <= threshold; None if none.
    With fewer than base + run labels there is no complete run: `ratios` is
    empty and saturation_n is None.
    """
    labels = _check_labels(categories)
    base = _check_int("base", base, 1)
    run = _check_int("run", run, 1)
    threshold = _check_threshold(threshold)
    return _guest(_distinct_series(labels), base, run, threshold)


# ----------------------------------------------------------------------------
# incremental per-step table and stop rule


def _alternating_sign(k: int) -> int:
    """(−1)^(k+1): Good–Toulmin at m = n is Σ_k (−1)^(k+1) f_k."""
    return 1 if k % 2 else -1


class _Tally:
    """Counts, f_k and Good–Toulmin(m = n) maintained in O(1) per arriving label."""

    def __init__(self, population: int | None = None) -> None:
        self.counts: dict[str, int] = {}
        self.freq: Counter[int] = Counter()
        self.n = 0
        self.good_toulmin_n = 0  # Σ_k (−1)^(k+1) f_k
        self.population = population

    def add(self, category: str) -> None:
        old = self.counts.get(category, 0)
        if old:
            self.freq[old] -= 1
            self.good_toulmin_n -= _alternating_sign(old)
        self.freq[old + 1] += 1
        self.good_toulmin_n += _alternating_sign(old + 1)
        self.counts[category] = old + 1
        self.n += 1

    @property
    def s_obs(self) -> int:
        return len(self.counts)

    def coverage(self) -> float:
        return _coverage(self.n, self.freq[1], self.freq[2], population=self.population)

    def chao1(self) -> Chao1Result:
        return _chao1(self.n, self.s_obs, self.freq[1], self.freq[2], self.population)

    def expected_new_next_n(self) -> float:
        """Good–Toulmin with m = n, held to [0, min(n, N − n)] in a finite population."""
        if self.population is None:
            return float(self.good_toulmin_n)
        return min(max(float(self.good_toulmin_n), 0.0), float(min(self.n, self.population - self.n)))


@dataclass(frozen=True)
class StepStats:
    """Saturation statistics after the first `step` labels."""

    step: int  # n
    category: str  # the n-th label
    total: int  # cumulative labels T_n (= n)
    distinct: int  # S_obs = U_n
    its_rolling: float  # ΔU/ΔT over the last min(window, n) labels
    guest_ratio: float | None  # ratio of the run ending at n; None while n < base + run
    guest_saturated: bool  # some run ending at or before n had ratio <= threshold
    coverage: float
    p_new: float  # 1 − coverage: chance the next label opens a new category
    chao1: float
    chao1_low: float
    chao1_high: float
    expected_new_next_n: float  # Good–Toulmin with m = n


def saturation_step_table(
    categories: Sequence[str], *, window: int, base: int, run: int, threshold: float, population: int | None = None
) -> list[StepStats]:
    """One StepStats per label, in order, computed incrementally (O(1) work per label)."""
    labels = _check_labels(categories)
    population = _check_population(population, len(labels))
    window = _check_int("window", window, 1)
    base = _check_int("base", base, 1)
    run = _check_int("run", run, 1)
    threshold = _check_threshold(threshold)

    tally = _Tally(population)
    distinct = [0]  # U_0..U_n, needed for the rolling and Guest differences
    saturated = False
    rows: list[StepStats] = []
    for label in labels:
        tally.add(label)
        n = tally.n
        distinct.append(tally.s_obs)
        span = min(window, n)
        its = (distinct[n] - distinct[n - span]) / span
        guest = None
        if n >= base + run:
            guest = (distinct[n] - distinct[n - run]) / distinct[base]
            saturated = saturated or guest <= threshold
        coverage = tally.coverage()
        c1 = tally.chao1()
        rows.append(
            StepStats(
                step=n,
                category=label,
                total=n,
                distinct=tally.s_obs,
                its_rolling=its,
                guest_ratio=guest,
                guest_saturated=saturated,
                coverage=coverage,
                p_new=1.0 - coverage,
                chao1=c1.estimate,
                chao1_low=c1.ci_low,
                chao1_high=c1.ci_high,
                expected_new_next_n=tally.expected_new_next_n(),
            )
        )
    return rows


def stop_rule(
    categories: Sequence[str], target_coverage: float, min_labels: int, population: int | None = None
) -> int | None:
    """First step n >= min_labels whose coverage is >= target_coverage, else None.

    Labelling stops there; the calls saved are len(categories) − n.
    """
    labels = _check_labels(categories)
    target = _check_target(target_coverage)
    min_labels = _check_int("min_labels", min_labels, 1)
    tally = _Tally(_check_population(population, len(labels)))
    for label in labels:
        tally.add(label)
        if tally.n >= min_labels and tally.coverage() >= target:
            return tally.n
    return None


# ----------------------------------------------------------------------------
# order bootstrap and verdict


@dataclass(frozen=True)
class Quantiles:
    median: float
    low: float  # 2.5%
    high: float  # 97.5%


def _quantiles(values: np.ndarray) -> Quantiles:
    median, low, high = np.quantile(values, [0.5, 0.025, 0.975])
    return Quantiles(float(median), float(low), float(high))


@dataclass(frozen=True)
class BootstrapSummary:
    """Spread of order-dependent statistics over shuffled label orders."""

    n_boot: int
    seed: int
    base: int
    run: int
    threshold: float
    window: int
    saturated_fraction: float  # share of orders with a Guest saturation point
    saturation_n: Quantiles | None  # Guest N over the orders that saturate; None if none do
    final_its_rolling: Quantiles  # rolling ITS at the last label


def bootstrap_orders(
    categories: Sequence[str], n_boot: int, seed: int, *, base: int, run: int, threshold: float, window: int
) -> BootstrapSummary:
    """Shuffle the label order n_boot times; summarise Guest saturation and the final rolling ITS.

    Labels are sorted before shuffling, so for a given seed the result depends
    only on the multiset of categories, never on which features came first.
    Quantiles of the saturation point use only the orders that saturate; read
    them together with `saturated_fraction`.
    """
    labels = sorted(_check_labels(categories))
    n_boot = _check_int("n_boot", n_boot, 1)
    base = _check_int("base", base, 1)
    run = _check_int("run", run, 1)
    threshold = _check_threshold(threshold)
    window = _check_int("window", window, 1)
    codes = np.unique(labels, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    points: list[int] = []
    final_its = np.empty(n_boot)
    for b in range(n_boot):
        distinct = _distinct_series_codes(rng.permutation(codes))
        point = _guest(distinct, base, run, threshold).saturation_n
        if point is not None:
            points.append(point)
        span = min(window, len(labels))
        final_its[b] = (distinct[-1] - distinct[-1 - span]) / span
    return BootstrapSummary(
        n_boot=n_boot,
        seed=seed,
        base=base,
        run=run,
        threshold=threshold,
        window=window,
        saturated_fraction=len(points) / n_boot,
        saturation_n=_quantiles(np.array(points)) if points else None,
        final_its_rolling=_quantiles(final_its),
    )


def expected_guest_ratio(counts: Mapping[str, int], base: int, run: int) -> float | None:
    """Order-free Guest ratio of the last run: (S_obs − E[S_{n−run}]) / E[S_base].

    Numerator and denominator are the exact expectations over uniformly random
    label orders (rarefaction), so no order is privileged. None when
    n < base + run.
    """
    c = _check_counts(counts)
    base = _check_int("base", base, 1)
    run = _check_int("run", run, 1)
    n = sum(c.values())
    if n < base + run:
        return None
    before_run, in_base = rarefaction(c, [n - run, base])
    return float((len(c) - before_run) / in_base)


@dataclass(frozen=True)
class SaturationVerdict:
    """Saturated or not, why, and every parameter needed to reproduce the call."""

    saturated: bool
    reasons: tuple[str, ...]  # one line per criterion, met or not
    n_labels: int
    distinct: int
    coverage: float
    guest_ratio: float | None  # expected_guest_ratio; None when n < base + run
    chao1: Chao1Result
    target_coverage: float
    base: int
    run: int
    threshold: float
    merge_rule: str
    population: int | None = None  # alive features in the dictionary; None: treated as infinite
    meaning: str = ""  # the figures read in one line, for a reader who does not know Guest or Chao1

    @property
    def fully_labelled(self) -> bool:
        return self.population is not None and self.n_labels == self.population


def _meaning(n: int, s_obs: int, f1: int, coverage: float, saturated: bool, *, fully_labelled: bool) -> str:
    """What the verdict's figures say, in one line. "Not saturated" beside an exact count of a fully
    labelled dictionary reads as a contradiction unless it says why: the labels are too fine to group."""
    if saturated:
        return f"new categories had stopped appearing: {s_obs:,} categories cover the {n:,} labels"
    one_each = f"{s_obs:,} categories for {n:,} labels, {f1:,} of them a category of one label"
    if 2 * f1 >= n:
        rest = (
            "every feature is labelled, so the count is exact; the labels name features one by one rather than "
            "recurring concepts (a coarser merge rule would group them)"
            if fully_labelled
            else f"the next label opens a new category with probability {1 - coverage:.2f}"
        )
        return f"labels too fine to group: {one_each}; {rest}"
    if fully_labelled:
        return f"every feature is labelled ({one_each}, exact), but new categories kept appearing to the last labels"
    return f"new categories still appear ({one_each}): the next label opens one with probability {1 - coverage:.2f}"


def saturation_verdict(
    categories: Sequence[str],
    *,
    target_coverage: float,
    base: int,
    run: int,
    threshold: float,
    merge_rule: str,
    population: int | None = None,
) -> SaturationVerdict:
    """Saturated when coverage >= target and the order-free Guest ratio <= threshold.

    Both criteria depend only on the category counts, so the verdict is the
    same for every order of the same labels. `merge_rule` (how categories were
    merged, and how strictly) is required because false singletons from loose
    merging move every number here.
    """
    labels = _check_labels(categories)
    target = _check_target(target_coverage)
    threshold = _check_threshold(threshold)
    if not isinstance(merge_rule, str) or not merge_rule.strip():
        raise AutointerpError(
            "merge_rule is empty",
            "describe how categories were merged and how strictly, e.g. 'LLM merge, temperature 0, near-duplicates "
            "only'",
        )
    counts = counts_from_labels(labels)
    n, s_obs, f1, f2 = _summary(counts)
    population = _check_population(population, n)
    coverage = _coverage(n, f1, f2, population=population)
    guest = expected_guest_ratio(counts, base, run)

    coverage_ok = coverage >= target
    reasons = [f"coverage {coverage:.4f} {'>=' if coverage_ok else '<'} target {target}"]
    if population is not None and n == population:
        # Nothing is unseen, so coverage is met exactly; whether new categories had stopped appearing
        # is still the Guest criterion's to say.
        reasons = [
            f"fully labelled: all {n} alive features have a label, so {s_obs} categories is exact and no new one can "
            "appear"
        ]
        coverage_ok = True
    if guest is None:
        guest_ok = False
        reasons.append(f"Guest ratio undefined: {n} labels < base + run = {base + run}")
    else:
        guest_ok = guest <= threshold
        reasons.append(
            f"expected Guest ratio of the last run {guest:.4f} {'<=' if guest_ok else '>'} "
            f"threshold {threshold} (base {base}, run {run})"
        )
    saturated = coverage_ok and guest_ok
    return SaturationVerdict(
        saturated=saturated,
        reasons=tuple(reasons),
        meaning=_meaning(n, s_obs, f1, coverage, saturated, fully_labelled=population == n),
        n_labels=n,
        distinct=s_obs,
        coverage=coverage,
        guest_ratio=guest,
        chao1=_chao1(n, s_obs, f1, f2, population),
        target_coverage=target,
        base=base,
        run=run,
        threshold=threshold,
        merge_rule=merge_rule,
        population=population,
    )

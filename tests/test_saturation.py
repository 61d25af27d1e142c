"""Saturation estimators checked against hand-worked values, brute force and recomputation."""

import itertools
import math
import random
from collections import Counter

import numpy as np
import pytest

from autointerp.errors import AutointerpError
from autointerp.stats.saturation import (
    bootstrap_orders,
    chao1,
    counts_from_labels,
    coverage_extrapolated,
    expected_guest_ratio,
    frequency_counts,
    good_toulmin,
    good_turing_coverage,
    guest_saturation,
    its_series,
    labels_to_reach_coverage,
    rarefaction,
    saturation_step_table,
    saturation_verdict,
    stop_rule,
)

# Running example: n = 7, S_obs = 4, f1 = 2 (b, c), f2 = 1 (d), f3 = 1 (a).
MIXED = {"a": 3, "b": 1, "c": 1, "d": 2}
# Chao–Jost factor A = (n−1)f1 / ((n−1)f1 + 2f2) = 6·2 / (6·2 + 2·1) = 12/14 = 6/7.


def test_counts_and_frequencies():
    counts = counts_from_labels(["a", "b", "a", "d", "c", "a", "d"])
    assert counts == MIXED
    assert list(counts) == ["a", "b", "d", "c"]  # first-appearance order
    assert frequency_counts(MIXED) == {1: 2, 2: 1, 3: 1}


# ---------------------------------------------------------------- coverage


def test_coverage_hand_value():
    # Ĉ = 1 − (2/7)·(6/7) = 1 − 12/49 = 37/49
    assert good_turing_coverage(MIXED) == pytest.approx(37 / 49)


def test_coverage_extrapolated_hand_values():
    # Ĉ(n+m) = 1 − (2/7)·(6/7)^(m+1)
    assert coverage_extrapolated(MIXED, 0) == pytest.approx(37 / 49)
    assert coverage_extrapolated(MIXED, 1) == pytest.approx(1 - 72 / 343)  # 271/343 ≈ 0.7901
    assert coverage_extrapolated(MIXED, 2) == pytest.approx(1 - 432 / 2401)  # 1969/2401 ≈ 0.8201


def test_labels_to_reach_coverage_hand_values():
    # coverage 0.7551 (m=0), 0.7901 (m=1), 0.8201 (m=2)
    assert labels_to_reach_coverage(MIXED, 0.75) == 0
    assert labels_to_reach_coverage(MIXED, 0.78) == 1
    assert labels_to_reach_coverage(MIXED, 0.80) == 2
    assert labels_to_reach_coverage(MIXED, 1.0) is None  # A^(m+1) > 0 for every m


def test_coverage_no_singletons_is_one():
    assert good_turing_coverage({"a": 2, "b": 3}) == 1.0
    assert labels_to_reach_coverage({"a": 2, "b": 3}, 1.0) == 0


def test_coverage_no_doubletons_is_turing():
    # {a:1, b:1, c:3}: n = 5, f1 = 2, f2 = 0 → A = 4·2/(4·2 + 0) = 1 → Ĉ = 1 − 2/5 = 3/5
    counts = {"a": 1, "b": 1, "c": 3}
    assert good_turing_coverage(counts) == pytest.approx(0.6)
    assert coverage_extrapolated(counts, 10) == pytest.approx(0.6)  # A = 1: flat
    assert labels_to_reach_coverage(counts, 0.6) == 0
    assert labels_to_reach_coverage(counts, 0.7) is None


def test_coverage_all_singletons_and_single_label():
    # f1 = n → Ĉ = 1 − 1·1 = 0; n = 1 is the same case with A read as 1
    assert good_turing_coverage({"a": 1, "b": 1, "c": 1}) == 0.0
    assert good_turing_coverage({"a": 1}) == 0.0
    assert labels_to_reach_coverage({"a": 1, "b": 1, "c": 1}, 0.5) is None
    assert labels_to_reach_coverage({"a": 1}, 0.5) is None


def test_coverage_single_category():
    assert good_turing_coverage({"a": 5}) == 1.0


# ---------------------------------------------------------------- Chao1


def test_chao1_hand_value():
    # Ŝ = 4 + (6/7)·2·1/(2·(1+1)) = 4 + 3/7 = 31/7
    r = chao1(MIXED)
    assert r.estimate == pytest.approx(31 / 7)
    assert r.f0_hat == pytest.approx(3 / 7)
    assert r.completeness == pytest.approx(4 / (31 / 7))  # 28/31
    # f2 > 0: r = f1/f2 = 2 → var = 1·(½·4 + 8 + ¼·16) = 14
    assert r.variance == pytest.approx(14.0)
    # T = 3/7, var/T² = 14·49/9 = 686/9, C = exp(1.96·sqrt(ln(695/9))) ≈ 59.522
    c = math.exp(1.96 * math.sqrt(math.log(695 / 9)))
    assert r.ci_low == pytest.approx(4 + (3 / 7) / c)  # ≈ 4.0072
    assert r.ci_high == pytest.approx(4 + (3 / 7) * c)  # ≈ 29.509
    assert r.ci_high == pytest.approx(29.5095, rel=1e-4)


def test_chao1_no_doubletons_hand_value():
    # {a:1, b:1, c:3}: n = 5, K = 4/5, f1 = 2, f2 = 0
    # Ŝ = 3 + 0.8·2·1/(2·1) = 3.8
    r = chao1({"a": 1, "b": 1, "c": 3})
    assert r.estimate == pytest.approx(3.8)
    # var = K·f1(f1−1)/2 + K²·f1(2f1−1)²/4 − K²·f1⁴/(4Ŝ)
    #     = 0.8·1 + 0.64·2·9/4 − 0.64·16/15.2 = 0.8 + 2.88 − 0.673684 = 3.006316
    assert r.variance == pytest.approx(0.8 + 2.88 - 10.24 / 15.2)
    assert r.variance == pytest.approx(3.006316, rel=1e-6)
    # Same number from the delta method Σ a_i² f_i − (Σ a_i f_i)²/Ŝ with
    # a_1 = 1 + K(2f1−1)/2 = 2.2 (f1 = 2) and a_3 = 1 (f3 = 1):
    # 2.2²·2 + 1 − (2.2·2 + 1)²/3.8 = 10.68 − 29.16/3.8
    assert r.variance == pytest.approx(10.68 - 29.16 / 3.8)
    c = math.exp(1.96 * math.sqrt(math.log(1 + r.variance / 0.8**2)))  # ≈ 13.269
    assert r.ci_low == pytest.approx(3 + 0.8 / c)  # ≈ 3.0603
    assert r.ci_high == pytest.approx(3 + 0.8 * c)  # ≈ 13.615


def test_chao1_no_singletons_equals_s_obs():
    r = chao1({"a": 2, "b": 3})
    assert (r.estimate, r.f0_hat, r.completeness) == (2.0, 0.0, 1.0)
    assert r.variance == 0.0  # f2 > 0 formula with r = 0
    assert (r.ci_low, r.ci_high) == (2.0, 2.0)


def test_chao1_all_singletons():
    # n = 3: Ŝ = 3 + (2/3)·3·2/(2·1) = 5
    r = chao1({"a": 1, "b": 1, "c": 1})
    assert r.estimate == pytest.approx(5.0)
    assert r.ci_low < 5.0 < r.ci_high


def test_chao1_single_category_and_single_label_collapse():
    for counts in ({"a": 5}, {"a": 1}):
        r = chao1(counts)
        assert (r.estimate, r.ci_low, r.ci_high) == (1.0, 1.0, 1.0)
        assert r.variance == 0.0


def test_chao1_one_singleton_collapses_interval():
    # f1 = 1 → f1(f1−1) = 0 → T = 0, no division by zero
    r = chao1({"a": 1, "b": 4})
    assert (r.estimate, r.ci_low, r.ci_high) == (2.0, 2.0, 2.0)


# ---------------------------------------------------------------- rarefaction


def test_rarefaction_endpoints_and_hand_value():
    # m = 2: C(7,2) = 21; a: 1 − C(4,2)/21 = 15/21; b, c: 1 − C(6,2)/21 = 6/21; d: 1 − C(5,2)/21 = 11/21
    # E[S_2] = 38/21. m = 6: C(7,6) = 7; a, d: 1; b, c: 1 − 1/7 → 2 + 12/7 = 26/7
    got = rarefaction(MIXED, [0, 1, 2, 6, 7])
    assert got == pytest.approx([0.0, 1.0, 38 / 21, 26 / 7, 4.0])
    assert rarefaction(MIXED, 7) == pytest.approx(4.0)  # E[S_n] = S_obs


def test_rarefaction_edge_cases():
    assert rarefaction({"a": 1, "b": 1, "c": 1}, [1, 2, 3]) == pytest.approx([1, 2, 3])
    assert rarefaction({"a": 5}, [1, 3, 5]) == pytest.approx([1, 1, 1])


def test_rarefaction_matches_subset_enumeration():
    labels = ["a", "a", "b", "c", "c", "c", "d"]
    counts = counts_from_labels(labels)
    for m in range(len(labels) + 1):
        subsets = list(itertools.combinations(labels, m))
        brute = sum(len(set(s)) for s in subsets) / len(subsets)
        assert rarefaction(counts, m) == pytest.approx(brute)


def test_rarefaction_large_sample_is_finite():
    counts = {f"c{i}": i for i in range(1, 200)}  # n = 19900
    got = rarefaction(counts, [1, 10_000, 19_900])
    assert got == pytest.approx([1.0, got[1], 199.0])
    assert 1.0 < got[1] < 199.0


# ---------------------------------------------------------------- Good–Toulmin


def test_good_toulmin_hand_values():
    # U(m) = −Σ_k (−m/n)^k f_k with f1 = 2, f2 = 1, f3 = 1, n = 7
    # m = 7: −(−2 + 1 − 1) = 2
    assert good_toulmin(MIXED, 7) == pytest.approx(2.0)
    # m = 3, t = 3/7: 2t − t² + t³ = 294/343 − 63/343 + 27/343 = 258/343
    assert good_toulmin(MIXED, 3) == pytest.approx(258 / 343)
    assert good_toulmin(MIXED, 0) == 0.0
    assert good_toulmin({"a": 1}, 1) == pytest.approx(1.0)


# ---------------------------------------------------------------- ITS and Guest

# U_k for k = 0..12: 0 1 2 3 4 5 6 6 7 7 7 7 7
GUEST_SEQ = "a b c d e f a g a b c a".split()


def test_its_series():
    s = its_series(GUEST_SEQ, window=3)
    assert s.unique.tolist() == [1, 2, 3, 4, 5, 6, 6, 7, 7, 7, 7, 7]
    assert s.total.tolist() == list(range(1, 13))
    assert s.endpoint_ratio[-1] == pytest.approx(7 / 12)
    assert s.rolling_ratio[1] == pytest.approx(1.0)  # k = 2 < window: U_2 / 2
    assert s.rolling_ratio[7] == pytest.approx(2 / 3)  # k = 8: (U_8 − U_5)/3 = (7 − 5)/3
    assert s.rolling_ratio[-1] == 0.0  # (U_12 − U_9)/3


def test_guest_known_saturation_point():
    # base 4 → 4 categories. Runs of 2 starting after N labels:
    # N=4: (U6−U4)/4 = 2/4; N=5: (6−5)/4; N=6: (7−6)/4; N=7: (7−6)/4; N=8..10: 0
    g = guest_saturation(GUEST_SEQ, base=4, run=2, threshold=0.1)
    assert g.base_categories == 4
    assert g.ratios.tolist() == [0.5, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0]
    assert (g.saturation_n, g.label) == (8, "8+2")
    assert guest_saturation(GUEST_SEQ, base=4, run=2, threshold=0.25).label == "5+2"
    assert guest_saturation(GUEST_SEQ, base=4, run=2, threshold=0.0).label == "8+2"


def test_guest_never_and_too_short():
    g = guest_saturation(list("abcdefgh"), base=3, run=2, threshold=0.05)
    assert g.saturation_n is None and g.label is None
    short = guest_saturation(list("aab"), base=2, run=2, threshold=0.05)
    assert short.ratios.size == 0 and short.saturation_n is None


# ---------------------------------------------------------------- step table


def _zipf_labels(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"c{int(x)}" for x in rng.zipf(1.6, n)]


def test_step_table_matches_recomputation():
    labels = _zipf_labels(300, seed=0)
    table = saturation_step_table(labels, window=10, base=20, run=5, threshold=0.05)
    assert [row.step for row in table] == list(range(1, 301))
    for n in (1, 2, 3, 7, 24, 25, 26, 100, 299, 300):
        row, prefix = table[n - 1], labels[:n]
        counts = counts_from_labels(prefix)
        # independent f1, f2 and doc formulas
        freq = Counter(Counter(prefix).values())
        f1, f2 = freq[1], freq[2]
        coverage = 1.0 if f1 == 0 else 1 - (f1 / n) * ((n - 1) * f1 / ((n - 1) * f1 + 2 * f2) if n > 1 else 1.0)
        assert row.category == labels[n - 1]
        assert row.total == n and row.distinct == len(set(prefix))
        assert row.coverage == pytest.approx(coverage)
        assert row.p_new == pytest.approx(1 - coverage)
        assert row.chao1 == pytest.approx(len(set(prefix)) + (n - 1) / n * f1 * (f1 - 1) / (2 * (f2 + 1)))
        c1 = chao1(counts)
        assert (row.chao1_low, row.chao1_high) == pytest.approx((c1.ci_low, c1.ci_high))
        assert row.expected_new_next_n == pytest.approx(good_toulmin(counts, n))
        assert row.its_rolling == pytest.approx(its_series(prefix, 10).rolling_ratio[-1])
        guest = guest_saturation(prefix, 20, 5, 0.05)
        if n < 25:
            assert row.guest_ratio is None and guest.ratios.size == 0
        else:
            assert row.guest_ratio == pytest.approx(guest.ratios[-1])
        assert row.guest_saturated == (guest.saturation_n is not None)


def test_stop_rule_hand_values():
    # n=1 {a:1}: 0; n=2 {a:2}: 1; n=3 {a:2,b:1}: 1 − (1/3)·(2/(2+2)) = 5/6; n=4 {a:2,b:2}: 1
    seq = list("aabbacca")
    assert stop_rule(seq, 0.9, 1) == 2
    assert stop_rule(seq, 0.9, 3) == 4
    assert stop_rule(seq, 0.8, 3) == 3
    assert stop_rule(list("abcdef"), 0.5, 1) is None


# ---------------------------------------------------------------- bootstrap and verdict


def test_bootstrap_deterministic_and_order_free():
    labels = _zipf_labels(200, seed=1)
    kwargs = dict(base=20, run=5, threshold=0.05, window=10)
    first = bootstrap_orders(labels, 200, 7, **kwargs)
    assert first == bootstrap_orders(labels, 200, 7, **kwargs)
    shuffled = labels[:]
    random.Random(3).shuffle(shuffled)
    assert first == bootstrap_orders(shuffled, 200, 7, **kwargs)
    assert 0.0 <= first.saturated_fraction <= 1.0
    assert first.final_its_rolling.low <= first.final_its_rolling.median <= first.final_its_rolling.high


def test_bootstrap_extremes():
    distinct = bootstrap_orders([f"c{i}" for i in range(30)], 20, 0, base=5, run=3, threshold=0.1, window=4)
    assert distinct.saturated_fraction == 0.0 and distinct.saturation_n is None
    assert distinct.final_its_rolling.median == 1.0
    same = bootstrap_orders(["a"] * 30, 20, 0, base=5, run=3, threshold=0.1, window=4)
    assert same.saturated_fraction == 1.0
    assert same.saturation_n.median == 5  # the first run after the base adds nothing
    assert same.final_its_rolling.median == 0.0


def test_expected_guest_ratio_matches_all_orders():
    labels = ["a", "a", "b", "c", "c"]
    base, run = 2, 2
    new_in_last_run, in_base = [], []
    for order in itertools.permutations(labels):
        new_in_last_run.append(len(set(order)) - len(set(order[:-run])))
        in_base.append(len(set(order[:base])))
    brute = np.mean(new_in_last_run) / np.mean(in_base)
    assert expected_guest_ratio(counts_from_labels(labels), base, run) == pytest.approx(brute)


def test_verdict_hand_values():
    # {a:4, b:3, c:2, d:1}: n = 10, f1 = 1, f2 = 1 → Ĉ = 1 − (1/10)·(9/11) = 101/110 ≈ 0.918
    # E[S_4] = 594/210 (a 195, b 175, c 140, d 84 over C(10,4) = 210)
    # S_obs − E[S_8] = 4 − 34/9 = 2/9 → ratio = (2/9)/(594/210) = 70/891 ≈ 0.0786
    labels = list("aaaabbbccd")
    v = saturation_verdict(labels, target_coverage=0.9, base=4, run=2, threshold=0.1, merge_rule="exact")
    assert v.coverage == pytest.approx(101 / 110)
    assert v.guest_ratio == pytest.approx(70 / 891)
    assert v.saturated and len(v.reasons) == 2
    assert (v.target_coverage, v.base, v.run, v.threshold, v.merge_rule) == (0.9, 4, 2, 0.1, "exact")
    assert v.chao1 == chao1(counts_from_labels(labels))
    strict = saturation_verdict(labels, target_coverage=0.9, base=4, run=2, threshold=0.05, merge_rule="exact")
    assert not strict.saturated and "> threshold" in strict.reasons[1]
    high = saturation_verdict(labels, target_coverage=0.95, base=4, run=2, threshold=0.1, merge_rule="exact")
    assert not high.saturated and "< target" in high.reasons[0]
    assert saturation_verdict(labels[::-1], target_coverage=0.9, base=4, run=2, threshold=0.1, merge_rule="exact") == v


def test_verdict_too_few_labels():
    v = saturation_verdict(list("aab"), target_coverage=0.5, base=2, run=2, threshold=0.1, merge_rule="exact")
    assert v.guest_ratio is None and not v.saturated
    assert "undefined" in v.reasons[1]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call",
    [
        lambda: counts_from_labels([]),
        lambda: counts_from_labels("abc"),
        lambda: counts_from_labels(["a", 3]),
        lambda: good_turing_coverage({}),
        lambda: good_turing_coverage({"a": 0}),
        lambda: coverage_extrapolated(MIXED, -1),
        lambda: good_toulmin(MIXED, -2),
        lambda: rarefaction(MIXED, [8]),
        lambda: rarefaction(MIXED, [-1]),
        lambda: rarefaction(MIXED, [1.5]),
        lambda: labels_to_reach_coverage(MIXED, 0.0),
        lambda: labels_to_reach_coverage(MIXED, 1.2),
        lambda: its_series(["a"], 0),
        lambda: guest_saturation(["a"], 0, 1, 0.05),
        lambda: guest_saturation(["a"], 1, 0, 0.05),
        lambda: guest_saturation(["a"], 1, 1, 1.5),
        lambda: guest_saturation(["a"], 1, 1, -0.1),
        lambda: saturation_step_table([], window=1, base=1, run=1, threshold=0.1),
        lambda: stop_rule(["a"], 0.9, 0),
        lambda: bootstrap_orders(["a"], 0, 1, base=1, run=1, threshold=0.1, window=1),
        lambda: saturation_verdict(["a"], target_coverage=0.9, base=1, run=1, threshold=0.1, merge_rule=" "),
    ],
)
def test_bad_input_names_the_fix(call):
    with pytest.raises(AutointerpError, match="fix:"):
        call()


# ---------------------------------------------------------------- a dictionary is a finite population

FINITE = {"a": 1, "b": 1, "c": 1, "d": 1, "e": 2, "f": 2}  # n = 8, S_obs = 6, f1 = 4, f2 = 2


def test_chao1_without_replacement_is_chao_lin_with_the_finite_population_correction_and_the_cap():
    from autointerp.stats.saturation import chao1

    c = chao1(FINITE, population=16)  # q = 1/2
    # f0 = f1(f1−1) / (2(f2+1)·n/(n−1) + f1·q/(1−q)) = 12 / (6·8/7 + 4) = 12 / 10.857143 = 1.105263
    assert c.estimate == pytest.approx(6 + 12 / (6 * 8 / 7 + 4)) == pytest.approx(7.105263, abs=1e-6)
    # var = f2(r²/2 + r³ + r⁴/4)·(1−q) with r = 2: 2·(2 + 8 + 4)·0.5 = 14; C = exp(1.96·sqrt(ln(1 + 14/f0²)))
    f0 = 12 / (6 * 8 / 7 + 4)
    spread = math.exp(1.96 * math.sqrt(math.log(1 + 14 / f0**2)))
    assert c.variance == pytest.approx(14) and c.ci_low == pytest.approx(6 + f0 / spread)
    assert 6 + f0 * spread > 14 and c.ci_high == 14  # capped: 8 features left can open at most 8 categories
    unbounded = chao1(FINITE)
    assert unbounded.estimate == pytest.approx(6 + 7 / 8 * 12 / 6) and unbounded.ci_high > 14


def test_coverage_and_labels_to_target_respect_the_features_left():
    from autointerp.stats.saturation import good_turing_coverage, labels_to_reach_coverage

    # A = (n−1)f1 / ((n−1)f1 + 2f2) = 28/32; unseen = f1/n·A·(1 − n/N) = 0.5·0.875·0.5 = 0.21875
    assert good_turing_coverage(FINITE, population=16) == pytest.approx(1 - 0.21875)
    assert good_turing_coverage(FINITE) == pytest.approx(1 - 0.5 * 0.875)
    # Ĉ(n+m) = 1 − 0.5·0.875^(m+1)·(1 − (8+m)/16): m = 4 gives 0.9359, m = 5 gives 0.9579 >= 0.95
    assert labels_to_reach_coverage(FINITE, 0.95, population=16) == 5
    # Without the bound: 0.5·0.875^(m+1) <= 0.05 needs m = 17, more features than are left (8).
    assert labels_to_reach_coverage(FINITE, 0.95) == 17
    assert labels_to_reach_coverage(FINITE, 1.0, population=16) == 8  # labelling the rest is exact


def test_new_categories_in_the_next_m_labels_never_exceed_the_labels_left():
    from autointerp.stats.saturation import good_toulmin

    singletons = {k: 1 for k in "abcde"}  # U(m) = −Σ(−m/n)^k f_k = m for all singletons
    assert good_toulmin(singletons, 5) == pytest.approx(5)
    assert good_toulmin(singletons, 5, population=7) == 2  # only two features are left
    assert good_toulmin(FINITE, 8, population=16) == pytest.approx(-(-4 + 2))  # = 2, the bound not binding


def test_a_fully_labelled_dictionary_is_exact_and_says_so():
    from autointerp.stats.saturation import (
        chao1,
        good_toulmin,
        good_turing_coverage,
        labels_to_reach_coverage,
        saturation_step_table,
    )

    labels = ["a", "b", "c", "d", "e", "e", "f", "f"]
    c = chao1(FINITE, population=8)
    assert (c.estimate, c.ci_low, c.ci_high, c.f0_hat) == (6, 6, 6, 0)
    assert good_turing_coverage(FINITE, population=8) == 1.0 and good_toulmin(FINITE, 8, population=8) == 0
    assert labels_to_reach_coverage(FINITE, 0.99, population=8) == 0
    v = saturation_verdict(
        labels, target_coverage=0.95, base=100, run=50, threshold=0.05, merge_rule="exact", population=8
    )
    assert v.fully_labelled and "fully labelled" in v.reasons[0] and v.coverage == 1.0
    assert (
        not v.saturated and "Guest ratio undefined" in v.reasons[1]
    )  # exact, but it says nothing of new categories stopping
    late = saturation_verdict(
        labels, target_coverage=0.95, base=4, run=2, threshold=0.5, merge_rule="exact", population=8
    )
    assert late.saturated == (late.guest_ratio <= 0.5)
    last = saturation_step_table(labels, window=100, base=100, run=50, threshold=0.05, population=8)[-1]
    assert (last.coverage, last.chao1, last.chao1_high, last.expected_new_next_n) == (1.0, 6, 6, 0)
    assert last.its_rolling == pytest.approx(6 / 8)  # the window is all 8 labels, never a wider one


def test_the_verdict_says_in_one_line_what_its_figures_mean():
    """A fully labelled dictionary whose labels are nearly all distinct is "not saturated" beside an exact
    category count: the line says the labels are too fine to group, not that more labels are needed."""
    distinct = [f"label {i}" for i in range(300)] + ["shared"] * 20  # 300 singletons of 320 labels
    fine = saturation_verdict(
        distinct, target_coverage=0.95, base=100, run=50, threshold=0.05, merge_rule="exact", population=320
    )
    assert not fine.saturated and fine.meaning.startswith("labels too fine to group: 301 categories for 320 labels")
    assert "300 of them a category of one label" in fine.meaning and "exact" in fine.meaning
    sampled = saturation_verdict(distinct, target_coverage=0.95, base=100, run=50, threshold=0.05, merge_rule="exact")
    assert "exact" not in sampled.meaning and "probability 0.94" in sampled.meaning  # 1 − coverage: f1/n = 300/320
    repeating = [f"c{i % 5}" for i in range(400)]  # five concepts, each seen 80 times
    done = saturation_verdict(repeating, target_coverage=0.95, base=100, run=50, threshold=0.05, merge_rule="exact")
    assert done.saturated and done.meaning == "new categories had stopped appearing: 5 categories cover the 400 labels"

"""distill.stats against published / independently computed values.

Wilson values: scipy.stats.binomtest(k, n).proportion_ci(method="wilson") (= statsmodels'
proportion_confint(method="wilson")). McNemar: Fagerland, Lydersen & Laake (2013), "The McNemar
test for binary matched-pairs data: mid-p and asymptotic are better than exact conditional",
BMC Med Res Methodol 13:91 — their worked example has b = 1, c = 7 and exact conditional
p = 0.070 (= 18/256); the others are 2 * sum_{i<=min(b,c)} C(n, i) / 2^n worked by hand and
agree with scipy.stats.binomtest(b, b + c, 0.5).pvalue.
"""

from __future__ import annotations

import math

import pytest

from distill.stats import (
    NOT_SIGNIFICANT,
    SIGNIFICANT,
    StatsError,
    accuracy_interval,
    bootstrap_interval,
    mcnemar_exact_p,
    paired_comparison,
    paired_counts,
    verdict,
    wilson_interval,
)


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        (0, 10, 0.0, 0.27753279986288926),
        (10, 10, 0.7224672001371107, 1.0),
        (5, 10, 0.236593090512564, 0.7634069094874361),
        (3, 100, 0.010254524024038925, 0.08451936429052762),
        (1, 1, 0.20654931437723745, 1.0),
        (0, 50, 0.0, 0.07134759913335872),  # the real run's base model: 0 of 50
        (3, 50, 0.020614970348973957, 0.1621709168883817),
    ],
)
def test_wilson_known_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-12)


def test_wilson_edges_and_levels():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing measured, nothing known
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0  # exact ends
    lo95, hi95 = wilson_interval(30, 60)
    lo99, hi99 = wilson_interval(30, 60, confidence=0.99)
    assert lo99 < lo95 < 0.5 < hi95 < hi99
    # symmetric: k of n mirrors n-k of n
    lo, hi = wilson_interval(2, 9)
    assert wilson_interval(7, 9) == pytest.approx((1 - hi, 1 - lo), abs=1e-15)
    for bad in ((11, 10), (-1, 10), (1, -1)):
        with pytest.raises(StatsError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):  # StatsError is a ValueError: the CLI's one-line error idiom
        wilson_interval(1, 2, confidence=1.5)


@pytest.mark.parametrize(
    "b, c, p",
    [
        (1, 7, 18 / 256),  # Fagerland et al. 2013: exact conditional p = 0.070
        (0, 5, 2 / 32),  # 0.0625: five flips one way is NOT significant
        (0, 6, 2 / 64),  # 0.03125: six is
        (3, 3, 1.0),
        (0, 0, 1.0),
        (0, 1, 1.0),
        (4, 5, 1.0),
        (10, 25, 0.016673847800120715),
        (2, 9, 2 * (1 + 11 + 55) / 2**11),  # 0.0654296875
        (121, 59, 4.4344492637551645e-06),
    ],
)
def test_mcnemar_exact_known_values(b, c, p):
    assert mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact_p(c, b) == pytest.approx(p, rel=1e-12)  # two-sided: order does not matter


def test_mcnemar_large_counts_stay_exact():
    # 2000 discordant pairs: 2**2000 overflows a float, integer sums do not
    p = mcnemar_exact_p(900, 1100)
    assert 0 < p < 1e-5 and math.isfinite(p)
    assert mcnemar_exact_p(1000, 1000) == 1.0
    with pytest.raises(StatsError):
        mcnemar_exact_p(-1, 3)


def test_mcnemar_matches_scipy_on_a_grid():
    scipy_stats = pytest.importorskip("scipy.stats")
    for b in range(0, 16):
        for c in range(0, 16):
            if b + c:
                expected = scipy_stats.binomtest(b, b + c, 0.5).pvalue
                assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-9), (b, c)


def test_wilson_matches_scipy_on_a_grid():
    scipy_stats = pytest.importorskip("scipy.stats")
    for n in (1, 2, 7, 50, 200):
        for k in range(0, n + 1, max(1, n // 10)):
            ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
            assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12), (k, n)


def test_verdict_boundary():
    assert verdict(0.049) == SIGNIFICANT == "significant at 5 %"
    assert verdict(0.05) == NOT_SIGNIFICANT == "not significant"  # p >= 0.05 is not significant
    assert verdict(0.2) == NOT_SIGNIFICANT
    assert verdict(0.02, alpha=0.01) == NOT_SIGNIFICANT and verdict(0.005, alpha=0.01) == "significant at 1 %"


def test_paired_comparison_counts_and_verdict():
    first = [True, True, False, False, True, False, False, True]
    second = [True, False, True, False, True, True, True, True]
    assert paired_counts(first, second) == (3, 1, 3, 1)
    cmp = paired_comparison(first, second)
    assert (cmp.n, cmp.both_right, cmp.first_only, cmp.second_only, cmp.both_wrong) == (8, 3, 1, 3, 1)
    assert cmp.accuracy_first == 4 / 8 and cmp.accuracy_second == 6 / 8 and cmp.difference == 2 / 8
    assert cmp.p_value == pytest.approx(2 * (1 + 4) / 16)  # b=1, c=3: 0.625
    assert not cmp.significant and cmp.verdict == NOT_SIGNIFICANT
    d = cmp.as_dict()
    assert d["first_only"] == 1 and d["second_only"] == 3 and d["verdict"] == "not significant"
    assert d["difference"] == 0.25 and d["significant"] is False
    # six questions fixed, none broken: significant
    strong = paired_comparison([False] * 6 + [True] * 4, [True] * 10)
    assert (strong.first_only, strong.second_only, strong.both_right) == (0, 6, 4)
    assert strong.p_value == pytest.approx(1 / 32) and strong.verdict == SIGNIFICANT
    with pytest.raises(StatsError):
        paired_comparison([True], [True, False])


def test_bootstrap_is_seeded_and_sane():
    outcomes = [True] * 30 + [False] * 70
    a = bootstrap_interval(outcomes, seed=1)
    assert a == bootstrap_interval(outcomes, seed=1)  # same seed, same numbers
    assert len({bootstrap_interval(outcomes, resamples=200, seed=s) for s in range(6)}) > 1  # seed used
    assert a[0] < 0.3 < a[1]
    wl, wh = wilson_interval(30, 100)
    assert abs(a[0] - wl) < 0.03 and abs(a[1] - wh) < 0.03  # close to Wilson at n = 100
    assert bootstrap_interval([True] * 5) == (1.0, 1.0)  # no variation to resample
    assert bootstrap_interval([False] * 5) == (0.0, 0.0)
    assert bootstrap_interval([]) == (0.0, 1.0)
    narrow = bootstrap_interval(outcomes, confidence=0.5, seed=1)
    assert a[0] <= narrow[0] <= narrow[1] <= a[1]
    assert accuracy_interval(outcomes, "bootstrap", seed=1) == a
    assert accuracy_interval(outcomes) == (wl, wh)
    with pytest.raises(StatsError):
        accuracy_interval(outcomes, "jackknife")

"""Statistics for comparing results: accuracy intervals and paired tests on the same questions.

Pure Python (math, random, statistics), no scipy: the exact binomial sums use integers.

- `wilson_interval(k, n)`: the Wilson score interval of an accuracy k/n (default 95 %); well
  behaved at 0/n and n/n, where the normal ("Wald") interval collapses to a point.
- `bootstrap_interval(outcomes, seed=...)`: percentile bootstrap of the mean of 0/1 outcomes,
  seeded so a report re-computes to the same numbers.
- `paired_comparison(first, second)`: two configurations answered the same questions; counts
  both-right, b = first right / second wrong, c = first wrong / second right, both-wrong; the
  exact McNemar p-value (two-sided binomial test of b against b + c at p = 0.5, the same number as
  `scipy.stats.binomtest(b, b + c, 0.5).pvalue`); and a verdict label.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

from kb.errors import NesyError

ALPHA = 0.05
CONFIDENCE = 0.95
SIGNIFICANT = "significant at 5 %"
NOT_SIGNIFICANT = "not significant"


class StatsError(NesyError, ValueError):
    """Impossible counts or settings (negative counts, k > n, a level outside (0, 1), ...)."""


def _check_level(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be between 0 and 1, got {confidence!r}")
    return confidence


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - _check_level(confidence)) / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n`; (0.0, 1.0) when n == 0 (nothing known)."""
    if n < 0 or successes < 0 or successes > n:
        raise StatsError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_interval(
    outcomes: Sequence[bool], confidence: float = CONFIDENCE, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy of 0/1 `outcomes` (seeded, reproducible)."""
    _check_level(confidence)
    if resamples < 1:
        raise StatsError(f"resamples must be at least 1, got {resamples}")
    n = len(outcomes)
    if n == 0:
        return 0.0, 1.0
    # Resampling n Bernoulli outcomes with replacement = drawing each outcome from the empirical
    # distribution; only the number of successes matters.
    values = [1 if o else 0 for o in outcomes]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo_i = min(resamples - 1, max(0, math.floor(tail * resamples)))
    hi_i = min(resamples - 1, max(0, math.ceil((1 - tail) * resamples) - 1))
    return means[lo_i], means[hi_i]


def accuracy_interval(
    outcomes: Sequence[bool], method: str = "wilson", confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """The interval of the accuracy of `outcomes` by `method` ("wilson" or "bootstrap")."""
    if method == "wilson":
        return wilson_interval(sum(bool(o) for o in outcomes), len(outcomes), confidence)
    if method == "bootstrap":
        return bootstrap_interval(outcomes, confidence, seed=seed)
    raise StatsError(f"unknown interval method {method!r} (wilson, bootstrap)")


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of b successes in b + c trials at p = 0.5.

    The two-sided p of a symmetric binomial is twice the smaller tail, capped at 1; 1.0 when no
    answer differs (b + c == 0). Exact with integer arithmetic for any size.
    """
    if b < 0 or c < 0:
        raise StatsError(f"flip counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def verdict(p_value: float, alpha: float = ALPHA) -> str:
    """'significant at 5 %' when p < alpha, else 'not significant'."""
    if alpha != ALPHA:
        return f"significant at {100 * alpha:g} %" if p_value < alpha else NOT_SIGNIFICANT
    return SIGNIFICANT if p_value < alpha else NOT_SIGNIFICANT


@dataclass(frozen=True)
class PairedComparison:
    """Two configurations on the same n questions (first vs second)."""

    n: int
    both_right: int
    first_only: int  # b: first right, second wrong
    second_only: int  # c: first wrong, second right
    both_wrong: int
    p_value: float  # exact McNemar, two-sided
    alpha: float = ALPHA

    @property
    def accuracy_first(self) -> float:
        return (self.both_right + self.first_only) / self.n if self.n else 0.0

    @property
    def accuracy_second(self) -> float:
        return (self.both_right + self.second_only) / self.n if self.n else 0.0

    @property
    def difference(self) -> float:
        """Accuracy of second minus accuracy of first, on the shared questions."""
        return (self.second_only - self.first_only) / self.n if self.n else 0.0

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def verdict(self) -> str:
        return verdict(self.p_value, self.alpha)

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "accuracy_first": self.accuracy_first,
            "accuracy_second": self.accuracy_second,
            "difference": self.difference,
            "significant": self.significant,
            "verdict": self.verdict,
        }


def paired_counts(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both right, first only, second only, both wrong) of two aligned outcome lists."""
    if len(first) != len(second):
        raise StatsError(f"paired outcomes must have the same length, got {len(first)} and {len(second)}")
    pairs = [(bool(a), bool(b)) for a, b in zip(first, second)]
    return (
        pairs.count((True, True)),
        pairs.count((True, False)),
        pairs.count((False, True)),
        pairs.count((False, False)),
    )


def paired_comparison(first: Sequence[bool], second: Sequence[bool], alpha: float = ALPHA) -> PairedComparison:
    """Compare two configurations' outcomes on the same questions (aligned lists of right/wrong)."""
    both_right, b, c, both_wrong = paired_counts(first, second)
    return PairedComparison(
        n=len(first),
        both_right=both_right,
        first_only=b,
        second_only=c,
        both_wrong=both_wrong,
        p_value=mcnemar_exact_p(b, c),
        alpha=alpha,
    )

"""Uncertainty for every number razor-robot reports: Wilson intervals for success rates, percentile bootstrap.

Conventions:
- `wilson_interval` works in fractions (0-1); `rate_summary` reports percentages (0-100), the unit of records.
- Bootstraps are percentile bootstraps (Efron): draw `n_resamples` resamples of size n with replacement from a
  `numpy.random.default_rng(seed)`, take the statistic of each, report the (1-c)/2 and (1+c)/2 percentiles
  (numpy's default linear interpolation). Fixed seed -> identical interval on every call.
- Paired bootstraps (the verdict, R² differences) draw one set of resampling weights and apply it to every
  series that shares the units: `resample_counts` gives those weights as multinomial counts.
- Several bases: `hierarchical_bootstrap` resamples the bases, then each drawn base's own (paired-episode)
  replicates: the interval covers base-to-base variation as well as episode noise.

This module needs numpy; `wilson_interval` needs scipy (the `learn` extra). It never imports torch.

Public API:
    wilson_interval(successes, n, confidence=0.95)            -> (lo, hi) fractions
    rate_summary(outcomes, confidence=0.95)                    -> {"rate", "n", "successes", "ci95"} (points)
    bootstrap_ci(values, statistic=np.mean, n_resamples, seed) -> (lo, hi)
    resample_counts(n, n_resamples, rng)                       -> (R, n) counts: bootstrap weights
    percentile_interval(replicates, confidence=0.95)           -> (lo, hi), NaN replicates ignored
    hierarchical_bootstrap(within, n_resamples, rng)           -> (R,) two-stage replicates: units, then within
    interval_sign(lo, hi)                                      -> +1 / -1 / 0: the CI excludes 0 above / below
    episodes_to_resolve(n, estimate, lo, hi)                   -> episodes that would make the CI exclude 0
    max_drawdown(values)                                       -> largest fall below the running best
    drawdown_null_probability(successes, n)                    -> P(noise alone falls that far), exact
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
"""Bootstrap resamples unless told otherwise: percentile intervals of 95% settle to ~0.1 of their width."""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion, as fractions in [0, 1]; (nan, nan) when n == 0.

    Uses scipy.stats.binomtest(successes, n).proportion_ci(method="wilson"). Unlike the normal (Wald)
    interval it stays inside [0, 1] and is not degenerate at 0/n or n/n: 0/10 gives (0, 0.278).
    """
    if isinstance(successes, bool) or isinstance(n, bool) or int(successes) != successes or int(n) != n:
        raise ValueError(f"successes and n must be integers, got {successes!r} and {n!r}")
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n == 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate_summary(outcomes: Sequence[bool | int], confidence: float = 0.95) -> dict[str, Any]:
    """Success rate of 0/1 episode outcomes in points, with its count and Wilson interval (points).

    Returns {"rate": 100 k/n, "n": n, "successes": k, "ci95": [lo, hi]}; rate and bounds are NaN for n == 0.
    """
    values = np.asarray(list(outcomes), dtype=float)  # (n,)
    if values.ndim != 1 or not np.all((values == 0) | (values == 1)):
        raise ValueError("outcomes must be a flat sequence of 0/1 (or bools)")
    n, successes = len(values), int(values.sum())
    lo, hi = wilson_interval(successes, n, confidence)
    rate = 100.0 * successes / n if n else math.nan
    return {"rate": rate, "n": n, "successes": successes, "ci95": [100.0 * lo, 100.0 * hi]}


def resample_counts(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n) int counts: how often each of n units appears in each bootstrap resample.

    Each row is Multinomial(n, uniform), i.e. the histogram of n draws with replacement; `counts @ x / n` is
    the resampled mean of x for every row at once, and applying the same counts to several series gives a
    paired bootstrap.
    """
    if n < 1 or n_resamples < 1:
        raise ValueError(f"need n >= 1 and n_resamples >= 1, got n={n}, n_resamples={n_resamples}")
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)  # (R, n)


def percentile_interval(replicates: Any, confidence: float = 0.95) -> tuple[float, float]:
    """The (1-c)/2 and (1+c)/2 percentiles of bootstrap replicates; NaN replicates are ignored.

    (nan, nan) when no replicate is finite.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    values = np.asarray(replicates, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    alpha = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [alpha, 100.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Any,
    statistic: Callable[..., Any] = np.mean,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the 1-d `values` (see module doc).

    `statistic` is called once on the (n_resamples, n) array of resamples with axis=-1 when it accepts it
    (numpy reductions: np.mean, np.median, ...), otherwise once per resample. (nan, nan) for no values;
    (v, v) for one value.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-d, got shape {x.shape}")
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, len(x), size=(n_resamples, len(x)))]  # (R, n)
    try:
        replicates = np.asarray(statistic(samples, axis=-1), dtype=float)  # (R,)
    except TypeError:
        replicates = np.array([statistic(row) for row in samples], dtype=float)  # (R,)
    if replicates.shape != (n_resamples,):
        replicates = np.array([statistic(row) for row in samples], dtype=float)
    return percentile_interval(replicates, confidence)


def hierarchical_means(within: np.ndarray, unit_draws: np.ndarray, replicate_draws: np.ndarray) -> np.ndarray:
    """(R,) means over each resample's drawn units of a within-unit replicate: row r averages
    within[unit_draws[r, j], replicate_draws[r, j]] over j.

    within: (U, R_in) each unit's (base's) own bootstrap replicates of its statistic; unit_draws,
    replicate_draws: (R, U) indices, the units drawn with replacement and, for each draw, which of its
    replicates it contributes.
    """
    within = np.asarray(within, dtype=float)
    return within[unit_draws, replicate_draws].mean(axis=1)  # (R, U) -> (R,)


def hierarchical_bootstrap(within: Any, n_resamples: int = DEFAULT_RESAMPLES,
                           rng: np.random.Generator | None = None) -> np.ndarray:
    """Two-stage bootstrap replicates of the mean over units (the bases of a multi-base sweep), (R,).

    Stage 1 draws U units with replacement (base-to-base variation); stage 2 gives every drawn unit one of its
    own within-unit replicates (e.g. its paired-episode bootstrap), drawn independently per draw, so a unit
    drawn twice contributes two within-unit resamples. ``within`` is (U, R_in); NaN replicates propagate.
    With one unit this is that unit's within-unit replicates resampled; with no within-unit noise it is the
    ordinary bootstrap of the units' values.
    """
    values = np.asarray(within, dtype=float)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"within must be (units >= 1, replicates >= 1), got shape {values.shape}")
    rng = rng or np.random.default_rng(0)
    units, inner = values.shape
    unit_draws = rng.integers(0, units, size=(n_resamples, units))  # (R, U)
    replicate_draws = rng.integers(0, inner, size=(n_resamples, units))  # (R, U)
    return hierarchical_means(values, unit_draws, replicate_draws)


def interval_sign(lo: float, hi: float) -> int:
    """+1 when the interval lies above 0 (lo > 0), -1 when below (hi < 0), 0 when it holds 0 or is NaN."""
    if math.isfinite(lo) and lo > 0:
        return 1
    if math.isfinite(hi) and hi < 0:
        return -1
    return 0


def episodes_to_resolve(n: int, estimate: float, lo: float, hi: float) -> float:
    """Episodes (same units as n) at which the CI would just exclude 0, if the effect stays `estimate`.

    The side of the CI facing 0 (estimate - lo for a positive estimate, hi - estimate for a negative one)
    shrinks as 1/sqrt(n), so it equals |estimate| at n' = n (side / |estimate|)²; returned rounded up to
    an integer (as a float), never below n + 1 when the CI now holds 0. inf when the estimate is 0 or the
    interval is NaN; n itself when the CI already excludes 0.
    """
    if not (math.isfinite(estimate) and math.isfinite(lo) and math.isfinite(hi)) or estimate == 0:
        return math.inf
    if interval_sign(lo, hi) != 0:
        return float(n)
    side = estimate - lo if estimate > 0 else hi - estimate
    return float(max(math.ceil(n * (side / abs(estimate)) ** 2), n + 1))


def max_drawdown(values: Sequence[float]) -> float:
    """Largest fall of a series below its running best: max over t of (max_{s<=t} v_s) - v_t; 0 when it never
    falls, NaN when empty."""
    series = np.asarray(values, dtype=float)
    if series.size == 0:
        return math.nan
    return float(np.max(np.maximum.accumulate(series) - series))


def drawdown_null_probability(successes: Sequence[int], n: int) -> float:
    """How often noise alone gives the observed drawdown: P(max drawdown >= observed) over T iterations of
    n episodes each when every iteration's successes are Binomial(n, p) at the pooled rate p = sum / (T n).

    ``successes`` (T,) are per-iteration success counts out of the same n episodes. A small value says the
    fall is more than sampling noise of a policy that did not change; a large one, that n episodes per
    iteration cannot tell such a fall from noise. Exact: a dynamic programme over the running best (in
    counts) of the paths that have not yet fallen that far, O(T n).
    """
    counts = np.asarray(successes, dtype=int)
    if counts.ndim != 1 or counts.size == 0 or n < 1 or counts.min() < 0 or counts.max() > n:
        raise ValueError(f"need one success count in [0, {n}] per iteration, got {successes!r}")
    drop = int(max_drawdown(counts))
    if drop == 0:
        return 1.0
    pmf = _binomial_pmf(n, counts.sum() / (counts.size * n))  # (n+1,) successes per iteration
    cdf = np.cumsum(pmf)
    # P(best - drop < k <= best) for each running best: the draws that keep a path alive without a new best.
    below = np.concatenate([np.zeros(drop), cdf[:-drop]])  # drop <= n: counts never exceed n
    stay = cdf - below  # (n+1,)
    alive = pmf.copy()  # (n+1,) mass of paths whose running best is m and that never fell `drop` below it
    for _ in range(counts.size - 1):
        # A new best j from any lower best, or best j kept by a draw that falls less than `drop`.
        lower = np.concatenate([[0.0], np.cumsum(alive)[:-1]])  # (n+1,) sum of alive[m] for m < j
        alive = pmf * lower + alive * stay
    return float(np.clip(1.0 - alive.sum(), 0.0, 1.0))


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(k successes in n trials) for k = 0..n (numpy only: the core install has no scipy)."""
    k = np.arange(n + 1)
    if p <= 0.0 or p >= 1.0:
        return (k == (n if p >= 1.0 else 0)).astype(float)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    return np.exp(log_choose + k * math.log(p) + (n - k) * math.log1p(-p))

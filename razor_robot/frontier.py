"""Pareto frontiers of new-task vs prior-task success, and forgetting-vs-distance fits (RL's Razor, Sec. 3-4).

Works on plain records, e.g. the lines of results.jsonl:

    {"method": "sft", "new_task": 72.0, "prior_task": 61.5, "kl": 0.84, "kl/reverse": ..., ...}

Conventions:
- Scores are success rates in **percentage points** (0-100); `tolerance` is in points. Records holding
  fractions (0-1) are converted by `load_records(path, scale=100)` / `frontier_report(..., scale=100)`.
- The record with method == "base" is the pre-fine-tuning policy: forgetting = base prior_task - prior_task.
- Distances (`kl`, `kl/reverse`, `kl/tv`, `kl/l2`) may be missing, None or NaN: such records are left out of
  the fits that need them and drawn nowhere on the distance plot. "kl" falls back to "kl/forward" (the key
  written by razor_robot.metrics) when absent.

Frontier definitions (both maximise new_task and prior_task):
- `pareto_frontier`: the records no other record dominates (>= on both scores, > on one).
- `near_frontier`: the frontier as a staircase, f(n) = max prior_task over frontier records with
  new_task >= n, i.e. the best prior-task score any run reached while at least as good on the new task.
  A record is near the frontier when prior_task >= f(new_task) - tolerance (inclusive).
  `interpolation="linear"` joins the frontier points with straight lines instead (a slightly stricter
  test between frontier points).

Uncertainty (records as in results.jsonl; old records without these keys still work, without intervals):
- Each success rate may carry "<key>/n", "<key>/successes", "<key>/ci95" (Wilson, points) and the record
  "episodes": {task: [0/1, ...]} with "paired": true (episode i = same position and env seed for every
  checkpoint). `score_ci` / `format_rate` show a rate with its interval and n.
- `compare_methods` / `verdict_lines`: the verdict, i.e. the retention gap between two methods at matched
  new-task success with a paired episode bootstrap CI ("RL forgets less" / "SFT forgets less" /
  "unresolved" + the episodes a resolved answer would need). The exact definition is in its docstring.
- `r2_fits` / `table1`: R² of the forgetting fit for every "kl/" and "pred/" predictor with a checkpoint
  bootstrap CI, and whether forward KL predicts forgetting better than each (paired R² difference).
- `frontier_outputs` writes frontier.png (CI bars, bootstrap bands, verdict title), kl_forgetting.png
  (CI bars, R² CI) and table1.csv, and returns the text that opens with the "verdict:" line.

This module needs numpy; fits, Wilson intervals need scipy and plots matplotlib (the `learn` extra). It never
imports torch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import textwrap
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from razor_robot.stats import (
    DEFAULT_RESAMPLES,
    episodes_to_resolve,
    interval_sign,
    percentile_interval,
    resample_counts,
    wilson_interval,
)

Record = Mapping[str, Any]

BASE_METHOD = "base"
"""Method name of the pre-fine-tuning policy's record."""

DISTANCE_KEYS = ("kl", "kl/reverse", "kl/tv", "kl/l2")
"""Forward KL (the paper's predictor) first, then the Table 1 alternatives."""

_INSTALL_HINT = "pip install 'razor-robot[learn]'"


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------
def _score(record: Record, key: str, index: int) -> float:
    """A finite score of a record, or a one-line ValueError naming the record."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        name = record.get("method")
        raise ValueError(f"record {index} ({name!r}): {key} must be a finite number, got {value!r}")
    return float(value)


def _check_records(records: Iterable[Record]) -> list[Record]:
    """Validate method/new_task/prior_task of every record before any work; returns them as a list."""
    checked = list(records)
    for i, record in enumerate(checked):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {i} must be a dict, got {type(record).__name__}")
        if not isinstance(record.get("method"), str):
            raise ValueError(f"record {i}: 'method' must be a string, got {record.get('method')!r}")
        _score(record, "new_task", i)
        _score(record, "prior_task", i)
    return checked


def distance(record: Record, key: str = "kl") -> float:
    """record[key] as a float, NaN when missing or None ("kl" and "kl/forward" fall back to each other)."""
    value = record.get(key)
    if value is None and key in ("kl", "kl/forward"):
        value = record.get("kl/forward" if key == "kl" else "kl")
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"record {record.get('method')!r}: {key} must be a number or None, got {value!r}")
    return float(value)


def load_records(path: str | os.PathLike, *, scale: float = 1.0) -> list[dict[str, Any]]:
    """Read results.jsonl (one JSON object per line, blank lines skipped); scores multiplied by `scale`.

    Use scale=100 when the file holds success fractions in [0, 1]; the rest of this module works in points.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    # Sweeps record failed runs as {"status": "failed", "reason": ...}: they hold no scores.
    records = [dict(r) for r in _check_records(r for r in records if r.get("status") != "failed")]
    for record in records:
        for key in ("new_task", "prior_task"):
            record[key] = float(record[key]) * scale
            if scale != 1.0 and _interval(record.get(f"{key}/ci95")) is not None:
                record[f"{key}/ci95"] = [float(v) * scale for v in record[f"{key}/ci95"]]
    if records and scale == 1.0 and max(max(r["new_task"], r["prior_task"]) for r in records) <= 1.0:
        warnings.warn(f"{path}: every score is <= 1; if these are fractions pass scale=100", stacklevel=2)
    return records


# --------------------------------------------------------------------------------------------------------
# Pareto frontier
# --------------------------------------------------------------------------------------------------------
def _dominates(a: Record, b: Record) -> bool:
    """a is at least as good as b on both scores and strictly better on one."""
    ge = a["new_task"] >= b["new_task"] and a["prior_task"] >= b["prior_task"]
    return ge and (a["new_task"] > b["new_task"] or a["prior_task"] > b["prior_task"])


def pareto_frontier(records: Iterable[Record]) -> list[Record]:
    """Non-dominated records (maximising new_task and prior_task), sorted by new_task then prior_task desc.

    Identical points do not dominate each other, so duplicates on the frontier are all kept.
    """
    checked = _check_records(records)
    frontier = [r for r in checked if not any(_dominates(other, r) for other in checked)]
    return sorted(frontier, key=lambda r: (r["new_task"], -r["prior_task"]))


def frontier_prior(
    frontier: Sequence[Record], new_task: float, interpolation: Literal["step", "linear"] = "step"
) -> float:
    """The frontier's prior-task score at a new-task score (see module doc); -inf past the frontier's end."""
    new = np.array([r["new_task"] for r in frontier], dtype=float)
    prior = np.array([r["prior_task"] for r in frontier], dtype=float)
    if len(new) == 0 or new_task > new.max():
        return -math.inf
    if interpolation == "step":
        return float(prior[new >= new_task].max())
    if interpolation == "linear":
        # np.interp needs one point per x: duplicate new_task values keep their best prior
        xs = np.unique(new)
        ys = np.array([prior[new == x].max() for x in xs])
        return float(np.interp(new_task, xs, ys))
    raise ValueError(f"interpolation must be 'step' or 'linear', got {interpolation!r}")


def near_frontier(
    records: Iterable[Record],
    tolerance: float = 2.0,
    *,
    interpolation: Literal["step", "linear"] = "step",
) -> list[Record]:
    """Records whose prior_task is within `tolerance` points below the frontier at their new_task (inclusive).

    Keeps the input order. Frontier records are always kept (their gap is 0).
    """
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if interpolation not in ("step", "linear"):
        raise ValueError(f"interpolation must be 'step' or 'linear', got {interpolation!r}")
    checked = _check_records(records)
    frontier = pareto_frontier(checked)
    return [
        r
        for r in checked
        if r["prior_task"] >= frontier_prior(frontier, r["new_task"], interpolation) - tolerance
    ]


# --------------------------------------------------------------------------------------------------------
# Exponential frontier fit: prior = a - b * exp(c * new)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrontierFit:
    """A fitted prior-vs-new curve; call it on new-task scores (points) to get prior-task scores."""

    kind: Literal["exponential", "linear", "constant"]
    """"exponential" (prior = a - b·exp(c·new)); "linear"/"constant" are fallbacks for too few points or a
    failed fit."""
    params: tuple[float, ...]
    """(a, b, c) for exponential, (intercept, slope) for linear, (value,) for constant."""
    n_points: int
    """Number of (new, prior) points fitted."""

    def __call__(self, new_task: Any) -> np.ndarray:
        x = np.asarray(new_task, dtype=float)
        if self.kind == "exponential":
            a, b, c = self.params
            return a - b * np.exp(c * x)
        if self.kind == "linear":
            return self.params[0] + self.params[1] * x
        return np.full_like(x, self.params[0])


def _exponential(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.exp(c * x)


def _exponential_p0(x: np.ndarray, y: np.ndarray, c: float) -> tuple[float, float, float]:
    """Start through the two end points for a given curvature c (exact when the data is exponential in c)."""
    lo, hi = np.argmin(x), np.argmax(x)
    spread = math.exp(c * x[hi]) - math.exp(c * x[lo])
    b = (y[lo] - y[hi]) / spread
    return float(y[lo] + b * math.exp(c * x[lo])), float(b), c


def _try_exponential(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares exponential fit from a convex and a concave start; the better one, or None."""
    from scipy.optimize import curve_fit

    best, best_sse = None, math.inf
    span = float(x.max() - x.min())
    for c0 in (2.0 / span, -2.0 / span):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                params, _ = curve_fit(_exponential, x, y, p0=_exponential_p0(x, y, c0), maxfev=20000)
            except (RuntimeError, ValueError, OverflowError):
                continue
            sse = float(np.sum((_exponential(x, *params) - y) ** 2))
        if np.all(np.isfinite(params)) and math.isfinite(sse) and sse < best_sse:
            best, best_sse = tuple(float(p) for p in params), sse
    return best


def fit_exponential(new_task: Sequence[float], prior_task: Sequence[float]) -> FrontierFit:
    """Fit prior = a - b·exp(c·new) (scores in points) with scipy's curve_fit.

    Prior-task success falls ever faster as new-task success rises (b, c > 0) on a typical frontier; c < 0
    (saturating) is allowed too. Needs >= 3 distinct new-task values; with fewer, or when curve_fit fails,
    falls back to a straight line (2 distinct values) or the mean (1).
    """
    x = np.asarray(new_task, dtype=float)
    y = np.asarray(prior_task, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"new_task and prior_task must be equal-length 1-d, got shapes {x.shape} {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("new_task and prior_task must be finite")
    distinct = len(np.unique(x))
    if distinct >= 3:
        try:
            params = _try_exponential(x, y)
        except ImportError as e:
            raise ImportError(f"fit_exponential needs scipy: {_INSTALL_HINT}") from e
        if params is not None:
            return FrontierFit("exponential", params, len(x))
    if distinct >= 2:
        slope, intercept = np.polyfit(x, y, 1)
        return FrontierFit("linear", (float(intercept), float(slope)), len(x))
    return FrontierFit("constant", (float(y.mean()),), len(x))


def fit_methods(records: Iterable[Record], tolerance: float = 2.0) -> dict[str, FrontierFit]:
    """Per fine-tuning method, an exponential fit to the runs near that method's own frontier."""
    checked = _check_records(records)
    fits = {}
    for method in _methods(checked):
        points = near_frontier([r for r in checked if r["method"] == method], tolerance)
        fits[method] = fit_exponential([r["new_task"] for r in points], [r["prior_task"] for r in points])
    return fits


def _methods(records: Sequence[Record]) -> list[str]:
    """Fine-tuning methods in order of first appearance (the base policy excluded)."""
    return list(dict.fromkeys(r["method"] for r in records if r["method"] != BASE_METHOD))


# --------------------------------------------------------------------------------------------------------
# Forgetting vs distance: quadratic fit and R²
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuadraticFit:
    """forgetting ≈ c2·d² + c1·d + c0 for a distance d; call it on distances."""

    coeffs: tuple[float, float, float]
    """(c2, c1, c0), highest power first (numpy.polyfit order)."""
    r2: float
    """Coefficient of determination 1 - SS_res/SS_tot; NaN when all forgetting values are equal."""
    n_points: int
    """Number of (distance, forgetting) points fitted."""
    distance_key: str
    """Record key of the distance, e.g. "kl"."""

    def __call__(self, d: Any) -> np.ndarray:
        return np.polyval(self.coeffs, np.asarray(d, dtype=float))


def r_squared(y: Sequence[float], y_hat: Sequence[float]) -> float:
    """1 - Σ(y - ŷ)² / Σ(y - ȳ)²; NaN when y is constant (R² undefined)."""
    y, y_hat = np.asarray(y, dtype=float), np.asarray(y_hat, dtype=float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot


def base_prior(records: Iterable[Record]) -> float:
    """Prior-task score of the base policy (mean over records with method == "base")."""
    scores = [r["prior_task"] for r in _check_records(records) if r["method"] == BASE_METHOD]
    if not scores:
        raise ValueError(f"no record with method == {BASE_METHOD!r}: pass base_prior= explicitly")
    return float(np.mean(scores))


def fit_forgetting_vs_distance(
    records: Iterable[Record],
    distance_key: str = "kl",
    forgetting_key: str | None = None,
    *,
    base_prior_score: float | None = None,
) -> QuadraticFit:
    """Quadratic fit (numpy.polyfit, degree 2) of forgetting against a distance, with its R².

    forgetting = record[forgetting_key] when given, else base prior_task - prior_task (the base score from
    `base_prior_score` or the "base" record). Records whose distance or forgetting is None/NaN are skipped;
    every remaining record counts (the paper's law should hold for all runs, not only frontier ones).
    """
    checked = _check_records(records)
    reference = None
    if forgetting_key is None:
        reference = base_prior(checked) if base_prior_score is None else float(base_prior_score)
    d, f = [], []
    for record in checked:
        if reference is not None:
            forgetting = reference - record["prior_task"]
        else:
            forgetting = distance(record, forgetting_key)
        dist = distance(record, distance_key)
        if math.isfinite(dist) and math.isfinite(forgetting):
            d.append(dist)
            f.append(forgetting)
    if len(set(d)) < 3:
        raise ValueError(f"a quadratic fit needs >= 3 distinct finite {distance_key!r} values, "
                         f"got {len(set(d))}")
    coeffs = tuple(float(c) for c in np.polyfit(d, f, 2))
    return QuadraticFit(coeffs, r_squared(f, np.polyval(coeffs, d)), len(d), distance_key)


# --------------------------------------------------------------------------------------------------------
# Per-record uncertainty: counts, Wilson intervals, per-episode outcomes
# --------------------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interval(value: Any) -> tuple[float, float] | None:
    """A stored [lo, hi] pair of finite numbers as a tuple, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            _is_number(v) and math.isfinite(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _stored_count(record: Record, key: str) -> tuple[int, int] | None:
    """(successes, n) stored as key/successes and key/n, else None."""
    k, n = record.get(f"{key}/successes"), record.get(f"{key}/n")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (k, n))
    return (k, n) if ints and 0 <= k <= n and n > 0 else None


def prior_tasks(record: Record) -> list[str]:
    """Names of the prior tasks a record scores (its "prior/<task>" keys), in record order."""
    return [key[len("prior/"):] for key, value in record.items()
            if key.startswith("prior/") and key.count("/") == 1 and _is_number(value)]


def episode_outcomes(record: Record) -> tuple[str | None, dict[str, np.ndarray]]:
    """(new-task name, {task: (n,) 0/1 outcomes}) from record["episodes"] ({} without it).

    The new task is the one episode list whose task is not a prior task; None when that is ambiguous.
    """
    episodes = record.get("episodes")
    if not isinstance(episodes, Mapping):
        return None, {}
    outcomes = {task: np.asarray(v, dtype=float) for task, v in episodes.items()
                if isinstance(v, (list, tuple)) and len(v) > 0}  # task -> (n,)
    priors = set(prior_tasks(record))
    others = [task for task in outcomes if task not in priors]
    return (others[0] if priors and len(others) == 1 else None), outcomes


def score_count(record: Record, key: str) -> tuple[int, int] | None:
    """(successes, n) behind a success rate ("new_task", "prior/<task>" or "prior_task").

    Stored key/successes + key/n first, else counted from record["episodes"]; "prior_task" also pools its
    prior tasks' counts. None when the record holds neither (old records).
    """
    stored = _stored_count(record, key)
    if stored is not None:
        return stored
    new_name, outcomes = episode_outcomes(record)
    task = new_name if key == "new_task" else key[len("prior/"):] if key.startswith("prior/") else None
    if task is not None and task in outcomes:
        return int(outcomes[task].sum()), len(outcomes[task])
    if key == "prior_task":
        parts = [score_count(record, f"prior/{name}") for name in prior_tasks(record)]
        if parts and all(p is not None for p in parts):
            return sum(p[0] for p in parts), sum(p[1] for p in parts)
    return None


def score_ci(record: Record, key: str) -> tuple[float, float] | None:
    """95% interval (points) of a record's success rate: the stored key/ci95, else the Wilson interval of
    `score_count`, else None (old records: no error bar)."""
    stored = _interval(record.get(f"{key}/ci95"))
    if stored is not None:
        return stored
    count = score_count(record, key)
    if count is None:
        return None
    try:
        lo, hi = wilson_interval(*count)
    except ImportError:  # scipy missing: no interval rather than no report
        return None
    return 100.0 * lo, 100.0 * hi


def _episode_counts(record: Record) -> dict[str, int]:
    """Episodes per task behind a record's scores ({} when unknown)."""
    new_name, outcomes = episode_outcomes(record)
    counts = {task: len(v) for task, v in outcomes.items()}
    if new_name is None and (count := _stored_count(record, "new_task")) is not None:
        counts["new_task"] = count[1]
    for task in prior_tasks(record):
        if task not in counts and (count := _stored_count(record, f"prior/{task}")) is not None:
            counts[task] = count[1]
    return counts


# --------------------------------------------------------------------------------------------------------
# Bootstrap replicates of every record's scores (paired episodes)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreReplicates:
    """Bootstrap replicates of every record's scores: one row per resample, one column per record."""

    new_task: np.ndarray
    """(R, N) new-task success, points."""
    prior_task: np.ndarray
    """(R, N) prior-task success, points: pooled successes / pooled episodes over the prior tasks."""
    resampling: str
    """How the rows were drawn: "paired episodes", "unpaired episodes", "binomial from counts", or several
    of these joined by " + "."""


def _draw_successes(record: Record, index: int, task: str | None, key: str, outcomes: dict[str, np.ndarray],
                    draws: dict[tuple, np.ndarray], kinds: dict[str, None], rng: np.random.Generator,
                    n_resamples: int) -> tuple[np.ndarray, int] | None:
    """(R,) resampled success counts of one task of one record and its episode count n, or None.

    Per-episode outcomes are resampled with counts shared by every record with the same task and n when the
    record says "paired": true (episode i is the same position and seed everywhere); otherwise per record.
    Without outcomes: Binomial(n, k/n) from the stored counts (parametric, unpaired).
    """
    if task is not None and task in outcomes:
        values = outcomes[task]  # (n,)
        paired = record.get("paired") is True
        slot = (task, len(values)) if paired else (task, len(values), index)
        if slot not in draws:
            draws[slot] = resample_counts(len(values), n_resamples, rng)  # (R, n)
        kinds["paired episodes" if paired else "unpaired episodes"] = None
        return draws[slot] @ values, len(values)
    count = _stored_count(record, key)
    if count is None:
        return None
    kinds["binomial from counts"] = None
    k, n = count
    return rng.binomial(n, k / n, size=n_resamples).astype(float), n


def resample_scores(records: Iterable[Record], n_resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> ScoreReplicates:
    """Bootstrap replicates of new_task and prior_task for every record (see `_draw_successes`).

    Raises ValueError naming the first record that has neither per-episode outcomes nor counts.
    """
    checked = _check_records(records)
    rng = np.random.default_rng(seed)
    draws: dict[tuple, np.ndarray] = {}
    kinds: dict[str, None] = {}  # ordered set of the resampling kinds used
    new = np.empty((n_resamples, len(checked)))  # (R, N)
    prior = np.empty((n_resamples, len(checked)))  # (R, N)
    for i, record in enumerate(checked):
        new_name, outcomes = episode_outcomes(record)
        args = (outcomes, draws, kinds, rng, n_resamples)
        drawn = _draw_successes(record, i, new_name, "new_task", *args)
        parts = [_draw_successes(record, i, t, f"prior/{t}", *args) for t in prior_tasks(record)]
        if not parts or any(p is None for p in parts):
            parts = [_draw_successes(record, i, None, "prior_task", *args)]
        for name, part in (("new_task", drawn), ("prior_task", parts[0])):
            if part is None:
                raise ValueError(f"record {i} ({record['method']!r}) has no per-episode outcomes or counts "
                                 f"for {name}")
        new[:, i] = 100.0 * drawn[0] / drawn[1]
        prior[:, i] = 100.0 * sum(p[0] for p in parts) / sum(p[1] for p in parts)
    return ScoreReplicates(new, prior, " + ".join(kinds) or "none")


# --------------------------------------------------------------------------------------------------------
# The verdict: retention gap at matched new-task success
# --------------------------------------------------------------------------------------------------------
def staircase(new_task: Any, prior_task: Any, at: Any) -> np.ndarray:
    """A method's staircase frontier f(x) = max prior_task over its points with new_task >= x, at every x.

    -inf where x exceeds every new_task (the method never got that good on the new task).
    """
    new, prior = np.asarray(new_task, dtype=float), np.asarray(prior_task, dtype=float)  # (n,), (n,)
    x = np.atleast_1d(np.asarray(at, dtype=float))  # (m,)
    order = np.argsort(new, kind="stable")
    best_from = np.maximum.accumulate(prior[order][::-1])[::-1]  # (n,): max prior over sorted[i:]
    pos = np.searchsorted(new[order], x, side="left")  # first point with new_task >= x
    out = np.full(x.shape, -np.inf)
    inside = pos < len(new)
    out[inside] = best_from[pos[inside]]
    return out


def matched_gap(a: tuple[Any, Any], b: tuple[Any, Any], x_lo: float) -> tuple[float, float, float]:
    """(gap, lo, hi): mean of f_a(x) - f_b(x) over the matched new-task range (lo, hi] (see compare_methods).

    a, b: (new_task, prior_task) arrays of each method's checkpoints. hi = min(best new_task of a, of b);
    lo = min(x_lo, hi). Both staircases are constant on the pieces between consecutive new-task values, so
    the mean is an exact sum of piece width × difference; when lo == hi it is the difference at hi.
    """
    (new_a, prior_a), (new_b, prior_b) = a, b
    hi = float(min(np.max(new_a), np.max(new_b)))
    lo = float(min(x_lo, hi))
    if hi == lo:
        return float(staircase(new_a, prior_a, hi)[0] - staircase(new_b, prior_b, hi)[0]), lo, hi
    cuts = np.unique(np.concatenate([[lo, hi], np.asarray(new_a, float), np.asarray(new_b, float)]))
    cuts = cuts[(cuts >= lo) & (cuts <= hi)]  # (k,) piece ends; each piece (cuts[j], cuts[j+1]]
    right = cuts[1:]  # the staircases on a piece equal their value at its right end
    diff = staircase(new_a, prior_a, right) - staircase(new_b, prior_b, right)  # (k-1,)
    return float(np.diff(cuts) @ diff / (hi - lo)), lo, hi


def _display(method: str) -> str:
    return {"rl": "RL", "sft": "SFT"}.get(method, method)


def _signed(value: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.{digits}f}"


@dataclass(frozen=True)
class Verdict:
    """Which of two methods forgets less at matched new-task success, with a CI (compare_methods)."""

    method_a: str
    """First method (headline: "rl"); a positive gap means it keeps more prior-task success."""
    method_b: str
    """Second method (headline: "sft")."""
    gap: float
    """Retention gap, points: mean over the matched range of f_a(x) - f_b(x); NaN without records of both."""
    matched: tuple[float, float]
    """(lo, hi): the matched new-task range, points (the gap averages over lo < x <= hi)."""
    ci95: tuple[float, float] | None
    """Percentile-bootstrap interval of the gap at `confidence`; None when the records allow no resampling."""
    outcome: Literal["a", "b", "unresolved"]
    """"a": method_a forgets less (the CI lies above 0); "b": method_b does (below 0); else "unresolved"."""
    episodes: dict[str, tuple[int, int]]
    """Per task, (min, max) episodes per checkpoint over the compared records ({} when unknown)."""
    episodes_needed: float | None
    """When unresolved with a CI: episodes per checkpoint (all tasks together) at which the CI would exclude
    0 if the gap stayed as observed (razor_robot.stats.episodes_to_resolve); inf for a zero gap."""
    resampling: str
    """How the CI was drawn ("paired episodes", ...), or why there is none."""
    n_resamples: int
    """Bootstrap resamples behind the CI."""
    confidence: float = 0.95
    """Confidence level of ci95."""

    def line(self, prefix: str = "verdict") -> str:
        """One line: "<prefix>: RL forgets less | SFT forgets less | unresolved: <gap, CI, range, n>"."""
        a, b = _display(self.method_a), _display(self.method_b)
        if not math.isfinite(self.gap):
            return f"{prefix}: unresolved: {self.resampling}"
        label = {"a": f"{a} forgets less", "b": f"{b} forgets less"}.get(self.outcome, "unresolved")
        text = f"{prefix}: {label}: retention gap {a} - {b} = {_signed(self.gap)} points"
        if self.ci95 is not None:
            text += f", {100 * self.confidence:g}% CI [{_signed(self.ci95[0])}, {_signed(self.ci95[1])}]"
        text += f", at matched new-task success over ({self.matched[0]:.1f}, {self.matched[1]:.1f}]"
        if self.episodes:
            counts = ", ".join(f"{task} {lo}" if lo == hi else f"{task} {lo}-{hi}"
                               for task, (lo, hi) in self.episodes.items())
            text += f"; episodes per checkpoint: {counts}"
        if self.ci95 is None:
            return text + f"; CI unavailable: {self.resampling}"
        text += f" ({self.resampling} bootstrap, {self.n_resamples} resamples)"
        if self.outcome == "unresolved" and self.episodes_needed is not None:
            if math.isinf(self.episodes_needed):
                text += "; no episode count resolves a zero gap"
            else:
                total = sum(lo for lo, _ in self.episodes.values())
                factor = self.episodes_needed / total if total else math.nan
                text += (f"; resolving this effect needs ~{self.episodes_needed:.0f} episodes per checkpoint "
                         f"({factor:.1f}x now)")
        return text


def _x_lo(base_new: np.ndarray, method_new: np.ndarray) -> float:
    """Left end of the matched range: the base's new-task score, else the lowest compared checkpoint's."""
    return float(np.mean(base_new)) if len(base_new) else float(np.min(method_new))


def compare_methods(
    records: Iterable[Record],
    method_a: str = "rl",
    method_b: str = "sft",
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Verdict:
    """The retention gap between two methods at matched new-task success, with a paired-bootstrap CI.

    Matched new-task success. Each method m has a staircase frontier over its own checkpoints,
        f_m(x) = max prior_task over m's checkpoints with new_task >= x,
    the best prior-task success m kept while at least x good on the new task. The retention gap is
        gap = 1/(hi - lo) ∫_lo^hi [f_a(x) - f_b(x)] dx,   hi = min(best new_task of a, best of b),
                                                          lo = min(base new_task, hi),
    the mean difference over the new-task range both methods reached above the base (the base's score
    is the natural start: no fine-tuning needed below it); without a base record, lo = the lowest
    compared checkpoint's new_task. When lo == hi it is f_a(hi) - f_b(hi). Prior-task success is the
    base's minus forgetting, so gap = mean forgetting of b - mean forgetting of a: > 0 means a forgets less.
    The staircase is a max over checkpoints, so a method with many noisy checkpoints is favoured a little;
    the bootstrap re-takes that max in every resample.

    CI. Every resample draws episode indices with replacement, per task, and applies the SAME indices to
    every checkpoint and to the base (episodes are paired: same position and env seed), recomputes every
    checkpoint's new_task and prior_task (pooled over prior tasks) and the base's new_task, then the whole
    gap, range included. Records without per-episode outcomes fall back to binomial resampling of their
    stored successes/n; records with neither give no CI. The interval is the percentile interval;
    the verdict is "a"/"b" when it excludes 0, else "unresolved", and then `episodes_needed` scales the
    CI side facing 0 as 1/sqrt(episodes) (approximate: the max over checkpoints does not shrink exactly).
    """
    checked = _check_records(records)
    base = [r for r in checked if r["method"] == BASE_METHOD]
    group_a = [r for r in checked if r["method"] == method_a]
    group_b = [r for r in checked if r["method"] == method_b]
    empty = dict(matched=(math.nan, math.nan), ci95=None, outcome="unresolved", episodes={},
                 episodes_needed=None, n_resamples=0, confidence=confidence)
    if not group_a or not group_b:
        found = ", ".join(repr(m) for m in _methods(checked)) or "none"
        return Verdict(method_a, method_b, math.nan, resampling=f"needs records of both {method_a!r} and "
                       f"{method_b!r} (methods found: {found})", **empty)

    def scores(rs: Sequence[Record], key: str) -> np.ndarray:
        return np.array([r[key] for r in rs], dtype=float)

    both_new = np.concatenate([scores(group_a, "new_task"), scores(group_b, "new_task")])
    x_lo = _x_lo(scores(base, "new_task"), both_new)
    gap, lo, hi = matched_gap((scores(group_a, "new_task"), scores(group_a, "prior_task")),
                              (scores(group_b, "new_task"), scores(group_b, "prior_task")), x_lo)
    episodes = _episode_ranges(base + group_a + group_b)
    try:
        reps = resample_scores(base + group_a + group_b, n_resamples, seed)
    except ValueError as error:
        return Verdict(method_a, method_b, gap, (lo, hi), None, "unresolved", episodes, None, str(error),
                       0, confidence)
    nb, na = len(base), len(group_a)
    gaps = np.empty(n_resamples)
    for r in range(n_resamples):
        new, prior = reps.new_task[r], reps.prior_task[r]  # (N,), (N,): base, then a, then b
        gaps[r] = matched_gap((new[nb:nb + na], prior[nb:nb + na]), (new[nb + na:], prior[nb + na:]),
                              _x_lo(new[:nb], new[nb:]))[0]
    ci = percentile_interval(gaps, confidence)
    sign = interval_sign(*ci)
    outcome: Literal["a", "b", "unresolved"] = "a" if sign > 0 else "b" if sign < 0 else "unresolved"
    needed = None
    if outcome == "unresolved" and episodes:
        needed = episodes_to_resolve(sum(lo_n for lo_n, _ in episodes.values()), gap, *ci)
    return Verdict(method_a, method_b, gap, (lo, hi), ci, outcome, episodes, needed, reps.resampling,
                   n_resamples, confidence)


def _episode_ranges(records: Sequence[Record]) -> dict[str, tuple[int, int]]:
    """Per task, (min, max) episodes per checkpoint over records; {} unless every record has counts."""
    counts = [_episode_counts(r) for r in records]
    if not counts or not all(counts):
        return {}
    tasks = list(dict.fromkeys(task for c in counts for task in c))
    return {task: (min(c.get(task, 0) for c in counts), max(c.get(task, 0) for c in counts))
            for task in tasks}


def verdict_lines(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                  confidence: float = 0.95) -> list[str]:
    """The headline "verdict: ..." (RL vs SFT), then "<method> vs <SFT|RL>: ..." for every other method."""
    checked = _check_records(records)
    kwargs = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    lines = [compare_methods(checked, "rl", "sft", **kwargs).line()]
    methods = _methods(checked)
    for method in methods:
        if method in ("rl", "sft"):
            continue
        for reference in ("sft", "rl"):
            if reference in methods:
                verdict = compare_methods(checked, method, reference, **kwargs)
                lines.append(verdict.line(prefix=f"{method} vs {_display(reference)}"))
    return lines


# --------------------------------------------------------------------------------------------------------
# R² with bootstrap CIs, forward KL vs the alternatives, Table 1
# --------------------------------------------------------------------------------------------------------
FORWARD_KEY = "kl/forward"
"""The paper's predictor; "kl" is its older alias."""


def predictor_keys(records: Iterable[Record]) -> list[str]:
    """Table 1's predictors present in the records, in first-seen order with "kl/forward" first.

    Every "kl/<name>" (not "/ci95", not per-position "kl/<name>/d<i>") and "pred/<name>" key holding a
    number in some record; old records with only "kl" give "kl/forward" (distance() falls back).
    """
    keys: dict[str, None] = {}
    for record in _check_records(records):
        for key, value in record.items():
            kl = key.startswith("kl/") and key.count("/") == 1
            pred = key.startswith("pred/") and not key.endswith("/ci95")
            if (kl or pred or key == "kl") and _is_number(value):
                keys[FORWARD_KEY if key == "kl" else key] = None
    ordered = list(keys)
    return sorted(ordered, key=lambda k: k != FORWARD_KEY)


def _weighted_quadratic_r2(d: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(R,) R² of the weighted least-squares quadratic y ≈ c0 + c1 d + c2 d² for every row of weights w.

    d, y: (N,) finite; w: (R, N) >= 0, e.g. bootstrap counts (a case resample = a fit with integer weights).
    NaN where fewer than 3 distinct d carry weight or the weighted y has no spread. d is standardised per
    row first (R² is unchanged by an affine map of d, and the 3x3 normal equations stay well conditioned).
    """
    total = np.maximum(w.sum(axis=1), 1e-300)  # (R,)
    mean = w @ d / total  # (R,)
    spread = np.sqrt(np.sum(w * (d[None, :] - mean[:, None]) ** 2, axis=1) / total)  # (R,)
    z = (d[None, :] - mean[:, None]) / np.where(spread > 0, spread, 1.0)[:, None]  # (R, N)
    design = np.stack([np.ones_like(z), z, z * z], axis=-1)  # (R, N, 3)
    gram = np.einsum("rn,rni,rnj->rij", w, design, design)  # (R, 3, 3)
    rhs = np.einsum("rn,rni,n->ri", w, design, y)  # (R, 3)
    _, ids = np.unique(d, return_inverse=True)
    distinct = (((w > 0).astype(float) @ np.eye(ids.max() + 1)[ids]) > 0).sum(axis=1)  # (R,)
    ok = distinct >= 3
    gram[~ok] = np.eye(3)
    coeffs = np.linalg.solve(gram, rhs[..., None])[..., 0]  # (R, 3)
    fitted = np.einsum("rni,ri->rn", design, coeffs)  # (R, N)
    y_mean = w @ y / total  # (R,)
    ss_res = np.sum(w * (y[None, :] - fitted) ** 2, axis=1)  # (R,)
    ss_tot = np.sum(w * (y[None, :] - y_mean[:, None]) ** 2, axis=1)  # (R,)
    flat = ss_tot <= 1e-12 * np.maximum(w @ y**2, 1e-300)
    r2 = 1.0 - ss_res / np.where(flat, 1.0, ss_tot)
    r2[~ok | flat] = np.nan
    return r2


def _defined_ci(replicates: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Percentile interval of the defined replicates; None when fewer than half of them are defined."""
    if np.mean(np.isfinite(replicates)) < 0.5:
        return None
    return percentile_interval(replicates, confidence)


@dataclass(frozen=True)
class PredictorFit:
    """How well one predictor explains forgetting: a row of Table 1 (all methods pooled)."""

    predictor: str
    """Record key, e.g. "kl/forward" or "pred/weight_l1"."""
    r2: float
    """R² of the quadratic fit of forgetting against the predictor over every record holding it."""
    ci95: tuple[float, float] | None
    """Bootstrap interval of R² (fine-tuned checkpoints resampled, base kept); None when under half the
    resamples give a defined fit."""
    n_points: int
    """Records in the fit, the base included."""
    forward_minus_this: float
    """R²(kl/forward) - R²(this) on the records holding both; NaN for kl/forward itself or without it."""
    difference_ci95: tuple[float, float] | None
    """Paired bootstrap interval of that difference (the same resampled checkpoints in both fits)."""
    forward_kl_is: str
    """Does forward KL predict forgetting better than this predictor: "better" / "worse" (the difference's
    CI lies above / below 0), "not resolved", or "" (kl/forward itself, or no difference)."""


def r2_fits(
    records: Iterable[Record],
    keys: Sequence[str] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[PredictorFit]:
    """R² of forgetting vs each predictor (default: predictor_keys), with bootstrap CIs, in `keys` order.

    Forgetting = base prior_task - prior_task; every record holding the predictor is a point (the base
    too: (its value, 0)). The bootstrap resamples the fine-tuned checkpoints with replacement (case
    resampling) and keeps the base point(s): R² describes the cloud of checkpoints, and each checkpoint's
    episode noise is already in its scatter, so resampling episodes as well would count that noise twice.
    One draw serves every predictor, so R²(kl/forward) - R²(other) is a paired difference (computed on the
    records holding both). Raises ValueError without a base record.
    """
    checked = _check_records(records)
    reference = base_prior(checked)
    keys = predictor_keys(checked) if keys is None else list(keys)
    y = np.array([reference - r["prior_task"] for r in checked])  # (N,) forgetting
    fine_tuned = np.flatnonzero([r["method"] != BASE_METHOD for r in checked])
    weights = np.ones((n_resamples, len(checked)))  # (R, N): the base always once
    if len(fine_tuned):
        weights[:, fine_tuned] = resample_counts(len(fine_tuned), n_resamples, np.random.default_rng(seed))
    values = {k: np.array([distance(r, k) for r in checked]) for k in dict.fromkeys([*keys, FORWARD_KEY])}

    def fit(key: str, mask: np.ndarray) -> tuple[float, np.ndarray]:
        """Point R² (numpy.polyfit, as fit_forgetting_vs_distance) and (R,) resampled R² on masked records."""
        point = _r2_or_nan([r for r, m in zip(checked, mask) if m], key, reference)
        return point, _weighted_quadratic_r2(np.where(mask, values[key], 0.0), y, weights * mask)

    has_forward = np.isfinite(values[FORWARD_KEY])
    rows = []
    for key in keys:
        held = np.isfinite(values[key])
        point, reps = fit(key, held)
        diff, diff_ci, label = math.nan, None, ""
        both = held & has_forward
        if key not in (FORWARD_KEY, "kl") and both.any():
            (fwd_point, fwd_reps), (own_point, own_reps) = fit(FORWARD_KEY, both), fit(key, both)
            diff, diff_ci = fwd_point - own_point, _defined_ci(fwd_reps - own_reps, confidence)
            sign = interval_sign(*diff_ci) if diff_ci is not None else 0
            label = {1: "better", -1: "worse"}.get(sign, "not resolved")
        rows.append(PredictorFit(key, point, _defined_ci(reps, confidence), int(held.sum()), diff, diff_ci,
                                 label))
    return rows


def table1(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
           confidence: float = 0.95) -> list[PredictorFit]:
    """Table 1 for robots: `r2_fits` of every predictor, all methods pooled, sorted by R² (undefined last)."""
    rows = r2_fits(records, n_resamples=n_resamples, seed=seed, confidence=confidence)
    return sorted(rows, key=lambda row: -row.r2 if math.isfinite(row.r2) else math.inf)


def _ci_text(ci: tuple[float, float] | None, digits: int = 3, signed: bool = False) -> str:
    if ci is None:
        return "n/a"
    fmt = (lambda v: _signed(v, digits)) if signed else (lambda v: _fmt(v, digits))
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def format_table1(rows: Sequence[PredictorFit]) -> str:
    """Table 1 as aligned text: predictor, R², its CI, points, and forward KL's R² advantage with its CI."""
    header = ["predictor", "R2", "95% CI", "n", "R2(kl/forward)-R2", "95% CI", "forward KL"]
    body = [[row.predictor, _fmt(row.r2, 3), _ci_text(row.ci95), str(row.n_points),
             _signed(row.forward_minus_this, 3) if math.isfinite(row.forward_minus_this) else "",
             _ci_text(row.difference_ci95, signed=True) if row.difference_ci95 else "", row.forward_kl_is]
            for row in rows]
    title = ("Table 1: R2 of the quadratic fit of forgetting vs each predictor, all methods pooled "
             "(95% CI: fine-tuned checkpoints resampled, base kept)")
    return title + "\n" + _align([header] + body)


def write_table1(rows: Sequence[PredictorFit], path: str | os.PathLike) -> Path:
    """Table 1 as CSV (one row per predictor, NaN/None as empty cells), written atomically; returns path."""
    def cell(value: float | None) -> str:
        return "" if value is None or not math.isfinite(value) else repr(float(value))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["predictor,r2,r2_ci_lo,r2_ci_hi,n_points,forward_minus_r2,diff_ci_lo,diff_ci_hi,forward_kl_is"]
    for row in rows:
        ci, dci = row.ci95 or (None, None), row.difference_ci95 or (None, None)
        lines.append(",".join([row.predictor, cell(row.r2), cell(ci[0]), cell(ci[1]), str(row.n_points),
                               cell(row.forward_minus_this), cell(dci[0]), cell(dci[1]), row.forward_kl_is]))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def forward_kl_line(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    confidence: float = 0.95) -> str:
    """"forward KL fit: R2 ... [CI] (n=...); vs kl/reverse: better (...), ...": the paper's claim, tested."""
    checked = _check_records(records)
    keys = [k for k in predictor_keys(checked) if k.startswith("kl/")]
    if FORWARD_KEY not in keys:
        return "forward KL fit: n/a (no record has kl/forward)"
    try:
        rows = r2_fits(checked, keys, n_resamples=n_resamples, seed=seed, confidence=confidence)
    except ValueError as error:
        return f"forward KL fit: n/a ({error})"
    forward = rows[0]
    text = (f"forward KL fit: R2 {_fmt(forward.r2, 3)} {_ci_text(forward.ci95)} (n={forward.n_points}, "
            "checkpoint bootstrap)")
    for row in rows[1:]:
        text += (f"; vs {row.predictor}: {row.forward_kl_is or 'n/a'} (R2 {_fmt(row.r2, 3)}, "
                 f"diff {_signed(row.forward_minus_this, 3)} {_ci_text(row.difference_ci95, signed=True)})")
    return text


# --------------------------------------------------------------------------------------------------------
# Summary table
# --------------------------------------------------------------------------------------------------------
def matched_new_task(records: Iterable[Record]) -> float | None:
    """The highest new-task score every fine-tuning method reached (min over methods of their best).

    None when there is no fine-tuned record.
    """
    checked = _check_records(records)
    bests = [max(r["new_task"] for r in checked if r["method"] == m) for m in _methods(checked)]
    return min(bests) if bests else None


def _best_at(records: Sequence[Record], new_task: float) -> Record | None:
    """The run with the highest prior_task among those with new_task >= the target (lowest KL on ties)."""
    eligible = [r for r in records if r["new_task"] >= new_task]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r["prior_task"], -np.nan_to_num(distance(r), nan=np.inf)))


def _r2_or_nan(records: Sequence[Record], key: str, reference: float | None) -> float:
    if reference is None:
        return math.nan
    try:
        return fit_forgetting_vs_distance(records, key, base_prior_score=reference).r2
    except ValueError:
        return math.nan


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_rate(record: Record, key: str) -> str:
    """"36.7 [21.9, 54.5] n=30": a success rate (points) with its 95% CI and episodes when known."""
    text = _fmt(record.get(key), 1)
    ci, count = score_ci(record, key), score_count(record, key)
    if ci is not None:
        text += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    if count is not None:
        text += f" n={count[1]}"
    return text


def _with_ci(value: float, ci: tuple[float, float] | None, digits: int) -> str:
    text = _fmt(value, digits)
    return text if ci is None else f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _align(rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned, two spaces apart (cells may hold single spaces: split on 2+ to parse)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _checkpoint_rows(records: Sequence[Record], reference: float | None) -> str:
    """Every record: its scores with CIs, forgetting (with the stored CI) and forward KL (with its CI)."""
    header = ["method", "checkpoint", "new_task", "prior_task", "forgetting", "kl"]
    rows = [header]
    for i, r in enumerate(records):
        name = f"{r['run_id']}@{r['step']}" if "run_id" in r and "step" in r else f"#{i}"
        forgetting = reference - r["prior_task"] if reference is not None else math.nan
        kl_ci = _interval(r.get("kl/forward/ci95"))
        rows.append([r["method"], name, format_rate(r, "new_task"), format_rate(r, "prior_task"),
                     _with_ci(forgetting, _interval(r.get("forgetting/ci95")), 1),
                     _with_ci(distance(r), kl_ci, 3)])
    return _align(rows)


def summary_table(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                  confidence: float = 0.95) -> str:
    """The verdict lines, forward KL's R² against the alternatives, then the per-method table and every
    checkpoint's scores with their intervals.

    Per method: runs, best new-task success, prior-task success (and KL) at a matched new-task success, and
    R² of the quadratic forgetting fit for every distance in DISTANCE_KEYS; last row pools all runs. The
    matched new-task score is `matched_new_task`; a method's prior score there is its staircase frontier
    value (best prior among its runs with new_task >= target). R² is "n/a" without a base record or with
    fewer than 3 distinct distances. Success rates show "[95% CI] n=episodes" when the records carry them.
    """
    checked = _check_records(records)
    kwargs = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    has_base = any(r["method"] == BASE_METHOD for r in checked)
    reference = base_prior(checked) if has_base else None
    target = matched_new_task(checked)
    match_label = f"prior@new>={_fmt(target, 1)}"
    header = ["method", "runs", "best_new", match_label, "kl@match"] + [f"R2({k})" for k in DISTANCE_KEYS]
    rows = [header]
    for method in _methods(checked) + ["all"]:
        group = checked if method == "all" else [r for r in checked if r["method"] == method]
        match = _best_at(group, target) if target is not None and method != "all" else None
        best = max(group, key=lambda r: r["new_task"])
        rows.append([
            method,
            str(len(group)),
            format_rate(best, "new_task") if method != "all" else _fmt(best["new_task"], 1),
            format_rate(match, "prior_task") if match else "n/a",
            _fmt(distance(match) if match else None, 3),
            *[_fmt(_r2_or_nan(group, key, reference), 3) for key in DISTANCE_KEYS],
        ])
    lines = verdict_lines(checked, **kwargs)
    lines.append(forward_kl_line(checked, **kwargs) if has_base else "forward KL fit: n/a (no base record)")
    lines += ["", _align(rows)]
    if reference is not None:
        base = next(r for r in checked if r["method"] == BASE_METHOD)
        lines.append(f"base: new_task {format_rate(base, 'new_task')}, prior_task "
                     f"{format_rate(base, 'prior_task')} (forgetting reference); scores in points")
    else:
        lines.append(f"no {BASE_METHOD!r} record: forgetting (and R2) undefined; scores in points")
    lines += ["", "checkpoints (success % [95% CI] n=episodes; forgetting = base prior - prior, points):",
              _checkpoint_rows(checked, reference)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas, without touching pyplot's global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plots need matplotlib: {_INSTALL_HINT}") from e
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig: Any, path: str | os.PathLike) -> Path:
    """Write a PNG to a temp file beside `path`, then os.replace it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _colours(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {m: palette(i % 10) for i, m in enumerate(methods)}


def _error_bars(ax: Any, xs: Sequence[float], ys: Sequence[float], cis: Sequence[tuple | None], colour: Any,
                axis: Literal["x", "y"]) -> None:
    """Draw CI bars along one axis for the points that have an interval (intervals are absolute bounds)."""
    points = [(x, y, ci) for x, y, ci in zip(xs, ys, cis) if ci is not None]
    if not points:
        return
    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    centre = x if axis == "x" else y
    lo, hi = np.array([p[2][0] for p in points]), np.array([p[2][1] for p in points])
    err = np.stack([np.maximum(centre - lo, 0.0), np.maximum(hi - centre, 0.0)])  # (2, n)
    kwargs = {"xerr": err} if axis == "x" else {"yerr": err}
    ax.errorbar(x, y, fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.6, capsize=2, zorder=2, **kwargs)


def _frontier_band(records: Sequence[Record], xs: np.ndarray, tolerance: float, n_resamples: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise 95% band of one method's fitted frontier: refit it in every episode resample (the
    near-frontier selection included), each curve clipped to the score range [0, 100]; None when the records
    allow no resampling."""
    try:
        reps = resample_scores(records, n_resamples, seed)
    except ValueError:
        return None
    curves = np.full((n_resamples, len(xs)), np.nan)  # (R, len(xs))
    for r in range(n_resamples):
        points = [{"method": "m", "new_task": float(n), "prior_task": float(p)}
                  for n, p in zip(reps.new_task[r], reps.prior_task[r])]
        kept = near_frontier(points, tolerance)
        fit = fit_exponential([p["new_task"] for p in kept], [p["prior_task"] for p in kept])
        curves[r] = np.clip(fit(xs), 0.0, 100.0)  # a 3-point exponential can shoot far past 0-100
    lo, hi = np.nanpercentile(curves, [2.5, 97.5], axis=0)  # (len(xs),) each
    return lo, hi


def plot_frontier(records: Iterable[Record], path: str | os.PathLike, tolerance: float = 2.0, *,
                  title: str | None = None, band_resamples: int = 100, seed: int = 0) -> Path:
    """Prior- vs new-task success: runs coloured by method (filled = near the overall frontier, hollow =
    not) with 95% CI bars on both axes, the overall staircase frontier with its tolerance band, each
    method's exponential fit with a bootstrap band (`band_resamples` episode resamples, 0 = none), the base.

    The title is `title`, by default the verdict line (compare_methods RL vs SFT).
    """
    checked = _check_records(records)
    if title is None:
        title = compare_methods(checked, seed=seed).line()
    fig = _new_figure(6.4, 5.2)
    ax = fig.add_subplot()
    near_ids = {id(r) for r in near_frontier(checked, tolerance)}
    methods = _methods(checked)
    colours = _colours(methods)
    fits = fit_methods(checked, tolerance)
    for method in [BASE_METHOD] + methods:
        group = [r for r in checked if r["method"] == method]
        xs_pts, ys_pts = [r["new_task"] for r in group], [r["prior_task"] for r in group]
        colour = colours.get(method, "black")
        _error_bars(ax, xs_pts, ys_pts, [score_ci(r, "new_task") for r in group], colour, "x")
        _error_bars(ax, xs_pts, ys_pts, [score_ci(r, "prior_task") for r in group], colour, "y")
    for method in methods:
        group = [r for r in checked if r["method"] == method]
        labelled = False  # the legend names every method, also one with no point near the frontier
        for near in (True, False):
            pts = [r for r in group if (id(r) in near_ids) == near]
            if pts:
                ax.scatter([r["new_task"] for r in pts], [r["prior_task"] for r in pts], s=36, zorder=3,
                           color=colours[method] if near else "none", edgecolors=colours[method],
                           alpha=1.0 if near else 0.6, label=None if labelled else method)
                labelled = True
        fit_pts = near_frontier(group, tolerance)
        xs = np.linspace(min(r["new_task"] for r in fit_pts), max(r["new_task"] for r in fit_pts), 100)
        label = f"{method} fit ({fits[method].kind})"
        ax.plot(xs, fits[method](xs), color=colours[method], lw=1.5, label=label)
        band = _frontier_band(group, xs, tolerance, band_resamples, seed) if band_resamples > 0 else None
        if band is not None:
            ax.fill_between(xs, band[0], band[1], color=colours[method], alpha=0.15, lw=0)
    frontier = pareto_frontier(checked)
    fx, fy = [r["new_task"] for r in frontier], [r["prior_task"] for r in frontier]
    ax.step(fx, fy, where="pre", color="0.3", ls="--", lw=1, label="Pareto frontier")
    ax.fill_between(fx, np.array(fy) - tolerance, fy, step="pre", color="0.5", alpha=0.15,
                    label=f"within {tolerance:g} points")
    if len(near_ids) < len(checked):
        label = f"> {tolerance:g} points below frontier"
        ax.scatter([], [], s=36, color="none", edgecolors="0.4", label=label)
    base = [r for r in checked if r["method"] == BASE_METHOD]
    if base:
        ax.scatter([r["new_task"] for r in base], [r["prior_task"] for r in base], marker="*", s=160,
                   color="black", zorder=4, label="base")
    ax.set(xlabel="new-task success (%)  [bars: 95% CI]", ylabel="prior-task success (%)")
    ax.set_title(textwrap.fill(title, 95), fontsize=6.5, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save_atomic(fig, path)


def plot_kl_forgetting(records: Iterable[Record], path: str | os.PathLike, *,
                       n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Path:
    """Forgetting vs each distance in DISTANCE_KEYS that has data (one panel each), coloured by method,
    with the pooled quadratic fit and its R² with bootstrap CI; CI bars on forgetting ("forgetting/ci95")
    and on the distance ("<key>/ci95") where the records carry them."""
    checked = _check_records(records)
    reference = base_prior(checked)
    keys = [k for k in DISTANCE_KEYS if any(math.isfinite(distance(r, k)) for r in checked)]
    if not keys:
        raise ValueError(f"no record has a finite distance among {DISTANCE_KEYS}")
    r2_rows = {row.predictor: row for row in r2_fits(checked, keys, n_resamples=n_resamples, seed=seed)}
    fig = _new_figure(4.0 * len(keys), 3.6)
    colours = _colours(_methods(checked))
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        ci_key = "kl/forward/ci95" if key == "kl" else f"{key}/ci95"
        for method in [BASE_METHOD] + _methods(checked):
            pts = [r for r in checked if r["method"] == method and math.isfinite(distance(r, key))]
            if not pts:
                continue
            xs, ys = [distance(r, key) for r in pts], [reference - r["prior_task"] for r in pts]
            colour = colours.get(method, "black")
            _error_bars(ax, xs, ys, [_interval(r.get("forgetting/ci95")) for r in pts], colour, "y")
            _error_bars(ax, xs, ys, [_interval(r.get(ci_key)) for r in pts], colour, "x")
            ax.scatter(xs, ys, s=30, color=colour, marker="*" if method == BASE_METHOD else "o", label=method,
                       zorder=3)
        title = key
        try:
            fit = fit_forgetting_vs_distance(checked, key, base_prior_score=reference)
        except ValueError:
            fit = None
        if fit is not None:
            dmax = max(distance(r, key) for r in checked if math.isfinite(distance(r, key)))
            xs = np.linspace(0.0, dmax, 100)
            ax.plot(xs, fit(xs), color="0.2", lw=1.2, label="quadratic fit")
            ci = r2_rows[key].ci95
            ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None else ""
            title = f"{key}: R² = {_fmt(fit.r2, 3)}{ci_text} (n={fit.n_points})"
        ax.set(xlabel=key, ylabel="forgetting (points)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save_atomic(fig, path)


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------
def frontier_outputs(records: Iterable[Record], out_dir: str | os.PathLike, *, tolerance: float = 2.0,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, band_resamples: int = 100) -> str:
    """Write out_dir/frontier.png, kl_forgetting.png and table1.csv; return the summary and Table 1 text.

    The text opens with the "verdict:" line (summary_table). kl_forgetting.png and table1.csv are skipped,
    with a note in the text, when there is no base record or no distance.
    """
    checked = _check_records(records)
    if not checked:
        raise ValueError("no records")
    out_dir = Path(out_dir)
    text = summary_table(checked, n_resamples=n_resamples, seed=seed)
    plot_frontier(checked, out_dir / "frontier.png", tolerance, title=text.splitlines()[0],
                  band_resamples=band_resamples, seed=seed)
    try:
        plot_kl_forgetting(checked, out_dir / "kl_forgetting.png", n_resamples=n_resamples, seed=seed)
    except ValueError as e:
        text += f"\nkl_forgetting.png not written: {e}"
    try:
        rows = table1(checked, n_resamples=n_resamples, seed=seed)
    except ValueError as e:
        return text + f"\ntable1.csv not written: {e}"
    if not rows:
        return text + "\ntable1.csv not written: no kl/ or pred/ predictor in the records"
    write_table1(rows, out_dir / "table1.csv")
    return text + "\n\n" + format_table1(rows)


def frontier_report(
    results_jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, *, scale: float = 1.0,
    tolerance: float = 2.0, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, band_resamples: int = 100,
) -> str:
    """Read results.jsonl and run `frontier_outputs` (frontier.png, kl_forgetting.png, table1.csv, text)."""
    records = load_records(results_jsonl_path, scale=scale)
    if not records:
        raise ValueError(f"{results_jsonl_path}: no records")
    return frontier_outputs(records, out_dir, tolerance=tolerance, n_resamples=n_resamples, seed=seed,
                            band_resamples=band_resamples)

"""Pareto frontiers of new-task vs prior-task success, and forgetting-vs-distance fits (RL's Razor, Sec. 3-4).

Works on plain records, e.g. the lines of results.jsonl:

    {"method": "sft", "new_task": 72.0, "prior_task": 61.5, "kl": 0.84, "kl/reverse": ..., ...}

Conventions:
- Scores are success rates in **percentage points** (0-100); `tolerance` is in points. Records holding
  fractions (0-1) are converted by `load_records(path, scale=100)` (razor_robot.report.summary.frontier_report
  too).
- The record with method == "base" is the pre-fine-tuning policy: forgetting = base prior_task - prior_task.
- Distances (`kl`, `kl/reverse`, `kl/tv`, `kl/l2`) may be missing, None or NaN: such records are left out of
  the fits that need them and drawn nowhere on the distance plot. "kl" falls back to "kl/forward" (the key
  written by razor_robot.measure.distances) when absent.

Frontier definitions (both maximise new_task and prior_task):
- `pareto_frontier`: the records no other record dominates (>= on both scores, > on one).
- `near_frontier`: the frontier as a staircase, f(n) = max prior_task over frontier records with
  new_task >= n, i.e. the best prior-task score any run reached while at least as good on the new task.
  A record is near the frontier when prior_task >= f(new_task) - tolerance (inclusive).
  `interpolation="linear"` joins the frontier points with straight lines instead (a slightly stricter
  test between frontier points).

The rest of the report builds on this module: razor_robot.report.verdict (success rates with their intervals,
the paired episode bootstrap, the verdict), razor_robot.report.table1 (R² of every predictor, Table 1) and
razor_robot.report.summary (summary.txt, the plots, `frontier_report`).

This module needs numpy; fits need scipy (the `learn` extra). It never imports torch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np


Record = Mapping[str, Any]

BASE_METHOD = "base"
"""Method name of the pre-fine-tuning policy's record."""

DISTANCE_KEYS = ("kl", "kl/reverse", "kl/tv", "kl/l2")
"""Forward KL (the paper's predictor) first, then the Table 1 alternatives."""

PLOT_INSTALL_HINT = "pip install 'razor-robot[learn]'"


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


def check_records(records: Iterable[Record]) -> list[Record]:
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
    from razor_robot.report.records import read_records

    if not Path(path).is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    records = read_records(Path(path))  # strict JSON, non-finite numbers restored; one-line error if corrupt
    # Sweeps record failed runs as {"status": "failed", "reason": ...}: they hold no scores.
    records = [dict(r) for r in check_records(r for r in records if r.get("status") != "failed")]
    for record in records:
        for key in ("new_task", "prior_task"):
            record[key] = float(record[key]) * scale
            if scale != 1.0 and stored_interval(record.get(f"{key}/ci95")) is not None:
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
    checked = check_records(records)
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
    checked = check_records(records)
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
            raise ImportError(f"fit_exponential needs scipy: {PLOT_INSTALL_HINT}") from e
        if params is not None:
            return FrontierFit("exponential", params, len(x))
    if distinct >= 2:
        slope, intercept = np.polyfit(x, y, 1)
        return FrontierFit("linear", (float(intercept), float(slope)), len(x))
    return FrontierFit("constant", (float(y.mean()),), len(x))


def fit_methods(records: Iterable[Record], tolerance: float = 2.0) -> dict[str, FrontierFit]:
    """Per fine-tuning method, an exponential fit to the runs near that method's own frontier."""
    checked = check_records(records)
    fits = {}
    for method in fine_tuning_methods(checked):
        points = near_frontier([r for r in checked if r["method"] == method], tolerance)
        fits[method] = fit_exponential([r["new_task"] for r in points], [r["prior_task"] for r in points])
    return fits


def fine_tuning_methods(records: Sequence[Record]) -> list[str]:
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
    scores = [r["prior_task"] for r in check_records(records) if r["method"] == BASE_METHOD]
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
    checked = check_records(records)
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
# Small helpers shared with razor_robot.report.verdict, razor_robot.report.table1 and
# razor_robot.report.summary
# --------------------------------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def stored_interval(value: Any) -> tuple[float, float] | None:
    """A stored [lo, hi] pair of finite numbers as a tuple, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            is_number(v) and math.isfinite(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def format_number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def align_columns(rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned, two spaces apart (cells may hold single spaces: split on 2+ to parse)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

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

This module needs numpy; fits need scipy and plots matplotlib (the `learn` extra). It never imports torch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
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
    """record[key] as a float, NaN when missing or None ("kl" falls back to "kl/forward")."""
    value = record.get(key)
    if value is None and key == "kl":
        value = record.get("kl/forward")
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
        record["new_task"] = float(record["new_task"]) * scale
        record["prior_task"] = float(record["prior_task"]) * scale
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


def summary_table(records: Iterable[Record]) -> str:
    """Per method: runs, best new-task success, prior-task success (and KL) at a matched new-task success,
    and R² of the quadratic forgetting fit for every distance in DISTANCE_KEYS; last row pools all runs.

    The matched new-task score is `matched_new_task`; a method's prior score there is its staircase frontier
    value (best prior among its runs with new_task >= target). R² is "n/a" without a base record or with
    fewer than 3 distinct distances.
    """
    checked = _check_records(records)
    has_base = any(r["method"] == BASE_METHOD for r in checked)
    reference = base_prior(checked) if has_base else None
    target = matched_new_task(checked)
    match_label = f"prior@new>={_fmt(target, 1)}"
    header = ["method", "runs", "best_new", match_label, "kl@match"] + [f"R2({k})" for k in DISTANCE_KEYS]
    rows = []
    for method in _methods(checked) + ["all"]:
        group = checked if method == "all" else [r for r in checked if r["method"] == method]
        match = _best_at(group, target) if target is not None and method != "all" else None
        rows.append([
            method,
            str(len(group)),
            _fmt(max(r["new_task"] for r in group), 1),
            _fmt(match["prior_task"] if match else None, 1),
            _fmt(distance(match) if match else None, 3),
            *[_fmt(_r2_or_nan(group, key, reference), 3) for key in DISTANCE_KEYS],
        ])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    if reference is not None:
        base = next(r for r in checked if r["method"] == BASE_METHOD)
        lines.append(f"base: new_task {_fmt(base['new_task'], 1)}, prior_task {_fmt(reference, 1)} "
                     "(forgetting reference); scores in points")
    else:
        lines.append(f"no {BASE_METHOD!r} record: forgetting (and R2) undefined; scores in points")
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


def plot_frontier(records: Iterable[Record], path: str | os.PathLike, tolerance: float = 2.0) -> Path:
    """Prior- vs new-task success: runs coloured by method (filled = near the overall frontier, hollow =
    not), the overall staircase frontier with its tolerance band, each method's exponential fit, the base."""
    checked = _check_records(records)
    fig = _new_figure(6.4, 4.8)
    ax = fig.add_subplot()
    near_ids = {id(r) for r in near_frontier(checked, tolerance)}
    methods = _methods(checked)
    colours = _colours(methods)
    fits = fit_methods(checked, tolerance)
    for method in methods:
        group = [r for r in checked if r["method"] == method]
        for near in (True, False):
            pts = [r for r in group if (id(r) in near_ids) == near]
            if pts:
                ax.scatter([r["new_task"] for r in pts], [r["prior_task"] for r in pts], s=36, zorder=3,
                           color=colours[method] if near else "none", edgecolors=colours[method],
                           alpha=1.0 if near else 0.6, label=method if near else None)
        fit_pts = near_frontier(group, tolerance)
        xs = np.linspace(min(r["new_task"] for r in fit_pts), max(r["new_task"] for r in fit_pts), 100)
        label = f"{method} fit ({fits[method].kind})"
        ax.plot(xs, fits[method](xs), color=colours[method], lw=1.5, label=label)
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
    ax.set(xlabel="new-task success (%)", ylabel="prior-task success (%)",
           title="New-task vs prior-task success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save_atomic(fig, path)


def plot_kl_forgetting(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Forgetting vs each distance in DISTANCE_KEYS that has data (one panel each), coloured by method,
    with the pooled quadratic fit and its R²."""
    checked = _check_records(records)
    reference = base_prior(checked)
    keys = [k for k in DISTANCE_KEYS if any(math.isfinite(distance(r, k)) for r in checked)]
    if not keys:
        raise ValueError(f"no record has a finite distance among {DISTANCE_KEYS}")
    fig = _new_figure(4.0 * len(keys), 3.6)
    colours = _colours(_methods(checked))
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        for method in [BASE_METHOD] + _methods(checked):
            pts = [r for r in checked if r["method"] == method and math.isfinite(distance(r, key))]
            if pts:
                ax.scatter([distance(r, key) for r in pts], [reference - r["prior_task"] for r in pts], s=30,
                           color=colours.get(method, "black"), marker="*" if method == BASE_METHOD else "o",
                           label=method, zorder=3)
        title = key
        try:
            fit = fit_forgetting_vs_distance(checked, key, base_prior_score=reference)
        except ValueError:
            fit = None
        if fit is not None:
            dmax = max(distance(r, key) for r in checked if math.isfinite(distance(r, key)))
            xs = np.linspace(0.0, dmax, 100)
            ax.plot(xs, fit(xs), color="0.2", lw=1.2, label="quadratic fit")
            title = f"{key}: R² = {_fmt(fit.r2, 3)} (n={fit.n_points})"
        ax.set(xlabel=key, ylabel="forgetting (points)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save_atomic(fig, path)


def frontier_report(
    results_jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, *, scale: float = 1.0,
    tolerance: float = 2.0,
) -> str:
    """Read results.jsonl, write out_dir/frontier.png and out_dir/kl_forgetting.png, return the summary table.

    kl_forgetting.png is skipped (with a note in the text) when there is no base record or no distance.
    """
    records = load_records(results_jsonl_path, scale=scale)
    if not records:
        raise ValueError(f"{results_jsonl_path}: no records")
    out_dir = Path(out_dir)
    plot_frontier(records, out_dir / "frontier.png", tolerance)
    text = summary_table(records)
    try:
        plot_kl_forgetting(records, out_dir / "kl_forgetting.png")
    except ValueError as e:
        text += f"\nkl_forgetting.png not written: {e}"
    return text

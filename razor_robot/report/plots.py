"""The report's plots: frontier.png (CI bars on every checkpoint, bootstrap bands around the fitted frontiers,
the verdict in the title) and kl_forgetting.png (forgetting against each distance, R² with CI); written
atomically. They need matplotlib (the `learn` extra) and never touch pyplot's global state.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from razor_robot.io import atomic_path
from razor_robot.report.frontier import (
    BASE_METHOD, DISTANCE_KEYS, PLOT_INSTALL_HINT, Record, base_prior, check_records, distance,
    fine_tuning_methods, fit_exponential, fit_forgetting_vs_distance, fit_methods, format_number, near_frontier,
    pareto_frontier,
    stored_interval,
)
from razor_robot.report.stats import DEFAULT_RESAMPLES
from razor_robot.report.table1 import r2_fits
from razor_robot.report.verdict import compare_methods, resample_scores, score_ci, score_shift


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas, without touching pyplot's global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plots need matplotlib: {PLOT_INSTALL_HINT}") from e
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write the figure as a PNG at ``path``, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


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
    checked = check_records(records)
    if title is None:
        title = compare_methods(checked, seed=seed).line()
    fig = _new_figure(6.4, 5.2)
    ax = fig.add_subplot()
    near_ids = {id(r) for r in near_frontier(checked, tolerance)}
    methods = fine_tuning_methods(checked)
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
    shifted = any(score_shift(r, "prior_task") for r in checked)  # several bases (report.bases.rereferenced)
    ylabel = "prior-task success (%), re-referenced to the bases' mean" if shifted else "prior-task success (%)"
    ax.set(xlabel="new-task success (%)  [bars: 95% CI]", ylabel=ylabel)
    ax.set_title(textwrap.fill(title, 95), fontsize=6.5, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_png(fig, path)


def plot_kl_forgetting(records: Iterable[Record], path: str | os.PathLike, *,
                       n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Path:
    """Forgetting vs each distance in DISTANCE_KEYS that has data (one panel each), coloured by method,
    with the pooled quadratic fit and its R² with bootstrap CI; CI bars on forgetting ("forgetting/ci95")
    and on the distance ("<key>/ci95") where the records carry them."""
    checked = check_records(records)
    reference = base_prior(checked)
    keys = [k for k in DISTANCE_KEYS if any(math.isfinite(distance(r, k)) for r in checked)]
    if not keys:
        raise ValueError(f"no record has a finite distance among {DISTANCE_KEYS}")
    r2_rows = {row.predictor: row for row in r2_fits(checked, keys, n_resamples=n_resamples, seed=seed)}
    fig = _new_figure(4.0 * len(keys), 3.6)
    colours = _colours(fine_tuning_methods(checked))
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        ci_key = "kl/forward/ci95" if key == "kl" else f"{key}/ci95"
        for method in [BASE_METHOD] + fine_tuning_methods(checked):
            pts = [r for r in checked if r["method"] == method and math.isfinite(distance(r, key))]
            if not pts:
                continue
            xs, ys = [distance(r, key) for r in pts], [reference - r["prior_task"] for r in pts]
            colour = colours.get(method, "black")
            _error_bars(ax, xs, ys, [stored_interval(r.get("forgetting/ci95")) for r in pts], colour, "y")
            _error_bars(ax, xs, ys, [stored_interval(r.get(ci_key)) for r in pts], colour, "x")
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
            title = f"{key}: R² = {format_number(fit.r2, 3)}{ci_text} (n={fit.n_points})"
        ax.set(xlabel=key, ylabel="forgetting (points)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(fig, path)



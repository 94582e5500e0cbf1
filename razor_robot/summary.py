"""The frontier report: summary.txt, frontier.png, kl_forgetting.png and table1.csv from a sweep's records.

- `summary_table`: the text that opens with the "verdict:" line (razor_robot.verdict), then the forward-KL fit,
  the per-method table, every checkpoint with its intervals, and Table 1 (razor_robot.table1).
- `plot_frontier` / `plot_kl_forgetting`: CI bars on every checkpoint, bootstrap bands around the fitted
  frontiers, the verdict in the title; written atomically.
- `frontier_outputs` writes all of them into a directory; `frontier_report(results.jsonl, out_dir)` is
  `razor-robot frontier`.

Plots need matplotlib (the `learn` extra). It never imports torch.
"""

from __future__ import annotations

import math
import os
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from razor_robot.bases import by_base, pooled_verdict_lines, rereferenced
from razor_robot.frontier import (
    _align,
    _check_records,
    _fmt,
    _INSTALL_HINT,
    _interval,
    _methods,
    BASE_METHOD,
    base_prior,
    distance,
    DISTANCE_KEYS,
    fit_exponential,
    fit_forgetting_vs_distance,
    fit_methods,
    load_records,
    near_frontier,
    pareto_frontier,
    Record,
)
from razor_robot.stats import DEFAULT_RESAMPLES
from razor_robot.table1 import _r2_or_nan, format_table1, forward_kl_line, r2_fits, table1, write_table1
from razor_robot.verdict import (compare_methods, new_task_gain_lines, resample_scores, score_ci, score_count,
                                 verdict_lines)


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
                  confidence: float = 0.95, headline: Sequence[str] | None = None) -> str:
    """The verdict lines, forward KL's R² against the alternatives, then the per-method table and every
    checkpoint's scores with their intervals.

    Per method: runs, best new-task success, prior-task success (and KL) at a matched new-task success, and
    R² of the quadratic forgetting fit for every distance in DISTANCE_KEYS; last row pools all runs. The
    matched new-task score is `matched_new_task`; a method's prior score there is its staircase frontier
    value (best prior among its runs with new_task >= target). R² is "n/a" without a base record or with
    fewer than 3 distinct distances. Success rates show "[95% CI] n=episodes" when the records carry them.
    ``headline`` replaces the verdict lines (a multi-base sweep's pooled verdicts, razor_robot.bases).
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
    if headline is not None:  # several bases: the pooled verdicts (gains are in each base's own summary)
        lines = list(headline)
    else:
        lines = verdict_lines(checked, **kwargs) + new_task_gain_lines(checked, **kwargs)
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
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, band_resamples: int = 100,
                     headline: Sequence[str] | None = None) -> str:
    """Write out_dir/frontier.png, kl_forgetting.png and table1.csv; return the summary and Table 1 text.

    The text opens with the "verdict:" line (summary_table), or with ``headline`` when given.
    kl_forgetting.png and table1.csv are skipped, with a note in the text, when there is no base record or
    no distance.
    """
    checked = _check_records(records)
    if not checked:
        raise ValueError("no records")
    out_dir = Path(out_dir)
    text = summary_table(checked, n_resamples=n_resamples, seed=seed, headline=headline)
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
    """Read results.jsonl and run `frontier_outputs` (frontier.png, kl_forgetting.png, table1.csv, text); with
    several bases (records naming different ``base_id``), the pooled verdicts head the text (razor_robot.bases)."""
    records = load_records(results_jsonl_path, scale=scale)
    if not records:
        raise ValueError(f"{results_jsonl_path}: no records")
    headline = None
    if len(by_base(records)) > 1:  # several bases: pooled verdicts, fits against each checkpoint's own base
        headline = pooled_verdict_lines(records, n_resamples=n_resamples, seed=seed)
        records = rereferenced(records)
    return frontier_outputs(records, out_dir, tolerance=tolerance, n_resamples=n_resamples, seed=seed,
                            band_resamples=band_resamples, headline=headline)

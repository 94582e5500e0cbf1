"""The frontier report: summary.txt's text, and frontier.png, kl_forgetting.png and table1.csv beside it.

- `summary_table`: the text that opens with the "verdict:" line (razor_robot.report.verdict), then the
  forward-KL fit, the per-method table, every checkpoint with its intervals, and Table 1
  (razor_robot.report.table1).
- `frontier_outputs` writes the plots (razor_robot.report.plots) and table1.csv into a directory;
  `frontier_report(results.jsonl, out_dir)` is `razor-robot frontier`.

It never imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from razor_robot.report.bases import (
    BASE_KEY, by_base, measured, pooled_verdict_lines, reference_shifts, rereferenced,
)
from razor_robot.report.frontier import (
    BASE_METHOD, DISTANCE_KEYS, Record, align_columns, base_prior, check_records, distance,
    fine_tuning_methods, format_number, load_records, stored_interval,
)
from razor_robot.report.plots import plot_frontier, plot_kl_forgetting
from razor_robot.report.stats import DEFAULT_RESAMPLES
from razor_robot.report.table1 import format_table1, forward_kl_line, r2_or_nan, table1, write_table1
from razor_robot.report.verdict import new_task_gain_lines, score_ci, score_count, verdict_lines


# --------------------------------------------------------------------------------------------------------
# Summary table
# --------------------------------------------------------------------------------------------------------
def matched_new_task(records: Iterable[Record]) -> float | None:
    """The highest new-task score every fine-tuning method reached (min over methods of their best).

    None when there is no fine-tuned record.
    """
    checked = check_records(records)
    bests = [max(r["new_task"] for r in checked if r["method"] == m) for m in fine_tuning_methods(checked)]
    return min(bests) if bests else None


def _best_at(records: Sequence[Record], new_task: float) -> Record | None:
    """The run with the highest prior_task among those with new_task >= the target (lowest KL on ties)."""
    eligible = [r for r in records if r["new_task"] >= new_task]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r["prior_task"], -np.nan_to_num(distance(r), nan=np.inf)))


def format_rate(record: Record, key: str) -> str:
    """"36.7 [21.9, 54.5] n=30": a success rate (points) with its 95% CI and episodes when known."""
    text = format_number(record.get(key), 1)
    ci, count = score_ci(record, key), score_count(record, key)
    if ci is not None:
        text += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    if count is not None:
        text += f" n={count[1]}"
    return text


def _with_ci(value: float, ci: tuple[float, float] | None, digits: int) -> str:
    text = format_number(value, digits)
    return text if ci is None else f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _checkpoint_rows(records: Sequence[Record], reference: float | None) -> str:
    """Every record: its scores with CIs (prior_task as measured, also in `rereferenced` records), forgetting
    (with the stored CI) and forward KL (with its CI); a base column when there are several bases."""
    several = len(by_base(records)) > 1
    header = ["method"] + (["base"] if several else []) + ["checkpoint", "new_task", "prior_task", "forgetting",
                                                          "kl"]
    rows = [header]
    for i, r in enumerate(records):
        name = f"{r['run_id']}@{r['step']}" if "run_id" in r and "step" in r else f"#{i}"
        forgetting = reference - r["prior_task"] if reference is not None else math.nan
        kl_ci = stored_interval(r.get("kl/forward/ci95"))
        rows.append([r["method"]] + ([str(r.get(BASE_KEY, ""))] if several else []) + [
            name, format_rate(r, "new_task"), format_rate(measured(r), "prior_task"),
            _with_ci(forgetting, stored_interval(r.get("forgetting/ci95")), 1), _with_ci(distance(r), kl_ci, 3)])
    return align_columns(rows)


def _reference_line(records: Sequence[Record], reference: float | None) -> str:
    """What forgetting is measured against: the base's scores, or with several bases the shifts that put every
    base at their mean prior-task score."""
    if reference is None:
        return f"no {BASE_METHOD!r} record: forgetting (and R2) undefined; scores in points"
    shifts = reference_shifts(records)
    if shifts:
        moved = ", ".join(f"{label} {value:+.1f}" for label, value in shifts.items())
        return (f"{len(shifts)} bases: prior_task above and in the plots is re-referenced to the bases' mean "
                f"prior_task {format_number(reference, 1)} (each base's checkpoints shifted with their intervals: "
                f"{moved}), so forgetting is against each checkpoint's own base; the rows below show prior_task "
                f"as measured; scores in points")
    base = next(r for r in records if r["method"] == BASE_METHOD)
    return (f"base: new_task {format_rate(base, 'new_task')}, prior_task {format_rate(base, 'prior_task')} "
            f"(forgetting reference); scores in points")


def summary_table(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                  confidence: float = 0.95, headline: Sequence[str] | None = None) -> str:
    """The verdict lines, forward KL's R² against the alternatives, then the per-method table and every
    checkpoint's scores with their intervals.

    Per method: runs, best new-task success, prior-task success (and KL) at a matched new-task success, and
    R² of the quadratic forgetting fit for every distance in DISTANCE_KEYS; last row pools all runs. The
    matched new-task score is `matched_new_task`; a method's prior score there is its staircase frontier
    value (best prior among its runs with new_task >= target). R² is "n/a" without a base record or with
    fewer than 3 distinct distances. Success rates show "[95% CI] n=episodes" when the records carry them.
    ``headline`` replaces the verdict lines (a multi-base sweep's pooled verdicts, razor_robot.report.bases).
    """
    checked = check_records(records)
    kwargs = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    has_base = any(r["method"] == BASE_METHOD for r in checked)
    reference = base_prior(checked) if has_base else None
    target = matched_new_task(checked)
    match_label = f"prior@new>={format_number(target, 1)}"
    header = ["method", "runs", "best_new", match_label, "kl@match"] + [f"R2({k})" for k in DISTANCE_KEYS]
    rows = [header]
    for method in fine_tuning_methods(checked) + ["all"]:
        group = checked if method == "all" else [r for r in checked if r["method"] == method]
        match = _best_at(group, target) if target is not None and method != "all" else None
        best = max(group, key=lambda r: r["new_task"])
        rows.append([
            method,
            str(len(group)),
            format_rate(best, "new_task") if method != "all" else format_number(best["new_task"], 1),
            format_rate(match, "prior_task") if match else "n/a",
            format_number(distance(match) if match else None, 3),
            *[format_number(r2_or_nan(group, key, reference), 3) for key in DISTANCE_KEYS],
        ])
    if headline is not None:  # several bases: the pooled verdicts (gains are in each base's own summary)
        lines = list(headline)
    else:
        lines = verdict_lines(checked, **kwargs) + new_task_gain_lines(checked, **kwargs)
    lines.append(forward_kl_line(checked, **kwargs) if has_base else "forward KL fit: n/a (no base record)")
    lines += ["", align_columns(rows), _reference_line(checked, reference)]
    lines += ["", "checkpoints (success % [95% CI] n=episodes; forgetting = base prior - prior, points):",
              _checkpoint_rows(checked, reference)]
    return "\n".join(lines)


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
    checked = check_records(records)
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
    several bases (records naming different ``base_id``), the pooled verdicts head the text
    (razor_robot.report.bases)."""
    records = load_records(results_jsonl_path, scale=scale)
    if not records:
        raise ValueError(f"{results_jsonl_path}: no records")
    headline = None
    if len(by_base(records)) > 1:  # several bases: pooled verdicts, fits against each checkpoint's own base
        headline = pooled_verdict_lines(records, n_resamples=n_resamples, seed=seed)
        records = rereferenced(records)
    return frontier_outputs(records, out_dir, tolerance=tolerance, n_resamples=n_resamples, seed=seed,
                            band_resamples=band_resamples, headline=headline)

"""Table 1 for robots: how well each distance or predictor explains forgetting (RL's Razor, Table 1).

`r2_fits` / `table1`: R² of the quadratic forgetting fit
(razor_robot.report.frontier.fit_forgetting_vs_distance) for every "kl/" and "pred/" key of the records, all
methods pooled, with a checkpoint bootstrap CI, and whether forward KL predicts forgetting better than each
(the paired bootstrap of the R² difference); `format_table1` / `write_table1` print it and write table1.csv;
`forward_kl_line` is the summary's line.

Scores are in percentage points, as in razor_robot.report.frontier. Needs numpy and scipy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from razor_robot.io import atomic_path
from razor_robot.report.frontier import (
    align_columns,
    check_records,
    format_number,
    is_number,
    BASE_METHOD,
    base_prior,
    distance,
    fit_forgetting_vs_distance,
    Record,
)
from razor_robot.report.stats import DEFAULT_RESAMPLES, interval_sign, percentile_interval, resample_counts
from razor_robot.report.verdict import format_signed


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
    for record in check_records(records):
        for key, value in record.items():
            kl = key.startswith("kl/") and key.count("/") == 1
            pred = key.startswith("pred/") and not key.endswith("/ci95")
            if (kl or pred or key == "kl") and is_number(value):
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
    checked = check_records(records)
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
        point = r2_or_nan([r for r, m in zip(checked, mask) if m], key, reference)
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
    fmt = (lambda v: format_signed(v, digits)) if signed else (lambda v: format_number(v, digits))
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def format_table1(rows: Sequence[PredictorFit]) -> str:
    """Table 1 as aligned text: predictor, R², its CI, points, and forward KL's R² advantage with its CI."""
    header = ["predictor", "R2", "95% CI", "n", "R2(kl/forward)-R2", "95% CI", "forward KL"]
    body = [[row.predictor, format_number(row.r2, 3), _ci_text(row.ci95), str(row.n_points),
             format_signed(row.forward_minus_this, 3) if math.isfinite(row.forward_minus_this) else "",
             _ci_text(row.difference_ci95, signed=True) if row.difference_ci95 else "", row.forward_kl_is]
            for row in rows]
    title = ("Table 1: R2 of the quadratic fit of forgetting vs each predictor, all methods pooled "
             "(95% CI: fine-tuned checkpoints resampled, base kept)")
    return title + "\n" + align_columns([header] + body)


def write_table1(rows: Sequence[PredictorFit], path: str | os.PathLike) -> Path:
    """Table 1 as CSV (one row per predictor, NaN/None as empty cells), written atomically; returns path."""
    def cell(value: float | None) -> str:
        return "" if value is None or not math.isfinite(value) else repr(float(value))

    path = Path(path)
    lines = ["predictor,r2,r2_ci_lo,r2_ci_hi,n_points,forward_minus_r2,diff_ci_lo,diff_ci_hi,forward_kl_is"]
    for row in rows:
        ci, dci = row.ci95 or (None, None), row.difference_ci95 or (None, None)
        lines.append(",".join([row.predictor, cell(row.r2), cell(ci[0]), cell(ci[1]), str(row.n_points),
                               cell(row.forward_minus_this), cell(dci[0]), cell(dci[1]), row.forward_kl_is]))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def forward_kl_line(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    confidence: float = 0.95) -> str:
    """"forward KL fit: R2 ... [CI] (n=...); vs kl/reverse: better (...), ...": the paper's claim, tested."""
    checked = check_records(records)
    keys = [k for k in predictor_keys(checked) if k.startswith("kl/")]
    if FORWARD_KEY not in keys:
        return "forward KL fit: n/a (no record has kl/forward)"
    try:
        rows = r2_fits(checked, keys, n_resamples=n_resamples, seed=seed, confidence=confidence)
    except ValueError as error:
        return f"forward KL fit: n/a ({error})"
    forward = rows[0]
    text = (f"forward KL fit: R2 {format_number(forward.r2, 3)} {_ci_text(forward.ci95)} (n={forward.n_points}, "
            "checkpoint bootstrap)")
    for row in rows[1:]:
        text += (f"; vs {row.predictor}: {row.forward_kl_is or 'n/a'} (R2 {format_number(row.r2, 3)}, "
                 f"diff {format_signed(row.forward_minus_this, 3)} {_ci_text(row.difference_ci95, signed=True)})")
    return text


def r2_or_nan(records: Sequence[Record], key: str, reference: float | None) -> float:
    if reference is None:
        return math.nan
    try:
        return fit_forgetting_vs_distance(records, key, base_prior_score=reference).r2
    except ValueError:
        return math.nan

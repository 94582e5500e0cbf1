"""The live forgetting meter: while a policy trains, the forward KL to the base on the fixed new-task
observations, and the prior-task forgetting that KL forecasts.

RL's Razor finds forgetting predicted by E_{x~new task}[KL(pi0(.|x) || pi(.|x))]. The meter measures exactly
that estimator (razor_robot.measure.distances.action_token_distances: full 256-bin KL at every token under one
sampled prefix) on a few hundred of the cached observations every ``every`` optimiser steps (every RL
iteration), and maps it through a quadratic KL -> forgetting fit: the fit of the runs this sweep has already
finished (never the running one), or a fit file from another sweep. Each checkpoint's record then carries the
forecast at its measured KL next to its measured forgetting, so the sweep's summary can say how well the meter
forecast runs it had not seen (:func:`meter_summary`).

Fit files are JSON ``{"coeffs": [c2, c1, c0], "distance_key": "kl", "runs": [...]}``; a sweep writes its own
pooled fit to ``OUT/meter_fit.json`` for later sweeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from razor_robot.report.frontier import BASE_METHOD, fit_forgetting_vs_distance


@dataclass(frozen=True)
class ForgettingFit:
    """forgetting (points) = c2 kl^2 + c1 kl + c0, from the runs listed."""

    coeffs: tuple[float, float, float]
    """(c2, c1, c0)."""
    runs: tuple[str, ...]
    """Run ids whose checkpoints were fitted (empty for a fit file that does not say)."""

    def __call__(self, kl: float) -> float:
        return float(np.polyval(self.coeffs, kl))

    def to_json(self) -> str:
        from razor_robot.io import dumps_strict

        return dumps_strict({"coeffs": list(self.coeffs), "distance_key": "kl", "runs": list(self.runs)}, indent=2)


def fit_from_records(records: Sequence[dict[str, Any]]) -> ForgettingFit | None:
    """The quadratic forgetting-vs-forward-KL fit of finished checkpoints; None with fewer than 3 distinct KLs
    or without a base record."""
    done = [r for r in records if r.get("status") != "failed"]
    if not any(r.get("method") == BASE_METHOD for r in done):
        return None
    try:
        fit = fit_forgetting_vs_distance(done, "kl")
    except ValueError:
        return None
    runs = tuple(sorted({r["run_id"] for r in done if r.get("method") != BASE_METHOD}))
    return ForgettingFit(tuple(fit.coeffs), runs)


def load_fit(path: str | Path) -> ForgettingFit:
    """A fit file (see the module docstring); a one-line error when it is missing or malformed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"meter fit file not found: {path}")
    try:
        from razor_robot.io import loads_strict

        data = loads_strict(path.read_text())
        coeffs = tuple(float(c) for c in data["coeffs"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: expected JSON {{\"coeffs\": [c2, c1, c0]}}") from None
    if len(coeffs) != 3 or not all(math.isfinite(c) for c in coeffs):
        raise ValueError(f"{path}: coeffs must be three finite numbers, got {data['coeffs']!r}")
    return ForgettingFit(coeffs, tuple(data.get("runs", ())))


class ForgettingMeter:
    """Call it as ``meter(step, policy)`` after every optimiser step (or RL iteration); every ``every``-th
    call it returns ``{"meter/kl": ..., "meter/forecast": ...}`` (forecast only with a fit), else ``{}``."""

    def __init__(self, base: Any, images: np.ndarray, instructions: Sequence[str], *, every: int,
                 fit: ForgettingFit | None, base_context: Callable | None = None, batch_size: int = 64,
                 seed: int = 0):
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.base, self.images, self.instructions = base, images, list(instructions)
        self.every, self.fit, self.base_context = every, fit, base_context
        self.batch_size, self.seed = batch_size, seed

    def __call__(self, step: int, policy: Any) -> dict[str, float]:
        if self.every == 0 or step % self.every:
            return {}
        import torch

        from razor_robot.measure.distances import action_token_distances

        base = policy if self.base is None else self.base  # None: a LoRA policy's own adapter-free weights
        kl = action_token_distances(
            base, policy, self.images, self.instructions, batch_size=self.batch_size,
            generator=torch.Generator().manual_seed(self.seed), ci_resamples=0,
            base_context=policy.disable_adapter if self.base is None else None)["kl/forward"]
        out = {"meter/kl": float(kl)}
        if self.fit is not None:
            out["meter/forecast"] = self.fit(kl)
        return out


def forecast_fields(fit: ForgettingFit | None, kl: float) -> dict[str, Any]:
    """The record fields of a checkpoint's forecast: forgetting forecast at its measured forward KL."""
    if fit is None or not math.isfinite(kl):
        return {}
    return {"meter/forecast": fit(kl), "meter/fit_runs": len(fit.runs)}


def meter_summary(records: Sequence[dict[str, Any]]) -> str:
    """One line: how close the meter's forecasts came to the measured forgetting of checkpoints of runs that
    were not in their fit (mean absolute error, and how many forecasts fall inside the measured 95% CI)."""
    rows = [r for r in records if isinstance(r.get("meter/forecast"), (int, float)) and "forgetting" in r]
    if not rows:
        return "meter: no checkpoint has a forecast (a fit needs 3 finished checkpoints with distinct KL)"
    errors = np.array([r["meter/forecast"] - r["forgetting"] for r in rows])  # (n,) points
    inside = sum(1 for r in rows if r.get("forgetting/ci95")
                 and r["forgetting/ci95"][0] <= r["meter/forecast"] <= r["forgetting/ci95"][1])
    from razor_robot.report.stats import bootstrap_ci

    lo, hi = bootstrap_ci(np.abs(errors))
    return (f"meter: forecast vs measured forgetting on {len(rows)} held-out checkpoints: mean absolute error "
            f"{np.abs(errors).mean():.1f} points (95% CI {lo:.1f}-{hi:.1f}), mean error {errors.mean():+.1f}; "
            f"{inside}/{len(rows)} forecasts inside the measured forgetting's 95% CI")

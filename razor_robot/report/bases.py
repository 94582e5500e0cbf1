"""Several bases in one sweep: per-base and pooled verdicts, whether the bases agree, fits on a common
reference.

One base is one draw of the pretraining recipe, so one base cannot tell a finding from a property of that base
(SimplerEnv's maintainers ask for repeated trials; rliable aggregates over runs, never one). A multi-base
sweep (``base.seeds``) fine-tunes every base with every run, and every record names its base (``base_id``):

- per base: the verdict from that base's records alone (razor_robot.report.verdict.compare_methods);
- pooled: the mean over bases of the per-base retention gaps, with a hierarchical bootstrap interval: the
  bases are drawn with replacement, then each drawn base contributes one of its own paired-episode replicates
  (razor_robot.report.stats.hierarchical_bootstrap), so the interval holds base-to-base variation and episode
  noise;
- agreement: whether every base's verdict came out the same;
- the forgetting-vs-distance fits and Table 1 on all bases' checkpoints at once, each checkpoint's forgetting
  measured against its own base (`rereferenced`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from razor_robot.report.frontier import BASE_METHOD, Record, check_records, fine_tuning_methods
from razor_robot.report.stats import DEFAULT_RESAMPLES, hierarchical_bootstrap, percentile_interval
from razor_robot.report.verdict import (
    SHIFT_SUFFIX, Verdict, comparisons, format_signed, gap_replicates, method_display_name, outcome_of,
)

BASE_KEY = "base_id"
"""Record field naming the base a checkpoint was fine-tuned from (the base's own record carries it too)."""

PRIOR_SHIFT_KEY = "prior_task" + SHIFT_SUFFIX
"""Record field of a `rereferenced` copy: the points added to its measured prior-task score."""


def by_base(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by ``base_id``, in order of first appearance (records without it: group "")."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(str(record.get(BASE_KEY, "")), []).append(record)
    return groups


def rereferenced(records: Iterable[Record]) -> list[Record]:
    """Copies whose prior-task scores are shifted so that every base's prior-task score is the mean over
    bases: base prior - prior (forgetting) is then each checkpoint's forgetting against its own base, and the
    fits of razor_robot.report.frontier / razor_robot.report.table1 can pool all bases. Each copy names its
    shift (``prior_task/shift``), by which its interval and bootstrap replicates move too
    (razor_robot.report.verdict.score_shift); `measured` undoes it. A single base is returned unchanged."""
    checked = check_records(records)
    groups = by_base(checked)
    if len(groups) < 2:
        return checked
    base_prior = {}
    for label, group in groups.items():
        scores = [r["prior_task"] for r in group if r["method"] == BASE_METHOD]
        if not scores:
            raise ValueError(f"base {label!r} has no {BASE_METHOD!r} record: its forgetting is undefined")
        base_prior[label] = float(np.mean(scores))
    common = float(np.mean(list(base_prior.values())))
    shifts = {label: common - prior for label, prior in base_prior.items()}
    return [{**r, "prior_task": r["prior_task"] + shifts[str(r.get(BASE_KEY, ""))],
             PRIOR_SHIFT_KEY: shifts[str(r.get(BASE_KEY, ""))]} for r in checked]


def reference_shifts(records: Iterable[Record]) -> dict[str, float]:
    """Each base's prior-task shift (points) in `rereferenced` records, by base label; empty when none."""
    return {str(r.get(BASE_KEY, "")): float(r[PRIOR_SHIFT_KEY]) for r in records
            if r["method"] == BASE_METHOD and PRIOR_SHIFT_KEY in r}


def measured(record: Record) -> Record:
    """A `rereferenced` record with its prior-task score as measured (the record itself when not shifted)."""
    if PRIOR_SHIFT_KEY not in record:
        return record
    kept = {k: v for k, v in record.items() if k != PRIOR_SHIFT_KEY}
    return {**kept, "prior_task": record["prior_task"] - record[PRIOR_SHIFT_KEY]}


@dataclass(frozen=True)
class PooledVerdict:
    """Which of two methods forgets less over several bases (`pooled_verdict`)."""

    method_a: str
    """First method; a positive gap means it keeps more prior-task success."""
    method_b: str
    """Second method."""
    gap: float
    """Mean over the compared bases of their retention gaps, points (NaN when no base compares the two)."""
    ci95: tuple[float, float] | None
    """Hierarchical-bootstrap interval of the mean (None when a base has no within-base replicates)."""
    outcome: str
    """"a", "b" or "unresolved", as razor_robot.report.verdict.Verdict."""
    per_base: dict[str, Verdict]
    """Each compared base's own verdict."""
    skipped: dict[str, str]
    """Bases left out of the mean, with the reason (no records of one method)."""
    n_resamples: int
    """Bootstrap resamples behind the interval."""
    confidence: float = 0.95
    """Confidence level of ci95."""

    @property
    def agree(self) -> bool:
        """Every compared base reached the same outcome."""
        return len({v.outcome for v in self.per_base.values()}) <= 1

    def line(self, prefix: str = "pooled verdict") -> str:
        a, b = method_display_name(self.method_a), method_display_name(self.method_b)
        if not self.per_base:
            return f"{prefix}: unresolved: no base has records of both {self.method_a!r} and {self.method_b!r}"
        label = {"a": f"{a} forgets less", "b": f"{b} forgets less"}.get(self.outcome, "unresolved")
        text = (f"{prefix} ({len(self.per_base)} bases): {label}: mean retention gap {a} - {b} = "
                f"{format_signed(self.gap)} points")
        if self.ci95 is not None:
            text += (f", {100 * self.confidence:g}% CI [{format_signed(self.ci95[0])}, {format_signed(self.ci95[1])}] "
                     f"(hierarchical bootstrap: bases, then paired episodes; {self.n_resamples} resamples)")
        else:
            text += "; CI unavailable: a base has no per-episode outcomes or counts"
        outcomes = {"a": f"{a} forgets less", "b": f"{b} forgets less", "unresolved": "unresolved"}
        def base_outcome(v: Verdict) -> str:
            point = f", at the base's new-task success: {v.not_above_base_names()} never above it"
            return outcomes[v.outcome] + (point if v.not_above_base else "")

        per_base = "; ".join(f"{label} {format_signed(v.gap)} ({base_outcome(v)})" for label, v in self.per_base.items())
        text += f"; per base: {per_base}; the bases {'agree' if self.agree else 'disagree'}"
        if self.skipped:
            text += "; left out: " + ", ".join(f"{k} ({v})" for k, v in self.skipped.items())
        return text


def pooled_verdict(records: Iterable[Record], method_a: str = "rl", method_b: str = "sft", *,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = 0.95) -> PooledVerdict:
    """Per-base verdicts and their hierarchical-bootstrap mean (see the module docstring).

    Each base's within-base replicates come from its own paired-episode bootstrap (seeded seed + its index),
    then `hierarchical_bootstrap` draws bases and replicates with a generator seeded by ``seed``.
    """
    per_base: dict[str, Verdict] = {}
    replicates: list[np.ndarray | None] = []
    skipped: dict[str, str] = {}
    for index, (label, group) in enumerate(by_base(check_records(records)).items()):
        verdict, gaps = gap_replicates(group, method_a, method_b, n_resamples=n_resamples, seed=seed + index,
                                       confidence=confidence)
        if not math.isfinite(verdict.gap):
            skipped[label] = verdict.resampling
            continue
        per_base[label] = verdict
        replicates.append(gaps)
    if not per_base:
        return PooledVerdict(method_a, method_b, math.nan, None, "unresolved", {}, skipped, 0, confidence)
    gap = float(np.mean([v.gap for v in per_base.values()]))
    if any(r is None for r in replicates):
        return PooledVerdict(method_a, method_b, gap, None, "unresolved", per_base, skipped, 0, confidence)
    pooled = hierarchical_bootstrap(np.stack(replicates), n_resamples, np.random.default_rng(seed))
    ci = percentile_interval(pooled, confidence)
    return PooledVerdict(method_a, method_b, gap, ci, outcome_of(ci), per_base, skipped, n_resamples, confidence)


def pooled_verdict_lines(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                         confidence: float = 0.95) -> list[str]:
    """"pooled verdict ..." (RL vs SFT), then "pooled <method> vs <SFT|RL> ..." for every other method."""
    checked = check_records(records)
    kwargs = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    return [pooled_verdict(checked, a, b, **kwargs).line(prefix=f"pooled {prefix}")
            for a, b, prefix in comparisons(fine_tuning_methods(checked))]

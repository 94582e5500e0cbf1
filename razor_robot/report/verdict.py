"""Success rates with their uncertainty, and the verdict: which method forgets less at matched new-task
success.

Records as in results.jsonl (old records without these keys still work, without intervals):
- Each success rate may carry "<key>/n", "<key>/successes", "<key>/ci95" (Wilson, points) and the record
  "episodes": {task: [0/1, ...]} with "paired": true (episode i = same position and env seed for every
  checkpoint). `score_count` / `score_ci` read them; `resample_scores` redraws every checkpoint's rates from
  the same episode indices (a paired bootstrap).
- `compare_methods` / `verdict_lines`: the retention gap between two methods at matched new-task success
  (`staircase`, `matched_gap`) with its paired episode bootstrap CI: "RL forgets less" / "SFT forgets less" /
  "unresolved" + the episodes a resolved answer would need. The exact definition is in `compare_methods`.

Scores are in percentage points, as in razor_robot.report.frontier. Needs numpy (Wilson intervals: scipy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from razor_robot.report.frontier import (
    BASE_METHOD, Record, check_records, fine_tuning_methods, is_number, stored_interval,
)
from razor_robot.report.stats import (
    DEFAULT_RESAMPLES,
    episodes_to_resolve,
    interval_sign,
    percentile_interval,
    resample_counts,
    wilson_interval,
)


# --------------------------------------------------------------------------------------------------------
# Per-record uncertainty: counts, Wilson intervals, per-episode outcomes
# --------------------------------------------------------------------------------------------------------
def _stored_count(record: Record, key: str) -> tuple[int, int] | None:
    """(successes, n) stored as key/successes and key/n, else None."""
    k, n = record.get(f"{key}/successes"), record.get(f"{key}/n")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (k, n))
    return (k, n) if ints and 0 <= k <= n and n > 0 else None


def prior_tasks(record: Record) -> list[str]:
    """Names of the prior tasks a record scores (its "prior/<task>" keys), in record order."""
    return [key[len("prior/"):] for key, value in record.items()
            if key.startswith("prior/") and key.count("/") == 1 and is_number(value)]


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


SHIFT_SUFFIX = "/shift"
"""``<score key>/shift``: the points a change of reference added to that score (see `score_shift`)."""


def score_shift(record: Record, key: str) -> float:
    """Points a change of reference added to the record's score ``key`` (``key/shift``, written by
    razor_robot.report.bases.rereferenced); 0 for a score as measured. Its interval and bootstrap replicates
    move by the same amount, so a shifted point keeps its own error bar."""
    value = record.get(key + SHIFT_SUFFIX, 0.0)
    return float(value) if is_number(value) and math.isfinite(value) else 0.0


def score_ci(record: Record, key: str) -> tuple[float, float] | None:
    """95% interval (points) of a record's success rate: the stored key/ci95, else the Wilson interval of
    `score_count`, else None (old records: no error bar); moved by `score_shift`."""
    shift = score_shift(record, key)
    stored = stored_interval(record.get(f"{key}/ci95"))
    if stored is not None:
        return stored[0] + shift, stored[1] + shift
    count = score_count(record, key)
    if count is None:
        return None
    try:
        lo, hi = wilson_interval(*count)
    except ImportError:  # scipy missing: no interval rather than no report
        return None
    return 100.0 * lo + shift, 100.0 * hi + shift


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
    """Bootstrap replicates of new_task and prior_task for every record (see `_draw_successes`), moved by
    `score_shift`.

    Raises ValueError naming the first record that has neither per-episode outcomes nor counts.
    """
    checked = check_records(records)
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
        new[:, i] = 100.0 * drawn[0] / drawn[1] + score_shift(record, "new_task")
        prior_rate = 100.0 * sum(p[0] for p in parts) / sum(p[1] for p in parts)
        prior[:, i] = prior_rate + score_shift(record, "prior_task")
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


def method_display_name(method: str) -> str:
    return {"rl": "RL", "sft": "SFT"}.get(method, method)


def format_signed(value: float, digits: int = 1) -> str:
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
    0 if the gap stayed as observed (razor_robot.report.stats.episodes_to_resolve); inf for a zero gap."""
    resampling: str
    """How the CI was drawn ("paired episodes", ...), or why there is none."""
    n_resamples: int
    """Bootstrap resamples behind the CI."""
    confidence: float = 0.95
    """Confidence level of ci95."""
    not_above_base: tuple[str, ...] = ()
    """The compared methods whose best new-task success does not exceed the base's: then the matched range is
    a point, the base's own new-task success, and the gap compares prior tasks there, not at a matched gain."""

    def not_above_base_names(self) -> str:
        """not_above_base for a reader: "RL", "oracle-sft and RL"."""
        return " and ".join(method_display_name(m) for m in self.not_above_base)

    def line(self, prefix: str = "verdict") -> str:
        """One line: "<prefix>: RL forgets less | SFT forgets less | unresolved: <gap, CI, range, n>"."""
        a, b = method_display_name(self.method_a), method_display_name(self.method_b)
        if not math.isfinite(self.gap):
            return f"{prefix}: unresolved: {self.resampling}"
        label = {"a": f"{a} forgets less", "b": f"{b} forgets less"}.get(self.outcome, "unresolved")
        text = f"{prefix}: {label}: retention gap {a} - {b} = {format_signed(self.gap)} points"
        if self.ci95 is not None:
            text += f", {100 * self.confidence:g}% CI [{format_signed(self.ci95[0])}, {format_signed(self.ci95[1])}]"
        text += f", at matched new-task success over ({self.matched[0]:.1f}, {self.matched[1]:.1f}]"
        if self.not_above_base:
            text += f" (a point: {self.not_above_base_names()} never exceeded the base's new-task success)"
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
    return gap_replicates(records, method_a, method_b, n_resamples=n_resamples, seed=seed,
                          confidence=confidence)[0]


def gap_replicates(
    records: Iterable[Record],
    method_a: str = "rl",
    method_b: str = "sft",
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[Verdict, np.ndarray | None]:
    """`compare_methods`' verdict and its (R,) bootstrap replicates of the gap (None when there is no CI):
    the within-base stage of a multi-base sweep's hierarchical bootstrap (razor_robot.report.bases)."""
    checked = check_records(records)
    base = [r for r in checked if r["method"] == BASE_METHOD]
    group_a = [r for r in checked if r["method"] == method_a]
    group_b = [r for r in checked if r["method"] == method_b]
    empty = dict(matched=(math.nan, math.nan), ci95=None, outcome="unresolved", episodes={},
                 episodes_needed=None, n_resamples=0, confidence=confidence)
    if not group_a or not group_b:
        found = ", ".join(repr(m) for m in fine_tuning_methods(checked)) or "none"
        return Verdict(method_a, method_b, math.nan, resampling=f"needs records of both {method_a!r} and "
                       f"{method_b!r} (methods found: {found})", **empty), None

    def scores(rs: Sequence[Record], key: str) -> np.ndarray:
        return np.array([r[key] for r in rs], dtype=float)

    base_new = scores(base, "new_task")
    both_new = np.concatenate([scores(group_a, "new_task"), scores(group_b, "new_task")])
    x_lo = _x_lo(base_new, both_new)
    gap, lo, hi = matched_gap((scores(group_a, "new_task"), scores(group_a, "prior_task")),
                              (scores(group_b, "new_task"), scores(group_b, "prior_task")), x_lo)
    episodes = _episode_ranges(base + group_a + group_b)
    not_above = tuple(m for m, group in ((method_a, group_a), (method_b, group_b))
                      if len(base_new) and scores(group, "new_task").max() <= base_new.mean())
    try:
        reps = resample_scores(base + group_a + group_b, n_resamples, seed)
    except ValueError as error:
        return Verdict(method_a, method_b, gap, (lo, hi), None, "unresolved", episodes, None, str(error),
                       0, confidence, not_above), None
    nb, na = len(base), len(group_a)
    gaps = np.empty(n_resamples)  # (R,)
    for r in range(n_resamples):
        new, prior = reps.new_task[r], reps.prior_task[r]  # (N,), (N,): base, then a, then b
        gaps[r] = matched_gap((new[nb:nb + na], prior[nb:nb + na]), (new[nb + na:], prior[nb + na:]),
                              _x_lo(new[:nb], new[nb:]))[0]
    ci = percentile_interval(gaps, confidence)
    outcome = outcome_of(ci)
    needed = None
    if outcome == "unresolved" and episodes:
        needed = episodes_to_resolve(sum(lo_n for lo_n, _ in episodes.values()), gap, *ci)
    return Verdict(method_a, method_b, gap, (lo, hi), ci, outcome, episodes, needed, reps.resampling,
                   n_resamples, confidence, not_above), gaps


def outcome_of(ci: tuple[float, float]) -> Literal["a", "b", "unresolved"]:
    """"a" when the gap's interval lies above 0 (method a forgets less), "b" below 0, else "unresolved"."""
    sign = interval_sign(*ci)
    return "a" if sign > 0 else "b" if sign < 0 else "unresolved"


def _episode_ranges(records: Sequence[Record]) -> dict[str, tuple[int, int]]:
    """Per task, (min, max) episodes per checkpoint over records; {} unless every record has counts."""
    counts = [_episode_counts(r) for r in records]
    if not counts or not all(counts):
        return {}
    tasks = list(dict.fromkeys(task for c in counts for task in c))
    return {task: (min(c.get(task, 0) for c in counts), max(c.get(task, 0) for c in counts))
            for task in tasks}


def new_task_gain_lines(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                        confidence: float = 0.95) -> list[str]:
    """Did each method learn the new task? One line per method: its best checkpoint's new-task success minus
    the base's, with a paired-bootstrap CI that re-takes the best checkpoint in every resample (so picking the
    best is inside the interval), "learned" when the CI lies above 0. [] without a base record or a CI."""
    checked = check_records(records)
    base = [i for i, r in enumerate(checked) if r["method"] == BASE_METHOD]
    if not base:
        return []
    try:
        reps = resample_scores(checked, n_resamples, seed)
    except ValueError:
        return []
    base_new = float(np.mean([checked[i]["new_task"] for i in base]))
    base_reps = reps.new_task[:, base].mean(axis=1)  # (R,)
    lines = []
    for method in fine_tuning_methods(checked):
        if method == BASE_METHOD:
            continue
        own = [i for i, r in enumerate(checked) if r["method"] == method]
        gain = max(checked[i]["new_task"] for i in own) - base_new
        lo, hi = percentile_interval(reps.new_task[:, own].max(axis=1) - base_reps, confidence)
        label = {1: "learned", -1: "got worse"}.get(interval_sign(lo, hi), "not resolved")
        lines.append(f"new-task gain of {method_display_name(method)}'s best checkpoint over the base: {format_signed(gain)} points, "
                     f"{100 * confidence:g}% CI [{format_signed(lo)}, {format_signed(hi)}] ({label}; {reps.resampling} "
                     f"bootstrap re-taking the best of {len(own)} checkpoints)")
    return lines


def verdict_lines(records: Iterable[Record], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                  confidence: float = 0.95) -> list[str]:
    """The headline "verdict: ..." (RL vs SFT), then "<method> vs <SFT|RL>: ..." for every other method."""
    checked = check_records(records)
    kwargs = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    return [compare_methods(checked, a, b, **kwargs).line(prefix=prefix)
            for a, b, prefix in comparisons(fine_tuning_methods(checked))]


def comparisons(methods: Sequence[str]) -> list[tuple[str, str, str]]:
    """(method a, method b, line prefix) of every comparison a summary reports: RL vs SFT (the headline
    "verdict"), then every other method vs SFT and vs RL, where those are present."""
    pairs = [("rl", "sft", "verdict")]
    for method in methods:
        if method not in ("rl", "sft"):
            pairs += [(method, ref, f"{method} vs {method_display_name(ref)}") for ref in ("sft", "rl") if ref in methods]
    return pairs

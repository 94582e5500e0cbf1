"""Hand-computed tests of the Pareto-frontier tools (razor_robot.report.frontier); no torch, no simulator."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from razor_robot.report import frontier as fr
from razor_robot.report import plots
from razor_robot.report import summary as rs
from razor_robot.report import table1 as t1
from razor_robot.report import verdict as vd

pytestmark = pytest.mark.core


def _rec(method, new, prior, kl=None, **extra):
    return {"method": method, "new_task": new, "prior_task": prior, "kl": kl, **extra}


# staircase f(n) of this set:
# n <= 10: 80, (10, 30]: 79, (30, 50]: 74, (50, 60]: 66, (60, 80]: 50, (80, 90]: 20
HANDCRAFTED = [
    _rec("base", 10, 80),  # 0 frontier
    _rec("sft", 40, 70),  # 1 dominated by 3; gap 4
    _rec("sft", 60, 60),  # 2 dominated by 4; gap 6
    _rec("rl", 50, 74),  # 3 frontier
    _rec("rl", 60, 66),  # 4 frontier
    _rec("sft", 80, 50),  # 5 frontier (tie with 6)
    _rec("rl", 80, 50),  # 6 frontier (identical points do not dominate each other)
    _rec("sft", 30, 79),  # 7 frontier
    _rec("rl", 50, 73),  # 8 dominated by 3 (same new, lower prior); gap 1
    _rec("sft", 90, 20),  # 9 frontier
    _rec("sft", 55, 64),  # 10 gap exactly 2 (f(55) = 66)
    _rec("rl", 55, 63.75),  # 11 gap 2.25
    _rec("sft", 45, 74),  # 12 dominated by 3 but on the staircase: gap 0
]


def _indices(selected, records=HANDCRAFTED):
    return [next(i for i, r in enumerate(records) if r is s) for s in selected]


def test_pareto_frontier_exact_membership_and_order():
    assert _indices(fr.pareto_frontier(HANDCRAFTED)) == [0, 7, 3, 4, 5, 6, 9]


def test_pareto_frontier_single_record_and_all_identical():
    one = [_rec("sft", 10, 10)]
    assert fr.pareto_frontier(one) == one
    same = [_rec("sft", 5, 5), _rec("rl", 5, 5)]
    assert len(fr.pareto_frontier(same)) == 2


def test_frontier_prior_step_values():
    frontier = fr.pareto_frontier(HANDCRAFTED)
    expected = {0: 80, 10: 80, 10.5: 79, 30: 79, 45: 74, 50: 74, 55: 66, 60: 66, 61: 50, 80: 50, 85: 20,
                90: 20}
    for new, prior in expected.items():
        assert fr.frontier_prior(frontier, new) == prior, new
    assert fr.frontier_prior(frontier, 90.5) == -math.inf


def test_frontier_prior_linear_interpolates_between_frontier_points():
    frontier = fr.pareto_frontier(HANDCRAFTED)
    # halfway from (50, 74) to (60, 66)
    assert fr.frontier_prior(frontier, 55, "linear") == pytest.approx(70.0)
    assert fr.frontier_prior(frontier, 5, "linear") == 80.0  # left of the frontier: its highest prior
    assert fr.frontier_prior(frontier, 80, "linear") == 50.0  # duplicate points collapse to one


def test_near_frontier_tolerance_edges():
    assert _indices(fr.near_frontier(HANDCRAFTED)) == [0, 3, 4, 5, 6, 7, 8, 9, 10, 12]  # gap 2 kept, 2.25 not
    assert _indices(fr.near_frontier(HANDCRAFTED, tolerance=2.25)) == [0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert _indices(fr.near_frontier(HANDCRAFTED, tolerance=0.0)) == [0, 3, 4, 5, 6, 7, 9, 12]
    assert _indices(fr.near_frontier(HANDCRAFTED, tolerance=6.0)) == list(range(len(HANDCRAFTED)))


def test_near_frontier_linear_is_stricter_between_points():
    # linear frontier at 55 is 70: (55, 64) is 6 below it
    kept = _indices(fr.near_frontier(HANDCRAFTED, interpolation="linear"))
    assert 10 not in kept and 3 in kept and 8 in kept
    # (40, 70): linear frontier at 40 is 79 - (79 - 74) / 2 = 76.5, gap 6.5 -> only kept with tolerance 6.5
    assert 1 in _indices(fr.near_frontier(HANDCRAFTED, 6.5, interpolation="linear"))
    assert 1 not in _indices(fr.near_frontier(HANDCRAFTED, 6.49, interpolation="linear"))


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"method": "sft", "new_task": 1.0}], "prior_task must be a finite number"),
        ([_rec("sft", float("nan"), 1.0)], "new_task must be a finite number"),
        ([_rec(None, 1.0, 1.0)], "'method' must be a string"),
        ([[1, 2]], "must be a dict"),
    ],
)
def test_bad_records_raise(records, message):
    with pytest.raises(ValueError, match=message):
        fr.pareto_frontier(records)


def test_bad_tolerance_and_interpolation():
    with pytest.raises(ValueError, match="tolerance"):
        fr.near_frontier(HANDCRAFTED, tolerance=-1)
    with pytest.raises(ValueError, match="interpolation"):
        fr.near_frontier(HANDCRAFTED, interpolation="cubic")


def test_fit_exponential_recovers_parameters():
    pytest.importorskip("scipy")
    x = np.linspace(0, 100, 11)
    for a, b, c in [(90.0, 5.0, 0.025), (40.0, -30.0, -0.03)]:
        fit = fr.fit_exponential(x, a - b * np.exp(c * x))
        assert fit.kind == "exponential" and fit.n_points == 11
        assert fit.params == pytest.approx((a, b, c), rel=1e-6)
        assert fit(50.0) == pytest.approx(a - b * math.exp(50 * c), rel=1e-9)


def test_fit_exponential_noisy_data_close():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 100, 40))
    y = 85 - 3 * np.exp(0.03 * x) + rng.normal(0, 0.5, 40)
    a, b, c = fr.fit_exponential(x, y).params
    assert abs(c - 0.03) < 0.003 and abs(b - 3) < 1.0 and abs(a - 85) < 1.5


def test_fit_exponential_fallbacks(monkeypatch):
    pytest.importorskip("scipy")
    line = fr.fit_exponential([10, 30, 10], [70, 60, 72])  # 2 distinct new-task values
    assert line.kind == "linear"
    assert line.params == pytest.approx((76.5, -0.55))  # through the group means (10, 71) and (30, 60)
    const = fr.fit_exponential([20, 20], [50, 54])
    assert const.kind == "constant" and float(const(99)) == 52.0

    import scipy.optimize

    def broken(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(scipy.optimize, "curve_fit", broken)
    fallback = fr.fit_exponential([0, 10, 20], [80, 70, 60])
    assert fallback.kind == "linear" and fallback.params == pytest.approx((80.0, -1.0))
    with pytest.raises(ValueError, match="equal-length"):
        fr.fit_exponential([1, 2], [1])


def test_fit_methods_uses_each_methods_near_frontier():
    pytest.importorskip("scipy")
    records = [_rec("sft", x, 90 - 5 * math.exp(0.025 * x)) for x in range(0, 101, 10)]
    records.append(_rec("sft", 50, 20))  # far below: must not bend the fit
    records += [_rec("rl", 20, 80), _rec("rl", 40, 70)]
    fits = fr.fit_methods(records)
    assert fits["sft"].params == pytest.approx((90, 5, 0.025), rel=1e-6)
    assert fits["rl"].kind == "linear"


def _quadratic_records(kls, forgetting, base=80.0):
    return [_rec("base", 5, base, 0.0)] + [_rec("sft", 50, base - f, k) for k, f in zip(kls, forgetting)]


def test_quadratic_fit_exact_data_r2_one():
    kls = np.array([0.5, 1.0, 2.0, 3.0])
    fit = fr.fit_forgetting_vs_distance(_quadratic_records(kls, 2 * kls**2 + kls + 0.5))
    # the base point (0, 0) is off this curve (0.5 at 0), so fit only the fine-tuned runs via base_prior_score
    runs = _quadratic_records(kls, 2 * kls**2 + kls + 0.5)[1:]
    exact = fr.fit_forgetting_vs_distance(runs, base_prior_score=80.0)
    assert exact.coeffs == pytest.approx((2.0, 1.0, 0.5), abs=1e-9)
    assert exact.r2 == pytest.approx(1.0, abs=1e-12) and exact.n_points == 4
    assert fit.n_points == 5 and fit.r2 < 1.0


def test_quadratic_fit_hand_computed_r2():
    # d = 0..3, forgetting = (0, 1, 1, 3): the residual is the projection on the cubic contrast
    # (-1, 3, -3, 1): SS_res = 3² / 20 = 0.45, SS_tot = 4.75, R² = 1 - 0.45 / 4.75 = 86/95
    records = [_rec("base", 0, 50, 0.0), _rec("sft", 10, 49, 1.0), _rec("sft", 20, 49, 2.0),
               _rec("rl", 30, 47, 3.0)]
    fit = fr.fit_forgetting_vs_distance(records)
    assert fit.r2 == pytest.approx(86 / 95, abs=1e-12)
    # fitted values y - residual = (0.15, 0.55, 1.45, 2.85) = 0.25 d² + 0.15 d + 0.15
    assert fit.coeffs == pytest.approx((0.25, 0.15, 0.15), abs=1e-12)


def test_quadratic_fit_skips_missing_distances_and_forgetting_key():
    records = [
        _rec("base", 0, 50, None),
        _rec("sft", 10, 49, 1.0),
        _rec("sft", 10, 49, float("nan")),
        # "kl" falls back to "kl/forward"
        {"method": "rl", "new_task": 20, "prior_task": 46, "kl/forward": 2.0},
        _rec("rl", 30, 41, 3.0),
    ]
    fit = fr.fit_forgetting_vs_distance(records)
    assert fit.n_points == 3 and fit.r2 == pytest.approx(1.0)
    assert fit.coeffs == pytest.approx((1, 0, 0), abs=1e-9)
    direct = [dict(r, drop=50 - r["prior_task"]) for r in records]
    assert fr.fit_forgetting_vs_distance(direct, forgetting_key="drop").coeffs == pytest.approx(fit.coeffs)
    with pytest.raises(ValueError, match="no record with method == 'base'"):
        fr.fit_forgetting_vs_distance(records[1:])
    with pytest.raises(ValueError, match=">= 3 distinct"):
        fr.fit_forgetting_vs_distance(records[:3])


def test_r_squared_constant_target_is_nan():
    assert math.isnan(fr.r_squared([1, 1, 1], [1, 1, 1]))
    assert fr.r_squared([1, 2, 3], [1, 2, 4]) == pytest.approx(0.5)


SUMMARY = [
    _rec("base", 0, 80, 0.0),
    _rec("sft", 40, 70, 1.0), _rec("sft", 60, 60, 2.0), _rec("sft", 70, 50, 3.0),
    _rec("rl", 40, 78, 0.2), _rec("rl", 60, 75, 0.5), _rec("rl", 65, 74, 0.6),
]


def _method_table(text):
    """The per-method table of a summary: from its "method  runs" header on (the verdict lines come first)."""
    lines = text.splitlines()
    return lines[next(i for i, line in enumerate(lines) if re.match(r"method\s+runs", line)):]


def test_summary_table_values():
    assert rs.matched_new_task(SUMMARY) == 65
    table = rs.summary_table(SUMMARY)
    assert table.splitlines()[0].startswith("verdict: ")
    lines = _method_table(table)
    assert lines[0].split() == ["method", "runs", "best_new", "prior@new>=65.0", "kl@match", "R2(kl)",
                                "R2(kl/reverse)", "R2(kl/tv)", "R2(kl/l2)"]
    # 3 points per method: a quadratic passes through all of them
    assert lines[1].split() == ["sft", "3", "70.0", "50.0", "3.000", "1.000", "n/a", "n/a", "n/a"]
    assert lines[2].split() == ["rl", "3", "65.0", "74.0", "0.600", "1.000", "n/a", "n/a", "n/a"]
    pooled = fr.fit_forgetting_vs_distance(SUMMARY).r2
    assert lines[3].split() == ["all", "7", "70.0", "n/a", "n/a", f"{pooled:.3f}", "n/a", "n/a", "n/a"]
    assert lines[4].startswith("base: new_task 0.0, prior_task 80.0")


def test_summary_table_alternative_distances_and_no_base():
    records = [dict(r, **{"kl/tv": r["kl"] / 2}) for r in SUMMARY]
    row = _method_table(rs.summary_table(records))[3].split()
    assert row[7] == row[5]  # tv = kl / 2: same R²
    no_base = rs.summary_table(SUMMARY[1:])
    assert "n/a" in _method_table(no_base)[1] and "forgetting (and R2) undefined" in no_base


def _realistic_records():
    rng = np.random.default_rng(1)
    records = [_rec("base", 8.0, 82.0, 0.0, **{"kl/reverse": 0.0, "kl/tv": 0.0, "kl/l2": 0.0})]
    for method, scale, n in [("sft", 2.0, 12), ("reinforce", 0.6, 10)]:
        for _ in range(n):
            new = float(rng.uniform(20, 90))
            kl = scale * (new / 100) ** 2 * float(rng.uniform(0.7, 1.3))
            prior = 82 - 12 * kl - 3 * kl**2 - float(abs(rng.normal(0, 2)))
            records.append(_rec(method, round(new, 1), round(prior, 1), kl,
                                **{"kl/reverse": 1.3 * kl, "kl/tv": math.sqrt(kl) / 3,
                                   "kl/l2": math.sqrt(kl) / 5}))
    records.append(_rec("sft", 50.0, 40.0, None))  # no KL measured
    return records


def test_plots_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    records = _realistic_records()
    png = plots.plot_frontier(records, tmp_path / "sub" / "frontier.png")
    kl_png = plots.plot_kl_forgetting(records, tmp_path / "kl_forgetting.png")
    for path in (png, kl_png):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["frontier.png", "kl_forgetting.png"]


def test_frontier_legend_names_a_method_with_no_point_near_the_frontier(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    records = _realistic_records() + [_rec("far", 30.0, 10.0, 1.0), _rec("far", 40.0, 5.0, 2.0)]
    figures = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig) or Path(path))
    plots.plot_frontier(records, tmp_path / "frontier.png", band_resamples=0)
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert labels.count("far") == 1 and labels.count("sft") == 1 and labels.count("reinforce") == 1


def test_frontier_report_from_jsonl_fractions(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    results = tmp_path / "results.jsonl"
    lines = [json.dumps(dict(r, new_task=r["new_task"] / 100, prior_task=r["prior_task"] / 100))
             for r in SUMMARY]
    lines.insert(2, "")
    lines.append(json.dumps(_rec("rl", 0.1, 0.3, float("nan"))))  # json writes NaN; kl unusable
    results.write_text("\n".join(lines) + "\n")
    text = rs.frontier_report(results, tmp_path / "out", scale=100, n_resamples=50)
    assert text.startswith("verdict: ")
    assert _method_table(text)[1].split()[:5] == ["sft", "3", "70.0", "50.0", "3.000"]
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"frontier.png", "kl_forgetting.png", "table1.csv"}


def test_load_records_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rec("sft", 1, 2)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        fr.load_records(bad)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        fr.load_records(bad, scale=0)
    fractions = tmp_path / "fractions.jsonl"
    fractions.write_text(json.dumps(_rec("sft", 0.5, 0.7)) + "\n")
    with pytest.warns(UserWarning, match="pass scale=100"):
        fr.load_records(fractions)


# --------------------------------------------------------------------------------------------------------
# Records as razor_robot.measure.evaluation writes them (coord INTERFACES): rates, n, successes, Wilson CIs
# and the per-episode outcomes, paired across checkpoints
# --------------------------------------------------------------------------------------------------------
PRIOR = ("open-drawer", "close-drawer")


def _outcomes(successes, n, seed):
    """n episode outcomes with `successes` ones at seeded positions (each checkpoint its own pattern)."""
    out = np.zeros(n, dtype=int)
    out[np.random.default_rng(seed).permutation(n)[:successes]] = 1
    return out.tolist()


def _episode_record(method, new, open_, close, *, seed, base=None, kl=None, scale=1, **extra):
    """A results.jsonl record; new/open_/close are (successes, n), multiplied by `scale`."""
    from razor_robot.report import stats

    new, open_, close = [(k * scale, n * scale) for k, n in (new, open_, close)]
    episodes = {"pick-can": _outcomes(*new, seed), "open-drawer": _outcomes(*open_, seed + 1),
                "close-drawer": _outcomes(*close, seed + 2)}
    record = {"method": method, "run_id": f"{method}-{seed}", "step": seed, "episodes": episodes,
              "paired": True}
    parts = [("new_task", episodes["pick-can"]), ("prior/open-drawer", episodes["open-drawer"]),
             ("prior/close-drawer", episodes["close-drawer"]),
             ("prior_task", episodes["open-drawer"] + episodes["close-drawer"])]
    for key, outcomes in parts:
        summary = stats.rate_summary(outcomes)
        record.update({key: summary["rate"], f"{key}/n": summary["n"],
                       f"{key}/successes": summary["successes"], f"{key}/ci95": summary["ci95"]})
    if base is not None:  # paired per-episode drop in drawer success vs the base
        drop = 100 * (np.array(base["episodes"]["open-drawer"] + base["episodes"]["close-drawer"])
                      - np.array(parts[3][1]))
        record["forgetting"] = base["prior_task"] - record["prior_task"]
        record["forgetting/ci95"] = list(stats.bootstrap_ci(drop, n_resamples=200))
    if kl is not None:
        for name, value in [("forward", kl), ("reverse", 1.2 * kl), ("tv", math.sqrt(kl) / 3),
                            ("l2", math.sqrt(kl) / 5)]:
            record[f"kl/{name}"] = value
            record[f"kl/{name}/ci95"] = [0.9 * value, 1.1 * value]
        record["kl"] = kl
    record.update(extra)
    return record


def _sweep(rl_prior, *, scale=1, oracle=False):
    """Base + 3 SFT + 3 RL checkpoints (pick-can of 30, drawers of 15 each, times `scale`).

    SFT: new 9, 15, 21 of 30 with prior 24, 20, 15 of 30. RL: new 9, 15, 18 (or `rl_new`) with `rl_prior`.
    """
    pytest.importorskip("scipy")
    base = _episode_record("base", (3, 30), (14, 15), (14, 15), seed=0, kl=0.0, scale=scale)
    records = [base]
    sft = [((9, 30), (12, 15), (12, 15), 1.0), ((15, 30), (10, 15), (10, 15), 2.0),
           ((21, 30), (8, 15), (7, 15), 3.0)]
    for i, (new, open_, close, kl) in enumerate(sft):
        records.append(_episode_record("sft", new, open_, close, seed=10 + 3 * i, base=base, kl=kl,
                                       scale=scale))
    for i, (new, open_, close, kl) in enumerate(rl_prior):
        records.append(_episode_record("rl", new, open_, close, seed=30 + 3 * i, base=base, kl=kl,
                                       scale=scale))
    if oracle:
        records.append(_episode_record("oracle-sft", (18, 30), (14, 15), (14, 15), seed=60, base=base,
                                       kl=0.1, scale=scale))
    return records


# RL far above SFT: staircases RL (10,30]: 28/30, (30,50]: 27/30, (50,60]: 26/30; SFT 24, 20, 15 of 30
# over x_hi = min(70, 60) = 60: gap = (20·4 + 20·7 + 10·11) / 30 / 50 · 100 = 22 points exactly
RL_FAR = [((9, 30), (14, 15), (14, 15), 0.2), ((15, 30), (14, 15), (13, 15), 0.4),
          ((18, 30), (13, 15), (13, 15), 0.5)]
# RL one drawer episode above SFT at the same new-task scores: gap 1/30 = 3.33 points everywhere on (10, 70]
RL_NEAR = [((9, 30), (13, 15), (12, 15), 0.9), ((15, 30), (11, 15), (10, 15), 1.8),
           ((21, 30), (8, 15), (8, 15), 2.7)]


def test_staircase_values():
    new, prior = [30, 50, 60], [93, 90, 86]
    assert vd.staircase(new, prior, [0, 30, 30.5, 50, 55, 60, 61]).tolist() == [93, 93, 90, 90, 86, 86,
                                                                                   -math.inf]
    assert vd.staircase([40, 40, 10], [70, 75, 90], [5, 20, 40]).tolist() == [90, 75, 75]  # ties: best kept


def test_matched_gap_hand_computed():
    # SUMMARY: RL (40, 78) (60, 75) (65, 74) vs SFT (40, 70) (60, 60) (70, 50), base new 0, x_hi = 65:
    # (0,40]: 8, (40,60]: 15, (60,65]: 24 -> (40·8 + 20·15 + 5·24) / 65 = 740 / 65
    rl = ([40, 60, 65], [78, 75, 74])
    sft = ([40, 60, 70], [70, 60, 50])
    assert vd.matched_gap(rl, sft, 0.0) == pytest.approx((740 / 65, 0.0, 65.0), abs=1e-12)
    assert vd.matched_gap(sft, rl, 0.0)[0] == pytest.approx(-740 / 65, abs=1e-12)
    # base above the shared range: lo is clipped to hi and the gap is the difference at hi
    assert vd.matched_gap(rl, sft, 80.0) == (24.0, 65.0, 65.0)
    # x_lo inside the range: only (50, 65] counts: (50,60]: 15, (60,65]: 24 -> (150 + 120) / 15
    assert vd.matched_gap(rl, sft, 50.0)[0] == pytest.approx(18.0, abs=1e-12)


def test_resample_scores_reuses_episode_indices_across_checkpoints():
    records = _sweep(RL_FAR)
    reps = vd.resample_scores(records, n_resamples=64, seed=3)
    assert reps.new_task.shape == (64, 7) and reps.resampling == "paired episodes"
    # the draws: per task in order of first appearance (pick-can, open-drawer, close-drawer), one set each
    rng = np.random.default_rng(3)
    from razor_robot.report.stats import resample_counts

    counts = {task: resample_counts(n, 64, rng) for task, n in [("pick-can", 30), ("open-drawer", 15),
                                                                ("close-drawer", 15)]}
    for i, record in enumerate(records):
        ep = {t: np.array(v, float) for t, v in record["episodes"].items()}
        assert np.allclose(reps.new_task[:, i], 100 * counts["pick-can"] @ ep["pick-can"] / 30)
        pooled = counts["open-drawer"] @ ep["open-drawer"] + counts["close-drawer"] @ ep["close-drawer"]
        assert np.allclose(reps.prior_task[:, i], 100 * pooled / 30)


def test_resample_scores_fallbacks():
    records = [{k: v for k, v in r.items() if k != "episodes"} for r in _sweep(RL_FAR)]
    reps = vd.resample_scores(records, n_resamples=2000, seed=0)
    assert reps.resampling == "binomial from counts"
    assert reps.new_task[:, 0].mean() == pytest.approx(10.0, abs=0.5)  # Binomial(30, 0.1) / 30
    unpaired = [dict(r, paired=False) for r in _sweep(RL_FAR)]
    assert vd.resample_scores(unpaired, 8).resampling == "unpaired episodes"
    bare = [_rec("base", 10, 90), _rec("sft", 20, 80)]
    with pytest.raises(ValueError, match=r"record 0 \('base'\) has no per-episode outcomes or counts"):
        vd.resample_scores(bare, 8)


def test_verdict_resolves_rl_forgets_less():
    verdict = vd.compare_methods(_sweep(RL_FAR, scale=4), n_resamples=400)
    assert verdict.gap == pytest.approx(22.0, abs=1e-9) and verdict.matched == (10.0, 60.0)
    assert verdict.outcome == "a" and verdict.ci95[0] > 0 and verdict.episodes_needed is None
    assert verdict.episodes == {"pick-can": (120, 120), "open-drawer": (60, 60), "close-drawer": (60, 60)}
    line = verdict.line()
    assert line.startswith("verdict: RL forgets less: retention gap RL - SFT = +22.0 points, 95% CI [+")
    assert "over (10.0, 60.0]" in line and "pick-can 120, open-drawer 60, close-drawer 60" in line
    assert "paired episodes bootstrap, 400 resamples" in line
    # swapping the methods mirrors everything: same draws (the base comes first and holds every task)
    mirrored = vd.compare_methods(_sweep(RL_FAR, scale=4), "sft", "rl", n_resamples=400)
    assert mirrored.gap == pytest.approx(-22.0, abs=1e-9) and mirrored.outcome == "b"
    assert mirrored.ci95 == pytest.approx((-verdict.ci95[1], -verdict.ci95[0]), abs=1e-9)
    assert mirrored.line().startswith("verdict: RL forgets less: retention gap SFT - RL = -22.0 points")


# RL never above the base (3 of 30): the matched range is the base's point, 10; there f_RL = 28/30 (its first
# checkpoint) and f_SFT = 24/30, so the gap is 40/3 points
RL_BELOW = [((3, 30), (14, 15), (14, 15), 0.2), ((2, 30), (14, 15), (13, 15), 0.4),
            ((3, 30), (13, 15), (13, 15), 0.5)]


def test_verdict_says_when_a_method_never_exceeded_the_base():
    from razor_robot.report import bases

    verdict = vd.compare_methods(_sweep(RL_BELOW), n_resamples=200)
    assert verdict.matched == (10.0, 10.0) and verdict.gap == pytest.approx(40 / 3, abs=1e-9)
    assert verdict.not_above_base == ("rl",)
    assert "over (10.0, 10.0] (a point: RL never exceeded the base's new-task success); episodes" in verdict.line()
    assert vd.compare_methods(_sweep(RL_FAR), n_resamples=50).not_above_base == ()
    pooled = bases.pooled_verdict(_on_base(_sweep(RL_BELOW), "base-s2") + _on_base(_sweep(RL_FAR), "base-s0"),
                                  n_resamples=200)
    assert "base-s2 +13.3 (" in pooled.line()
    assert ", at the base's new-task success: RL never above it); base-s0 +22.0 (" in pooled.line()


def test_verdict_unresolved_with_episodes_needed():
    verdict = vd.compare_methods(_sweep(RL_NEAR), n_resamples=400)
    assert verdict.gap == pytest.approx(100 / 30, abs=1e-9) and verdict.matched == (10.0, 70.0)
    assert verdict.outcome == "unresolved"
    lo, hi = verdict.ci95
    assert lo < 0 < hi
    from razor_robot.report.stats import episodes_to_resolve

    assert verdict.episodes_needed == episodes_to_resolve(60, 100 / 30, lo, hi)
    assert verdict.episodes_needed > 4 * 60  # a 3-point effect needs far more than 60 episodes
    line = verdict.line()
    assert line.startswith("verdict: unresolved: retention gap RL - SFT = +3.3 points, 95% CI [-")
    assert f"needs ~{verdict.episodes_needed:.0f} episodes per checkpoint" in line


def test_episodes_needed_is_enough():
    # the 3.3-point effect at 4x the episodes is still unresolved; at the count it asks for, it resolves
    verdict = vd.compare_methods(_sweep(RL_NEAR, scale=4), n_resamples=300)
    assert verdict.outcome == "unresolved" and verdict.episodes_needed > 240
    scale = math.ceil(verdict.episodes_needed / 60)  # 60 episodes per checkpoint at scale 1
    resolved = vd.compare_methods(_sweep(RL_NEAR, scale=scale), n_resamples=300)
    assert resolved.gap == pytest.approx(100 / 30, abs=1e-9) and resolved.outcome == "a"


def test_paired_bootstrap_cancels_shared_episodes():
    # RL and SFT with the same outcomes on every episode: the gap is 0 in every paired resample
    base = _sweep(RL_FAR)[0]
    twin = _episode_record("sft", (15, 30), (10, 15), (10, 15), seed=11, base=base)
    records = [base, twin, dict(twin, method="rl")]
    paired = vd.compare_methods(records, n_resamples=200)
    assert paired.gap == 0.0 and paired.ci95 == (0.0, 0.0) and paired.outcome == "unresolved"
    assert paired.episodes_needed == math.inf and "no episode count resolves a zero gap" in paired.line()
    unpaired = vd.compare_methods([dict(r, paired=False) for r in records], n_resamples=200)
    assert unpaired.ci95[0] < -5 and unpaired.ci95[1] > 5  # independent resamples: wide
    # RL succeeds on every drawer episode SFT does, and on 5 more: every paired resample has gap >= 0
    better = _episode_record("rl", (15, 30), (15, 15), (15, 15), seed=11)
    better["episodes"]["pick-can"] = twin["episodes"]["pick-can"]
    assert vd.compare_methods([base, twin, better], n_resamples=200).ci95[0] >= 0


def test_verdict_without_intervals_or_methods():
    old = vd.compare_methods(SUMMARY)
    assert old.gap == pytest.approx(740 / 65) and old.ci95 is None and old.outcome == "unresolved"
    assert old.line().startswith("verdict: unresolved: retention gap RL - SFT = +11.4 points, at matched")
    assert old.line().endswith("CI unavailable: record 0 ('base') has no per-episode outcomes or counts "
                               "for new_task")
    counts_only = [{k: v for k, v in r.items() if k != "episodes"} for r in _sweep(RL_FAR, scale=4)]
    assert vd.compare_methods(counts_only, n_resamples=200).resampling == "binomial from counts"
    missing = vd.compare_methods([r for r in SUMMARY if r["method"] != "rl"])
    assert missing.line() == ("verdict: unresolved: needs records of both 'rl' and 'sft' "
                              "(methods found: 'sft')")


def test_verdict_lines_other_methods():
    lines = vd.verdict_lines(_sweep(RL_FAR, oracle=True), n_resamples=100)
    assert [line.split(":")[0] for line in lines] == ["verdict", "oracle-sft vs SFT", "oracle-sft vs RL"]
    # oracle (18/30 new, 28/30 prior) vs SFT over (10, 60]: ((28-24)·20 + (28-20)·20 + (28-15)·10) / 30 / 50
    assert "retention gap oracle-sft - SFT = +24.7 points" in lines[1]  # 370 / 15 = 24.67


def test_score_ci_and_format_rate():
    pytest.importorskip("scipy")
    from razor_robot.report import stats

    record = _episode_record("sft", (11, 30), (14, 15), (13, 15), seed=1)
    assert vd.score_ci(record, "new_task") == tuple(record["new_task/ci95"])
    lo, hi = (100 * v for v in stats.wilson_interval(11, 30))
    assert rs.format_rate(record, "new_task") == f"36.7 [{lo:.1f}, {hi:.1f}] n=30"
    assert rs.format_rate(record, "new_task") == "36.7 [21.9, 54.5] n=30"  # INTERFACES' example
    bare = {k: v for k, v in record.items() if not k.endswith("/ci95")}  # Wilson from n and successes
    assert vd.score_ci(bare, "prior_task") == pytest.approx(tuple(record["prior_task/ci95"]), abs=1e-9)
    episodes_only = {"method": "sft", "new_task": 36.7, "prior_task": 90.0, "prior/open-drawer": 93.3,
                     "prior/close-drawer": 86.7, "episodes": record["episodes"]}
    assert vd.score_count(episodes_only, "new_task") == (11, 30)
    assert vd.score_count(episodes_only, "prior_task") == (27, 30)
    assert vd.score_ci(_rec("sft", 50, 50), "new_task") is None
    assert rs.format_rate(_rec("sft", 50, 50), "new_task") == "50.0"


# --------------------------------------------------------------------------------------------------------
# R² with bootstrap CIs and Table 1
# --------------------------------------------------------------------------------------------------------
def test_weighted_r2_matches_polyfit_and_case_resampling():
    d, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 1.0, 3.0])
    assert t1._weighted_quadratic_r2(d, y, np.ones((1, 4)))[0] == pytest.approx(86 / 95, abs=1e-12)
    # integer weights = the points repeated: R² of polyfit on the expanded data
    counts = np.array([[2, 0, 1, 3], [0, 0, 1, 3]])
    expanded = np.repeat(d, counts[0]), np.repeat(y, counts[0])
    fitted = np.polyval(np.polyfit(*expanded, 2), expanded[0])
    r2 = t1._weighted_quadratic_r2(d, y, counts)
    assert r2[0] == pytest.approx(fr.r_squared(expanded[1], fitted), abs=1e-12)
    assert math.isnan(r2[1])  # only 2 distinct distances carry weight


def _r2_records():
    """Base + 8 checkpoints: forgetting = 10 kl² + kl exactly; kl/l2 a noisy predictor; tv = 2 kl."""
    kls = np.array([0.1, 0.3, 0.5, 0.8, 1.0, 1.3, 1.6, 2.0])
    noise = np.array([3.0, -4.0, 5.0, -2.0, 4.0, -5.0, 2.0, -3.0])
    records = [_rec("base", 10, 90, 0.0, **{"kl/forward": 0.0, "kl/tv": 0.0, "kl/l2": 0.0,
                                            "pred/weight_l1": 0.0, "kl/forward/ci95": [0.0, 0.0]})]
    for i, (k, e) in enumerate(zip(kls, noise)):
        forgetting = 10 * k**2 + k
        records.append(_rec("sft" if i % 2 else "rl", 50, 90 - forgetting, float(k),
                            **{"kl/forward": float(k), "kl/tv": float(2 * k), "kl/l2": float(k + e / 10),
                               "pred/weight_l1": float(forgetting + e), "kl/forward/d0": 0.5,
                               "kl/forward/ci95": [0.9 * k, 1.1 * k]}))
    return records


def test_predictor_keys_exclude_ci_and_per_position():
    assert t1.predictor_keys(_r2_records()) == ["kl/forward", "kl/tv", "kl/l2", "pred/weight_l1"]
    assert t1.predictor_keys([_rec("sft", 1, 2, 0.5)]) == ["kl/forward"]  # old records: "kl" only


def test_r2_fits_exact_fit_and_comparisons():
    rows = {row.predictor: row for row in t1.r2_fits(_r2_records(), n_resamples=300, seed=0)}
    forward = rows["kl/forward"]
    assert forward.r2 == pytest.approx(1.0, abs=1e-12) and forward.n_points == 9
    assert forward.ci95 == pytest.approx((1.0, 1.0), abs=1e-9)  # an exact law stays exact in every resample
    assert forward.forward_kl_is == "" and math.isnan(forward.forward_minus_this)
    # tv = 2 kl: the same fit, the difference is exactly 0 in every resample -> not resolved
    assert rows["kl/tv"].r2 == pytest.approx(1.0, abs=1e-12)
    assert rows["kl/tv"].difference_ci95 == pytest.approx((0.0, 0.0), abs=1e-9)
    assert rows["kl/tv"].forward_kl_is == "not resolved"
    # a noisy predictor: forward KL is better, and the difference is R²(fwd) - R²(l2) on the same records
    l2 = rows["kl/l2"]
    assert l2.r2 < 0.99 and l2.forward_kl_is == "better" and l2.difference_ci95[0] > 0
    assert l2.forward_minus_this == pytest.approx(1.0 - l2.r2, abs=1e-12)
    assert l2.r2 == pytest.approx(fr.fit_forgetting_vs_distance(_r2_records(), "kl/l2").r2, abs=1e-12)
    # and "worse" when the alternative is the exact one
    swapped = [dict(r, **{"kl/forward": r["kl/l2"], "kl/l2": r["kl/forward"]}) for r in _r2_records()]
    rows = {row.predictor: row for row in t1.r2_fits(swapped, ["kl/forward", "kl/l2"], n_resamples=300)}
    assert rows["kl/l2"].forward_kl_is == "worse" and rows["kl/l2"].difference_ci95[1] < 0
    with pytest.raises(ValueError, match="no record with method == 'base'"):
        t1.r2_fits(_r2_records()[1:])


def test_table1_sorted_and_csv(tmp_path):
    rows = t1.table1(_r2_records(), n_resamples=200)
    assert [row.predictor for row in rows][:2] == ["kl/forward", "kl/tv"]  # ties keep first-seen order
    assert [row.r2 for row in rows] == sorted([row.r2 for row in rows], reverse=True)
    path = t1.write_table1(rows, tmp_path / "table1.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ("predictor,r2,r2_ci_lo,r2_ci_hi,n_points,forward_minus_r2,diff_ci_lo,diff_ci_hi,"
                        "forward_kl_is")
    first = lines[1].split(",")
    assert first[0] == "kl/forward" and float(first[1]) == pytest.approx(1.0) and first[4] == "9"
    assert first[5:] == ["", "", "", ""]
    assert [line.split(",")[0] for line in lines[1:]] == [row.predictor for row in rows]
    text = t1.format_table1(rows)
    assert text.startswith("Table 1: R2 of the quadratic fit") and "pred/weight_l1" in text


def test_forward_kl_line():
    line = t1.forward_kl_line(_r2_records(), n_resamples=200)
    assert line.startswith("forward KL fit: R2 1.000 [1.000, 1.000] (n=9, checkpoint bootstrap)")
    assert "; vs kl/tv: not resolved (R2 1.000, diff +0.000" in line and "; vs kl/l2: better" in line


# --------------------------------------------------------------------------------------------------------
# Summary, plots and report on INTERFACES records
# --------------------------------------------------------------------------------------------------------
def test_summary_opens_with_verdict_and_shows_intervals():
    records = _sweep(RL_FAR, scale=4, oracle=True)
    text = rs.summary_table(records, n_resamples=100)
    lines = text.splitlines()
    assert lines[0].startswith("verdict: RL forgets less")
    assert lines[1].startswith("oracle-sft vs SFT:") and lines[2].startswith("oracle-sft vs RL:")
    # then each method's new-task gain over the base (methods in record order), then the forward-KL fit
    assert [line.split("'")[0] for line in lines[3:6]] == ["new-task gain of SFT", "new-task gain of RL",
                                                          "new-task gain of oracle-sft"]
    assert lines[6].startswith("forward KL fit: R2 ")
    table = [re.split(r"\s{2,}", line) for line in _method_table(text)]
    sft = next(row for row in table if row[0] == "sft")
    assert sft[2] == rs.format_rate(records[3], "new_task") and sft[2].endswith("n=120")
    # prior@new>=60 for SFT: its staircase at 60 is the 70%-new checkpoint (prior 50.0)
    assert sft[3] == rs.format_rate(records[3], "prior_task") and sft[3].startswith("50.0 [")
    assert "base: new_task 10.0 [" in text
    checkpoints = [re.split(r"\s{2,}", line) for line in text.split("checkpoints (")[1].splitlines()[2:]]
    assert len(checkpoints) == len(records)
    rl = checkpoints[4]
    assert rl[:2] == ["rl", "rl-30@30"] and rl[2].endswith("n=120") and rl[3].endswith("n=120")
    assert rl[4] == f"0.0 [{records[4]['forgetting/ci95'][0]:.1f}, {records[4]['forgetting/ci95'][1]:.1f}]"
    assert rl[5] == "0.200 [0.180, 0.220]"


def test_plots_and_report_with_intervals(tmp_path):
    pytest.importorskip("matplotlib")
    records = _sweep(RL_FAR, oracle=True)
    band = plots._frontier_band([r for r in records if r["method"] == "sft"], np.linspace(30, 70, 5), 2.0, 20, 0)
    assert band is not None and np.all(band[0] <= band[1])
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = rs.frontier_report(results, tmp_path / "out", n_resamples=100, band_resamples=10)
    assert text.startswith("verdict: ") and "\nTable 1: R2" in text
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"frontier.png", "kl_forgetting.png", "table1.csv"}
    assert (out / "table1.csv").read_text().splitlines()[1].split(",")[0] in t1.predictor_keys(records)
    for name in ("frontier.png", "kl_forgetting.png"):
        assert (out / name).stat().st_size > 10_000


# --------------------------------------------------------------------------------------------------------
# Several bases (razor_robot.report.bases): per-base verdicts, their hierarchical-bootstrap mean, agreement
# --------------------------------------------------------------------------------------------------------
def _on_base(records, base_id):
    return [dict(r, base_id=base_id) for r in records]


def _swapped(records):
    """The same checkpoints with the RL and SFT labels exchanged: the retention gap changes sign."""
    names = {"rl": "sft", "sft": "rl"}
    return [dict(r, method=names.get(r["method"], r["method"])) for r in records]


def test_pooled_verdict_two_agreeing_bases():
    from razor_robot.report import bases

    records = _on_base(_sweep(RL_FAR, scale=4), "base-s0") + _on_base(_sweep(RL_FAR, scale=4), "base-s1")
    pooled = bases.pooled_verdict(records, n_resamples=400)
    assert list(pooled.per_base) == ["base-s0", "base-s1"] and pooled.skipped == {}
    assert pooled.gap == pytest.approx(22.0, abs=1e-9) and pooled.outcome == "a" and pooled.agree
    # each base's verdict is the single-base verdict of its own records (seeded seed + its index)
    alone = vd.compare_methods(_sweep(RL_FAR, scale=4), n_resamples=400, seed=1)
    assert pooled.per_base["base-s1"].ci95 == alone.ci95
    line = pooled.line()
    assert line.startswith("pooled verdict (2 bases): RL forgets less: mean retention gap RL - SFT = +22.0 points, "
                           "95% CI [+")
    assert "hierarchical bootstrap: bases, then paired episodes; 400 resamples" in line
    assert line.endswith("per base: base-s0 +22.0 (RL forgets less); base-s1 +22.0 (RL forgets less); "
                         "the bases agree")


def test_pooled_verdict_disagreeing_bases_is_unresolved():
    from razor_robot.report import bases

    records = (_on_base(_sweep(RL_FAR, scale=4), "a") + _on_base(_swapped(_sweep(RL_FAR, scale=4)), "b"))
    pooled = bases.pooled_verdict(records, n_resamples=400)
    assert pooled.per_base["a"].outcome == "a" and pooled.per_base["b"].outcome == "b"
    assert pooled.gap == pytest.approx(0.0, abs=1e-9) and not pooled.agree
    # base-to-base variation dominates: half the resamples draw one base twice, so the interval spans both
    assert pooled.ci95[0] < -15 and pooled.ci95[1] > 15 and pooled.outcome == "unresolved"
    assert pooled.line().endswith("the bases disagree")
    # a base without RL records is left out of the mean, with the reason
    no_rl = [r for r in _on_base(_sweep(RL_FAR), "c") if r["method"] != "rl"]
    pooled = bases.pooled_verdict(_on_base(_sweep(RL_FAR, scale=4), "a") + no_rl, n_resamples=50)
    assert list(pooled.per_base) == ["a"] and "needs records of both 'rl' and 'sft'" in pooled.skipped["c"]


def test_rereferenced_keeps_each_checkpoints_forgetting_against_its_own_base():
    from razor_robot.report import bases

    low = _on_base(_sweep(RL_FAR), "low")
    high = _on_base(_sweep(RL_NEAR), "high")
    for r in high:  # this base and its checkpoints keep 10 points more of the drawers
        r["prior_task"] += 10.0
    shifted = bases.rereferenced(low + high)
    common = fr.base_prior(shifted)  # the mean of the two bases' prior-task scores
    assert common == pytest.approx((low[0]["prior_task"] + high[0]["prior_task"]) / 2, abs=1e-12)
    for original, moved in zip(low + high, shifted):
        own_base = (low if original in low else high)[0]["prior_task"]
        assert common - moved["prior_task"] == pytest.approx(own_base - original["prior_task"], abs=1e-12)
    assert bases.rereferenced(low) == low  # one base: unchanged
    with pytest.raises(ValueError, match="base 'x' has no 'base' record"):
        bases.rereferenced(low + [dict(r, base_id="x") for r in high if r["method"] != "base"])


def test_rereferenced_scores_move_with_their_intervals_and_replicates():
    """A shifted prior-task score keeps its own error bar and bootstrap replicates (moved by the same points),
    and the summary's checkpoint rows show it as measured, with its base."""
    from razor_robot.report import bases

    low = _on_base(_sweep(RL_FAR), "low")
    high = _on_base(_sweep(RL_NEAR), "high")
    for r in high:  # the same base record as `low`'s, 10 points higher: shifts +5 (low) and -5 (high)
        r["prior_task"] += 10.0
    originals = low + high
    shifted = bases.rereferenced(originals)
    assert bases.reference_shifts(shifted) == {"low": 5.0, "high": -5.0}
    assert vd.score_shift(originals[0], "prior_task") == 0.0
    for original, moved in zip(originals, shifted):
        shift = 5.0 if original in low else -5.0
        assert moved["prior_task/shift"] == shift and bases.measured(moved) == original
        lo, hi = vd.score_ci(original, "prior_task")
        assert vd.score_ci(moved, "prior_task") == (lo + shift, hi + shift)
        assert vd.score_ci(moved, "new_task") == vd.score_ci(original, "new_task")
    before, after = vd.resample_scores(originals, 50, seed=3), vd.resample_scores(shifted, 50, seed=3)
    shifts = np.array([5.0] * len(low) + [-5.0] * len(high))
    np.testing.assert_allclose(after.prior_task, before.prior_task + shifts, atol=1e-12)
    np.testing.assert_array_equal(after.new_task, before.new_task)

    text = rs.summary_table(shifted, n_resamples=50)
    assert "2 bases: prior_task above and in the plots is re-referenced" in text and "low +5.0, high -5.0" in text
    base_row = next(line for line in text.splitlines() if line.startswith("base ") and " high " in line)
    assert rs.format_rate(originals[len(low)], "prior_task") in base_row  # as measured, not shifted


def test_frontier_report_of_several_bases_opens_with_the_pooled_verdict(tmp_path):
    records = _on_base(_sweep(RL_FAR, scale=4), "base-s0") + _on_base(_sweep(RL_NEAR, scale=4), "base-s1")
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = rs.frontier_report(path, tmp_path, n_resamples=100, band_resamples=10)
    assert text.startswith("pooled verdict (2 bases): ") and "per base: base-s0 +22.0 (RL forgets less)" in text
    assert (tmp_path / "frontier.png").is_file() and (tmp_path / "table1.csv").is_file()


def test_new_task_gain_lines_retake_the_best_checkpoint_per_resample():
    # RL_FAR: base 3/30 pick-can, RL's best 18/30 -> +50 points; SFT's best 21/30 -> +60 points
    lines = vd.new_task_gain_lines(_sweep(RL_FAR, scale=4), n_resamples=400)
    assert [line.split(":")[0] for line in lines] == [
        "new-task gain of SFT's best checkpoint over the base", "new-task gain of RL's best checkpoint over the base"]
    assert lines[1].startswith("new-task gain of RL's best checkpoint over the base: +50.0 points, 95% CI [+")
    assert "(learned; paired episodes bootstrap re-taking the best of 3 checkpoints)" in lines[1]
    # by hand: the same draws as resample_scores, max over RL's columns minus the base's column
    reps = vd.resample_scores(_sweep(RL_FAR, scale=4), 400, 0)
    records = _sweep(RL_FAR, scale=4)
    rl = [i for i, r in enumerate(records) if r["method"] == "rl"]
    lo, hi = np.percentile(reps.new_task[:, rl].max(axis=1) - reps.new_task[:, 0], [2.5, 97.5])
    assert f"95% CI [{lo:+.1f}, {hi:+.1f}]" in lines[1]
    # a method that never beats the base: its CI holds 0
    flat = [r for r in _sweep(RL_FAR) if r["method"] != "sft"]
    for r in flat:
        if r["method"] == "rl":
            r.update({k: v for k, v in flat[0].items() if k.startswith("new_task") or k == "episodes"})
    assert "(not resolved;" in vd.new_task_gain_lines(flat, n_resamples=200)[0]
    assert vd.new_task_gain_lines([r for r in flat if r["method"] != "base"]) == []

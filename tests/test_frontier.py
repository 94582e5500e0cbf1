"""Hand-computed tests of the Pareto-frontier tools (razor_robot.frontier); no torch, no simulator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from razor_robot import frontier as fr

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


def test_summary_table_values():
    assert fr.matched_new_task(SUMMARY) == 65
    table = fr.summary_table(SUMMARY)
    lines = table.splitlines()
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
    row = fr.summary_table(records).splitlines()[3].split()
    assert row[7] == row[5]  # tv = kl / 2: same R²
    no_base = fr.summary_table(SUMMARY[1:])
    assert "n/a" in no_base.splitlines()[1] and "forgetting (and R2) undefined" in no_base


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
    png = fr.plot_frontier(records, tmp_path / "sub" / "frontier.png")
    kl_png = fr.plot_kl_forgetting(records, tmp_path / "kl_forgetting.png")
    for path in (png, kl_png):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["frontier.png", "kl_forgetting.png"]


def test_frontier_report_from_jsonl_fractions(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    results = tmp_path / "results.jsonl"
    lines = [json.dumps(dict(r, new_task=r["new_task"] / 100, prior_task=r["prior_task"] / 100))
             for r in SUMMARY]
    lines.insert(2, "")
    lines.append(json.dumps(_rec("rl", 0.1, 0.3, float("nan"))))  # json writes NaN; kl unusable
    results.write_text("\n".join(lines) + "\n")
    text = fr.frontier_report(results, tmp_path / "out", scale=100)
    assert text.splitlines()[1].split()[:5] == ["sft", "3", "70.0", "50.0", "3.000"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"frontier.png", "kl_forgetting.png"}


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

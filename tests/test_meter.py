"""The forgetting meter: KL every N steps, forecasts from a fit of finished runs, and the held-out comparison."""

import json

import numpy as np
import pytest
import torch

from razor_robot.measure.meter import ForgettingFit, ForgettingMeter, fit_from_records, load_fit, meter_summary
from razor_robot.policies import load_policy


def record(run, kl, prior, method="sft", **extra):
    return {"run_id": run, "method": method, "new_task": 10.0, "prior_task": prior, "kl": kl, **extra}


def test_fit_from_records_is_the_quadratic_forgetting_fit_of_finished_runs():
    # forgetting = 100 - prior = 2 kl^2 + 3 kl exactly: the fit recovers (2, 3, 0).
    records = [record("base", 0.0, 100.0, method="base")]
    records += [record(f"r{i}", kl, 100.0 - (2 * kl * kl + 3 * kl)) for i, kl in enumerate([0.5, 1.0, 2.0])]
    records.append({"run_id": "bad", "method": "rl", "status": "failed", "reason": "x"})
    fit = fit_from_records(records)
    np.testing.assert_allclose(fit.coeffs, (2.0, 3.0, 0.0), atol=1e-9)
    assert fit.runs == ("r0", "r1", "r2") and fit(1.5) == pytest.approx(2 * 2.25 + 4.5)
    assert fit_from_records(records[:2]) is None  # the base's KL 0 and one run's: 2 distinct KLs, too few
    assert fit_from_records(records[1:]) is None  # no base record: forgetting undefined


def test_fit_file_round_trip_and_one_line_errors(tmp_path):
    fit = ForgettingFit((1.0, -2.0, 0.5), ("a",))
    path = tmp_path / "fit.json"
    path.write_text(fit.to_json())
    assert load_fit(path) == fit
    with pytest.raises(FileNotFoundError, match="meter fit file not found"):
        load_fit(tmp_path / "missing.json")
    path.write_text(json.dumps({"coefficients": [1, 2, 3]}))
    with pytest.raises(ValueError, match="expected JSON"):
        load_fit(path)


def test_meter_measures_every_n_steps_and_forecasts_with_its_fit():
    torch.manual_seed(0)
    base = load_policy("tiny").eval()
    policy = load_policy("tiny").eval()
    policy.load_state_dict(base.state_dict())
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    meter = ForgettingMeter(base, images, ["pick coke can"] * 6, every=3, fit=ForgettingFit((0.0, 10.0, 1.0), ()))
    assert meter(1, policy) == {} and meter(2, policy) == {}
    same = meter(3, policy)
    assert same["meter/kl"] == 0.0 and same["meter/forecast"] == 1.0  # identical weights: KL 0, forecast c0
    with torch.no_grad():
        policy.language_model.lm_head.weight.add_(0.05 * torch.randn_like(policy.language_model.lm_head.weight))
    moved = meter(6, policy)
    assert moved["meter/kl"] > 0 and moved["meter/forecast"] == pytest.approx(10 * moved["meter/kl"] + 1)
    assert "meter/forecast" not in ForgettingMeter(base, images, ["x"] * 6, every=1, fit=None)(1, policy)


def test_meter_summary_reports_error_on_held_out_checkpoints():
    rows = [record("a", 1.0, 90.0, forgetting=10.0, **{"forgetting/ci95": [4.0, 16.0], "meter/forecast": 12.0}),
            record("b", 2.0, 80.0, forgetting=20.0, **{"forgetting/ci95": [14.0, 26.0], "meter/forecast": 30.0}),
            record("c", 0.5, 95.0, forgetting=5.0)]  # no forecast: its run had no fit yet
    line = meter_summary(rows)
    assert line.startswith("meter: forecast vs measured forgetting on 2 held-out checkpoints")
    assert "mean absolute error 6.0 points" in line and "mean error +6.0" in line
    assert "1/2 forecasts inside the measured forgetting's 95% CI" in line
    assert meter_summary(rows[2:]).startswith("meter: no checkpoint has a forecast")

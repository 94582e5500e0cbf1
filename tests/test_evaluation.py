"""Evaluation records on hand-computable cases: rates with Wilson intervals, paired forgetting, episode sizing,
and the oracle's rejection sampler on a fake env with the real VLA actor."""

import functools
import math

import numpy as np
import pytest

from fake_envs import make_reach_env
from razor_robot.measure.evaluation import (
    EvalConfig, episodes_for_half_width, forgetting_fields, rate_fields, scores_from_episodes, worst_half_width,
)


def test_rate_fields_carry_count_successes_and_the_wilson_interval():
    fields = rate_fields("new_task", [1, 0, 0, 1, 0])
    assert fields["new_task"] == 40.0 and fields["new_task/n"] == 5 and fields["new_task/successes"] == 2
    # Wilson 95%: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with p = 0.4, n = 5.
    z, p, n = 1.959963984540054, 0.4, 5
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    expected = [100 * (centre - half) / (1 + z * z / n), 100 * (centre + half) / (1 + z * z / n)]
    np.testing.assert_allclose(fields["new_task/ci95"], expected, rtol=1e-9)


def test_scores_pool_prior_tasks_and_keep_paired_episodes():
    episodes = {"pick-can": [1, 0], "open-drawer": [1, 1, 1, 0], "close-drawer": [1, 0, 0, 0]}
    scores = scores_from_episodes(episodes, "pick-can", ("open-drawer", "close-drawer"),
                                  np.array([[0.1, 0.6], [0.0, 0.7]]))
    assert scores["prior/open-drawer"] == 75.0 and scores["prior/close-drawer"] == 25.0
    assert scores["prior_task"] == 50.0 and scores["prior_task/n"] == 8 and scores["prior_task/successes"] == 4
    assert scores["per_position"] == [[0.1, 0.6, True], [0.0, 0.7, False]]
    assert scores["episodes"] is episodes and scores["paired"] is True


def test_forgetting_is_the_paired_difference_with_a_paired_bootstrap_interval():
    base = {"open-drawer": [1, 1, 1, 1], "close-drawer": [1, 1, 0, 0]}
    same = forgetting_fields(base, base, ("open-drawer", "close-drawer"))
    assert same == {"forgetting": 0.0, "forgetting/ci95": [0.0, 0.0]}  # paired: identical episodes, no noise
    worse = {"open-drawer": [1, 0, 1, 1], "close-drawer": [1, 1, 0, 0]}
    fields = forgetting_fields(base, worse, ("open-drawer", "close-drawer"))
    assert fields["forgetting"] == pytest.approx(12.5)  # (1/4 + 0) / 2
    lo, hi = fields["forgetting/ci95"]
    assert 0.0 <= lo <= 12.5 <= hi <= 50.0
    with pytest.raises(ValueError, match="same non-zero number of episodes"):
        forgetting_fields(base, {"open-drawer": [1], "close-drawer": [1, 1, 0, 0]}, ("open-drawer", "close-drawer"))


def test_episodes_sized_by_target_half_width_and_capped():
    n = episodes_for_half_width(10.0)
    assert n == 93 and worst_half_width(n) <= 10.0 < worst_half_width(n - 1)
    assert EvalConfig(target_half_width=10.0).plan()[:2] == (93, 93)
    n_new, n_prior, note = EvalConfig(target_half_width=3.0, max_episodes=200).plan()
    assert (n_new, n_prior) == (200, 200) and "needs 1064" in note and "budget cap" in note
    assert EvalConfig(new_task_positions=30, prior_episodes=15).plan()[:2] == (30, 15)
    with pytest.raises(ValueError, match="target_half_width"):
        EvalConfig(target_half_width=0.0)
    with pytest.raises(ValueError, match="prior_protocol"):
        EvalConfig(prior_protocol="standard")
    with pytest.raises(ValueError, match="prior_episodes must be >= 1"):
        EvalConfig(prior_episodes=0)
    assert EvalConfig(prior_episodes=0, prior_tasks=()).plan()[:2] == (100, 0)  # new task only


def test_oracle_rejection_sampler_keeps_only_successes_counts_attempts_and_stores_tokens():
    import torch

    from razor_robot.rollout.actor import VLAActor
    from razor_robot.training.data import CollectionPlan, collect, trajectories_to_dataset
    from razor_robot.rollout.pool import EnvPool
    from razor_robot.policies import compute_norm_stats, load_policy

    torch.manual_seed(0)
    policy = load_policy("tiny", action_dim=2)
    policy.set_norm_stats("fake", compute_norm_stats(np.random.default_rng(0).uniform(-1, 1, (200, 2))))
    actor = VLAActor(policy, unnorm_key="fake", temperature=1.0, seed=3)
    # The can sits where the point starts (success at any step counts): some sampled episodes succeed.
    plan = CollectionPlan("pick-can", 2, np.array([[0.0, 0.0], [0.04, 0.0]]), max_attempts_factor=6)
    factory = functools.partial(make_reach_env, success_mode="any")
    with EnvPool(num_workers=1, envs_per_worker=4, env_factory=factory) as pool:
        kept, index, shortfall, attempts = collect(plan, actor, pool=pool, progress=False)
    assert kept and all(t.success for t in kept)  # only the policy's own successes are kept
    assert all(attempts[str(i)] <= 2 * 6 for i in range(2))  # capped at K x max_attempts_factor
    assert sum(attempts.values()) > len(kept)  # some sampled episodes failed and were rejected
    for i in range(2):
        n_kept = index.count(i)
        assert n_kept + shortfall.get(str(i), 0) == 2  # K per point, or a reported shortfall
        assert attempts[str(i)] >= n_kept
    dataset = trajectories_to_dataset(kept, index)
    assert dataset.tokens is not None and dataset.tokens.shape == (len(dataset), 2)
    np.testing.assert_array_equal(dataset.tokens, np.concatenate([t.extras["tokens"] for t in kept]))
    # Decoding the stored tokens gives the actions the env received (no re-binning of the labels).
    decoded = policy.tokens_to_actions(dataset.tokens, "fake")
    np.testing.assert_allclose(np.clip(decoded, -1, 1), dataset.actions, atol=1e-6)


def test_policy_demo_line_reports_successes_attempts_and_the_wilson_interval():
    from razor_robot.training.dataset import DemoDataset
    from razor_robot.experiment.sweep import _demo_line

    n = 6  # 3 kept episodes of 2 steps each, in 12 attempts over 2 grid points
    dataset = DemoDataset(np.zeros((n, 4, 4, 3), np.uint8), np.zeros((n, 2), np.float32),
                          np.zeros((n, 2), np.float32), ["x"] * n, ["pick-can"] * n, np.repeat(np.arange(3), 2),
                          np.array([0, 0, 0, 0, 1, 1]),
                          {"attempts_per_point": {"0": 4, "1": 8}, "shortfall_per_point": {"1": 1},
                           "episodes_per_point": 2})
    line = _demo_line(dataset)
    assert line.startswith("3 successful episodes in 12 attempts (success 25.0%, 95% CI 8.9-53.2)")
    assert line.endswith("1 grid points short of K=2")

"""REINFORCE: exact advantages, loss normalisation, the GRPO clip and the KL term on hand-computable cases."""

import copy
import functools
import math

import numpy as np
import pytest
import torch

from fake_envs import make_reach_env
from razor_robot.policies import load_policy
from razor_robot.policies.action_tokenizer import compute_norm_stats
from razor_robot.training.reinforce import (
    RLConfig, StepBatch, group_advantages, minibatch_loss, steps_from_trajectories, train_reinforce,
)
from razor_robot.rollout.pool import EnvPool
from razor_robot.rollout.episodes import Trajectory
from razor_robot.training.optim import OptimConfig
from razor_robot.report.stats import drawdown_null_probability

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ advantages


def test_group_advantages_hand_values():
    # Group 7: [1, 0, 0, 1, 1] -> mean 0.6, std sqrt(0.24) = 0.48990; group 3: [1, 0] -> mean 0.5, std 0.5;
    # group 5: [0, 0, 0] has no contrast -> exactly 0. Members are interleaved to check the grouping.
    rewards = np.array([1, 1, 0, 0, 0, 0, 1, 0, 1, 0], float)
    groups = np.array([7, 3, 7, 3, 5, 7, 7, 5, 7, 5])
    adv = group_advantages(rewards, groups, "reinforce", eps=1e-6)
    std7 = 0.4898979485566356
    hi7, lo7 = 0.4 / (std7 + 1e-6), -0.6 / (std7 + 1e-6)
    hi3 = 0.5 / (0.5 + 1e-6)
    expected = [hi7, hi3, lo7, -hi3, 0.0, lo7, hi7, 0.0, hi7, 0.0]
    np.testing.assert_allclose(adv, expected, rtol=1e-12)
    assert hi7 == pytest.approx(0.816495, abs=1e-6) and lo7 == pytest.approx(-1.224742, abs=1e-6)
    assert adv[[4, 7, 9]].tolist() == [0.0, 0.0, 0.0]
    # Each contrasting group is zero-mean and (up to eps) unit-std.
    for g in (7, 3):
        assert adv[groups == g].mean() == pytest.approx(0.0, abs=1e-12)
        assert adv[groups == g].std() == pytest.approx(1.0, abs=1e-5)


def test_all_equal_groups_are_exactly_zero():
    assert group_advantages(np.ones(4), np.zeros(4)).tolist() == [0.0] * 4
    assert group_advantages(np.zeros(3), np.array([0, 1, 1])).tolist() == [0.0] * 3


def test_reinforce_01_advantage_is_the_reward():
    rewards = np.array([1.0, 0.0, 1.0, 1.0])
    adv = group_advantages(rewards, np.array([0, 0, 1, 1]), "reinforce-01")
    assert adv.tolist() == [1.0, 0.0, 1.0, 1.0]


def _trajectory(length: int, first_token: int, instruction: str, success: bool) -> Trajectory:
    images = np.zeros((length, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(length)
    tokens = np.arange(length * 2).reshape(length, 2) + first_token  # (T, D=2)
    return Trajectory(task="pick-can", instruction=instruction, seed=0, object_xy=None, success=success,
                      images=images, states=np.zeros((length, 4), np.float32),
                      actions=np.zeros((length, 2), np.float32), step_success=np.zeros(length, bool),
                      extras={"tokens": tokens})


def test_steps_from_trajectories_repeats_each_episode_advantage():
    trajectories = [_trajectory(2, 100, "a", True), _trajectory(3, 200, "b", False)]
    batch = steps_from_trajectories(trajectories, np.array([1.5, -0.25]))
    assert batch.advantages.tolist() == [1.5, 1.5, -0.25, -0.25, -0.25]
    assert batch.instructions == ["a", "a", "b", "b", "b"]
    assert batch.images.shape == (5, 4, 4, 3) and batch.images[:, 0, 0, 0].tolist() == [0, 1, 0, 1, 2]
    assert batch.tokens.dtype == torch.int64
    assert batch.tokens.tolist() == [[100, 101], [102, 103], [200, 201], [202, 203], [204, 205]]


# ---------------------------------------------------------------------------------------------- the losses


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_policy("tiny", action_dim=4).eval()


def _batch(policy, advantages, seed=0) -> StepBatch:
    rng = np.random.default_rng(seed)
    n = len(advantages)
    tokens = torch.from_numpy(rng.integers(0, 256, (n, policy.action_dim))) + policy.action_token_offset
    return StepBatch(images=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
                     instructions=["pick coke can" if i % 2 else "open drawer" for i in range(n)],
                     tokens=tokens.long(), advantages=torch.tensor(advantages, dtype=torch.float32))


class _Spy:
    """Records the batch size of every action_logits call of a policy."""

    def __init__(self, policy, monkeypatch):
        self.sizes = []
        original = policy.action_logits

        def action_logits(images, instructions, tokens):
            self.sizes.append(len(instructions))
            return original(images, instructions, tokens)

        monkeypatch.setattr(policy, "action_logits", action_logits)


def _config(variant="reinforce", **kwargs) -> RLConfig:
    return RLConfig(OptimConfig(batch_size=8), variant=variant, **kwargs)


def test_reinforce_loss_is_sum_over_steps_divided_by_minibatch_size(tiny, monkeypatch):
    advantages = [0.5, 0.0, -1.25, 0.0, 2.0, 0.0]
    batch = _batch(tiny, advantages)
    idx = np.array([5, 0, 1, 2, 4, 3])
    with torch.no_grad():
        logp = tiny.log_prob(batch.images, batch.instructions, batch.tokens)  # (6,)
    expected = -(0.5 * logp[0] - 1.25 * logp[2] + 2.0 * logp[4]) / 6
    spy = _Spy(tiny, monkeypatch)
    loss, parts = minibatch_loss(tiny, batch, idx, _config(), None)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["pg_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert spy.sizes == [3]  # the three zero-advantage steps never ran, but count in the denominator (6)


def test_reinforce_gradient_matches_hand_loss(tiny):
    batch = _batch(tiny, [1.0, -0.5, 0.0], seed=1)
    weight = tiny.language_model.lm_head.weight
    loss, _ = minibatch_loss(tiny, batch, np.arange(3), _config(), None)
    (grad,) = torch.autograd.grad(loss, weight)
    logp = tiny.log_prob(batch.images[:2], batch.instructions[:2], batch.tokens[:2])
    (expected,) = torch.autograd.grad(-(1.0 * logp[0] - 0.5 * logp[1]) / 3, weight)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


def test_loss_at_a_rollout_temperature_uses_the_tempered_log_probs(tiny):
    # Rollouts sampled at T = 0.5 come from softmax(logits / 0.5): the loss must take those log-probabilities.
    batch = _batch(tiny, [1.0, 0.0, -2.0], seed=5)
    with torch.no_grad():
        logits = tiny.action_logits(batch.images, batch.instructions, batch.tokens)  # (3, D, K)
        picked = (batch.tokens - tiny.action_token_offset)[..., None]
        tempered = torch.log_softmax(logits / 0.5, -1).gather(-1, picked)[..., 0].sum(-1)  # (3,)
        untempered = torch.log_softmax(logits, -1).gather(-1, picked)[..., 0].sum(-1)
        loss, _ = minibatch_loss(tiny, batch, np.arange(3), _config(temperature=0.5), None)
        at_one, _ = minibatch_loss(tiny, batch, np.arange(3), _config(temperature=1.0), None)
    assert loss.item() == pytest.approx(-(1.0 * tempered[0] - 2.0 * tempered[2]).item() / 3, rel=1e-5)
    assert at_one.item() == pytest.approx(-(1.0 * untempered[0] - 2.0 * untempered[2]).item() / 3, rel=1e-5)
    assert abs(loss.item() - at_one.item()) > 1e-3


def test_micro_batches_weighted_by_size_sum_to_the_minibatch_loss(tiny):
    # train_reinforce accumulates micro-batch losses times len(micro) / len(minibatch).
    batch = _batch(tiny, [0.3, -1.0, 0.0, 0.7, 1.1], seed=2)
    with torch.no_grad():
        whole, _ = minibatch_loss(tiny, batch, np.arange(5), _config(), None)
        a, _ = minibatch_loss(tiny, batch, np.arange(2), _config(), None)
        b, _ = minibatch_loss(tiny, batch, np.arange(2, 5), _config(), None)
    assert (a * 2 / 5 + b * 3 / 5).item() == pytest.approx(whole.item(), rel=1e-5)


def test_all_zero_advantages_give_a_constant_zero_loss(tiny, monkeypatch):
    spy = _Spy(tiny, monkeypatch)
    loss, parts = minibatch_loss(tiny, _batch(tiny, [0.0, 0.0]), np.arange(2), _config(), None)
    assert loss.item() == 0.0 and not loss.requires_grad and parts == {"pg_loss": 0.0}
    assert spy.sizes == []


def test_grpo_clipped_objective_hand_values(tiny):
    # Ratios are set through the old log-probs: step 0 r=1.5 (A=+1, clipped to 1.2), step 1 r=0.5 (A=-1, the
    # pessimistic clipped term 0.8 * -1 wins), step 2 r=1 (A=0.5, inside the clip range).
    # loss = -(1.2 - 0.8 + 0.5) / 3 = -0.3; clip fraction = 8 of 12 tokens.
    batch = _batch(tiny, [1.0, -1.0, 0.5], seed=3)
    with torch.no_grad():
        logits = tiny.action_logits(batch.images, batch.instructions, batch.tokens)
        logp = torch.log_softmax(logits, -1).gather(-1, (batch.tokens - tiny.action_token_offset)[..., None])[..., 0]
    batch.old_token_logp = logp - torch.log(torch.tensor([1.5, 0.5, 1.0]))[:, None]  # (3, D)
    config = _config("grpo", clip_eps=0.2)
    loss, parts = minibatch_loss(tiny, batch, np.arange(3), config, None)
    assert loss.item() == pytest.approx(-0.3, abs=1e-5)
    assert parts["clip_frac"] == pytest.approx(8 / 12)
    # Both clipped steps are constant in θ: only step 2 carries gradient, 0.5 * mean_t ∇ratio_t / 3.
    weight = tiny.language_model.lm_head.weight
    (grad,) = torch.autograd.grad(loss, weight)
    step2 = tiny.action_logits(batch.images[2:], batch.instructions[2:], batch.tokens[2:])
    logp2 = torch.log_softmax(step2, -1).gather(-1, (batch.tokens[2:] - tiny.action_token_offset)[..., None])[..., 0]
    ratio2 = torch.exp(logp2 - batch.old_token_logp[2:])
    (expected,) = torch.autograd.grad(-(0.5 * ratio2).mean() / 3, weight)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


def test_kl_term_is_zero_at_the_base_and_matches_the_exact_kl_after_a_change(tiny, monkeypatch):
    batch = _batch(tiny, [0.0, 0.0, 0.0, 0.0], seed=4)
    base = copy.deepcopy(tiny)
    config = _config("kl-reinforce", kl_coef=0.5)
    spy = _Spy(tiny, monkeypatch)
    loss, parts = minibatch_loss(tiny, batch, np.arange(4), config, base.action_logits)
    assert spy.sizes == [4]  # the KL needs every step, zero advantage or not
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and parts["kl"] == pytest.approx(0.0, abs=1e-6)

    changed = copy.deepcopy(base)
    with torch.no_grad():
        changed.language_model.lm_head.weight.mul_(3.0)
    loss, parts = minibatch_loss(changed, batch, np.arange(4), config, base.action_logits)
    with torch.no_grad():
        p = torch.log_softmax(changed.action_logits(batch.images, batch.instructions, batch.tokens), -1)
        q = torch.log_softmax(base.action_logits(batch.images, batch.instructions, batch.tokens), -1)
        kl = (p.exp() * (p - q)).sum((-1, -2))  # (4,) KL summed over the D tokens
    assert kl.min() > 0
    assert parts["kl"] == pytest.approx(kl.mean().item(), rel=1e-4)
    assert loss.item() == pytest.approx(0.5 * kl.sum().item() / 4, rel=1e-4)


def test_rl_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown RL variant 'ppo'"):
        _config("ppo")
    with pytest.raises(ValueError, match="kl_coef"):
        _config("kl-reinforce")
    with pytest.raises(ValueError):
        _config(clip_eps=1.5)
    with pytest.raises(ValueError, match="RL trains at a constant learning rate after warmup, got schedule 'cosine'"):
        RLConfig(OptimConfig(batch_size=8, schedule="cosine"))


# -------------------------------------------------------------------------------------------- end to end


def _reach_policy():
    torch.manual_seed(0)
    policy = load_policy("tiny", action_dim=2)
    actions = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    policy.set_norm_stats("fake", compute_norm_stats(actions))
    return policy


def _train_on_reach(policy, seed=0):
    # success_mode="any" with the can at the start point: a random policy succeeds often enough for contrast.
    env = EnvPool(num_workers=1, envs_per_worker=3, env_factory=functools.partial(make_reach_env, success_mode="any"))
    logs, checkpoints = [], []
    config = RLConfig(OptimConfig(learning_rate=1e-3, batch_size=16, warmup_steps=1), iterations=2,
                      rollouts_per_point=4, checkpoints=2, seed=seed)
    try:
        summary = train_reinforce(policy, np.array([[0.0, 0.0], [0.02, 0.0]]), config, task="pick-can",
                                  unnorm_key="fake", pool=env, progress=False,
                                  log=lambda stats, it: logs.append((it, dict(stats))),
                                  on_checkpoint=lambda it, frac, model: checkpoints.append((it, frac)))
    finally:
        env.close()
    return summary, logs, checkpoints


def test_train_reinforce_on_the_fake_env_is_deterministic():
    initial = _reach_policy()
    first, second = copy.deepcopy(initial), copy.deepcopy(initial)
    summary, logs, checkpoints = _train_on_reach(first)
    assert checkpoints == [(1, 0.5), (2, 1.0)]
    assert [it for it, _ in logs] == [1, 2]
    for _, stats in logs:
        assert {"rl/success", "rl/active_fraction", "rl/pg_loss", "train/loss"} <= set(stats)
        assert 0.0 <= stats["rl/success"] <= 1.0 and math.isfinite(stats["train/loss"])
        assert stats["rl/success"] == stats["rl/successes"] / stats["rl/episodes"]  # the rate with its count
    # 2 points x 4 episodes x horizon 5 = 40 steps per iteration -> 3 minibatches of 16 per iteration.
    assert summary["train/optimizer_steps"] == 6
    assert summary["rl/first_rollout_success"] == logs[0][1]["rl/success"]
    rates = [stats["rl/success"] for _, stats in logs]
    assert [stats["rl/drawdown"] for _, stats in logs] == [0.0, max(rates) - rates[1]]
    assert summary["rl/max_drawdown"] == max(rates) - rates[1]
    # 8 episodes per iteration: the null probability is the exact one of those counts.
    assert summary["rl/drawdown_null_probability"] == pytest.approx(
        drawdown_null_probability([round(8 * r) for r in rates], 8))
    assert any(stats["rl/active_fraction"] > 0 for _, stats in logs), "no group had contrast: nothing learned"
    changed = any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), initial.state_dict().values()))
    assert changed

    summary2, logs2, _ = _train_on_reach(second)
    assert logs2 == logs
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_stability_line_says_whether_the_fall_is_noise():
    from razor_robot.experiment.stages.finetune import stability_line

    assert stability_line({"rl/max_drawdown": 0.109375, "rl/drawdown_null_probability": 0.534}) == (
        "rollout success fell at most 10.9 points below its running best; a policy that never changed falls "
        "that far in 53.4% of runs (within sampling noise)")
    assert stability_line({"rl/max_drawdown": 0.175, "rl/drawdown_null_probability": 0.001}).endswith(
        "in 0.1% of runs (more than sampling noise)")
    assert stability_line({"rl/max_drawdown": 0.1, "rl/drawdown_null_probability": math.nan}).endswith(
        "(episodes per iteration varied: no noise reference)")

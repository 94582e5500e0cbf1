import functools

import numpy as np
import pytest

from fake_envs import make_reach_env
from razor_robot.rollout import DemonstratorPolicy, EpisodeRequest, make_vector_env, rollout

pytestmark = pytest.mark.core


def move_right(images, states, instructions):
    actions = np.tile(np.array([1.0, 0.0], np.float32), (len(images), 1))
    return actions, {"step_seen": images[:, 0, 0, 0].astype(np.int64)}


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_rollout_records_each_episode_in_order(num_workers):
    # Can 0.5 to the right: after 5 steps of +0.1 the point is at 0.5 -> success at the final step only.
    requests = [EpisodeRequest("pick-can", seed=s, object_xy=(0.5 if s % 2 == 0 else -0.5, 0.0)) for s in range(5)]
    trajectories = rollout(requests, move_right, env_factory=make_reach_env, num_workers=num_workers, progress=False)
    assert [t.seed for t in trajectories] == [0, 1, 2, 3, 4]
    assert [t.success for t in trajectories] == [True, False, True, False, True]
    first = trajectories[0]
    assert first.images.shape == (5, 4, 4, 3) and first.actions.shape == (5, 2) and first.states.shape == (5, 4)
    assert first.extras["step_seen"].tolist() == [0, 1, 2, 3, 4]  # observation t is the input to action t
    assert first.step_success.tolist() == [False, False, False, False, True]
    assert first.instruction == "pick coke can" and first.object_xy == (0.5, 0.0)
    assert [int(t.images[0, 0, 0, 1]) for t in trajectories] == [0, 1, 2, 3, 4]


def test_success_mode_any_counts_a_passing_success():
    # Point passes the can at step 3 (0.3) and overshoots to 0.5: final-step success fails, any-step succeeds.
    request = [EpisodeRequest("pick-can", seed=0, object_xy=(0.3, 0.0))]
    final = rollout(request, move_right, env_factory=make_reach_env, progress=False)
    any_step = rollout(request, move_right, env_factory=functools.partial(make_reach_env, success_mode="any"),
                       progress=False)
    assert final[0].success is False and any_step[0].success is True


def test_vector_env_is_reused_and_never_autoresets():
    vector_env = make_vector_env(make_reach_env, 2)
    try:
        requests = [EpisodeRequest("pick-can", seed=s, object_xy=(0.5, 0.0)) for s in range(4)]
        first = rollout(requests, move_right, vector_env=vector_env, progress=False)
        second = rollout(requests, move_right, vector_env=vector_env, progress=False)
        assert [t.success for t in first] == [t.success for t in second] == [True] * 4
        assert all(t.extras["step_seen"].tolist() == [0, 1, 2, 3, 4] for t in second)
    finally:
        vector_env.close()


class CountingDemonstrator:
    def __init__(self):
        self.calls = 0

    def act(self, obs):
        self.calls += 1
        return np.array([1.0, 0.0]) if self.calls <= 5 else np.array([-1.0, 0.0])


def test_demonstrator_policy_gets_fresh_state_every_batch():
    policy = DemonstratorPolicy(CountingDemonstrator)
    requests = [EpisodeRequest("pick-can", seed=s, object_xy=(0.5, 0.0)) for s in range(4)]
    trajectories = rollout(requests, policy, env_factory=make_reach_env, num_workers=2, progress=False)
    assert all(t.success for t in trajectories)


def test_rollout_rejects_mixed_tasks_and_bad_workers():
    with pytest.raises(ValueError, match="one task"):
        rollout([EpisodeRequest("pick-can", 0), EpisodeRequest("open-drawer", 1)], move_right,
                env_factory=make_reach_env)
    with pytest.raises(ValueError, match="num_workers"):
        make_vector_env(make_reach_env, 0)


@pytest.mark.slow
def test_ray_actor_workers_give_the_same_episodes_as_subprocess_workers():
    ray = pytest.importorskip("ray")
    import os

    requests = [EpisodeRequest("pick-can", seed=s, object_xy=(0.5 if s % 2 == 0 else 0.1 * s, 0.0))
                for s in range(5)]
    expected = rollout(requests, move_right, env_factory=make_reach_env, num_workers=2, progress=False)
    tests_dir = os.path.dirname(os.path.abspath(__file__))  # fake_envs must import inside the actors
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
    try:
        vector_env = make_vector_env(make_reach_env, 2, engine="ray")
        try:
            assert vector_env.num_envs == 2 and vector_env.get_attr("task_spec")[0].horizon == 5
            got = rollout(requests, move_right, vector_env=vector_env, progress=False)
        finally:
            vector_env.close()
    finally:
        ray.shutdown()
    assert [t.success for t in got] == [True, False, True, False, True]
    for a, b in zip(got, expected):
        assert (a.seed, a.object_xy, a.success, a.instruction) == (b.seed, b.object_xy, b.success, b.instruction)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.step_success, b.step_success)
        np.testing.assert_array_equal(a.extras["step_seen"], b.extras["step_seen"])

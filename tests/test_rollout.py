"""The rollout engines on a fake env: the env pool (several envs per worker, policy and simulation overlapped,
all tasks in one pool) and the lockstep engine over a Gymnasium vector env give the same trajectories."""

import functools

import numpy as np
import pytest

from fake_envs import make_reach_env
from razor_robot.rollout.pool import EnvPool
from razor_robot.rollout.demonstrator import DemonstratorPolicy
from razor_robot.rollout.episodes import EpisodeRequest
from razor_robot.rollout.lockstep import lockstep_rollout, make_vector_env
from razor_robot.rollout.pool import rollout

pytestmark = pytest.mark.core


def move_right(images, states, instructions, slots):
    actions = np.tile(np.array([1.0, 0.0], np.float32), (len(images), 1))
    return actions, {"step_seen": images[:, 0, 0, 0].astype(np.int64)}


class NoisyPolicy:
    """Stochastic, with one random stream per episode (as VLAActor): its episodes must not depend on batching."""

    def __init__(self, seed: int = 7):
        self.seed, self.streams = seed, {}

    def start_episode(self, slot, request):
        self.streams[slot] = np.random.default_rng([self.seed, request.seed])

    def __call__(self, images, states, instructions, slots):
        noise = np.stack([self.streams[s].normal(size=2) for s in slots])  # (N, 2)
        toward_can = states[:, 2:4] - states[:, 0:2]  # (N, 2)
        return (toward_can * 5 + noise).astype(np.float32), {"noise": noise}


def requests_for(n, task="pick-can"):
    return [EpisodeRequest(task, seed=s, object_xy=(0.5 if s % 2 == 0 else -0.5, 0.0)) for s in range(n)]


def assert_same_trajectories(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert (a.task, a.seed, a.object_xy, a.success, a.instruction) == (b.task, b.seed, b.object_xy, b.success,
                                                                          b.instruction)
        for name in ("images", "states", "actions", "step_success"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert sorted(a.extras) == sorted(b.extras)
        for key in a.extras:
            np.testing.assert_array_equal(a.extras[key], b.extras[key], err_msg=key)


def lockstep_reference(requests):
    """The lockstep engine's trajectories (2 AsyncVectorEnv workers) for NoisyPolicy on pick-can requests."""
    vector_env = make_vector_env(functools.partial(make_reach_env, "pick-can"), 2)
    try:
        return lockstep_rollout(vector_env, requests, NoisyPolicy())
    finally:
        vector_env.close()


@pytest.mark.parametrize("workers, per_worker", [(1, 1), (2, 2), (2, 3)])
def test_pool_records_each_episode_in_request_order(workers, per_worker):
    # Can 0.5 to the right: after 5 steps of +0.1 the point is at 0.5 -> success at the final step only.
    with EnvPool(num_workers=workers, envs_per_worker=per_worker, env_factory=make_reach_env) as pool:
        trajectories = pool.rollout(requests_for(7), move_right, progress=False)
    assert [t.seed for t in trajectories] == list(range(7))
    assert [t.success for t in trajectories] == [s % 2 == 0 for s in range(7)]
    first = trajectories[0]
    assert first.images.shape == (5, 4, 4, 3) and first.actions.shape == (5, 2) and first.states.shape == (5, 4)
    assert first.extras["step_seen"].tolist() == [0, 1, 2, 3, 4]  # observation t is the input to action t
    assert first.step_success.tolist() == [False, False, False, False, True]
    assert first.instruction == "pick coke can" and first.object_xy == (0.5, 0.0)
    assert [int(t.images[0, 0, 0, 1]) for t in trajectories] == list(range(7))  # each env saw its own seed


def test_success_mode_any_counts_a_passing_success():
    # Point passes the can at step 3 (0.3) and overshoots to 0.5: final-step success fails, any-step succeeds.
    request = [EpisodeRequest("pick-can", seed=0, object_xy=(0.3, 0.0))]
    final = rollout(request, move_right, env_factory=make_reach_env, num_workers=1, progress=False)
    any_step = rollout(request, move_right, env_factory=functools.partial(make_reach_env, success_mode="any"),
                       num_workers=1, progress=False)
    assert final[0].success is False and any_step[0].success is True


def test_one_pool_serves_every_task_in_one_rollout_and_restarts_after_release():
    requests = requests_for(3) + [EpisodeRequest("open-drawer", seed=10, object_xy=(0.5, 0.0)),
                                  EpisodeRequest("close-drawer", seed=11, object_xy=(-0.5, 0.0))]
    pool = EnvPool(num_workers=2, envs_per_worker=2, env_factory=make_reach_env)
    try:
        assert not pool.running  # workers start with the first rollout
        first = pool.rollout(requests, move_right, progress=False)
        assert pool.running
        assert [t.task for t in first] == ["pick-can"] * 3 + ["open-drawer", "close-drawer"]
        assert [t.instruction for t in first][-2:] == ["open drawer", "close drawer"]
        pool.release()
        assert not pool.running
        second = pool.rollout(requests, move_right, progress=False)  # a fresh start, the same episodes
        assert_same_trajectories(second, first)
    finally:
        pool.release()


@pytest.mark.parametrize("workers, per_worker", [(1, 3), (2, 4)])
def test_pool_equals_the_lockstep_engine_array_for_array(workers, per_worker):
    requests = [EpisodeRequest("pick-can", seed=100 + s, object_xy=(0.05 * s - 0.3, 0.1)) for s in range(9)]
    expected = lockstep_reference(requests)
    with EnvPool(num_workers=workers, envs_per_worker=per_worker, env_factory=make_reach_env) as pool:
        got = pool.rollout(requests, NoisyPolicy(), progress=False)
    assert_same_trajectories(got, expected)
    assert len({t.success for t in got}) == 2  # both outcomes occur: the comparison is not vacuous


def test_the_last_wave_is_split_so_policy_and_simulation_still_overlap():
    # 2 workers x 4 slots, 12 episodes of 5 steps: the second wave (4 episodes) lands on one half of the slots.
    # Once the other half has run dry, the engine splits the busy half in two, so the policy acts on 2 envs at
    # a time while the workers step the other 2; the episodes are the lockstep engine's.
    requests = [EpisodeRequest("pick-can", seed=200 + s, object_xy=(0.05 * s - 0.3, 0.1)) for s in range(12)]
    expected = lockstep_reference(requests)
    policy, batches = NoisyPolicy(), []

    def recording(images, states, instructions, slots):
        batches.append(sorted(slots))
        return policy(images, states, instructions, slots)

    recording.start_episode = policy.start_episode
    with EnvPool(num_workers=2, envs_per_worker=4, env_factory=make_reach_env) as pool:
        got = pool.rollout(requests, recording, progress=False)
    assert_same_trajectories(got, expected)
    # Wave 1 alternates between the halves (each spans both workers); wave 2 starts on half 0 while half 1's
    # last step is still in flight, then half 0 is split into one slot per worker per part.
    assert batches == [[0, 1, 4, 5], [2, 3, 6, 7]] * 5 + [[0, 1, 4, 5]] * 2 + [[0, 1], [4, 5]] * 3


def test_rollout_totals_count_every_episode_and_env_step_of_the_process():
    from razor_robot.rollout.pool import ROLLOUT_TOTALS

    before = (ROLLOUT_TOTALS.episodes, ROLLOUT_TOTALS.env_steps, ROLLOUT_TOTALS.seconds)
    with EnvPool(num_workers=1, envs_per_worker=2, env_factory=make_reach_env) as pool:
        pool.rollout(requests_for(3), move_right, progress=False)  # 3 episodes of the fake env's 5 steps
    assert (ROLLOUT_TOTALS.episodes - before[0], ROLLOUT_TOTALS.env_steps - before[1]) == (3, 15)
    assert ROLLOUT_TOTALS.seconds > before[2]
    assert ROLLOUT_TOTALS.line().startswith(f"rollouts: {ROLLOUT_TOTALS.episodes} episodes, "
                                            f"{ROLLOUT_TOTALS.env_steps} env steps in ")


class CountingDemonstrator:
    def __init__(self):
        self.calls = 0

    def act(self, obs):
        self.calls += 1
        return np.array([1.0, 0.0]) if self.calls <= 5 else np.array([-1.0, 0.0])


def test_demonstrator_policy_gets_a_fresh_demonstrator_every_episode():
    # Stale state would make the 6th+ call move left and fail: every episode needs a new demonstrator.
    with EnvPool(num_workers=2, envs_per_worker=1, env_factory=make_reach_env) as pool:
        trajectories = pool.rollout([EpisodeRequest("pick-can", s, (0.5, 0.0)) for s in range(4)],
                                    DemonstratorPolicy(CountingDemonstrator), progress=False)
    assert all(t.success for t in trajectories)


class StopAfterTwo:
    """Asks to end every episode after its second action (as RT-1's terminate_episode)."""

    done = False

    def __init__(self):
        self.calls = 0

    def act(self, obs):
        self.calls += 1
        self.done = self.calls >= 2
        return np.array([1.0, 0.0])


def test_a_terminating_policy_ends_its_episode_early_in_both_engines():
    requests = [EpisodeRequest("pick-can", s, (0.2, 0.0)) for s in range(3)]  # reached exactly at step 2
    with EnvPool(num_workers=1, envs_per_worker=2, env_factory=make_reach_env) as pool:
        got = pool.rollout(requests, DemonstratorPolicy(StopAfterTwo), progress=False)
    vector_env = make_vector_env(functools.partial(make_reach_env, "pick-can"), 2)
    try:
        expected = lockstep_rollout(vector_env, requests, DemonstratorPolicy(StopAfterTwo))
    finally:
        vector_env.close()
    assert [t.length for t in got] == [2, 2, 2]
    assert [t.success for t in got] == [True, True, True]  # final-step success at the last step taken
    assert_same_trajectories(got, expected)


def test_bad_pool_arguments_fail_in_one_line():
    with pytest.raises(ValueError, match="num_workers"):
        EnvPool(num_workers=0, env_factory=make_reach_env)
    with pytest.raises(ValueError, match="envs_per_worker"):
        EnvPool(envs_per_worker=0, env_factory=make_reach_env)
    with pytest.raises(ValueError, match="rollout engine"):
        EnvPool(engine="threads", env_factory=make_reach_env)
    with pytest.raises(ValueError, match="num_workers"):
        make_vector_env(make_reach_env, 0)


def test_a_failing_env_raises_with_the_workers_traceback():
    with EnvPool(num_workers=1, envs_per_worker=1, env_factory=make_reach_env) as pool:
        with pytest.raises(RuntimeError, match="object_xy|could not|ValueError|TypeError"):
            pool.rollout([EpisodeRequest("pick-can", 0, object_xy=("left", 0.0))], move_right, progress=False)


@pytest.mark.slow
def test_ray_actor_workers_give_the_same_episodes_as_subprocess_workers():
    ray = pytest.importorskip("ray")
    import os

    requests = requests_for(5)
    with EnvPool(num_workers=2, envs_per_worker=2, env_factory=make_reach_env) as pool:
        expected = pool.rollout(requests, NoisyPolicy(), progress=False)
    tests_dir = os.path.dirname(os.path.abspath(__file__))  # fake_envs must import inside the actors
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
    try:
        with EnvPool(num_workers=2, engine="ray", ray_num_cpus=0, env_factory=make_reach_env) as pool:
            got = pool.rollout(requests, NoisyPolicy(), progress=False)
    finally:
        ray.shutdown()
    assert_same_trajectories(got, expected)

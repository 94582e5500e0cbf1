"""Scripted experts: interface, validation, and success on a sample of eval positions / seeds."""

from __future__ import annotations

import numpy as np
import pytest

from razor_robot.policies.demonstrators import CAN_REST_Z, MetaWorldExpert, make_demonstrator


def test_bad_task_backend_and_options():
    for call, fragment in [
        (lambda: make_demonstrator("pick-cup"), "unknown task 'pick-cup'"),
        (lambda: make_demonstrator("pick-can", backend="isaac"), "unknown backend 'isaac'"),
        (lambda: make_demonstrator("pick-can", speed=2), "takes no options"),
    ]:
        with pytest.raises(ValueError) as excinfo:
            call()
        assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


pytest.importorskip("metaworld")

from razor_robot.envs import eval_positions, make_env  # noqa: E402
from razor_robot.envs import metaworld_backend  # noqa: E402


def test_shared_constants_match_the_backend():
    assert CAN_REST_Z == metaworld_backend.CAN_REST_Z


def test_act_returns_a_clipped_float32_action():
    expert = make_demonstrator("open-drawer")
    assert isinstance(expert, MetaWorldExpert)
    state = np.zeros(39, np.float32)
    state[:3] = (0.0, 0.6, 0.2)
    state[4:7] = (0.0, 0.9, 0.1)  # far handle: the raw controller output saturates
    action = expert.act({"state": state})
    assert action.dtype == np.float32 and action.shape == (4,)
    assert np.all(np.abs(action) <= 1.0) and action[3] == -1.0  # the drawer expert keeps the gripper open
    with pytest.raises(ValueError, match="39-d"):
        expert.act({"state": np.zeros(18)})


def _episode_success(task: str, env, expert, seed: int, object_xy) -> bool:
    options = None if object_xy is None else {"object_xy": object_xy}
    obs, _ = env.reset(seed=seed, options=options)
    truncated = False
    while not truncated:
        obs, _, _, truncated, info = env.step(expert.act(obs))
    return bool(info["episode_success"])


@pytest.mark.parametrize("task", ["pick-can", "open-drawer", "close-drawer"])
def test_expert_succeeds_on_most_of_ten_episodes(task):
    env, expert = make_env(task, image_size=16), make_demonstrator(task)
    positions = eval_positions(10, seed=0) if task == "pick-can" else [None] * 10
    wins = sum(_episode_success(task, env, expert, seed, xy) for seed, xy in enumerate(positions))
    env.close()
    assert wins >= 8, f"{task}: expert succeeded on {wins}/10"

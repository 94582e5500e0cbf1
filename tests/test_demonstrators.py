"""Scripted experts: interface, validation, and success on a sample of eval positions / seeds."""

from __future__ import annotations

import numpy as np
import pytest

from razor_robot.policies.demonstrators import CAN_REST_Z, MetaWorldExpert, make_demonstrator
from razor_robot.policies.google_robot_demonstrator import (
    GoogleRobotPickCan,
    PickCanConfig,
    grasp_turn,
    quaternion_matrix,
)


@pytest.mark.core
def test_bad_task_backend_and_options():
    for call, fragment in [
        (lambda: make_demonstrator("pick-cup"), "unknown task 'pick-cup'"),
        (lambda: make_demonstrator("pick-can", backend="isaac"), "unknown backend 'isaac'"),
        (lambda: make_demonstrator("pick-can", speed=2), "takes no options"),
    ]:
        with pytest.raises(ValueError) as excinfo:
            call()
        assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


# ------------------------------------------------------------------ selection


@pytest.mark.core
def test_make_demonstrator_selects_by_backend_and_kind(tmp_path):
    expert = make_demonstrator("pick-can", "simpler", kind="scripted", max_step=0.05)
    assert isinstance(expert, GoogleRobotPickCan) and expert.config.max_step == 0.05 and expert.done is False
    with pytest.raises(FileNotFoundError, match="does not exist"):  # simpler's default kind is RT-1
        make_demonstrator("pick-can", "simpler", checkpoint_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_demonstrator("open-drawer", "simpler", kind="rt1", checkpoint_dir=tmp_path / "missing")
    for call, fragment in [
        (lambda: make_demonstrator("open-drawer", "simpler", kind="scripted"), "pick-can only"),
        (lambda: make_demonstrator("pick-can", "simpler", kind="teleop"), "unknown simpler demonstrator"),
        (lambda: make_demonstrator("pick-can", "metaworld", kind="rt1"), "unknown metaworld demonstrator"),
        (lambda: make_demonstrator("pick-can", "simpler", kind="scripted", speed=2), "speed"),
    ]:
        with pytest.raises(ValueError) as excinfo:
            call()
        assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


# ------------------------------------------------------------------ the scripted Google-robot pick, no sim

TCP_QUAT = (0.0324987, -0.780173, -0.603852, 0.160115)
"""SimplerEnv's Google-robot TCP orientation at reset (the fingers close along about world x)."""
STANDING, ALONG_Y, ALONG_X = (0.7071, 0.7071, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), (0.7071, 0.0, 0.0, 0.7071)
"""Can orientations: upright (axis on z), lying along world -y (lr_switch), lying along world -x."""


def _state(tcp, can, can_quat=STANDING, tcp_quat=TCP_QUAT):
    return {"state": np.array([*tcp, *tcp_quat, *can, *can_quat], np.float32)}


@pytest.mark.core
def test_grasp_turn_crosses_the_cans_axis():
    assert grasp_turn(np.array(TCP_QUAT), np.array(STANDING)) == 0.0
    closing = quaternion_matrix(np.array(TCP_QUAT))[:, 1]
    heading = np.arctan2(closing[1], closing[0])  # about -0.28 rad: the fingers close along ~world x
    assert grasp_turn(np.array(TCP_QUAT), np.array(ALONG_Y)) == pytest.approx(-heading, abs=1e-6)
    turn = grasp_turn(np.array(TCP_QUAT), np.array(ALONG_X))
    assert turn == pytest.approx(np.pi / 2 - heading - np.pi, abs=1e-6) and abs(turn) <= np.pi / 2
    np.testing.assert_allclose(quaternion_matrix(np.array(ALONG_X))[:, 1], [-1, 0, 0], atol=1e-4)


@pytest.mark.core
def test_scripted_pick_phases_and_actions_in_the_base_frame():
    expert = GoogleRobotPickCan(max_turn=0.25)
    # Far from the hover point (0.1, 0, 1.0): a capped 0.08 m step, +x in the world is -x in the yawed base.
    action = expert.act(_state((0.0, 0.0, 1.0), (0.1, 0.0, 0.9)))
    np.testing.assert_allclose(action, [-0.08, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], atol=1e-7)
    assert expert.phase == "hover"
    # At the hover point over a standing can: descend to grasp_height (-0.005) below the centre.
    action = expert.act(_state((0.1, 0.0, 1.0), (0.1, 0.0, 0.9)))
    assert expert.phase == "descend"
    np.testing.assert_allclose(action, [0.0, 0.0, -0.08, 0.0, 0.0, 0.0, 0.0], atol=1e-7)
    gripper = []
    for _ in range(18):  # at the grasp point: close in place for close_steps, then lift; +1 for 15 steps
        action = expert.act(_state((0.1, 0.0, 0.895), (0.1, 0.0, 0.9)))
        gripper.append(action[6])
    assert gripper == [1.0] * 15 + [0.0] * 3 and expert.phase == "lift"
    np.testing.assert_allclose(action[:3], [0.0, 0.0, 0.08], atol=1e-6)  # up towards grasp + 0.15
    expert.reset()
    assert expert.phase == "hover"


@pytest.mark.core
def test_scripted_pick_turns_before_descending_on_a_lying_can():
    expert = GoogleRobotPickCan()
    action = expert.act(_state((0.1, 0.0, 1.0), (0.1, 0.0, 0.9), ALONG_X))  # at the hover point, misaligned
    assert expert.phase == "hover" and action[:3].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert action[5] == pytest.approx(-0.25)  # a capped turn about the vertical (base z = world z)


@pytest.mark.core
def test_scripted_pick_actions_stay_in_the_fractal_box_and_replay_through_labels():
    from razor_robot.policies.action_tokenizer import FRACTAL_NORM_STATS
    from razor_robot.policies.adapters import env_actions_to_openvla_labels

    expert, tcp, can = GoogleRobotPickCan(), np.array([0.2, 0.4, 1.04]), np.array([-0.2, 0.1, 0.915])
    quat, actions = np.array(TCP_QUAT), []
    for _ in range(60):  # a kinematic stand-in for the arm: it moves a third of each commanded step
        action = expert.act(_state(tcp, can, ALONG_Y, quat))
        actions.append(action)
        tcp = tcp + np.array([-1.0, -1.0, 1.0]) * action[:3] / 3  # base frame -> world (yaw of pi)
        half = action[5] / 2  # and turns fully about the vertical: q <- (cos, 0, 0, sin) * q
        w, x, y, z = quat
        quat = np.array([np.cos(half) * w - np.sin(half) * z, np.cos(half) * x - np.sin(half) * y,
                         np.cos(half) * y + np.sin(half) * x, np.cos(half) * z + np.sin(half) * w])
        if expert.phase == "lift":
            can = tcp.copy()
    actions = np.array(actions)
    labels = env_actions_to_openvla_labels(actions)
    q01, q99 = (np.array(FRACTAL_NORM_STATS["action"][k]) for k in ("q01", "q99"))
    assert np.all((labels[:, :6] >= q01[:6]) & (labels[:, :6] <= q99[:6]))
    closes = np.flatnonzero(actions[:, 6] > 0)
    assert len(closes) == 15 and labels[: closes[0], 6].tolist() == [1.0] * closes[0]
    assert labels[closes[0]:, 6].tolist() == [0.0] * (60 - closes[0])  # closed from the grasp on
    assert np.any(actions[:, 5] != 0) and expert.phase == "lift"


@pytest.mark.core
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_step": 0.0}, "max_step"),
        ({"grasp_height": float("nan")}, "grasp_height"),
        ({"close_steps": 0}, "close_steps"),
        ({"close_steps": 20}, "gripper_repeat"),
        ({"base_quat": (1.0, 1.0, 0.0, 0.0)}, "base_quat"),
    ],
)
def test_scripted_pick_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message) as excinfo:
        PickCanConfig(**kwargs)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ValueError, match="'state'"):
        GoogleRobotPickCan().act({"state": np.zeros(39)})


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

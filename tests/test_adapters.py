"""Action adapters (policy output -> env action) and RT-1 demonstrator conversions, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from razor_robot.policies import rt1_demonstrator as rt1
from razor_robot.policies.adapters import (
    MetaWorldActionAdapter,
    OpenVLAGoogleRobotAdapter,
    StickyGripper,
    euler_to_axis_angle,
    euler_to_quaternion,
)

HALF_PI = np.pi / 2

# ------------------------------------------------------------------ Euler -> axis-angle


@pytest.mark.core
@pytest.mark.parametrize(
    "rpy, expected",
    [
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        ((0.0, 0.0, HALF_PI), (0.0, 0.0, HALF_PI)),
        ((HALF_PI, 0.0, 0.0), (HALF_PI, 0.0, 0.0)),
        ((0.0, -HALF_PI, 0.0), (0.0, -HALF_PI, 0.0)),
        ((0.0, 0.0, -0.1), (0.0, 0.0, -0.1)),
        # Rz(90) @ Rx(90): quaternion (1/2, 1/2, 1/2, 1/2) = 120 degrees about (1, 1, 1) / sqrt(3).
        ((HALF_PI, 0.0, HALF_PI), (2 * np.pi / 3 / np.sqrt(3),) * 3),
    ],
)
def test_euler_to_axis_angle_hand_cases(rpy, expected):
    # angle = 2 acos(w) (as transforms3d) loses ~eps / sin(angle / 2) near zero: 1e-14 covers 0.1 rad.
    np.testing.assert_allclose(euler_to_axis_angle(np.array(rpy)), expected, rtol=0, atol=1e-14)


@pytest.mark.core
def test_identity_rotation_is_exact_zero_and_quaternion_is_unit():
    assert euler_to_axis_angle(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(euler_to_quaternion(np.zeros(3)), [1.0, 0.0, 0.0, 0.0])
    q = euler_to_quaternion(np.array([HALF_PI, 0.0, HALF_PI]))
    np.testing.assert_allclose(q, [0.5, 0.5, 0.5, 0.5], atol=1e-15)


def test_euler_to_axis_angle_matches_scipy_rotations():
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rpy = np.random.default_rng(0).uniform(-np.pi / 2, np.pi / 2, (200, 3))  # (200, 3)
    expected = rotation.from_euler("xyz", rpy).as_rotvec()  # lowercase = static axes, R = Rz Ry Rx
    np.testing.assert_allclose(euler_to_axis_angle(rpy), expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ Meta-World


@pytest.mark.core
def test_metaworld_adapter_clips_to_unit_box():
    adapter = MetaWorldActionAdapter()
    out = adapter(np.array([2.0, -3.0, 0.5, -0.25]))
    assert out.dtype == np.float32
    assert out.tolist() == [1.0, -1.0, 0.5, -0.25]
    batch = adapter(np.array([[0.1, 1.5, -1.0, 1.0], [-7.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(batch, np.array([[0.1, 1.0, -1.0, 1.0], [-1.0, 0.0, 0.0, 0.0]], np.float32))


@pytest.mark.core
@pytest.mark.parametrize(
    "bad", [np.zeros(7), np.zeros((2, 3)), np.zeros((1, 1, 4)), np.array([0.0, np.nan, 0.0, 0.0])]
)
def test_metaworld_adapter_rejects_bad_actions(bad):
    with pytest.raises(ValueError, match="MetaWorldActionAdapter"):
        MetaWorldActionAdapter()(bad)


# ------------------------------------------------------------------ sticky gripper


@pytest.mark.core
def test_sticky_gripper_close_is_held_for_num_repeat_steps():
    gripper = StickyGripper(num_repeat=3)
    # open_gripper outputs: open, close, then the policy immediately asks to open again (ignored while held).
    outputs = [gripper(np.array([v]))[0] for v in (1.0, 0.0, 1.0, 1.0, 1.0, 1.0)]
    # step 0: no previous -> 0; step 1: 1 - 0 = +1 latched for 3 steps; the reopen at step 2 is swallowed
    # (prev becomes 1), so once released the relative command is 1 - 1 = 0.
    assert outputs == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.core
def test_sticky_gripper_default_google_robot_repeat_is_15():
    gripper = StickyGripper()
    outputs = [gripper(np.array([v]))[0] for v in [1.0] + [0.0] * 17]
    assert outputs == [0.0] + [1.0] * 15 + [0.0, 0.0]


@pytest.mark.core
def test_sticky_gripper_small_changes_pass_through_unlatched():
    gripper = StickyGripper(num_repeat=3)
    outputs = [gripper(np.array([v]))[0] for v in (1.0, 0.75, 0.75, 1.0)]
    assert outputs == [0.0, 0.25, 0.0, -0.25]


@pytest.mark.core
def test_sticky_gripper_open_after_close_and_batch_independence():
    gripper = StickyGripper(num_repeat=2)
    # env 0 closes at step 1 and opens at step 3; env 1 stays open throughout.
    rows = [
        gripper(np.array(v)).tolist()
        for v in ([1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    ]
    assert rows == [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]


@pytest.mark.core
def test_sticky_gripper_reset_forgets_previous_output_and_latch():
    gripper = StickyGripper(num_repeat=5)
    gripper(np.array([1.0]))
    assert gripper(np.array([0.0]))[0] == 1.0
    gripper.reset()
    assert gripper(np.array([0.0]))[0] == 0.0  # first step of an episode
    assert gripper(np.array([0.0]))[0] == 0.0  # latch was cleared


@pytest.mark.core
def test_sticky_gripper_rejects_batch_size_change_and_bad_repeat():
    gripper = StickyGripper()
    gripper(np.zeros(2))
    with pytest.raises(ValueError, match="batch size changed"):
        gripper(np.zeros(3))
    with pytest.raises(ValueError, match="sticky_gripper_num_repeat"):
        StickyGripper(num_repeat=0)


# ------------------------------------------------------------------ OpenVLA -> Google Robot


@pytest.mark.core
def test_openvla_google_robot_adapter_exact_values():
    adapter = OpenVLAGoogleRobotAdapter(action_scale=2.0, sticky_gripper_num_repeat=2)
    first = adapter(np.array([0.01, -0.02, 0.03, 0.0, 0.0, HALF_PI / 2, 1.0]))
    np.testing.assert_allclose(first, [0.02, -0.04, 0.06, 0.0, 0.0, HALF_PI, 0.0], rtol=0, atol=1e-15)
    assert first.dtype == np.float64 and first.shape == (7,)
    second = adapter(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))  # close: 1 - 0 = +1, not scaled
    assert second.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    third = adapter(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert third[6] == 1.0
    assert adapter(np.zeros(7))[6] == 0.0  # released after 2 steps
    adapter.reset()
    assert adapter(np.array([0, 0, 0, 0, 0, 0, 0.0]))[6] == 0.0


@pytest.mark.core
def test_openvla_google_robot_adapter_batches_and_checks_input():
    adapter = OpenVLAGoogleRobotAdapter()
    out = adapter(np.array([[0, 0, 0, HALF_PI, 0, 0, 1.0], [0.5, 0, 0, 0, 0, 0, 0.0]]))
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out[:, 3:6], [[HALF_PI, 0, 0], [0, 0, 0]], atol=1e-15)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        adapter(np.zeros(4))
    with pytest.raises(ValueError, match="action_scale"):
        OpenVLAGoogleRobotAdapter(action_scale=0.0)


# ------------------------------------------------------------------ RT-1 conversion


def _raw(world=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.0), gripper=0.0, terminate=(0, 1, 0)):
    return {
        "world_vector": np.array(world, np.float32),
        "rotation_delta": np.array(rotation, np.float32),
        "gripper_closedness_action": np.array([gripper], np.float32),
        "terminate_episode": np.array(terminate, np.int32),
    }


@pytest.mark.core
def test_rt1_env_action_passes_axis_angle_and_scales_deltas():
    action = rt1.rt1_env_action(_raw(world=(0.5, -0.25, 0.125), rotation=(0.0, 0.0, 0.5), gripper=-0.75))
    assert action.tolist() == [0.5, -0.25, 0.125, 0.0, 0.0, 0.5, -0.75]
    scaled = rt1.rt1_env_action(_raw(world=(0.5, 0, 0), rotation=(0.25, 0, 0), gripper=0.5), action_scale=2.0)
    assert scaled.tolist() == [1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.5]  # the gripper is not scaled


@pytest.mark.core
def test_rt1_small_gripper_commands_are_filtered():
    assert rt1.filter_small_gripper(np.array([0.0099, -0.0099, 0.01, -0.5])).tolist() == [
        0.0,
        0.0,
        0.01,
        -0.5,
    ]
    assert rt1.rt1_env_action(_raw(gripper=0.005))[6] == 0.0


@pytest.mark.core
def test_rt1_tiny_rotation_is_written_about_y_like_simpler_env():
    np.testing.assert_array_equal(
        rt1.rotation_delta_to_axis_angle(np.array([1e-7, 0.0, 0.0])), [0.0, 1e-7, 0.0]
    )
    np.testing.assert_array_equal(rt1.rotation_delta_to_axis_angle(np.zeros(3)), [0.0, 0.0, 0.0])


@pytest.mark.core
def test_rt1_terminate_reads_first_one_hot_entry():
    assert rt1.rt1_terminate(_raw(terminate=(1, 0, 0))) is True
    assert rt1.rt1_terminate(_raw(terminate=(0, 1, 0))) is False


# ------------------------------------------------------------------ RT-1 demonstrator errors and state


@pytest.mark.core
def test_rt1_demonstrator_checks_arguments_before_files(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        rt1.RT1Demonstrator("stack-blocks", tmp_path / "missing")
    with pytest.raises(ValueError, match="policy_setup"):
        rt1.RT1Demonstrator("pick-can", tmp_path / "missing", policy_setup="widowx_bridge")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rt1.RT1Demonstrator("pick-can", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        rt1.RT1Demonstrator("pick-can", tmp_path)


@pytest.mark.core
def test_rt1_demonstrator_missing_tensorflow_names_the_install(tmp_path):
    try:
        rt1.import_rt1_stack()
    except ImportError:
        pass
    else:
        pytest.skip("the RT-1 stack is installed here")
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(rt1.MissingDependencyError, match="pip install .*tf-agents"):
        rt1.RT1Demonstrator("pick-can", tmp_path)


class FakeRuntime:
    """Stands in for the TF policy: the action's x is the step count since reset, z the embedding's value."""

    def __init__(self):
        self.embedded: list[str] = []

    def embed(self, instruction):
        self.embedded.append(instruction)
        return float(len(instruction))

    def initial_state(self):
        return {}, 0

    def step(self, observation, image, embedding, state):
        raw = _raw(
            world=(state + 1, image.shape[0], embedding), gripper=0.5, terminate=(int(state == 1), 0, 0)
        )
        return raw, state + 1


@pytest.fixture
def fake_rt1(monkeypatch, tmp_path):
    runtime = FakeRuntime()
    monkeypatch.setattr(rt1, "import_rt1_stack", lambda: {})
    monkeypatch.setattr(rt1, "load_runtime", lambda checkpoint, lang: runtime)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    return runtime, tmp_path


@pytest.mark.core
def test_rt1_demonstrator_episode_state_and_instructions(fake_rt1):
    runtime, checkpoint = fake_rt1
    demo = rt1.RT1Demonstrator("pick-can", checkpoint)
    obs = {"image": np.zeros((8, 8, 3), np.uint8), "state": np.zeros(14, np.float32)}
    assert runtime.embedded == ["pick coke can"]
    assert demo.act(obs).tolist() == [1.0, 8.0, 13.0, 0.0, 0.0, 0.0, 0.5]
    assert demo.act(obs)[0] == 2.0 and demo.terminate_predicted  # step 2 asked to terminate
    demo.reset()
    assert demo.act(obs)[0] == 1.0 and not demo.terminate_predicted
    assert demo.act(obs, "pick coke can")[0] == 2.0  # same instruction: no reset
    assert demo.act(obs, "pick up the can")[0] == 1.0  # new instruction: fresh episode
    assert runtime.embedded[-1] == "pick up the can"


@pytest.mark.core
def test_rt1_demonstrator_drawer_needs_an_instruction(fake_rt1):
    _, checkpoint = fake_rt1
    demo = rt1.RT1Demonstrator("open-drawer", checkpoint)
    obs = {"image": np.zeros((8, 8, 3), np.uint8)}
    with pytest.raises(ValueError, match="instruction"):
        demo.act(obs)
    assert demo.act(obs, "open top drawer")[2] == 15.0
    with pytest.raises(ValueError, match="uint8"):
        demo.act({"image": np.zeros((8, 8, 3), np.float32)})

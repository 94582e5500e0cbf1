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
    monkeypatch.setattr(rt1, "import_rt1_stack", lambda *options: {})
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


# ------------------------------------------------------------------ env actions -> labels -> env actions

from hypothesis import find, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from razor_robot.policies.action_tokenizer import (  # noqa: E402
    FRACTAL_NORM_STATS,
    ActionTokenizer,
    normalize_actions,
    unnormalize_actions,
)
from razor_robot.policies.adapters import (  # noqa: E402
    axis_angle_to_euler,
    env_actions_to_openvla_labels,
    rel2abs_gripper_actions,
)

Q01 = np.array(FRACTAL_NORM_STATS["action"]["q01"])
Q99 = np.array(FRACTAL_NORM_STATS["action"]["q99"])
BIN = (Q99 - Q01) / 255  # (7,) width of one action bin in raw units
REPEAT = 15  # SimplerEnv's sticky_gripper_num_repeat for the Google robot


def openvla_rel2abs_reference(relative):
    """openvla's rel2abs_gripper_actions transliterated step by step (tf.where / tf.argmax / tf.scan)."""
    thresholded = [1 if a < -0.1 else (-1 if a > 0.1 else 0) for a in relative]
    first = next((i for i, t in enumerate(thresholded) if t != 0), 0)  # tf.argmax of an all-False mask is 0
    start = -1 * thresholded[first] if thresholded else 0
    carry = 1 if start == 0 else start
    out = []
    for t in thresholded:  # scan_fn: keep the carry on 0, else take the new command
        carry = carry if t == 0 else t
        out.append(carry / 2 + 0.5)
    return out


@pytest.mark.core
def test_rel2abs_hand_cases():
    assert rel2abs_gripper_actions(np.array([0.0, 1.0, 0.05, 1.0, -0.5, 0.0])).tolist() == [1, 0, 0, 0, 1, 1]
    assert rel2abs_gripper_actions(np.array([0.0, -1.0, 0.0, 1.0])).tolist() == [0, 1, 1, 0]  # open first
    assert rel2abs_gripper_actions(np.array([0.0, 0.1, -0.1])).tolist() == [1, 1, 1]  # +-0.1 is no command
    assert rel2abs_gripper_actions(np.zeros(0)).tolist() == []
    with pytest.raises(ValueError, match=r"\(T,\)"):
        rel2abs_gripper_actions(np.zeros((2, 1)))


@pytest.mark.core
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([-1.0, -0.5, -0.1, -0.05, 0.0, 0.05, 0.1, 0.3, 1.0]), max_size=40))
def test_rel2abs_equals_openvlas_tf_rule(relative):
    assert rel2abs_gripper_actions(np.array(relative)).tolist() == openvla_rel2abs_reference(relative)


@pytest.mark.core
def test_axis_angle_to_euler_inverts_euler_to_axis_angle():
    rpy = np.random.default_rng(0).uniform(-1.5, 1.5, (500, 3))  # (500, 3), |pitch| < pi / 2
    np.testing.assert_allclose(axis_angle_to_euler(euler_to_axis_angle(rpy)), rpy, rtol=0, atol=1e-12)
    assert axis_angle_to_euler(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(axis_angle_to_euler(np.array([0.0, 0.0, 0.3])), [0, 0, 0.3], atol=1e-15)


@pytest.mark.core
def test_env_actions_to_openvla_labels_exact_values():
    actions = np.array(
        [
            [0.01, -0.02, 0.03, 0.0, 0.0, 0.2, 0.0],
            [0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 1.0],  # RT-1 closes
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0],  # RT-1 opens
        ]
    )
    labels = env_actions_to_openvla_labels(actions)
    np.testing.assert_allclose(labels[:, :6], actions[:, :6], rtol=0, atol=1e-15)  # single-axis turns
    assert labels[:, 6].tolist() == [1.0, 0.0, 0.0, 1.0]  # absolute: 1 open, 0 closed
    halved = env_actions_to_openvla_labels(actions, action_scale=2.0)
    np.testing.assert_allclose(halved[:, :6], actions[:, :6] / 2, rtol=0, atol=1e-15)
    for bad, message in [(np.zeros((3, 6)), r"\(T, 7\)"), (np.full((1, 7), np.nan), "finite")]:
        with pytest.raises(ValueError, match=message):
            env_actions_to_openvla_labels(bad)
    with pytest.raises(ValueError, match="action_scale"):
        env_actions_to_openvla_labels(actions, action_scale=0.0)


def replay(labels: np.ndarray, repeat: int = REPEAT) -> np.ndarray:
    """Stored labels (T, 7) -> fractal action tokens -> decoded -> SimplerEnv's OpenVLA adapter -> (T, 7)."""
    tokenizer = ActionTokenizer(32000)
    ids = tokenizer.encode(normalize_actions(labels, FRACTAL_NORM_STATS))  # (T, 7) vocabulary ids
    decoded = unnormalize_actions(tokenizer.decode(ids), FRACTAL_NORM_STATS)  # (T, 7)
    adapter = OpenVLAGoogleRobotAdapter(sticky_gripper_num_repeat=repeat)
    adapter.reset()
    return np.stack([adapter(row) for row in decoded])  # one env, step by step


def gripper_closed(commands: np.ndarray, threshold: float) -> np.ndarray:
    """(T,) bool: whether the gripper is closed after each relative command (it starts open)."""
    closed, out = False, []
    for g in commands:
        closed = True if g > threshold else (False if g < -threshold else closed)
        out.append(closed)
    return np.array(out)


def round_trip_errors(actions: np.ndarray, labels: np.ndarray) -> list[str]:
    """What the replayed labels get wrong about the demonstrator's env actions (empty: a faithful trip)."""
    env = replay(labels)
    errors = []
    if np.any(np.abs(env[:, :3] - actions[:, :3]) > BIN[:3]):
        errors.append("position off by more than one bin")
    if np.any(np.abs(env[:, 3:6] - actions[:, 3:6]) > BIN[3:6]):
        errors.append("rotation off by more than one bin")
    expected = gripper_closed(actions[:, 6], 0.1)  # openvla's rule reads |g| <= 0.1 as no command
    if not np.array_equal(gripper_closed(env[:, 6], 0.5), expected):
        errors.append(f"gripper closed at {np.flatnonzero(expected).tolist()} in the demo, at "
                      f"{np.flatnonzero(gripper_closed(env[:, 6], 0.5)).tolist()} on replay")
    return errors


@st.composite
def demonstrations(draw) -> np.ndarray:
    """One demonstration's env actions (T, 7): deltas inside the fractal q01..q99 box; grasps and releases at
    least REPEAT steps apart (the real gripper's latch), never at step 0; in between, holds, sub-threshold
    noise and sticky repeats of the last command; optionally a redundant "open" before the first grasp."""
    length = draw(st.integers(2, 80))
    events, t = [], draw(st.integers(1, 20))
    kinds = ["open"] if draw(st.booleans()) else []
    kinds += ["close", "open", "close", "open", "close"][: draw(st.integers(0, 5))]
    for kind in kinds:
        if t >= length:
            break
        events.append((t, kind))
        t += REPEAT + draw(st.integers(0, 10))
    gripper = np.zeros(length)
    last, event_steps = 0.0, dict(events)
    for step in range(length):
        if step in event_steps:
            last = (1.0 if event_steps[step] == "close" else -1.0) * draw(st.floats(0.11, 1.0))
            gripper[step] = last
        else:
            filler = draw(st.sampled_from(["hold", "noise", "repeat"]))
            if filler == "noise":
                gripper[step] = draw(st.floats(-0.1, 0.1))
            elif filler == "repeat" and step > 0:
                gripper[step] = last
    unit = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=6 * length, max_size=6 * length)))
    deltas = Q01[:6] + unit.reshape(length, 6) * (Q99[:6] - Q01[:6])  # (T, 6) xyz + rpy
    rotation = euler_to_axis_angle(deltas[:, 3:6])  # the env's axis-angle for those rotations
    return np.concatenate([deltas[:, :3], rotation, gripper[:, None]], axis=1)  # (T, 7)


@pytest.mark.core
@settings(max_examples=150, deadline=None)
@given(demonstrations())
def test_stored_labels_replay_to_the_demonstrators_env_actions(actions):
    assert round_trip_errors(actions, env_actions_to_openvla_labels(actions)) == []


def raw_relative_labels(actions: np.ndarray) -> np.ndarray:
    """The wrong convention: RT-1's relative gripper command stored as the label."""
    labels = env_actions_to_openvla_labels(actions)
    labels[:, 6] = actions[:, 6]
    return labels


@pytest.mark.core
def test_the_raw_relative_gripper_convention_fails_the_round_trip():
    grasp = np.zeros((40, 7))
    grasp[5, 6] = 1.0  # close at step 5 and hold: the demonstrator grasps once
    assert round_trip_errors(grasp, env_actions_to_openvla_labels(grasp)) == []
    errors = round_trip_errors(grasp, raw_relative_labels(grasp))
    assert errors == ["gripper closed at " + str(list(range(5, 40))) + " in the demo, at [] on replay"]
    # Hypothesis finds such a failure among the property test's own demonstrations as well (which one it
    # shrinks to depends on its version: a close, or a redundant open that replays as a close).
    found = find(demonstrations(), lambda a: bool(round_trip_errors(a, raw_relative_labels(a))))
    assert round_trip_errors(found, raw_relative_labels(found))
    assert round_trip_errors(found, env_actions_to_openvla_labels(found)) == []  # the right rule replays it
    assert np.any(np.abs(found[:, 6]) > 0.1)  # only a gripper command can break the round trip


@pytest.mark.core
def test_grasp_release_grasp_with_sticky_repeats_replays_exactly():
    actions = np.zeros((70, 7))
    actions[3:18, 6] = 1.0  # grasp held as SimplerEnv's sticky gripper would send it: +1 for 15 steps
    actions[25, 6], actions[26:40, 6] = -1.0, -1.0  # release, repeated
    actions[45, 6] = 0.6  # grasp again, a single command
    replayed = replay(env_actions_to_openvla_labels(actions))
    closes = np.flatnonzero(replayed[:, 6] > 0.5)
    opens = np.flatnonzero(replayed[:, 6] < -0.5)
    assert closes.tolist() == list(range(3, 18)) + list(range(45, 60))
    assert opens.tolist() == list(range(25, 40))


@pytest.mark.core
def test_what_simpler_envs_wrapper_cannot_replay():
    at_start = np.zeros((20, 7))
    at_start[0, 6] = 1.0  # a close at the first step: the wrapper's first relative command is always 0
    assert replay(env_actions_to_openvla_labels(at_start))[:, 6].tolist() == [0.0] * 20
    quick = np.zeros((40, 7))
    quick[2, 6], quick[8, 6] = 1.0, -1.0  # released 6 steps after the grasp: swallowed by the 15-step latch
    gripper = replay(env_actions_to_openvla_labels(quick))[:, 6]
    assert np.flatnonzero(gripper > 0.5).tolist() == list(range(2, 17)) and not np.any(gripper < -0.5)


# ------------------------------------------------------------------ RT-1: termination and collect-style use


RT1_KEYS = {
    "base_displacement_vector": (2,),
    "base_displacement_vertical_rotation": (1,),
    "gripper_closedness_action": (1,),
    "rotation_delta": (3,),
    "terminate_episode": (3,),
    "world_vector": (3,),
}


class ScriptedRuntime(FakeRuntime):
    """RT-1 outputs of the real policy's keys and dtypes, replaying a script: move, grasp, lift, terminate."""

    def __init__(self, script):
        super().__init__()
        self.script, self.images = script, []

    def step(self, observation, image, embedding, state):
        self.images.append(image.shape)
        world, rotation, gripper, terminate = self.script[min(state, len(self.script) - 1)]
        raw = {key: np.zeros(shape, np.int32 if key == "terminate_episode" else np.float32)
               for key, shape in RT1_KEYS.items()}
        raw["world_vector"][:] = world
        raw["rotation_delta"][:] = rotation
        raw["gripper_closedness_action"][:] = gripper
        raw["terminate_episode"][:] = (1, 0, 0) if terminate else (0, 1, 0)
        return raw, state + 1


def rt1_script(length: int = 30, close_at: int = 6, terminate_at: int = 24):
    script = []
    for t in range(length):
        world = (0.02, -0.01, -0.015) if t < close_at else (0.0, 0.0, 0.03)
        gripper = 1.0 if close_at <= t < close_at + 3 else (0.004 if t % 2 else 0.0)  # then filtered noise
        script.append((world, (0.0, 0.05 * (t < close_at), 0.0), gripper, t == terminate_at))
    return script


@pytest.mark.core
def test_rt1_done_ends_the_episode_after_the_terminating_action(monkeypatch, tmp_path):
    runtime = ScriptedRuntime(rt1_script(terminate_at=3))
    monkeypatch.setattr(rt1, "import_rt1_stack", lambda *options: {})
    monkeypatch.setattr(rt1, "load_runtime", lambda checkpoint, lang: runtime)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    demo = rt1.RT1Demonstrator("pick-can", tmp_path)
    obs = {"image": np.zeros((8, 8, 3), np.uint8), "image_native": np.zeros((512, 640, 3), np.uint8)}
    done = []
    for _ in range(6):
        action = demo.act(obs)
        done.append(demo.done)
    assert done == [False, False, False, True, True, True]
    assert action.tolist() == [0.0] * 7 and len(runtime.images) == 4  # no RT-1 call once done
    assert runtime.images[0] == (512, 640, 3)  # the native frame, resized once inside the runtime
    demo.reset()
    assert not demo.done
    keep_going = rt1.RT1Demonstrator("pick-can", tmp_path, terminate_on_predict=False)
    for _ in range(6):
        keep_going.act(obs)
    assert keep_going.terminate_predicted and not keep_going.done
    with pytest.raises(ValueError, match="terminate_on_predict"):
        rt1.RT1Demonstrator("pick-can", tmp_path, terminate_on_predict="yes")


@pytest.mark.core
def test_collect_style_rt1_episodes_store_labels_that_replay(monkeypatch, tmp_path):
    """A collection loop over a (fake) simpler env: RT-1 acts until done; the episode's env actions become
    OpenVLA labels; the labels replay to RT-1's own env actions."""
    from fake_simpler import FakeManiSkillEnv

    from razor_robot.envs import core, simpler_backend

    monkeypatch.setattr(rt1, "import_rt1_stack", lambda *options: {})
    (tmp_path / "saved_model.pb").write_bytes(b"")
    inner = FakeManiSkillEnv("pick-can")
    config = simpler_backend.SimplerEnvConfig("pick-can", image_size=16, native_image=True,
                                              setting="variant_aggregation")
    env = simpler_backend.SimplerTaskEnv(inner, config, core.task_spec("pick-can", "simpler"))
    for terminate_at in (24, 1000):
        runtime = ScriptedRuntime(rt1_script(length=80, terminate_at=terminate_at))
        monkeypatch.setattr(rt1, "load_runtime", lambda checkpoint, lang: runtime)
        demo = rt1.RT1Demonstrator("pick-can", tmp_path)
        obs, info = env.reset(seed=0, options={"object_xy": (-0.2, 0.2)})
        actions, truncated = [], False
        while not (truncated or demo.done):
            action = demo.act({**obs, "instruction": info["instruction"]})
            obs, _, _, truncated, _ = env.step(action)
            actions.append(action)
        actions = np.array(actions)  # (T, 7)
        assert len(actions) == min(terminate_at + 1, 80)  # the terminating step's action is executed
        assert runtime.images[0] == (512, 640, 3)
        assert actions[6, 6] == 1.0 and actions[11, 6] == 0.0  # filtered sub-0.01 noise is 0
        assert round_trip_errors(actions, env_actions_to_openvla_labels(actions)) == []

"""SimplerEnv backend: env-id mapping, build/reset options, observation extraction and the task env contract.

Everything but the last test runs a fake ManiSkill2 env; the ``simpler`` test makes the real one.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from razor_robot.envs import core
from razor_robot.envs import simpler_backend as sb

# ------------------------------------------------------------------ ids and build kwargs


@pytest.mark.core
@pytest.mark.parametrize(
    "task, drawer, expected",
    [
        ("pick-can", None, "GraspSingleOpenedCokeCanInScene-v0"),
        ("open-drawer", None, "OpenDrawerCustomInScene-v0"),
        ("open-drawer", "middle", "OpenMiddleDrawerCustomInScene-v0"),
        ("close-drawer", None, "CloseDrawerCustomInScene-v0"),
        ("close-drawer", "bottom", "CloseBottomDrawerCustomInScene-v0"),
    ],
)
def test_simpler_env_id(task, drawer, expected):
    assert sb.simpler_env_id(task, drawer) == expected


@pytest.mark.core
def test_visual_matching_kwargs_use_the_prepackaged_config():
    pick = sb.build_env_kwargs(sb.SimplerEnvConfig("pick-can"), 80)
    assert pick == {"obs_mode": "rgbd", "max_episode_steps": 80, "prepackaged_config": True}
    drawer = sb.build_env_kwargs(sb.SimplerEnvConfig("open-drawer"), 113)
    assert drawer == {
        "obs_mode": "rgbd",
        "max_episode_steps": 113,
        "prepackaged_config": True,
        "shader_dir": "rt",
    }


@pytest.mark.core
def test_variant_aggregation_kwargs_match_the_eval_scripts():
    config = sb.SimplerEnvConfig("pick-can", setting="variant_aggregation", can_orientation="horizontal")
    assert sb.build_env_kwargs(config, 80) == {
        "obs_mode": "rgbd",
        "max_episode_steps": 80,
        "robot": "google_robot_static",
        "control_mode": sb.GOOGLE_ROBOT_CONTROL_MODE,
        "control_freq": 3,
        "sim_freq": 513,
        "scene_name": "google_pick_coke_can_1_v4",
        "camera_cfgs": {"add_segmentation": True},
        "rgb_overlay_path": None,
        "lr_switch": True,
    }
    drawer = sb.SimplerEnvConfig(
        "close-drawer",
        setting="variant_aggregation",
        env_kwargs={"station_name": "mk_station2", "sim_freq": 500},
    )
    kwargs = sb.build_env_kwargs(drawer, 113)
    assert kwargs["scene_name"] == "frl_apartment_stage_simple"
    assert kwargs["shader_dir"] == "rt"
    assert kwargs["station_name"] == "mk_station2" and kwargs["sim_freq"] == 500  # env_kwargs win
    no_rt = sb.SimplerEnvConfig("close-drawer", setting="variant_aggregation", ray_tracing=False)
    assert "shader_dir" not in sb.build_env_kwargs(no_rt, 113)


@pytest.mark.core
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "stack"}, "unknown task"),
        ({"task": "pick-can", "success_mode": "best"}, "success_mode"),
        ({"task": "pick-can", "setting": "real"}, "setting"),
        ({"task": "pick-can", "drawer": "top"}, "not pick-can"),
        ({"task": "open-drawer", "drawer": "left"}, "unknown drawer"),
        ({"task": "open-drawer", "can_orientation": "standing"}, "option of pick-can"),
        ({"task": "pick-can", "can_orientation": "upside-down"}, "can_orientation"),
        ({"task": "pick-can", "image_size": 8}, "image_size"),
        ({"task": "pick-can", "image_size": (64, 64, 3)}, "image_size"),
        ({"task": "pick-can", "image_size": 64.0}, "image_size"),
        ({"task": "pick-can", "position_range": "huge"}, "position range"),
    ],
)
def test_config_rejects_bad_values_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        sb.SimplerEnvConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.core
def test_image_hw():
    assert sb.image_hw(None) is None
    assert sb.image_hw(64) == (64, 64)
    assert sb.image_hw((256, 320)) == (256, 320)


# ------------------------------------------------------------------ reset options


@pytest.mark.core
def test_drawer_robot_poses_are_the_variant_aggregation_grid():
    poses = [sb.drawer_robot_pose(i) for i in range(9)]
    assert [xy for xy, _ in poses] == [
        (0.65, -0.2),
        (0.65, 0.0),
        (0.65, 0.2),
        (0.75, -0.2),
        (0.75, 0.0),
        (0.75, 0.2),
        (0.85, -0.2),
        (0.85, 0.0),
        (0.85, 0.2),
    ]
    assert {quat for _, quat in poses} == {(0.0, 0.0, 0.0, 1.0)}
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ValueError, match="episode_id"):
            sb.drawer_robot_pose(bad)


@pytest.mark.core
def test_build_reset_options():
    vm = sb.build_reset_options(sb.SimplerEnvConfig("pick-can"), np.array([-0.2, 0.1]), None)
    assert list(vm) == ["obj_init_options"]
    np.testing.assert_array_equal(vm["obj_init_options"]["init_xy"], [-0.2, 0.1])

    va = sb.build_reset_options(sb.SimplerEnvConfig("pick-can", setting="variant_aggregation"), None, None)
    assert va["obj_init_options"] == {}
    np.testing.assert_array_equal(va["robot_init_options"]["init_xy"], [0.35, 0.20])
    np.testing.assert_array_equal(va["robot_init_options"]["init_rot_quat"], [0, 0, 0, 1])

    drawer = sb.build_reset_options(
        sb.SimplerEnvConfig("open-drawer", setting="variant_aggregation"), None, 7
    )
    np.testing.assert_array_equal(drawer["robot_init_options"]["init_xy"], [0.85, 0.0])


@pytest.mark.core
def test_default_episode_id_follows_the_seed():
    rng = np.random.default_rng(0)
    assert [sb.default_episode_id(s, rng) for s in (0, 8, 9, 23)] == [0, 8, 0, 5]
    assert 0 <= sb.default_episode_id(None, rng) < 9


# ------------------------------------------------------------------ observation pieces


@pytest.mark.core
def test_resize_image_area_averages_blocks_and_keeps_native():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2, :2] = 40
    image[:2, 2:] = (0, 100, 200)
    image[2:, :2, 0] = [[0, 4], [8, 12]]  # block mean 6
    small = sb.resize_image(image, (2, 2))
    assert small.dtype == np.uint8 and small.shape == (2, 2, 3)
    assert small[..., 0].tolist() == [[40, 0], [6, 0]]
    assert small[0, 1].tolist() == [0, 100, 200]
    assert sb.resize_image(image, None) is not None and sb.resize_image(image, None).shape == (4, 4, 3)
    np.testing.assert_array_equal(sb.resize_image(image, (4, 4)), image)


@pytest.mark.core
def test_camera_rgb_and_state_vector():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    obs = {
        "image": {"overhead_camera": {"rgb": rgb, "depth": np.zeros((2, 3, 1))}},
        "extra": {"tcp_pose": np.arange(7.0)},
    }
    np.testing.assert_array_equal(sb.camera_rgb(obs), rgb)
    with pytest.raises(ValueError, match="camera 'base_camera'"):
        sb.camera_rgb(obs, "base_camera")
    state = sb.state_vector(obs, np.arange(7.0) + 10)
    assert state.dtype == np.float32 and state.tolist() == list(range(7)) + list(range(10, 17))
    assert len(sb.STATE_FIELDS) == sb.STATE_DIM == 14


@pytest.mark.core
def test_env_action_validation():
    assert sb.env_action(np.ones(7, np.float32)).dtype == np.float64
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        sb.env_action(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        sb.env_action(np.array([0, 0, 0, 0, 0, np.inf, 0]))


@pytest.mark.core
def test_success_tracker_final_and_any():
    final, any_ = sb.SuccessTracker("final"), sb.SuccessTracker("any")
    for flag in (np.bool_(False), np.bool_(True), False):
        assert final.update(flag) is bool(flag)
        any_.update(flag)
    assert (final.episode_success, any_.episode_success) == (False, True)
    any_.reset()
    assert any_.episode_success is False


# ------------------------------------------------------------------ the env, on a fake ManiSkill2 env


def _pose(p, q=(1.0, 0.0, 0.0, 0.0)):
    return SimpleNamespace(p=np.array(p, np.float64), q=np.array(q, np.float64))


class FakeBaseEnv:
    """The parts of a ManiSkill2_real2sim Google-Robot env that the backend reads."""

    def __init__(self, task):
        self.task = task
        self.drawer_id = "top"
        self.obj_pose = _pose([-0.2, 0.3, 0.9])
        self.art_obj = SimpleNamespace(
            get_links=lambda: [
                SimpleNamespace(name=f"{d}_drawer", pose=_pose([-0.1 * i, 0.0, 0.5]))
                for i, d in enumerate(sb.DRAWERS)
            ]
        )

    def get_language_instruction(self):
        return "pick coke can" if self.task == "pick-can" else f"open {self.drawer_id} drawer"


class FakeManiSkillEnv:
    """Records reset options; success follows a schedule; the image's [0, 0, 0] pixel counts steps."""

    observation_space = {"image": {"overhead_camera": {"rgb": SimpleNamespace(shape=(32, 40, 3))}}}
    action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)

    def __init__(self, task, successes=()):
        self.base = FakeBaseEnv(task)
        self.successes = list(successes)
        self.resets, self.actions, self.closed = [], [], False

    @property
    def unwrapped(self):
        return self.base

    def _obs(self):
        rgb = np.full((32, 40, 3), 100, np.uint8)
        rgb[0, 0, 0] = len(self.actions)
        return {
            "image": {"overhead_camera": {"rgb": rgb}},
            "extra": {"tcp_pose": np.arange(7.0)},
            "agent": {},
        }

    def reset(self, seed=None, options=None):
        self.resets.append((seed, options))
        self.actions = []
        xy = options["obj_init_options"].get("init_xy")
        if xy is not None:
            self.base.obj_pose = _pose([xy[0], xy[1], 0.9])
        return self._obs(), {}

    def step(self, action):
        self.actions.append(action)
        success = self.successes[len(self.actions) - 1] if len(self.actions) <= len(self.successes) else False
        return (
            self._obs(),
            float(success),
            bool(success),
            False,
            {"success": np.bool_(success), "elapsed_steps": 1},
        )

    def close(self):
        self.closed = True


def make_fake(task="pick-can", horizon=4, successes=(), **config):
    config.setdefault("image_size", 16)
    inner = FakeManiSkillEnv(task, successes)
    spec = dataclasses.replace(core.task_spec(task, "simpler"), horizon=horizon)
    return sb.SimplerTaskEnv(inner, sb.SimplerEnvConfig(task, **config), spec), inner


@pytest.mark.core
def test_reset_places_the_can_and_reports_the_contract_info():
    env, inner = make_fake()
    obs, info = env.reset(seed=3, options={"object_xy": (-0.3, 0.4)})
    seed, options = inner.resets[-1]
    assert seed == 3
    np.testing.assert_array_equal(options["obj_init_options"]["init_xy"], [-0.3, 0.4])
    assert "robot_init_options" not in options  # visual matching: the env poses the robot
    assert info["instruction"] == "pick coke can" and info["success"] is False
    np.testing.assert_array_equal(info["object_xy"], [-0.3, 0.4])
    assert obs["image"].shape == (16, 16, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].dtype == np.float32 and obs["state"][7:10].tolist() == pytest.approx([-0.3, 0.4, 0.9])
    assert env.observation_space.contains(obs)
    assert env.task_spec.action_dim == 7 and env.action_space.shape == (7,)


@pytest.mark.core
def test_reset_without_position_reports_where_the_env_put_the_can():
    env, _ = make_fake()
    _, info = env.reset(seed=0)
    np.testing.assert_allclose(info["object_xy"], [-0.2, 0.3], atol=1e-6)


@pytest.mark.core
def test_native_image_size_comes_from_the_camera():
    env, _ = make_fake(image_size=None)
    assert env.observation_space["image"].shape == (32, 40, 3)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 40, 3)


@pytest.mark.core
@pytest.mark.parametrize("mode, expected", [("final", False), ("any", True)])
def test_fixed_horizon_truncation_and_episode_success(mode, expected):
    env, inner = make_fake(successes=(False, True, False, False), success_mode=mode)
    env.reset(seed=0)
    rewards, flags = [], []
    for t in range(4):
        obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert terminated is False  # the inner env reported terminated=True at t=1; we keep going
        assert truncated is (t == 3) and ("episode_success" in info) is (t == 3)
        rewards.append(reward)
        flags.append(info["success"])
    assert rewards == [0.0, 1.0, 0.0, 0.0] and flags == [False, True, False, False]
    assert info["episode_success"] is expected
    assert len(inner.actions) == 4 and inner.actions[0].dtype == np.float64
    inner.successes = [True, False, False, False] if mode == "final" else []
    env.reset(seed=1)
    *_, info = [env.step(np.zeros(7)) for _ in range(4)][-1]
    assert info["episode_success"] is False  # bookkeeping restarts each episode


@pytest.mark.core
def test_drawer_episode_id_sets_the_robot_pose():
    env, inner = make_fake("open-drawer", setting="variant_aggregation")
    obs, info = env.reset(seed=12)  # default: seed % 9 = 3
    np.testing.assert_array_equal(inner.resets[-1][1]["robot_init_options"]["init_xy"], [0.75, -0.2])
    env.reset(seed=12, options={"episode_id": 8})
    np.testing.assert_array_equal(inner.resets[-1][1]["robot_init_options"]["init_xy"], [0.85, 0.2])
    assert info["instruction"] == "open top drawer" and info["object_xy"] is None
    assert obs["state"][7:10].tolist() == [0.0, 0.0, 0.5]  # the top drawer link


@pytest.mark.core
def test_drawer_state_follows_the_episodes_drawer():
    env, inner = make_fake("close-drawer")
    inner.base.drawer_id = "bottom"
    obs, _ = env.reset(seed=0)
    assert obs["state"][7:10].tolist() == pytest.approx([-0.2, 0.0, 0.5])


@pytest.mark.core
@pytest.mark.parametrize(
    "task, options, message",
    [
        ("open-drawer", {"object_xy": (-0.2, 0.2)}, "only supported for pick-can"),
        ("pick-can", {"object_xy": (0.5, 0.2)}, "outside"),
        ("pick-can", {"object_xy": (0.1,)}, "finite"),
        ("pick-can", {"episode_id": 1}, "episode_id"),
        ("open-drawer", {"episode_id": 1}, "visual_matching"),
        ("pick-can", {"obj_init_options": {}}, "unknown reset options"),
    ],
)
def test_bad_reset_options_raise_before_the_sim_runs(task, options, message):
    env, inner = make_fake(task)
    with pytest.raises(ValueError, match=message):
        env.reset(seed=0, options=options)
    assert inner.resets == []


@pytest.mark.core
def test_wider_position_range_accepts_the_paper_printed_x():
    env, inner = make_fake(position_range="paper-printed")
    env.reset(seed=0, options={"object_xy": (0.1, 0.2)})
    np.testing.assert_array_equal(inner.resets[-1][1]["obj_init_options"]["init_xy"], [0.1, 0.2])


@pytest.mark.core
def test_step_rejects_bad_actions_and_close_closes():
    env, inner = make_fake()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4))
    env.close()
    assert inner.closed


# ------------------------------------------------------------------ make_simpler_env


@pytest.mark.core
def test_make_checks_arguments_before_importing_simpler():
    with pytest.raises(ValueError, match="setting"):
        sb.make_simpler_env("pick-can", image_size=64, success_mode="final", setting="nope")
    with pytest.raises(ValueError, match="unknown simpler backend options"):
        sb.make_simpler_env("pick-can", image_size=64, success_mode="final", colour="red")


@pytest.mark.core
def test_make_without_simpler_env_names_the_install():
    try:
        import simpler_env  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("simpler_env is installed here")
    with pytest.raises(core.MissingDependencyError, match="SimplerEnv") as info:
        sb.make_simpler_env("pick-can", image_size=64, success_mode="final")
    assert "\n" not in str(info.value) and "pip install" in str(info.value)


@pytest.mark.simpler
@pytest.mark.slow
@pytest.mark.parametrize("task", core.TASKS)
def test_real_simpler_env_runs_an_episode(task):
    pytest.importorskip("simpler_env")
    env = sb.make_simpler_env(task, image_size=64, success_mode="any")
    try:
        options = {"object_xy": (-0.2, 0.2)} if task == "pick-can" else {}
        obs, info = env.reset(seed=0, options=options)
        assert obs["image"].shape == (64, 64, 3) and obs["state"].shape == (14,)
        word = {"pick-can": "pick", "open-drawer": "open", "close-drawer": "close"}[task]
        assert info["instruction"].startswith(word)
        if task == "pick-can":
            np.testing.assert_allclose(obs["state"][7:9], [-0.2, 0.2], atol=0.02)  # the can settled there
        for t in range(env.task_spec.horizon):
            obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
            assert terminated is False and truncated is (t == env.task_spec.horizon - 1)
        # Standing still lifts no can, opens no drawer, and leaves the close task's drawer open (qpos 0.2).
        assert info["episode_success"] is False
    finally:
        env.close()

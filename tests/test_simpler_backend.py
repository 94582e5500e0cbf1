"""SimplerEnv backend: env-id mapping, build/reset options, episodes, INTER_AREA resize and the env contract.

The env tests run fake ManiSkill2 envs rebuilt from layouts recorded on the real stack
(tests/fake_simpler.py); tests/test_simpler_real.py runs the real envs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from razor_robot.envs import core
from razor_robot.envs import simpler_backend as sb

from fake_simpler import ENV_IDS, FakeManiSkillEnv, build, describe, load_layouts

ASSETS = Path("/assets")
SCENE = {"scene_name": "dummy_tabletop"}

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


COMMON = {
    "obs_mode": "rgbd",
    "robot": "google_robot_static",
    "control_mode": sb.GOOGLE_ROBOT_CONTROL_MODE,
    "control_freq": 3,
    "sim_freq": 513,
    "camera_cfgs": {"add_segmentation": True},
}


@pytest.mark.core
def test_visual_matching_kwargs_spell_out_the_prepackaged_config():
    pick = sb.build_env_kwargs(sb.SimplerEnvConfig("pick-can"), 80, ASSETS)
    assert pick == {
        **COMMON,
        "max_episode_steps": 80,
        "scene_name": "google_pick_coke_can_1_v4",
        "rgb_overlay_path": "/assets/real_inpainting/google_coke_can_real_eval_1.png",
        "rgb_overlay_cameras": ["overhead_camera"],
        "urdf_version": "",
    }
    drawer = sb.build_env_kwargs(sb.SimplerEnvConfig("open-drawer"), 113, ASSETS)
    assert drawer == {
        **COMMON,
        "max_episode_steps": 113,
        "scene_name": "dummy_drawer",
        "station_name": "mk_station_recolor",
        "light_mode": "simple",
        "disable_bad_material": True,
        "rgb_overlay_path": "/assets/real_inpainting/open_drawer_a0.png",
        "rgb_overlay_cameras": ["overhead_camera"],
        "urdf_version": "",
        "shader_dir": "rt",
    }


@pytest.mark.core
@pytest.mark.parametrize("setting", sb.SETTINGS)
def test_ray_tracing_false_takes_effect_for_drawers_in_both_settings(setting):
    config = sb.SimplerEnvConfig("close-drawer", setting=setting, ray_tracing=False)
    assert "shader_dir" not in sb.build_env_kwargs(config, 113, ASSETS) and not config.ray_traced
    on = sb.SimplerEnvConfig("pick-can", setting=setting, ray_tracing=True)
    assert sb.build_env_kwargs(on, 80, ASSETS)["shader_dir"] == "rt"
    default = sb.SimplerEnvConfig("pick-can", setting=setting)
    assert "shader_dir" not in sb.build_env_kwargs(default, 80, ASSETS)


@pytest.mark.core
def test_variant_aggregation_kwargs_match_the_eval_scripts():
    config = sb.SimplerEnvConfig("pick-can", setting="variant_aggregation", can_orientation="horizontal")
    assert sb.build_env_kwargs(config, 80, ASSETS) == {
        **COMMON,
        "max_episode_steps": 80,
        "scene_name": "google_pick_coke_can_1_v4",
        "rgb_overlay_path": None,
        "urdf_version": "",
        "lr_switch": True,
    }
    drawer = sb.SimplerEnvConfig(
        "close-drawer",
        setting="variant_aggregation",
        urdf_version="recolor_cabinet_visual_matching_1",
        env_kwargs={"station_name": "mk_station2", "sim_freq": 500},
    )
    kwargs = sb.build_env_kwargs(drawer, 113, ASSETS)
    assert kwargs["scene_name"] == "frl_apartment_stage_simple" and kwargs["rgb_overlay_path"] is None
    assert kwargs["shader_dir"] == "rt" and kwargs["urdf_version"] == "recolor_cabinet_visual_matching_1"
    assert kwargs["station_name"] == "mk_station2" and kwargs["sim_freq"] == 500  # env_kwargs win
    assert "light_mode" not in kwargs


@pytest.mark.core
def test_env_kwargs_and_can_scene_override_the_visual_matching_scene():
    kwargs = sb.build_env_kwargs(sb.SimplerEnvConfig("pick-can", env_kwargs=SCENE), 80, ASSETS)
    assert kwargs["scene_name"] == "dummy_tabletop"
    assert kwargs["rgb_overlay_path"].endswith("google_coke_can_real_eval_1.png")  # the overlay stays
    for setting in sb.SETTINGS:
        can = sb.SimplerEnvConfig("pick-can", setting=setting, can_scene="dummy_tabletop")
        assert sb.build_env_kwargs(can, 80, ASSETS)["scene_name"] == "dummy_tabletop"
        drawer = sb.SimplerEnvConfig("open-drawer", setting=setting, can_scene="dummy_tabletop")
        assert sb.build_env_kwargs(drawer, 113, ASSETS)["scene_name"] != "dummy_tabletop"  # ignored


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
        ({"task": "pick-can", "ray_tracing": "yes"}, "ray_tracing"),
        ({"task": "pick-can", "urdf_version": "None"}, "urdf_version"),
        ({"task": "pick-can", "native_image": 1}, "native_image"),
        ({"task": "pick-can", "can_scene": ""}, "can_scene"),
        ({"task": "open-drawer", "env_kwargs": {"shader_dir": "rt"}}, "ray_tracing"),
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


# ------------------------------------------------------------------ episodes


@pytest.mark.core
def test_variant_aggregation_drawer_poses_are_the_script_grid():
    poses = [sb.drawer_robot_pose(i) for i in range(9)]
    assert [xy for xy, _ in poses] == [
        (0.65, -0.2), (0.65, 0.0), (0.65, 0.2),
        (0.75, -0.2), (0.75, 0.0), (0.75, 0.2),
        (0.85, -0.2), (0.85, 0.0), (0.85, 0.2),
    ]
    assert {quat for _, quat in poses} == {(0.0, 0.0, 0.0, 1.0)}
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ValueError, match="episode_id"):
            sb.drawer_robot_pose(bad)


@pytest.mark.core
def test_visual_matching_drawer_poses_are_the_real_robot_poses():
    xy, quat = sb.drawer_robot_pose(0, "visual_matching")  # A0: (0.644, -0.179), yaw -0.03 on top of pi
    assert xy == (0.644, -0.179)
    np.testing.assert_allclose(quat, [math.sin(0.015), 0.0, 0.0, math.cos(0.015)], rtol=0, atol=1e-15)
    assert sb.drawer_robot_pose(4, "visual_matching") == ((0.752, 0.009), (-0.0, 0.0, 0.0, 1.0))  # B1
    names = [p[0] for p in sb.VISUAL_MATCHING_DRAWER_POSES]
    assert names == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]


def _choice(config, seed, **options):
    return sb.choose_episode(config, seed, np.random.default_rng(0), options)


@pytest.mark.core
def test_episode_choice_follows_the_seed_options_and_config():
    drawer_vm = sb.SimplerEnvConfig("open-drawer")
    assert _choice(drawer_vm, 0) == sb.EpisodeChoice(0, "")
    assert _choice(drawer_vm, 10) == sb.EpisodeChoice(1, "recolor_tabletop_visual_matching_1")  # 10 // 9 = 1
    assert _choice(drawer_vm, 35) == sb.EpisodeChoice(8, "recolor_cabinet_visual_matching_1")
    assert _choice(drawer_vm, 36) == sb.EpisodeChoice(0, "")
    pairs = {(c.episode_id, c.urdf_version) for c in (_choice(drawer_vm, s) for s in range(36))}
    assert len(pairs) == 36  # seeds 0..35 run every pose x URDF pair once
    assert _choice(drawer_vm, 10, episode_id=7, urdf_version="") == sb.EpisodeChoice(7, "")
    fixed = sb.SimplerEnvConfig("open-drawer", urdf_version="recolor_tabletop_visual_matching_2")
    assert _choice(fixed, 0).urdf_version == "recolor_tabletop_visual_matching_2"
    can = sb.SimplerEnvConfig("pick-can")
    assert [_choice(can, s) for s in (0, 1, 5)] == [
        sb.EpisodeChoice(None, ""),
        sb.EpisodeChoice(None, "recolor_tabletop_visual_matching_1"),
        sb.EpisodeChoice(None, "recolor_tabletop_visual_matching_1"),
    ]
    va = sb.SimplerEnvConfig("close-drawer", setting="variant_aggregation")
    assert _choice(va, 23) == sb.EpisodeChoice(5, "")  # VA: the plain robot, pose seed % 9
    unseeded = _choice(drawer_vm, None)
    assert 0 <= unseeded.episode_id < 9 and unseeded.urdf_version in sb.URDF_VERSIONS


@pytest.mark.core
@pytest.mark.parametrize(
    "task, setting, options, message",
    [
        ("pick-can", "visual_matching", {"episode_id": 1}, "pick-can has one pose"),
        ("open-drawer", "variant_aggregation", {"urdf_version": ""}, "visual_matching reset option"),
        ("open-drawer", "visual_matching", {"urdf_version": "plain"}, "unknown urdf_version"),
        ("open-drawer", "visual_matching", {"episode_id": 9}, "episode_id"),
    ],
)
def test_episode_choice_rejects_bad_options(task, setting, options, message):
    with pytest.raises(ValueError, match=message):
        _choice(sb.SimplerEnvConfig(task, setting=setting), 0, **options)


@pytest.mark.core
def test_build_reset_options():
    vm = sb.build_reset_options(sb.SimplerEnvConfig("pick-can"), np.array([-0.2, 0.1]), None)
    np.testing.assert_array_equal(vm["obj_init_options"]["init_xy"], [-0.2, 0.1])
    np.testing.assert_array_equal(vm["robot_init_options"]["init_xy"], [0.35, 0.20])  # as prepackaged
    np.testing.assert_array_equal(vm["robot_init_options"]["init_rot_quat"], [0, 0, 0, 1])
    va = sb.build_reset_options(sb.SimplerEnvConfig("pick-can", setting="variant_aggregation"), None, None)
    assert va["obj_init_options"] == {}
    np.testing.assert_array_equal(va["robot_init_options"]["init_xy"], [0.35, 0.20])
    va_drawer = sb.SimplerEnvConfig("open-drawer", setting="variant_aggregation")
    drawer = sb.build_reset_options(va_drawer, None, 7)
    np.testing.assert_array_equal(drawer["robot_init_options"]["init_xy"], [0.85, 0.0])
    real = sb.build_reset_options(sb.SimplerEnvConfig("open-drawer"), None, 8)
    np.testing.assert_array_equal(real["robot_init_options"]["init_xy"], [0.865, 0.222])


@pytest.mark.core
def test_default_episode_id_follows_the_seed():
    rng = np.random.default_rng(0)
    assert [sb.default_episode_id(s, rng) for s in (0, 8, 9, 23)] == [0, 8, 0, 5]
    assert 0 <= sb.default_episode_id(None, rng) < 9


# ------------------------------------------------------------------ SimplerEnv's standard drawer episodes


@pytest.mark.core
def test_standard_visual_matching_drawer_episodes():
    episodes = sb.standard_drawer_episodes("open-drawer", "visual_matching")
    assert len(episodes) == 4 * 3 * 9
    first, last = episodes[0], episodes[-1]
    assert first.env_options == {"setting": "visual_matching", "drawer": "top", "env_kwargs": {}}
    assert first.reset_options == {"episode_id": 0, "urdf_version": "recolor_cabinet_visual_matching_1"}
    assert (last.drawer, last.episode_id, last.variant) == ("bottom", 8, "urdf=")
    assert last.reset_options == {"episode_id": 8, "urdf_version": ""}
    assert [e.episode_id for e in episodes[:10]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
    assert [e.drawer for e in episodes[8:10]] == ["top", "middle"]
    keys = {(repr(e.env_options), repr(e.reset_options)) for e in episodes}
    assert len(keys) == len(episodes)  # every episode is distinct
    assert len({repr(e.env_options) for e in episodes}) == 3  # one env per drawer runs them all
    for e in episodes:  # each spec is valid for the env and its reset
        config = sb.SimplerEnvConfig(e.task, **e.env_options)
        assert sb.choose_episode(config, 0, np.random.default_rng(0), e.reset_options) == sb.EpisodeChoice(
            e.episode_id, e.urdf_version
        )


@pytest.mark.core
def test_standard_variant_aggregation_drawer_episodes():
    episodes = sb.standard_drawer_episodes("close-drawer", "variant_aggregation")
    assert len(episodes) == 7 * 3 * 9
    assert [e.variant for e in episodes[::27]] == [name for name, _ in sb.DRAWER_VARIANTS]
    assert episodes[27].env_options == {
        "setting": "variant_aggregation",
        "drawer": "top",
        "env_kwargs": {"scene_name": "modern_bedroom_no_roof"},
    }
    assert episodes[-1].env_options["env_kwargs"] == {"station_name": "mk_station3"}
    assert episodes[-1].reset_options == {"episode_id": 8}
    assert len({repr(e.env_options) for e in episodes}) == 21
    assert len({(repr(e.env_options), e.episode_id) for e in episodes}) == len(episodes)
    for e in episodes:
        sb.SimplerEnvConfig(e.task, **e.env_options)


@pytest.mark.core
def test_standard_drawer_episodes_reject_bad_input():
    with pytest.raises(ValueError, match="not 'pick-can'"):
        sb.standard_drawer_episodes("pick-can")
    with pytest.raises(ValueError, match="setting"):
        sb.standard_drawer_episodes("open-drawer", "real")


# ------------------------------------------------------------------ INTER_AREA


@pytest.mark.core
def test_area_resize_integer_factors_average_blocks():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2, :2] = 40
    image[:2, 2:] = (0, 100, 200)
    image[2:, :2, 0] = [[0, 1], [1, 0]]  # block sum 2: mean 0.5, which OpenCV's 2 x 2 kernel rounds up
    image[2:, 2:, 0] = [[0, 4], [8, 14]]  # sum 26: mean 6.5 -> 7
    small = sb.area_resize(image, (2, 2))
    assert small.dtype == np.uint8 and small.shape == (2, 2, 3)
    assert small[..., 0].tolist() == [[40, 0], [1, 7]]
    assert small[0, 1].tolist() == [0, 100, 200]
    quarter = np.zeros((4, 4, 1), np.uint8)
    quarter[0, :2] = 4  # sum 8 over 16 pixels: 0.5, rounded half to even by the other integer factors
    quarter[1, 0] = 1
    assert sb.area_resize(quarter, (1, 1)).tolist() == [[[1]]]  # 9 / 16 = 0.5625 -> 1
    quarter[1, 0] = 0
    assert sb.area_resize(quarter, (1, 1)).tolist() == [[[0]]]


@pytest.mark.core
def test_area_resize_fractional_factor_weights_partial_cells():
    # 3 -> 2 columns: out0 = (2/3) * 0 + (1/3) * 30 = 10, out1 = (1/3) * 30 + (2/3) * 60 = 50.
    row = np.array([[[0], [30], [60]]], np.uint8)  # (1, 3, 1)
    assert sb.area_resize(row, (1, 2))[0, :, 0].tolist() == [10, 50]
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    assert sb.area_resize(image, (5, 7)) is not image
    np.testing.assert_array_equal(sb.area_resize(image, (5, 7)), image)
    np.testing.assert_array_equal(sb.resize_image(image, None), image)
    flat = np.full((512, 640, 3), 77, np.uint8)
    np.testing.assert_array_equal(sb.area_resize(flat, (224, 224)), np.full((224, 224, 3), 77, np.uint8))


@pytest.mark.core
def test_area_resize_rejects_enlarging_and_non_images():
    with pytest.raises(ValueError, match="only shrinks"):
        sb.area_resize(np.zeros((4, 4, 3), np.uint8), (8, 4))
    with pytest.raises(ValueError, match="uint8"):
        sb.area_resize(np.zeros((4, 4, 3), np.float32), (2, 2))


@pytest.mark.core
def test_load_overlay_is_rgb_over_255(tmp_path):
    from PIL import Image

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 255, 51, 0, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "o.png")
    overlay = sb.load_overlay(tmp_path / "o.png")
    assert overlay.dtype == np.float64 and overlay.shape == (2, 3, 3)
    assert overlay[0, 0].tolist() == [1.0, 0.2, 0.0]  # alpha dropped, as cv2.imread


# ------------------------------------------------------------------ observation pieces


@pytest.mark.core
def test_camera_rgb_pose_and_state_vector():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    obs = {"image": {"overhead_camera": {"rgb": rgb, "depth": np.zeros((2, 3, 1))}}}
    np.testing.assert_array_equal(sb.camera_rgb(obs), rgb)
    with pytest.raises(ValueError, match="camera 'base_camera'"):
        sb.camera_rgb(obs, "base_camera")
    state = sb.state_vector(np.arange(7.0), np.arange(7.0) + 10)
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


# ------------------------------------------------------------------ the env, on fakes of the recorded layouts


@pytest.fixture(scope="module")
def layouts():
    return load_layouts()


@pytest.fixture
def assets(tmp_path):
    """Overlay images: each drawer pose's file is one flat colour (its index), the can's is 200."""
    from PIL import Image

    (tmp_path / "real_inpainting").mkdir()
    for i, (name, *_) in enumerate(sb.VISUAL_MATCHING_DRAWER_POSES):
        Image.fromarray(np.full((2, 2, 3), i, np.uint8)).save(tmp_path / sb.drawer_overlay(name))
    Image.fromarray(np.full((2, 2, 3), 200, np.uint8)).save(tmp_path / sb.CAN_OVERLAY)
    return tmp_path


def make_fake(task="pick-can", horizon=4, successes=(), layouts=None, assets=None, **config):
    config.setdefault("image_size", 16)
    inner = FakeManiSkillEnv(task, successes, layouts, config.get("setting", "visual_matching"))
    spec = dataclasses.replace(core.task_spec(task, "simpler"), horizon=horizon)
    return sb.SimplerTaskEnv(inner, sb.SimplerEnvConfig(task, **config), spec, assets), inner


@pytest.mark.core
def test_recorded_layouts_have_what_the_backend_reads(layouts):
    assert set(layouts) == set(ENV_IDS.values())
    for task, env_id in ENV_IDS.items():
        assert set(layouts[env_id]) == set(sb.SETTINGS)
        for setting, layout in layouts[env_id].items():
            rgb = layout["obs"]["image"]["overhead_camera"]["rgb"]
            assert rgb == {"dtype": "uint8", "shape": [512, 640, 3]}
            assert "success" in layout["step_info"] and layout["obs"]["image"] == layout["step_obs"]["image"]
            drawer = task != "pick-can"
            tcp = {"tcp_pose": {"dtype": "float32", "shape": [7]}}
            assert layout["obs"]["extra"] == ({} if drawer else tcp)
            overlay = "str" if setting == "visual_matching" else "NoneType"
            assert layout["reset_info"]["rgb_overlay_path"] == overlay
            if drawer:
                assert [f"{d}_drawer" in layout["cabinet_links"] for d in sb.DRAWERS] == [True] * 3
    drawer = layouts[ENV_IDS["open-drawer"]]["visual_matching"]
    assert describe(build(drawer["obs"])) == drawer["obs"]


@pytest.mark.core
def test_reset_places_the_can_and_reports_the_contract_info(layouts, assets):
    env, inner = make_fake(layouts=layouts, assets=assets)
    obs, info = env.reset(seed=4, options={"object_xy": (-0.3, 0.4)})
    seed, options = inner.resets[-1]
    assert seed == 4 and "reconfigure" not in options  # seed 4 draws URDF_VERSIONS[0] = "", as built
    np.testing.assert_array_equal(options["obj_init_options"]["init_xy"], [-0.3, 0.4])
    np.testing.assert_array_equal(options["robot_init_options"]["init_xy"], [0.35, 0.20])
    assert info == {
        "instruction": "pick coke can",
        "object_xy": pytest.approx(np.array([-0.3, 0.4])),
        "success": False,
        "urdf_version": "",
    }
    assert obs["image"].shape == (16, 16, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].dtype == np.float32 and obs["state"][7:10].tolist() == pytest.approx([-0.3, 0.4, 0.9])
    assert env.observation_space.contains(obs) and set(obs) == {"image", "state"}
    assert env.task_spec.action_dim == 7 and env.action_space.shape == (7,)


@pytest.mark.core
def test_a_new_urdf_rebuilds_the_scene_once(layouts, assets):
    env, inner = make_fake(layouts=layouts, assets=assets)
    _, info = env.reset(seed=3)
    assert info["urdf_version"] == "recolor_cabinet_visual_matching_1"
    assert inner.resets[-1][1]["reconfigure"] is True and inner.base.configure_calls == 1
    assert inner.base.urdf_version == "recolor_cabinet_visual_matching_1"
    env.reset(seed=7)  # 7 % 4 = 3: the same URDF, nothing to rebuild
    assert "reconfigure" not in inner.resets[-1][1] and inner.base.configure_calls == 1
    env.reset(seed=7, options={"urdf_version": ""})
    assert inner.resets[-1][1]["reconfigure"] is True and inner.base.urdf_version == ""


@pytest.mark.core
def test_drawer_state_uses_the_tcp_link_since_drawer_obs_have_no_extra(layouts, assets):
    env, inner = make_fake("open-drawer", layouts=layouts, assets=assets, drawer="top")
    obs, info = env.reset(seed=0)
    assert inner._obs("obs")["extra"] == {}
    tcp = np.float32([0.1, 0.2, 1.0, 0.0, 1.0, 0.0, 0.0])  # the fake's tcp link
    np.testing.assert_array_equal(obs["state"][:7], tcp)
    assert obs["state"][7:10].tolist() == pytest.approx([0.0, 0.0, 0.5])  # the top drawer link
    assert info["drawer"] == "top" and info["episode_id"] == 0 and info["object_xy"] is None


@pytest.mark.core
def test_visual_matching_drawer_reset_sets_pose_and_overlay(layouts, assets):
    env, inner = make_fake("close-drawer", layouts=layouts, assets=assets)
    _, info = env.reset(seed=12)  # pose 12 % 9 = 3 (B0), URDF 12 // 9 = 1
    options = inner.resets[-1][1]
    np.testing.assert_array_equal(options["robot_init_options"]["init_xy"], [0.652, 0.009])
    np.testing.assert_array_equal(inner.base.rgb_overlay_img, np.full((2, 2, 3), 3 / 255))
    assert info["episode_id"] == 3 and info["urdf_version"] == "recolor_tabletop_visual_matching_1"
    assert info["instruction"] == "close top drawer"
    inner.base.drawer_id = "bottom"
    obs, info = env.reset(seed=12, options={"episode_id": 8})
    np.testing.assert_array_equal(inner.base.rgb_overlay_img, np.full((2, 2, 3), 8 / 255))
    assert info["drawer"] == "bottom" and obs["state"][7:10].tolist() == pytest.approx([-0.2, 0.0, 0.5])


@pytest.mark.core
def test_variant_aggregation_drawer_episode_id_sets_the_grid_pose(layouts):
    env, inner = make_fake("open-drawer", layouts=layouts, setting="variant_aggregation")
    env.reset(seed=12)  # default: seed % 9 = 3
    np.testing.assert_array_equal(inner.resets[-1][1]["robot_init_options"]["init_xy"], [0.75, -0.2])
    _, info = env.reset(seed=12, options={"episode_id": 8})
    np.testing.assert_array_equal(inner.resets[-1][1]["robot_init_options"]["init_xy"], [0.85, 0.2])
    assert inner.base.rgb_overlay_img is None and info["urdf_version"] == ""


@pytest.mark.core
def test_reset_without_position_reports_where_the_env_put_the_can(layouts, assets):
    env, _ = make_fake(layouts=layouts, assets=assets)
    _, info = env.reset(seed=0)
    np.testing.assert_allclose(info["object_xy"], [-0.2, 0.3], atol=1e-6)


@pytest.mark.core
def test_native_image_size_and_the_native_frame_key(layouts, assets):
    env, _ = make_fake(layouts=layouts, assets=assets, image_size=None)
    assert env.observation_space["image"].shape == (512, 640, 3)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (512, 640, 3)
    both, _ = make_fake(layouts=layouts, assets=assets, image_size=(64, 80), native_image=True)
    obs, _ = both.reset(seed=0)
    assert obs["image"].shape == (64, 80, 3) and obs["image_native"].shape == (512, 640, 3)
    np.testing.assert_array_equal(obs["image"], sb.area_resize(obs["image_native"], (64, 80)))
    assert both.observation_space.contains(obs)
    with pytest.raises(ValueError, match="only shrinks"):
        make_fake(layouts=layouts, image_size=(1024, 640))


@pytest.mark.core
@pytest.mark.parametrize("mode, expected", [("final", False), ("any", True)])
def test_fixed_horizon_truncation_and_episode_success(layouts, assets, mode, expected):
    env, inner = make_fake(successes=(False, True, False, False), success_mode=mode, layouts=layouts,
                           assets=assets)
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
    env.reset(seed=0)
    *_, info = [env.step(np.zeros(7)) for _ in range(4)][-1]
    assert info["episode_success"] is False  # bookkeeping restarts each episode


@pytest.mark.core
@pytest.mark.parametrize(
    "task, options, message",
    [
        ("open-drawer", {"object_xy": (-0.2, 0.2)}, "only supported for pick-can"),
        ("pick-can", {"object_xy": (0.5, 0.2)}, "outside"),
        ("pick-can", {"object_xy": (0.1,)}, "finite"),
        ("pick-can", {"episode_id": 1}, "pick-can has one pose"),
        ("open-drawer", {"episode_id": 9}, "episode_id"),
        ("pick-can", {"urdf_version": "recolor"}, "urdf_version"),
        ("pick-can", {"obj_init_options": {}}, "unknown reset options"),
    ],
)
def test_bad_reset_options_raise_before_the_sim_runs(layouts, task, options, message):
    env, inner = make_fake(task, layouts=layouts)
    with pytest.raises(ValueError, match=message):
        env.reset(seed=0, options=options)
    assert inner.resets == [] and inner.base.configure_calls == 0


@pytest.mark.core
def test_wider_position_range_accepts_the_paper_printed_x(layouts, assets):
    env, inner = make_fake(position_range="paper-printed", layouts=layouts, assets=assets)
    env.reset(seed=0, options={"object_xy": (0.1, 0.2)})
    np.testing.assert_array_equal(inner.resets[-1][1]["obj_init_options"]["init_xy"], [0.1, 0.2])


@pytest.mark.core
def test_step_rejects_bad_actions_and_close_closes(layouts, assets):
    env, inner = make_fake(layouts=layouts, assets=assets)
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

"""The embedded Meta-World backend: gymnasium contract, images, can placement, success and horizon."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("metaworld")

import gymnasium as gym  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from razor_robot.envs import GYM_IDS, TASKS, make_env  # noqa: E402
from razor_robot.envs.metaworld_backend import CAN_REST_Z, MAX_MESH_FACES  # noqa: E402

LIFT = np.array([0.0, 0.0, 0.0, 1.0], np.float32)


@pytest.fixture
def pick_env():
    env = make_env("pick-can")
    yield env
    env.close()


def _red_mask(image: np.ndarray) -> np.ndarray:
    img = image.astype(int)
    return (img[..., 0] > 150) & (img[..., 1] < 70) & (img[..., 2] < 70)


@pytest.mark.parametrize("task", TASKS)
def test_check_env_passes(task):
    env = make_env(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", [64, 128])
def test_observation_and_upright_image(task, size):
    env = make_env(task, image_size=size)
    obs, info = env.reset(seed=0)
    env.close()
    image, state = obs["image"], obs["state"]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert state.shape == (39,) and state.dtype == np.float32
    assert info["instruction"] == env.task_spec.instruction and info["success"] is False
    # Upright: the brown table fills the bottom quarter, grey robot/floor the top quarter (R-B of wood ~38).
    brown = lambda rows: float((rows[..., 0].astype(int) - rows[..., 2].astype(int)).mean())  # noqa: E731
    assert brown(image[-size // 4 :]) > 25 > 8 > brown(image[: size // 4])


def test_can_placed_exactly_and_visible(pick_env):
    centroids = []
    for xy in [(-0.15, 0.55), (0.15, 0.75)]:
        obs, info = pick_env.reset(seed=0, options={"object_xy": xy})
        can = pick_env.unwrapped._inner.data.body("obj").xpos
        np.testing.assert_allclose(can, [xy[0], xy[1], CAN_REST_Z], atol=1e-9)
        np.testing.assert_allclose(obs["state"][4:7], [xy[0], xy[1], CAN_REST_Z], atol=1e-6)
        np.testing.assert_array_equal(info["object_xy"], xy)
        red = _red_mask(obs["image"])
        assert red.sum() >= 6, "the can must stand out at 64 px"
        centroids.append(np.argwhere(red).mean(axis=0))
    assert np.linalg.norm(centroids[0] - centroids[1]) > 10  # pixels: the red blob is the can


def test_a_config_camera_moves_the_view(pick_env):
    """`env: {camera: {...}}` in a config: a closer camera shows the can bigger than the default view does."""
    xy = {"object_xy": (0.0, 0.65)}
    default = _red_mask(pick_env.reset(seed=0, options=xy)[0]["image"]).sum()
    near = make_env("pick-can", camera={"lookat": [0.02, 0.68, 0.06], "distance": 0.65, "elevation": -50.0})
    assert near.unwrapped.camera.lookat == (0.02, 0.68, 0.06) and near.unwrapped.camera.azimuth == 180.0
    closer = _red_mask(near.reset(seed=0, options=xy)[0]["image"]).sum()
    near.close()
    assert closer > 1.5 * default


@pytest.mark.parametrize("task", ["open-drawer", "close-drawer"])
def test_drawers_have_no_red_and_seeded_placement(task):
    env = make_env(task)
    a, _ = env.reset(seed=3)
    b, info = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    env.close()
    np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["state"][4] != c["state"][4]  # the drawer's x comes from Meta-World's seeded reset space
    assert info["object_xy"] is None and _red_mask(a["image"]).sum() == 0


def _lift_then_drop(env):
    """Scripted pick-can episode: expert until the can is lifted, then open the gripper and let it fall."""
    from razor_robot.policies.demonstrators import make_demonstrator

    expert = make_demonstrator("pick-can")
    obs, info = env.reset(seed=0, options={"object_xy": (0.0, 0.65)})
    history, lifted_at = [], None
    for t in range(env.unwrapped.task_spec.horizon):
        action = expert.act(obs) if lifted_at is None or t < lifted_at + 2 else -LIFT
        obs, reward, terminated, truncated, info = env.step(action)
        history.append((reward, terminated, truncated, info))
        if info["success"] and lifted_at is None:
            lifted_at = t
    return history, lifted_at


@pytest.mark.parametrize("mode", ["final", "any"])
def test_success_flag_semantics_on_a_scripted_episode(mode):
    env = make_env("pick-can", success_mode=mode)
    history, lifted_at = _lift_then_drop(env)
    env.close()
    assert lifted_at is not None and 5 < lifted_at < 25
    successes = [info["success"] for _, _, _, info in history]
    assert all(isinstance(s, bool) for s in successes)
    assert [r for r, *_ in history] == [float(s) for s in successes]
    assert successes[lifted_at] and successes[lifted_at + 1] and not successes[-1]  # dropped at the end
    assert not any(term for _, term, _, _ in history)
    assert [trunc for _, _, trunc, _ in history] == [False] * 29 + [True]
    assert all("episode_success" not in info for *_, info in history[:-1])
    assert history[-1][3]["episode_success"] is (mode == "any")


def test_expert_episode_succeeds_at_final_step(pick_env):
    from razor_robot.policies.demonstrators import make_demonstrator

    expert = make_demonstrator("pick-can")
    obs, _ = pick_env.reset(seed=1, options={"object_xy": (0.1, 0.6)})
    truncated = False
    while not truncated:
        obs, _, _, truncated, info = pick_env.step(expert.act(obs))
    assert info["success"] and info["episode_success"]
    assert obs["state"][6] - CAN_REST_Z >= 0.04


def test_horizon_truncation_and_step_after_end(pick_env):
    pick_env.reset(seed=0)
    for t in range(1, 31):
        _, _, terminated, truncated, _ = pick_env.step(np.zeros(4, np.float32))
        assert terminated is False and truncated is (t == 30)
    with pytest.raises(RuntimeError, match="reset"):
        pick_env.step(np.zeros(4, np.float32))
    pick_env.reset()
    pick_env.step(np.zeros(4, np.float32))  # a new episode starts cleanly


def test_bad_inputs_fail_with_one_line_value_errors(pick_env):
    cases = [
        (lambda: pick_env.reset(options={"object_xy": (0.5, 0.6)}), "outside the metaworld range"),
        (lambda: pick_env.reset(options={"obj_xy": (0.0, 0.6)}), "unknown reset options"),
        (lambda: make_env("pick-can", image_size=0), "image_size"),
        (lambda: make_env("pick-can", success_mode="median"), "success_mode"),
        (lambda: make_env("pick-can", action_repeat=0), "action_repeat"),
        (lambda: make_env("pick-can", camera={"zoom": 2}), "unknown camera field(s) ['zoom']"),
        (lambda: make_env("pick-can", camera={"lookat": [0, 0.7]}), "camera.lookat must be 3 numbers"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError) as excinfo:
            call()
        assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)
    pick_env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        pick_env.step(np.zeros(3, np.float32))
    drawer = make_env("open-drawer")
    with pytest.raises(ValueError, match="only supported for pick-can"):
        drawer.reset(options={"object_xy": (0.0, 0.6)})
    drawer.close()


@pytest.mark.parametrize("task", TASKS)
def test_gymnasium_ids(task):
    env = gym.make(GYM_IDS[task], backend="metaworld", image_size=32)
    obs, info = env.reset(seed=0)
    env.close()
    assert obs["image"].shape == (32, 32, 3) and info["instruction"] == env.unwrapped.task_spec.instruction


def test_robot_drawn_without_high_poly_meshes(pick_env):
    import mujoco

    model = pick_env.unwrapped._inner.model
    hidden = 3
    drawn_faces = [
        model.mesh_facenum[model.geom_dataid[g]]
        for g in range(model.ngeom)
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH and model.geom_group[g] < hidden
        and model.geom_rgba[g, 3] > 0
    ]
    assert max(drawn_faces) <= MAX_MESH_FACES  # the table mesh (308 faces) is the largest left


def _own_renderer_image(env) -> np.ndarray:
    """The frame a mujoco.Renderer of the env's own (one GL context per env) would draw."""
    import mujoco

    from razor_robot.envs.metaworld_backend import HIDDEN_GROUP

    renderer = mujoco.Renderer(env._inner.model, env.image_size, env.image_size)
    try:
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        option = mujoco.MjvOption()
        option.sitegroup[:] = 0
        option.geomgroup[HIDDEN_GROUP] = 0
        renderer.update_scene(env._inner.data, camera=env.camera.to_mjv(), scene_option=option)
        return renderer.render()
    finally:
        renderer.close()


def test_shared_gl_context_renders_what_a_renderer_per_env_renders():
    # Envs of several tasks and sizes interleaved in one process, all drawing through one GL context.
    envs = [make_env(task, image_size=size) for task in TASKS for size in (64, 96)]
    try:
        rng = np.random.default_rng(0)
        for step in range(3):
            for i, env in enumerate(envs):
                if step == 0:
                    obs, _ = env.reset(seed=i)
                else:
                    obs, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
                np.testing.assert_array_equal(obs["image"], _own_renderer_image(env))
    finally:
        for env in envs:
            env.close()


@pytest.mark.parametrize("task", TASKS)
def test_lean_action_repeat_equals_plain_meta_world_steps(task):
    """The repeats before the last skip Meta-World's observation/reward code; nothing else may change."""

    def run(plain: bool):
        env = make_env(task)
        if plain:
            env.unwrapped._substep = lambda action, last: env.unwrapped._inner.step(action)
        rng, out = np.random.default_rng(1), []
        for episode in range(2):
            obs, _ = env.reset(seed=episode, options={"object_xy": (0.05, 0.6)} if task == "pick-can" else None)
            for _ in range(env.task_spec.horizon):
                obs, reward, _, _, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
                out.append((obs["image"], obs["state"], reward, info["success"]))
        env.close()
        return out

    for (image, state, reward, success), plain in zip(run(False), run(True)):
        np.testing.assert_array_equal(image, plain[0])
        np.testing.assert_array_equal(state, plain[1])
        assert (reward, success) == (plain[2], plain[3])


def test_a_bad_config_camera_fails_the_sweep_in_one_line_before_work(tmp_path, capsys):
    from pathlib import Path

    from razor_robot.cli import main

    config = str(Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml")
    out = tmp_path / "out"
    assert main(["sweep", config, "--out", str(out), "--set", "env.camera={zoom: 2}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown camera field(s) ['zoom']" in err
    assert not (out / "results.jsonl").exists() and not (out / "base").exists()

"""Embedded default backend: the three tasks on Meta-World v3 (MuJoCo), CPU only.

- open-drawer / close-drawer: Meta-World's drawer-open-v3 / drawer-close-v3 scenes and success tests; the
  drawer's x position is drawn from Meta-World's own reset space with the env's seeded generator.
- pick-can: Meta-World's pick-place-v3 scene turned into "lift the can": the puck is replaced by the
  project's can (assets/can.xml) and success = can at least LIFT_HEIGHT above its resting height while
  both gripper pads touch it (SimplerEnv's lift criterion). reset(options={"object_xy": (x, y)}) places the
  can exactly there; the expert's waypoint (Meta-World's "goal") sits straight above the can.

Each policy step repeats the action for `action_repeat` Meta-World control steps (each 5 physics steps of
2.5 ms), so episodes are short (core.HORIZONS) while the scripted experts still finish. Measured with
scripts/bench_envs.py --experts 100 (action_repeat 4, horizon 30): pick-can 100/100 final-step successes on
eval_positions(100, seed=0), first success at step median 13 / max 22; open-drawer 100/100 seeds (22 / 23);
close-drawer 100/100 (20 / 20).

Rendering: one mujoco.Renderer per env, a fixed free camera (images come out upright), shadows and
reflections off, sites hidden. The Sawyer's visual meshes (~67k triangles, which cost ~19 ms a frame in
software EGL) are swapped for boxes fitted to each mesh's bounding box, painted grey so the red can stands
out; gripper fingers, can and drawer keep their own geometry. Visual geoms never collide, so physics is
unchanged.
"""

from __future__ import annotations

import atexit
import ctypes.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np


def _choose_gl_backend() -> None:
    """Pick headless OpenGL before mujoco is imported: EGL if present, else OSMesa; keep a user's choice."""
    if "MUJOCO_GL" in os.environ:
        return
    if ctypes.util.find_library("EGL"):
        os.environ["MUJOCO_GL"] = "egl"
    elif ctypes.util.find_library("OSMesa"):
        os.environ["MUJOCO_GL"] = "osmesa"


_choose_gl_backend()

from .core import (  # noqa: E402
    METAWORLD_ACTION_REPEAT,
    MissingDependencyError,
    TaskSpec,
    check_image_size,
    check_object_xy,
    check_success_mode,
    check_task,
    task_spec,
    VIEWER_KEY,
)

try:  # noqa: E402
    import gymnasium as gym
    import mujoco
    from gymnasium import spaces
    from metaworld.envs.sawyer_drawer_close_v3 import SawyerDrawerCloseEnvV3
    from metaworld.envs.sawyer_drawer_open_v3 import SawyerDrawerOpenEnvV3
    from metaworld.envs.sawyer_pick_place_v3 import SawyerPickPlaceEnvV3
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "metaworld", "install the Meta-World backend with: pip install 'razor-robot[metaworld]'"
    ) from exc

ASSETS = Path(__file__).resolve().parent / "assets"
CAN_REST_Z = 0.045
"""Height of the can's centre when it stands on the table (half its 9 cm height; table top is z=0)."""
LIFT_HEIGHT = 0.04
"""pick-can succeeds when the can is this far above its resting height while gripped."""
GOAL_LIFT = 0.15
"""The expert's waypoint is this far above the can's resting centre (well above LIFT_HEIGHT)."""
STATE_DIM = 39
STATE_BOUND = 10.0
ROBOT_GREY = (0.55, 0.56, 0.6, 1.0)
MAX_MESH_FACES = 500
"""Robot meshes with more faces than this are not drawn as meshes (see simplify_robot_visuals)."""
HIDDEN_GROUP = 3
"""Geom group the renderer never shows (MuJoCo's default MjvOption shows groups 0-2 only)."""


@dataclass(frozen=True)
class CameraView:
    """A fixed MuJoCo free camera; every task uses the same view so one policy sees one scene layout."""

    lookat: Tuple[float, float, float] = (0.0, 0.72, 0.05)
    """World point the camera looks at (between the can area and the drawer)."""
    distance: float = 1.0
    """Camera distance from lookat in metres."""
    azimuth: float = 180.0
    """Degrees; 180 looks from the +x side of the table across it, so the drawer slides sideways in view."""
    elevation: float = -40.0
    """Degrees below the horizon."""

    @classmethod
    def of(cls, value: Any) -> "CameraView":
        """A view from a config: None (the default view), a CameraView, or a mapping of its fields."""
        if value is None or isinstance(value, CameraView):
            return value or cls()
        if not isinstance(value, dict):
            raise ValueError(f"camera must be a mapping of {sorted(cls.__dataclass_fields__)}, got {value!r}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown camera field(s) {unknown}; expected some of {sorted(cls.__dataclass_fields__)}")
        fields = dict(value)
        if "lookat" in fields:
            fields["lookat"] = tuple(float(v) for v in fields["lookat"])
            if len(fields["lookat"]) != 3:
                raise ValueError(f"camera.lookat must be 3 numbers (x, y, z), got {value['lookat']!r}")
        return cls(**fields)

    def to_mjv(self) -> "mujoco.MjvCamera":
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = self.lookat
        cam.distance = self.distance
        cam.azimuth = self.azimuth
        cam.elevation = self.elevation
        return cam


VIEWER_CAMERA = CameraView(lookat=(0.0, 0.68, 0.08), distance=0.85, azimuth=145.0, elevation=-28.0)
"""The videos' camera: closer and from the side, so a person sees the gripper close on the can; never the
policy's input."""


# --------------------------------------------------------------------------------------------- pick-can scene
def _pick_can_xml() -> str:
    """The pick-can MJCF with absolute include paths (see assets/sawyer_pick_can.xml)."""
    import metaworld

    mw_assets = Path(metaworld.__file__).resolve().parent / "assets"
    text = (ASSETS / "sawyer_pick_can.xml").read_text()
    return text.replace("__METAWORLD_ASSETS__", str(mw_assets)).replace("__RAZOR_ASSETS__", str(ASSETS))


_COMPILED: Dict[str, "mujoco.MjModel"] = {}


def _compiled_model(key: str, compile_model: Any) -> "mujoco.MjModel":
    """A fresh copy of a scene's compiled MjModel: compiling Meta-World's MJCF costs ~0.12 s, a copy ~0.01 s,
    and a worker builds one env per (slot, task). The cached model is never touched (each env changes its own
    copy: visuals, drawer placement)."""
    import copy

    if key not in _COMPILED:
        _COMPILED[key] = compile_model()
    return copy.copy(_COMPILED[key])


class _CachedSimulation:
    """Mixin for Meta-World envs: the MjModel comes from the per-process cache (see _compiled_model)."""

    def _initialize_simulation(self) -> Tuple["mujoco.MjModel", "mujoco.MjData"]:
        model = _compiled_model(type(self).__name__, lambda: mujoco.MjModel.from_xml_path(self.fullpath))
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)


class _DrawerOpenEnv(_CachedSimulation, SawyerDrawerOpenEnvV3):
    """Meta-World's drawer-open-v3, unchanged but for the cached model."""


class _DrawerCloseEnv(_CachedSimulation, SawyerDrawerCloseEnvV3):
    """Meta-World's drawer-close-v3, unchanged but for the cached model."""


class SawyerPickCanEnv(SawyerPickPlaceEnvV3):
    """Meta-World pick-place with the project's can and a lift success test.

    The random vector is (can x, y, z, goal x, y, z); it is always frozen by MetaWorldTaskEnv, and unlike
    pick-place's reset there is no resampling loop (the goal sits straight above the can on purpose).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Meta-World clips the state to its observation space, whose goal box comes from goal_space; the
        # lift waypoint sits above any can position, so widen it from pick-place's (y >= 0.8) box.
        self.goal_space = spaces.Box(
            np.array([-0.3, 0.4, 0.0]), np.array([0.3, 0.9, 0.4]), dtype=np.float64
        )

    @property
    def model_name(self) -> str:
        return str(ASSETS / "sawyer_pick_can.xml")

    def _initialize_simulation(self) -> Tuple["mujoco.MjModel", "mujoco.MjData"]:
        # The template's includes need absolute paths, so compile from a string instead of the file.
        model = _compiled_model(type(self).__name__, lambda: mujoco.MjModel.from_xml_string(_pick_can_xml()))
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def reset_model(self) -> np.ndarray:
        self._reset_hand()
        rand_vec = np.asarray(self._get_state_rand_vec(), dtype=np.float64)
        self.obj_init_pos = rand_vec[:3].copy()
        self._target_pos = rand_vec[3:].copy()
        self._set_obj_xyz(self.obj_init_pos)
        self.model.site("goal").pos = self._target_pos
        self.init_tcp = self.tcp_center
        self.init_left_pad = self.get_body_com("leftpad").copy()
        self.init_right_pad = self.get_body_com("rightpad").copy()
        self.objHeight = self.data.geom("objGeom").xpos[2]
        return self._get_obs()

    def evaluate_state(self, obs: np.ndarray, action: np.ndarray) -> Tuple[float, Dict[str, Any]]:
        assert self.obj_init_pos is not None
        lift = float(obs[6] - self.obj_init_pos[2])
        gripped = bool(self.touching_main_object)
        success = lift >= LIFT_HEIGHT and gripped
        return float(success), {"success": success, "lift": lift, "grasped": gripped}


_INNER_ENVS = {
    "pick-can": SawyerPickCanEnv,
    "open-drawer": _DrawerOpenEnv,
    "close-drawer": _DrawerCloseEnv,
}


def _make_inner(task: str) -> Any:
    """A Meta-World env with the goal visible in the state (its experts read it) and a frozen rand vec."""
    inner = _INNER_ENVS[task]()
    inner._partially_observable = False
    # sawyer_observation_space is a cached_property: drop it so it is rebuilt for the visible goal.
    inner.__dict__.pop("sawyer_observation_space", None)
    inner._set_task_called = True
    inner._freeze_rand_vec = True
    return inner


# ------------------------------------------------------------------------------------------- light rendering
def simplify_robot_visuals(model: "mujoco.MjModel") -> int:
    """Make the Sawyer cheap to draw and grey; returns how many high-poly meshes were replaced or hidden.

    Robot geoms are those of bodies under "base". A visual-only mesh (contype = conaffinity = 0) with more
    than MAX_MESH_FACES faces becomes its bounding box. A colliding high-poly mesh (the wrist link and the
    gripper base) must keep its shape for physics, so it moves to HIDDEN_GROUP and the body's invisible
    primitive proxy (a cylinder Meta-World ships with alpha 0) is shown instead. The finger pads keep
    their colours; everything else on the robot turns grey so the red can is the only red thing in view.
    """
    robot_bodies = _subtree_bodies(model, "base")
    changed = 0
    for g in range(model.ngeom):
        if model.geom_bodyid[g] not in robot_bodies:
            continue
        collides = bool(model.geom_contype[g] or model.geom_conaffinity[g])
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH:
            mesh = model.geom_dataid[g]
            if model.mesh_facenum[mesh] > MAX_MESH_FACES:
                if collides:
                    model.geom_group[g] = HIDDEN_GROUP
                    _show_proxies(model, model.geom_bodyid[g])
                else:
                    _mesh_to_box(model, g, mesh)
                changed += 1
        if not collides and model.geom_rgba[g, 3] > 0:
            model.geom_rgba[g] = ROBOT_GREY
            model.geom_matid[g] = -1
    return changed


def _show_proxies(model: "mujoco.MjModel", body: int) -> None:
    """Show a body's invisible primitive visual geoms (alpha 0) in grey."""
    for g in range(model.ngeom):
        primitive = model.geom_type[g] != mujoco.mjtGeom.mjGEOM_MESH
        if model.geom_bodyid[g] == body and primitive and model.geom_rgba[g, 3] == 0:
            model.geom_rgba[g] = ROBOT_GREY


def _subtree_bodies(model: "mujoco.MjModel", root: str) -> set:
    root_id = model.body(root).id
    bodies = {root_id}
    for b in range(model.nbody):  # parents always precede children in MuJoCo's body order
        if model.body_parentid[b] in bodies and b != 0:
            bodies.add(b)
    return bodies


def _mesh_to_box(model: "mujoco.MjModel", g: int, mesh: int) -> None:
    start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
    verts = model.mesh_vert[start : start + count]  # (V, 3) in the geom frame
    low, high = verts.min(axis=0), verts.max(axis=0)
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, model.geom_quat[g])
    model.geom_pos[g] = model.geom_pos[g] + rot.reshape(3, 3) @ ((low + high) / 2)
    model.geom_type[g] = mujoco.mjtGeom.mjGEOM_BOX
    model.geom_size[g] = (high - low) / 2
    model.geom_dataid[g] = -1


class _SharedGL:
    """The process's one offscreen GL context and one MuJoCo render context per scene layout.

    A software GL context (Mesa llvmpipe) costs ~70-140 MB of resident memory, so one per env would make a
    worker holding a dozen envs weigh gigabytes. Envs of one task share a scene layout (the same compiled
    MJCF and the same visual simplification), so they can share one ``MjrContext`` (the uploaded meshes and
    textures): each env keeps only its own ``MjvScene``, built from its own model and data. Rendering through
    the shared context gives images bit-identical to a ``mujoco.Renderer`` per env (tests/test_metaworld_env.py).
    """

    _instance: Optional["_SharedGL"] = None

    def __init__(self) -> None:
        from mujoco import gl_context

        self._gl = gl_context.GLContext(MAX_SHARED_SIZE, MAX_SHARED_SIZE)
        self._contexts: Dict[Tuple[str, int], "mujoco.MjrContext"] = {}
        # mujoco's own atexit hook terminates the EGL display; free our contexts first (hooks run LIFO).
        atexit.register(self.close)

    @classmethod
    def get(cls) -> "_SharedGL":
        if cls._instance is None:
            cls._instance = _SharedGL()
        return cls._instance

    def context(self, layout: Tuple[str, int], model: "mujoco.MjModel") -> "mujoco.MjrContext":
        """The render context of a scene layout (task, image size), made from the first model that asks."""
        if layout not in self._contexts:
            self._gl.make_current()
            context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, context)
            self._contexts[layout] = context
        return self._contexts[layout]

    def make_current(self) -> None:
        self._gl.make_current()

    def close(self) -> None:
        for context in self._contexts.values():
            context.free()
        self._contexts.clear()
        if self._gl is not None:
            self._gl.free()
            self._gl = None
        _SharedGL._instance = None


MAX_SHARED_SIZE = 1024
"""Side of the shared GL context's default framebuffer (images render into each layout's offscreen buffer)."""


class _FrameRenderer:
    """Renders one env's MjData through the process's shared GL context with the project's fixed camera."""

    def __init__(self, model: "mujoco.MjModel", size: int, view: CameraView, layout: str) -> None:
        # The offscreen buffer only needs the image's size; MuJoCo's default (640 x 480) costs read-back time.
        model.vis.global_.offwidth = size
        model.vis.global_.offheight = size
        self._model = model
        self._shared = _SharedGL.get()
        self._context = self._shared.context((layout, size), model)
        # Room for the model's geoms and MuJoCo's decorations; mujoco.Renderer's 10,000 cost 4 MB per env.
        self._scene = mujoco.MjvScene(model, maxgeom=2 * model.ngeom + 100)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._rect = mujoco.MjrRect(0, 0, size, size)
        self._camera = view.to_mjv()
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0  # goal markers would leak the answer into the image
        self._option.geomgroup[HIDDEN_GROUP] = 0
        self._pixels = np.empty((size, size, 3), np.uint8)

    def render(self, data: "mujoco.MjData") -> np.ndarray:
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL.value, self._scene)
        self._shared.make_current()
        # Contexts of other layouts share the GL context and rebind its framebuffer: bind ours every time.
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._context)
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._pixels, None, self._rect, self._context)
        return np.flipud(self._pixels).copy()  # (H, W, 3) uint8, row 0 = top of the image

    def close(self) -> None:
        """Nothing per env to free: the GL and render contexts belong to the process."""


# ------------------------------------------------------------------------------------------------ the env
def _state_space(inner: Any) -> "spaces.Box":
    """Meta-World's own state bounds (it clips to them), with its unbounded object entries capped at
    +-STATE_BOUND: positions are metres within the workspace and quaternions lie in [-1, 1]."""
    box = inner.sawyer_observation_space
    low = np.maximum(box.low, -STATE_BOUND).astype(np.float32)
    high = np.minimum(box.high, STATE_BOUND).astype(np.float32)
    return spaces.Box(low, high, dtype=np.float32)


class MetaWorldTaskEnv(gym.Env):
    """One razor-robot task on Meta-World; follows the contract in docs/ARCHITECTURE.md.

    >>> env = MetaWorldTaskEnv("pick-can")  # doctest: +SKIP
    >>> obs, info = env.reset(seed=0, options={"object_xy": (0.0, 0.65)})  # doctest: +SKIP
    >>> obs["image"].shape, obs["state"].shape, info["instruction"]  # doctest: +SKIP
    ((64, 64, 3), (39,), 'pick coke can')
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "pick-can",
        *,
        image_size: int = 64,
        success_mode: str = "final",
        action_repeat: Optional[int] = None,
        camera: Optional[CameraView | Dict[str, Any]] = None,
        render_mode: Optional[str] = None,
        viewer_size: Optional[int] = None,
        viewer_camera: Optional[CameraView] = None,
    ) -> None:
        self.task_spec: TaskSpec = task_spec(check_task(task), "metaworld")
        self.image_size = check_image_size(image_size)
        self.success_mode = check_success_mode(success_mode)
        self.action_repeat = METAWORLD_ACTION_REPEAT[task] if action_repeat is None else int(action_repeat)
        if self.action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.camera = CameraView.of(camera)
        # A second render of the same state for videos: its own camera and size, after the policy's image.
        self.viewer_size = None if viewer_size is None else check_image_size(viewer_size)
        self.viewer_camera = viewer_camera or VIEWER_CAMERA
        self._viewer: Optional[_FrameRenderer] = None

        self._inner = _make_inner(task)
        # Meta-World refuses to step past its own max_path_length; ours is the binding horizon.
        self._inner.max_path_length = self.task_spec.horizon * self.action_repeat + 1
        simplify_robot_visuals(self._inner.model)
        self._renderer: Optional[_FrameRenderer] = None

        size = self.image_size
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
                "state": _state_space(self._inner),
                **({} if self.viewer_size is None else
                   {VIEWER_KEY: spaces.Box(0, 255, (self.viewer_size, self.viewer_size, 3), np.uint8)}),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (self.task_spec.action_dim,), np.float32)
        self._t = 0
        self._any_success = False
        self._state = np.zeros(STATE_DIM, np.float32)
        self._episode_started = False

    # -- gymnasium API ---------------------------------------------------------------------------------
    def reset(
        self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"object_xy"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['object_xy']")
        object_xy = check_object_xy(options.get("object_xy"), self.task_spec)
        self._inner._last_rand_vec = self._rand_vec(object_xy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's mujoco env warns about Meta-World's reset signature
            state, _ = self._inner.reset()
        self._t, self._any_success, self._episode_started = 0, False, True
        self._state = state.astype(np.float32)
        info = {
            "instruction": self.task_spec.instruction,
            "object_xy": None if self.task_spec.task != "pick-can" else self._inner.obj_init_pos[:2].copy(),
            "success": False,
        }
        return self._obs(), info

    def step(self, action: Any) -> Tuple[Dict[str, np.ndarray], float, bool, bool, Dict[str, Any]]:
        if not self._episode_started:
            raise RuntimeError("call reset() before step(), and again after the episode is truncated")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape or not np.all(np.isfinite(a)):
            shape = self.action_space.shape
            raise ValueError(f"action must be a finite array of shape {shape}, got {action!r}")
        for k in range(self.action_repeat - 1):
            self._substep(a, last=k == self.action_repeat - 2)
        state, _, _, _, inner_info = self._inner.step(a)
        success = bool(inner_info["success"])
        self._state = state.astype(np.float32)
        self._t += 1
        self._any_success = self._any_success or success
        truncated = self._t >= self.task_spec.horizon
        info: Dict[str, Any] = {"success": success}
        if truncated:
            info["episode_success"] = self._any_success if self.success_mode == "any" else success
            self._episode_started = False
        return self._obs(), float(success), False, truncated, info

    def render(self) -> Optional[np.ndarray]:
        if self.render_mode != "rgb_array":
            return None
        return self._image()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._inner.close()
        super().close()

    # -- helpers ---------------------------------------------------------------------------------------
    def _substep(self, action: np.ndarray, last: bool) -> None:
        """One repeated control step without Meta-World's observation and reward code.

        Meta-World's step() spends ~0.4 ms per call in Python building the 39-d observation and the reward,
        ~8x its physics; the repeats before the last one need only the physics. This is step() up to its
        mj_forward (mocap target, gripper control, frame_skip physics steps, path length, goal sites), so the
        simulation follows exactly the same states. The last repeat before the final step() records the hand
        and object part of the observation, which Meta-World frame-stacks into the next observation. Equality
        with plain step() calls is tested in tests/test_metaworld_env.py.
        """
        inner = self._inner
        inner.set_xyz_action(action[:3])
        inner.do_simulation([action[-1], -action[-1]], n_frames=inner.frame_skip)
        inner.curr_path_length += 1
        for site in inner._target_site_config:
            inner._set_pos_site(*site)
        mujoco.mj_forward(inner.model, inner.data)
        if last:
            inner._prev_obs = inner._get_curr_obs_combined_no_goal()

    def _rand_vec(self, object_xy: Optional[np.ndarray]) -> np.ndarray:
        """The Meta-World random vector for this episode, drawn from self.np_random when not given."""
        if self.task_spec.task == "pick-can":
            if object_xy is None:
                (x0, x1), (y0, y1) = self.task_spec.x_range, self.task_spec.y_range
                object_xy = self.np_random.uniform([x0, y0], [x1, y1])
            x, y = object_xy
            return np.array([x, y, CAN_REST_Z, x, y, CAN_REST_Z + GOAL_LIFT])
        space = self._inner._random_reset_space
        return self.np_random.uniform(space.low, space.high)

    def _image(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = _FrameRenderer(self._inner.model, self.image_size, self.camera, self.task_spec.task)
        return self._renderer.render(self._inner.data)

    def _obs(self) -> Dict[str, np.ndarray]:
        obs = {"image": self._image(), "state": self._state.copy()}
        if self.viewer_size is not None:
            if self._viewer is None:
                self._viewer = _FrameRenderer(self._inner.model, self.viewer_size, self.viewer_camera,
                                              self.task_spec.task)
            obs[VIEWER_KEY] = self._viewer.render(self._inner.data)
        return obs

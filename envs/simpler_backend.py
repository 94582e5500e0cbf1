"""SimplerEnv backend (the paper path): ManiSkill2_real2sim Google-Robot tasks under razor-robot's contract.

SimplerEnv (``simpler_env`` + ``ManiSkill2_real2sim`` + SAPIEN 2.2.2) needs Python <= 3.11, numpy < 2,
gymnasium < 1.0 and a Vulkan GPU, so it lives in its own Python environment. This module imports without it;
:func:`make_simpler_env` raises :class:`MissingDependencyError` with the install recipe when it is absent.

Tasks and their SimplerEnv environments (max 80 / 113 policy steps, as in SimplerEnv's evaluation scripts):

    pick-can      GraspSingleOpenedCokeCanInScene-v0           "pick coke can"
    open-drawer   Open{,Top,Middle,Bottom}DrawerCustomInScene-v0   "open {top,middle,bottom} drawer"
    close-drawer  Close{,Top,Middle,Bottom}DrawerCustomInScene-v0  "close {top,middle,bottom} drawer"

Two evaluation settings, as in the SimplerEnv paper:

- ``"visual_matching"`` (default): the environments' own prepackaged configuration (what ``simpler_env.make``
  builds): real-image background overlay on the overhead camera, robot URDF recolouring drawn per episode,
  and for drawers one of nine real robot poses (A0..C2) with its matching overlay, drawn from the reset seed.
- ``"variant_aggregation"`` (the "base" variant of ``scripts/rt1_*_variant_agg.sh``): no overlay; the can
  scene ``google_pick_coke_can_1_v4`` with the robot at (0.35, 0.20); drawers in
  ``frl_apartment_stage_simple`` with ray tracing and the robot on a 3 x 3 grid x in [0.65, 0.85],
  y in [-0.2, 0.2], chosen by the reset option ``episode_id`` (0..8; default ``seed % 9``).

Observation: ``{"image": uint8 (H, W, 3) overhead-camera RGB resized to image_size (None keeps the native
512 x 640), "state": float32 (14,) = tcp pose (xyz, wxyz quaternion) + object pose (the can's centre of
mass, or the drawer link), both in the world frame}``. Action: float (7,) = end-effector xyz delta, rotation
delta as axis-angle, gripper (relative closing command; > 0 closes), exactly what SimplerEnv's RT-1 / OpenVLA
wrappers send (see ``razor_robot.policies.adapters``).

Example (inside the SimplerEnv Python environment)::

    from razor_robot.envs.simpler_backend import make_simpler_env
    env = make_simpler_env("pick-can", image_size=224, success_mode="final")
    obs, info = env.reset(seed=0, options={"object_xy": (-0.2, 0.2)})
    obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import gymnasium as gym
import numpy as np

from .core import (
    MissingDependencyError,
    TaskSpec,
    check_object_xy,
    check_success_mode,
    check_task,
    position_ranges,
    task_spec,
)

SETTINGS: Tuple[str, ...] = ("visual_matching", "variant_aggregation")
DRAWERS: Tuple[str, ...] = ("top", "middle", "bottom")
# SimplerEnv's coke-can orientations; the env keyword that selects each (None draws one per episode).
CAN_ORIENTATIONS: Dict[str, str] = {
    "horizontal": "lr_switch",
    "vertical": "laid_vertically",
    "standing": "upright",
}

GOOGLE_ROBOT = "google_robot_static"
GOOGLE_ROBOT_CONTROL_MODE = (
    "arm_pd_ee_delta_pose_align_interpolate_by_planner"
    "_gripper_pd_joint_target_delta_pos_interpolate_by_planner"
)
CAMERA_NAME = "overhead_camera"
NATIVE_IMAGE_HW: Tuple[int, int] = (512, 640)
STATE_DIM = 14
STATE_FIELDS: Tuple[str, ...] = (
    "tcp_x",
    "tcp_y",
    "tcp_z",
    "tcp_qw",
    "tcp_qx",
    "tcp_qy",
    "tcp_qz",
    "obj_x",
    "obj_y",
    "obj_z",
    "obj_qw",
    "obj_qx",
    "obj_qy",
    "obj_qz",
)

# Robot base orientation of every Google-Robot evaluation: sapien quaternion (w, x, y, z) = yaw of pi.
ROBOT_INIT_QUAT: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
PICK_CAN_ROBOT_XY: Tuple[float, float] = (0.35, 0.20)
# scripts/rt1_drawer_variant_agg.sh: --robot-init-x 0.65 0.85 3 --robot-init-y -0.2 0.2 3 (x-major loops).
DRAWER_ROBOT_XS: Tuple[float, ...] = (0.65, 0.75, 0.85)
DRAWER_ROBOT_YS: Tuple[float, ...] = (-0.2, 0.0, 0.2)
NUM_DRAWER_EPISODES = len(DRAWER_ROBOT_XS) * len(DRAWER_ROBOT_YS)

INSTALL_HINT = (
    "in a separate Python 3.10/3.11 env with a Vulkan GPU run `git clone --recurse-submodules "
    "https://github.com/simpler-env/SimplerEnv && pip install 'numpy<2' 'gymnasium<1.0' "
    "-e SimplerEnv/ManiSkill2_real2sim -e SimplerEnv` (see README)"
)


@dataclass(frozen=True)
class SimplerEnvConfig:
    """How to build one SimplerEnv task env; every field is checked in ``__post_init__``."""

    task: str
    """Task name, one of razor_robot.envs.TASKS."""
    image_size: Optional[Union[int, Tuple[int, int]]] = 224
    """Side of the square observation image, an (H, W) pair, or None for the native 512 x 640 frame."""
    success_mode: str = "final"
    """"final": episode success = success at the last step; "any": success at any step."""
    setting: str = "visual_matching"
    """SimplerEnv evaluation setting, one of SETTINGS (see the module docstring)."""
    drawer: Optional[str] = None
    """Drawer tasks: "top", "middle" or "bottom"; None lets each episode's seed pick one (as SimplerEnv)."""
    can_orientation: Optional[str] = None
    """pick-can: "horizontal", "vertical" or "standing"; None lets each episode's seed pick one."""
    ray_tracing: Optional[bool] = None
    """Ray-traced rendering (shader_dir="rt"); None = SimplerEnv's choice (drawers on, the can off)."""
    position_range: str = "default"
    """Name of the simpler can-position rectangle reset's object_xy must lie in (envs.POSITION_RANGES)."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the ManiSkill2 env (e.g. urdf_version, light_mode, station_name,
    scene_name); they override this module's choices. Under "visual_matching" the env's prepackaged values
    win."""

    def __post_init__(self) -> None:
        check_task(self.task)
        check_success_mode(self.success_mode)
        image_hw(self.image_size)
        if self.setting not in SETTINGS:
            raise ValueError(
                f"unknown SimplerEnv setting {self.setting!r}; expected one of {', '.join(SETTINGS)}"
            )
        if self.drawer is not None:
            if self.task == "pick-can":
                raise ValueError("drawer is an option of open-drawer / close-drawer, not pick-can")
            if self.drawer not in DRAWERS:
                raise ValueError(f"unknown drawer {self.drawer!r}; expected one of {', '.join(DRAWERS)}")
        if self.can_orientation is not None:
            if self.task != "pick-can":
                raise ValueError(f"can_orientation is an option of pick-can, not {self.task!r}")
            if self.can_orientation not in CAN_ORIENTATIONS:
                raise ValueError(
                    f"unknown can_orientation {self.can_orientation!r}; "
                    f"expected one of {', '.join(CAN_ORIENTATIONS)}"
                )
        position_ranges("simpler", self.position_range)
        if not isinstance(self.env_kwargs, Mapping):
            raise ValueError(f"env_kwargs must be a mapping, got {type(self.env_kwargs).__name__}")


def image_hw(image_size: Any) -> Optional[Tuple[int, int]]:
    """(H, W) of the observation image, None for native size; a one-line ValueError for anything else."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (16 <= h <= 2048 and 16 <= w <= 2048):
        raise ValueError(
            f"image_size must be None, an int or an (H, W) pair of ints in [16, 2048], got {image_size!r}"
        )
    return h, w


# ---------------------------------------------------------------------------------------------------------
# Building the ManiSkill2 env: ids and keyword arguments
# ---------------------------------------------------------------------------------------------------------


def simpler_env_id(task: str, drawer: Optional[str] = None) -> str:
    """ManiSkill2_real2sim env id of a task; a fixed drawer picks that drawer's env.

    >>> simpler_env_id("close-drawer", "top")
    'CloseTopDrawerCustomInScene-v0'
    """
    check_task(task)
    if task == "pick-can":
        return "GraspSingleOpenedCokeCanInScene-v0"
    verb = "Open" if task == "open-drawer" else "Close"
    which = "" if drawer is None else drawer.capitalize()
    return f"{verb}{which}DrawerCustomInScene-v0"


def build_env_kwargs(config: SimplerEnvConfig, horizon: int) -> Dict[str, Any]:
    """Keyword arguments for ``gym.make(simpler_env_id(...), **kwargs)``, matching SimplerEnv's evaluation."""
    kwargs: Dict[str, Any] = {"obs_mode": "rgbd", "max_episode_steps": horizon}
    if config.setting == "visual_matching":
        # The env sets robot, frequencies, control mode, scene, overlay and camera itself.
        kwargs["prepackaged_config"] = True
    else:
        kwargs.update(
            robot=GOOGLE_ROBOT,
            control_mode=GOOGLE_ROBOT_CONTROL_MODE,
            control_freq=3,
            sim_freq=513,
            scene_name="google_pick_coke_can_1_v4"
            if config.task == "pick-can"
            else "frl_apartment_stage_simple",
            camera_cfgs={"add_segmentation": True},
            rgb_overlay_path=None,
        )
    ray_tracing = config.task != "pick-can" if config.ray_tracing is None else config.ray_tracing
    if ray_tracing:
        kwargs["shader_dir"] = "rt"
    if config.can_orientation is not None:
        kwargs[CAN_ORIENTATIONS[config.can_orientation]] = True
    kwargs.update(config.env_kwargs)
    return kwargs


def drawer_robot_pose(episode_id: int) -> Tuple[Tuple[float, float], Tuple[float, float, float, float]]:
    """Robot base (xy, wxyz quaternion) of variant-aggregation drawer episode ``episode_id`` (x-major grid).

    >>> drawer_robot_pose(5)
    ((0.75, 0.2), (0.0, 0.0, 0.0, 1.0))
    """
    if isinstance(episode_id, bool) or not isinstance(episode_id, (int, np.integer)):
        raise ValueError(f"episode_id must be an int, got {episode_id!r}")
    if not 0 <= episode_id < NUM_DRAWER_EPISODES:
        raise ValueError(f"episode_id must be in [0, {NUM_DRAWER_EPISODES}), got {episode_id}")
    ix, iy = divmod(int(episode_id), len(DRAWER_ROBOT_YS))
    return (DRAWER_ROBOT_XS[ix], DRAWER_ROBOT_YS[iy]), ROBOT_INIT_QUAT


def robot_init_options(
    xy: Tuple[float, float], quat: Tuple[float, float, float, float]
) -> Dict[str, np.ndarray]:
    """ManiSkill2_real2sim ``robot_init_options``: base at ``xy`` with orientation ``quat`` (w, x, y, z)."""
    return {"init_xy": np.array(xy, dtype=np.float64), "init_rot_quat": np.array(quat, dtype=np.float64)}


def default_episode_id(seed: Optional[int], rng: np.random.Generator) -> int:
    """The drawer episode a reset uses when the caller names none: the seed's residue, else a random one."""
    if seed is None:
        return int(rng.integers(NUM_DRAWER_EPISODES))
    return int(seed) % NUM_DRAWER_EPISODES


def build_reset_options(
    config: SimplerEnvConfig, object_xy: Optional[np.ndarray], episode_id: Optional[int]
) -> Dict[str, Any]:
    """ManiSkill2_real2sim reset options: where the can goes and where the robot stands.

    ``object_xy`` must already be validated (pick-can only); ``episode_id`` is used by variant-aggregation
    drawers only. Under visual matching the env chooses the robot pose itself, so none is passed.
    """
    options: Dict[str, Any] = {"obj_init_options": {}}
    if object_xy is not None:
        options["obj_init_options"]["init_xy"] = np.array(object_xy, dtype=np.float64)
    if config.setting == "visual_matching":
        return options
    if config.task == "pick-can":
        options["robot_init_options"] = robot_init_options(PICK_CAN_ROBOT_XY, ROBOT_INIT_QUAT)
    else:
        options["robot_init_options"] = robot_init_options(*drawer_robot_pose(episode_id))
    return options


# ---------------------------------------------------------------------------------------------------------
# Reading observations
# ---------------------------------------------------------------------------------------------------------


def camera_rgb(maniskill_obs: Mapping[str, Any], camera_name: str = CAMERA_NAME) -> np.ndarray:
    """The uint8 (H, W, 3) RGB frame of one camera in a ManiSkill2 "rgbd" observation."""
    try:
        rgb = maniskill_obs["image"][camera_name]["rgb"]
    except KeyError:
        cameras = sorted(maniskill_obs.get("image", {}))
        raise ValueError(
            f"observation has no RGB image of camera {camera_name!r}; cameras: {cameras}"
        ) from None
    return np.asarray(rgb, dtype=np.uint8)[..., :3]


def resize_image(image: np.ndarray, hw: Optional[Tuple[int, int]]) -> np.ndarray:
    """Area-resample a uint8 (H, W, 3) image to (h, w, 3); None or the same size returns it unchanged.

    Box filtering is PIL's area averaging, the counterpart of the cv2.INTER_AREA resize that SimplerEnv's
    OpenVLA wrapper applies to the same frames.
    """
    if hw is None or tuple(image.shape[:2]) == tuple(hw):
        return np.ascontiguousarray(image)
    from PIL import Image

    resized = Image.fromarray(image).resize((hw[1], hw[0]), resample=Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.uint8)


def pose_vector(pose: Any) -> np.ndarray:
    """(7,) float64 [x, y, z, qw, qx, qy, qz] of a sapien.Pose (anything with ``.p`` and ``.q``)."""
    return np.concatenate([np.asarray(pose.p, dtype=np.float64), np.asarray(pose.q, dtype=np.float64)])


def object_pose(base_env: Any, task: str) -> np.ndarray:
    """(7,) world pose of the task's object: the can's centre of mass, or the episode's drawer link."""
    if task == "pick-can":
        return pose_vector(base_env.obj_pose)
    # Looked up by name each time: the env's own drawer_obj is bound when the scene is (re)built and goes
    # stale when a later reset draws another drawer without rebuilding.
    name = f"{base_env.drawer_id}_drawer"
    links = [link for link in base_env.art_obj.get_links() if link.name == name]
    if len(links) != 1:
        raise RuntimeError(f"cabinet has {len(links)} links named {name!r}")
    return pose_vector(links[0].pose)


def state_vector(maniskill_obs: Mapping[str, Any], obj_pose: np.ndarray) -> np.ndarray:
    """(14,) float32 diagnostic state: tcp pose (from obs["extra"]["tcp_pose"]) then the object pose."""
    tcp = np.asarray(maniskill_obs["extra"]["tcp_pose"], dtype=np.float64)
    return np.concatenate([tcp, obj_pose]).astype(np.float32)  # (7 + 7,)


def env_action(action: Any) -> np.ndarray:
    """Validate a 7-D Google-Robot action; float64 (7,) for the controllers, else a one-line ValueError."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (7,):
        raise ValueError(f"SimplerEnv Google-Robot action must have shape (7,), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"SimplerEnv action must be finite, got {a.tolist()}")
    return a


@dataclass
class SuccessTracker:
    """Per-episode success bookkeeping: the last step's flag and whether any step succeeded."""

    success_mode: str = "final"
    """"final" or "any" (see SimplerEnvConfig.success_mode)."""
    last: bool = False
    """Success flag of the latest step."""
    any: bool = False
    """Whether some step of this episode succeeded."""

    def reset(self) -> None:
        self.last = self.any = False

    def update(self, success: Any) -> bool:
        """Record one step's flag; returns it as a Python bool."""
        self.last = bool(success)
        self.any = self.any or self.last
        return self.last

    @property
    def episode_success(self) -> bool:
        return self.any if self.success_mode == "any" else self.last


# ---------------------------------------------------------------------------------------------------------
# The env
# ---------------------------------------------------------------------------------------------------------


class SimplerTaskEnv(gym.Env):
    """A ManiSkill2_real2sim Google-Robot env behind the razor-robot contract.

    Wraps an env made with ``gym.make(simpler_env_id(...), **build_env_kwargs(...))``. The inner env's
    ``terminated`` (SimplerEnv ends an episode on success) is ignored: episodes run the fixed horizon, and
    ``truncated`` is True at its last step, where info also carries ``"episode_success"``.
    """

    metadata = {"render_modes": []}

    def __init__(self, inner: Any, config: SimplerEnvConfig, spec: TaskSpec) -> None:
        self.inner = inner
        self.config = config
        self.task_spec = spec
        self._hw = image_hw(config.image_size)
        self._tracker = SuccessTracker(config.success_mode)
        self._t = 0
        self._ranges = position_ranges("simpler", config.position_range)
        h, w = self._hw or _native_hw(inner)
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            }
        )
        low, high = _action_bounds(inner)
        self.action_space = gym.spaces.Box(low, high, (7,), np.float32)

    @property
    def base_env(self) -> Any:
        """The ManiSkill2 env under gym's wrappers (it has the scene, robot and language instruction)."""
        return self.inner.unwrapped

    def _observe(self, maniskill_obs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        image = resize_image(camera_rgb(maniskill_obs), self._hw)
        return {
            "image": image,
            "state": state_vector(maniskill_obs, object_pose(self.base_env, self.config.task)),
        }

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"object_xy", "episode_id"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected object_xy, episode_id")
        xy = check_object_xy(options.get("object_xy"), self.task_spec, *self._ranges)
        episode_id = self._episode_id(options.get("episode_id"), seed)
        maniskill_obs, _ = self.inner.reset(
            seed=seed, options=build_reset_options(self.config, xy, episode_id)
        )
        self._t = 0
        self._tracker.reset()
        obs = self._observe(maniskill_obs)
        if xy is None and self.config.task == "pick-can":
            xy = obs["state"][7:9].astype(np.float64)  # where the env's own draw put the can
        info = {
            "instruction": str(self.base_env.get_language_instruction()),
            "object_xy": None if xy is None else np.array(xy, dtype=np.float64),
            "success": False,
        }
        return obs, info

    def _episode_id(self, episode_id: Optional[int], seed: Optional[int]) -> Optional[int]:
        if self.config.task == "pick-can" or self.config.setting == "visual_matching":
            if episode_id is not None:
                raise ValueError(
                    "episode_id selects the robot pose of variant_aggregation drawer episodes only; "
                    "under visual_matching the reset seed picks the episode"
                )
            return None
        if episode_id is None:
            return default_episode_id(seed, self.np_random)
        drawer_robot_pose(episode_id)  # validates
        return int(episode_id)

    def step(self, action: Any):
        maniskill_obs, _, _, _, inner_info = self.inner.step(env_action(action))
        self._t += 1
        success = self._tracker.update(inner_info["success"])
        truncated = self._t >= self.task_spec.horizon
        info: Dict[str, Any] = {"success": success}
        if truncated:
            info["episode_success"] = self._tracker.episode_success
        return self._observe(maniskill_obs), float(success), False, truncated, info

    def close(self) -> None:
        self.inner.close()


def _native_hw(inner: Any) -> Tuple[int, int]:
    """(H, W) of the overhead camera, read from the inner env's observation space."""
    try:
        shape = inner.observation_space["image"][CAMERA_NAME]["rgb"].shape
    except (KeyError, TypeError, AttributeError):
        return NATIVE_IMAGE_HW
    return int(shape[0]), int(shape[1])


def _action_bounds(inner: Any) -> Tuple[np.ndarray, np.ndarray]:
    space = getattr(inner, "action_space", None)
    if space is not None and getattr(space, "shape", None) == (7,):
        return np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    return np.full(7, -np.inf, np.float32), np.full(7, np.inf, np.float32)


def _import_simpler() -> None:
    """Import SimplerEnv and register ManiSkill2_real2sim's envs with gymnasium, or explain how to install."""
    for module in ("simpler_env", "mani_skill2_real2sim.envs"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(module.split(".")[0], INSTALL_HINT) from exc


def make_simpler_env(
    task: str,
    *,
    image_size: Optional[Union[int, Tuple[int, int]]] = 224,
    success_mode: str = "final",
    **options: Any,
) -> SimplerTaskEnv:
    """Build a SimplerEnv task env; ``options`` are the other fields of :class:`SimplerEnvConfig`.

    Arguments are checked before anything is imported; a missing SimplerEnv raises MissingDependencyError.
    """
    known = {f.name for f in dataclasses.fields(SimplerEnvConfig)} - {"task", "image_size", "success_mode"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(
            f"unknown simpler backend options {sorted(unknown)}; expected some of {sorted(known)}"
        )
    config = SimplerEnvConfig(task=task, image_size=image_size, success_mode=success_mode, **options)
    spec = task_spec(task, "simpler")
    _import_simpler()
    inner = gym.make(simpler_env_id(task, config.drawer), **build_env_kwargs(config, spec.horizon))
    return SimplerTaskEnv(inner, config, spec)

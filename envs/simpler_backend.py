"""SimplerEnv backend (the paper path): ManiSkill2_real2sim Google-Robot tasks under razor-robot's contract.

SimplerEnv (``simpler_env`` + ``ManiSkill2_real2sim`` + SAPIEN 2.2.2) needs Python <= 3.11, numpy < 2,
gymnasium < 1.0 and Vulkan, so it lives in its own Python environment. This module imports without it;
:func:`make_simpler_env` raises :class:`MissingDependencyError` with the install recipe when it is absent.

Tasks and their SimplerEnv environments (max 80 / 113 policy steps, as in SimplerEnv's evaluation scripts):

    pick-can      GraspSingleOpenedCokeCanInScene-v0               "pick coke can"
    open-drawer   Open{,Top,Middle,Bottom}DrawerCustomInScene-v0   "open {top,middle,bottom} drawer"
    close-drawer  Close{,Top,Middle,Bottom}DrawerCustomInScene-v0  "close {top,middle,bottom} drawer"

Two evaluation settings, as in the SimplerEnv paper:

- ``"visual_matching"`` (default): SimplerEnv's prepackaged configuration (what ``simpler_env.make`` builds,
  ``prepackaged_config=True``), written out here so that each value can be overridden: the real-image
  overlay on the overhead camera, the robot URDF recolouring (one of :data:`URDF_VERSIONS` per episode), the
  can scene ``google_pick_coke_can_1_v4`` with the robot at (0.35, 0.20), and for drawers the
  ``dummy_drawer`` scene, cabinet ``mk_station_recolor``, "simple" lighting and one of nine real robot poses
  A0..C2 (:data:`VISUAL_MATCHING_DRAWER_POSES`) with its matching overlay image.
- ``"variant_aggregation"`` (the "base" variant of ``scripts/rt1_*_variant_agg.sh``): no overlay, the plain
  robot; the can scene as above; drawers in ``frl_apartment_stage_simple`` with the robot on a 3 x 3 grid
  x in [0.65, 0.85], y in [-0.2, 0.2] (:data:`DRAWER_ROBOT_XS` x :data:`DRAWER_ROBOT_YS`).

Episodes. ``reset(seed, options)`` takes ``object_xy`` (pick-can: where the can is dropped), ``episode_id``
(drawers: the robot pose, 0..8; default ``seed % 9``) and, under visual matching, ``urdf_version`` (default:
``config.urdf_version``, else ``URDF_VERSIONS[seed % 4]`` for the can and ``URDF_VERSIONS[(seed // 9) % 4]``
for drawers, so seeds 0..35 run every drawer pose x URDF pair once). A new URDF rebuilds the scene
(~0.6 s), exactly as the prepackaged config does it. :func:`standard_drawer_episodes` lists SimplerEnv's
standard drawer evaluation (its scripts' episode set) as env options + reset options.

Deviation: ``ray_tracing=False``. SimplerEnv renders drawers ray-traced (``shader_dir="rt"``; the drawers'
prepackaged config even sets it itself). Ray tracing is very slow on GPUs without RT cores (A100/H100/H200,
SimplerEnv issues #84, #114) and never finishes a frame on a CPU renderer, so ``ray_tracing=False`` renders
drawers with the default rasteriser in both settings. Drawer numbers measured that way are not SimplerEnv's
published protocol and must say so.

Observation: ``{"image": uint8 (H, W, 3) overhead-camera RGB resized to image_size (None keeps the native
512 x 640), "state": float32 (14,) = TCP pose (xyz, wxyz quaternion) + object pose (the can's centre of
mass, or the drawer link), both in the world frame}``; with ``native_image=True`` also ``"image_native"``
uint8 (512, 640, 3), the frame RT-1 is fed in SimplerEnv. The TCP pose is read from the env's own TCP link
for every task (the drawer envs' ``obs["extra"]`` is empty). Resizing is cv2's ``INTER_AREA``, the resize
SimplerEnv's OpenVLA wrapper applies to the native frame, reimplemented bit-exactly (:func:`area_resize`).

Action: float (7,) = end-effector xyz delta (robot base frame), rotation delta as axis-angle, gripper
(relative closing command; > 0 closes), exactly what SimplerEnv's RT-1 / OpenVLA wrappers send (see
``razor_robot.policies.adapters``).

Example (inside the SimplerEnv Python environment)::

    from razor_robot.envs.simpler_backend import make_simpler_env
    env = make_simpler_env("pick-can", image_size=224, ray_tracing=False, can_scene="dummy_tabletop")
    obs, info = env.reset(seed=0, options={"object_xy": (-0.2, 0.2)})
    obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

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
URDF_VERSIONS: Tuple[str, ...] = (
    "",
    "recolor_tabletop_visual_matching_1",
    "recolor_tabletop_visual_matching_2",
    "recolor_cabinet_visual_matching_1",
)
"""Robot URDF variants of visual matching, in the prepackaged config's order ("" = the plain robot)."""

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
RESET_OPTIONS: Tuple[str, ...] = ("object_xy", "episode_id", "urdf_version")

# Robot base orientation of every Google-Robot evaluation: sapien quaternion (w, x, y, z) = yaw of pi.
ROBOT_INIT_QUAT: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
PICK_CAN_ROBOT_XY: Tuple[float, float] = (0.35, 0.20)
# scripts/rt1_drawer_variant_agg.sh: --robot-init-x 0.65 0.85 3 --robot-init-y -0.2 0.2 3 (x-major loops).
DRAWER_ROBOT_XS: Tuple[float, ...] = (0.65, 0.75, 0.85)
DRAWER_ROBOT_YS: Tuple[float, ...] = (-0.2, 0.0, 0.2)
NUM_DRAWER_EPISODES = len(DRAWER_ROBOT_XS) * len(DRAWER_ROBOT_YS)
# OpenDrawerInSceneEnv._additional_prepackaged_config_reset and scripts/rt1_drawer_visual_matching.sh:
# (overlay id, robot x, robot y, extra yaw rz) of the real robot poses A0..C2.
VISUAL_MATCHING_DRAWER_POSES: Tuple[Tuple[str, float, float, float], ...] = (
    ("a0", 0.644, -0.179, -0.03),
    ("a1", 0.765, -0.182, -0.02),
    ("a2", 0.889, -0.203, -0.06),
    ("b0", 0.652, 0.009, 0.0),
    ("b1", 0.752, 0.009, 0.0),
    ("b2", 0.851, 0.035, 0.0),
    ("c0", 0.665, 0.224, 0.0),
    ("c1", 0.765, 0.222, -0.025),
    ("c2", 0.865, 0.222, -0.025),
)
CAN_OVERLAY = "real_inpainting/google_coke_can_real_eval_1.png"
"""Visual-matching overlay of the can task, relative to ManiSkill2_real2sim's ASSET_DIR."""

# scripts/rt1_drawer_variant_agg.sh: the variants besides "base", as env keyword overrides.
DRAWER_VARIANTS: Tuple[Tuple[str, Dict[str, str]], ...] = (
    ("base", {}),
    ("scene=modern_bedroom_no_roof", {"scene_name": "modern_bedroom_no_roof"}),
    ("scene=modern_office_no_roof", {"scene_name": "modern_office_no_roof"}),
    ("light_mode=brighter", {"light_mode": "brighter"}),
    ("light_mode=darker", {"light_mode": "darker"}),
    ("station_name=mk_station2", {"station_name": "mk_station2"}),
    ("station_name=mk_station3", {"station_name": "mk_station3"}),
)
# scripts/rt1_drawer_visual_matching.sh loops the URDFs in this order (its "None" is the plain robot "").
VISUAL_MATCHING_DRAWER_URDFS: Tuple[str, ...] = (
    "recolor_cabinet_visual_matching_1",
    "recolor_tabletop_visual_matching_1",
    "recolor_tabletop_visual_matching_2",
    "",
)

INSTALL_HINT = (
    "in a separate Python 3.10/3.11 env with Vulkan run `git clone --recurse-submodules "
    "https://github.com/simpler-env/SimplerEnv && pip install 'numpy<2' 'gymnasium<1.0' "
    "-e SimplerEnv/ManiSkill2_real2sim -e SimplerEnv` (see README)"
)


@dataclass(frozen=True)
class SimplerEnvConfig:
    """How to build one SimplerEnv task env; every field is checked in ``__post_init__``."""

    task: str
    """Task name, one of razor_robot.envs.TASKS."""
    image_size: Optional[Union[int, Tuple[int, int]]] = 224
    """Side of the square observation image, an (H, W) pair (at most the native 512 x 640), or None for the
    native frame."""
    success_mode: str = "final"
    """"final": episode success = success at the last step; "any": success at any step."""
    setting: str = "visual_matching"
    """SimplerEnv evaluation setting, one of SETTINGS (see the module docstring)."""
    drawer: Optional[str] = None
    """Drawer tasks: "top", "middle" or "bottom"; None lets each episode's seed pick one (as SimplerEnv)."""
    can_orientation: Optional[str] = None
    """pick-can: "horizontal", "vertical" or "standing"; None lets each episode's seed pick one."""
    ray_tracing: Optional[bool] = None
    """Ray-traced rendering (shader_dir="rt"); None = SimplerEnv's choice (drawers on, the can off). False
    is a documented deviation for GPUs without RT cores and CPUs (see the module docstring)."""
    urdf_version: Optional[str] = None
    """Robot URDF variant, one of URDF_VERSIONS; None = visual matching draws one per episode from the seed,
    variant aggregation uses the plain robot ""."""
    native_image: bool = False
    """Also return the native 512 x 640 frame as obs["image_native"] (what SimplerEnv feeds RT-1)."""
    can_scene: Optional[str] = None
    """pick-can's scene (None: SimplerEnv's google_pick_coke_can_1_v4; "dummy_tabletop" where that stage mesh
    is missing, as in the CPU test bundle). The drawer tasks ignore it, so one option set serves all tasks."""
    position_range: str = "default"
    """Name of the simpler can-position rectangle reset's object_xy must lie in (envs.POSITION_RANGES)."""
    horizon: Optional[int] = None
    """Episode length in policy steps; None = the paper's (80 for the can, 113 for drawers). Shorter episodes
    are for smoke tests on CPUs only: success rates then are not comparable with SimplerEnv's."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the ManiSkill2 env (e.g. scene_name, light_mode, station_name); they
    override this module's choices in both settings (e.g. scene_name="dummy_tabletop" where the can's stage
    mesh is missing)."""

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
        if self.ray_tracing not in (None, True, False):
            raise ValueError(f"ray_tracing must be None, True or False, got {self.ray_tracing!r}")
        if self.urdf_version is not None:
            check_urdf_version(self.urdf_version)
        if not isinstance(self.native_image, bool):
            raise ValueError(f"native_image must be a bool, got {self.native_image!r}")
        if self.can_scene is not None and (not isinstance(self.can_scene, str) or not self.can_scene):
            raise ValueError(f"can_scene must be None or a scene name, got {self.can_scene!r}")
        position_ranges("simpler", self.position_range)
        if self.horizon is not None and (isinstance(self.horizon, bool) or not isinstance(self.horizon, int)
                                         or self.horizon < 1):
            raise ValueError(f"horizon must be None or an int >= 1, got {self.horizon!r}")
        if not isinstance(self.env_kwargs, Mapping):
            raise ValueError(f"env_kwargs must be a mapping, got {type(self.env_kwargs).__name__}")
        if "shader_dir" in self.env_kwargs:
            raise ValueError("set ray tracing with ray_tracing=True/False, not env_kwargs['shader_dir']")

    @property
    def ray_traced(self) -> bool:
        """Whether the env renders with shader_dir="rt" (SimplerEnv: drawers yes, the can no)."""
        return self.task != "pick-can" if self.ray_tracing is None else self.ray_tracing


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


def check_urdf_version(version: Any) -> str:
    """Return a robot URDF variant unchanged, or raise a one-line ValueError naming the valid ones."""
    if not isinstance(version, str) or version not in URDF_VERSIONS:
        names = ", ".join(repr(v) for v in URDF_VERSIONS)
        raise ValueError(f"unknown urdf_version {version!r}; expected one of {names}")
    return version


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


def drawer_overlay(pose_name: str) -> str:
    """Overlay image of a visual-matching drawer pose ("a0".."c2"), relative to ASSET_DIR."""
    return f"real_inpainting/open_drawer_{pose_name}.png"


def build_env_kwargs(config: SimplerEnvConfig, horizon: int, asset_dir: Union[str, Path]) -> Dict[str, Any]:
    """Keyword arguments for ``gym.make(simpler_env_id(...), **kwargs)``, matching SimplerEnv's evaluation.

    Visual matching spells out the prepackaged config (``_setup_prepackaged_env_init_config`` of the grasp
    and drawer envs) instead of passing ``prepackaged_config=True``, which would force ray tracing on the
    drawers and ignore a scene override. ``asset_dir`` is ManiSkill2_real2sim's ASSET_DIR (overlay images).
    """
    kwargs: Dict[str, Any] = {
        "obs_mode": "rgbd",
        "max_episode_steps": horizon,
        "robot": GOOGLE_ROBOT,
        "control_mode": GOOGLE_ROBOT_CONTROL_MODE,
        "control_freq": 3,
        "sim_freq": 513,
        "camera_cfgs": {"add_segmentation": True},
    }
    visual = config.setting == "visual_matching"
    if config.task == "pick-can":
        kwargs["scene_name"] = config.can_scene or "google_pick_coke_can_1_v4"
        overlay = CAN_OVERLAY
    else:
        kwargs["scene_name"] = "dummy_drawer" if visual else "frl_apartment_stage_simple"
        overlay = drawer_overlay("a0")  # replaced at every reset by the episode's pose
        if visual:
            kwargs.update(station_name="mk_station_recolor", light_mode="simple", disable_bad_material=True)
    if visual:
        kwargs["rgb_overlay_path"] = str(Path(asset_dir) / overlay)
        kwargs["rgb_overlay_cameras"] = [CAMERA_NAME]
    else:
        kwargs["rgb_overlay_path"] = None
    kwargs["urdf_version"] = config.urdf_version or ""
    if config.ray_traced:
        kwargs["shader_dir"] = "rt"
    if config.can_orientation is not None:
        kwargs[CAN_ORIENTATIONS[config.can_orientation]] = True
    kwargs.update(config.env_kwargs)
    return kwargs


# ---------------------------------------------------------------------------------------------------------
# Episodes: robot pose, URDF variant, reset options
# ---------------------------------------------------------------------------------------------------------


def _check_episode_id(episode_id: Any) -> int:
    if isinstance(episode_id, bool) or not isinstance(episode_id, (int, np.integer)):
        raise ValueError(f"episode_id must be an int, got {episode_id!r}")
    if not 0 <= episode_id < NUM_DRAWER_EPISODES:
        raise ValueError(f"episode_id must be in [0, {NUM_DRAWER_EPISODES}), got {episode_id}")
    return int(episode_id)


def yaw_times_robot_quat(rz: float) -> Tuple[float, float, float, float]:
    """wxyz quaternion of euler2quat(0, 0, rz) * (0, 0, 0, 1): a visual-matching drawer robot's base."""
    return (-math.sin(rz / 2), 0.0, 0.0, math.cos(rz / 2))


def drawer_robot_pose(
    episode_id: int, setting: str = "variant_aggregation"
) -> Tuple[Tuple[float, float], Tuple[float, float, float, float]]:
    """Robot base (xy, wxyz quaternion) of drawer episode ``episode_id``.

    Visual matching: the real pose A0..C2 (VISUAL_MATCHING_DRAWER_POSES); variant aggregation: the x-major
    3 x 3 grid.

    >>> drawer_robot_pose(5)
    ((0.75, 0.2), (0.0, 0.0, 0.0, 1.0))
    """
    episode_id = _check_episode_id(episode_id)
    if setting == "visual_matching":
        _, x, y, rz = VISUAL_MATCHING_DRAWER_POSES[episode_id]
        return (x, y), yaw_times_robot_quat(rz)
    ix, iy = divmod(episode_id, len(DRAWER_ROBOT_YS))
    return (DRAWER_ROBOT_XS[ix], DRAWER_ROBOT_YS[iy]), ROBOT_INIT_QUAT


def robot_init_options(
    xy: Tuple[float, float], quat: Tuple[float, float, float, float]
) -> Dict[str, np.ndarray]:
    """ManiSkill2_real2sim ``robot_init_options``: base at ``xy`` with orientation ``quat`` (w, x, y, z)."""
    return {"init_xy": np.array(xy, dtype=np.float64), "init_rot_quat": np.array(quat, dtype=np.float64)}


def default_episode_id(seed: Optional[int], rng: np.random.Generator) -> int:
    """The drawer pose a reset uses when the caller names none: the seed's residue, else a random one."""
    if seed is None:
        return int(rng.integers(NUM_DRAWER_EPISODES))
    return int(seed) % NUM_DRAWER_EPISODES


@dataclass(frozen=True)
class EpisodeChoice:
    """What one reset sets up besides the can position."""

    episode_id: Optional[int]
    """Drawer robot pose 0..8 (None for pick-can)."""
    urdf_version: str
    """Robot URDF variant of this episode."""


def choose_episode(
    config: SimplerEnvConfig, seed: Optional[int], rng: np.random.Generator, options: Mapping[str, Any]
) -> EpisodeChoice:
    """The episode's robot pose and URDF: reset options first, then the config, then the seed (module doc)."""
    drawer_task = config.task != "pick-can"
    visual = config.setting == "visual_matching"
    episode_id = options.get("episode_id")
    if episode_id is not None and not drawer_task:
        raise ValueError("episode_id selects the robot pose of drawer episodes; pick-can has one pose")
    if drawer_task:
        episode_id = default_episode_id(seed, rng) if episode_id is None else _check_episode_id(episode_id)
    urdf = options.get("urdf_version")
    if urdf is not None and not visual:
        raise ValueError("urdf_version is a visual_matching reset option; variant_aggregation uses one robot")
    if urdf is None:
        urdf = config.urdf_version
    if urdf is None:
        if not visual:
            urdf = ""
        else:
            draw = int(rng.integers(1 << 30)) if seed is None else int(seed)
            urdf = URDF_VERSIONS[(draw // NUM_DRAWER_EPISODES if drawer_task else draw) % len(URDF_VERSIONS)]
    return EpisodeChoice(episode_id, check_urdf_version(urdf))


def build_reset_options(
    config: SimplerEnvConfig, object_xy: Optional[np.ndarray], episode_id: Optional[int]
) -> Dict[str, Any]:
    """ManiSkill2_real2sim reset options: where the can goes and where the robot stands.

    ``object_xy`` must already be validated (pick-can only); ``episode_id`` is the drawer's robot pose.
    """
    options: Dict[str, Any] = {"obj_init_options": {}}
    if object_xy is not None:
        options["obj_init_options"]["init_xy"] = np.array(object_xy, dtype=np.float64)
    if config.task == "pick-can":
        options["robot_init_options"] = robot_init_options(PICK_CAN_ROBOT_XY, ROBOT_INIT_QUAT)
    else:
        options["robot_init_options"] = robot_init_options(*drawer_robot_pose(episode_id, config.setting))
    return options


# ---------------------------------------------------------------------------------------------------------
# Images: cv2.INTER_AREA, bit-exact
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _area_table(src: int, dst: int, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Source indices and float32 weights (dst, K) of one axis, as OpenCV's computeResizeAreaTab.

    Each output pixel averages the source cells its footprint [d * scale, (d + 1) * scale) covers, partial
    cells weighted by the covered fraction; K is the most cells any footprint touches (unused slots weigh 0).
    """
    rows: List[List[Tuple[int, np.float32]]] = []
    for d in range(dst):
        lo = d * scale
        hi = lo + scale
        cell = min(scale, src - lo)
        first, last = math.ceil(lo), math.floor(hi)
        last = min(last, src - 1)
        first = min(first, last)
        entries = []
        if first - lo > 1e-3:
            entries.append((first - 1, np.float32((first - lo) / cell)))
        entries += [(s, np.float32(1.0 / cell)) for s in range(first, last)]
        if hi - last > 1e-3:
            entries.append((last, np.float32(min(min(hi - last, 1.0), cell) / cell)))
        rows.append(entries)
    width = max(len(entries) for entries in rows)
    index = np.zeros((dst, width), np.int64)
    weight = np.zeros((dst, width), np.float32)
    for d, entries in enumerate(rows):
        for k, (s, a) in enumerate(entries):
            index[d, k], weight[d, k] = s, a
    return index, weight


def area_resize(image: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)`` for a uint8 (H, W, C) image, bit-exact.

    Only shrinking (h <= H and w <= W) is area averaging in OpenCV, and only that is implemented. OpenCV
    takes two paths, reproduced here: integer factors sum whole blocks (the 2 x 2 case rounds half up, as its
    SIMD kernel; others multiply by float32 1/area and round half to even); other factors accumulate float32
    weights row by row in OpenCV's order and round half to even. tests/test_simpler_real.py checks it
    against cv2 in the SimplerEnv environment.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"area_resize expects a uint8 (H, W, C) image, got {image.dtype} {image.shape}")
    (sh, sw), (dh, dw) = image.shape[:2], (int(hw[0]), int(hw[1]))
    if (sh, sw) == (dh, dw):
        return image.copy()
    if not (1 <= dh <= sh and 1 <= dw <= sw):
        raise ValueError(f"area_resize only shrinks: cannot resize {(sh, sw)} to {(dh, dw)}")
    scale_x, scale_y = 1.0 / (dw / sw), 1.0 / (dh / sh)  # OpenCV's double arithmetic
    ix, iy = int(round(scale_x)), int(round(scale_y))
    eps = np.finfo(np.float64).eps
    if abs(scale_x - ix) < eps and abs(scale_y - iy) < eps:
        blocks = image.reshape(dh, iy, dw, ix, -1).astype(np.int64).sum(axis=(1, 3))  # (h, w, C)
        if ix == iy == 2:
            out = (blocks + 2) >> 2
        else:
            out = np.rint(blocks.astype(np.float32) * np.float32(1.0 / (ix * iy)))
        return np.clip(out, 0, 255).astype(np.uint8)
    x_index, x_weight = _area_table(sw, dw, scale_x)  # (w, Kx)
    y_index, y_weight = _area_table(sh, dh, scale_y)  # (h, Ky)
    pixels = image.astype(np.float32)  # (H, W, C)
    rows = np.zeros((sh, dw, image.shape[2]), np.float32)  # (H, w, C): horizontal pass of every source row
    for k in range(x_index.shape[1]):
        rows = rows + pixels[:, x_index[:, k]] * x_weight[None, :, k, None]
    out = np.zeros((dh, dw, image.shape[2]), np.float32)  # (h, w, C)
    for k in range(y_index.shape[1]):
        out = out + rows[y_index[:, k]] * y_weight[:, k, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, hw: Optional[Tuple[int, int]]) -> np.ndarray:
    """The observation frame: ``image`` area-resized to ``hw`` (cv2.INTER_AREA); None returns a copy."""
    if hw is None:
        return np.array(image, dtype=np.uint8, copy=True)
    return area_resize(image, hw)


def load_overlay(path: Union[str, Path]) -> np.ndarray:
    """An overlay image as the envs hold it: float64 (H, W, 3) RGB in [0, 1] (cv2.imread -> RGB / 255)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8) / 255


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


def pose_vector(pose: Any) -> np.ndarray:
    """(7,) float64 [x, y, z, qw, qx, qy, qz] of a sapien.Pose (anything with ``.p`` and ``.q``)."""
    return np.concatenate([np.asarray(pose.p, dtype=np.float64), np.asarray(pose.q, dtype=np.float64)])


def tcp_pose(base_env: Any) -> np.ndarray:
    """(7,) world pose of the robot's tool centre point (the env's ``tcp`` link), for every task."""
    return pose_vector(base_env.tcp.pose)


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


def state_vector(tcp: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """(14,) float32 diagnostic state: the (7,) TCP pose then the (7,) object pose."""
    return np.concatenate([tcp, obj]).astype(np.float32)  # (7 + 7,)


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
    ``truncated`` is True at its last step, where info also carries ``"episode_success"``. Success per step is
    the env's own ``info["success"]`` (the can lifted, or held lifted for 5 steps before; a drawer's joint
    past 0.15 / below 0.05), which is what SimplerEnv's evaluator reads at the last executed step.
    """

    metadata = {"render_modes": []}

    def __init__(
        self, inner: Any, config: SimplerEnvConfig, spec: TaskSpec, asset_dir: Union[str, Path, None] = None
    ) -> None:
        self.inner = inner
        self.config = config
        self.task_spec = spec
        self.asset_dir = None if asset_dir is None else Path(asset_dir)
        self._hw = image_hw(config.image_size)
        self._tracker = SuccessTracker(config.success_mode)
        self._t = 0
        self._ranges = position_ranges("simpler", config.position_range)
        self._overlays: Dict[str, np.ndarray] = {}
        native = _native_hw(inner)
        h, w = self._hw or native
        if h > native[0] or w > native[1]:
            raise ValueError(f"image_size {(h, w)} exceeds the camera's {native}: area resize only shrinks")
        spaces = {
            "image": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
        }
        if config.native_image:
            spaces["image_native"] = gym.spaces.Box(0, 255, native + (3,), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        low, high = _action_bounds(inner)
        self.action_space = gym.spaces.Box(low, high, (7,), np.float32)

    @property
    def base_env(self) -> Any:
        """The ManiSkill2 env under gym's wrappers (it has the scene, robot and language instruction)."""
        return self.inner.unwrapped

    def _observe(self, maniskill_obs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        frame = camera_rgb(maniskill_obs)
        obs = {
            "image": resize_image(frame, self._hw),
            "state": state_vector(tcp_pose(self.base_env), object_pose(self.base_env, self.config.task)),
        }
        if self.config.native_image:
            obs["image_native"] = np.array(frame, copy=True)
        return obs

    def _overlay(self, relative: str) -> np.ndarray:
        if self.asset_dir is None:
            raise RuntimeError("visual-matching drawers need asset_dir (ManiSkill2_real2sim's ASSET_DIR)")
        if relative not in self._overlays:
            self._overlays[relative] = load_overlay(self.asset_dir / relative)
        return self._overlays[relative]

    def _set_up(self, episode: EpisodeChoice) -> bool:
        """Apply the episode's overlay and URDF to the inner env; True when its scene must be rebuilt."""
        base = self.base_env
        visual = self.config.setting == "visual_matching"
        if visual and episode.episode_id is not None:
            pose_name = VISUAL_MATCHING_DRAWER_POSES[episode.episode_id][0]
            base.rgb_overlay_img = self._overlay(drawer_overlay(pose_name))
        if base.urdf_version == episode.urdf_version:
            return False
        # What the prepackaged config's reset does on a new URDF draw: a fresh agent config, rebuilt scene.
        base.urdf_version = episode.urdf_version
        base._configure_agent()
        return True

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected some of {RESET_OPTIONS}")
        xy = check_object_xy(options.get("object_xy"), self.task_spec, *self._ranges)
        episode = choose_episode(self.config, seed, self.np_random, options)
        inner_options = build_reset_options(self.config, xy, episode.episode_id)
        if self._set_up(episode):
            inner_options["reconfigure"] = True
        maniskill_obs, _ = self.inner.reset(seed=seed, options=inner_options)
        self._t = 0
        self._tracker.reset()
        obs = self._observe(maniskill_obs)
        if xy is None and self.config.task == "pick-can":
            xy = obs["state"][7:9].astype(np.float64)  # where the env's own draw put the can
        info: Dict[str, Any] = {
            "instruction": str(self.base_env.get_language_instruction()),
            "object_xy": None if xy is None else np.array(xy, dtype=np.float64),
            "success": False,
            "urdf_version": episode.urdf_version,
        }
        if self.config.task != "pick-can":
            info.update(drawer=str(self.base_env.drawer_id), episode_id=episode.episode_id)
        return obs, info

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


# ---------------------------------------------------------------------------------------------------------
# SimplerEnv's standard drawer evaluation
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrawerEpisode:
    """One episode of SimplerEnv's standard open/close-drawer evaluation (scripts/rt1_drawer_*.sh)."""

    task: str
    """"open-drawer" or "close-drawer"."""
    setting: str
    """"visual_matching" or "variant_aggregation"."""
    drawer: str
    """"top", "middle" or "bottom" (the script's env name)."""
    variant: str
    """Visual matching: "urdf=<version>" ("urdf=" is the plain robot); variant aggregation: a DRAWER_VARIANTS
    name ("base", "scene=...", "light_mode=...", "station_name=...")."""
    episode_id: int
    """Robot pose 0..8: A0..C2 under visual matching, the x-major 3 x 3 grid under variant aggregation."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """ManiSkill2 env overrides of the variant (variant aggregation), else empty."""
    urdf_version: Optional[str] = None
    """Robot URDF of the episode (visual matching), else None."""

    @property
    def env_options(self) -> Dict[str, Any]:
        """Options of ``make_simpler_env`` / ``make_env(task, "simpler", ...)`` for this episode's env;
        merge them over the caller's own (image_size, ray_tracing, ...). Equal options can share an env."""
        return {"setting": self.setting, "drawer": self.drawer, "env_kwargs": dict(self.env_kwargs)}

    @property
    def reset_options(self) -> Dict[str, Any]:
        """Options of ``env.reset`` for this episode (robot pose, and the URDF under visual matching)."""
        options: Dict[str, Any] = {"episode_id": self.episode_id}
        if self.urdf_version is not None:
            options["urdf_version"] = self.urdf_version
        return options


def standard_drawer_episodes(task: str, setting: str = "visual_matching") -> List[DrawerEpisode]:
    """SimplerEnv's standard episode set of one drawer task, in its scripts' loop order.

    Visual matching (scripts/rt1_drawer_visual_matching.sh): 4 URDFs x 3 drawers x 9 real poses = 108
    episodes. Variant aggregation (scripts/rt1_drawer_variant_agg.sh): 7 variants (base, 2 backgrounds,
    2 lightings, 2 cabinets) x 3 drawers x 9 grid poses = 189 episodes. SimplerEnv reports a drawer task's
    success as the mean over all its episodes.
    """
    if task not in ("open-drawer", "close-drawer"):
        raise ValueError(f"standard drawer episodes exist for open-drawer and close-drawer, not {task!r}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown SimplerEnv setting {setting!r}; expected one of {', '.join(SETTINGS)}")
    poses = range(NUM_DRAWER_EPISODES)
    if setting == "visual_matching":
        return [
            DrawerEpisode(task, setting, drawer, f"urdf={urdf}", pose, {}, urdf)
            for urdf in VISUAL_MATCHING_DRAWER_URDFS
            for drawer in DRAWERS
            for pose in poses
        ]
    return [
        DrawerEpisode(task, setting, drawer, name, pose, dict(kwargs))
        for name, kwargs in DRAWER_VARIANTS
        for drawer in DRAWERS
        for pose in poses
    ]


# ---------------------------------------------------------------------------------------------------------
# Making the env
# ---------------------------------------------------------------------------------------------------------


def _import_simpler() -> Path:
    """Import SimplerEnv, register ManiSkill2_real2sim's envs with gymnasium; returns its ASSET_DIR."""
    for module in ("simpler_env", "mani_skill2_real2sim.envs"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(module.split(".")[0], INSTALL_HINT) from exc
    return Path(importlib.import_module("mani_skill2_real2sim").ASSET_DIR)


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
    if config.horizon is not None:
        spec = dataclasses.replace(spec, horizon=config.horizon)
    asset_dir = _import_simpler()
    kwargs = build_env_kwargs(config, spec.horizon, asset_dir)
    inner = gym.make(simpler_env_id(task, config.drawer), **kwargs)
    return SimplerTaskEnv(inner, config, spec, asset_dir)

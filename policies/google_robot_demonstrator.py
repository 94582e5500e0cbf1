"""Scripted pick-can demonstrator for the Google robot in SimplerEnv (no TensorFlow, no checkpoint).

The paper path's demonstrator is RT-1; this expert makes the SFT arm runnable and testable without it. It
reads the privileged state of the simpler backend (``obs["state"]`` = TCP pose + can pose, world frame, see
``razor_robot.envs.simpler_backend``) and drives the env's end-effector-delta controller
(``arm_pd_ee_delta_pose_align``: xyz delta and axis-angle rotation delta in the robot *base* frame, about
the TCP) through four phases::

    hover    TCP to hover_height above the can's centre; meanwhile turn the hand about the vertical so the
             fingers close across a lying can (they close along the TCP's y axis, the can's axis is its
             local y axis); a standing can needs no turn
    descend  straight down to grasp_height above the can's centre
    close    gripper command +1 (the controller's delta target saturates at the joint limit), held for
             ``close_steps`` steps before lifting and ``gripper_repeat`` steps in all, the length
             SimplerEnv's OpenVLA wrapper holds a close (so its stored labels replay to the same commands)
    lift     straight up to lift_height above where the can rested, then hold there

Every translation step is capped at ``max_step`` metres and every turn at ``max_turn`` radians, well inside
the 1st..99th percentile box of OpenVLA's fractal action statistics, so the demonstrations tokenise without
clipping. Measured on the real stack (``RAZOR_SIMPLER_PICK_EPISODES=20`` tests/test_simpler_real.py; the can
scene dummy_tabletop, ray tracing off, each episode's can orientation drawn by its seed): 20/20 lifted on 20
seeded positions of the 10 x 10 training grid in each setting (95% Wilson interval 83.9-100%).

Example::

    expert = GoogleRobotPickCan()
    obs, info = env.reset(seed=0, options={"object_xy": (-0.2, 0.2)})
    action = expert.act(obs)        # float64 (7,) SimplerEnv Google-Robot action
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Tuple

import numpy as np

PHASES: Tuple[str, ...] = ("hover", "descend", "close", "lift")
STATE_DIM = 14
"""Length of the simpler backend's state vector (tcp pose 7 + can pose 7)."""


def quaternion_matrix(quat: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion (w, x, y, z) -> (3, 3) rotation matrix."""
    w, x, y, z = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def wrap_half_turn(angle: float) -> float:
    """An angle modulo pi, in [-pi/2, pi/2): gripper closing directions d and -d are the same grasp."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


def grasp_turn(tcp_quat: np.ndarray, can_quat: np.ndarray, standing_cos: float = 0.7) -> float:
    """Rotation about the vertical (rad) that makes the fingers close across the can's axis; 0 if it stands.

    The fingers close along the TCP's y axis and the can's axis is its local y axis (SimplerEnv's upright
    orientation rotates it onto z); both are compared in the horizontal plane.
    """
    closing = quaternion_matrix(tcp_quat)[:, 1]  # (3,)
    axis = quaternion_matrix(can_quat)[:, 1]  # (3,)
    if abs(axis[2]) > standing_cos:
        return 0.0
    error = math.atan2(closing[1], closing[0]) - math.atan2(axis[1], axis[0]) - math.pi / 2
    return -wrap_half_turn(error)


@dataclass(frozen=True)
class PickCanConfig:
    """Waypoints and limits of the scripted Google-robot pick (metres, radians, policy steps)."""

    hover_height: float = 0.10
    """TCP height above the can's centre before the descent."""
    grasp_height: float = -0.005
    """TCP height above the can's centre at which the fingers close (just below the middle: a pinch above
    it lets a lying can slip out when lifted)."""
    lift_height: float = 0.15
    """Lift the TCP to this height above the grasp point."""
    max_step: float = 0.08
    """Largest translation per step (fractal q01..q99 spans about -0.15..0.15 m per axis); the arm's planner
    covers about a third of a commanded delta within one 3 Hz step."""
    max_turn: float = 0.25
    """Largest rotation per step (fractal yaw q01..q99 is about -0.44..0.45 rad)."""
    xy_tolerance: float = 0.01
    """Horizontal TCP-to-target error below which the hover ends."""
    z_tolerance: float = 0.005
    """Vertical TCP-to-target error below which hover / descent end."""
    turn_tolerance: float = 0.05
    """Remaining turn (rad) below which the hand counts as aligned."""
    close_steps: int = 5
    """Steps the gripper closes in place before the lift starts (the fingers need ~4 to close)."""
    gripper_repeat: int = 15
    """Steps the close command (+1) is sent in all (SimplerEnv's sticky_gripper_num_repeat)."""
    base_quat: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    """Robot base orientation (w, x, y, z) in the world; SimplerEnv's pick-can robot is yawed by pi."""

    def __post_init__(self) -> None:
        for name in ("hover_height", "lift_height", "max_step", "max_turn", "xy_tolerance", "z_tolerance",
                     "turn_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.grasp_height, (int, float)) and math.isfinite(self.grasp_height)):
            raise ValueError(f"grasp_height must be a finite number, got {self.grasp_height!r}")
        for name in ("close_steps", "gripper_repeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.gripper_repeat < self.close_steps:
            raise ValueError(
                f"gripper_repeat ({self.gripper_repeat}) must be >= close_steps ({self.close_steps})"
            )
        q = np.asarray(self.base_quat, dtype=np.float64)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or abs(np.linalg.norm(q) - 1.0) > 1e-6:
            raise ValueError(f"base_quat must be a unit (w, x, y, z) quaternion, got {self.base_quat!r}")


class GoogleRobotPickCan:
    """The scripted pick: ``act(obs) -> float64 (7,)`` env action; ``reset()`` starts a new episode.

    ``done`` is always False (the episode runs to the env's horizon, the can held up); it is there so a
    rollout can treat every demonstrator alike (RT-1 ends episodes through it).
    """

    done = False

    def __init__(self, config: PickCanConfig | None = None, **overrides: Any) -> None:
        if config is not None and overrides:
            raise ValueError("pass either a PickCanConfig or keyword overrides, not both")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(PickCanConfig)}
        if unknown:
            raise ValueError(f"unknown scripted pick-can options {sorted(unknown)}; see PickCanConfig")
        self.config = config or PickCanConfig(**overrides)
        self._to_base = quaternion_matrix(self.config.base_quat).T  # (3, 3) world -> base frame
        self.reset()

    def reset(self) -> None:
        self.phase = "hover"
        self._grasp_point: np.ndarray | None = None
        self._closing = 0  # steps the close command has been sent

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One action from obs["state"] (14,) = TCP pose (xyz, wxyz) + can pose (xyz, wxyz), world frame."""
        state = np.asarray(obs["state"], dtype=np.float64)
        if state.shape != (STATE_DIM,):
            raise ValueError(f"obs['state'] must be the simpler backend's (14,) state, got {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ValueError("obs['state'] must be finite")
        tcp, tcp_quat, can, can_quat = state[:3], state[3:7], state[7:10], state[10:14]
        cfg = self.config
        turn, gripper = 0.0, 0.0
        if self.phase == "hover":
            target = can + np.array([0.0, 0.0, cfg.hover_height])
            turn = grasp_turn(tcp_quat, can_quat)
            error = target - tcp
            if (np.linalg.norm(error[:2]) < cfg.xy_tolerance and abs(error[2]) < cfg.z_tolerance
                    and abs(turn) < cfg.turn_tolerance):
                self.phase = "descend"
        if self.phase == "descend":
            target = can + np.array([0.0, 0.0, cfg.grasp_height])
            if abs(target[2] - tcp[2]) < cfg.z_tolerance:
                self.phase, self._grasp_point = "close", tcp.copy()
        if self.phase == "close":
            target = self._grasp_point
            if self._closing >= cfg.close_steps:
                self.phase = "lift"
        if self.phase == "lift":
            target = self._grasp_point + np.array([0.0, 0.0, cfg.lift_height])
        if self._grasp_point is not None and self._closing < cfg.gripper_repeat:
            gripper, self._closing = 1.0, self._closing + 1
        return self._action(target - tcp, turn, gripper)

    def _action(self, delta_world: np.ndarray, turn: float, gripper: float) -> np.ndarray:
        norm = float(np.linalg.norm(delta_world))
        if norm > self.config.max_step:
            delta_world = delta_world * (self.config.max_step / norm)
        turn = float(np.clip(turn, -self.config.max_turn, self.config.max_turn))
        xyz = self._to_base @ delta_world  # (3,) base frame
        rotation = self._to_base @ np.array([0.0, 0.0, turn])  # (3,) axis-angle about the vertical
        return np.concatenate([xyz, rotation, [gripper]])  # (3 + 3 + 1,)

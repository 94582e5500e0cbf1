"""Policy output -> env action, per simulator backend.

A VLA policy predicts an un-normalised continuous action (``policy.predict_action`` / ``tokens_to_actions``);
the env wants it in its own convention. Each adapter is a small callable with ``reset()`` (call it at every
episode start) that takes one action (D,) or a batch (N, D) with one row per env.

- :class:`MetaWorldActionAdapter`: (dx, dy, dz, gripper) clipped to Meta-World's [-1, 1] box.
- :class:`OpenVLAGoogleRobotAdapter`: what SimplerEnv's OpenVLA wrapper
  (``simpler_env/policies/openvla/openvla_model.py``) does for the Google Robot: xyz delta times
  action_scale, roll/pitch/yaw (static-axis xyz Euler) -> axis-angle, and the absolute "open gripper" output
  (1 open, 0 closed) turned into a relative closing command held for ``sticky_gripper_num_repeat`` steps.

The other direction, for SFT labels: :func:`env_actions_to_openvla_labels` turns one demonstration's env
actions (RT-1's or a scripted expert's: axis-angle rotation, relative gripper) into OpenVLA's fractal
convention (roll/pitch/yaw, absolute gripper by openvla's rel->abs rule), so that the labels, tokenised and
replayed through :class:`OpenVLAGoogleRobotAdapter`, give back the demonstrator's env actions.

Example::

    adapter = OpenVLAGoogleRobotAdapter()
    adapter.reset()
    env_action = adapter(policy.predict_action(obs["image"], instruction, unnorm_key="fractal20220817_data"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

_IDENTITY_EPS = 3 * np.finfo(np.float64).eps  # below this vector-part length a quaternion is the identity


def euler_to_quaternion(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll, pitch, yaw about the static x, y, z axes -> (..., 4) unit quaternion (w, x, y, z).

    The rotation is R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (transforms3d's "sxyz" convention).
    """
    half = 0.5 * np.asarray(rpy, dtype=np.float64)  # (..., 3)
    cr, cp, cy = np.cos(half[..., 0]), np.cos(half[..., 1]), np.cos(half[..., 2])
    sr, sp, sy = np.sin(half[..., 0]), np.sin(half[..., 1]), np.sin(half[..., 2])
    cc, cs, sc, ss = cr * cy, cr * sy, sr * cy, sr * sy
    w = cp * cc + sp * ss
    x = cp * sc - sp * cs
    y = cp * ss + sp * cc
    z = cp * cs - sp * sc
    return np.stack([w, x, y, z], axis=-1)  # (..., 4)


def quaternion_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion (w, x, y, z) -> (..., 3) rotation vector axis * angle, angle = 2 acos(w).

    Near-identity quaternions map to the zero vector, as transforms3d.quaternions.quat2axangle does.
    """
    q = np.asarray(quat, dtype=np.float64)
    norm2 = np.sum(q * q, axis=-1, keepdims=True)  # (..., 1)
    q = np.where(norm2 == 1.0, q, q / np.sqrt(norm2))  # (..., 4) unit
    vec = q[..., 1:]  # (..., 3)
    vec_norm = np.linalg.norm(vec, axis=-1, keepdims=True)  # (..., 1)
    angle = 2.0 * np.arccos(np.clip(q[..., :1], -1.0, 1.0))  # (..., 1)
    is_identity = vec_norm < _IDENTITY_EPS
    axis = vec / np.where(is_identity, 1.0, vec_norm)
    return np.where(is_identity, 0.0, axis * angle)  # (..., 3)


def euler_to_axis_angle(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll/pitch/yaw -> (..., 3) axis-angle; transforms3d's euler2axangle, as axis * angle.

    >>> euler_to_axis_angle(np.array([0.0, 0.0, np.pi / 2])).round(12).tolist()
    [0.0, 0.0, 1.570796326795]
    """
    return quaternion_to_axis_angle(euler_to_quaternion(rpy))


def _as_batch(action: np.ndarray, dim: int, name: str) -> tuple[np.ndarray, bool]:
    """(D,) or (N, D) -> ((N, D) float64, was_single); a one-line ValueError for other shapes."""
    a = np.asarray(action, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[-1] != dim:
        raise ValueError(f"{name} expects an action of shape ({dim},) or (N, {dim}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} got a non-finite action {a.tolist()}")
    return (a[None] if a.ndim == 1 else a), a.ndim == 1  # (N, D)


class MetaWorldActionAdapter:
    """Meta-World action (dx, dy, dz, gripper effort), already un-normalised -> float32 clipped to [-1, 1]."""

    action_dim = 4

    def reset(self) -> None:
        """Stateless; present so every adapter can be reset the same way."""

    def __call__(self, action: np.ndarray) -> np.ndarray:
        batch, single = _as_batch(action, self.action_dim, type(self).__name__)
        clipped = np.clip(batch, -1.0, 1.0).astype(np.float32)  # (N, 4)
        return clipped[0] if single else clipped


@dataclass
class StickyGripper:
    """SimplerEnv's Google-Robot gripper rule for policies that output an absolute open/close command.

    The relative command is previous - current "open" value (so > 0 closes). A change larger than 0.5 is
    latched and repeated for ``num_repeat`` steps in all (the real robot's gripper needs that long), ignoring
    the policy meanwhile; the first step of an episode is 0. State arrays have one entry per env.
    """

    num_repeat: int = 15
    """Steps a latched gripper command is held (SimplerEnv: 15 for the Google Robot)."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.num_repeat, bool)
            or not isinstance(self.num_repeat, (int, np.integer))
            or self.num_repeat < 1
        ):
            raise ValueError(f"sticky_gripper_num_repeat must be an int >= 1, got {self.num_repeat!r}")
        self.reset()

    def reset(self) -> None:
        self.previous: Optional[np.ndarray] = None  # (N,) last "open" output, None before the first step
        self.sticky_on = np.zeros(0, dtype=bool)  # (N,)
        self.repeat = np.zeros(0, dtype=np.int64)  # (N,) gripper_action_repeat
        self.sticky_action = np.zeros(0, dtype=np.float64)  # (N,)

    def __call__(self, open_gripper: np.ndarray) -> np.ndarray:
        """(N,) absolute "open" outputs in [0, 1] -> (N,) relative gripper commands."""
        current = np.asarray(open_gripper, dtype=np.float64)
        if self.previous is None:
            n = len(current)
            self.sticky_on, self.repeat = np.zeros(n, bool), np.zeros(n, np.int64)
            self.sticky_action = np.zeros(n, np.float64)
            relative = np.zeros(n, np.float64)
        elif len(current) != len(self.previous):
            raise ValueError(
                f"batch size changed from {len(self.previous)} to {len(current)}; call reset() first"
            )
        else:
            relative = self.previous - current
        self.previous = current

        start = (np.abs(relative) > 0.5) & ~self.sticky_on
        self.sticky_on = self.sticky_on | start
        self.sticky_action = np.where(start, relative, self.sticky_action)
        self.repeat = self.repeat + self.sticky_on
        relative = np.where(self.sticky_on, self.sticky_action, relative)

        done = self.repeat == self.num_repeat
        self.sticky_on = self.sticky_on & ~done
        self.repeat = np.where(done, 0, self.repeat)
        self.sticky_action = np.where(done, 0.0, self.sticky_action)
        return relative


class OpenVLAGoogleRobotAdapter:
    """OpenVLA's un-normalised 7-D action -> SimplerEnv Google-Robot env action (float64).

    Input rows: (dx, dy, dz, roll, pitch, yaw, open_gripper) with open_gripper in [0, 1] (1 = open), i.e.
    ``fractal20220817_data``-un-normalised OpenVLA output. Output rows: (dx, dy, dz) * action_scale,
    axis-angle(roll, pitch, yaw) * action_scale, relative sticky gripper command (> 0 closes).
    """

    action_dim = 7

    def __init__(self, action_scale: float = 1.0, sticky_gripper_num_repeat: int = 15) -> None:
        if not np.isfinite(action_scale) or action_scale <= 0:
            raise ValueError(f"action_scale must be a positive number, got {action_scale!r}")
        self.action_scale = float(action_scale)
        self.gripper = StickyGripper(sticky_gripper_num_repeat)

    def reset(self) -> None:
        """Forget the previous gripper output and any held gripper command (call at each episode start)."""
        self.gripper.reset()

    def __call__(self, action: np.ndarray) -> np.ndarray:
        batch, single = _as_batch(action, self.action_dim, type(self).__name__)  # (N, 7)
        xyz = batch[:, :3] * self.action_scale  # (N, 3)
        rot = euler_to_axis_angle(batch[:, 3:6]) * self.action_scale  # (N, 3)
        grip = self.gripper(batch[:, 6])[:, None]  # (N, 1)
        out = np.concatenate([xyz, rot, grip], axis=1)  # (N, 7)
        return out[0] if single else out


# ---------------------------------------------------------------------------------------------------------
# Env actions -> OpenVLA (fractal) labels
# ---------------------------------------------------------------------------------------------------------

GRIPPER_COMMAND_THRESHOLD = 0.1
"""openvla's rel2abs rule counts a relative gripper command as "close" above +0.1, "open" below -0.1."""


def rel2abs_gripper_actions(relative: np.ndarray) -> np.ndarray:
    """openvla's ``rel2abs_gripper_actions`` (prismatic/vla/datasets/rlds/utils/data_utils.py), in numpy.

    (T,) relative commands of one episode (> 0.1 close, < -0.1 open, else no change) -> (T,) absolute
    "open gripper" values, 1.0 = open, 0.0 = closed. Every step holds the latest command; the steps before
    the first command get its opposite (the rule assumes that command is not redundant), and an episode
    without any command is open throughout. This is the rule openvla's ``rt1_dataset_transform``
    (prismatic/vla/datasets/rlds/oxe/transforms.py) applies to the fractal (RT-1) dataset that OpenVLA was
    trained on, so labels made with it are in the convention OpenVLA's gripper token already speaks.

    >>> rel2abs_gripper_actions(np.array([0.0, 1.0, 0.0, 0.0, -1.0, 0.0])).tolist()
    [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    """
    g = np.asarray(relative, dtype=np.float64)
    if g.ndim != 1 or not np.all(np.isfinite(g)):
        raise ValueError(f"relative gripper commands must be a finite (T,) array, got shape {g.shape}")
    # openvla's sign convention inside the rule: +1 = open, -1 = close, 0 = no change.
    signed = np.where(g < -GRIPPER_COMMAND_THRESHOLD, 1, np.where(g > GRIPPER_COMMAND_THRESHOLD, -1, 0))
    commanded = np.flatnonzero(signed)
    start = -signed[commanded[0]] if len(commanded) else 1
    last = np.maximum.accumulate(np.where(signed != 0, np.arange(len(g)), -1))  # (T,) latest command index
    state = np.where(last >= 0, signed[np.maximum(last, 0)], start)  # (T,) +1 open, -1 closed
    return state / 2.0 + 0.5


def axis_angle_to_euler(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vector -> (..., 3) roll, pitch, yaw about the static x, y, z axes (R = Rz Ry Rx).

    The inverse of :func:`euler_to_axis_angle` for |pitch| < pi/2 (transforms3d's mat2euler, "sxyz").
    """
    v = np.asarray(rotvec, dtype=np.float64)  # (..., 3)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)  # (..., 1)
    axis = v / np.where(angle > 0, angle, 1.0)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    c, s = np.cos(angle[..., 0]), np.sin(angle[..., 0])
    t = 1.0 - c
    r00, r10, r20 = t * x * x + c, t * x * y + s * z, t * x * z - s * y  # Rodrigues, first column
    r21, r22 = t * y * z + s * x, t * z * z + c
    roll = np.arctan2(r21, r22)
    pitch = np.arctan2(-r20, np.hypot(r00, r10))
    yaw = np.arctan2(r10, r00)
    return np.stack([roll, pitch, yaw], axis=-1)  # (..., 3)


def env_actions_to_openvla_labels(actions: np.ndarray, action_scale: float = 1.0) -> np.ndarray:
    """One demonstration's env actions (T, 7) -> its OpenVLA SFT labels (T, 7), fractal convention.

    In: what the demonstrator sent the SimplerEnv Google robot, step by step from the episode's first step:
    xyz delta, axis-angle rotation delta, relative gripper (> 0 closes). Out: the un-normalised 7-D action
    OpenVLA predicts for ``unnorm_key="fractal20220817_data"``: xyz / action_scale, roll/pitch/yaw (the
    rotation the adapter's euler -> axis-angle maps back to the env's, divided by action_scale), and the
    absolute open-gripper value (1 open, 0 closed) by openvla's rel->abs rule
    (:func:`rel2abs_gripper_actions`), since OpenVLA learnt the fractal gripper from exactly that rule and
    SimplerEnv's OpenVLA wrapper (:class:`OpenVLAGoogleRobotAdapter`) reads it back as absolute. Storing
    RT-1's raw relative command instead would teach "open" (1) exactly where RT-1 closed.

    ``action_scale`` must equal the adapter's. Convert whole episodes (the rule scans from step 0), before any
    clipping. SimplerEnv's wrapper sends no gripper command at an episode's first step and holds each change
    for 15 steps, so a close at step 0, or a release within 15 steps of a grasp, does not replay (see
    tests/test_adapters.py).
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 7:
        raise ValueError(f"env actions must have shape (T, 7), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("env actions must be finite")
    if not (np.isfinite(action_scale) and action_scale > 0):
        raise ValueError(f"action_scale must be a positive number, got {action_scale!r}")
    xyz = a[:, :3] / action_scale  # (T, 3)
    rpy = axis_angle_to_euler(a[:, 3:6] / action_scale)  # (T, 3)
    gripper = rel2abs_gripper_actions(a[:, 6])[:, None]  # (T, 1)
    return np.concatenate([xyz, rpy, gripper], axis=1)  # (T, 7)

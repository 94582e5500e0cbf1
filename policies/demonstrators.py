"""Scripted experts that generate SFT demonstrations: make_demonstrator(task, backend).

metaworld: Meta-World's own scripted policies (metaworld.policies) acting on obs["state"] (the 39-d
Meta-World observation), with their output clipped to the action box. The drawers use Meta-World's
policies unchanged. pick-can adapts the pick-place policy to the project's can: the can's centre stands
4.5 cm above the table (the puck's stood 2 cm), so the grasp height and the "not yet lifted" test change,
and the policy closes the gripper only once the fingers straddle the can.

simpler: kind "rt1" (the default) is RT1Demonstrator from .rt1_demonstrator (imported lazily, it needs
TensorFlow and a checkpoint); kind "scripted" is GoogleRobotPickCan from .google_robot_demonstrator (pick-can
only, numpy only).

Every demonstrator has ``act(obs) -> action``, ``reset()`` and ``done`` (True once it has ended its episode:
RT-1's terminate_episode; always False for the scripted experts).

This module must not import razor_robot.envs (the package layering forbids it), so the two constants it
shares with the Meta-World backend are restated here and checked against it in tests/test_demonstrators.py.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

TASKS = ("pick-can", "open-drawer", "close-drawer")
BACKENDS = ("metaworld", "simpler")
KINDS: Dict[str, Tuple[str, ...]] = {"metaworld": ("scripted",), "simpler": ("rt1", "scripted")}
"""Demonstrator kinds per backend; the first is the backend's default."""

CAN_REST_Z = 0.045
"""Height of the can's centre standing on the table (envs.metaworld_backend.CAN_REST_Z)."""
LIFTED_MARGIN = 0.015
"""The can counts as lifted off the table once its centre is this far above CAN_REST_Z."""
GRASP_DZ = 0.03
"""Hand-body height above the can's centre at which the fingers close (the fingertips reach ~4.5 cm
below the hand body, so the pads close just below the can's middle: lower grips tip the can out)."""
ALIGN_XY = 0.006
"""Horizontal hand-to-can error (m) below which the hand descends; the pads close along y, so an offset
makes one pad strike the can first and knock it over."""


def _load_metaworld_policies() -> Dict[str, Any]:
    try:
        from metaworld.policies.sawyer_drawer_close_v3_policy import SawyerDrawerCloseV3Policy
        from metaworld.policies.sawyer_drawer_open_v3_policy import SawyerDrawerOpenV3Policy
        from metaworld.policies.sawyer_pick_place_v3_policy import SawyerPickPlaceV3Policy
    except ImportError as exc:
        raise ImportError(
            "metaworld is not installed; install the Meta-World backend with: "
            "pip install 'razor-robot[metaworld]'"
        ) from exc

    class PickCanV3Policy(SawyerPickPlaceV3Policy):
        """Meta-World's pick-place expert with the can's grasp height; its goal is the lift waypoint."""

        @staticmethod
        def _desired_pos(o_d: Dict[str, np.ndarray]) -> np.ndarray:
            hand, can, goal = o_d["hand_pos"], o_d["puck_pos"], o_d["goal_pos"]
            lifted = can[2] > CAN_REST_Z + LIFTED_MARGIN
            grasp = can + np.array([0.0, 0.0, GRASP_DZ])
            if np.linalg.norm(hand[:2] - can[:2]) > ALIGN_XY and hand[2] > grasp[2] + 0.03 and not lifted:
                return can + np.array([0.0, 0.0, 0.12])  # hover above the can first
            if abs(hand[2] - grasp[2]) > 0.02 and not lifted:
                return grasp  # then drop straight down around it
            if o_d["gripper_distance_apart"] > 0.6 and not lifted:
                return hand  # wait for the fingers to close before lifting
            return goal

        @staticmethod
        @staticmethod
        def _grab_effort(o_d: Dict[str, np.ndarray]) -> float:
            # Close within 3 cm of the grasp point and keep closed while the can travels with the hand.
            grasp = o_d["puck_pos"] + np.array([0.0, 0.0, GRASP_DZ])
            return 1.0 if np.linalg.norm(o_d["hand_pos"] - grasp) < 0.03 else -1.0

    return {
        "pick-can": PickCanV3Policy,
        "open-drawer": SawyerDrawerOpenV3Policy,
        "close-drawer": SawyerDrawerCloseV3Policy,
    }


class MetaWorldExpert:
    """A Meta-World scripted policy behind the demonstrator interface: act(obs) -> float32 (4,) in [-1, 1]."""

    done = False
    """Meta-World episodes always run to the horizon."""

    def __init__(self, task: str) -> None:
        _check(task, "metaworld")
        self.task = task
        self._policy = _load_metaworld_policies()[task]()

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)
        if state.shape != (39,):
            raise ValueError(f"obs['state'] must be Meta-World's 39-d observation, got shape {state.shape}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # metaworld's move() warns whenever it saturates, i.e. constantly
            action = self._policy.get_action(state)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def reset(self) -> None:
        """The Meta-World experts are stateless; present so callers can treat all demonstrators alike."""


def _check(task: str, backend: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def make_demonstrator(
    task: str, backend: str = "metaworld", kind: Optional[str] = None, **options: Any
) -> Any:
    """The demonstrator for a task: ``kind`` "scripted" or "rt1" (None: the backend's default, KINDS[0]).

    metaworld/scripted: MetaWorldExpert (no options); simpler/rt1: RT1Demonstrator(task, **options) (e.g.
    checkpoint_dir); simpler/scripted: GoogleRobotPickCan(**options) (PickCanConfig fields), pick-can only.
    """
    _check(task, backend)
    kind = KINDS[backend][0] if kind is None else kind
    if kind not in KINDS[backend]:
        kinds = ", ".join(KINDS[backend])
        raise ValueError(f"unknown {backend} demonstrator kind {kind!r}; expected one of {kinds}")
    if backend == "simpler" and kind == "rt1":
        from .rt1_demonstrator import RT1Demonstrator

        return RT1Demonstrator(task, **options)
    if backend == "simpler":
        if task != "pick-can":
            raise ValueError(f"the scripted simpler demonstrator does pick-can only, not {task!r}; use 'rt1'")
        from .google_robot_demonstrator import GoogleRobotPickCan

        return GoogleRobotPickCan(**options)
    if options:
        raise ValueError(f"the metaworld demonstrator takes no options, got {sorted(options)}")
    return MetaWorldExpert(task)

"""The episode API every engine and policy shares: what to run (:class:`EpisodeRequest`), what comes back
(:class:`Trajectory`) and the policy interface (:class:`BatchPolicy`).

Policies see each env *slot* by number and are told when a slot starts an episode
(``start_episode(slot, request)``), so per-episode state (action adapters, demonstrators, the random stream
of sampled actions) belongs to the episode, and an episode's outcome never depends on how the engine
scheduled or batched it. Both engines (``razor_robot.rollout.pool`` and ``razor_robot.rollout.lockstep``)
therefore return the same trajectories for the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


class BatchPolicy(Protocol):
    """A policy acting on a batch of observations, one row per env slot.

    Optional: ``start_episode(slot, request)``, called when ``slot`` starts the episode ``request``.
    """

    def __call__(
        self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str], slots: Sequence[int],
        **observations: np.ndarray,
    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """images (N, H, W, 3) uint8, states (N, S), slots (N,) -> actions (N, A), optionally with per-step
        extras (N, ...). The extra ``"terminate"`` (N,) bool ends a row's episode after this action.
        Observation keys beside image and state (e.g. SimplerEnv's ``image_native``) arrive as keyword
        arguments, batched."""
        ...


@dataclass(frozen=True)
class EpisodeRequest:
    """One episode to run."""

    task: str
    """Task name, e.g. "pick-can"."""
    seed: int
    """Seed passed to ``env.reset``; fixes the drawer's initial state and any other randomness of the env."""
    object_xy: tuple[float, float] | None = None
    """Can position for pick-can; None lets the env choose."""
    reset_options: Mapping[str, Any] | None = None
    """Further reset options of the backend (e.g. SimplerEnv's ``episode_id``)."""
    env_options: Mapping[str, Any] | None = None
    """Env construction options that override the pool's for this episode (e.g. a SimplerEnv URDF variant)."""


@dataclass
class Trajectory:
    """One finished episode. Arrays are indexed by step t; observation t is the input to action t."""

    task: str
    instruction: str
    seed: int
    object_xy: tuple[float, float] | None
    success: bool
    """Episode success: success at the final step, or at any step when the env's success_mode is "any"."""
    images: np.ndarray
    """(T, H, W, 3) uint8 observations fed to the policy (empty (0,) when images were not kept)."""
    states: np.ndarray
    """(T, S) privileged state, for diagnostics."""
    actions: np.ndarray
    """(T, A) env actions."""
    step_success: np.ndarray
    """(T,) bool: the env's success flag after each action."""
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-step policy outputs (e.g. "tokens" (T, D)) stacked over time."""

    @property
    def length(self) -> int:
        return len(self.actions)

    @classmethod
    def of(cls, request: EpisodeRequest, instruction: str, success: bool, images: np.ndarray | None,
           states: np.ndarray, actions: np.ndarray, step_success: np.ndarray,
           extras: dict[str, np.ndarray]) -> "Trajectory":
        """A finished episode of ``request`` (``images`` None when they were not kept), as both engines record
        it."""
        xy = request.object_xy
        return cls(task=request.task, instruction=instruction, seed=request.seed,
                   object_xy=None if xy is None else (float(xy[0]), float(xy[1])), success=bool(success),
                   images=images if images is not None else np.zeros((0,), np.uint8), states=states,
                   actions=actions, step_success=np.asarray(step_success, dtype=bool), extras=extras)


def episode_success(step_success: Sequence[bool], success_mode: str, final_success: bool | None) -> bool:
    """An episode's success: the env's ``episode_success`` at the horizon (``final_success``); an episode the
    policy ended early (None) succeeds as the env's success_mode says, at its last step or at any step."""
    if final_success is not None:
        return bool(final_success)
    if success_mode == "any":
        return bool(np.any(step_success))
    return bool(len(step_success) and step_success[-1])


def success_mode_of(env: Any) -> str:
    """An env's success_mode ("final" or "any"): its own attribute, or its config's (SimplerEnv), else
    final."""
    base = getattr(env, "unwrapped", env)
    mode = getattr(base, "success_mode", None) or getattr(getattr(base, "config", None), "success_mode", None)
    return mode or "final"

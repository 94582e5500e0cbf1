"""Parallel episode rollouts over a Gymnasium vector env.

Every task has a fixed horizon, so all the envs of one batch finish on the same step. The rollout drives the
horizon itself and the worker wrapper hides the env's truncation, so the vector env never auto-resets: the code
is the same under gymnasium 0.29 (same-step autoreset) and 1.x (next-step autoreset). Per-episode reset options
(the can position) reach each worker through one shared ``options`` dict holding a list indexed by worker.

Example::

    from razor_robot.rollout import EpisodeRequest, rollout
    requests = [EpisodeRequest("pick-can", seed=i, object_xy=xy) for i, xy in enumerate(positions)]
    trajectories = rollout(requests, policy, num_workers=2)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

PER_WORKER_OPTIONS = "per_worker"


class BatchPolicy(Protocol):
    """A policy acting on a batch of observations from envs that all run the same task."""

    def __call__(
        self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str]
    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """images (N, H, W, 3) uint8, states (N, S) -> actions (N, A), optionally with per-step extras (N, ...)."""
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


class RolloutWorkerEnv(gym.Wrapper):
    """Picks this worker's reset options and never reports truncation (the rollout counts the horizon)."""

    def __init__(self, env: gym.Env, worker_index: int):
        super().__init__(env)
        self.worker_index = worker_index

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and PER_WORKER_OPTIONS in options:
            options = options[PER_WORKER_OPTIONS][self.worker_index]
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["horizon_reached"] = bool(truncated)
        return observation, reward, False, False, info


def _make_worker_env(env_factory: Callable[[], gym.Env], worker_index: int) -> gym.Env:
    return RolloutWorkerEnv(env_factory(), worker_index)


def default_env_factory(task: str, backend: str = "metaworld", **env_options: Any) -> Callable[[], gym.Env]:
    """A picklable zero-argument factory for ``razor_robot.envs.make_env``."""
    from razor_robot.envs import make_env

    return functools.partial(make_env, task, backend, **env_options)


ROLLOUT_ENGINES = ("subprocess", "ray")


def make_vector_env(env_factory: Callable[[], gym.Env], num_workers: int, *, engine: str = "subprocess",
                    ray_num_cpus: float = 1.0) -> gym.vector.VectorEnv:
    """``num_workers`` workers, one env each: subprocesses of this machine, or Ray actors (``engine="ray"``,
    ``ray_num_cpus`` CPUs each; see razor_robot.ray_envs).

    Even a single env runs in a subprocess: software rendering (Mesa llvmpipe) loads its own LLVM into the
    process that renders, and torch's later import of triton (another LLVM) then segfaults. Keeping every
    renderer out of the learner's process avoids the clash.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if engine not in ROLLOUT_ENGINES:
        raise ValueError(f"rollout engine must be one of {', '.join(ROLLOUT_ENGINES)}, got {engine!r}")
    if engine == "ray":
        from razor_robot.ray_envs import RayVectorEnv

        return RayVectorEnv(env_factory, num_workers, num_cpus=ray_num_cpus)
    fns = [functools.partial(_make_worker_env, env_factory, i) for i in range(num_workers)]
    return gym.vector.AsyncVectorEnv(fns, context="spawn" if _fork_unsafe() else None)


def _fork_unsafe() -> bool:
    # A forked child inherits torch's thread pools and an initialised EGL display (once the parent has rendered)
    # and can deadlock on either; spawn is safe everywhere, fork is kept for light pure-Python envs.
    import sys

    return any(name in sys.modules for name in ("torch", "mujoco", "sapien"))


def rollout(
    requests: Sequence[EpisodeRequest],
    policy: BatchPolicy,
    *,
    env_factory: Callable[[], gym.Env] | None = None,
    backend: str = "metaworld",
    env_options: dict[str, Any] | None = None,
    num_workers: int = 1,
    keep_images: bool = True,
    progress: bool | str = True,
    vector_env: gym.vector.VectorEnv | None = None,
) -> list[Trajectory]:
    """Run ``requests`` (all of one task) with ``policy`` in ``num_workers`` parallel envs.

    Pass ``vector_env`` (from :func:`make_vector_env`) to reuse workers across calls; it is then left open.
    """
    if not requests:
        return []
    tasks = {r.task for r in requests}
    if len(tasks) != 1:
        raise ValueError(f"one rollout runs one task, got {sorted(tasks)}")
    task = tasks.pop()
    owns_env = vector_env is None
    if owns_env:
        factory = env_factory or default_env_factory(task, backend, **(env_options or {}))
        vector_env = make_vector_env(factory, min(num_workers, len(requests)))
    try:
        n_envs = vector_env.num_envs
        horizon = int(vector_env.get_attr("task_spec")[0].horizon)
        results: list[Trajectory] = []
        bar = tqdm(total=len(requests), desc=progress if isinstance(progress, str) else f"rollout {task}",
                   disable=not progress, leave=False)
        for start in range(0, len(requests), n_envs):
            batch = list(requests[start:start + n_envs])
            results.extend(_run_batch(vector_env, batch, policy, horizon, keep_images)[: len(batch)])
            bar.update(len(batch))
        bar.close()
        return results
    finally:
        if owns_env:
            vector_env.close()


def _run_batch(
    vector_env: gym.vector.VectorEnv,
    batch: list[EpisodeRequest],
    policy: BatchPolicy,
    horizon: int,
    keep_images: bool,
) -> list[Trajectory]:
    n_envs = vector_env.num_envs
    padded = batch + [batch[-1]] * (n_envs - len(batch))  # idle workers repeat the last episode; dropped after
    options = [{"object_xy": r.object_xy} if r.object_xy is not None else {} for r in padded]
    observation, info = vector_env.reset(seed=[r.seed for r in padded], options={PER_WORKER_OPTIONS: options})
    if hasattr(policy, "reset"):
        policy.reset()
    instructions = [str(s) for s in info["instruction"]]
    images, states, actions, step_success, final_success = [], [], [], [], None
    extras: dict[str, list[np.ndarray]] = {}
    for _ in range(horizon):
        output = policy(observation["image"], observation["state"], instructions)
        action, step_extras = output if isinstance(output, tuple) else (output, {})
        action = np.asarray(action, dtype=np.float32)  # (N, A)
        if keep_images:
            images.append(observation["image"])
        states.append(observation["state"])
        actions.append(action)
        for key, value in step_extras.items():
            extras.setdefault(key, []).append(np.asarray(value))
        observation, _, _, _, info = vector_env.step(action)
        step_success.append(np.asarray(info["success"], dtype=bool))
        if "episode_success" in info:
            final_success = np.asarray(info["episode_success"], dtype=bool)
    if final_success is None:
        raise RuntimeError("env did not report 'episode_success' at its horizon; check its horizon attribute")
    stacked_extras = {k: np.stack(v, axis=1) for k, v in extras.items()}  # (N, T, ...)
    image_stack = np.stack(images, axis=1) if keep_images else None  # (N, T, H, W, 3)
    state_stack, action_stack, success_stack = (np.stack(x, axis=1) for x in (states, actions, step_success))
    return [
        Trajectory(
            task=r.task,
            instruction=instructions[i],
            seed=r.seed,
            object_xy=None if r.object_xy is None else (float(r.object_xy[0]), float(r.object_xy[1])),
            success=bool(final_success[i]),
            images=image_stack[i] if image_stack is not None else np.zeros((0,), np.uint8),
            states=state_stack[i],
            actions=action_stack[i],
            step_success=success_stack[i],
            extras={k: v[i] for k, v in stacked_extras.items()},
        )
        for i, r in enumerate(padded)
    ]


class DemonstratorPolicy:
    """Batches per-env demonstrators (objects with ``act(obs) -> action``) into a :class:`BatchPolicy`.

    Each demonstrator sees ``obs = {"image", "state", "instruction"}`` (RT-1 needs the drawer's instruction).

    Demonstrators may keep per-episode state, so each env slot has its own, rebuilt after every ``reset``
    (the rollout calls it when a new batch of episodes starts).
    """

    def __init__(self, make_demonstrator: Callable[[], Any]):
        self._make = make_demonstrator
        self._demonstrators: list[Any] = []

    def __call__(self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str]) -> np.ndarray:
        if len(self._demonstrators) != len(images):
            self._demonstrators = [self._make() for _ in range(len(images))]
        return np.stack([
            np.asarray(d.act({"image": images[i], "state": states[i], "instruction": instructions[i]}),
                       dtype=np.float32)
            for i, d in enumerate(self._demonstrators)
        ])

    def reset(self) -> None:
        """Forget per-episode demonstrator state; call between batches of episodes."""
        self._demonstrators = []

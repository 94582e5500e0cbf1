"""The lockstep engine over a Gymnasium vector env (``AsyncVectorEnv``, or the Ray actors of
``razor_robot.rollout.ray_envs``).

Every task has a fixed horizon, so all envs of a batch finish on the same step; the rollout drives the horizon
itself and the worker wrapper hides the env's truncation, so the vector env never auto-resets and the code is
the same under gymnasium 0.29 (same-step autoreset) and 1.x (next-step autoreset). Per-episode reset options
(the can position) reach each worker through one shared ``options`` dict holding a list indexed by worker.
The project's main engine is :class:`razor_robot.rollout.pool.EnvPool`; both give the same trajectories.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from razor_robot.rollout.episodes import BatchPolicy, EpisodeRequest, Trajectory, episode_success

PER_WORKER_OPTIONS = "per_worker"


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


def make_vector_env(env_factory: Callable[[], gym.Env], num_workers: int) -> gym.vector.VectorEnv:
    """A Gymnasium ``AsyncVectorEnv`` of ``num_workers`` subprocess workers, one env each, for the lockstep
    engine.

    Even a single env runs in a subprocess: software rendering (Mesa llvmpipe) loads its own LLVM into the
    process that renders, and torch's later import of triton (another LLVM) then segfaults. Keeping every
    renderer out of the learner's process avoids the clash.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    fns = [functools.partial(_make_worker_env, env_factory, i) for i in range(num_workers)]
    return gym.vector.AsyncVectorEnv(fns, context="spawn" if _fork_unsafe() else None)


def _fork_unsafe() -> bool:
    # A forked child inherits torch's thread pools and an initialised EGL display (once the parent has
    # rendered) and can deadlock on either; spawn is safe everywhere, fork is kept for light pure-Python envs.
    import sys

    return any(name in sys.modules for name in ("torch", "mujoco", "sapien"))


def lockstep_rollout(vector_env: gym.vector.VectorEnv, requests: Sequence[EpisodeRequest], policy: BatchPolicy,
                     *, keep_images: bool = True, on_batch: Callable[[int], Any] | None = None) -> list[Trajectory]:
    """Run ``requests`` (all of one task and env options) in batches of ``vector_env.num_envs``, in
    lockstep."""
    if not requests:
        return []
    if len({(r.task, repr(sorted((r.env_options or {}).items()))) for r in requests}) != 1:
        raise ValueError("one lockstep rollout runs one task with one set of env options")
    horizon = int(vector_env.get_attr("task_spec")[0].horizon)
    try:
        success_mode = str(vector_env.get_attr("success_mode")[0])
    except Exception:  # an env without the attribute reports final-step success
        success_mode = "final"
    n_envs = vector_env.num_envs
    results: list[Trajectory] = []
    for start in range(0, len(requests), n_envs):
        batch = list(requests[start:start + n_envs])
        results.extend(_run_batch(vector_env, batch, policy, horizon, keep_images, success_mode)[: len(batch)])
        if on_batch is not None:
            on_batch(len(batch))
    return results


def _run_batch(
    vector_env: gym.vector.VectorEnv,
    batch: list[EpisodeRequest],
    policy: BatchPolicy,
    horizon: int,
    keep_images: bool,
    success_mode: str,
) -> list[Trajectory]:
    n_envs = vector_env.num_envs
    padded = batch + [batch[-1]] * (n_envs - len(batch))  # idle workers repeat the last episode; dropped after
    options = []
    for r in padded:
        option = {"object_xy": r.object_xy} if r.object_xy is not None else {}
        options.append({**option, **(r.reset_options or {})})
    observation, info = vector_env.reset(seed=[r.seed for r in padded], options={PER_WORKER_OPTIONS: options})
    start = getattr(policy, "start_episode", None)
    if start is not None:
        for slot, request in enumerate(padded):
            start(slot, request)
    slots = list(range(n_envs))
    instructions = [str(s) for s in info["instruction"]]
    images, states, actions, step_success, final_success = [], [], [], [], None
    length = np.full(n_envs, horizon)  # (N,) steps each episode lasts (shorter when the policy terminates)
    extras: dict[str, list[np.ndarray]] = {}
    for t in range(horizon):
        extra = {k: v for k, v in observation.items() if k not in ("image", "state")}
        output = policy(observation["image"], observation["state"], instructions, slots, **extra)
        action, step_extras = output if isinstance(output, tuple) else (output, {})
        action = np.asarray(action, dtype=np.float32)  # (N, A)
        terminate = np.asarray(step_extras.pop("terminate", np.zeros(n_envs, bool)), dtype=bool)  # (N,)
        length = np.where(terminate & (length == horizon), t + 1, length)
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
        if np.all(length <= t + 1):
            break
    if final_success is None and np.any(length == horizon):
        raise RuntimeError("env did not report 'episode_success' at its horizon; check its horizon attribute")
    stacked_extras = {k: np.stack(v, axis=1) for k, v in extras.items()}  # (N, T, ...)
    image_stack = np.stack(images, axis=1) if keep_images else None  # (N, T, H, W, 3)
    state_stack, action_stack, success_stack = (np.stack(x, axis=1) for x in (states, actions, step_success))
    trajectories = []
    for i, r in enumerate(padded):
        n = int(length[i])
        flags = success_stack[i, :n]
        success = episode_success(flags, success_mode, bool(final_success[i]) if n == horizon else None)
        trajectories.append(Trajectory.of(
            r, instructions[i], success, image_stack[i, :n] if image_stack is not None else None,
            state_stack[i, :n], action_stack[i, :n], flags, {k: v[i, :n] for k, v in stacked_extras.items()}))
    return trajectories

"""Episodes: what to run (:class:`EpisodeRequest`), what comes back (:class:`Trajectory`), the policy interface
(:class:`BatchPolicy`), and the lockstep engine over a Gymnasium vector env.

The project's main engine is :class:`razor_robot.env_pool.EnvPool` (several envs per worker process, policy
and simulation overlapped, one pool for all tasks); :func:`rollout` runs requests on one. The lockstep engine
here drives any Gymnasium vector env (``AsyncVectorEnv``, or the Ray actors of ``razor_robot.ray_envs``):
every task has a fixed horizon, so all envs of a batch finish on the same step; the rollout drives the horizon
itself and the worker wrapper hides the env's truncation, so the vector env never auto-resets and the code is
the same under gymnasium 0.29 (same-step autoreset) and 1.x (next-step autoreset). Per-episode reset options
(the can position) reach each worker through one shared ``options`` dict holding a list indexed by worker.

Policies see each env *slot* by number and are told when a slot starts an episode
(``start_episode(slot, request)``), so per-episode state (action adapters, demonstrators, the random stream
of sampled actions) belongs to the episode, and an episode's outcome never depends on how the engine
scheduled or batched it. Both engines therefore return the same trajectories for the same requests.

Example::

    from razor_robot.rollout import EpisodeRequest, rollout
    requests = [EpisodeRequest("pick-can", seed=i, object_xy=xy) for i, xy in enumerate(positions)]
    trajectories = rollout(requests, policy)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import gymnasium as gym
import numpy as np

PER_WORKER_OPTIONS = "per_worker"


class BatchPolicy(Protocol):
    """A policy acting on a batch of observations, one row per env slot.

    Optional: ``start_episode(slot, request)``, called when ``slot`` starts the episode ``request``.
    """

    def __call__(
        self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str], slots: Sequence[int],
        **observations: np.ndarray,
    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """images (N, H, W, 3) uint8, states (N, S), slots (N,) -> actions (N, A), optionally with per-step extras
        (N, ...). The extra ``"terminate"`` (N,) bool ends a row's episode after this action. Observation keys
        beside image and state (e.g. SimplerEnv's ``image_native``) arrive as keyword arguments, batched."""
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
    # A forked child inherits torch's thread pools and an initialised EGL display (once the parent has rendered)
    # and can deadlock on either; spawn is safe everywhere, fork is kept for light pure-Python envs.
    import sys

    return any(name in sys.modules for name in ("torch", "mujoco", "sapien"))


def rollout(
    requests: Sequence[EpisodeRequest],
    policy: BatchPolicy,
    *,
    pool: Any = None,
    env_factory: Callable[..., gym.Env] | None = None,
    backend: str = "metaworld",
    env_options: dict[str, Any] | None = None,
    num_workers: int | None = None,
    keep_images: bool = True,
    progress: bool | str = True,
) -> list[Trajectory]:
    """Run ``requests`` with ``policy``; one Trajectory per request, in request order.

    Pass an open :class:`razor_robot.env_pool.EnvPool` as ``pool`` to reuse its workers; otherwise a pool of
    ``num_workers`` workers (``env_factory(task, **env_options)`` or ``make_env(task, backend, ...)``) is made
    for this call and released after it.
    """
    from razor_robot.env_pool import EnvPool

    if pool is not None:
        return pool.rollout(requests, policy, keep_images=keep_images, progress=progress)
    per_worker = max(1, -(-len(requests) // (num_workers or 1))) if num_workers else 8
    with EnvPool(backend, env_options, num_workers=num_workers, envs_per_worker=min(per_worker, 8),
                 env_factory=env_factory) as temporary:
        return temporary.rollout(requests, policy, keep_images=keep_images, progress=progress)


def lockstep_rollout(vector_env: gym.vector.VectorEnv, requests: Sequence[EpisodeRequest], policy: BatchPolicy,
                     *, keep_images: bool = True, on_batch: Callable[[int], Any] | None = None) -> list[Trajectory]:
    """Run ``requests`` (all of one task and env options) in batches of ``vector_env.num_envs``, in lockstep."""
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


def success_mode_of(env: Any) -> str:
    """An env's success_mode ("final" or "any"): its own attribute, or its config's (SimplerEnv), else final."""
    base = getattr(env, "unwrapped", env)
    mode = getattr(base, "success_mode", None) or getattr(getattr(base, "config", None), "success_mode", None)
    return mode or "final"


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
        if n == horizon:
            success = bool(final_success[i])
        else:  # ended by the policy: success as the env's success_mode says
            success = bool(flags.any() if success_mode == "any" else flags[-1])
        trajectories.append(Trajectory(
            task=r.task,
            instruction=instructions[i],
            seed=r.seed,
            object_xy=None if r.object_xy is None else (float(r.object_xy[0]), float(r.object_xy[1])),
            success=success,
            images=image_stack[i, :n] if image_stack is not None else np.zeros((0,), np.uint8),
            states=state_stack[i, :n],
            actions=action_stack[i, :n],
            step_success=flags,
            extras={k: v[i, :n] for k, v in stacked_extras.items()},
        ))
    return trajectories


class DemonstratorPolicy:
    """Batches per-episode demonstrators (objects with ``act(obs) -> action``) into a :class:`BatchPolicy`.

    Each demonstrator sees ``obs = {"image", "state", "instruction", ...}``: RT-1 needs the drawer's
    instruction, and the env's other observation keys (SimplerEnv's ``image_native``) come along too.
    Demonstrators keep per-episode state, so every episode gets a fresh one (``start_episode``). A
    demonstrator whose ``done`` attribute turns True (RT-1's ``terminate_episode``) ends its episode.
    """

    def __init__(self, make_demonstrator: Callable[[], Any]):
        self._make = make_demonstrator
        self._demonstrators: dict[int, Any] = {}

    def start_episode(self, slot: int, request: EpisodeRequest) -> None:
        self._demonstrators[slot] = self._make()

    def __call__(self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str],
                 slots: Sequence[int], **observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        demonstrators = [self._demonstrators[s] for s in slots]
        actions = np.stack([
            np.asarray(d.act({"image": images[i], "state": states[i], "instruction": instructions[i],
                              **{k: v[i] for k, v in observations.items()}}), dtype=np.float32)
            for i, d in enumerate(demonstrators)
        ])
        terminate = np.array([bool(getattr(d, "done", False)) for d in demonstrators])
        return actions, {"terminate": terminate}

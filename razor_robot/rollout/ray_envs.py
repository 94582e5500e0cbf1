"""Rollout workers as Ray actors: one env per actor, anywhere on a Ray cluster.

CPU-only simulators (SimplerEnv renders and simulates on the CPU) scale past one machine this way while the
policy stays on the learner's GPU. ``RayVectorEnv`` offers the part of Gymnasium's vector-env API that
``razor_robot.rollout`` uses (``num_envs``, ``reset``, ``step``, ``get_attr``, ``close``) and batches
observations and infos the way ``AsyncVectorEnv`` does, so the rollout code is the same for both.

Select it with ``rollout_engine: ray`` in a sweep config (``ray.env_num_cpus`` CPUs per env actor).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


def require_ray():
    """The ray module, or a one-line MissingDependencyError with the install hint."""
    try:
        import ray
    except ImportError:
        from razor_robot.envs import MissingDependencyError

        raise MissingDependencyError("ray", 'pip install "razor-robot[ray]"') from None
    return ray


class _EnvActor:
    """Holds one worker env (wrapped like the subprocess workers) inside a Ray actor."""

    def __init__(self, env_factory: Callable[[], Any], worker_index: int):
        from razor_robot.rollout.lockstep import RolloutWorkerEnv

        self.env = RolloutWorkerEnv(env_factory(), worker_index)

    def reset(self, seed: int | None, options: dict[str, Any] | None):
        return self.env.reset(seed=seed, options=options)

    def step(self, action: np.ndarray):
        return self.env.step(action)

    def get_attr(self, name: str) -> Any:
        return getattr(self.env.unwrapped, name)

    def close(self) -> None:
        self.env.close()


def _stack_observations(observations: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}


def _stack_infos(infos: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """AsyncVectorEnv's layout: ``info[key]`` holds one entry per env and ``info["_" + key]`` marks which
    envs reported it."""
    batched: dict[str, np.ndarray] = {}
    for key in sorted({k for info in infos for k in info}):
        present = np.array([key in info for info in infos])
        values = [info.get(key) for info in infos]
        kinds = {type(v) for v, p in zip(values, present) if p}
        if kinds <= {bool, np.bool_}:
            batched[key] = np.array([bool(v) if p else False for v, p in zip(values, present)])
        elif kinds <= {int, float, np.float32, np.float64, np.int64, np.int32}:
            batched[key] = np.array([v if p else 0 for v, p in zip(values, present)])
        else:
            batched[key] = np.array(values, dtype=object)
        batched["_" + key] = present
    return batched


class RayVectorEnv:
    """``num_envs`` envs, each in its own Ray actor, stepped in lockstep."""

    def __init__(self, env_factory: Callable[[], Any], num_envs: int, *, num_cpus: float = 1.0):
        ray = require_ray()
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        actor_class = ray.remote(num_cpus=num_cpus)(_EnvActor)
        self._ray = ray
        self._actors = [actor_class.remote(env_factory, i) for i in range(num_envs)]
        self.num_envs = num_envs

    def _all(self, method: str, *per_actor_args: Sequence[Any]) -> list[Any]:
        calls = [getattr(actor, method).remote(*(args[i] for args in per_actor_args))
                 for i, actor in enumerate(self._actors)]
        return self._ray.get(calls)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        seeds = list(seed) if isinstance(seed, (list, tuple, np.ndarray)) else [
            None if seed is None else seed + i for i in range(self.num_envs)]
        results = self._all("reset", seeds, [options] * self.num_envs)
        return _stack_observations([r[0] for r in results]), _stack_infos([r[1] for r in results])

    def step(self, actions: np.ndarray):
        results = self._all("step", list(np.asarray(actions)))
        observations, rewards, terminated, truncated, infos = zip(*results)
        return (_stack_observations(observations), np.array(rewards, dtype=np.float64), np.array(terminated),
                np.array(truncated), _stack_infos(infos))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(self._all("get_attr", [name] * self.num_envs))

    def close(self) -> None:
        if not self._actors:
            return
        try:
            self._all("close")
        finally:
            for actor in self._actors:
                self._ray.kill(actor)
            self._actors = []

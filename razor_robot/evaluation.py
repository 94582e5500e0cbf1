"""Evaluation: new-task success on seeded random positions, prior-task success on seeded drawer episodes.

Scores are percentages (0-100), so "within 2 points of the frontier" means 2 percentage points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from razor_robot.acting import VLAActor
from razor_robot.rollout import EpisodeRequest, Trajectory, make_vector_env, default_env_factory, rollout


@dataclass
class EvalConfig:
    """What one evaluation of a checkpoint runs."""

    new_task: str = "pick-can"
    """The fine-tuning task."""
    prior_tasks: tuple[str, ...] = ("open-drawer", "close-drawer")
    """Tasks whose success measures forgetting."""
    new_task_positions: int = 100
    """Seeded uniform random can positions (the paper: 100)."""
    position_seed: int = 0
    """Seed of the eval positions: every model sees the same ones."""
    prior_episodes: int = 100
    """Seeded episodes per prior task."""
    episode_seed: int = 1_000_000
    """First env seed of evaluation episodes (disjoint from training/collection seeds)."""
    temperature: float = 0.0
    """Action decoding temperature at evaluation (0 = greedy, like OpenVLA's predict_action)."""
    kl_observation_stride: int = 4
    """Keep every k-th step of the base policy's new-task episodes as KL inputs."""

    def __post_init__(self):
        self.prior_tasks = tuple(self.prior_tasks)
        if self.new_task_positions < 1 or self.prior_episodes < 0 or self.kl_observation_stride < 1:
            raise ValueError("need new_task_positions >= 1, prior_episodes >= 0, kl_observation_stride >= 1")


class EnvPool:
    """One vector env per task, kept open across evaluations and RL iterations (worker start-up is slow)."""

    def __init__(self, backend: str, env_options: dict[str, Any], num_workers: int, *,
                 engine: str = "subprocess", ray_num_cpus: float = 1.0):
        self.backend, self.env_options, self.num_workers = backend, env_options, num_workers
        self.engine, self.ray_num_cpus = engine, ray_num_cpus
        self._envs: dict[str, Any] = {}

    def get(self, task: str):
        if task not in self._envs:
            factory = default_env_factory(task, self.backend, **self.env_options)
            self._envs[task] = make_vector_env(factory, self.num_workers, engine=self.engine,
                                               ray_num_cpus=self.ray_num_cpus)
        return self._envs[task]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def success_rate(trajectories: list[Trajectory]) -> float:
    return 100.0 * float(np.mean([t.success for t in trajectories])) if trajectories else float("nan")


def evaluate_policy(
    policy: Any,
    positions: np.ndarray,
    config: EvalConfig,
    pool: EnvPool,
    *,
    unnorm_key: str,
    adapter_factory: Callable[[], Any] | None = None,
    keep_new_task_images: bool = False,
    progress: bool = True,
) -> tuple[dict[str, Any], list[Trajectory]]:
    """Returns (scores, new-task trajectories). ``positions`` (P, 2) are the eval can positions."""
    actor = VLAActor(policy, unnorm_key=unnorm_key, temperature=config.temperature, seed=config.episode_seed,
                     adapter_factory=adapter_factory)
    new_requests = [EpisodeRequest(config.new_task, config.episode_seed + i, (float(x), float(y)))
                    for i, (x, y) in enumerate(positions)]
    new_trajectories = rollout(new_requests, actor, vector_env=pool.get(config.new_task),
                               keep_images=keep_new_task_images, progress="eval " + config.new_task if progress else False)
    scores: dict[str, Any] = {"new_task": success_rate(new_trajectories)}
    prior = []
    for task in config.prior_tasks:
        requests = [EpisodeRequest(task, config.episode_seed + i) for i in range(config.prior_episodes)]
        trajectories = rollout(requests, actor, vector_env=pool.get(task), keep_images=False,
                               progress="eval " + task if progress else False)
        scores[f"prior/{task}"] = success_rate(trajectories)
        prior.append(scores[f"prior/{task}"])
    scores["prior_task"] = float(np.mean(prior)) if prior else float("nan")
    scores["per_position"] = [[float(x), float(y), bool(t.success)] for (x, y), t in zip(positions, new_trajectories)]
    return scores, new_trajectories


def kl_observations(trajectories: list[Trajectory], stride: int) -> tuple[np.ndarray, list[str]]:
    """The fixed KL input set x: every ``stride``-th observation of the base policy's new-task episodes."""
    images = [t.images[::stride] for t in trajectories]
    instructions = [t.instruction for t, im in zip(trajectories, images) for _ in range(len(im))]
    return np.concatenate(images), instructions

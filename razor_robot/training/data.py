"""Demonstration datasets: collected with a demonstrator, stored as LeRobotDataset v3.0 directories.

A dataset directory is a LeRobot v3.0 dataset (razor_robot.training.lerobot_format: meta/info.json,
meta/stats.json, meta/tasks.parquet, meta/episodes/..., data/chunk-XXX/file-XXX.parquet), which lerobot's
``LeRobotDataset(repo_id, root=DIR)`` loads and which this package reads back exactly; the collection metadata
(per-task episode counts, shortfalls per grid point, the action normalisation statistics) sits in info.json
under ``razor_robot``. A foreign LeRobot v3.0 dataset reads too (its image, action and task strings).

The env actions are stored as the demonstrator sent them (``env_actions``, LeRobot's ``action``); the SFT
labels (``actions``, ``action.label``) are clipped to the env's [-1, 1] box (the env clips them anyway, and
labels beyond the box would land in the edge bins). A demonstrator's token ids depend on the policy's
vocabulary and action statistics, so SFT bins the labels at training time
(razor_robot.training.optim.action_bins); episodes of a policy keep the tokens it sampled (``tokens``,
``action.tokens``), which are then the labels.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from razor_robot.training.dataset import DemoDataset
from razor_robot.training.lerobot_format import read_lerobot, write_lerobot
from razor_robot.rollout.episodes import BatchPolicy, EpisodeRequest, Trajectory
from razor_robot.rollout.pool import rollout


@dataclass
class CollectionPlan:
    """What to collect for one task."""

    task: str
    """Task name."""
    episodes_per_point: int
    """K successful episodes kept per grid point (pick-can) or in total (drawers, ``positions=None``)."""
    positions: np.ndarray | None = None
    """(P, 2) grid of can positions; None for tasks without an object position (drawers)."""
    max_attempts_factor: int = 3
    """Attempts are capped at this many times the number of episodes wanted; shortfalls are reported."""
    seed: int = 0
    """First episode seed; attempts use consecutive seeds from here."""

    def __post_init__(self):
        if self.episodes_per_point < 1:
            raise ValueError(f"episodes_per_point (K) must be >= 1, got {self.episodes_per_point}")
        if self.max_attempts_factor < 1:
            raise ValueError(f"max_attempts_factor must be >= 1, got {self.max_attempts_factor}")


ENV_ACTION = "env_action"
"""Trajectory.extras key of the env actions when ``actions`` were converted to labels (SimplerEnv's
gripper)."""


def trajectories_to_dataset(trajectories: Sequence[Trajectory], grid_index: Sequence[int] | None = None,
                            first_episode_id: int = 0) -> DemoDataset:
    """Flatten trajectories (all with images) into a step dataset."""
    if not trajectories:
        raise ValueError("empty dataset: no trajectories")
    lengths = [t.length for t in trajectories]
    grid_index = grid_index if grid_index is not None else [-1] * len(trajectories)
    sampled = all("tokens" in t.extras for t in trajectories)
    return DemoDataset(
        images=np.concatenate([t.images for t in trajectories]),
        states=np.concatenate([t.states for t in trajectories]).astype(np.float32),
        actions=np.clip(np.concatenate([t.actions for t in trajectories]), -1.0, 1.0).astype(np.float32),
        instructions=[t.instruction for t, n in zip(trajectories, lengths) for _ in range(n)],
        tasks=[t.task for t, n in zip(trajectories, lengths) for _ in range(n)],
        episode_ids=np.repeat(np.arange(len(trajectories)) + first_episode_id, lengths).astype(np.int64),
        grid_index=np.repeat(np.asarray(grid_index, np.int64), lengths),
        tokens=np.concatenate([t.extras["tokens"] for t in trajectories]).astype(np.int64) if sampled else None,
        env_actions=np.concatenate([t.extras.get(ENV_ACTION, t.actions) for t in trajectories]).astype(np.float32),
        seeds=np.repeat(np.asarray([t.seed for t in trajectories], np.int64), lengths),
        step_success=np.concatenate([np.asarray(t.step_success, bool) for t in trajectories]),
    )


def collect(plan: CollectionPlan, policy: BatchPolicy, *, pool: Any = None, backend: str = "metaworld",
            env_options: dict[str, Any] | None = None, num_workers: int | None = None,
            progress: bool = True) -> "Collected":
    """Run ``policy`` until ``plan.episodes_per_point`` successes per point (or attempts run out).

    ``policy`` is a demonstrator (``DemonstratorPolicy(make_demonstrator)``) or a policy sampling its own
    actions (a ``VLAActor`` at temperature 1: rejection sampling of its successful episodes). Episodes run on
    ``pool`` (a razor_robot.rollout.pool.EnvPool), or on a pool made for this call.
    """
    points = [None] if plan.positions is None else [tuple(map(float, p)) for p in plan.positions]
    wanted = {i: plan.episodes_per_point for i in range(len(points))}
    attempts = {i: 0 for i in range(len(points))}
    cap = plan.episodes_per_point * plan.max_attempts_factor
    kept: list[Trajectory] = []
    kept_index: list[int] = []
    next_seed = plan.seed
    while True:
        pending = [i for i in wanted if wanted[i] > 0 and attempts[i] < cap]
        if not pending:
            break
        requests, owners = [], []
        for i in pending:
            for _ in range(min(wanted[i], cap - attempts[i])):
                requests.append(EpisodeRequest(plan.task, next_seed, points[i]))
                owners.append(i)
                next_seed += 1
                attempts[i] += 1
        trajectories = rollout(requests, policy, pool=pool, backend=backend, env_options=env_options,
                               num_workers=num_workers, progress=f"collect {plan.task}" if progress else False)
        for owner, trajectory in zip(owners, trajectories):
            if trajectory.success and wanted[owner] > 0:
                kept.append(trajectory)
                kept_index.append(-1 if plan.positions is None else owner)
                wanted[owner] -= 1
    shortfall = {str(i): n for i, n in wanted.items() if n > 0}
    return Collected(kept, kept_index, shortfall, {str(i): n for i, n in attempts.items()})


class Collected(NamedTuple):
    """What :func:`collect` kept."""

    trajectories: list[Trajectory]
    """The successful episodes kept (at most K per point), in collection order."""
    grid_index: list[int]
    """The grid point of each kept episode (-1 without positions)."""
    shortfall: dict[str, int]
    """Grid point (as a string) -> successes still missing when its attempts ran out."""
    attempts: dict[str, int]
    """Grid point (as a string) -> episodes run for it."""


def save_dataset(dataset: DemoDataset, directory: str | os.PathLike) -> Path:
    """Write a LeRobotDataset v3.0 directory, each file atomically, meta/info.json last."""
    n, h, w, c = dataset.images.shape
    dataset.meta.update(image_shape=[h, w, c], action_dim=int(dataset.actions.shape[1]), n_steps=n,
                        n_episodes=int(len(np.unique(dataset.episode_ids))))
    return write_lerobot(dataset, directory)


def load_dataset(directory: str | os.PathLike) -> DemoDataset:
    """Read a LeRobot v3.0 directory (FileNotFoundError where none is complete: no meta/info.json; the old
    steps.parquet layout counts as none, so caches of it are collected again, never misread)."""
    return read_lerobot(directory)


def episodes_per_task(dataset: DemoDataset) -> dict[str, int]:
    counts: dict[str, set] = defaultdict(set)
    for task, episode in zip(dataset.tasks, dataset.episode_ids):
        counts[task].add(int(episode))
    return {task: len(ids) for task, ids in sorted(counts.items())}

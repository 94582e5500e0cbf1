"""Demonstration datasets: collected with a demonstrator, stored as LeRobotDataset v3.0 directories.

A dataset directory is a LeRobot v3.0 dataset (razor_robot.lerobot_format: meta/info.json, meta/stats.json,
meta/tasks.parquet, meta/episodes/..., data/chunk-XXX/file-XXX.parquet), which lerobot's ``LeRobotDataset(repo_id,
root=DIR)`` loads and which this package reads back exactly; the collection metadata (per-task episode counts,
shortfalls per grid point, the action normalisation statistics) sits in info.json under ``razor_robot``. A
foreign LeRobot v3.0 dataset reads too (its image, action and task strings).

The env actions are stored as the demonstrator sent them (``env_actions``, LeRobot's ``action``); the SFT labels
(``actions``, ``action.label``) are clipped to the env's [-1, 1] box (the env clips them anyway, and labels
beyond the box would land in the edge bins). A demonstrator's token ids depend on the policy's vocabulary and
action statistics, so SFT bins the labels at training time (razor_robot.training.action_bins); episodes of a
policy keep the tokens it sampled (``tokens``, ``action.tokens``), which are then the labels.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from razor_robot.lerobot_format import read_lerobot, write_lerobot
from razor_robot.rollout import BatchPolicy, EpisodeRequest, Trajectory, rollout


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


@dataclass
class DemoDataset:
    """Steps of successful demonstrations, in memory."""

    images: np.ndarray
    """(N, H, W, 3) uint8."""
    states: np.ndarray
    """(N, S) float32."""
    actions: np.ndarray
    """(N, A) float32, clipped to [-1, 1]."""
    instructions: list[str]
    """(N,) instruction of each step's episode."""
    tasks: list[str]
    episode_ids: np.ndarray
    """(N,) int64, unique per episode across the dataset."""
    grid_index: np.ndarray
    """(N,) int64 grid point of the episode, -1 for tasks without a position."""
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: np.ndarray | None = None
    """(N, D) int64 vocabulary ids the policy sampled, for episodes of a policy (oracle-sft, distill-sft): the
    SFT labels are then exactly these tokens, not the re-binned env actions. None for demonstrators."""
    env_actions: np.ndarray | None = None
    """(N, A) float32 env actions as sent (before clipping and label conversion); None when unknown."""
    seeds: np.ndarray | None = None
    """(N,) int64 reset seed of each step's episode; None when unknown."""
    step_success: np.ndarray | None = None
    """(N,) bool: the env's success flag after each step's action; None when unknown."""

    def __len__(self) -> int:
        return len(self.actions)

    def subset(self, mask: np.ndarray) -> "DemoDataset":
        idx = np.flatnonzero(mask)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return DemoDataset(self.images[idx], self.states[idx], self.actions[idx],
                           [self.instructions[i] for i in idx], [self.tasks[i] for i in idx],
                           self.episode_ids[idx], self.grid_index[idx], dict(self.meta), pick(self.tokens),
                           pick(self.env_actions), pick(self.seeds), pick(self.step_success))

    def for_tasks(self, tasks: Sequence[str]) -> "DemoDataset":
        return self.subset(np.isin(np.asarray(self.tasks), list(tasks)))

    @staticmethod
    def concatenate(parts: Sequence["DemoDataset"]) -> "DemoDataset":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("empty dataset: nothing to concatenate")
        if len({p.tokens is None for p in parts}) != 1:
            raise ValueError("cannot concatenate datasets with and without sampled tokens")
        offsets = np.cumsum([0] + [int(p.episode_ids.max()) + 1 for p in parts[:-1]])

        def joined(name: str) -> np.ndarray | None:  # kept only when every part has it
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)
        return DemoDataset(
            np.concatenate([p.images for p in parts]), np.concatenate([p.states for p in parts]),
            np.concatenate([p.actions for p in parts]), sum((p.instructions for p in parts), []),
            sum((p.tasks for p in parts), []),
            np.concatenate([p.episode_ids + o for p, o in zip(parts, offsets)]),
            np.concatenate([p.grid_index for p in parts]), dict(parts[0].meta),
            None if parts[0].tokens is None else np.concatenate([p.tokens for p in parts]),
            joined("env_actions"), joined("seeds"), joined("step_success"))


ENV_ACTION = "env_action"
"""Trajectory.extras key of the env actions when ``actions`` were converted to labels (SimplerEnv's gripper)."""


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
    ``pool`` (a razor_robot.env_pool.EnvPool), or on a pool made for this call.
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

"""The in-memory demonstration dataset SFT trains on (steps of successful episodes, one row per step).

Its own module so that the LeRobot v3.0 reader and writer (razor_robot.training.lerobot_format) and the
collection code (razor_robot.training.data) both build it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


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

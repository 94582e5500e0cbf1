"""Demonstration datasets: collected with a demonstrator, stored as Parquet + JSON metadata.

A dataset directory holds ``steps.parquet`` (one row per step: episode id, task, instruction, grid point,
can position, step index, image bytes, state, continuous action) and ``meta.json`` (image shape, action
dimension, per-task episode counts, shortfalls per grid point, the action normalisation statistics). Everything
is readable with pyarrow/pandas; images are raw ``uint8`` (H, W, 3) bytes.

Actions are stored raw (as the demonstrator emitted them) and clipped to the env's [-1, 1] box (the env clips
them anyway, and labels beyond the box would land in the edge bins). Token ids depend on the policy's
vocabulary, so they are derived at training time from the stored normalised actions (see
:meth:`DemoDataset.action_tokens`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from razor_robot.rollout import BatchPolicy, EpisodeRequest, Trajectory, rollout

STEPS_FILE = "steps.parquet"
META_FILE = "meta.json"


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

    def __len__(self) -> int:
        return len(self.actions)

    def subset(self, mask: np.ndarray) -> "DemoDataset":
        idx = np.flatnonzero(mask)
        return DemoDataset(self.images[idx], self.states[idx], self.actions[idx],
                           [self.instructions[i] for i in idx], [self.tasks[i] for i in idx],
                           self.episode_ids[idx], self.grid_index[idx], dict(self.meta),
                           None if self.tokens is None else self.tokens[idx])

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
        return DemoDataset(
            np.concatenate([p.images for p in parts]), np.concatenate([p.states for p in parts]),
            np.concatenate([p.actions for p in parts]), sum((p.instructions for p in parts), []),
            sum((p.tasks for p in parts), []),
            np.concatenate([p.episode_ids + o for p, o in zip(parts, offsets)]),
            np.concatenate([p.grid_index for p in parts]), dict(parts[0].meta),
            None if parts[0].tokens is None else np.concatenate([p.tokens for p in parts]))


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
    """Write ``steps.parquet`` and ``meta.json`` atomically (temp files, then rename; meta last)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n, h, w, c = dataset.images.shape
    table = pa.table({
        "episode_id": dataset.episode_ids,
        "task": dataset.tasks,
        "instruction": dataset.instructions,
        "grid_index": dataset.grid_index,
        "image": pa.array([img.tobytes() for img in dataset.images], type=pa.binary(h * w * c)),
        "state": pa.array(list(dataset.states), type=pa.list_(pa.float32())),
        "action": pa.array(list(dataset.actions), type=pa.list_(pa.float32())),
    })
    if dataset.tokens is not None:
        table = table.append_column("tokens", pa.array(list(dataset.tokens), type=pa.list_(pa.int64())))
    meta = dict(dataset.meta, image_shape=[h, w, c], action_dim=int(dataset.actions.shape[1]), n_steps=n,
                n_episodes=int(len(np.unique(dataset.episode_ids))))
    _atomic_write(directory / STEPS_FILE, lambda p: pq.write_table(table, p))
    _atomic_write(directory / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return directory


def load_dataset(directory: str | os.PathLike) -> DemoDataset:
    import pyarrow.parquet as pq

    directory = Path(directory)
    if not (directory / META_FILE).exists() or not (directory / STEPS_FILE).exists():
        raise FileNotFoundError(f"no dataset at {directory} (expected {STEPS_FILE} and {META_FILE})")
    meta = json.loads((directory / META_FILE).read_text())
    table = pq.read_table(directory / STEPS_FILE)
    if table.num_rows == 0:
        raise ValueError(f"empty dataset at {directory}")
    h, w, c = meta["image_shape"]
    images = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).reshape(-1, h, w, c).copy()
    return DemoDataset(
        images=images,
        states=np.asarray(table.column("state").to_pylist(), np.float32),
        actions=np.asarray(table.column("action").to_pylist(), np.float32),
        instructions=table.column("instruction").to_pylist(),
        tasks=table.column("task").to_pylist(),
        episode_ids=table.column("episode_id").to_numpy().astype(np.int64),
        grid_index=table.column("grid_index").to_numpy().astype(np.int64),
        meta=meta,
        tokens=np.asarray(table.column("tokens").to_pylist(), np.int64) if "tokens" in table.column_names
        else None,
    )


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def episodes_per_task(dataset: DemoDataset) -> dict[str, int]:
    counts: dict[str, set] = defaultdict(set)
    for task, episode in zip(dataset.tasks, dataset.episode_ids):
        counts[task].add(int(episode))
    return {task: len(ids) for task, ids in sorted(counts.items())}

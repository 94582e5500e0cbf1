"""Evaluation: new-task success on seeded random positions, prior-task success on seeded drawer episodes.

Scores are percentages (0-100), so "within 2 points of the frontier" means 2 percentage points. Every success
rate comes with its episode count, successes and 95% Wilson interval (``<key>/n``, ``<key>/successes``,
``<key>/ci95``), and the per-episode outcomes are kept (``episodes[task]``): episode i of a task is the same
can position and env seed for every checkpoint of a sweep, so checkpoints are compared on paired episodes.

How many episodes: a fixed count per task (``new_task_positions``, ``prior_episodes``), or, with
``target_half_width``, as many as make every success rate's 95% interval at most that wide on each side at
the worst case (a 50% success rate), up to ``max_episodes``; :meth:`EvalConfig.plan` says when that cap stops
the evaluation short of the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from razor_robot.rollout.actor import VLAActor
from razor_robot.rollout.episodes import EpisodeRequest, Trajectory
from razor_robot.report.stats import rate_summary, resample_counts, percentile_interval

Z95 = 1.959963984540054
PRIOR_PROTOCOLS = ("seeded", "simpler")


class EvalCounts(NamedTuple):
    """The episodes of one checkpoint's evaluation (:meth:`EvalConfig.plan`)."""

    new_task: int
    """New-task episodes, one per eval position."""
    prior: int
    """Episodes per prior task."""
    note: str
    """A sentence on how they were sized (the sweep's log and summary.txt)."""


@dataclass
class EvalConfig:
    """What one evaluation of a checkpoint runs."""

    new_task: str = "pick-can"
    """The fine-tuning task."""
    prior_tasks: tuple[str, ...] = ("open-drawer", "close-drawer")
    """Tasks whose success measures forgetting."""
    new_task_positions: int = 100
    """Seeded uniform random can positions (the paper: 100); ignored when target_half_width is set."""
    position_seed: int = 0
    """Seed of the eval positions: every model sees the same ones."""
    prior_episodes: int = 100
    """Seeded episodes per prior task; ignored when target_half_width is set."""
    target_half_width: float | None = None
    """Wanted half-width (points) of every success rate's 95% interval; episode counts are sized for the worst
    case (50% success). None: use the fixed counts above."""
    max_episodes: int = 400
    """Budget cap per task and checkpoint when sizing by target_half_width."""
    prior_protocol: str = "seeded"
    """"seeded": prior_episodes episodes per prior task with consecutive env seeds; "simpler": SimplerEnv's
    standard drawer episode set (simpler backend only; its size is fixed by the protocol)."""
    episode_seed: int = 1_000_000
    """First env seed of evaluation episodes (disjoint from training/collection seeds)."""
    temperature: float = 0.0
    """Action decoding temperature at evaluation (0 = greedy, like OpenVLA's predict_action)."""
    greedy_over: str = "actions"
    """Greedy decoding's argmax: over the 256 action logits ("actions", the distribution training, KL and RL
    use) or over the whole vocabulary ("vocabulary": OpenVLA's predict_action and SimplerEnv's OpenVLA
    evaluation, where a non-action id decodes by OpenVLA's clip)."""
    kl_observation_stride: int = 4
    """Keep every k-th step of the base policy's new-task episodes as KL inputs."""

    def __post_init__(self):
        self.prior_tasks = tuple(self.prior_tasks)
        if self.new_task_positions < 1 or self.prior_episodes < 0 or self.kl_observation_stride < 1:
            raise ValueError("need new_task_positions >= 1, prior_episodes >= 0, kl_observation_stride >= 1")
        if self.prior_tasks and self.prior_episodes < 1 and self.prior_protocol == "seeded" \
                and self.target_half_width is None:
            raise ValueError(f"eval.prior_episodes must be >= 1: forgetting is measured on the prior tasks' "
                             f"episodes ({', '.join(self.prior_tasks)})")
        if self.target_half_width is not None and not 0 < self.target_half_width < 50:
            raise ValueError(f"target_half_width must be in (0, 50) points, got {self.target_half_width}")
        if self.max_episodes < 1:
            raise ValueError(f"max_episodes must be >= 1, got {self.max_episodes}")
        if self.greedy_over not in ("actions", "vocabulary"):
            raise ValueError(f"greedy_over must be actions or vocabulary, got {self.greedy_over!r}")
        if self.prior_protocol not in PRIOR_PROTOCOLS:
            raise ValueError(f"prior_protocol must be one of {', '.join(PRIOR_PROTOCOLS)}, "
                             f"got {self.prior_protocol!r}")

    def plan(self) -> EvalCounts:
        """How many episodes each checkpoint's evaluation runs, and why."""
        if self.target_half_width is None:
            return EvalCounts(self.new_task_positions, self.prior_episodes, (
                f"{self.new_task_positions} new-task and {self.prior_episodes} episodes per prior task (fixed)"))
        wanted = episodes_for_half_width(self.target_half_width)
        n = min(wanted, self.max_episodes)
        note = f"{n} episodes per task for a 95% CI of at most +-{self.target_half_width:g} points"
        if wanted > self.max_episodes:
            note = (f"{n} episodes per task (budget cap max_episodes): a +-{self.target_half_width:g}-point "
                    f"95% CI needs {wanted}; expect up to +-{worst_half_width(n):.1f} points")
        return EvalCounts(n, n, note)


def episodes_for_half_width(half_width: float) -> int:
    """Smallest n whose 95% Wilson interval at 50% success has half-width <= half_width (points).

    At p = 1/2 the Wilson interval is centred on 1/2 with half-width z / (2 sqrt(n + z²)), the widest of any
    success rate, so n = ceil((z / (2 h))² - z²) with h in fractions.
    """
    h = half_width / 100.0
    return max(1, math.ceil((Z95 / (2 * h)) ** 2 - Z95**2))


def worst_half_width(n: int) -> float:
    """Half-width (points) of the 95% Wilson interval at 50% success with n episodes."""
    return 100.0 * Z95 / (2 * math.sqrt(n + Z95**2))


# ----------------------------------------------------------------------------------------------- records


def rate_fields(key: str, outcomes: Any) -> dict[str, Any]:
    """``{key: rate, key/n, key/successes, key/ci95}`` of 0/1 outcomes (points)."""
    summary = rate_summary([int(bool(o)) for o in outcomes])
    return {key: summary["rate"], f"{key}/n": summary["n"], f"{key}/successes": summary["successes"],
            f"{key}/ci95": summary["ci95"]}


def forgetting_fields(base_episodes: dict[str, list[int]], episodes: dict[str, list[int]],
                      prior_tasks: tuple[str, ...], *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Forgetting = base prior-task success - this checkpoint's (points), with a paired-bootstrap 95% CI.

    Episode i of a prior task is the same env seed for the base and the checkpoint, so each bootstrap
    replicate resamples the same episode indices for both (per task), which removes the episodes' own
    difficulty from the interval.
    """
    rng = np.random.default_rng(seed)
    replicates, point = [], []
    for task in prior_tasks:
        base = np.asarray(base_episodes[task], float)  # (n,)
        mine = np.asarray(episodes[task], float)  # (n,)
        if base.shape != mine.shape or len(base) == 0:
            raise ValueError(f"{task}: base and checkpoint must have the same non-zero number of episodes, got "
                             f"{len(base)} and {len(mine)}")
        counts = resample_counts(len(base), n_resamples, rng)  # (R, n)
        replicates.append(counts @ (base - mine) / len(base))  # (R,)
        point.append(float(np.mean(base - mine)))
    lo, hi = percentile_interval(100.0 * np.mean(replicates, axis=0))
    return {"forgetting": 100.0 * float(np.mean(point)), "forgetting/ci95": [lo, hi]}


def scores_from_episodes(episodes: dict[str, list[int]], new_task: str, prior_tasks: tuple[str, ...],
                         positions: np.ndarray) -> dict[str, Any]:
    """The record fields of one evaluation from its per-episode outcomes (see the module docstring)."""
    scores: dict[str, Any] = rate_fields("new_task", episodes[new_task])
    for task in prior_tasks:
        scores.update(rate_fields(f"prior/{task}", episodes[task]))
    if prior_tasks:
        pooled = [o for task in prior_tasks for o in episodes[task]]
        scores.update(rate_fields("prior_task", pooled))
    else:
        scores["prior_task"] = math.nan
    scores["per_position"] = [[float(x), float(y), bool(s)] for (x, y), s in zip(positions, episodes[new_task])]
    scores["episodes"] = episodes
    scores["paired"] = True
    return scores


# ---------------------------------------------------------------------------------------------- episodes


def new_task_requests(config: EvalConfig, positions: np.ndarray) -> list[EpisodeRequest]:
    return [EpisodeRequest(config.new_task, config.episode_seed + i, (float(x), float(y)))
            for i, (x, y) in enumerate(positions)]


def prior_task_requests(config: EvalConfig, task: str, n: int, backend: str,
                        env_options: dict[str, Any] | None = None) -> list[EpisodeRequest]:
    """Episode i of a prior task: env seed episode_seed + i, or episode i of SimplerEnv's standard set (in
    the setting of the pool's env options, visual matching by default)."""
    if config.prior_protocol == "simpler":
        return [EpisodeRequest(task, config.episode_seed + i, reset_options=episode.reset_options,
                               env_options=episode.env_options)
                for i, episode in enumerate(simpler_drawer_episodes(task, backend, env_options))]
    return [EpisodeRequest(task, config.episode_seed + i) for i in range(n)]


def simpler_drawer_episodes(task: str, backend: str, env_options: dict[str, Any] | None) -> list[Any]:
    """SimplerEnv's standard drawer episode set
    (razor_robot.envs.simpler_backend.standard_drawer_episodes)."""
    if backend != "simpler":
        raise ValueError("eval.prior_protocol 'simpler' needs backend: simpler")
    from razor_robot.envs.simpler_backend import standard_drawer_episodes

    return standard_drawer_episodes(task, (env_options or {}).get("setting", "visual_matching"))


def per_drawer_fields(task: str, outcomes: list[int], episodes: list[Any]) -> dict[str, Any]:
    """Success per drawer (top/middle/bottom) of a task's standard-protocol episodes, as rate fields."""
    fields: dict[str, Any] = {}
    for drawer in dict.fromkeys(e.drawer for e in episodes):
        fields.update(rate_fields(f"prior/{task}/{drawer}", [o for o, e in zip(outcomes, episodes)
                                                              if e.drawer == drawer]))
    return fields


def evaluate_policy(
    policy: Any,
    positions: np.ndarray,
    config: EvalConfig,
    pool: Any,
    *,
    unnorm_key: str,
    adapter_factory: Callable[[], Any] | None = None,
    keep_new_task_images: bool = False,
    keep_prior_images: bool = False,
    progress: bool = True,
) -> tuple[dict[str, Any], list[Trajectory]]:
    """Returns (scores, trajectories of every task: new task first). ``positions`` (P, 2) are the eval can
    positions; ``pool`` is a razor_robot.rollout.pool.EnvPool. All tasks' episodes run in one rollout."""
    actor = VLAActor(policy, unnorm_key=unnorm_key, temperature=config.temperature, seed=config.episode_seed,
                     greedy_over=config.greedy_over,
                     adapter_factory=adapter_factory)
    requests = new_task_requests(config, positions)
    for task in config.prior_tasks:
        requests += prior_task_requests(config, task, config.plan().prior, pool.backend, pool.env_options)
    keep = keep_new_task_images or keep_prior_images
    trajectories = pool.rollout(requests, actor, keep_images=keep, progress="eval" if progress else False)
    if keep and not keep_prior_images:
        for t in trajectories:
            if t.task != config.new_task:
                t.images = np.zeros((0,), np.uint8)
    episodes: dict[str, list[int]] = {}
    for t in trajectories:
        episodes.setdefault(t.task, []).append(int(t.success))
    scores = scores_from_episodes(episodes, config.new_task, config.prior_tasks, positions)
    if config.prior_protocol == "simpler":
        for task in config.prior_tasks:
            scores.update(per_drawer_fields(task, episodes[task],
                                            simpler_drawer_episodes(task, pool.backend, pool.env_options)))
    return scores, trajectories


def kl_observations(trajectories: list[Trajectory], stride: int) -> tuple[np.ndarray, list[str]]:
    """A fixed observation set: every ``stride``-th observation of the given episodes (all with images)."""
    images = [t.images[::stride] for t in trajectories]
    instructions = [t.instruction for t, im in zip(trajectories, images) for _ in range(len(im))]
    return np.concatenate(images), instructions

"""The facts of a sweep that every stage reads, worked out once from its config (``SweepConfig.plan``).

Before, each stage derived them again: the evaluation's episode counts from ``EvalConfig.plan()`` through the
positions, then read by tuple position; the inference policy spec at six call sites; the backend's action
statistics key beside a literal. A :class:`SweepPlan` holds them, frozen, so every stage evaluates the same
positions with the same counts and loads checkpoints the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from razor_robot.measure.evaluation import EvalCounts
from razor_robot.policies.action_tokenizer import GOOGLE_ROBOT_UNNORM_KEY

EMBEDDED_UNNORM_KEY = "metaworld_demos"
"""Action statistics key of the embedded (Meta-World) policies."""


def default_unnorm_key(backend: str) -> str:
    """A backend's action statistics key: OpenVLA's fractal (Google robot) statistics on SimplerEnv, the
    embedded policies' own on Meta-World."""
    return GOOGLE_ROBOT_UNNORM_KEY if backend == "simpler" else EMBEDDED_UNNORM_KEY


@dataclass(frozen=True, eq=False)
class SweepPlan:
    """What a (single-base) sweep config implies for every stage."""

    grid: np.ndarray
    """(n², 2) training grid of can positions: demonstrations, policy demos and RL rollouts start there."""
    eval_positions: np.ndarray
    """(P, 2) can positions of every checkpoint's new-task evaluation (P = counts.new_task)."""
    counts: EvalCounts
    """Episodes of each evaluation: new task, per prior task, and the sentence on how they were sized."""
    unnorm_key: str
    """Action statistics key the policies are trained and decoded with."""
    inference: Any
    """PolicySpec of every policy loaded to act or to be measured (evaluation, videos, the base's evaluation,
    policy demos, the base for distances): the config's inference policy as a plain model (``lora=None``:
    a LoRA checkpoint brings its own adapters)."""

    @classmethod
    def of(cls, config: Any) -> "SweepPlan":
        """The plan of a SweepConfig (razor_robot.experiment.schema)."""
        from razor_robot.envs import eval_positions, grid_positions, position_ranges

        x_range, y_range = position_ranges(config.backend, config.position_range)
        counts = config.eval.plan()
        return cls(
            grid=grid_positions(config.demos.grid_size, x_range=x_range, y_range=y_range,
                                backend=config.backend),
            eval_positions=eval_positions(counts.new_task, seed=config.eval.position_seed, x_range=x_range,
                                          y_range=y_range, backend=config.backend),
            counts=counts,
            unnorm_key=config.policy.unnorm_key or default_unnorm_key(config.backend),
            inference=dataclasses.replace(config.inference_policy(), lora=None),
        )

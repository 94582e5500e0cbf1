"""Stage: K successful episodes per training-grid point, from a demonstrator or from a policy.

- :func:`collect_demos`: the demonstrator's (Meta-World experts, RT-1 or the scripted Google-robot expert);
  the SFT arm's data and the base's pretraining data. Cached under the cache directory by everything that
  determines it.
- :func:`collect_policy_demos`: a policy checkpoint's own episodes at temperature 1, kept when they succeed
  (rejection sampling): for the base policy these are samples of pi0 conditioned on success, the KL-minimal
  distribution that always succeeds (oracle-sft); for the best RL checkpoint, its successful behaviour
  (distill-sft). The tokens the policy sampled are stored with the steps and become the SFT labels exactly.
  Attempts are capped (``policy_demos.max_attempts_factor`` per wanted success) and shortfalls reported.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from razor_robot.config import config_hash
from razor_robot.rollout.pool import EnvPool
from razor_robot.experiment.schema import SweepConfig


def demonstrator_factory(task: str, backend: str, kind: str, options: dict[str, Any]) -> Callable[[], Any]:
    """A picklable maker of fresh demonstrators; builds one first so a missing dependency or checkpoint fails
    before any episode runs."""
    from razor_robot.policies import make_demonstrator

    make_demonstrator(task, backend, kind, **options)
    return functools.partial(make_demonstrator, task, backend, kind, **options)


def as_policy_labels(trajectories: list[Any], backend: str) -> list[Any]:
    """Demonstrations in the action convention the policy is trained in.

    SimplerEnv's demonstrators (RT-1, the scripted expert) emit the Google robot's *relative* gripper command
    (+1 close, -1 open, 0 hold), while OpenVLA was trained on the fractal data with an *absolute* gripper (1
    open, 0 closed) and its adapter reads the policy's gripper that way; the stored labels are converted with
    openvla's own rel -> abs rule (razor_robot.policies.adapters.env_actions_to_openvla_labels) so that labels
    -> tokens -> adapter reproduce the demonstrator's env actions. Meta-World demonstrations are already in
    the policy's convention.
    """
    if backend != "simpler":
        return trajectories
    from razor_robot.training.data import ENV_ACTION
    from razor_robot.policies.adapters import env_actions_to_openvla_labels

    for t in trajectories:  # the dataset keeps both: `action` (env) and `action.label` (the policy's convention)
        t.extras[ENV_ACTION] = t.actions
        t.actions = env_actions_to_openvla_labels(t.actions).astype(np.float32)
    return trajectories


def _collect_into(directory: Path, plan: Any, policy: Any, pool: EnvPool, meta: dict[str, Any],
                  progress: bool, what: str, labels: Callable[[list[Any]], list[Any]] = lambda kept: kept):
    from razor_robot.training.data import collect, save_dataset, trajectories_to_dataset

    kept, grid_index, shortfall, attempts = collect(plan, policy, pool=pool, progress=progress)
    if not kept:
        raise RuntimeError(f"{what} succeeded on no {plan.task} episode in {sum(attempts.values())} attempts")
    dataset = trajectories_to_dataset(labels(kept), grid_index)
    dataset.meta.update(meta, shortfall_per_point=shortfall, attempts_per_point=attempts,
                        episodes_per_point=plan.episodes_per_point)
    save_dataset(dataset, directory)
    return dataset


def collect_demos(config: SweepConfig, task: str, positions: np.ndarray | None, episodes_per_point: int,
                  seed: int, pool: EnvPool, *, progress: bool = True):
    """Collect (or load from cache) K successful demonstrations per point; returns (dataset, directory)."""
    from razor_robot.training.data import CollectionPlan, load_dataset
    from razor_robot.rollout.demonstrator import DemonstratorPolicy

    key = {"backend": config.backend, "env": config.env, "task": task, "k": episodes_per_point, "seed": seed,
           "positions": None if positions is None else np.round(positions, 6).tolist(),
           "demonstrator": config.demos.demonstrator, "options": config.demos.demonstrator_options,
           "attempts": config.demos.max_attempts_factor, "labels": "openvla" if config.backend == "simpler" else "env"}
    directory = config.cache_root() / f"demos-{task}-{config_hash(key)}"
    try:
        return load_dataset(directory), directory
    except FileNotFoundError:
        pass
    plan = CollectionPlan(task, episodes_per_point, positions, config.demos.max_attempts_factor, seed)
    factory = demonstrator_factory(task, config.backend, config.demos.demonstrator, config.demos.demonstrator_options)
    meta = {"task": task, "backend": config.backend, "source": config.demos.demonstrator,
            "positions": key["positions"], "labels": key["labels"]}
    dataset = _collect_into(directory, plan, DemonstratorPolicy(factory), pool, meta, progress,
                            f"the {config.demos.demonstrator} demonstrator",
                            labels=functools.partial(as_policy_labels, backend=config.backend))
    return dataset, directory


def collect_policy_demos(config: SweepConfig, checkpoint: str, directory: Path, pool: EnvPool, *,
                         progress: bool = True):
    """K successful episodes per training-grid point of a policy checkpoint at ``policy_demos.temperature``
    (see the module docstring); cached in ``directory``. Returns (dataset, directory)."""
    from razor_robot.rollout.actor import VLAActor
    from razor_robot.training.data import CollectionPlan, load_dataset
    from razor_robot.experiment.loading import adapter_factory_for, load_for_inference

    try:
        return load_dataset(directory), directory
    except FileNotFoundError:
        pass
    spec = config.policy_demos
    grid = config.plan.grid
    k = spec.episodes_per_point or config.demos.episodes_per_point
    policy = load_for_inference(checkpoint, config).eval()
    actor = VLAActor(policy, unnorm_key=config.unnorm_key, temperature=spec.temperature, seed=spec.seed,
                     adapter_factory=adapter_factory_for(config.backend))
    plan = CollectionPlan(config.eval.new_task, k, grid, spec.max_attempts_factor, spec.seed)
    meta = {"task": config.eval.new_task, "backend": config.backend, "source": str(checkpoint),
            "temperature": spec.temperature, "positions": np.round(grid, 6).tolist()}
    dataset = _collect_into(directory, plan, actor, pool, meta, progress, f"the policy {checkpoint}")
    return dataset, directory

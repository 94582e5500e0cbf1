"""Stage: one record per saved checkpoint of a run.

A record holds (razor_robot.measure.evaluation) new- and prior-task success with counts, 95% Wilson intervals
and the per-episode outcomes (paired with the base's episodes), forgetting with its paired-bootstrap interval,
the action-token distances to the base on the fixed new-task observations with bootstrap intervals
(razor_robot.measure.distances), Table 1's alternative predictors on the prior-task probes
(razor_robot.measure.predictors), and the forgetting meter's forecast at the checkpoint's KL
(razor_robot.measure.meter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from razor_robot.experiment.loading import adapter_factory_for, load_base_for_distances, load_for_training
from razor_robot.experiment.schema import RunSpec, SweepConfig
from razor_robot.experiment.stages.base import BaseArtifacts, RunInputs
from razor_robot.measure.evaluation import evaluate_policy, forgetting_fields
from razor_robot.rollout.pool import EnvPool


class FixedSets:
    """The base's fixed observation sets (razor_robot.experiment.stages.base.BaseArtifacts), loaded once per
    run."""

    def __init__(self, base: BaseArtifacts):
        kl = np.load(base.kl_observations)
        self.kl_images, self.kl_instructions = kl["images"], [str(s) for s in kl["instructions"]]
        self.probe_images = self.probe_instructions = self.fisher = None
        if base.prior_probes:
            probes = np.load(base.prior_probes)
            self.probe_images, self.probe_instructions = probes["images"], [str(s) for s in probes["instructions"]]
        if base.fisher:
            from razor_robot.measure.predictors import load_fisher

            self.fisher = load_fisher(base.fisher)


def checkpoint_measurements(config: SweepConfig, policy: Any, base: Any, sets: FixedSets,
                            seed: int) -> dict[str, Any]:
    """Distances to the base (kl/*) and Table 1 predictors (pred/*) of one loaded checkpoint."""
    import torch

    from razor_robot.measure.distances import action_token_distances

    lora = base is None  # a LoRA checkpoint is its own base with the adapters off
    out = action_token_distances(
        policy if lora else base, policy, sets.kl_images, sets.kl_instructions,
        n_prefix_samples=config.kl.prefix_samples, batch_size=config.kl.batch_size,
        generator=torch.Generator().manual_seed(seed), base_context=policy.disable_adapter if lora else None)
    if sets.probe_images is not None:
        from razor_robot.measure.predictors import checkpoint_predictors

        out.update(checkpoint_predictors(policy if lora else base, policy, sets.probe_images,
                                         sets.probe_instructions, fisher=sets.fisher,
                                         base_context=policy.disable_adapter if lora else None,
                                         batch_size=config.kl.batch_size))
    return out


class Checkpoint(NamedTuple):
    """A checkpoint a run saved, waiting for its evaluation."""

    step: int
    """Optimiser step (SFT) or iteration (RL) it was saved at."""
    fraction: float
    """step / the run's total."""
    directory: Path
    train_seconds: float
    """Wall-clock from the start of training to the checkpoint (the record's ``seconds``)."""


def evaluate_checkpoints(config: SweepConfig, run: RunSpec, checkpoints: list[Checkpoint], inputs: RunInputs,
                         pool: EnvPool, logger: Any, progress: bool) -> list[dict[str, Any]]:
    """The records of a run's checkpoints (see the module docstring)."""
    from razor_robot.measure.meter import forecast_fields

    spec = config.inference_policy()  # a LoRA run's checkpoints load with their adapters
    base = load_base_for_distances(config, inputs.base.checkpoint)
    sets = FixedSets(inputs.base)
    base_scores = inputs.base.scores()
    records = []
    for step, fraction, directory, train_seconds in checkpoints:
        policy = load_for_training(str(directory), spec).eval()
        scores, _ = evaluate_policy(policy, config.plan.eval_positions, config.eval, pool,
                                    unnorm_key=config.unnorm_key, adapter_factory=adapter_factory_for(config.backend),
                                    progress=progress)
        measured = checkpoint_measurements(config, policy, base, sets, run.seed)
        record = {"run_id": run.run_id, "method": run.method, "seed": run.seed, "step": step, "fraction": fraction,
                  "hparams": run.hparams, **scores,
                  **forgetting_fields(base_scores["episodes"], scores["episodes"], config.eval.prior_tasks),
                  **measured, "kl": measured["kl/forward"],
                  **forecast_fields(inputs.meter_fit, measured["kl/forward"]),
                  "checkpoint": str(directory), "seconds": train_seconds}
        records.append(record)
        if logger is not None:
            logger.log_eval({k: v for k, v in record.items() if isinstance(v, float)
                             and k.split("/")[0] in ("new_task", "prior_task", "prior", "forgetting", "kl", "pred",
                                                    "meter")}, step)
    return records

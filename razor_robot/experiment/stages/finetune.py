"""Stage: one fine-tuning run of a sweep, its checkpoints saved, then each evaluated
(razor_robot.experiment.stages.evaluate).

sft, oracle-sft and distill-sft train with razor_robot.training.sft on their datasets (the demonstrator's, the
base's own successes, the best RL checkpoint's successes); rl trains with razor_robot.training.reinforce.
While a run trains, the forgetting meter (razor_robot.measure.meter) measures the forward KL to the base and
forecasts the forgetting from the runs the sweep finished before this one. Evaluation comes after training, on
the main process only: under FSDP the other processes need not hold the unsharded policy, and no collective
waits on a long evaluation.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from razor_robot.config import to_dict
from razor_robot.experiment.schema import RunSpec, SweepConfig
from razor_robot.io import dumps_strict
from razor_robot.experiment.loading import adapter_factory_for, load_base_for_distances, load_for_training
from razor_robot.experiment.stages.base import RunInputs
from razor_robot.experiment.schema import resolve_device


class RunLogger:
    """Per-run metrics: ``runs/<run_id>/metrics.jsonl`` (always) and wandb (offline unless configured)."""

    def __init__(self, config: SweepConfig, run: RunSpec, out_dir: Path):
        self._run = None
        self._file = out_dir / "runs" / run.run_id / "metrics.jsonl"
        self._file.parent.mkdir(parents=True, exist_ok=True)
        self._file.write_text("")  # a restarted run starts its log afresh
        # The run's whole config beside its log, so a log can be read without the sweep config.
        (self._file.parent / "config.json").write_text(dumps_strict(
            {"method": run.method, "seed": run.seed, "hparams": run.hparams, "config": to_dict(run.config)},
            indent=2))
        if config.wandb.mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        self._run = wandb.init(project=config.wandb.project, name=run.run_id, group=config.name,
                               mode=config.wandb.mode, dir=str(out_dir), reinit="finish_previous",
                               config={"method": run.method, "seed": run.seed, **run.hparams,
                                       "run": to_dict(run.config)})
        self._run.define_metric("eval/train_step")
        self._on_eval_axis: set[str] = set()

    def _append(self, metrics: dict[str, Any]) -> None:
        with open(self._file, "a") as handle:
            handle.write(dumps_strict(metrics) + "\n")

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self._append({"step": step, **metrics})
        if self._run is not None:
            self._run.log(metrics, step=step)

    def log_eval(self, metrics: dict[str, float], train_step: int) -> None:
        """Checkpoint evaluations come after training: every evaluated metric (the records' names: new_task,
        forgetting, kl/*, pred/*, meter/*, ...) is plotted against their own training-step axis."""
        self._append({"eval/train_step": train_step, **metrics})
        if self._run is not None:
            for key in set(metrics) - self._on_eval_axis:
                self._run.define_metric(key, step_metric="eval/train_step")
                self._on_eval_axis.add(key)
            self._run.log({**metrics, "eval/train_step": train_step})

    def summary(self, metrics: dict[str, float]) -> None:
        """Whole-run figures (e.g. REINFORCE's rollout stability): one ``{"summary": ...}`` line, wandb's
        summary."""
        self._append({"summary": metrics})
        if self._run is not None:
            self._run.summary.update(metrics)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()


def make_meter(config: SweepConfig, run: RunSpec, inputs: RunInputs, policy: Any) -> Any:
    """The run's forgetting meter on the fixed new-task observations (None when meter.every is 0)."""
    if config.meter.every == 0:
        return None
    from razor_robot.measure.meter import ForgettingMeter
    from razor_robot.experiment.stages.base import subsample_observations

    observations = np.load(inputs.base.kl_observations)
    images, instructions = subsample_observations(observations["images"], [str(s) for s in observations["instructions"]],
                                      config.meter.observations)
    base = load_base_for_distances(config, inputs.base.checkpoint)
    every = 1 if run.method == "rl" else config.meter.every
    return ForgettingMeter(base, images, instructions, every=every, fit=inputs.meter_fit,
                           batch_size=config.kl.batch_size, seed=run.seed)


def stability_line(result: dict[str, float]) -> str:
    """REINFORCE's rollout stability in words (see razor_robot.training.reinforce.rollout_stability)."""
    drawdown, probability = 100 * result["rl/max_drawdown"], result["rl/drawdown_null_probability"]
    line = f"rollout success fell at most {drawdown:.1f} points below its running best"
    if math.isnan(probability):
        return line + " (episodes per iteration varied: no noise reference)"
    verdict = "more than sampling noise" if probability < 0.05 else "within sampling noise"
    return line + f"; a policy that never changed falls that far in {100 * probability:.1f}% of runs ({verdict})"


def execute_run(config: SweepConfig, run: RunSpec, inputs: RunInputs, progress: bool = True,
                accelerator: Any = None, pool: Any = None) -> list[dict[str, Any]]:
    """Train one run, saving its checkpoints, then evaluate each. Returns the records (none on processes other
    than the main one). Rollouts run on ``pool`` (the sweep's; None: the config's, for this run alone)."""
    import torch

    from razor_robot.training.data import load_dataset
    from razor_robot.training.distributed import (
        gather_state_dict, loads_weights, make_accelerator, materialise_from_main, run_on_main,
    )
    from razor_robot.training.reinforce import train_reinforce
    from razor_robot.training.sft import train_sft
    from razor_robot.experiment.stages.evaluate import Checkpoint, evaluate_checkpoints

    if run.method in inputs.missing:
        raise RuntimeError(f"no {run.method} data: {inputs.missing[run.method]}")
    out = Path(inputs.out_dir)
    torch.manual_seed(run.seed)
    device, _ = resolve_device(config.policy)
    accelerator = accelerator or make_accelerator(config.distributed, cpu=device == "cpu")
    distributed = accelerator.num_processes > 1
    # Several processes: the main one loads the weights on the CPU, the others build the policy on the meta
    # device and receive them (razor_robot.training.distributed.materialise_from_main); the accelerator then
    # places (DDP) or shards (FSDP) them. One host copy of the weights per job, not one per GPU.
    device = None if not distributed else "cpu" if loads_weights(accelerator) else "meta"
    policy = load_for_training(inputs.base.checkpoint, config.policy, device=device)
    materialise_from_main(accelerator, policy)
    logger = RunLogger(config, run, out) if accelerator.is_main_process else None
    meter = None if distributed else make_meter(config, run, inputs, policy)
    checkpoints: list[Checkpoint] = []
    start = time.perf_counter()

    save_dtype = getattr(torch, config.checkpoint_dtype())

    def on_checkpoint(step: int, fraction: float, model: Any) -> None:
        directory = out / "runs" / run.run_id / f"step-{step:06d}"
        state = gather_state_dict(accelerator, model) if distributed else None
        if accelerator.is_main_process:
            state = {k: v.to(save_dtype) if v.is_floating_point() else v
                     for k, v in (state or policy.state_dict()).items()}
            policy.save_pretrained(directory, state_dict=state)
        checkpoints.append(Checkpoint(step, fraction, directory, time.perf_counter() - start))

    with contextlib.nullcontext(pool) if pool is not None else config.env_pool() as pool:
        if run.method == "rl":
            result = train_reinforce(policy, config.plan.grid, run.config, task=config.eval.new_task,
                                     unnorm_key=config.unnorm_key, pool=pool,
                                     adapter_factory=adapter_factory_for(config.backend), on_checkpoint=on_checkpoint,
                                     log=logger, progress=progress, accelerator=accelerator, meter=meter)
            if logger is not None:
                logger.summary({k: v for k, v in result.items() if k.startswith("rl/")})
                print(f"{run.run_id}: {stability_line(result)}", flush=True)
        else:
            train_sft(policy, load_dataset(inputs.datasets[run.method]), run.config, unnorm_key=config.unnorm_key,
                      on_checkpoint=on_checkpoint, log=logger, progress=progress, accelerator=accelerator,
                      meter=meter)
        policy = meter = None  # drop the training weights before evaluation
        accelerator.free_memory()
        # The other processes wait for the evaluation outside any collective (it can take hours).
        records = run_on_main(accelerator, f"the evaluation of {run.run_id}", lambda: evaluate_checkpoints(
            config, run, checkpoints, inputs, pool, logger, progress))
    if logger is not None:
        logger.finish()
    if not accelerator.is_main_process:
        return []
    if config.checkpoints.keep == "best":
        prune_checkpoints(records, run.method)
    return records


def prune_checkpoints(records: list[dict[str, Any]], method: str) -> None:
    """Delete the weights of every checkpoint of a run but its best (``checkpoints.keep: best``); the records
    and the checkpoints' config files stay. The report and distill-sft use only each method's best checkpoint,
    which is the best of some run."""
    from razor_robot.experiment.stages.report import best_checkpoint

    best = best_checkpoint(records, method)
    for record in records:
        if best is not None and record["checkpoint"] != best["checkpoint"]:
            for weights in Path(record["checkpoint"]).glob("model*.safetensors*"):
                weights.unlink()

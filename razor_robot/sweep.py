"""The sweep: base policy -> SFT and RL runs over a hyperparameter grid -> records, frontier, KL fit, report.

Every checkpoint of every run becomes one JSON record in ``OUT/results.jsonl``:
``{run_id, method, seed, step, fraction, hparams, new_task, prior_task, prior/<task>, kl, kl/forward,
kl/reverse, kl/tv, kl/l2, per_position, checkpoint, seconds}``; the base policy is the record with
``method == "base"``. A run's records are appended together, atomically (the file is rewritten to a temp file
and renamed), only when the run has finished, so an interrupted sweep never holds half a run: re-running the
same command skips every run whose id is already in the file and restarts the rest from scratch. A run that
raises (including a NaN loss) is recorded as ``{"run_id", "status": "failed", "reason"}`` and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from razor_robot.config import load_yaml, to_dict
from razor_robot.evaluation import EnvPool, evaluate_policy
from razor_robot.experiment import (
    RunSpec, SweepConfig, adapter_factory_for, base_checkpoint, base_evaluation, collect_demos, expand_runs,
    load_for_training,
)

RESULTS_FILE = "results.jsonl"


# ------------------------------------------------------------------------------------------------ records


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append whole records atomically: rewrite into a temp file, fsync, rename over the old file."""
    existing = path.read_text() if path.exists() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(existing + "".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def finished_run_ids(records: list[dict[str, Any]]) -> set[str]:
    return {r["run_id"] for r in records if "run_id" in r}


# -------------------------------------------------------------------------------------------------- a run


class RunLogger:
    """wandb per run (offline unless configured), silently absent when wandb is disabled."""

    def __init__(self, config: SweepConfig, run: RunSpec, out_dir: Path):
        self._run = None
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

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if self._run is not None:
            self._run.log(metrics, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()


def execute_run(config: SweepConfig, run: RunSpec, base_dir: str, kl_obs_path: str, out_dir: str,
                demos_dir: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train one run, evaluating (new task, prior tasks, action-token distances) at each checkpoint."""
    import torch

    from razor_robot.data import load_dataset
    from razor_robot.metrics import action_token_distances
    from razor_robot.reinforce import train_reinforce
    from razor_robot.sft import train_sft

    out = Path(out_dir)
    torch.manual_seed(run.seed)
    policy = load_for_training(base_dir, config.policy)
    lora = config.policy.lora is not None
    base = policy if lora else load_for_training(base_dir, dataclasses.replace(config.policy, lora=None)).eval()
    observations = np.load(kl_obs_path)
    kl_images, kl_instructions = observations["images"], [str(s) for s in observations["instructions"]]
    grid, eval_positions = config.positions()
    adapter = adapter_factory_for(config.backend)
    logger = RunLogger(config, run, out)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()

    with EnvPool(config.backend, config.env, config.num_workers) as pool:

        def on_checkpoint(step: int, fraction: float) -> None:
            scores, _ = evaluate_policy(policy, eval_positions, config.eval, pool, unnorm_key=config.unnorm_key,
                                        adapter_factory=adapter, progress=progress)
            distances = action_token_distances(
                base, policy, kl_images, kl_instructions, n_prefix_samples=config.kl.prefix_samples,
                batch_size=config.kl.batch_size, generator=torch.Generator().manual_seed(run.seed),
                base_context=policy.disable_adapter if lora else None)
            checkpoint = out / "runs" / run.run_id / f"step-{step:06d}"
            policy.save_pretrained(checkpoint)
            record = {"run_id": run.run_id, "method": run.method, "seed": run.seed, "step": step,
                      "fraction": fraction, "hparams": run.hparams, **scores, **distances,
                      "kl": distances["kl/forward"], "checkpoint": str(checkpoint),
                      "seconds": time.perf_counter() - start}
            records.append(record)
            logger({f"eval/{k}": v for k, v in scores.items() if isinstance(v, float)} | distances, step)

        if run.method == "sft":
            dataset = load_dataset(demos_dir)
            train_sft(policy, dataset, run.config, unnorm_key=config.unnorm_key, on_checkpoint=on_checkpoint,
                      log=logger, progress=progress)
        else:
            train_reinforce(policy, grid, run.config, task=config.eval.new_task, unnorm_key=config.unnorm_key,
                            vector_env=pool.get(config.eval.new_task), adapter_factory=adapter,
                            on_checkpoint=on_checkpoint, log=logger, progress=progress)
    logger.finish()
    return records


def _run_or_failure(config: SweepConfig, run: RunSpec, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    try:
        return execute_run(config, run, *args, **kwargs)
    except Exception as error:  # one broken run must not stop the sweep
        reason = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        return [{"run_id": run.run_id, "method": run.method, "seed": run.seed, "hparams": run.hparams,
                 "status": "failed", "reason": reason}]


# ------------------------------------------------------------------------------------------------ a sweep


def run_sweep(config: SweepConfig, out_dir: str | Path, *, progress: bool = True,
              log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the whole sweep; returns the results file."""
    from razor_robot.envs import require_backend

    runs = expand_runs(config)  # validates every run's config before any work
    require_backend(config.backend)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    results = out / RESULTS_FILE
    start = time.perf_counter()
    with EnvPool(config.backend, config.env, config.num_workers) as pool:
        base_dir = base_checkpoint(config, pool, progress=progress, log=log)
        base_scores, kl_obs = base_evaluation(config, base_dir, out, pool, progress=progress)
        records = read_records(results)
        if not any(r.get("method") == "base" for r in records):
            append_records(results, [{"run_id": "base", "method": "base", "step": 0, "fraction": 0.0,
                                      "hparams": {}, **base_scores, "kl": 0.0, "kl/forward": 0.0,
                                      "kl/reverse": 0.0, "kl/tv": 0.0, "kl/l2": 0.0,
                                      "checkpoint": str(base_dir)}])
        log(f"base: new task {base_scores['new_task']:.0f}%, prior {base_scores['prior_task']:.0f}% "
            f"({time.perf_counter() - start:.0f} s)")
        demos_dir = None
        if any(r.method == "sft" for r in runs):
            grid, _ = config.positions()
            _, demos_dir = collect_demos(config, config.eval.new_task, grid, config.demos.episodes_per_point,
                                         config.demos.seed, pool, progress=progress)
    done = finished_run_ids(read_records(results))
    pending = [r for r in runs if r.run_id not in done]
    log(f"runs: {len(runs)} in the sweep, {len(runs) - len(pending)} already done, {len(pending)} to run")
    args = (str(base_dir), str(kl_obs), str(out), None if demos_dir is None else str(demos_dir))
    if config.engine == "ray":
        _run_on_ray(config, pending, args, results, progress)
    else:
        for run in tqdm(pending, desc="runs", disable=not progress):
            append_records(results, _run_or_failure(config, run, *args, progress=progress))
    log(f"sweep finished in {time.perf_counter() - start:.0f} s -> {results}")
    return results


def _run_on_ray(config: SweepConfig, pending: list[RunSpec], args: tuple, results: Path, progress: bool) -> None:
    """Each run is a Ray task with declared CPU/GPU resources; records are appended as runs finish."""
    try:
        import ray
    except ImportError:
        from razor_robot.envs import MissingDependencyError

        raise MissingDependencyError("ray", 'pip install "razor-robot[ray]"') from None
    if not ray.is_initialized():
        ray.init(address=config.ray.address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    remote = ray.remote(num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus, max_retries=0)(_run_or_failure)
    futures = {remote.remote(config, run, *args, progress=False): run for run in pending}
    bar = tqdm(total=len(futures), desc="runs (ray)", disable=not progress)
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        for ref in ready:
            futures.pop(ref)
            append_records(results, ray.get(ref))
            bar.update(1)
    bar.close()


def load_sweep_config(path: str | Path) -> SweepConfig:
    return load_yaml(SweepConfig, path)

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
from razor_robot.env_pool import EnvPool
from razor_robot.evaluation import evaluate_policy, forgetting_fields
from razor_robot.experiment import (
    RunSpec, SweepConfig, adapter_factory_for, base_checkpoint, base_evaluation, collect_demos, expand_runs,
    load_for_training, resolve_device,
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
    """Per-run metrics: ``runs/<run_id>/metrics.jsonl`` (always) and wandb (offline unless configured)."""

    def __init__(self, config: SweepConfig, run: RunSpec, out_dir: Path):
        self._run = None
        self._file = out_dir / "runs" / run.run_id / "metrics.jsonl"
        self._file.parent.mkdir(parents=True, exist_ok=True)
        self._file.write_text("")  # a restarted run starts its log afresh
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
        self._run.define_metric("eval/*", step_metric="eval/train_step")
        self._run.define_metric("kl/*", step_metric="eval/train_step")

    def _append(self, metrics: dict[str, Any]) -> None:
        with open(self._file, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self._append({"step": step, **metrics})
        if self._run is not None:
            self._run.log(metrics, step=step)

    def log_eval(self, metrics: dict[str, float], train_step: int) -> None:
        """Checkpoint evaluations come after training: plotted against their own training-step axis."""
        self._append({"eval/train_step": train_step, **metrics})
        if self._run is not None:
            self._run.log({**metrics, "eval/train_step": train_step})

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()


def execute_run(config: SweepConfig, run: RunSpec, base_dir: str, kl_obs_path: str, out_dir: str,
                demos_dir: str | None = None, progress: bool = True,
                accelerator: Any = None) -> list[dict[str, Any]]:
    """Train one run, saving its checkpoints, then evaluate each (new task, prior tasks, action-token distances).

    Evaluation comes after training, on the main process only: under FSDP the other processes need not hold
    the unsharded policy, and no collective waits on a long evaluation. Returns the records (none on the other
    processes).
    """
    import torch

    from razor_robot.data import load_dataset
    from razor_robot.distributed import gather_state_dict, make_accelerator
    from razor_robot.reinforce import train_reinforce
    from razor_robot.sft import train_sft

    out = Path(out_dir)
    torch.manual_seed(run.seed)
    device, _ = resolve_device(config.policy)
    accelerator = accelerator or make_accelerator(config.distributed, cpu=device == "cpu")
    # Several processes: load on the CPU and let the accelerator place (DDP) or shard (FSDP) the weights.
    policy = load_for_training(base_dir, config.policy, device="cpu" if accelerator.num_processes > 1 else None)
    grid, _ = config.positions()
    adapter = adapter_factory_for(config.backend)
    logger = RunLogger(config, run, out) if accelerator.is_main_process else None
    checkpoints: list[tuple[int, float, Path, float]] = []
    start = time.perf_counter()

    def on_checkpoint(step: int, fraction: float, model: Any) -> None:
        directory = out / "runs" / run.run_id / f"step-{step:06d}"
        state = gather_state_dict(accelerator, model) if accelerator.num_processes > 1 else None
        if accelerator.is_main_process:
            policy.save_pretrained(directory, state_dict=state)
        checkpoints.append((step, fraction, directory, time.perf_counter() - start))

    with config.env_pool() as pool:  # envs start on first use
        if run.method == "sft":
            train_sft(policy, load_dataset(demos_dir), run.config, unnorm_key=config.unnorm_key,
                      on_checkpoint=on_checkpoint, log=logger, progress=progress, accelerator=accelerator)
        else:
            train_reinforce(policy, grid, run.config, task=config.eval.new_task, unnorm_key=config.unnorm_key,
                            pool=pool, adapter_factory=adapter,
                            on_checkpoint=on_checkpoint, log=logger, progress=progress, accelerator=accelerator)
        policy = None  # drop the training weights before evaluation
        accelerator.free_memory()
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return []
        records = evaluate_checkpoints(config, run, checkpoints, base_dir, kl_obs_path, pool, logger, progress)
    if logger is not None:
        logger.finish()
    return records


def evaluate_checkpoints(config: SweepConfig, run: RunSpec, checkpoints: list[tuple[int, float, Path, float]],
                         base_dir: str, kl_obs_path: str, pool: EnvPool, logger: RunLogger | None,
                         progress: bool) -> list[dict[str, Any]]:
    """One record per saved checkpoint: new- and prior-task success and the distances to the base."""
    import torch

    from razor_robot.metrics import action_token_distances

    spec = config.inference_policy()
    lora = config.policy.lora is not None
    base = None if lora else load_for_training(base_dir, dataclasses.replace(spec, lora=None)).eval()
    base_scores = json.loads((Path(kl_obs_path).parent / "eval.json").read_text())
    observations = np.load(kl_obs_path)
    kl_images, kl_instructions = observations["images"], [str(s) for s in observations["instructions"]]
    _, eval_positions = config.positions()
    records = []
    for step, fraction, directory, train_seconds in checkpoints:
        policy = load_for_training(str(directory), spec).eval()
        scores, _ = evaluate_policy(policy, eval_positions, config.eval, pool, unnorm_key=config.unnorm_key,
                                    adapter_factory=adapter_factory_for(config.backend), progress=progress)
        distances = action_token_distances(
            policy if lora else base, policy, kl_images, kl_instructions,
            n_prefix_samples=config.kl.prefix_samples, batch_size=config.kl.batch_size,
            generator=torch.Generator().manual_seed(run.seed),
            base_context=policy.disable_adapter if lora else None)
        forgetting = forgetting_fields(base_scores["episodes"], scores["episodes"], config.eval.prior_tasks)
        records.append({"run_id": run.run_id, "method": run.method, "seed": run.seed, "step": step,
                        "fraction": fraction, "hparams": run.hparams, **scores, **forgetting, **distances,
                        "kl": distances["kl/forward"], "checkpoint": str(directory), "seconds": train_seconds})
        if logger is not None:
            logger.log_eval({f"eval/{k}": v for k, v in scores.items() if isinstance(v, float)} | distances, step)
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
    from razor_robot.ray_envs import require_ray

    runs = expand_runs(config)  # validates every run's config before any work
    require_backend(config.backend)
    if "ray" in (config.engine, config.rollout_engine):
        require_ray()
    accelerator = None
    if config.distributed.strategy != "none":  # under `accelerate launch`: every process runs this function
        from razor_robot.distributed import make_accelerator

        accelerator = make_accelerator(config.distributed, cpu=resolve_device(config.policy)[0] == "cpu")
    main = accelerator is None or accelerator.is_main_process
    progress = progress and main
    out = Path(out_dir)
    results = out / RESULTS_FILE
    start = time.perf_counter()
    stages: tuple = ()
    if main:  # demonstrations, base policy and its evaluation: once, on the main process
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=2))
        stages = _prepare_stages(config, runs, out, results, progress, log)
        done = finished_run_ids(read_records(results))
        pending_ids = [r.run_id for r in runs if r.run_id not in done]
        log(f"runs: {len(runs)} in the sweep, {len(runs) - len(pending_ids)} already done, "
            f"{len(pending_ids)} to run")
        stages = (*stages, pending_ids)
    if accelerator is not None:
        from razor_robot.distributed import broadcast_object

        stages = broadcast_object(accelerator, stages)
    *args, pending_ids = stages
    pending = [r for r in runs if r.run_id in set(pending_ids)]
    if config.engine == "ray":
        _run_on_ray(config, pending, tuple(args), results, progress)
    else:
        for run in tqdm(pending, desc="runs", disable=not progress):
            records = _run_or_failure(config, run, *args, progress=progress, accelerator=accelerator)
            if main:
                append_records(results, records)
    if main:
        log(f"sweep finished in {time.perf_counter() - start:.0f} s -> {results}")
    return results


def _prepare_stages(config: SweepConfig, runs: list[RunSpec], out: Path, results: Path, progress: bool,
                    log: Callable[[str], None]) -> tuple[str, str, str, str | None]:
    """Base policy, its evaluation and record, SFT demonstrations -> the arguments of ``execute_run``."""
    start = time.perf_counter()
    with config.env_pool() as pool:
        base_dir = base_checkpoint(config, pool, progress=progress, log=log)
        base_scores, kl_obs = base_evaluation(config, base_dir, out, pool, progress=progress)
        if not any(r.get("method") == "base" for r in read_records(results)):
            append_records(results, [{"run_id": "base", "method": "base", "step": 0, "fraction": 0.0,
                                      "hparams": {}, **base_scores, "kl": 0.0, "kl/forward": 0.0,
                                      "kl/reverse": 0.0, "kl/tv": 0.0, "kl/l2": 0.0,
                                      "checkpoint": str(base_dir)}])
        log(f"base: new task {_rate(base_scores, 'new_task')}, prior {_rate(base_scores, 'prior_task')} "
            f"({time.perf_counter() - start:.0f} s); evaluation: {config.eval.plan()[2]}")
        demos_dir = None
        if any(r.method == "sft" for r in runs):
            grid, _ = config.positions()
            _, demos_dir = collect_demos(config, config.eval.new_task, grid, config.demos.episodes_per_point,
                                         config.demos.seed, pool, progress=progress)
    return str(base_dir), str(kl_obs), str(out), None if demos_dir is None else str(demos_dir)


def _rate(scores: dict[str, Any], key: str) -> str:
    """"36.7% (11/30, 95% CI 21.9-54.5)" of a record's success rate."""
    lo, hi = scores[f"{key}/ci95"]
    return f"{scores[key]:.1f}% ({scores[f'{key}/successes']}/{scores[f'{key}/n']}, 95% CI {lo:.1f}-{hi:.1f})"


def _run_on_ray(config: SweepConfig, pending: list[RunSpec], args: tuple, results: Path, progress: bool) -> None:
    """Each run is a Ray task with declared CPU/GPU resources; records are appended as runs finish."""
    from razor_robot.ray_envs import require_ray

    ray = require_ray()
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

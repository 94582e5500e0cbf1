"""The sweep: the RL's Razor experiment as its stages, in order (each in razor_robot.experiment.stages):

    1. base        the base policy pi0 (given, or pretrained and cached), its evaluation and fixed sets
    2. demos       the SFT demonstrations, and pi0's own successful episodes for oracle-sft
    3. finetune    every run of sft, rl and oracle-sft (methods x grid x seeds), each evaluated per checkpoint
    4. demos       the best RL checkpoint's successful episodes, for distill-sft
    5. finetune    every distill-sft run
    6. report      (razor_robot.experiment.stages.report, called by the CLI) verdict, frontier, Table 1, plots, videos

Every checkpoint of every run becomes one record in ``OUT/results.jsonl`` (razor_robot.report.records; the
base is the record with ``method == "base"``), appended once the run has finished, so an interrupted sweep
never holds half a run: re-running the same command skips every run whose id is in the file and restarts the
rest. A run that raises (including a NaN loss) is recorded as failed with its reason and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from razor_robot.config import load_yaml, to_dict
from razor_robot.experiment.schema import RunSpec, SweepConfig, expand_runs, resolve_device
from razor_robot.experiment.stages.base import RunInputs, base_checkpoint, base_evaluation
from razor_robot.experiment.stages.demos import collect_demos, collect_policy_demos
from razor_robot.experiment.stages.finetune import execute_run
from razor_robot.experiment.stages.report import best_checkpoint
from razor_robot.io import atomic_path, dumps_strict
from razor_robot.report.bases import BASE_KEY
from razor_robot.report.records import (
    RESULTS_FILE, append_records, completed_records, finished_run_ids, read_records,
)
from razor_robot.report.stats import rate_summary
from razor_robot.rollout.pool import EnvPool
from razor_robot.training.distributed import run_on_main


def run_sweep(config: SweepConfig, out_dir: str | Path, *, progress: bool = True,
              log: Callable[[str], None] = print, base_label: str = "", pool: EnvPool | None = None) -> Path:
    """Run (or resume) the whole sweep; returns the results file.

    Several bases (``base.seeds``): each base's sweep runs in ``OUT/<base label>/`` as a sweep of its own,
    then ``OUT/results.jsonl`` gathers every base's records (each names its base in ``base_id``).

    One env pool (``pool``, else the config's) serves every stage and run of the sweep, and every base of a
    multi-base one: its workers build their envs once (~9 s of each worker's time per pool on the embedded
    default), not once per run."""
    runs = expand_runs(config)  # validates every run's config before any work
    bases = config.bases()
    if len(bases) > 1:
        with config.env_pool() as shared:
            return _run_bases(bases, Path(out_dir), progress, log, shared)
    with contextlib.nullcontext(pool) if pool is not None else config.env_pool() as pool:
        return _run_single(config, runs, Path(out_dir), progress, log, base_label, pool)


def _run_single(config: SweepConfig, runs: list[RunSpec], out: Path, progress: bool, log: Callable[[str], None],
                base_label: str, pool: EnvPool) -> Path:
    """One base's sweep (:func:`run_sweep`), its rollouts on ``pool``."""
    from razor_robot.envs import check_env_options, require_backend
    from razor_robot.rollout.ray_envs import require_ray

    require_backend(config.backend)
    check_env_options(config.backend, config.env)
    if config.demos.path and any(r.method == "sft" for r in runs):
        from razor_robot.envs import task_spec
        from razor_robot.training.lerobot_format import check_training_data

        check_training_data(config.demos.path, action_dim=task_spec(config.eval.new_task, config.backend).action_dim,
                            image_key=config.demos.image_key)
    if "ray" in (config.engine, config.rollout_engine):
        require_ray()
    meter_file_fit = None
    if config.meter.fit_file:
        from razor_robot.measure.meter import load_fit

        meter_file_fit = load_fit(config.meter.fit_file)
    accelerator = None
    if config.distributed.strategy != "none":  # under `accelerate launch`: every process runs this function
        from razor_robot.training.distributed import make_accelerator

        accelerator = make_accelerator(config.distributed, cpu=resolve_device(config.policy)[0] == "cpu")
    main = accelerator is None or accelerator.is_main_process
    progress = progress and main
    results = out / RESULTS_FILE
    start = time.perf_counter()

    def prepare() -> RunInputs:  # base, its evaluation and the SFT/oracle data: once, on the main process
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(dumps_strict(to_dict(config), indent=2))
        prepared = _prepare(config, runs, out, results, progress, log, base_label or _base_reference(config), pool)
        done = finished_run_ids(read_records(results))
        log(f"runs: {len(runs)} in the sweep, {sum(r.run_id in done for r in runs)} already done, "
            f"{sum(r.run_id not in done for r in runs)} to run")
        return prepared

    inputs = run_on_main(accelerator, "the base stage and the demonstrations", prepare)

    def fit_now() -> Any:  # the meter forecasts from the runs finished so far (or a given fit file)
        if meter_file_fit is not None or not main:
            return meter_file_fit
        from razor_robot.measure.meter import fit_from_records

        return fit_from_records(completed_records(results))

    base_id = base_label or _base_reference(config)
    first = [r for r in runs if r.method != "distill-sft"]
    _run_all(config, first, inputs, results, progress, accelerator, fit_now, base_id, pool)
    distill = [r for r in runs if r.method == "distill-sft"]
    if distill:
        inputs = run_on_main(accelerator, "distill-sft's episodes",
                             lambda: _distill_data(config, inputs, out, results, progress, log, pool))
        _run_all(config, distill, inputs, results, progress, accelerator, fit_now, base_id, pool)
    if main:
        log(f"sweep finished in {time.perf_counter() - start:.0f} s -> {results}")
    return results


def _run_bases(bases: list[tuple[str, SweepConfig]], out: Path, progress: bool,
               log: Callable[[str], None], pool: EnvPool) -> Path:
    """Every base's sweep in OUT/<label>/, then OUT/results.jsonl = all their records (rewritten
    atomically)."""
    parts = []
    for label, single in tqdm(bases, desc="bases", disable=not progress):
        log(f"== {label}: base {_base_reference(single)}")
        parts.append(run_sweep(single, out / label, progress=progress, log=log, base_label=label, pool=pool))
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch` the main process alone writes it
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / RESULTS_FILE) as tmp:
            tmp.write_text("".join(Path(part).read_text() for part in parts))
    return out / RESULTS_FILE


def _base_reference(config: SweepConfig) -> str:
    """What names a single-base sweep's base: its checkpoint reference, or its pretraining recipe's hash."""
    from razor_robot.experiment.stages.base import recipe_hash

    return config.base.checkpoint or f"pretrained:{recipe_hash(config)}"


def _tagged(records: list[dict[str, Any]], base_id: str) -> list[dict[str, Any]]:
    """Records with the base they belong to (razor_robot.report.bases.BASE_KEY)."""
    return [{**record, BASE_KEY: base_id} for record in records]


def import_demos(path: str, image_key: str | None, directory: Path) -> Path:
    """A LeRobot dataset as the SFT arm's data: the package's own directory is used as it is; a foreign one
    (or another camera of it) is read once and written in the package's layout, so training reads one
    layout."""
    from razor_robot.training.data import save_dataset
    from razor_robot.training.lerobot_format import read_info, read_lerobot

    if image_key in (None, "observation.image") and read_info(Path(path)).get("razor_robot"):
        return Path(path)
    return save_dataset(read_lerobot(path, image_key=image_key), directory)  # cheap: rewritten on every resume


def _prepare(config: SweepConfig, runs: list[RunSpec], out: Path, results: Path, progress: bool,
             log: Callable[[str], None], base_id: str, pool: EnvPool) -> RunInputs:
    """Stages 1-2: base policy, its evaluation and record, the SFT and oracle-sft datasets."""
    start = time.perf_counter()
    methods = {r.method for r in runs}
    base_dir = base_checkpoint(config, pool, progress=progress, log=log)
    base = base_evaluation(config, base_dir, out, pool, progress=progress)
    scores = base.scores()
    if not any(r.get("method") == "base" for r in read_records(results)):
        append_records(results, _tagged([{"run_id": "base", "method": "base", "step": 0, "fraction": 0.0,
                                          "hparams": {}, **scores, "kl": 0.0, "kl/forward": 0.0,
                                          "kl/reverse": 0.0, "kl/tv": 0.0, "kl/l2": 0.0,
                                          "checkpoint": str(base_dir)}], base_id))
    log(f"base: new task {_rate(scores, 'new_task')}, prior {_rate(scores, 'prior_task')} "
        f"({time.perf_counter() - start:.0f} s); evaluation: {config.plan.counts.note}")
    datasets: dict[str, str] = {}
    missing: dict[str, str] = {}
    if "sft" in methods and config.demos.path:
        datasets["sft"] = str(import_demos(config.demos.path, config.demos.image_key, out / "sft-demos"))
    elif "sft" in methods:
        _, directory = collect_demos(config, config.eval.new_task, config.plan.grid,
                                     config.demos.episodes_per_point, config.demos.seed, pool, progress=progress)
        datasets["sft"] = str(directory)
    if "oracle-sft" in methods:
        try:
            dataset, directory = collect_policy_demos(config, str(base_dir), out / "oracle-demos", pool,
                                                      progress=progress)
        except RuntimeError as error:  # the base never succeeded: its runs are recorded as failed
            missing["oracle-sft"] = str(error)
            log(f"oracle-sft data: {error}")
        else:
            datasets["oracle-sft"] = str(directory)
            log(f"oracle-sft data: {_demo_line(dataset)} of the base policy")
    return RunInputs(base=base, out_dir=str(out), datasets=datasets, missing=missing)


def _distill_data(config: SweepConfig, inputs: RunInputs, out: Path, results: Path, progress: bool,
                  log: Callable[[str], None], pool: EnvPool) -> RunInputs:
    """Stage 4: distill-sft's dataset from the best RL checkpoint (highest new-task, then prior-task
    success)."""
    best = best_checkpoint([r for r in completed_records(results) if r["method"] == "rl"], "rl")
    if best is None:
        return dataclasses.replace(inputs, missing={**inputs.missing, "distill-sft": "every rl run failed"})
    directory = out / "distill-demos" / Path(best["checkpoint"]).parent.name / Path(best["checkpoint"]).name
    try:
        dataset, directory = collect_policy_demos(config, best["checkpoint"], directory, pool, progress=progress)
    except RuntimeError as error:
        log(f"distill-sft data: {error}")
        return dataclasses.replace(inputs, missing={**inputs.missing, "distill-sft": str(error)})
    log(f"distill-sft data: {_demo_line(dataset)} of {best['run_id']} step {best['step']} "
        f"(new task {_rate(best, 'new_task')})")
    return dataclasses.replace(inputs, datasets={**inputs.datasets, "distill-sft": str(directory)})


def _run_all(config: SweepConfig, runs: list[RunSpec], inputs: RunInputs | None, results: Path, progress: bool,
             accelerator: Any, fit_now: Callable[[], Any], base_id: str, pool: EnvPool) -> None:
    """Stage 3/5: every run not yet in the results file; records appended as each run finishes."""
    main = accelerator is None or accelerator.is_main_process
    done = finished_run_ids(read_records(results)) if main else set()
    if accelerator is not None:
        from razor_robot.training.distributed import broadcast_object

        done = broadcast_object(accelerator, done)
    pending = [r for r in runs if r.run_id not in done]
    if config.engine == "ray":
        _run_on_ray(config, pending, dataclasses.replace(inputs, meter_fit=fit_now()), results, progress, base_id)
        return
    for run in tqdm(pending, desc="runs", disable=not progress):
        run_inputs = dataclasses.replace(inputs, meter_fit=fit_now())
        records = _run_or_failure(config, run, run_inputs, progress=progress, accelerator=accelerator, pool=pool)
        if main:
            append_records(results, _tagged(records, base_id))


def _run_or_failure(config: SweepConfig, run: RunSpec, inputs: RunInputs, **kwargs: Any) -> list[dict[str, Any]]:
    try:
        return execute_run(config, run, inputs, **kwargs)
    except Exception as error:  # one broken run must not stop the sweep
        reason = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        if kwargs.get("pool") is not None:  # workers a failure left mid-batch: the next run starts fresh ones
            kwargs["pool"].release()
        return [{"run_id": run.run_id, "method": run.method, "seed": run.seed, "hparams": run.hparams,
                 "status": "failed", "reason": reason}]


def _rate(scores: dict[str, Any], key: str) -> str:
    """"36.7% (11/30, 95% CI 21.9-54.5)" of a record's success rate."""
    lo, hi = scores[f"{key}/ci95"]
    return f"{scores[key]:.1f}% ({scores[f'{key}/successes']}/{scores[f'{key}/n']}, 95% CI {lo:.1f}-{hi:.1f})"


def _demo_line(dataset: Any) -> str:
    meta = dataset.meta
    attempts = sum(meta.get("attempts_per_point", {}).values())
    short = meta.get("shortfall_per_point", {})
    kept = len(np.unique(dataset.episode_ids))
    rate = rate_summary([1] * kept + [0] * (attempts - kept)) if attempts else None
    success = f" (success {rate['rate']:.1f}%, 95% CI {rate['ci95'][0]:.1f}-{rate['ci95'][1]:.1f})" if rate else ""
    return (f"{kept} successful episodes in {attempts} attempts{success}, {len(short)} grid points short "
            f"of K={meta['episodes_per_point']}")


def _run_on_ray(config: SweepConfig, pending: list[RunSpec], inputs: RunInputs, results: Path,
                progress: bool, base_id: str) -> None:
    """Each run is a Ray task with declared CPU/GPU resources; records are appended as runs finish."""
    from razor_robot.rollout.ray_envs import require_ray

    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=config.ray.address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    remote = ray.remote(num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus, max_retries=0)(_run_or_failure)
    futures = {remote.remote(config, run, inputs, progress=False): run for run in pending}
    bar = tqdm(total=len(futures), desc="runs (ray)", disable=not progress)
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        for ref in ready:
            futures.pop(ref)
            append_records(results, _tagged(ray.get(ref), base_id))
            bar.update(1)
    bar.close()


def load_sweep_config(path: str | Path) -> SweepConfig:
    return load_yaml(SweepConfig, path)

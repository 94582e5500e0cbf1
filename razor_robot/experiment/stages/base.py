"""Stage: the base policy pi0 and the fixed sets every checkpoint of a sweep is measured on.

- :func:`base_checkpoint`: the configured checkpoint (paper path: OpenVLA-7B), or, for the embedded default,
  a base pretrained here by behaviour cloning on the prior tasks plus a little new-task data (cached under the
  cache directory by config hash, so two sweeps with the same recipe share it).
- :func:`base_evaluation`: the base's evaluation record (once per sweep), and from its episodes
  * ``kl_observations.npz``: every k-th new-task observation, the fixed x of E_x[KL(pi0 || pi)];
  * ``prior_probes.npz``: prior-task observations, the probe set of the activation predictors (Table 1);
  * ``fisher.safetensors``: the base's diagonal empirical Fisher on those probes (Fisher-weighted L2).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from razor_robot.config import config_hash, to_dict
from razor_robot.policies.builtin import is_builtin, read_card, resolve_builtin
from razor_robot.rollout.pool import EnvPool
from razor_robot.measure.evaluation import evaluate_policy, kl_observations
from razor_robot.experiment.schema import SweepConfig
from razor_robot.io import atomic_path, dumps_strict, loads_strict
from razor_robot.experiment.stages.demos import collect_demos
from razor_robot.experiment.loading import adapter_factory_for, load_for_inference, load_for_training


@dataclass(frozen=True)
class BaseArtifacts:
    """Where a sweep's base stage left its outputs (plain strings: the runs may be Ray tasks)."""

    checkpoint: str
    """The base policy's directory."""
    eval_path: str
    """Its evaluation record (JSON, with per-episode outcomes)."""
    kl_observations: str
    """npz of images + instructions: the fixed new-task observations of the KL."""
    prior_probes: str | None
    """npz of images + instructions: prior-task probe observations (None when predictors are off)."""
    fisher: str | None
    """safetensors of the base's diagonal Fisher on the probes (None when off)."""

    def scores(self) -> dict[str, Any]:
        return loads_strict(Path(self.eval_path).read_text())


@dataclass(frozen=True)
class RunInputs:
    """Everything a run needs besides its own config (plain values: a run may be a Ray task)."""

    base: BaseArtifacts
    """The base stage's outputs."""
    out_dir: str
    """The sweep's output directory."""
    datasets: dict[str, str]
    """Method -> dataset directory of the SFT-type methods (sft, oracle-sft, distill-sft)."""
    missing: dict[str, str] = field(default_factory=dict)
    """Method -> why its dataset could not be made (e.g. the base policy never succeeded): its runs fail with
    it."""
    meter_fit: Any = None
    """razor_robot.measure.meter.ForgettingFit to forecast with (None: no forecast)."""


def recipe(config: SweepConfig) -> dict[str, Any]:
    """Everything that determines a pretrained base: its cache key, and the recipe on a shipped base's
    card."""
    return {"backend": config.backend, "env": config.env, "policy": to_dict(config.policy),
            "pretrain": to_dict(config.base.pretrain), "range": config.position_range,
            "demonstrator": {"kind": config.demos.demonstrator, "options": config.demos.demonstrator_options,
                             "max_attempts_factor": config.demos.max_attempts_factor}}


def recipe_hash(config: SweepConfig) -> str:
    """The hash of :func:`recipe` (names the cache directory; stored on a shipped base's card)."""
    return config_hash(recipe(config))


def base_checkpoint(config: SweepConfig, pool: EnvPool, *, progress: bool = True,
                    log: Callable[[str], None] = print, rebuild: bool = False) -> Path:
    """The base policy's directory: the configured checkpoint (a shipped one checked against its card), or a
    cached/pretrained embedded base; ``rebuild`` pretrains from the recipe even when a checkpoint is named."""
    from razor_robot.training.dataset import DemoDataset
    from razor_robot.policies.action_tokenizer import compute_norm_stats
    from razor_robot.training.sft import train_sft

    if config.base.checkpoint and not rebuild:
        if is_builtin(config.base.checkpoint):
            path = resolve_builtin(config.base.checkpoint)  # every file checked against its card
            card = read_card(config.base.checkpoint)
            log(f"base policy: shipped {config.base.checkpoint} (recipe {card['recipe_hash']}) at {path}")
            return path
        path = Path(config.base.checkpoint).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"base checkpoint not found: {path}")
        return path
    pretrain = config.base.pretrain
    directory = config.cache_root() / f"base-{recipe_hash(config)}"
    if (directory / "config.json").exists():
        log(f"base policy: cached at {directory}")
        return directory
    start = time.perf_counter()
    parts = []
    for i, task in enumerate(config.eval.prior_tasks if pretrain.prior_episodes else ()):
        dataset, _ = collect_demos(config, task, None, pretrain.prior_episodes, pretrain.seed + 100_000 * i, pool,
                                   progress=progress)
        parts.append(dataset)
    if pretrain.new_task_episodes:
        from razor_robot.envs import eval_positions, position_ranges

        # Uniform random can positions, one demonstration each (neither the training grid nor the eval set).
        x_range, y_range = position_ranges(config.backend, config.position_range)
        points = eval_positions(pretrain.new_task_episodes, seed=pretrain.seed, x_range=x_range, y_range=y_range,
                                backend=config.backend)
        dataset, _ = collect_demos(config, config.eval.new_task, points, 1, pretrain.seed + 900_000, pool,
                                   progress=progress)
        parts.append(dataset)
    data = DemoDataset.concatenate(parts)
    pool.release()  # no env steps while the base trains: free the workers' memory and cores
    sft_config = pretrain.sft_config()
    # The training seed also initialises the weights, so the bases of a multi-base sweep differ in both.
    policy = load_for_training(config.policy.name, dataclasses.replace(config.policy, lora=None),
                               action_dim=int(data.actions.shape[1]), seed=sft_config.seed)
    # The gripper command (last dimension) is already in [-1, 1] and binary-like: left un-normalised, as
    # OpenVLA does for end-effector datasets.
    mask = [True] * (data.actions.shape[1] - 1) + [False]
    policy.set_norm_stats(config.unnorm_key, compute_norm_stats(data.actions, mask))
    train_sft(policy, data, sft_config, unnorm_key=config.unnorm_key, progress=progress)
    with atomic_path(directory) as tmp:
        policy.save_pretrained(tmp)
    log(f"base policy: pretrained on {len(data)} steps in {time.perf_counter() - start:.0f} s -> {directory}")
    return directory


def subsample_observations(images: np.ndarray, instructions: list[str], n: int) -> tuple[np.ndarray, list[str]]:
    """At most n observations, evenly spaced (deterministic)."""
    if len(images) <= n:
        return images, instructions
    keep = np.linspace(0, len(images) - 1, n).round().astype(int)
    return images[keep], [instructions[i] for i in keep]


def base_evaluation(config: SweepConfig, base_dir: Path, out_dir: Path, pool: EnvPool, *,
                    progress: bool = True) -> BaseArtifacts:
    """Evaluate the base once per sweep and cache the fixed observation sets (see the module docstring)."""
    root = out_dir / "base"
    predictors = config.predictors
    artifacts = BaseArtifacts(
        checkpoint=str(base_dir), eval_path=str(root / "eval.json"),
        kl_observations=str(root / "kl_observations.npz"),
        prior_probes=str(root / "prior_probes.npz") if predictors.enabled else None,
        fisher=str(root / "fisher.safetensors") if predictors.enabled and predictors.fisher else None)
    paths = [p for p in (artifacts.eval_path, artifacts.kl_observations, artifacts.prior_probes, artifacts.fisher) if p]
    if all(Path(p).exists() for p in paths) and _evaluated(artifacts.eval_path) == str(base_dir):
        return artifacts
    policy = load_for_inference(str(base_dir), config)
    scores, trajectories = evaluate_policy(policy, config.plan.eval_positions, config.eval, pool,
                                           unnorm_key=config.unnorm_key, adapter_factory=adapter_factory_for(config.backend),
                                           keep_new_task_images=True, keep_prior_images=predictors.enabled,
                                           progress=progress)
    new_task = [t for t in trajectories if t.task == config.eval.new_task]
    images, instructions = subsample_observations(*kl_observations(new_task, config.eval.kl_observation_stride),
                                      config.kl.max_observations)
    with atomic_path(artifacts.kl_observations) as tmp:
        np.savez_compressed(tmp, images=images, instructions=np.asarray(instructions))
    if artifacts.prior_probes:
        prior = [t for t in trajectories if t.task != config.eval.new_task]
        images, instructions = subsample_observations(*kl_observations(prior, 1), predictors.probe_observations)
        with atomic_path(artifacts.prior_probes) as tmp:
            np.savez_compressed(tmp, images=images, instructions=np.asarray(instructions))
        if artifacts.fisher:
            import torch

            from razor_robot.measure.predictors import diagonal_fisher, save_fisher

            # Actions sampled from pi0 at T=1: the Fisher of pi0's own action distribution, not of its mode.
            fisher = diagonal_fisher(policy, images, instructions, generator=torch.Generator().manual_seed(0))
            with atomic_path(artifacts.fisher) as tmp:
                save_fisher(tmp, fisher)
    # Written last and naming its checkpoint: the cached sets are reused only for the same base.
    with atomic_path(artifacts.eval_path) as tmp:
        tmp.write_text(dumps_strict({**scores, "checkpoint": str(base_dir)}))
    return artifacts


def _evaluated(eval_path: str) -> str | None:
    """The checkpoint a cached base evaluation was made of (None for an older file without it)."""
    try:
        return loads_strict(Path(eval_path).read_text()).get("checkpoint")
    except (OSError, ValueError):
        return None


def ship_base(config: SweepConfig, base_dir: Path, scores: dict[str, Any], name: str,
              root: Path | None = None) -> Path:
    """Copy a pretrained base into the package's shipped bases (``root``: razor_robot.policies.builtin's
    folder) with its card: recipe and hash, evaluation with counts and intervals, the build machine, file
    hashes."""
    import platform

    import torch

    from razor_robot.policies.builtin import BUILTIN_ROOT, CARD_FILE, file_digests

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--ship needs a plain folder name, got {name!r}")
    files = sorted(p.name for p in Path(base_dir).iterdir() if p.is_file())
    rates = {key: {"rate": scores[key], "n": scores[f"{key}/n"], "successes": scores[f"{key}/successes"],
                   "ci95": scores[f"{key}/ci95"]}
             for key in scores if f"{key}/ci95" in scores}
    card = {
        "name": name,
        "reference": f"builtin:{name}",
        "recipe": recipe(config),
        "recipe_hash": recipe_hash(config),
        "rebuild": f"razor-robot pretrain CONFIG --ship {name}  (CONFIG with this recipe; see recipe_hash)",
        "evaluation": {"rates": rates, "new_task_positions": config.eval.new_task_positions,
                       "position_seed": config.eval.position_seed, "episode_seed": config.eval.episode_seed,
                       "prior_episodes": config.eval.prior_episodes},
        "built_on": {"cpu": _cpu_name(), "cpus": os.cpu_count(), "machine": platform.machine(),
                     "python": platform.python_version(), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d", time.gmtime())},
        "files": file_digests(base_dir, files),
    }
    target = Path(root or BUILTIN_ROOT) / name
    with atomic_path(target) as tmp:
        shutil.copytree(base_dir, tmp)
        (tmp / CARD_FILE).write_text(dumps_strict(card, indent=2) + "\n")
    return target


def _cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

"""The experiment's typed config and its stages: demonstrations, base policy, one fine-tuning run.

Stages are cached by config hash under ``cache_dir`` (demonstrations, the pretrained base policy) or under the
sweep's output directory (the base evaluation and the fixed KL observation set), so a re-run or another sweep
with the same settings reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from razor_robot.config import ConfigError, config_hash, from_dict, set_dotted, to_dict
from razor_robot.distributed import DistributedSpec
from razor_robot.env_pool import EnvPool
from razor_robot.evaluation import EvalConfig, evaluate_policy, kl_observations
from razor_robot.reinforce import RLConfig
from razor_robot.sft import SFTConfig

METHODS = ("sft", "rl")
EMBEDDED_UNNORM_KEY = "metaworld_demos"


@dataclass
class LoRASpec:
    """LoRA adapters (peft) instead of full fine-tuning."""

    r: int = 32
    """Adapter rank."""
    alpha: int = 16
    """Adapter scaling numerator (scale = alpha / r)."""
    target_modules: str = "all-linear"
    """Which linear layers get adapters."""
    dropout: float = 0.0
    """Adapter dropout."""


@dataclass
class PolicySpec:
    """Which policy architecture/weights to fine-tune."""

    name: str = "tiny"
    """"tiny", "openvla-7b" (random init, for shapes), or a checkpoint directory (OpenVLA HF or project)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config overrides passed to ``load_policy`` (e.g. image_size, action_dim)."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", ..."""
    dtype: str = "auto"
    """"auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16"."""
    lora: LoRASpec | None = None
    """LoRA fine-tuning; None = full fine-tuning."""
    gradient_checkpointing: bool = False
    """Trade compute for memory (OpenVLA-7B)."""
    torch_threads: int | None = None
    """CPU threads for torch (None: torch's default)."""
    unnorm_key: str | None = None
    """Action statistics key; None: the backend's default (fractal20220817_data for simpler)."""


@dataclass
class DemoSpec:
    """Demonstrations of the new task on the training grid (the SFT data)."""

    grid_size: int = 10
    """n: the training grid has n x n can positions."""
    episodes_per_point: int = 10
    """K successful demonstrations kept per grid point (the paper: 10)."""
    max_attempts_factor: int = 3
    """At most this many attempts per wanted demonstration."""
    demonstrator: str = "scripted"
    """"scripted" (Meta-World experts) or "rt1" (SimplerEnv; needs demonstrator_options.checkpoint_dir)."""
    demonstrator_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``make_demonstrator``."""
    seed: int = 0
    """First collection seed."""

    def __post_init__(self):
        if self.grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {self.grid_size}")
        if self.episodes_per_point < 1:
            raise ValueError(f"episodes_per_point (K) must be >= 1, got {self.episodes_per_point}")


@dataclass
class PretrainSpec:
    """How the embedded default's base policy learns the prior skills (behaviour cloning)."""

    prior_episodes: int = 60
    """Scripted demonstrations per prior task."""
    new_task_episodes: int = 6
    """A little new-task data, so the base has some success to improve on (RL needs reward)."""
    seed: int = 12_345
    """Collection seed (disjoint from the fine-tuning demonstrations)."""
    sft: dict[str, Any] = field(default_factory=lambda: {
        "optim": {"learning_rate": 1e-3, "batch_size": 64, "warmup_steps": 100},
        "epochs": 20, "label_sigma_bins": 1.5, "shift_augment_px": 4, "checkpoints": 1})
    """SFTConfig mapping for pretraining."""

    def sft_config(self) -> SFTConfig:
        return from_dict(SFTConfig, self.sft, "base.pretrain.sft")


@dataclass
class BaseSpec:
    """The base policy π0: an existing checkpoint (paper path) or one pretrained here (embedded default)."""

    checkpoint: str | None = None
    """Checkpoint directory of the base; None = pretrain one with ``pretrain``."""
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    """Pretraining recipe when ``checkpoint`` is None."""


@dataclass
class KLSpec:
    """The action-token distance measurement."""

    prefix_samples: int = 1
    """Token prefixes sampled from π0 per observation."""
    max_observations: int = 1024
    """Cap on the fixed observation set (subsampled evenly)."""
    batch_size: int = 64
    """Observations per forward pass."""


@dataclass
class MethodSweep:
    """One fine-tuning method's settings and the hyperparameter grid swept over them."""

    enabled: bool = True
    """Run this method."""
    config: dict[str, Any] = field(default_factory=dict)
    """SFTConfig / RLConfig mapping shared by all runs of the method."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Dotted key -> values; runs are the Cartesian product (e.g. optim.learning_rate: [1e-5, 3e-5])."""


@dataclass
class RaySpec:
    """Resources of one sweep run as a Ray task."""

    address: str | None = None
    """Ray cluster address; None starts a local Ray."""
    num_cpus: float = 2
    """CPUs per run."""
    num_gpus: float = 0
    """GPUs per run."""
    env_num_cpus: float = 1
    """CPUs per env actor when ``rollout_engine`` is ray."""


@dataclass
class WandbSpec:
    """Weights & Biases logging per run."""

    mode: str = "offline"
    """"offline" (default), "online" or "disabled"."""
    project: str = "razor-robot"
    """Project name."""

    def __post_init__(self):
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb.mode must be offline, online or disabled, got {self.mode!r}")


@dataclass
class ReportSpec:
    """What the sweep writes when it ends."""

    videos: bool = True
    """Rollout MP4s of the best SFT and best RL checkpoints on the new task and a prior task."""
    video_episodes: int = 4
    """Episodes per video."""
    video_tile: int = 128
    """Pixel size of each episode's tile."""


@dataclass
class SweepConfig:
    """A whole RL's Razor experiment: base policy, data, fine-tuning sweeps, evaluation, KL, reports."""

    name: str = "sweep"
    """Experiment name (labels outputs)."""
    backend: str = "metaworld"
    """Simulator backend: metaworld (embedded, CPU) or simpler (SimplerEnv, paper)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Every run is repeated for each seed."""
    num_workers: int | None = None
    """Env worker processes for rollouts (None: one per CPU this process may use)."""
    envs_per_worker: int = 8
    """Env slots per worker process; the rollout engine overlaps the policy on one half of all slots with the
    simulation of the other half (razor_robot.env_pool)."""
    env: dict[str, Any] = field(default_factory=lambda: {"image_size": 64})
    """Options for ``make_env`` (image_size, success_mode, backend options)."""
    position_range: str = "default"
    """Named can-position range of the backend (simpler also has "paper-printed")."""
    cache_dir: str | None = None
    """Cache for demonstrations and pretrained bases (default: $RAZOR_ROBOT_CACHE or ~/.cache/razor-robot)."""
    policy: PolicySpec = field(default_factory=PolicySpec)
    """The policy."""
    base: BaseSpec = field(default_factory=BaseSpec)
    """The base policy."""
    demos: DemoSpec = field(default_factory=DemoSpec)
    """SFT demonstrations."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation of every checkpoint."""
    kl: KLSpec = field(default_factory=KLSpec)
    """KL measurement."""
    sft: MethodSweep = field(default_factory=MethodSweep)
    """SFT sweep."""
    rl: MethodSweep = field(default_factory=MethodSweep)
    """RL sweep."""
    engine: str = "local"
    """"local" (runs in this process, one after another) or "ray" (each run a Ray task)."""
    rollout_engine: str = "subprocess"
    """Env workers: "subprocess" (this machine) or "ray" (Ray actors, e.g. CPU-only SimplerEnv on a cluster)."""
    ray: RaySpec = field(default_factory=RaySpec)
    """Ray resources."""
    wandb: WandbSpec = field(default_factory=WandbSpec)
    """Logging."""
    report: ReportSpec = field(default_factory=ReportSpec)
    """End-of-sweep report."""
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    """Training over several processes/GPUs (FSDP or DDP through accelerate; see razor_robot.distributed)."""

    def __post_init__(self):
        from razor_robot.envs import check_backend

        check_backend(self.backend)
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be local or ray, got {self.engine!r}")
        from razor_robot.env_pool import ENGINES

        if self.rollout_engine not in ENGINES:
            raise ValueError(f"rollout_engine must be one of {', '.join(ENGINES)}, got {self.rollout_engine!r}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 (or null: one per CPU), got {self.num_workers}")
        if self.envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be >= 1, got {self.envs_per_worker}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if self.engine == "ray" and self.distributed.strategy != "none":
            raise ValueError("distributed training runs under `accelerate launch` with engine: local, not ray")

    @property
    def unnorm_key(self) -> str:
        if self.policy.unnorm_key:
            return self.policy.unnorm_key
        return "fractal20220817_data" if self.backend == "simpler" else EMBEDDED_UNNORM_KEY

    def inference_policy(self) -> PolicySpec:
        """How evaluation, videos and the base's evaluation load policies: no gradient checkpointing, and bf16
        weights when training computes in bf16 over fp32 master weights (as the RL rollouts do)."""
        dtype = "bfloat16" if self.distributed.mixed_precision == "bf16" else self.policy.dtype
        return dataclasses.replace(self.policy, gradient_checkpointing=False, dtype=dtype)

    def env_pool(self) -> EnvPool:
        """The configured env workers: one pool for every task, started on first use (razor_robot.env_pool)."""
        return EnvPool(self.backend, self.env, num_workers=self.num_workers, envs_per_worker=self.envs_per_worker,
                       engine=self.rollout_engine, ray_num_cpus=self.ray.env_num_cpus)

    def cache_root(self) -> Path:
        root = self.cache_dir or os.environ.get("RAZOR_ROBOT_CACHE") or Path.home() / ".cache" / "razor-robot"
        return Path(root)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(training grid (n², 2), eval positions (P, 2)) for this backend and range."""
        from razor_robot.envs import eval_positions, grid_positions, position_ranges

        x_range, y_range = position_ranges(self.backend, self.position_range)
        grid = grid_positions(self.demos.grid_size, x_range=x_range, y_range=y_range, backend=self.backend)
        n_new, _, _ = self.eval.plan()
        evals = eval_positions(n_new, seed=self.eval.position_seed, x_range=x_range, y_range=y_range,
                               backend=self.backend)
        return grid, evals


@dataclass
class RunSpec:
    """One fine-tuning run of a sweep."""

    method: str
    seed: int
    hparams: dict[str, Any]
    """The grid values of this run (dotted keys)."""
    config: Any
    """Typed SFTConfig or RLConfig."""

    @property
    def run_id(self) -> str:
        return f"{self.method}-{config_hash({'config': to_dict(self.config), 'seed': self.seed}, 10)}"


def expand_runs(config: SweepConfig) -> list[RunSpec]:
    """Methods x hyperparameter grid x seeds; every run's config is validated here, before any work."""
    import itertools

    runs = []
    for method, sweep, cls in (("sft", config.sft, SFTConfig), ("rl", config.rl, RLConfig)):
        if not sweep.enabled:
            continue
        keys = list(sweep.grid)
        for key in keys:
            if not isinstance(sweep.grid[key], list) or not sweep.grid[key]:
                raise ConfigError(f"{config.name}.{method}.grid.{key}: expected a non-empty list of values")
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            for seed in config.seeds:
                data = dict(sweep.config, seed=seed)
                for key, value in zip(keys, values):
                    data = set_dotted(data, key, value)
                typed = from_dict(cls, data, f"{config.name}.{method}.config")
                runs.append(RunSpec(method, seed, dict(zip(keys, values)), typed))
    return runs


# ----------------------------------------------------------------------------------------------- policies


def resolve_device(spec: PolicySpec) -> tuple[str, str]:
    import torch

    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = spec.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def load_for_training(path_or_name: str, spec: PolicySpec, *, device: str | None = None, **overrides: Any):
    """Load a policy on the configured (or the given) device and dtype, with LoRA and gradient checkpointing
    if asked."""
    import torch

    from razor_robot.policies import load_policy

    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    configured_device, dtype = resolve_device(spec)
    device = device or configured_device
    policy = load_policy(path_or_name, device=device, dtype=getattr(torch, dtype), **{**spec.overrides, **overrides})
    if spec.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if spec.lora is not None and policy.lora_config is None:  # a LoRA checkpoint comes with its adapters
        policy.enable_lora(r=spec.lora.r, alpha=spec.lora.alpha, target_modules=spec.lora.target_modules,
                           dropout=spec.lora.dropout)
    return policy


def adapter_factory_for(backend: str) -> Callable[[], Any] | None:
    from razor_robot.policies.adapters import MetaWorldActionAdapter, OpenVLAGoogleRobotAdapter

    return OpenVLAGoogleRobotAdapter if backend == "simpler" else MetaWorldActionAdapter


def demonstrator_factory(task: str, backend: str, options: dict[str, Any]) -> Callable[[], Any]:
    import functools

    from razor_robot.policies import make_demonstrator

    make_demonstrator(task, backend, **options)  # fail fast (missing dependency, checkpoint) before rollouts
    return functools.partial(make_demonstrator, task, backend, **options)


# ------------------------------------------------------------------------------------------------- stages


def collect_demos(config: SweepConfig, task: str, positions: np.ndarray | None, episodes_per_point: int,
                  seed: int, pool: EnvPool, *, progress: bool = True):
    """Collect (or load from cache) K successful demonstrations per point; returns (dataset, directory)."""
    from razor_robot.data import CollectionPlan, collect, load_dataset, save_dataset, trajectories_to_dataset

    key = {"backend": config.backend, "env": config.env, "task": task, "k": episodes_per_point, "seed": seed,
           "positions": None if positions is None else np.round(positions, 6).tolist(),
           "demonstrator": config.demos.demonstrator, "options": config.demos.demonstrator_options,
           "attempts": config.demos.max_attempts_factor}
    directory = config.cache_root() / f"demos-{task}-{config_hash(key)}"
    try:
        return load_dataset(directory), directory
    except FileNotFoundError:
        pass
    plan = CollectionPlan(task, episodes_per_point, positions, config.demos.max_attempts_factor, seed)
    factory = demonstrator_factory(task, config.backend, config.demos.demonstrator_options)
    kept, grid_index, shortfall = collect(plan, factory, pool=pool, progress=progress)
    if not kept:
        raise RuntimeError(f"the {config.demos.demonstrator} demonstrator succeeded on no {task} episode")
    dataset = trajectories_to_dataset(kept, grid_index)
    dataset.meta.update(task=task, backend=config.backend, shortfall_per_point=shortfall,
                        episodes_per_point=episodes_per_point, positions=key["positions"])
    save_dataset(dataset, directory)
    return dataset, directory


def base_checkpoint(config: SweepConfig, pool: EnvPool, *, progress: bool = True,
                    log: Callable[[str], None] = print) -> Path:
    """The base policy's directory: the configured checkpoint, or a cached/pretrained embedded base."""
    from razor_robot.data import DemoDataset
    from razor_robot.policies.action_tokenizer import compute_norm_stats
    from razor_robot.sft import train_sft

    if config.base.checkpoint:
        path = Path(config.base.checkpoint).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"base checkpoint not found: {path}")
        return path
    pretrain = config.base.pretrain
    key = {"backend": config.backend, "env": config.env, "policy": to_dict(config.policy), "pretrain":
           to_dict(pretrain), "range": config.position_range, "demos_grid": config.demos.grid_size}
    directory = config.cache_root() / f"base-{config_hash(key)}"
    if (directory / "config.json").exists():
        log(f"base policy: cached at {directory}")
        return directory
    start = time.perf_counter()
    parts = []
    for i, task in enumerate(config.eval.prior_tasks):
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
    policy = load_for_training(config.policy.name, dataclasses.replace(config.policy, lora=None),
                               action_dim=int(data.actions.shape[1]))
    # The gripper command (last dimension) is already in [-1, 1] and binary-like: left un-normalised, as OpenVLA
    # does for end-effector datasets.
    mask = [True] * (data.actions.shape[1] - 1) + [False]
    policy.set_norm_stats(config.unnorm_key, compute_norm_stats(data.actions, mask))
    train_sft(policy, data, pretrain.sft_config(), unnorm_key=config.unnorm_key, progress=progress)
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    log(f"base policy: pretrained on {len(data)} steps in {time.perf_counter() - start:.0f} s -> {directory}")
    return directory


def base_evaluation(config: SweepConfig, base_dir: Path, out_dir: Path, pool: EnvPool, *,
                    progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Evaluate the base once per sweep and cache the fixed KL observation set x (base's new-task visits)."""
    eval_path, obs_path = out_dir / "base" / "eval.json", out_dir / "base" / "kl_observations.npz"
    if eval_path.exists() and obs_path.exists():
        return json.loads(eval_path.read_text()), obs_path
    eval_path.parent.mkdir(parents=True, exist_ok=True)
    policy = load_for_training(str(base_dir), dataclasses.replace(config.inference_policy(), lora=None))
    _, positions = config.positions()
    scores, trajectories = evaluate_policy(policy, positions, config.eval, pool, unnorm_key=config.unnorm_key,
                                           adapter_factory=adapter_factory_for(config.backend),
                                           keep_new_task_images=True, progress=progress)
    new_task = [t for t in trajectories if t.task == config.eval.new_task]
    images, instructions = kl_observations(new_task, config.eval.kl_observation_stride)
    if len(images) > config.kl.max_observations:
        keep = np.linspace(0, len(images) - 1, config.kl.max_observations).round().astype(int)
        images, instructions = images[keep], [instructions[i] for i in keep]
    atomic_save_npz(obs_path, images=images, instructions=np.asarray(instructions))
    atomic_write_text(eval_path, json.dumps(scores))
    return scores, obs_path


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save_npz(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)

"""The experiment's typed schema: a sweep's config (YAML -> these dataclasses) and its runs.

A sweep fine-tunes one base policy with every enabled method over its hyperparameter grid and seeds:

    sft          SFT on the demonstrator's successful episodes (the paper's SFT arm)
    rl           on-policy REINFORCE (the paper's RL arm)
    oracle-sft   SFT on the base policy's own successful episodes, i.e. samples of pi0 conditioned on success:
                 with a binary reward this is the KL-minimal distribution that always succeeds (the
                 I-projection, RL's Razor Lemma A.1), the paper's oracle
    distill-sft  SFT on the best RL checkpoint's successful episodes (the paper's distillation check)

The stages that run them live in razor_robot.experiment.stages; razor_robot.experiment.sweep runs them in
order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from razor_robot.config import ConfigError, config_hash, from_dict, set_dotted, to_dict
from razor_robot.experiment.plan import SweepPlan
from razor_robot.training.distributed import DistributedSpec
from razor_robot.rollout.pool import EnvPool
from razor_robot.measure.evaluation import EvalConfig
from razor_robot.training.reinforce import RLConfig
from razor_robot.training.sft import SFTConfig

METHODS = ("sft", "rl", "oracle-sft", "distill-sft")
"""Fine-tuning methods, in the order a sweep runs them (distill-sft needs the RL runs' checkpoints)."""
BASE_SEED_STRIDE = 1_000_000
"""Base s of a multi-base sweep draws its pretraining episodes' seeds from pretrain.seed + s * this (disjoint:
one collection uses fewer than 100,000 seeds per task)."""


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
    """CPU threads for torch while training (None: the CPUs this process may use); rollouts use one."""
    unnorm_key: str | None = None
    """Action statistics key; None: the backend's default (fractal20220817_data for simpler)."""


def resolve_device(spec: PolicySpec) -> tuple[str, str]:
    """("cuda" or "cpu" ..., "bfloat16" or "float32" ...) for a policy spec's "auto" values."""
    import torch

    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = spec.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


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
    """"scripted" (Meta-World's experts; SimplerEnv's scripted Google-robot pick) or "rt1" (SimplerEnv; needs
    demonstrator_options.checkpoint_dir)."""
    demonstrator_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``make_demonstrator``."""
    seed: int = 0
    """First collection seed."""
    path: str | None = None
    """A LeRobotDataset v3.0 directory to fine-tune SFT on instead of collecting demonstrations (the package's
    own, or a foreign one: its image feature, an ``action`` of the policy's dimension, its task strings as the
    instructions). None: collect with the demonstrator."""
    image_key: str | None = None
    """The image feature of ``path`` to train on; None: its first feature of dtype image."""

    def __post_init__(self):
        if self.grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {self.grid_size}")
        if self.episodes_per_point < 1:
            raise ValueError(f"episodes_per_point (K) must be >= 1, got {self.episodes_per_point}")


@dataclass
class PretrainSpec:
    """How the embedded default's base policy learns the prior skills (behaviour cloning)."""

    prior_episodes: int = 60
    """Scripted demonstrations per prior task (0: none, e.g. where no drawer demonstrator is available)."""
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
    """Checkpoint directory of the base, or a base shipped with the package, "builtin:<name>"
    (razor_robot.policies.builtin); None = pretrain one with ``pretrain``. With ``seeds``, "{seed}" in it is
    replaced by each base's seed."""
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    """Pretraining recipe when ``checkpoint`` is None (and what ``razor-robot pretrain`` rebuilds a shipped
    base from)."""
    seeds: list[int] | None = None
    """Several bases in one sweep, one per seed: every run fine-tunes each base, records name their base, and
    the report gives per-base and pooled results. Base s is pretrained with its demonstrations' seeds shifted
    by s * BASE_SEED_STRIDE and s as its training and initialisation seed (or is ``checkpoint`` with {seed}
    = s). One seed is that one base as a single-base sweep; None = one base, exactly as
    ``checkpoint``/``pretrain`` say."""

    def __post_init__(self):
        if self.seeds is not None:
            if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
                raise ValueError(f"base.seeds must list distinct seeds >= 0, got {self.seeds}")
            if self.checkpoint and "{seed}" not in self.checkpoint and len(self.seeds) > 1:
                raise ValueError(f"base.checkpoint {self.checkpoint!r} names one base for {len(self.seeds)} "
                                 "seeds: put {seed} in it (e.g. builtin:tiny-metaworld-s{seed})")
            if len(self.seeds) == 1:  # one base: exactly base s of a multi-base sweep, as a single-base sweep
                single = self.for_seed(self.seeds[0])
                self.checkpoint, self.pretrain, self.seeds = single.checkpoint, single.pretrain, None
        elif self.checkpoint and "{seed}" in self.checkpoint:
            raise ValueError(f"base.checkpoint {self.checkpoint!r} has {{seed}} but base.seeds is not set: "
                             "list the bases' seeds (e.g. base.seeds=[0]) or name one checkpoint")

    def for_seed(self, seed: int) -> "BaseSpec":
        """The single-base spec of base ``seed`` (see ``seeds``)."""
        # Seed 0 leaves the recipe as written, so base-s0 is the single base of the same config (one cache).
        sft = {**self.pretrain.sft, "seed": seed} if seed else dict(self.pretrain.sft)
        pretrain = dataclasses.replace(self.pretrain, seed=self.pretrain.seed + BASE_SEED_STRIDE * seed, sft=sft)
        checkpoint = self.checkpoint.replace("{seed}", str(seed)) if self.checkpoint else None
        return BaseSpec(checkpoint=checkpoint, pretrain=pretrain, seeds=None)


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
class PolicyDemoSpec:
    """Episodes of a policy (not a demonstrator) kept by rejection sampling: the data of oracle-sft (the base
    policy) and distill-sft (the best RL checkpoint)."""

    episodes_per_point: int | None = None
    """K successes kept per training-grid point; None = demos.episodes_per_point."""
    max_attempts_factor: int = 20
    """At most this many attempts per wanted success (shortfalls are reported in the dataset's meta)."""
    temperature: float = 1.0
    """Sampling temperature (1 = the policy's own distribution)."""
    seed: int = 2_000_000
    """First env seed of the attempts (disjoint from evaluation and demonstration seeds)."""

    def __post_init__(self):
        if self.episodes_per_point is not None and self.episodes_per_point < 1:
            raise ValueError(f"episodes_per_point must be >= 1, got {self.episodes_per_point}")
        if self.max_attempts_factor < 1 or not self.temperature > 0:
            raise ValueError("need max_attempts_factor >= 1 and temperature > 0")


@dataclass
class PredictorSpec:
    """Table 1's alternative predictors of forgetting, measured for every checkpoint
    (razor_robot.measure.predictors)."""

    enabled: bool = True
    """Compute the pred/* values of every record."""
    probe_observations: int = 128
    """Prior-task observations of the base policy's evaluation episodes used as the fixed probe set."""
    fisher: bool = True
    """Also the Fisher-weighted L2 (one per-sample backward pass per probe, once per sweep)."""

    def __post_init__(self):
        if self.probe_observations < 2:
            raise ValueError(f"probe_observations must be >= 2, got {self.probe_observations}")


@dataclass
class MeterSpec:
    """The live forgetting meter: forward KL on the fixed new-task observations during training, and the
    forgetting it forecasts from a KL -> forgetting fit (razor_robot.measure.meter)."""

    every: int = 50
    """Measure every this many SFT optimiser steps; RL measures every iteration. 0 turns the meter off."""
    observations: int = 256
    """New-task observations of the fixed KL set the meter uses (evenly subsampled)."""
    fit_file: str | None = None
    """A JSON fit {"coeffs": [c2, c1, c0]} to forecast with; None = fit the runs already finished in this
    sweep."""

    def __post_init__(self):
        if self.every < 0 or self.observations < 1:
            raise ValueError("need meter.every >= 0 and meter.observations >= 1")


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
    """Rollout MP4s of each method's best checkpoint on the new task and a prior task, and one side-by-side
    MP4 of SFT and RL at matched new-task success on the same episodes (``sft-vs-rl.mp4``)."""
    video_episodes: int = 4
    """Episodes per video."""
    video_tile: int = 256
    """Pixel size of each episode's tile."""
    video_camera: int = 256
    """Meta-World: pixel size of the videos' own camera (``viewer_size``: another viewpoint, rendered beside
    the policy's input, which stays as it is); 0 shows the policy's own frames (the simpler backend always
    does)."""

    def __post_init__(self):
        if self.video_episodes < 1:
            raise ValueError(f"report.video_episodes must be >= 1, got {self.video_episodes}")
        if self.video_tile < 16 or self.video_tile % 16:
            raise ValueError(f"report.video_tile must be a multiple of 16, got {self.video_tile}")
        if self.video_camera and not 16 <= self.video_camera <= 1024:
            raise ValueError(f"report.video_camera must be 0 or in [16, 1024], got {self.video_camera}")


CHECKPOINT_DTYPES = ("auto", "float32", "bfloat16")
CHECKPOINT_KEEP = ("all", "best")


@dataclass
class CheckpointSpec:
    """How fine-tuning checkpoints are stored (the paper config: 28+ runs x 4 checkpoints of 7.5 B
    weights)."""

    dtype: str = "auto"
    """"auto": the dtype evaluation loads them in (``inference_policy``: bf16 when training computes in bf16,
    else the policy's), so nothing any record measures is lost; "float32" or "bfloat16" explicitly."""
    keep: str = "all"
    """"all": every checkpoint keeps its weights; "best": once a run's checkpoints are evaluated, only its
    best one (highest new-task, then prior-task success: the one the report's videos and distill-sft can use)
    keeps its weights file; the others keep config and tokenizer, and their records stay."""

    def __post_init__(self):
        if self.dtype not in CHECKPOINT_DTYPES:
            raise ValueError(f"checkpoints.dtype must be one of {', '.join(CHECKPOINT_DTYPES)}, got {self.dtype!r}")
        if self.keep not in CHECKPOINT_KEEP:
            raise ValueError(f"checkpoints.keep must be one of {', '.join(CHECKPOINT_KEEP)}, got {self.keep!r}")


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
    simulation of the other half (razor_robot.rollout.pool)."""
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
    oracle_sft: MethodSweep = field(default_factory=lambda: MethodSweep(enabled=False))
    """oracle-sft sweep (SFTConfig mapping and grid): SFT on the base policy's own successes."""
    distill_sft: MethodSweep = field(default_factory=lambda: MethodSweep(enabled=False))
    """distill-sft sweep (SFTConfig mapping and grid): SFT on the best RL checkpoint's successes."""
    policy_demos: PolicyDemoSpec = field(default_factory=PolicyDemoSpec)
    """How oracle-sft and distill-sft collect their episodes."""
    predictors: PredictorSpec = field(default_factory=PredictorSpec)
    """Table 1 predictors."""
    meter: MeterSpec = field(default_factory=MeterSpec)
    """The live forgetting meter."""
    engine: str = "local"
    """"local" (runs in this process, one after another) or "ray" (each run a Ray task)."""
    rollout_engine: str = "subprocess"
    """Env workers: "subprocess" (this machine) or "ray" (Ray actors, e.g. CPU-only SimplerEnv on a
    cluster)."""
    ray: RaySpec = field(default_factory=RaySpec)
    """Ray resources."""
    wandb: WandbSpec = field(default_factory=WandbSpec)
    """Logging."""
    report: ReportSpec = field(default_factory=ReportSpec)
    """End-of-sweep report."""
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    """Training over several processes/GPUs (FSDP or DDP through accelerate; see
    razor_robot.training.distributed)."""
    checkpoints: CheckpointSpec = field(default_factory=CheckpointSpec)
    """How fine-tuning checkpoints are stored (dtype, which ones keep their weights)."""

    def __post_init__(self):
        from razor_robot.envs import check_backend

        check_backend(self.backend)
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be local or ray, got {self.engine!r}")
        from razor_robot.rollout.pool import ENGINES

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
        if self.distill_sft.enabled and not self.rl.enabled:
            raise ValueError("distill_sft distils the best RL checkpoint: it needs rl.enabled")

    @functools.cached_property
    def plan(self) -> SweepPlan:
        """The facts every stage reads (positions, evaluation counts, unnorm key, inference policy), computed
        on first use (razor_robot.experiment.plan)."""
        return SweepPlan.of(self)

    @property
    def unnorm_key(self) -> str:
        return self.plan.unnorm_key

    def inference_policy(self) -> PolicySpec:
        """How evaluation, videos and the base's evaluation load policies: no gradient checkpointing, and bf16
        weights when training computes in bf16 over fp32 master weights (as the RL rollouts do)."""
        dtype = "bfloat16" if self.distributed.mixed_precision == "bf16" else self.policy.dtype
        return dataclasses.replace(self.policy, gradient_checkpointing=False, dtype=dtype)

    def checkpoint_dtype(self) -> str:
        """The dtype checkpoint weights are saved in ("float32" or "bfloat16"; see CheckpointSpec.dtype)."""
        if self.checkpoints.dtype != "auto":
            return self.checkpoints.dtype
        return resolve_device(self.inference_policy())[1]

    def env_pool(self) -> EnvPool:
        """The configured env workers: one pool for every task, started on first use
        (razor_robot.rollout.pool)."""
        return EnvPool(self.backend, self.env, num_workers=self.num_workers, envs_per_worker=self.envs_per_worker,
                       engine=self.rollout_engine, ray_num_cpus=self.ray.env_num_cpus)

    def cache_root(self) -> Path:
        root = self.cache_dir or os.environ.get("RAZOR_ROBOT_CACHE") or Path.home() / ".cache" / "razor-robot"
        return Path(root)

    def bases(self) -> list[tuple[str, "SweepConfig"]]:
        """(label, single-base config) of every base of the sweep: [("", self)] for one base, else
        ("base-s<seed>", the config of that base) per ``base.seeds`` entry."""
        if self.base.seeds is None:
            return [("", self)]
        return [(f"base-s{seed}", dataclasses.replace(self, base=self.base.for_seed(seed)))
                for seed in self.base.seeds]


@dataclass
class RunSpec:
    """One fine-tuning run of a sweep."""

    method: str
    seed: int
    hparams: dict[str, Any]
    """The grid values of this run (dotted keys)."""
    config: Any
    """Typed SFTConfig (sft, oracle-sft, distill-sft) or RLConfig (rl)."""

    @property
    def run_id(self) -> str:
        return f"{self.method}-{config_hash({'config': to_dict(self.config), 'seed': self.seed}, 10)}"


def expand_runs(config: SweepConfig) -> list[RunSpec]:
    """Methods x hyperparameter grid x seeds; every run's config is validated here, before any work."""
    import itertools

    runs = []
    methods = (("sft", config.sft, SFTConfig), ("rl", config.rl, RLConfig),
               ("oracle-sft", config.oracle_sft, SFTConfig), ("distill-sft", config.distill_sft, SFTConfig))
    for method, sweep, cls in methods:
        if not sweep.enabled:
            continue
        where = f"{config.name}.{method.replace('-', '_')}"  # the YAML key of the method
        keys = list(sweep.grid)
        for key in keys:
            if not isinstance(sweep.grid[key], list) or not sweep.grid[key]:
                raise ConfigError(f"{where}.grid.{key}: expected a non-empty list of values")
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            for seed in config.seeds:
                data = dict(sweep.config, seed=seed)
                for key, value in zip(keys, values):
                    data = set_dotted(data, key, value)
                typed = from_dict(cls, data, f"{where}.config")
                runs.append(RunSpec(method, seed, dict(zip(keys, values)), typed))
    return runs

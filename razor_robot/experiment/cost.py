"""``razor-robot plan CONFIG``: what a sweep will do and what it will cost, before any work.

From the config alone (no simulator, no weights: the policy is built on the meta device) it counts the runs
(methods x grid x seeds), the episodes and env steps of every stage, the optimiser steps, the checkpoints and
their disk, the policy's host and GPU memory per process, and the GPU-hours its FLOPs take at a stated
throughput. Every assumption the figures rest on is printed with them. The counts follow the code that spends
them: SFT's step count is ``train_sft``'s, RL's minibatch count ``train_reinforce``'s, the checkpoint steps
the loops' own rounding.

FLOPs (the usual dense-transformer rule): a forward pass costs 2 x parameters x tokens, a training step 6 x
(8 x with gradient checkpointing, which runs the forward twice); a rollout step is one forward over the prompt
and the image patches plus one per further action token (KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from razor_robot.experiment.schema import RunSpec, SweepConfig, expand_runs

BYTES = {"float32": 4, "bfloat16": 2}


@dataclass
class PlanAssumptions:
    """What the plan cannot read from the config."""

    tflops: float = 400.0
    """Sustained bf16 TFLOP/s per GPU for the FLOP-based GPU-hours (an H100's dense bf16 peak is ~990; 400 is
    ~40% of it, a typical FSDP fine-tuning utilisation)."""
    processes: int | None = None
    """Processes (GPUs) sharing the training; None: 8 under FSDP/DDP (one node), else 1."""
    demonstrator_success: float = 1.0
    """Fraction of demonstrator attempts that succeed (scripted experts: ~1; RT-1 on pick-can is lower)."""

    def __post_init__(self):
        if not self.tflops > 0:
            raise ValueError(f"--tflops must be > 0, got {self.tflops}")
        if self.processes is not None and self.processes < 1:
            raise ValueError(f"--gpus must be >= 1, got {self.processes}")
        if not 0 < self.demonstrator_success <= 1:
            raise ValueError(f"--demonstrator-success must be in (0, 1], got {self.demonstrator_success}")


@dataclass
class PolicyShape:
    """The policy's sizes, read from a meta-device build."""

    parameters: int
    trainable: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    prompt_tokens: int
    """BOS + image patches + prompt tokens: the teacher-forced prefix before the action tokens."""
    action_dim: int
    largest_unit: int
    """Parameters of the largest FSDP unit (a decoder layer or ViT block), gathered unsharded in compute."""


def policy_shape(config: SweepConfig) -> PolicyShape:
    """Build the configured policy on the meta device (no weights read or allocated) and measure it."""
    import torch

    from razor_robot.envs import task_spec
    from razor_robot.policies import load_policy

    source = config.base.checkpoint or config.policy.name
    if config.base.checkpoint and not Path(config.base.checkpoint).expanduser().is_dir():
        source = config.policy.name  # the weights live on the GPU node: the named architecture has their shapes
    action_dim = task_spec(config.eval.new_task, config.backend).action_dim
    overrides = dict(config.policy.overrides)
    if source in ("tiny", "openvla-7b"):
        overrides.setdefault("action_dim", action_dim)
    policy = load_policy(source, device="meta", dtype=torch.float32, **overrides)
    if config.policy.lora is not None:
        lora = config.policy.lora
        policy.enable_lora(r=lora.r, alpha=lora.alpha, target_modules=lora.target_modules, dropout=lora.dropout)
    llm = policy.config.llm
    instruction = task_spec(config.eval.new_task, config.backend).instruction
    patches = policy.vision_backbone.featurizer.patch_embed.num_patches
    units = [m for m in policy.modules() if type(m).__name__ in config.distributed.wrap_classes]
    return PolicyShape(
        parameters=sum(p.numel() for p in policy.parameters()),
        trainable=sum(p.numel() for p in policy.parameters() if p.requires_grad),
        layers=llm.num_hidden_layers, hidden=llm.hidden_size, intermediate=llm.intermediate_size,
        vocab=policy.config.vocab_size, prompt_tokens=1 + patches + len(policy.processor.prompt_ids(instruction)),
        action_dim=policy.action_dim,
        largest_unit=max((sum(p.numel() for p in m.parameters()) for m in units), default=0))


@dataclass
class Stage:
    """One line of the plan's table."""

    name: str
    episodes: int = 0
    env_steps: int = 0
    optimizer_steps: int = 0
    train_samples: int = 0
    policy_steps: int = 0
    """Env steps that need a policy forward pass (rollouts and evaluations, not demonstrators)."""
    note: str = ""


def _sft_steps(n_samples: int, config: Any) -> tuple[int, int]:
    """(optimiser steps, checkpoints) of train_sft on n_samples, by its own formulas."""
    steps_per_epoch = max(1, n_samples // config.optim.batch_size)
    total = max(1, math.ceil(steps_per_epoch * config.epochs))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    checkpoints = {max(1, round(total * (i + 1) / config.checkpoints)) for i in range(config.checkpoints)}
    return total, len(checkpoints)


def _rl_steps(episodes_per_iteration: int, horizon: int, config: Any) -> tuple[int, int]:
    """(optimiser steps, checkpoints) of train_reinforce when every episode runs its full horizon."""
    per_iteration = config.optimizer_steps_per_iteration or max(
        1, math.ceil(episodes_per_iteration * horizon / config.optim.batch_size))
    checkpoints = {max(1, round(config.iterations * (i + 1) / config.checkpoints))
                   for i in range(config.checkpoints)}
    return per_iteration * config.epochs_per_batch * config.iterations, len(checkpoints)


def _eval_episodes(config: SweepConfig) -> dict[str, int]:
    """Episodes per task of one checkpoint's evaluation (SimplerEnv's drawer protocol has its own counts)."""
    n_new, n_prior, _ = config.plan.counts
    counts = {config.eval.new_task: n_new}
    for task in config.eval.prior_tasks:
        if config.eval.prior_protocol == "simpler":
            from razor_robot.envs.simpler_backend import standard_drawer_episodes

            counts[task] = len(standard_drawer_episodes(task, config.env.get("setting", "visual_matching")))
        else:
            counts[task] = n_prior
    return counts


def sweep_stages(config: SweepConfig, runs: list[RunSpec], assume: PlanAssumptions) -> tuple[list[Stage], int]:
    """The stages in the order the sweep runs them, and the number of checkpoints saved."""
    from razor_robot.envs import task_spec

    horizon = {t: task_spec(t, config.backend).horizon for t in (config.eval.new_task, *config.eval.prior_tasks)}
    new_h = horizon[config.eval.new_task]
    points = config.demos.grid_size ** 2
    eval_counts = _eval_episodes(config)
    per_eval = sum(eval_counts.values())
    eval_steps = sum(n * horizon[task] for task, n in eval_counts.items())
    stages: list[Stage] = []
    if not config.base.checkpoint:
        pre = config.base.pretrain
        prior = pre.prior_episodes * len(config.eval.prior_tasks)
        steps = sum(pre.prior_episodes * horizon[t] for t in config.eval.prior_tasks) + pre.new_task_episodes * new_h
        opt, _ = _sft_steps(steps, pre.sft_config())
        episodes = round((prior + pre.new_task_episodes) / assume.demonstrator_success)
        stages.append(Stage("base: pretraining demonstrations + BC", episodes, round(steps / assume.demonstrator_success),
                            opt, opt * pre.sft_config().optim.batch_size, note="cached per recipe after the first"))
    stages.append(Stage("base: evaluation", per_eval, eval_steps, policy_steps=eval_steps))
    k = config.demos.episodes_per_point
    demo_samples = points * k * new_h
    if config.sft.enabled:
        stages.append(Stage("sft: demonstrations", round(points * k / assume.demonstrator_success),
                            round(demo_samples / assume.demonstrator_success), note=config.demos.demonstrator))
    k_policy = config.policy_demos.episodes_per_point or k
    attempts = points * k_policy * config.policy_demos.max_attempts_factor
    checkpoints = 0
    by_method: dict[str, list[RunSpec]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    for method in ("sft", "rl", "oracle-sft", "distill-sft"):
        method_runs = by_method.get(method, [])
        if method in ("oracle-sft", "distill-sft") and method_runs:
            source = "the base" if method == "oracle-sft" else "the best RL checkpoint"
            stages.append(Stage(f"{method}: {source}'s episodes", attempts, attempts * new_h,
                                policy_steps=attempts * new_h,
                                note=f"at most: {config.policy_demos.max_attempts_factor} attempts per wanted success"))
        if not method_runs:
            continue
        opt = samples = rollout_episodes = ckpts = 0
        for run in method_runs:
            if method == "rl":
                per_iteration = points * run.config.rollouts_per_point
                steps, n = _rl_steps(per_iteration, new_h, run.config)
                rollout_episodes += per_iteration * run.config.iterations
                samples += per_iteration * new_h * run.config.iterations * run.config.epochs_per_batch
            else:
                steps, n = _sft_steps(points * (k if method == "sft" else k_policy) * new_h, run.config)
                samples += steps * run.config.optim.batch_size
            opt += steps
            ckpts += n
        checkpoints += ckpts
        rollout_steps = rollout_episodes * new_h
        stages.append(Stage(f"{method}: {len(method_runs)} runs, training", rollout_episodes, rollout_steps, opt,
                            samples, rollout_steps, note="RL: rollouts (full horizons)" if rollout_episodes else ""))
        stages.append(Stage(f"{method}: {ckpts} checkpoint evaluations", ckpts * per_eval, ckpts * eval_steps,
                            policy_steps=ckpts * eval_steps))
    if config.report.videos:
        n = config.report.video_episodes * 2 * sum(1 for m in ("sft", "rl", "oracle-sft", "distill-sft") if m in by_method)
        stages.append(Stage("report: videos", n, n * new_h, policy_steps=n * new_h, note="upper bound"))
    return stages, checkpoints


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def memory_lines(config: SweepConfig, shape: PolicyShape, processes: int) -> list[str]:
    """Host and GPU memory of the policy per process in training, and of evaluation on the main process."""
    from razor_robot.experiment.schema import resolve_device

    m = memory_estimate(config, shape, processes)
    master = resolve_device(config.policy)[1]
    inference = resolve_device(config.inference_policy())[1]
    return [
        f"GPU per process (training, {processes} process{'es' if processes > 1 else ''}, "
        f"{config.distributed.strategy}): {_gib(m['gpu'])} = weights {_gib(m['weights'])} + gradients and AdamW "
        f"{_gib(m['states'])} + gathered FSDP units {_gib(m['gathered'])} + activations {_gib(m['activations'])} "
        f"(micro-batch {m['micro']:.0f} x {m['tokens']:.0f} tokens) + logits {_gib(m['logits'])} + RL rollout copy "
        f"{_gib(m['rollout'])}",
        f"host, main process: {_gib(m['host_main'])} (the {master} weights it loads"
        f"{' and the full state dict it gathers to save a checkpoint' if processes > 1 else ''}); "
        f"other processes: {_gib(0)} of weights (built on meta, filled from the main process)",
        f"GPU, main process, evaluation: {_gib(m['evaluation'])} (the checkpoint and the base for the KL, "
        f"{inference})",
    ]


def memory_estimate(config: SweepConfig, shape: PolicyShape, processes: int,
                    micro: int | None = None) -> dict[str, float]:
    """The figures of :func:`memory_lines`, in bytes (``micro``: the micro-batch; None: the config's
    largest)."""
    from razor_robot.experiment.schema import resolve_device

    _, master = resolve_device(config.policy)
    master_bytes = BYTES[master]
    compute_bytes = 2 if config.distributed.mixed_precision == "bf16" or master == "bfloat16" else master_bytes
    fsdp = config.distributed.strategy == "fsdp"
    shard = processes if fsdp else 1
    weights = shape.parameters * master_bytes / shard
    states = shape.trainable * master_bytes * 3 / shard  # gradient + AdamW's two moments, in the parameters' dtype
    gathered = 2 * shape.largest_unit * compute_bytes if fsdp else 0  # one unit in use, the next prefetched
    micro = micro or _micro_batch(config)
    tokens = shape.prompt_tokens + shape.action_dim
    if config.policy.gradient_checkpointing:  # each layer's input kept, one layer's activations recomputed
        activations = micro * tokens * (shape.layers * shape.hidden + 8 * shape.hidden + 3 * shape.intermediate) * compute_bytes
    else:
        activations = micro * tokens * shape.layers * (8 * shape.hidden + 3 * shape.intermediate) * compute_bytes
    logits = micro * (shape.action_dim + 1) * shape.vocab * 4 * 2  # fp32 full-vocabulary logits and their grad
    rollout = shape.parameters * 2 if fsdp and config.rl.enabled else 0  # RL's unsharded bf16 rollout copy
    gpu = weights + states + gathered + activations + logits + rollout
    host_main = shape.parameters * master_bytes * (2 if processes > 1 else 1)  # the loaded copy; + the gathered one
    inference = BYTES[resolve_device(config.inference_policy())[1]]
    return dict(gpu=gpu, weights=weights, states=states, gathered=gathered, activations=activations, logits=logits,
                rollout=rollout, micro=micro, tokens=tokens, host_main=host_main,
                evaluation=2 * shape.parameters * inference)


def _micro_batch(config: SweepConfig) -> int:
    sizes = []
    for sweep in (config.sft, config.rl, config.oracle_sft, config.distill_sft):
        if sweep.enabled:
            optim = dict(sweep.config.get("optim", {}))
            batch = max([optim.get("batch_size", 32)] + list(sweep.grid.get("optim.batch_size", [])))
            sizes.append(optim.get("micro_batch_size") or batch)
    return max(sizes, default=1)


def plan_text(config: SweepConfig, assume: PlanAssumptions | None = None) -> str:
    """The plan as printed by ``razor-robot plan`` (see the module docstring)."""
    assume = assume or PlanAssumptions()
    runs = expand_runs(config)  # validates every run's config, as the sweep does first
    shape = policy_shape(config)
    processes = assume.processes or (8 if config.distributed.strategy != "none" else 1)
    stages, n_checkpoints = sweep_stages(config, runs, assume)
    n_bases = len(config.bases())
    counts = {m: sum(r.method == m for r in runs) for m in ("sft", "rl", "oracle-sft", "distill-sft")}
    lines = [f"plan: {config.name} ({config.backend}, policy {config.policy.name}: {shape.parameters:,} parameters, "
             f"{shape.trainable:,} trained)",
             f"runs: {len(runs)} = " + " + ".join(f"{n} {m}" for m, n in counts.items() if n)
             + f" (grid x {len(config.seeds)} seed{'s' if len(config.seeds) > 1 else ''})"
             + (", one base" if n_bases == 1 else f" per base, {n_bases} bases: the table is one base's")]
    header = f"{'stage':<44} {'episodes':>9} {'env steps':>11} {'opt. steps':>10}  notes"
    lines += ["", header, "-" * len(header)]
    for s in stages:
        lines.append(f"{s.name:<44} {s.episodes:>9,} {s.env_steps:>11,} {s.optimizer_steps:>10,}  {s.note}".rstrip())
    total = Stage("total", *(sum(getattr(s, f) for s in stages) for f in
                             ("episodes", "env_steps", "optimizer_steps", "train_samples", "policy_steps")))
    lines += ["-" * len(header),
              f"{'total':<44} {total.episodes:>9,} {total.env_steps:>11,} {total.optimizer_steps:>10,}"]
    if n_bases > 1:  # every base runs the whole table again (its own evaluation, demonstrations and runs)
        lines.append(f"{f'total, {n_bases} bases':<44} {n_bases * total.episodes:>9,} {n_bases * total.env_steps:>11,} "
                     f"{n_bases * total.optimizer_steps:>10,}")
    lines.append("")
    dtype = config.checkpoint_dtype()
    per_checkpoint = shape.parameters * BYTES[dtype]
    kept = n_checkpoints if config.checkpoints.keep == "all" else len(runs)
    lines.append(f"checkpoints: {n_checkpoints} saved, {dtype}, {_gib(per_checkpoint)} each; disk "
                 f"{_gib(kept * per_checkpoint)} with checkpoints.keep: {config.checkpoints.keep}"
                 + (f" ({_gib(n_checkpoints * per_checkpoint)} with keep: all)" if kept != n_checkpoints else ""))
    lines += memory_lines(config, shape, processes)
    train_tokens = shape.prompt_tokens + shape.action_dim
    per_train_token = (8 if config.policy.gradient_checkpointing else 6) * shape.parameters
    train_flops = total.train_samples * train_tokens * per_train_token
    rollout_flops = total.policy_steps * 2 * shape.parameters * (shape.prompt_tokens + shape.action_dim - 1)
    hours = (train_flops + rollout_flops) / (assume.tflops * 1e12) / 3600
    lines += [f"compute: training {train_flops:.3g} FLOPs + rollouts and evaluations {rollout_flops:.3g} FLOPs = "
              f"{hours:,.3g} GPU-hours at {assume.tflops:g} TFLOP/s", "",
              "assumptions:",
              f"  - every episode runs its full horizon ({config.backend}); demonstrators succeed at "
              f"{assume.demonstrator_success:g} of attempts; oracle/distill attempts at their cap (at most)",
              f"  - sequence: {shape.prompt_tokens} prefix tokens (BOS, image patches, prompt) + {shape.action_dim} "
              f"action tokens; FLOPs 2 x parameters x tokens per forward, "
              f"{per_train_token // shape.parameters} x per training token"
              f"{' (gradient checkpointing)' if config.policy.gradient_checkpointing else ''}",
              f"  - {assume.tflops:g} TFLOP/s sustained per GPU; simulation (CPU) time and data loading not counted",
              f"  - memory: AdamW states in the parameters' dtype, activations {'with' if config.policy.gradient_checkpointing else 'without'} "
              f"gradient checkpointing at the largest micro-batch; allocator overhead not counted"]
    return "\n".join(lines)

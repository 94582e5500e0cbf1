"""On-policy RL fine-tuning of a VLA: REINFORCE with a reward-normalisation baseline (the paper's RL).

Each iteration:
  1. roll out G episodes per training grid point with the current policy (action tokens sampled at
     ``temperature``, 1 in the paper config);
  2. reward R = 1 if the episode succeeded else 0 (binary success);
  3. advantage of every episode in grid point g's group: A = (R - mean_g R) / (std_g R + eps); a group whose
     rewards are all equal carries no signal and gets A = 0;
  4. loss = -mean over steps of A * log π_T(a_t | o_t), where log π_T(a_t | o_t) is the sum of the D
     action-token log-probabilities of the distribution sampled from (logits / T) and A is the advantage of the
     step's episode. No KL term.

Loss normalisation: the iteration's N steps (zero-advantage steps included) are shuffled into
ceil(N / ``optim.batch_size``) minibatches of equal size (within one step), one optimiser step each; a
minibatch's loss is the sum of A * log π over its steps divided by the number of steps in the minibatch.
Zero-advantage steps contribute exactly zero to that sum, so they are counted in the denominator but never run
through the model.

The paper's form (``optimizer_steps_per_iteration: None``, ceil(N / batch_size) AdamW steps per iteration)
drifts away from competent behaviour on the tiny policy and collapses; the stable form (``1``: one AdamW step
on the iteration's whole gradient) keeps the algorithm and changes only the optimiser schedule. Rollout
success is itself a sample, so every run ends with :func:`rollout_stability`, which tells a collapse from
noise. The measurements behind both are in docs/design-notes.md.

Variants (``RLConfig.variant``):
  - ``"reinforce"``: the paper's algorithm above.
  - ``"reinforce-01"``: A = R (1-0 REINFORCE: supervised learning on the policy's own successes).
  - ``"kl-reinforce"``: adds ``kl_coef`` * KL(π(·|o) ‖ π0(·|o)), exact over the 256 bins at every token given
    the sampled prefix, against the base policy.
  - ``"grpo"``: PPO-style clipped token-level ratio against the rollout policy, ``epochs_per_batch`` passes.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from razor_robot.rollout.actor import VLAActor
from razor_robot.training.distributed import RolloutCopy, make_accelerator, micro_batches
from razor_robot.rollout.episodes import EpisodeRequest, Trajectory
from razor_robot.training.optim import OptimConfig, checkpoint_schedule, finite_or_raise, prepare_training

VARIANTS = ("reinforce", "reinforce-01", "kl-reinforce", "grpo")


@dataclass
class RLConfig:
    """On-policy RL settings (paper defaults where the paper gives them)."""

    optim: OptimConfig
    """Optimiser: learning rate, steps per minibatch, warmup, clipping, weight decay (same recipe as SFT)."""
    iterations: int = 10
    """Rollout-then-update iterations."""
    rollouts_per_point: int = 5
    """G: on-policy episodes per training grid point per iteration."""
    variant: str = "reinforce"
    """One of reinforce, reinforce-01, kl-reinforce, grpo."""
    kl_coef: float = 0.0
    """Weight of the KL(π‖π0) penalty (kl-reinforce only)."""
    clip_eps: float = 0.2
    """Ratio clip range (grpo only)."""
    epochs_per_batch: int = 1
    """Passes over each iteration's rollouts (grpo may use several; REINFORCE is on-policy with 1)."""
    temperature: float = 1.0
    """Sampling temperature of rollouts; the loss takes the log-probabilities of that tempered distribution.
    Evaluation stays greedy (T = 0); what T < 1 did on the embedded bases is in docs/benchmarks.md (session 14)."""
    advantage_eps: float = 1e-6
    """Added to the group's reward std."""
    checkpoints: int = 3
    """Evenly spaced checkpoints over the iterations (the last is the final model)."""
    optimizer_steps_per_iteration: int | None = None
    """None: the paper's form, ceil(N / optim.batch_size) optimiser steps over an iteration's N steps; k: the
    iteration's steps split into k equal minibatches (1 = one step on the iteration's whole gradient)."""
    diagnostic_steps: int = 256
    """Steps subsampled per iteration for the logged diagnostics (action-token entropy, KL to the previous
    iterate and to the base); 0 turns them off."""
    seed: int = 0
    """Seeds rollout episodes, token sampling and minibatch order."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown RL variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.iterations < 1 or self.rollouts_per_point < 1 or self.epochs_per_batch < 1 or self.checkpoints < 1:
            raise ValueError("iterations, rollouts_per_point, epochs_per_batch and checkpoints must be >= 1")
        if self.kl_coef < 0 or not 0 < self.clip_eps < 1 or not self.temperature > 0:
            raise ValueError("need kl_coef >= 0, 0 < clip_eps < 1 and temperature > 0")
        if self.variant == "kl-reinforce" and self.kl_coef == 0:
            raise ValueError("variant kl-reinforce needs kl_coef > 0")
        if self.optim.schedule != "constant":  # the number of optimiser steps depends on the rollouts
            raise ValueError(f"RL trains at a constant learning rate after warmup, got schedule "
                             f"{self.optim.schedule!r}")
        if self.optimizer_steps_per_iteration is not None and self.optimizer_steps_per_iteration < 1:
            raise ValueError(f"optimizer_steps_per_iteration must be >= 1 or null, "
                             f"got {self.optimizer_steps_per_iteration}")
        if self.diagnostic_steps < 0:
            raise ValueError(f"diagnostic_steps must be >= 0, got {self.diagnostic_steps}")


def group_advantages(rewards: np.ndarray, groups: np.ndarray, variant: str = "reinforce",
                     eps: float = 1e-6) -> np.ndarray:
    """Per-episode advantages (N,) from rewards (N,) and group ids (N,) (one group per grid point)."""
    rewards = np.asarray(rewards, np.float64)
    if variant == "reinforce-01":
        return rewards.copy()
    advantages = np.zeros_like(rewards)
    for g in np.unique(groups):
        members = groups == g
        r = rewards[members]
        if np.all(r == r[0]):
            continue  # no contrast inside the group: zero advantage
        advantages[members] = (r - r.mean()) / (r.std() + eps)
    return advantages


@dataclass
class StepBatch:
    """Flattened on-policy steps of one iteration."""

    images: np.ndarray  # (N, H, W, 3) uint8
    instructions: list[str]
    tokens: torch.Tensor  # (N, D) vocabulary ids sampled by the rollout policy
    advantages: torch.Tensor  # (N,)
    old_token_logp: torch.Tensor | None = None  # (N, D), grpo only


def steps_from_trajectories(trajectories: list[Trajectory], advantages: np.ndarray) -> StepBatch:
    lengths = [t.length for t in trajectories]
    return StepBatch(
        images=np.concatenate([t.images for t in trajectories]),
        instructions=[t.instruction for t, n in zip(trajectories, lengths) for _ in range(n)],
        tokens=torch.from_numpy(np.concatenate([t.extras["tokens"] for t in trajectories])).long(),
        advantages=torch.from_numpy(np.repeat(advantages, lengths)).float(),
    )


def token_log_probs(policy: Any, images, instructions: list[str], tokens: torch.Tensor,
                    model: Any = None, temperature: float = 1.0) -> torch.Tensor:
    """(B, D) log-probabilities of the given action tokens under the 256-way action-token softmax at
    ``temperature``: the distribution the rollouts sampled from, so that the policy gradient is that of the
    sampling policy (as TRL's GRPO divides its logits by the generation temperature).

    ``model`` is the policy as prepared for training (a DDP/FSDP wrapper, or the policy itself).
    """
    logits = (model or policy)(images, instructions, tokens).float() / temperature  # (B, D, K)
    return F.log_softmax(logits, -1).gather(-1, (tokens - policy.action_token_offset).unsqueeze(-1)).squeeze(-1)


def minibatch_loss(policy: Any, batch: StepBatch, idx: np.ndarray, config: RLConfig,
                   base_logits_fn: Callable | None, *, model: Any = None, denominator: float | None = None,
                   always_forward: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the steps ``idx``: sum over them / ``denominator`` (default: their number).

    Only non-zero-advantage steps run through the model, unless a KL term needs every step. With
    ``always_forward`` (several processes, whose collectives must pair up) a share with nothing to run still
    makes one zero-weight pass.
    """
    denominator = len(idx) if denominator is None else denominator
    needs_all = config.variant == "kl-reinforce"
    run = idx if needs_all else idx[batch.advantages[idx].numpy() != 0]
    weight = 1.0
    if len(run) == 0:
        if not always_forward:
            return torch.zeros((), requires_grad=False), {"pg_loss": 0.0}
        run, weight = np.arange(1), 0.0
    images = batch.images[run]
    instructions = [batch.instructions[i] for i in run]
    tokens, advantages = batch.tokens[run], batch.advantages[run] * weight
    if config.variant == "kl-reinforce":
        logits = (model or policy)(images, instructions, tokens).float()  # (B, D, K)
        logp_all = F.log_softmax(logits, -1)
        logp = F.log_softmax(logits / config.temperature, -1).gather(
            -1, (tokens - policy.action_token_offset).unsqueeze(-1)).squeeze(-1)  # (B, D) sampling policy's
        with torch.no_grad():
            base_logp = F.log_softmax(base_logits_fn(images, instructions, tokens).float(), -1)
        kl = (logp_all.exp() * (logp_all - base_logp)).sum(-1).sum(-1)  # (B,) KL(π‖π0) summed over tokens
        pg = -(advantages * logp.sum(-1)).sum()
        loss = (pg + weight * config.kl_coef * kl.sum()) / denominator
        return loss, {"pg_loss": pg.item() / denominator, "kl": kl.mean().item()}
    logp = token_log_probs(policy, images, instructions, tokens, model=model, temperature=config.temperature)
    if config.variant == "grpo":
        ratio = torch.exp(logp - batch.old_token_logp[run])  # (B, D) token-level ratios
        adv = advantages.unsqueeze(-1)
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - config.clip_eps, 1 + config.clip_eps) * adv)
        loss = -surrogate.mean(-1).sum() / denominator
        return loss, {"pg_loss": loss.item(), "clip_frac": ((ratio - 1).abs() > config.clip_eps).float().mean().item()}
    loss = -(advantages * logp.sum(-1)).sum() / denominator
    return loss, {"pg_loss": loss.item()}


@dataclass
class Learner:
    """What an RL run updates and rolls out with, made once by :func:`train_reinforce`."""

    accelerator: Any
    model: Any
    """The policy as prepared for training (a DDP/FSDP wrapper, or the policy itself)."""
    optimizer: Any
    scheduler: Any
    rollout_copy: RolloutCopy
    """An unsharded copy of the weights for rollouts and diagnostics (the policy itself with one process)."""
    actor: VLAActor
    base_logits_fn: Callable | None
    """Teacher-forced logits of the base policy (kl-reinforce's penalty, the KL-to-base diagnostic), or
    None."""
    episode_seeds: np.random.Generator
    """Episode seeds, drawn for every grid point on every rank: the same stream everywhere."""
    minibatch_order: torch.Generator
    """Shuffles each iteration's steps into minibatches (per rank)."""

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


class IterationCounts(NamedTuple):
    """An iteration's rollouts summed over all processes."""

    steps_per_process: np.ndarray
    """(world,) env steps each process collected: the minibatches are cut from these."""
    successes: int
    active_episodes: int
    """Episodes with a non-zero advantage."""
    episodes: int


def train_reinforce(
    policy: Any,
    positions: np.ndarray,
    config: RLConfig,
    *,
    task: str,
    unnorm_key: str,
    pool: Any,
    adapter_factory: Callable[[], Any] | None = None,
    base_policy: Any | None = None,
    on_checkpoint: Callable[[int, float, Any], None] | None = None,
    log: Callable[[dict[str, float], int], None] | None = None,
    progress: bool = True,
    accelerator: Any = None,
    meter: Callable[[int, Any], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Fine-tune ``policy`` in place on ``task`` from the training grid ``positions`` (P, 2).

    Each iteration runs the paper's steps, one function each: :func:`collect_groups` (G episodes per grid
    point), :func:`group_advantages`, :func:`update` (the policy-gradient steps) and :func:`iteration_stats`.

    ``meter(iteration, policy)`` (razor_robot.measure.meter) runs after every iteration; what it returns is
    logged. Every iteration logs (``log(stats, iteration)``) rollout success, the fraction of groups whose
    rewards are all equal (zero advantage), the mean pre-clipping gradient norm, and on ``diagnostic_steps``
    of the iteration's steps the action-token entropy and the KL to the previous iterate and to the base.

    With an ``accelerator`` over several processes (see razor_robot.training.distributed) each process rolls
    out the grid points ``g`` with ``g % world == rank`` (whole groups, so advantages stay local) with an
    unsharded copy of the policy, and the iteration's optimiser steps are formed over all processes' steps
    together.
    """
    if len(positions) == 0:
        raise ValueError("no training positions")
    accelerator = accelerator or make_accelerator(cpu=policy.device.type == "cpu")
    if len(positions) < accelerator.num_processes:
        raise ValueError(f"{len(positions)} training positions cannot be shared by "
                         f"{accelerator.num_processes} processes")
    learner = make_learner(policy, config, unnorm_key=unnorm_key, adapter_factory=adapter_factory,
                           base_policy=base_policy, accelerator=accelerator)
    checkpoint_iterations = checkpoint_schedule(config.iterations, config.checkpoints)
    start, opt_step, history = time.perf_counter(), 0, []
    bar = tqdm(range(1, config.iterations + 1), desc="rl", disable=not progress, leave=False)
    for iteration in bar:
        trajectories, groups = collect_groups(learner, positions, config, task, pool,
                                              progress=f"rl rollouts {iteration}" if progress else False)
        rewards = np.array([float(t.success) for t in trajectories])
        advantages = group_advantages(rewards, groups, config.variant, config.advantage_eps)
        batch = steps_from_trajectories(trajectories, advantages)
        if config.variant == "grpo":  # the rollout policy's log-probs (its weights equal the model's here)
            batch.old_token_logp = _old_log_probs(learner.rollout_copy.policy, batch, config.optim.micro_batch,
                                                  config.temperature)
        counts = gather_counts(learner.accelerator, batch, rewards, advantages)
        # Its own stream: switching the diagnostics on or off leaves the episodes and updates unchanged.
        probe = (_diagnostic_probe(batch, config.diagnostic_steps, np.random.default_rng([config.seed, iteration]))
                 if learner.world == 1 else None)
        learner.model.eval()
        before = _probe_logits(learner.rollout_copy.policy, batch, probe, config.optim.micro_batch)
        update_stats, opt_step = update(learner, policy, batch, counts, config, opt_step)
        history.append((counts.successes, counts.episodes))
        stats = iteration_stats(learner, batch, config, counts, rewards, groups, update_stats, history,
                                probe, before)
        measured = meter(iteration, policy) if meter is not None else {}
        stats.update(measured)
        bar.set_postfix(success=f"{stats['rl/success']:.2f}",
                        **{k.split("/")[-1]: f"{v:.3g}" for k, v in measured.items()})
        if log is not None:
            log(stats, iteration)
        if iteration in checkpoint_iterations and on_checkpoint is not None:
            on_checkpoint(iteration, iteration / config.iterations, learner.model)
    bar.close()
    rates = [k / n for k, n in history]
    return {"rl/final_rollout_success": rates[-1], "rl/first_rollout_success": rates[0],
            **rollout_stability(history), "train/optimizer_steps": opt_step,
            "train/seconds": time.perf_counter() - start}


def make_learner(policy: Any, config: RLConfig, *, unnorm_key: str, adapter_factory: Callable[[], Any] | None,
                 base_policy: Any | None, accelerator: Any) -> Learner:
    """The prepared model and optimiser, the rollout copy and its actor, the base's logits, the random
    streams."""
    rank, world = accelerator.process_index, accelerator.num_processes
    episode_seeds = np.random.default_rng(config.seed)
    minibatch_order = torch.Generator().manual_seed(config.seed + rank)
    rollout_copy = RolloutCopy(accelerator, policy)  # before prepare(): FSDP shards the policy in place
    actor = VLAActor(rollout_copy.policy, unnorm_key=unnorm_key, temperature=config.temperature,
                     seed=config.seed + rank, adapter_factory=adapter_factory)
    model, optimizer, scheduler = prepare_training(accelerator, policy, config.optim)
    rollout_copy.refresh(model)  # under FSDP the rollout copy is built empty: its first weights
    base_logits_fn = None
    if config.variant == "kl-reinforce" or (config.diagnostic_steps and world == 1):
        base_logits_fn = _base_logits(rollout_copy.policy if base_policy is None else base_policy,
                                      copy_weights=base_policy is None)
    return Learner(accelerator, model, optimizer, scheduler, rollout_copy, actor, base_logits_fn,
                   episode_seeds, minibatch_order)


def collect_groups(learner: Learner, positions: np.ndarray, config: RLConfig, task: str, pool: Any, *,
                   progress: bool | str) -> tuple[list[Trajectory], np.ndarray]:
    """Step 1: G = ``rollouts_per_point`` on-policy episodes per grid point (this process's points), and each
    episode's group (its grid point)."""
    requests, groups = [], []
    for g, xy in enumerate(positions):
        for _ in range(config.rollouts_per_point):
            # Drawn for every point, this process's or not: the same stream on all ranks.
            seed = int(learner.episode_seeds.integers(2**31 - 1))
            if g % learner.world == learner.rank:
                requests.append(EpisodeRequest(task, seed, (float(xy[0]), float(xy[1]))))
                groups.append(g)
    trajectories = pool.rollout(requests, learner.actor, progress=progress)
    return trajectories, np.asarray(groups)


def gather_counts(accelerator: Any, batch: StepBatch, rewards: np.ndarray,
                  advantages: np.ndarray) -> IterationCounts:
    """Steps, successes, active and all episodes of every process."""
    counts = accelerator.gather(torch.tensor([len(batch.tokens), rewards.sum(), np.sum(advantages != 0),
                                              len(rewards)], dtype=torch.float64, device=accelerator.device))
    counts = counts.reshape(accelerator.num_processes, 4).cpu().numpy()  # (world, 4)
    return IterationCounts(counts[:, 0].astype(int), int(counts[:, 1].sum()), int(counts[:, 2].sum()),
                           int(counts[:, 3].sum()))


def minibatch_sizes(steps_per_process: np.ndarray, config: RLConfig) -> tuple[int, np.ndarray]:
    """The iteration's number of optimiser steps, and the global steps in each (n_minibatches,).

    Minibatches of ~optim.batch_size steps over all processes: each process splits its shuffled steps into the
    same number of chunks; chunk k of every process together form optimiser step k.
    """
    n_minibatches = config.optimizer_steps_per_iteration or max(
        1, math.ceil(steps_per_process.sum() / config.optim.batch_size))
    sizes = sum(np.array([len(c) for c in np.array_split(np.arange(n), n_minibatches)])
                for n in steps_per_process)  # (n_minibatches,)
    return n_minibatches, sizes


def update(learner: Learner, policy: Any, batch: StepBatch, counts: IterationCounts, config: RLConfig,
           opt_step: int) -> tuple[dict[str, float], int]:
    """Step 3: the policy-gradient steps on the iteration's shuffled steps (``epochs_per_batch`` passes).
    Returns the means of the steps' statistics and the optimiser step count so far."""
    accelerator, model, world = learner.accelerator, learner.model, learner.world
    n_minibatches, sizes = minibatch_sizes(counts.steps_per_process, config)
    model.train()
    sums: dict[str, float] = {}
    n_updates = 0
    for _ in range(config.epochs_per_batch):
        order = torch.randperm(len(batch.tokens), generator=learner.minibatch_order).numpy()
        for chunk, global_size in zip(np.array_split(order, n_minibatches), sizes):
            learner.optimizer.zero_grad(set_to_none=True)
            loss_value, parts = 0.0, {}
            # Gradients are averaged over processes: dividing by global_size / world gives the global mean.
            for micro in micro_batches(chunk, int(global_size), config.optim.micro_batch, accelerator):
                loss, parts = minibatch_loss(policy, batch, micro, config, learner.base_logits_fn, model=model,
                                             denominator=global_size / world, always_forward=world > 1)
                if loss.requires_grad:
                    accelerator.backward(loss)
                loss_value += loss.item() / world
            loss_value = float(accelerator.reduce(torch.tensor(loss_value, device=accelerator.device), "sum"))
            finite_or_raise(loss_value, opt_step)
            grad_norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                    config.optim.max_grad_norm)
            learner.optimizer.step()
            learner.scheduler.step()
            opt_step += 1
            step_stats = {**{f"rl/{k}": v for k, v in parts.items()}, "train/loss": loss_value,
                          "rl/grad_norm": float(grad_norm)}
            for key, value in step_stats.items():
                sums[key] = sums.get(key, 0.0) + value
            n_updates += 1
    model.eval()
    learner.rollout_copy.refresh(model)
    means = {key: value / n_updates for key, value in sums.items()}  # over the iteration's optimiser steps
    return {**means, "rl/optimizer_steps": n_updates}, opt_step


def iteration_stats(learner: Learner, batch: StepBatch, config: RLConfig, counts: IterationCounts,
                    rewards: np.ndarray, groups: np.ndarray, update_stats: dict[str, float],
                    history: list[tuple[int, int]], probe: np.ndarray | None,
                    before: torch.Tensor | None) -> dict[str, float]:
    """Step 4: what the iteration logs: rollout success, zero-advantage groups, the update's means, the
    diagnostics on the probe steps (entropy, KL to the previous iterate and to the base), the drawdown."""
    stats = {"rl/success": counts.successes / counts.episodes,
             "rl/successes": counts.successes, "rl/episodes": counts.episodes,
             "rl/active_fraction": counts.active_episodes / counts.episodes,
             "rl/zero_advantage_groups": _zero_advantage_groups(rewards, groups)}
    stats.update(update_stats)
    if before is not None:
        micro = config.optim.micro_batch
        stats.update(_diagnostics(before, _probe_logits(learner.rollout_copy.policy, batch, probe, micro),
                                  _probe_logits(learner.base_logits_fn, batch, probe, micro)))
    rates = [k / n for k, n in history]
    stats["rl/drawdown"] = max(rates) - rates[-1]  # below the running best, a fraction like rl/success
    return stats


def rollout_stability(history: list[tuple[int, int]]) -> dict[str, float]:
    """Did rollout success collapse, or only wobble? From per-iteration (successes, episodes): the largest
    fall below the running best (``rl/max_drawdown``, a fraction) and how often a policy that never changed,
    at the run's pooled success rate and the same episodes per iteration, falls at least that far
    (``rl/drawdown_null_probability``, exact; see razor_robot.report.stats.drawdown_null_probability).

    Why both: with 128 episodes per iteration at ~11% success, a constant policy falls more than 10 points
    below its running best in 63% of 30-iteration runs, so a drawdown alone cannot tell a collapse from
    sampling noise (85% at 15% success). NaN probability when the iterations had different episode counts.
    """
    from razor_robot.report.stats import drawdown_null_probability, max_drawdown

    successes = [k for k, _ in history]
    episodes = {n for _, n in history}
    drawdown = max_drawdown([k / n for k, n in history])
    probability = (drawdown_null_probability(successes, episodes.pop()) if len(episodes) == 1 else math.nan)
    return {"rl/max_drawdown": drawdown, "rl/drawdown_null_probability": probability}


def _zero_advantage_groups(rewards: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of groups whose rewards are all equal: they carry no learning signal."""
    flat = [bool(np.all(rewards[groups == g] == rewards[groups == g][0])) for g in np.unique(groups)]
    return float(np.mean(flat)) if flat else float("nan")


def _base_logits(policy: Any, *, copy_weights: bool) -> Callable:
    """Teacher-forced action logits of the base policy: the adapter-free weights of a LoRA policy, else a
    frozen copy of the weights as they are now (before any update)."""
    if getattr(policy, "lora_config", None) is not None:
        def base_logits(images, instructions, tokens):
            with policy.disable_adapter():
                return policy.action_logits(images, instructions, tokens)
        return base_logits
    base = copy.deepcopy(policy).eval() if copy_weights else policy.eval()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    return base.action_logits


def _diagnostic_probe(batch: StepBatch, n: int, generator: np.random.Generator) -> np.ndarray | None:
    """Indices of up to n of the iteration's steps, None when off."""
    if n == 0 or len(batch.tokens) == 0:
        return None
    return np.sort(generator.choice(len(batch.tokens), size=min(n, len(batch.tokens)), replace=False))


@torch.no_grad()
def _probe_logits(model: Any, batch: StepBatch, probe: np.ndarray | None, micro: int) -> torch.Tensor | None:
    """(n, D, K) fp32 teacher-forced action logits at the probe steps (``model`` a policy or a logits
    function)."""
    if probe is None or model is None:
        return None
    logits_fn = getattr(model, "action_logits", model)
    parts = [logits_fn(batch.images[probe[i:i + micro]], [batch.instructions[j] for j in probe[i:i + micro]],
                       batch.tokens[probe[i:i + micro]]).float() for i in range(0, len(probe), micro)]
    return torch.cat(parts)


def _diagnostics(before: torch.Tensor, after: torch.Tensor, base: torch.Tensor | None) -> dict[str, float]:
    """Entropy of the rollout policy and KL(previous ‖ new), KL(base ‖ new), summed over the D action tokens
    and averaged over the probe steps (nats)."""
    from razor_robot.measure.distances import token_distances

    log_p = F.log_softmax(before.double(), -1)
    out = {"rl/entropy": float(-(log_p.exp() * log_p).sum(-1).sum(-1).mean()),
           "rl/kl_previous": float(token_distances(before, after)["forward"].sum(-1).mean())}
    if base is not None:
        out["rl/kl_base"] = float(token_distances(base, after)["forward"].sum(-1).mean())
    return out


@torch.no_grad()
def _old_log_probs(policy: Any, batch: StepBatch, micro: int, temperature: float) -> torch.Tensor:
    policy.eval()
    parts = [token_log_probs(policy, batch.images[i:i + micro], batch.instructions[i:i + micro],
                             batch.tokens[i:i + micro], temperature=temperature)
             for i in range(0, len(batch.tokens), micro)]
    return torch.cat(parts)  # (N, D)

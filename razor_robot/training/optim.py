"""Pieces shared by SFT and RL: the optimiser recipe and its set-up, the checkpoint schedule, action-token
targets, augmentation, the NaN guard."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


LR_SCHEDULES = ("constant", "cosine")


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss); the sweep records the run as failed with this reason."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then a constant learning rate (the paper's recipe for both SFT and RL, and
    what every shipped config uses) or a cosine decay."""

    learning_rate: float = 1e-5
    """Peak (constant) learning rate."""
    batch_size: int = 16
    """Samples per optimiser step."""
    micro_batch_size: int | None = None
    """Samples per forward/backward; gradients accumulate up to ``batch_size`` (None = no accumulation)."""
    warmup_steps: int = 10
    """Linear warmup: step k (0-based) uses lr * (k + 1) / warmup_steps until it reaches lr."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: str = "constant"
    """After warmup: "constant" (the paper) or "cosine" (half a cosine from the peak down to
    ``min_lr_ratio`` x peak at the run's last step)."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine schedule, as a fraction of the peak."""

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0 and max_grad_norm > 0")
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; expected one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    @property
    def micro_batch(self) -> int:
        return min(self.micro_batch_size or self.batch_size, self.batch_size)


def lr_factor(step: int, config: OptimConfig, total_steps: int | None = None) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of ``total_steps``."""
    warmup = config.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if total_steps is None:
        raise ValueError("the cosine schedule needs the run's total number of optimiser steps")
    progress = min(1.0, (step + 1 - warmup) / max(1, total_steps - warmup))  # 1 at the last step
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: OptimConfig, total_steps: int | None = None):
    """AdamW over the trainable parameters and its schedule; ``total_steps`` is needed by "cosine"."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    if config.schedule != "constant" and total_steps is None:
        raise ValueError(f"the {config.schedule} schedule needs the run's total number of optimiser steps")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.betas,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, total_steps))
    return optimizer, scheduler


def prepare_training(accelerator: Any, policy: torch.nn.Module, config: OptimConfig,
                     total_steps: int | None = None) -> tuple[Any, Any, Any]:
    """(model, optimizer, scheduler): the policy and its AdamW prepared by the accelerator (DDP/FSDP wrappers,
    or the objects themselves with one process), shared by SFT and RL."""
    model = accelerator.prepare(policy)
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    return model, accelerator.prepare(optimizer), scheduler


def checkpoint_schedule(total: int, checkpoints: int) -> list[int]:
    """The steps (or iterations) 1..``total`` at which ``checkpoints`` evenly spaced checkpoints are saved,
    the last one at ``total``: the final model is always a checkpoint."""
    return sorted({max(1, round(total * (i + 1) / checkpoints)) for i in range(checkpoints)})


def action_bins(policy: Any, actions: np.ndarray, unnorm_key: str) -> np.ndarray:
    """Continuous env actions (N, D) -> indices (N, D) into the policy's 256 action logits.

    Normalised with the policy's q01/q99 statistics ``unnorm_key`` (clipped to [-1, 1]), then binned exactly
    as OpenVLA's action tokenizer bins them.
    """
    from razor_robot.policies.action_tokenizer import normalize_actions

    if unnorm_key not in policy.norm_stats:
        raise ValueError(f"the policy has no action statistics {unnorm_key!r} (it has: "
                         f"{', '.join(policy.norm_stats) or 'none'})")
    normalized = normalize_actions(actions, policy.norm_stats[unnorm_key])  # (N, D) in [-1, 1]
    tokens = policy.action_tokenizer.encode(normalized)  # (N, D) vocabulary ids
    return (np.asarray(tokens) - policy.action_token_offset).astype(np.int64)


def soft_bin_targets(bins: torch.Tensor, n_bins: int, sigma: float) -> torch.Tensor:
    """Gaussian targets over bins centred on ``bins`` (B, D) -> (B, D, n_bins), each row summing to 1."""
    grid = torch.arange(n_bins, dtype=torch.float32)
    weights = torch.exp(-0.5 * ((grid - bins.unsqueeze(-1).float()) / sigma) ** 2)  # (B, D, K)
    return weights / weights.sum(-1, keepdim=True)


def shift_augment(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each (H, W, C) uint8 image by up to ``max_shift`` px, padding with the edge pixels."""
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), [max_shift] * 4, mode="replicate")
    shifts = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts.tolist())])
    return out.permute(0, 2, 3, 1).to(torch.uint8)  # (B, H, W, C)


def finite_or_raise(loss: float, step: int) -> float:
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"non-finite loss {loss} at step {step}")
    return loss

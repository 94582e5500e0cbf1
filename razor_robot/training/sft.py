"""Supervised fine-tuning (behaviour cloning) of a VLA on demonstration action tokens.

The paper's recipe: cross-entropy on the D action tokens, AdamW, constant learning rate after 10 linear warmup
steps, max grad norm 1, weight decay 0, one epoch, bf16 on GPU. ``batch_size`` is the optimiser batch; when it
does not fit, ``micro_batch_size`` splits it and gradients accumulate. Optional soft bin targets (a Gaussian
over neighbouring bins) and pixel-shift augmentation serve base-policy pretraining on CPU; both are off by
default.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from razor_robot.training.dataset import DemoDataset
from razor_robot.training.distributed import make_accelerator, micro_batches, process_share
from razor_robot.training.optim import (
    OptimConfig, action_bins, checkpoint_schedule, finite_or_raise, prepare_training, shift_augment,
    soft_bin_targets,
)


SFT_LOSSES = ("action", "openvla")


@dataclass
class SFTConfig:
    """Supervised fine-tuning settings (paper defaults)."""

    optim: OptimConfig
    """Optimiser: learning rate, batch size, warmup, clipping, weight decay."""
    epochs: float = 1.0
    """Passes over the dataset (fractions allowed); the paper trains 1 epoch."""
    max_steps: int | None = None
    """Stop after this many optimiser steps even if the epochs are not done."""
    checkpoints: int = 3
    """Evenly spaced checkpoints over training (the last one is the final model); each is a frontier point."""
    label_sigma_bins: float = 0.0
    """Std of Gaussian soft targets over action bins; 0 is the paper's one-hot cross-entropy."""
    shift_augment_px: int = 0
    """Random image shift of up to this many pixels (0 = off)."""
    seed: int = 0
    """Seeds data order and augmentation."""
    loss: str = "action"
    """"action": cross-entropy over the 256 action logits of the D action tokens (the embedded default);
    "openvla": openvla's finetune.py loss, cross-entropy over the whole vocabulary on the D action tokens and
    the end-of-sequence token after them (the paper config)."""

    def __post_init__(self):
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.checkpoints < 1:
            raise ValueError(f"checkpoints must be >= 1, got {self.checkpoints}")
        if self.label_sigma_bins < 0 or self.shift_augment_px < 0:
            raise ValueError("label_sigma_bins and shift_augment_px must be >= 0")
        if self.loss not in SFT_LOSSES:
            raise ValueError(f"unknown SFT loss {self.loss!r}; expected one of {', '.join(SFT_LOSSES)}")
        if self.loss == "openvla" and self.label_sigma_bins > 0:
            raise ValueError("label_sigma_bins (soft action-bin targets) needs loss 'action', not 'openvla'")


def sft_loss(policy: Any, images: torch.Tensor, instructions: list[str], targets: torch.Tensor,
             label_sigma_bins: float = 0.0, model: Any = None, loss: str = "action") -> torch.Tensor:
    """Mean cross-entropy per action token. ``targets`` (B, D) are bin indices into the 256 action logits.

    ``model`` is the policy as prepared for training (a DDP/FSDP wrapper, or the policy itself). ``loss``
    "openvla" hands over to :func:`openvla_sft_loss`.
    """
    if loss == "openvla":
        return openvla_sft_loss(policy, images, instructions, targets, model=model)
    tokens = targets + policy.action_token_offset  # (B, D) vocabulary ids, teacher-forced
    logits = (model or policy)(images, instructions, tokens).float()  # (B, D, K)
    if label_sigma_bins > 0:
        soft = soft_bin_targets(targets, logits.shape[-1], label_sigma_bins)  # (B, D, K)
        return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def openvla_sft_loss(policy: Any, images: torch.Tensor, instructions: list[str], targets: torch.Tensor,
                     model: Any = None) -> torch.Tensor:
    """openvla's finetune.py loss: mean full-vocabulary cross-entropy over the D action tokens and EOS.

    OpenVLA's batch transform masks every label but the last D + 1 (the action tokens and ``</s>``), and the
    HF forward averages the cross-entropy of all its logits over the unmasked labels: (B * (D + 1)) terms.
    The logits come through the (possibly DDP/FSDP-wrapped) model's forward, ``full_vocabulary=True``.
    """
    if policy.processor.eos_id is None:
        raise ValueError("SFT loss 'openvla' needs a tokenizer with an end-of-sequence token </s>")
    tokens = targets + policy.action_token_offset  # (B, D) vocabulary ids, teacher-forced
    logits = (model or policy)(images, instructions, tokens, full_vocabulary=True).float()  # (B, D + 1, V)
    eos = torch.full_like(tokens[:, :1], policy.processor.eos_id)  # (B, 1)
    labels = torch.cat([tokens, eos], dim=1)  # (B, D + 1)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def train_sft(
    policy: Any,
    dataset: DemoDataset,
    config: SFTConfig,
    *,
    unnorm_key: str,
    on_checkpoint: Callable[[int, float, Any], None] | None = None,
    log: Callable[[dict[str, float], int], None] | None = None,
    progress: bool = True,
    accelerator: Any = None,
    meter: Callable[[int, Any], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Train ``policy`` in place; ``on_checkpoint(step, fraction_of_training, model)`` runs at each checkpoint
    (``model`` is the policy as prepared by the accelerator, for gathering sharded weights). ``meter(step,
    policy)`` (razor_robot.measure.meter) runs after every optimiser step and returns the metrics it measured,
    if any; they are logged and shown on the progress bar.

    Labels: the dataset's sampled tokens when it has them (episodes of a policy), else the demonstrator's
    actions binned with the policy's action statistics ``unnorm_key``.

    With an ``accelerator`` over several processes (see razor_robot.training.distributed) every process runs
    this with the same dataset and seed, draws the same global batches and trains on its share of each.
    """
    if len(dataset) == 0:
        raise ValueError("empty dataset: nothing to fine-tune on")
    optim_cfg = config.optim
    accelerator = accelerator or make_accelerator(cpu=policy.device.type == "cpu")
    generator = torch.Generator().manual_seed(config.seed)
    if dataset.tokens is not None:
        targets = torch.from_numpy(dataset.tokens - policy.action_token_offset)  # (N, D) sampled bins
    else:
        targets = torch.from_numpy(action_bins(policy, dataset.actions, unnorm_key))  # (N, D)
    total_steps = sft_steps(len(dataset), config)
    checkpoint_steps = checkpoint_schedule(total_steps, config.checkpoints)
    model, optimizer, scheduler = prepare_training(accelerator, policy, optim_cfg, total_steps)
    model.train()
    order = torch.randperm(len(dataset), generator=generator)
    cursor, start, last_loss = 0, time.perf_counter(), float("nan")
    bar = tqdm(range(1, total_steps + 1), desc="sft", disable=not progress, leave=False)
    for step in bar:
        if cursor + optim_cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(dataset), generator=generator), 0
        batch = order[cursor:cursor + optim_cfg.batch_size].numpy()
        cursor += optim_cfg.batch_size
        optimizer.zero_grad(set_to_none=True)
        last_loss = finite_or_raise(sft_step_loss(policy, model, dataset, targets, batch, config, generator,
                                                  accelerator), step)
        grad_norm = accelerator.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], optim_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        measured = meter(step, policy) if meter is not None else {}
        bar.set_postfix(loss=f"{last_loss:.3f}", **{k.split("/")[-1]: f"{v:.3g}" for k, v in measured.items()})
        if log is not None:
            log({"train/loss": last_loss, "train/grad_norm": float(grad_norm),
                 "train/lr": scheduler.get_last_lr()[0],
                 "train/samples_per_s": step * optim_cfg.batch_size / (time.perf_counter() - start),
                 **measured}, step)
        if step in checkpoint_steps and on_checkpoint is not None:
            model.eval()
            on_checkpoint(step, step / total_steps, model)
            model.train()
    bar.close()
    model.eval()
    elapsed = time.perf_counter() - start
    return {"train/loss": last_loss, "train/steps": total_steps, "train/seconds": elapsed,
            "train/samples_per_s": total_steps * optim_cfg.batch_size / max(elapsed, 1e-9)}


def sft_steps(n_samples: int, config: SFTConfig) -> int:
    """Optimiser steps of a run: ``epochs`` passes of whole batches over ``n_samples``, at most
    ``max_steps``."""
    steps_per_epoch = max(1, n_samples // config.optim.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    return total_steps if config.max_steps is None else min(total_steps, config.max_steps)


def sft_step_loss(policy: Any, model: Any, dataset: DemoDataset, targets: torch.Tensor, batch: np.ndarray,
                  config: SFTConfig, generator: torch.Generator, accelerator: Any) -> float:
    """Forward and backward of one optimiser batch (this process's share, in micro-batches); the batch's mean
    loss over all processes."""
    world = accelerator.num_processes
    # Augmentation draws from the shared generator for the whole batch, so every process stays in step.
    images = torch.from_numpy(dataset.images[batch])  # (B, H, W, 3)
    if config.shift_augment_px:
        images = shift_augment(images, config.shift_augment_px, generator)
    loss_sum = torch.zeros(())
    share = process_share(np.arange(len(batch)), accelerator)
    for micro in micro_batches(share, len(batch), config.optim.micro_batch, accelerator):
        weight = len(micro) / len(batch)
        if len(micro) == 0:  # keep collectives paired: a zero-weight pass over one sample
            micro = np.arange(1)
        loss = sft_loss(policy, images[micro], [dataset.instructions[i] for i in batch[micro]],
                        targets[batch[micro]], config.label_sigma_bins, model=model, loss=config.loss)
        # Gradients are averaged over processes: scale by the world size to get the global batch mean.
        accelerator.backward(loss * weight * world)
        loss_sum += loss.detach().cpu() * weight
    return float(accelerator.reduce(loss_sum.to(accelerator.device), "sum"))

"""Loading policies as a sweep config says (device, dtype, LoRA, gradient checkpointing) and the action
adapter of each backend."""

from __future__ import annotations

from typing import Any, Callable

from razor_robot.experiment.schema import PolicySpec, resolve_device


def load_for_training(path_or_name: str, spec: PolicySpec, *, device: str | None = None, **overrides: Any):
    """Load a policy on the configured (or the given) device and dtype, with LoRA and gradient checkpointing
    if asked."""
    import torch

    from razor_robot.policies import load_policy

    from razor_robot.rollout.pool import usable_cpus

    # Training owns the CPUs this process may use (rollouts drop to one thread while env workers run).
    torch.set_num_threads(spec.torch_threads or usable_cpus())
    configured_device, dtype = resolve_device(spec)
    device = device or configured_device
    policy = load_policy(path_or_name, device=device, dtype=getattr(torch, dtype), **{**spec.overrides, **overrides})
    if spec.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if spec.lora is not None and policy.lora_config is None:  # a LoRA checkpoint comes with its adapters
        policy.enable_lora(r=spec.lora.r, alpha=spec.lora.alpha, target_modules=spec.lora.target_modules,
                           dropout=spec.lora.dropout)
    return policy


def adapter_factory_for(backend: str) -> Callable[[], Any]:
    """The policy-output -> env-action adapter of a backend (one per episode: the Google robot's is
    stateful)."""
    from razor_robot.policies.adapters import MetaWorldActionAdapter, OpenVLAGoogleRobotAdapter

    return OpenVLAGoogleRobotAdapter if backend == "simpler" else MetaWorldActionAdapter


def load_base_for_distances(config: Any, base_checkpoint: str) -> Any:
    """The base policy pi0 that distances and the meter compare a checkpoint with, in eval mode; None for a
    LoRA policy, whose base logits come from the same weights with the adapter switched off."""
    if config.policy.lora is not None:
        return None
    return load_for_inference(base_checkpoint, config).eval()


def load_for_inference(path: str, config: Any, **overrides: Any):
    """Load a checkpoint to act or to be measured, as every stage does (``config.plan.inference``: the
    inference policy spec, a LoRA checkpoint with its own adapters)."""
    return load_for_training(path, config.plan.inference, **overrides)

"""Training on several processes through accelerate: FSDP full-shard (the 7B policy) or DDP.

One code path serves every case. The training loops always hold an ``accelerate.Accelerator``; with
``strategy: none`` in one process it wraps nothing and the loops compute exactly what they did without it.
Under ``accelerate launch`` with ``strategy: fsdp`` the policy is sharded over the processes and:

  * every optimiser step's batch (``optim.batch_size`` samples, the global batch) is split evenly over the
    processes; each scales its loss by the number of processes so that the averaged gradient equals the
    single-process gradient of the whole batch;
  * RL rollouts run on the main process with an unsharded copy of the policy (weights gathered after every
    update); the trajectories are broadcast and every process trains on its share of the steps;
  * checkpoints are gathered to the main process and saved there; the main process evaluates them after
    training, while the other processes wait (evaluation needs no gradients and no sharding).

Launch (8 GPUs on one node; the same with --num_machines/--machine_rank on a cluster):

    accelerate launch --num_processes 8 -m razor_robot.cli train sft configs/paper_simpler_openvla.yaml \\
        --set distributed.strategy=fsdp

FSDP keeps fp32 master weights sharded and computes in bf16 (``mixed_precision: bf16``); load the policy in
float32 for it (``policy.dtype: float32``).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

STRATEGIES = ("none", "ddp", "fsdp")


@dataclass
class DistributedSpec:
    """How training is spread over processes (launch with ``accelerate launch`` for more than one)."""

    strategy: str = "none"
    """"none" (one process), "ddp" (replicated weights) or "fsdp" (fully sharded weights, gradients, optimizer)."""
    mixed_precision: str = "no"
    """"no" or "bf16": compute in bf16 over fp32 master weights (FSDP keeps the fp32 shards)."""
    cpu_offload: bool = False
    """FSDP only: keep parameter shards in CPU memory between uses."""
    wrap_classes: tuple[str, ...] = ("LlamaDecoderLayer", "Block")
    """FSDP units: module class names wrapped separately (Llama decoder layers and timm ViT blocks)."""
    timeout_minutes: int = 180
    """Collective timeout: other processes wait this long while the main one rolls out or evaluates."""

    def __post_init__(self):
        self.wrap_classes = tuple(self.wrap_classes)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"distributed.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"distributed.mixed_precision must be no or bf16, got {self.mixed_precision!r}")
        if self.timeout_minutes < 1:
            raise ValueError(f"distributed.timeout_minutes must be >= 1, got {self.timeout_minutes}")


def fsdp_plugin_kwargs(spec: DistributedSpec) -> dict[str, Any]:
    """accelerate's FSDP settings: full shard, one unit per decoder layer / ViT block, full state dicts."""
    return dict(
        fsdp_version=1,
        sharding_strategy="FULL_SHARD",
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=list(spec.wrap_classes),
        state_dict_type="FULL_STATE_DICT",
        use_orig_params=True,  # LoRA: frozen and trainable parameters share FSDP units
        cpu_offload=spec.cpu_offload,
        sync_module_states=True,
        limit_all_gathers=True,
    )


def fsdp_plugin(spec: DistributedSpec):
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(**fsdp_plugin_kwargs(spec))


def make_accelerator(spec: DistributedSpec | None = None, *, cpu: bool | None = None):
    """The Accelerator every training loop holds (see the module docstring)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    spec = spec or DistributedSpec()
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if spec.strategy == "fsdp" and cpu:
        raise ValueError("distributed.strategy fsdp needs CUDA GPUs; use ddp (or none) on the CPU")
    kwargs_handlers = [
        InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=spec.timeout_minutes)),
        # the vision towers' last block never gets a gradient (features come from the block before it)
        DistributedDataParallelKwargs(find_unused_parameters=True),
    ]
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=spec.mixed_precision,
        fsdp_plugin=fsdp_plugin(spec) if spec.strategy == "fsdp" else None,
        step_scheduler_with_optimizer=False,  # the LR schedule counts optimiser steps, whatever the world size
        kwargs_handlers=kwargs_handlers,
    )
    if spec.strategy == "none" and accelerator.num_processes > 1:
        raise ValueError("launched on several processes but distributed.strategy is none; set ddp or fsdp")
    return accelerator


def process_share(indices: np.ndarray, accelerator) -> np.ndarray:
    """This process's contiguous share of a global batch of ``indices`` (shares differ by at most one)."""
    return np.array_split(indices, accelerator.num_processes)[accelerator.process_index]


def micro_batches(share: np.ndarray, global_size: int, micro: int, accelerator) -> list[np.ndarray]:
    """Split a process's share into the same number of micro-batches on every process.

    Collective operations (gradient reduction, FSDP all-gathers) pair up across processes, so every process
    must run as many forward/backward passes as the others, even when its share is empty.
    """
    count = max(1, math.ceil(math.ceil(global_size / accelerator.num_processes) / micro))
    return np.array_split(share, count)


def is_distributed(accelerator) -> bool:
    return accelerator.num_processes > 1


def gather_state_dict(accelerator, model) -> dict[str, Any]:
    """The full (unsharded) state dict on the main process; a collective: every process must call it."""
    return accelerator.get_state_dict(model, unwrap=True)


def broadcast_object(accelerator, value: Any) -> Any:
    """The main process's ``value`` on every process (identity in one process)."""
    if not is_distributed(accelerator):
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


class RolloutCopy:
    """The unsharded policy a process rolls out with.

    Without FSDP every process holds the whole policy, so the rollout policy is the trained policy itself.
    Under FSDP it is a copy taken before sharding, refreshed after every update from the gathered weights
    (gathered on the main process, then broadcast).
    """

    def __init__(self, accelerator, policy):
        from accelerate.utils import DistributedType

        self.accelerator = accelerator
        self.separate = accelerator.distributed_type == DistributedType.FSDP
        self.policy = policy
        if self.separate:
            import copy

            import torch

            dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else None
            self.policy = copy.deepcopy(policy).to(device=accelerator.device, dtype=dtype).eval()

    def refresh(self, model) -> None:
        """Copy the trained weights into the rollout policy (a collective: every process calls it)."""
        if not self.separate:
            return
        import torch
        import torch.distributed as dist

        state = gather_state_dict(self.accelerator, model)
        with torch.no_grad():
            for name, tensor in self.policy.state_dict().items():
                if self.accelerator.is_main_process:
                    tensor.copy_(state[name])
                dist.broadcast(tensor, src=0)

"""Training on several processes through accelerate: FSDP full-shard (the 7B policy) or DDP.

One code path serves every case. The training loops always hold an ``accelerate.Accelerator``; with
``strategy: none`` in one process it wraps nothing and the loops compute exactly what they did without it.
Under ``accelerate launch`` with ``strategy: fsdp`` the policy is sharded over the processes and:

  * every optimiser step's batch (``optim.batch_size`` samples, the global batch) is split evenly over the
    processes; each scales its loss by the number of processes so that the averaged gradient equals the
    single-process gradient of the whole batch;
  * RL: every process rolls out its share of the grid points with an unsharded bf16 copy of the policy (built
    empty, filled from the gathered weights after every update), and trains on its share of the steps;
  * only the main process reads the checkpoint's weights (:func:`loads_weights`): the others build the policy
    on the meta device, and FSDP (``sync_module_states``) or :func:`materialise_from_main` (DDP) fills them
    from the main process, so a node holds one host copy of the 7.5 B weights, not one per GPU;
  * checkpoints are gathered to the main process and saved there; the main process evaluates them after
    training. Work that only the main process does (demonstrations, the base's and every checkpoint's
    evaluation) runs through :func:`run_on_main`: the other processes wait for it by polling the rendezvous
    store, outside any collective, so no collective timeout bounds how long simulation may take.

Launch (8 GPUs on one node; the same with --num_machines/--machine_rank on a cluster):

    accelerate launch --num_processes 8 -m razor_robot.cli train sft configs/paper_simpler_openvla.yaml \\
        --set distributed.strategy=fsdp

FSDP keeps the master weights sharded in the policy's dtype (``policy.dtype``: float32 or bfloat16, see the
README on precision) and with ``mixed_precision: bf16`` computes in bf16.
"""

from __future__ import annotations

import datetime
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

STRATEGIES = ("none", "ddp", "fsdp")


@dataclass
class DistributedSpec:
    """How training is spread over processes (launch with ``accelerate launch`` for more than one)."""

    strategy: str = "none"
    """"none" (one process), "ddp" (replicated weights) or "fsdp" (fully sharded weights, gradients,
    optimizer)."""
    mixed_precision: str = "no"
    """"no" or "bf16": compute in bf16 over fp32 master weights (FSDP keeps the fp32 shards)."""
    cpu_offload: bool = False
    """FSDP only: keep parameter shards in CPU memory between uses."""
    wrap_classes: tuple[str, ...] = ("LlamaDecoderLayer", "Block")
    """FSDP units: module class names wrapped separately (Llama decoder layers and timm ViT blocks)."""
    timeout_minutes: float = 180
    """Collective timeout. Main-process-only work (simulation) is not bounded by it (see run_on_main); it only
    has to cover the slowest collective step of training, e.g. gathering a checkpoint."""

    def __post_init__(self):
        self.wrap_classes = tuple(self.wrap_classes)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"distributed.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"distributed.mixed_precision must be no or bf16, got {self.mixed_precision!r}")
        if not self.timeout_minutes > 0:
            raise ValueError(f"distributed.timeout_minutes must be > 0, got {self.timeout_minutes}")


def fsdp_plugin_kwargs(spec: DistributedSpec) -> dict[str, Any]:
    """accelerate's FSDP settings: full shard, one unit per decoder layer / ViT block, full state dicts, and
    under bf16 compute fp32 buffers: accelerate's own bf16 policy casts buffers to bf16 too, which would round
    the RoPE frequencies that loading, evaluation and the rollout copy keep in fp32."""
    kwargs: dict[str, Any] = {}
    if spec.mixed_precision == "bf16":
        import torch

        kwargs["mixed_precision_policy"] = {"param_dtype": torch.bfloat16, "reduce_dtype": torch.bfloat16,
                                            "buffer_dtype": torch.float32}
    return dict(
        **kwargs,
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


T = TypeVar("T")
_MAIN_ONLY_CALLS = itertools.count()


def run_on_main(accelerator, what: str, work: Callable[[], T], poll_seconds: float = 0.5) -> T | None:
    """``work()`` on the main process; returns its value on every process (``work()`` itself in one process or
    without an accelerator).

    The other processes wait by polling the rendezvous store (torch.distributed's key-value store) until the
    main process posts that it is done, and only then meet it in the broadcast of the value. A collective held
    open for the whole stretch instead would fail after ``distributed.timeout_minutes`` (NCCL's watchdog
    aborts the job), and demonstrations or evaluations with ray-traced scenes take hours. Every process must
    call this in the same order (the calls are numbered). If ``work`` raises, the main process re-raises and
    the others raise a RuntimeError naming ``what``.
    """
    if accelerator is None or not is_distributed(accelerator):
        return work()
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    key = f"razor_robot/run_on_main/{next(_MAIN_ONLY_CALLS)}"
    value = None
    if accelerator.is_main_process:
        status = "failed"
        try:
            value = work()
            status = "done"
        finally:
            store.set(key, status)
    else:
        while not store.check([key]):
            time.sleep(poll_seconds)
        if store.get(key) != b"done":
            raise RuntimeError(f"the main process failed during {what}")
    return broadcast_object(accelerator, value)


def loads_weights(accelerator) -> bool:
    """Whether this process reads a checkpoint's weights (the main one, or the only one); the others build the
    policy on the meta device and receive the weights from it."""
    return accelerator.is_main_process or not is_distributed(accelerator)


def materialise_from_main(accelerator, policy) -> None:
    """Give a meta-built policy storage on this process's device and the main process's weights and buffers.

    Under FSDP nothing is done here: ``sync_module_states`` lets FSDP give each unit storage
    (``param_init_fn``) and broadcast rank 0's states while it shards. DDP keeps a whole replica per process,
    so the replica is made here, one tensor at a time, from the main process's copy. A collective: every
    process calls it.
    """
    from accelerate.utils import DistributedType

    if not is_distributed(accelerator) or accelerator.distributed_type == DistributedType.FSDP:
        return
    import torch
    import torch.distributed as dist

    if any(p.is_meta for p in policy.parameters()):
        policy.to_empty(device=accelerator.device)
        rebuild_rotary(policy)
    with torch.no_grad():
        for tensor in itertools.chain(policy.parameters(), policy.buffers()):
            dist.broadcast(tensor.data, src=0)


def rebuild_rotary(policy) -> None:
    """Recompute the LLM's RoPE frequencies in fp32 on the policy's device (as loading does): they are
    non-persistent buffers, absent from state dicts, and must never be rounded to the weights' dtype."""
    from razor_robot.policies.loading import rebuild_rotary as rebuild_on_device

    rebuild_on_device(policy, next(policy.parameters()).device)


class RolloutCopy:
    """The unsharded policy a process rolls out with.

    Without FSDP every process holds the whole policy, so the rollout policy is the trained policy itself.
    Under FSDP it is a separate unsharded policy on this process's GPU, in bf16 when training computes in
    bf16: built on the meta device and given storage directly on the GPU (never a host copy of the weights),
    its RoPE frequencies recomputed in fp32 as loading does, and its weights filled by :meth:`refresh` from
    the gathered weights (gathered on the main process, then broadcast), first right after ``prepare``.
    """

    def __init__(self, accelerator, policy):
        from accelerate.utils import DistributedType

        self.accelerator = accelerator
        self.separate = accelerator.distributed_type == DistributedType.FSDP
        self.policy = policy
        if self.separate:
            import torch

            dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else None
            self.policy = empty_copy(policy, accelerator.device, dtype).eval()

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


def empty_copy(policy, device, dtype=None):
    """A policy of ``policy``'s architecture (LoRA adapters included) with uninitialised weights on
    ``device``, parameters in ``dtype`` (None: the policy's), RoPE frequencies in fp32: no copy of the weights
    is made."""
    import torch

    from razor_robot.policies.modeling_vla import VLAPolicy

    with torch.device("meta"):
        twin = VLAPolicy(policy.config, policy.processor.tokenizer)
    if policy.lora_config is not None:
        lora = policy.lora_config
        twin.enable_lora(r=lora["r"], alpha=lora["alpha"], target_modules=lora["target_modules"],
                         dropout=lora["dropout"])
    twin.to_empty(device=device)
    dtype = dtype or next(policy.parameters()).dtype
    for parameter in twin.parameters():  # parameters only: buffers (RoPE) stay fp32
        parameter.data = parameter.data.to(dtype)
        parameter.requires_grad_(False)
    rebuild_rotary(twin)
    return twin

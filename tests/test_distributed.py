"""Training over several processes (accelerate): the sharded-batch SFT step equals the one-process step, and RL
keeps every process in step. FSDP needs GPUs; here two CPU processes run the same code under DDP (gloo).

The test launches this file with torchrun; ``python tests/test_distributed.py --worker OUT`` is the worker.
"""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def _policy():
    import torch

    from razor_robot.policies import load_policy
    from razor_robot.policies.action_tokenizer import compute_norm_stats

    torch.manual_seed(0)
    policy = load_policy("tiny", action_dim=2, device="cpu")
    policy.set_norm_stats("fake", compute_norm_stats(np.random.default_rng(0).uniform(-1, 1, (200, 2))))
    return policy


def _dataset(n=24):
    from razor_robot.training.dataset import DemoDataset

    rng = np.random.default_rng(1)
    return DemoDataset(
        images=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), states=np.zeros((n, 3), np.float32),
        actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32), instructions=["pick coke can"] * n,
        tasks=["pick-can"] * n, episode_ids=np.arange(n) // 4, grid_index=np.arange(n) // 8)


def _sft_config(batch_size, micro):
    from razor_robot.training.sft import SFTConfig
    from razor_robot.training.optim import OptimConfig

    return SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=batch_size, micro_batch_size=micro,
                                 warmup_steps=1), max_steps=3, shift_augment_px=2, seed=3)


def _train_sft_logged(policy, config, accelerator=None):
    from razor_robot.training.sft import train_sft

    logs = []
    train_sft(policy, _dataset(), config, unnorm_key="fake", progress=False, accelerator=accelerator,
              log=lambda metrics, step: logs.append([metrics["train/loss"], metrics["train/grad_norm"]]))
    return logs


def _state_digest(policy) -> float:
    return float(sum(p.detach().double().abs().sum() for p in policy.parameters()))


def _worker(out: Path) -> None:
    import torch

    from fake_envs import make_reach_env
    from razor_robot.training.distributed import DistributedSpec, make_accelerator
    from razor_robot.training.reinforce import RLConfig, train_reinforce
    from razor_robot.rollout.pool import EnvPool
    from razor_robot.training.optim import OptimConfig

    torch.set_num_threads(1)
    accelerator = make_accelerator(DistributedSpec(strategy="ddp"), cpu=True)
    result = {"world": accelerator.num_processes}
    for name, (batch, micro) in {"even": (6, 2), "one_sample": (1, None)}.items():
        result[f"sft_{name}"] = _train_sft_logged(_policy(), _sft_config(batch, micro), accelerator)
    policy = _policy()
    env = EnvPool(num_workers=1, envs_per_worker=3, env_factory=functools.partial(make_reach_env, success_mode="any"))
    logs = []
    config = RLConfig(OptimConfig(learning_rate=1e-3, batch_size=7, micro_batch_size=3, warmup_steps=1),
                      iterations=2, rollouts_per_point=3, checkpoints=1, seed=5)
    try:
        train_reinforce(policy, np.array([[0.0, 0.0], [0.02, 0.0], [0.0, 0.02]]), config, task="pick-can",
                        unnorm_key="fake", pool=env, progress=False, accelerator=accelerator,
                        log=lambda stats, it: logs.append(stats))
    finally:
        env.close()
    result["rl_logs"] = logs
    result["rl_digest"] = _state_digest(policy)
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(Path(__file__)), "--worker", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("name,batch,micro", [("even", 6, 2), ("one_sample", 1, None)])
def test_sharded_sft_steps_equal_the_single_process_steps(two_processes, name, batch, micro):
    import torch

    torch.set_num_threads(1)
    reference = _train_sft_logged(_policy(), _sft_config(batch, micro))  # one process, whole batches
    for rank in two_processes:
        assert rank["world"] == 2
        # Global loss and global gradient norm of each of the 3 steps (after the gradient all-reduce).
        np.testing.assert_allclose(rank[f"sft_{name}"], reference, rtol=2e-4)


@pytest.mark.slow
def test_distributed_rl_keeps_replicas_identical_and_counts_all_episodes(two_processes):
    first, second = two_processes
    assert first["rl_digest"] == second["rl_digest"]  # DDP replicas stay bit-identical
    assert len(first["rl_logs"]) == 2
    for a, b in zip(first["rl_logs"], second["rl_logs"]):
        assert a["rl/success"] == b["rl/success"]  # gathered over 3 points x 3 episodes, not per process
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-6)
        assert round(a["rl/success"] * 9) == pytest.approx(a["rl/success"] * 9, abs=1e-9)


def test_fsdp_settings_are_accepted_by_accelerate_and_wrap_the_policy_blocks():
    import dataclasses

    from accelerate import FullyShardedDataParallelPlugin

    from razor_robot.training.distributed import DistributedSpec, fsdp_plugin_kwargs

    kwargs = fsdp_plugin_kwargs(DistributedSpec(strategy="fsdp"))
    fields = {f.name for f in dataclasses.fields(FullyShardedDataParallelPlugin)}
    assert set(kwargs) <= fields  # the plugin (GPU-only to construct) takes every setting we pass
    assert kwargs["sharding_strategy"] == "FULL_SHARD" and kwargs["state_dict_type"] == "FULL_STATE_DICT"
    assert "mixed_precision_policy" not in kwargs
    import torch

    bf16 = fsdp_plugin_kwargs(DistributedSpec(strategy="fsdp", mixed_precision="bf16"))["mixed_precision_policy"]
    assert bf16 == {"param_dtype": torch.bfloat16, "reduce_dtype": torch.bfloat16, "buffer_dtype": torch.float32}
    # accelerate turns it into FSDP's MixedPrecision and keeps it when the Accelerator later applies its own
    # "bf16" (whose buffers would be bf16); the plugin's other checks need a GPU, so only this step runs here.
    plugin = FullyShardedDataParallelPlugin.__new__(FullyShardedDataParallelPlugin)
    plugin.fsdp_version, plugin.mixed_precision_policy = 1, dict(bf16)
    plugin.set_mixed_precision(plugin.mixed_precision_policy)
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.buffer_dtype == torch.float32
    assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16
    classes = {type(m).__name__ for m in _policy().modules()}
    assert set(kwargs["transformer_cls_names_to_wrap"]) == {"LlamaDecoderLayer", "Block"} <= classes


def test_accelerate_pin_admits_only_versions_with_fsdp_version():
    """fsdp_plugin_kwargs passes fsdp_version, which FullyShardedDataParallelPlugin takes from accelerate 1.6."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((HERE.parent / "pyproject.toml").read_text())["project"]
    pins = [Requirement(r) for r in project["optional-dependencies"]["learn"] if r.startswith("accelerate")]
    assert len(pins) == 1
    assert not any(pins[0].specifier.contains(v) for v in ("1.0.0", "1.5.2"))
    assert pins[0].specifier.contains(Version("1.6.0"))


def _inv_freqs(policy):
    return {n: b for n, b in policy.named_buffers() if n.endswith("inv_freq")}


def test_fsdp_rollout_copy_is_built_empty_with_fp32_rope_and_no_weight_copy(monkeypatch):
    """Under FSDP the rollout policy is a bf16 twin built on meta and given storage on the device: no deepcopy
    of the (fp32, 7.5 B) policy, and RoPE frequencies in fp32 as loading keeps them (the bf16 cast of a copy
    rounded them, so RL rolled out a slightly different policy from the one evaluation loads)."""
    import types

    import torch
    from accelerate.utils import DistributedType

    from razor_robot.training.distributed import RolloutCopy
    from razor_robot.policies import load_policy
    from razor_robot.policies.modeling_vla import VLAPolicy

    policy = _policy()
    fake_fsdp = types.SimpleNamespace(distributed_type=DistributedType.FSDP, mixed_precision="bf16",
                                      device=torch.device("cpu"), is_main_process=True)

    def no_deepcopy(self, memo):
        raise AssertionError("the rollout copy deep-copied the policy")

    monkeypatch.setattr(VLAPolicy, "__deepcopy__", no_deepcopy, raising=False)
    rollout = RolloutCopy(fake_fsdp, policy).policy
    assert rollout is not policy
    assert {p.dtype for p in rollout.parameters()} == {torch.bfloat16}
    loaded = _inv_freqs(load_policy("tiny", action_dim=2, device="cpu", dtype=torch.bfloat16))
    copied = _inv_freqs(rollout)
    assert copied and set(copied) == set(loaded)
    for name, buffer in copied.items():
        assert buffer.dtype == torch.float32 and torch.equal(buffer, loaded[name])
    # Filled with the trained weights (what refresh() broadcasts), it is the bf16 policy evaluation loads.
    rollout.load_state_dict({k: v.to(torch.bfloat16) for k, v in policy.state_dict().items()})
    reference = load_policy("tiny", action_dim=2, device="cpu", dtype=torch.bfloat16)
    reference.load_state_dict(policy.state_dict())
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    tokens = torch.full((2, 2), policy.action_token_offset + 5)
    with torch.no_grad():
        assert torch.equal(rollout.action_logits(images, ["pick coke can"] * 2, tokens),
                           reference.action_logits(images, ["pick coke can"] * 2, tokens))


def test_a_meta_load_reads_no_weights(tmp_path, monkeypatch):
    """A process that receives its weights from the main one reads only the checkpoint's headers."""
    import safetensors.torch
    import torch

    from razor_robot.policies import load_policy

    _policy().save_pretrained(tmp_path)
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("weights were read"))
    meta = load_policy(str(tmp_path), device="meta", dtype=torch.float32)
    real_shapes = {k: (tuple(v.shape), v.dtype) for k, v in _policy().state_dict().items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in meta.state_dict().items()} == real_shapes
    assert all(p.is_meta for p in meta.parameters())


def test_distributed_config_errors_are_one_line():
    from razor_robot.config import ConfigError, from_dict
    from razor_robot.experiment.schema import SweepConfig

    with pytest.raises(ConfigError, match="strategy must be one of none, ddp, fsdp, got 'zero3'"):
        from_dict(SweepConfig, {"distributed": {"strategy": "zero3"}}, "cfg")
    with pytest.raises(ConfigError, match="accelerate launch"):
        from_dict(SweepConfig, {"engine": "ray", "distributed": {"strategy": "fsdp"}}, "cfg")
    with pytest.raises(ConfigError, match="rollout_engine must be one of subprocess, ray, got 'mpi'"):
        from_dict(SweepConfig, {"rollout_engine": "mpi"}, "cfg")


def test_one_process_accelerator_leaves_the_policy_unwrapped():
    from razor_robot.training.distributed import DistributedSpec, make_accelerator

    accelerator = make_accelerator(DistributedSpec(), cpu=True)
    policy = _policy()
    assert accelerator.num_processes == 1 and accelerator.prepare(policy) is policy
    with pytest.raises(ValueError, match="fsdp needs CUDA GPUs"):
        make_accelerator(DistributedSpec(strategy="fsdp"), cpu=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(Path(sys.argv[2]))

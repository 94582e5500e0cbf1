"""A two-process (gloo, DDP) sweep on the embedded default: no process waits in a collective while the main one
simulates alone, and only the main process reads a checkpoint's weights.

The collective timeout is set to 6 s and the main process's simulation-only stages (the base's evaluation and
every run's checkpoint evaluations) are made to last longer than that (as 4 x 316 ray-traced drawer episodes
do on the paper path); the sweep must still finish on both processes. Run with torchrun; ``python
tests/test_distributed_sweep.py --worker OUT`` is the worker.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TIMEOUT_MINUTES = 0.1
MAIN_ONLY_SECONDS = 10.0  # longer than the 6-second collective timeout

CONFIG = {
    "name": "ddp-mini", "backend": "metaworld", "num_workers": 1, "envs_per_worker": 4,
    "env": {"image_size": 64},
    "policy": {"name": "tiny", "torch_threads": 1},
    "base": {"pretrain": {"prior_episodes": 1, "new_task_episodes": 1, "sft": {
        "optim": {"learning_rate": 1e-3, "batch_size": 16, "warmup_steps": 1}, "epochs": 1, "checkpoints": 1}}},
    "demos": {"grid_size": 2, "episodes_per_point": 1},
    "eval": {"new_task_positions": 2, "prior_episodes": 1},
    "kl": {"max_observations": 8},
    "sft": {"config": {"optim": {"batch_size": 16}, "max_steps": 2, "checkpoints": 1},
            "grid": {"optim.learning_rate": [1e-4]}},
    "rl": {"config": {"optim": {"batch_size": 64}, "iterations": 1, "rollouts_per_point": 1, "checkpoints": 1,
                      "diagnostic_steps": 0}, "grid": {"optim.learning_rate": [1e-4]}},
    "predictors": {"enabled": False}, "meter": {"every": 0}, "wandb": {"mode": "disabled"},
    "report": {"videos": False},
    "distributed": {"strategy": "ddp", "timeout_minutes": TIMEOUT_MINUTES},
}


def _worker(out: Path) -> None:
    import torch

    import razor_robot.experiment.stages.evaluate as evaluate_stage
    import razor_robot.experiment.stages.finetune as finetune_stage
    import razor_robot.experiment.sweep as sweep_module
    from razor_robot.config import from_dict
    from razor_robot.experiment.schema import SweepConfig

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    main_only, loads = [], []

    def slow(function):  # the main process's simulation takes longer than the collective timeout
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            value = function(*args, **kwargs)
            time.sleep(max(0.0, MAIN_ONLY_SECONDS - (time.perf_counter() - start)))
            main_only.append(time.perf_counter() - start)
            return value
        return wrapped

    def recording_load(path, spec, device=None, **overrides):
        policy = load(path, spec, device=device, **overrides)
        loads.append({"device": device, "bytes": sum(p.numel() * p.element_size() for p in policy.parameters()
                                                     if not p.is_meta)})
        return policy

    load = finetune_stage.load_for_training
    sweep_module.base_evaluation = slow(sweep_module.base_evaluation)
    evaluate_stage.evaluate_checkpoints = slow(evaluate_stage.evaluate_checkpoints)
    finetune_stage.load_for_training = recording_load
    config = from_dict(SweepConfig, json.loads((out / "ddp-mini.yaml").read_text()), "ddp-mini")
    results = sweep_module.run_sweep(config, out / "sweep", progress=False, log=lambda line: None)
    records = [json.loads(line) for line in results.read_text().splitlines()] if rank == 0 else []
    (out / f"rank{rank}.json").write_text(json.dumps({"main_only": main_only, "loads": loads,
                                                      "records": records}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_sweep_outlasts_the_collective_timeout_and_loads_weights_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    # The embedded default's base is pretrained in one process first (the paper path's base is a checkpoint),
    # as the README's multi-GPU recipe does.
    config = tmp_path / "ddp-mini.yaml"
    config.write_text(json.dumps({**CONFIG, "cache_dir": str(tmp_path / "cache")}))
    pretrain = [sys.executable, "-m", "razor_robot.cli", "pretrain", str(config), "--no-progress",
                "--set", "distributed.strategy=none", "--out", str(tmp_path / "sweep")]
    done = subprocess.run(pretrain, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(Path(__file__)), "--worker", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    main, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    # The main process simulated alone for longer than the timeout, at least three times (the base's
    # evaluation, then each run's); the other process waited it out every time.
    assert len(main["main_only"]) == 3 and min(main["main_only"]) > 60 * TIMEOUT_MINUTES
    assert other["main_only"] == []
    finished = [r for r in main["records"] if r.get("method") in ("sft", "rl")]
    assert sorted(r["method"] for r in finished) == ["rl", "sft"]
    assert not [r for r in main["records"] if r.get("status") == "failed"]
    # Each run: the main process read the weights, the other built the policy on the meta device.
    assert [load["device"] for load in main["loads"]] == ["cpu", "cpu"]
    assert all(load["bytes"] > 1_000_000 for load in main["loads"])
    assert [load["device"] for load in other["loads"]] == ["meta", "meta"]
    assert [load["bytes"] for load in other["loads"]] == [0, 0]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(Path(sys.argv[2]))

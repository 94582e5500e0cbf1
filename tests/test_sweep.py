"""Miniature sweeps through the same code path as configs/quickstart.yaml (seconds-scale settings)."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from razor_robot.cli import main
from razor_robot.sweep import read_records
from razor_robot.training import NonFiniteLossError

pytestmark = pytest.mark.slow

MINI = {
    "name": "mini",
    "backend": "metaworld",
    "num_workers": 1,
    "env": {"image_size": 64},
    "policy": {"name": "tiny", "torch_threads": 1},
    "base": {"pretrain": {"prior_episodes": 2, "new_task_episodes": 2, "sft": {
        "optim": {"learning_rate": 1e-3, "batch_size": 32, "warmup_steps": 2}, "epochs": 1, "checkpoints": 1}}},
    "demos": {"grid_size": 2, "episodes_per_point": 1},
    "eval": {"new_task_positions": 2, "prior_episodes": 1},
    "kl": {"max_observations": 16},
    "sft": {"config": {"optim": {"batch_size": 16}, "epochs": 1, "checkpoints": 2},
            "grid": {"optim.learning_rate": [1e-4, 3e-4]}},
    "rl": {"config": {"optim": {"batch_size": 64}, "iterations": 2, "rollouts_per_point": 1, "checkpoints": 1},
           "grid": {"optim.learning_rate": [1e-4]}},
    "wandb": {"mode": "disabled"},
    "report": {"videos": True, "video_episodes": 1, "video_tile": 64},
}
EXPECTED_RUNS = 3  # 2 SFT + 1 RL
EXPECTED_CHECKPOINT_RECORDS = 2 * 2 + 1


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def write_config(directory: Path, cache_dir: Path, **changes) -> Path:
    config = json.loads(json.dumps(MINI))
    config.update(changes, cache_dir=str(cache_dir))
    path = directory / "mini.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def checkpoint_records(records):
    return [r for r in records if r.get("method") in ("sft", "rl") and r.get("status") != "failed"]


def test_mini_sweep_writes_records_plots_videos_and_resumes(tmp_path, cache_dir):
    config = write_config(tmp_path, cache_dir)
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    records = read_records(out / "results.jsonl")
    base = [r for r in records if r["method"] == "base"]
    runs = checkpoint_records(records)
    assert len(base) == 1 and base[0]["kl"] == 0.0
    assert len(runs) == EXPECTED_CHECKPOINT_RECORDS and len({r["run_id"] for r in runs}) == EXPECTED_RUNS
    for record in runs:
        assert 0.0 <= record["new_task"] <= 100.0 and 0.0 <= record["prior_task"] <= 100.0
        assert record["kl/forward"] >= 0.0 and record["kl"] == record["kl/forward"]
        assert set(record) >= {"kl/reverse", "kl/tv", "kl/l2", "prior/open-drawer", "prior/close-drawer"}
        assert len(record["per_position"]) == 2
        assert (Path(record["checkpoint"]) / "config.json").exists()
    sft_steps = [r["step"] for r in runs if r["method"] == "sft"]
    assert len(sft_steps) == 4 and all(s > 0 for s in sft_steps)
    for name in ("frontier.png", "kl_forgetting.png", "summary.txt", "best-sft-pick-can.mp4",
                 "best-rl-open-drawer.mp4"):
        assert (out / name).stat().st_size > 0, name
    assert "sft" in (out / "summary.txt").read_text()

    # The same command again resumes: every run is already there, nothing is added.
    assert main(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    assert read_records(out / "results.jsonl") == records


def test_sigkill_mid_sweep_then_rerun_has_every_run_once(tmp_path, cache_dir):
    config = write_config(tmp_path, cache_dir)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "razor_robot.cli", "sweep", str(config), "--out", str(out), "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    # Kill once the first fine-tuning run has landed, i.e. in the middle of the sweep.
    while time.time() < deadline and not checkpoint_records(read_records(results)):
        assert process.poll() is None, "sweep ended before it could be interrupted"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    interrupted = read_records(results)
    assert 0 < len({r["run_id"] for r in checkpoint_records(interrupted)}) < EXPECTED_RUNS

    assert main(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    records = read_records(results)
    keys = Counter((r["run_id"], r.get("step")) for r in records)
    assert all(count == 1 for count in keys.values()), keys
    assert len({r["run_id"] for r in checkpoint_records(records)}) == EXPECTED_RUNS
    assert len(checkpoint_records(records)) == EXPECTED_CHECKPOINT_RECORDS
    assert records[: len(interrupted)] == interrupted  # what was computed before the kill is kept


def test_ray_engine_runs_each_run_as_a_task_with_env_actors(tmp_path, cache_dir):
    ray = pytest.importorskip("ray")
    # Runs are Ray tasks and their env workers Ray actors (0 CPUs each so two runs fit on 2 CPUs).
    config = write_config(tmp_path, cache_dir, engine="ray", ray={"num_cpus": 1, "env_num_cpus": 0},
                          rollout_engine="ray", report={"videos": False},
                          sft={"config": MINI["sft"]["config"], "grid": {"optim.learning_rate": [1e-4]}})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    finally:
        ray.shutdown()
    records = read_records(tmp_path / "out" / "results.jsonl")
    assert Counter(r["method"] for r in checkpoint_records(records)) == {"sft": 2, "rl": 1}
    assert not [r for r in records if r.get("status") == "failed"]


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, cache_dir, monkeypatch):
    import razor_robot.sweep as sweep

    real = sweep.execute_run

    def flaky(config, run, *args, **kwargs):
        if run.method == "sft" and run.hparams["optim.learning_rate"] == 3e-4:
            raise NonFiniteLossError("non-finite loss nan at step 3")
        return real(config, run, *args, **kwargs)

    monkeypatch.setattr(sweep, "execute_run", flaky)
    config = write_config(tmp_path, cache_dir, report={"videos": False})
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    records = read_records(tmp_path / "out" / "results.jsonl")
    failed = [r for r in records if r.get("status") == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "NonFiniteLossError: non-finite loss nan at step 3"
    assert len({r["run_id"] for r in checkpoint_records(records)}) == EXPECTED_RUNS - 1
    assert "failed run" in (tmp_path / "out" / "summary.txt").read_text()


def test_lora_run_saves_adapters_and_measures_the_distance_to_the_base(tmp_path, cache_dir):
    config = write_config(tmp_path, cache_dir, policy={**MINI["policy"], "lora": {"r": 4, "alpha": 8}},
                          report={"videos": False})
    out = tmp_path / "out"
    assert main(["train", "sft", str(config), "--out", str(out), "--no-progress",
                 "--set", "sft.config.optim.learning_rate=1e-3"]) == 0
    runs = checkpoint_records(read_records(out / "results.jsonl"))
    assert len(runs) == 2 and all(r["kl/forward"] > 0 for r in runs)
    saved = json.loads((Path(runs[-1]["checkpoint"]) / "config.json").read_text())
    assert saved["lora"]["r"] == 4

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
from razor_robot.report.records import read_records
from razor_robot.training.optim import NonFiniteLossError

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
    "report": {"videos": True, "video_episodes": 1, "video_tile": 64, "video_camera": 64},
    "meter": {"every": 1, "observations": 8},
    "predictors": {"probe_observations": 8},
}
EXPECTED_RUNS = 3  # 2 SFT + 1 RL
EXPECTED_CHECKPOINT_RECORDS = 2 * 2 + 1
POLICY_DEMO_METHODS = {
    "oracle_sft": {"enabled": True, "config": {"optim": {"batch_size": 16}, "epochs": 1, "checkpoints": 1}},
    "distill_sft": {"enabled": True, "config": {"optim": {"batch_size": 16}, "epochs": 1, "checkpoints": 1}},
    "policy_demos": {"episodes_per_point": 1, "max_attempts_factor": 2},
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def write_config(directory: Path, cache_dir: Path, **changes) -> Path:
    config = json.loads(json.dumps(MINI))
    config.update(changes, cache_dir=str(cache_dir))
    path = directory / "mini.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def checkpoint_records(records, methods=("sft", "rl")):
    return [r for r in records if r.get("method") in methods and r.get("status") != "failed"]


def count_env_pools(monkeypatch) -> list[str]:
    """The name of the config behind every env pool opened from now on."""
    from razor_robot.experiment.schema import SweepConfig

    opened, real = [], SweepConfig.env_pool

    def counted(self):
        opened.append(self.name)
        return real(self)

    monkeypatch.setattr(SweepConfig, "env_pool", counted)
    return opened


def test_mini_sweep_writes_records_plots_videos_and_resumes(tmp_path, cache_dir):
    config = write_config(tmp_path, cache_dir)
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    records = read_records(out / "results.jsonl")
    base = [r for r in records if r["method"] == "base"]
    runs = checkpoint_records(records)
    assert len(base) == 1 and base[0]["kl"] == 0.0
    assert len(runs) == EXPECTED_CHECKPOINT_RECORDS and len({r["run_id"] for r in runs}) == EXPECTED_RUNS
    for record in runs + base:
        for key, n in (("new_task", 2), ("prior/open-drawer", 1), ("prior/close-drawer", 1), ("prior_task", 2)):
            assert record[f"{key}/n"] == n and 0 <= record[f"{key}/successes"] <= n
            assert record[key] == pytest.approx(100 * record[f"{key}/successes"] / n)
            lo, hi = record[f"{key}/ci95"]
            assert 0 <= lo <= record[key] <= hi <= 100 and hi - lo > 20  # 1-2 episodes: wide Wilson intervals
        assert {task: len(v) for task, v in record["episodes"].items()} == {
            "pick-can": 2, "open-drawer": 1, "close-drawer": 1} and record["paired"] is True
    for record in runs:
        assert 0.0 <= record["new_task"] <= 100.0 and 0.0 <= record["prior_task"] <= 100.0
        assert record["kl/forward"] >= 0.0 and record["kl"] == record["kl/forward"]
        assert set(record) >= {"kl/reverse", "kl/tv", "kl/l2", "prior/open-drawer", "prior/close-drawer",
                               "kl/forward/ci95", "forgetting", "forgetting/ci95", "pred/weight_l1",
                               "pred/fisher_l2", "pred/one_minus_cka", "pred/update_sparsity"}
        assert record["forgetting"] == pytest.approx(base[0]["prior_task"] - record["prior_task"])
        assert len(record["per_position"]) == 2
        assert (Path(record["checkpoint"]) / "config.json").exists()
    # The meter forecasts from finished runs only: the first run has no fit, the RL run (after 2 SFT runs) has.
    first_run = runs[0]["run_id"]
    assert all("meter/forecast" not in r for r in runs if r["run_id"] == first_run)
    assert all("meter/forecast" in r for r in runs if r["method"] == "rl")
    meter_log = [json.loads(line) for line in (out / "runs" / first_run / "metrics.jsonl").read_text().splitlines()]
    assert any("meter/kl" in line for line in meter_log)
    sft_steps = [r["step"] for r in runs if r["method"] == "sft"]
    assert len(sft_steps) == 4 and all(s > 0 for s in sft_steps)
    for name in ("frontier.png", "kl_forgetting.png", "summary.txt", "best-sft-pick-can.mp4",
                 "best-rl-open-drawer.mp4", "sft-vs-rl.mp4"):
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("verdict: ") and "sft" in summary and "meter:" in summary
    assert (out / "table1.csv").exists()

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
    import razor_robot.experiment.sweep as sweep

    real = sweep.execute_run

    def flaky(config, run, *args, **kwargs):
        if run.method == "sft" and run.hparams["optim.learning_rate"] == 3e-4:
            raise NonFiniteLossError("non-finite loss nan at step 3")
        records = real(config, run, *args, **kwargs)
        if run.method == "rl":  # a NaN metric: written as null with its reason, strict JSON all the same
            records[0]["seconds"] = float("nan")
        return records

    monkeypatch.setattr(sweep, "execute_run", flaky)
    pools = count_env_pools(monkeypatch)
    config = write_config(tmp_path, cache_dir, report={"videos": False})
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert pools == ["mini"]  # one pool served the base, the demonstrations and every run, the failed one too
    records = read_records(tmp_path / "out" / "results.jsonl")
    failed = [r for r in records if r.get("status") == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "NonFiniteLossError: non-finite loss nan at step 3"
    assert len({r["run_id"] for r in checkpoint_records(records)}) == EXPECTED_RUNS - 1
    assert "failed run" in (tmp_path / "out" / "summary.txt").read_text()

    def refuse(constant):
        raise ValueError(f"bare {constant}")

    # Every line is strict JSON (jq, pandas, browsers): json.loads refusing NaN/Infinity passes.
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    strict = [json.loads(line, parse_constant=refuse) for line in lines if line.strip()]
    nulled = [r for r in strict if r.get("method") == "rl" and r.get("null_reasons")]
    assert len(nulled) == 1 and nulled[0]["seconds"] is None and nulled[0]["null_reasons"] == {"/seconds": "NaN"}
    assert [r for r in records if r.get("method") == "rl" and r["seconds"] != r["seconds"]]  # read back as NaN


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


def test_oracle_and_distill_runs_train_on_policy_episodes_or_fail_with_the_reason(tmp_path, cache_dir):
    # The miniature base rarely lifts the can: each policy-data method either trains on the successes it found
    # (its sampled tokens are the labels) or is recorded as failed, saying no episode succeeded.
    config = write_config(tmp_path, cache_dir, report={"videos": False}, **POLICY_DEMO_METHODS,
                          sft={**MINI["sft"], "enabled": False})
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    records = read_records(out / "results.jsonl")
    for method in ("oracle-sft", "distill-sft"):
        own = [r for r in records if r.get("method") == method]
        assert own, method
        if own[0].get("status") == "failed":
            assert "succeeded on no pick-can episode" in own[0]["reason"], own[0]["reason"]
        else:
            from razor_robot.training.data import load_dataset

            directory = out / ("oracle-demos" if method == "oracle-sft" else "distill-demos")
            datasets = [p.parent.parent for p in directory.rglob("meta/info.json")]  # LeRobot v3.0 roots
            assert len(datasets) == 1 and load_dataset(datasets[0]).tokens is not None
            assert all(r["forgetting/ci95"] for r in own)


def test_several_bases_each_fine_tuned_then_pooled(tmp_path, cache_dir, monkeypatch):
    # Two bases of one recipe (seeds 0, 1): each base's sweep in its folder, every record naming its base,
    # and the summary opening with the pooled verdict and the per-base outcomes.
    config = write_config(tmp_path, cache_dir, base={**MINI["base"], "seeds": [0, 1]},
                          sft={**MINI["sft"], "grid": {"optim.learning_rate": [3e-4]}},
                          report={"videos": False})
    out = tmp_path / "out"
    pools = count_env_pools(monkeypatch)
    assert main(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    assert pools == ["mini"]  # both bases' sweeps on one pool: its workers build their envs once
    records = read_records(out / "results.jsonl")
    assert Counter(r["base_id"] for r in records) == {"base-s0": 4, "base-s1": 4}  # base + 2 SFT + 1 RL each
    for label in ("base-s0", "base-s1"):
        own = read_records(out / label / "results.jsonl")
        assert own == [r for r in records if r["base_id"] == label]
        assert (out / label / "summary.txt").read_text().startswith("verdict: ")
    bases = {r["checkpoint"] for r in records if r["method"] == "base"}
    assert len(bases) == 2  # two different pretrained bases (different seeds -> different recipes)
    # base-s0 is the single base of the same config: one cache entry for both
    (tmp_path / "single").mkdir()
    single = write_config(tmp_path / "single", cache_dir)
    from razor_robot.cli import _load_config
    from razor_robot.experiment.stages.base import recipe_hash

    assert recipe_hash(_load_config(str(single))) == recipe_hash(_load_config(str(config)).bases()[0][1])
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("pooled verdict (2 bases): ") or summary.startswith("pooled verdict: unresolved")
    assert "bases: base-s0, base-s1 (per-base reports and plots in their folders)" in summary  # videos off

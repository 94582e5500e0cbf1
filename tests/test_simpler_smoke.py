"""The paper path end to end on the real SimplerEnv stack (configs/simpler_cpu_smoke.yaml, made smaller):
scripted Google-robot demonstrations in OpenVLA's action convention, SFT with openvla's loss, one REINFORCE
iteration, new- and prior-task evaluation, KL, predictors, the report and a video.

Runs inside the stack from ../shared/simpler (see .ci/run), with the learning stack installed there."""

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.simpler, pytest.mark.slow]

pytest.importorskip("mani_skill2_real2sim")  # sapien: needs DIR/env.sh's Vulkan (lavapipe)
pytest.importorskip("torch")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "simpler_cpu_smoke.yaml"


def test_smoke_sweep_on_the_real_simulator(tmp_path):
    from razor_robot.cli import main
    from razor_robot.training.data import load_dataset
    from razor_robot.report.records import read_records

    out = tmp_path / "out"
    smaller = ["--set", f"cache_dir={tmp_path / 'cache'}", "--set", "num_workers=2", "--set", "envs_per_worker=1",
               "--set", "base.pretrain.new_task_episodes=2", "--set", "eval.new_task_positions=2",
               "--set", "eval.prior_episodes=1", "--set", "report.video_episodes=1",
               "--set", "sft.grid={}", "--set", "rl.grid={}"]
    assert main(["sweep", str(CONFIG), "--out", str(out), "--no-progress", *smaller]) == 0
    records = read_records(out / "results.jsonl")
    assert not [r for r in records if r.get("status") == "failed"], records
    assert {r["method"] for r in records} == {"base", "sft", "rl"}
    for record in records:
        assert record["new_task/n"] == 2 and record["prior/open-drawer/n"] == 1
        assert record["prior/close-drawer/n"] == 1 and len(record["new_task/ci95"]) == 2
        if record["method"] != "base":
            assert record["kl/forward"] >= 0 and "pred/weight_l1" in record and "forgetting/ci95" in record
    # The SFT labels are in OpenVLA's fractal convention: 7-D, absolute gripper (1 open, 0 closed).
    demos = [p.parent.parent for p in (tmp_path / "cache").glob("demos-pick-can-*/meta/info.json")]
    labels = np.concatenate([load_dataset(d).actions for d in demos])
    assert labels.shape[1] == 7 and set(np.unique(labels[:, 6])) <= {0.0, 1.0}
    assert (out / "summary.txt").read_text().startswith("verdict: ")
    for name in ("frontier.png", "kl_forgetting.png", "best-sft-pick-can.mp4"):
        assert (out / name).stat().st_size > 0, name

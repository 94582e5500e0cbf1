"""How fine-tuning checkpoints are stored: ``checkpoints.dtype`` and ``checkpoints.keep``."""

import pytest

from razor_robot.config import from_dict
from razor_robot.experiment.schema import SweepConfig


def test_checkpoint_dtype_follows_what_evaluation_loads():
    assert from_dict(SweepConfig, {"policy": {"device": "cpu"}}, "c").checkpoint_dtype() == "float32"
    # fp32 master weights, bf16 compute: evaluation loads bf16, so the checkpoints need no more.
    paper_like = {"policy": {"device": "cpu", "dtype": "float32"}, "distributed": {"mixed_precision": "bf16"}}
    assert from_dict(SweepConfig, paper_like, "c").checkpoint_dtype() == "bfloat16"
    explicit = {**paper_like, "checkpoints": {"dtype": "float32"}}
    assert from_dict(SweepConfig, explicit, "c").checkpoint_dtype() == "float32"


@pytest.mark.slow
def test_bf16_checkpoints_and_keep_best(tmp_path):
    from safetensors import safe_open

    from razor_robot.cli import main
    from razor_robot.report.records import completed_records
    from razor_robot.experiment.stages.report import best_checkpoint
    from test_sweep import write_config

    config = write_config(tmp_path, tmp_path / "cache", predictors={"enabled": False},
                          report={"videos": False}, meter={"every": 0})
    out = tmp_path / "out"
    assert main(["train", "sft", str(config), "--out", str(out), "--no-progress", "--set",
                 "checkpoints.dtype=bfloat16", "--set", "checkpoints.keep=best",
                 "--set", "sft.config.checkpoints=3"]) == 0
    records = [r for r in completed_records(out / "results.jsonl") if r["method"] == "sft"]
    assert len(records) == 3  # every checkpoint was evaluated and recorded before its weights went
    best = best_checkpoint(records, "sft")
    for record in records:
        weights = list((tmp_path / record["checkpoint"]).glob("model.safetensors"))
        assert (record["checkpoint"] == best["checkpoint"]) == bool(weights)
        assert (tmp_path / record["checkpoint"] / "config.json").exists()
    with safe_open(str(next((tmp_path / best["checkpoint"]).glob("model.safetensors"))), "pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}

"""scripts/gpu_check.py's CPU part: the tiny policy through the learner's code (smoke), and part 2's code path
(one SFT and one REINFORCE step with gradient checkpointing in the paper config's precision) on the tiny
architecture. On a GPU the same script runs the 7B architecture."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_cpu_part(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--device", "cpu", "--arch", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "smoke (cpu, tiny): SFT 8 steps" in out and "REINFORCE step loss" in out
    assert "tiny (cpu, bfloat16 weights" in out and "plan assumes" in out and "plan's estimate" in out
    assert "all steps ran" in out

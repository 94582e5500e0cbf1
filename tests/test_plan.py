"""``razor-robot plan``: the paper config's plan from a meta-device 7B (no weights), the quickstart's plan against
what the quickstart really spent, and bad configs failing in one line."""

import re
from pathlib import Path


from razor_robot.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _row(text: str, stage: str) -> list[int]:
    line = next(l for l in text.splitlines() if l.startswith(stage))
    return [int(n.replace(",", "")) for n in re.findall(r"\s(\d[\d,]*)(?=\s|$)", line[44:])][:3]


def test_paper_plan_builds_the_7b_on_meta_and_counts_the_sweep(capsys, monkeypatch):
    import resource

    monkeypatch.delenv("OPENVLA_7B_PATH", raising=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert main(["plan", str(ROOT / "configs/paper_simpler_openvla.yaml")]) == 0
    text = capsys.readouterr().out
    # Built on the meta device: the 30 GB of fp32 weights (15 GB in bf16) were never allocated.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 2 * 2**20
    assert "policy openvla-7b: 7,541,237,184 parameters" in text
    runs = re.search(r"runs: (\d+) = (\d+) sft \+ (\d+) rl", text)
    assert runs and int(runs[1]) == int(runs[2]) + int(runs[3])
    # SimplerEnv's protocol: 100 can positions + 108 visual-matching episodes per drawer task, 80/113 steps.
    assert _row(text, "base: evaluation") == [316, 100 * 80 + 216 * 113, 0]
    assert _row(text, "sft: demonstrations")[:2] == [1000, 1000 * 80]
    for needle in ("checkpoints:", "GPU per process (training, 8 processes, fsdp)", "host, main process",
                   "GPU-hours at 400 TFLOP/s", "assumptions:"):
        assert needle in text


def test_quickstart_plan_is_within_20_percent_of_what_the_quickstart_spends(capsys, tmp_path):
    """The real figures of the cold quickstart from the shipped base (README, status; docs/benchmarks.md,
    session 13): its rollouts ran 142,800 env steps at 30 steps an episode, i.e. 4,760 episodes (256 base
    evaluation + 640 demonstrations + 256 x 9 checkpoint evaluations + 12 x 128 RL episodes + 24 video
    episodes); optimiser steps 2 x 900 (SFT: 1.5 epochs of 19,200 // 32) + 12 (RL) = 1,812, no pretraining
    (the base ships); 9 fine-tuning checkpoints, whose size is measured here."""
    from razor_robot.policies import load_policy

    assert main(["plan", str(ROOT / "configs/quickstart.yaml")]) == 0
    text = capsys.readouterr().out
    episodes, env_steps, optimizer_steps = _row(text, "total")
    assert abs(episodes / 4760 - 1) < 0.2 and abs(env_steps / 142_800 - 1) < 0.2
    assert abs(optimizer_steps / 1812 - 1) < 0.2
    policy = load_policy("tiny", action_dim=4, prompt_template="simpler-env")
    policy.save_pretrained(tmp_path)
    real_disk = 9 * sum(f.stat().st_size for f in tmp_path.iterdir())
    disk = re.search(r"checkpoints: 9 saved, float32, .*; disk ([\d.,]+) MiB", text)
    assert disk and abs(float(disk[1].replace(",", "")) * 2**20 / real_disk - 1) < 0.2


def test_bad_configs_fail_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: {grid: {optim.learning_rate: []}}\n")
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected a non-empty list" in err
    bad.write_text("checkpoints: {keep: some}\n")
    assert main(["plan", str(bad)]) == 2
    assert "checkpoints.keep must be one of all, best, got 'some'" in capsys.readouterr().err
    assert main(["plan", str(ROOT / "configs/quickstart.yaml"), "--tflops", "0"]) == 2
    assert "--tflops must be > 0" in capsys.readouterr().err


def test_several_bases_multiply_the_plan(capsys):
    """reproduce.yaml fine-tunes three bases: every stage of the table runs once per base."""
    assert main(["plan", str(ROOT / "configs/reproduce.yaml")]) == 0
    text = capsys.readouterr().out
    assert "per base, 3 bases: the table is one base's" in text
    assert _row(text, "total, 3 bases") == [3 * n for n in _row(text, "total ")]

"""The command line: bad input is one line on stderr with exit code 2, before any work; --help works everywhere."""

import pytest

import razor_robot.experiment.stages.report  # noqa: F401  (bind the real rollout before no_work patches it)
from razor_robot import cli

CONFIG = """\
name: cli-test
num_workers: 1
cache_dir: {cache}
wandb: {{mode: disabled}}
sft: {{config: {{optim: {{batch_size: 8}}}}}}
rl: {{config: {{iterations: 1}}}}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(CONFIG.format(cache=tmp_path / "cache"))
    return path


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Any env pool or rollout means validation came too late: fail fast instead of running a sweep."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the input was validated")

    monkeypatch.setattr("razor_robot.rollout.pool.EnvPool.start", refuse)  # workers start with the first rollout
    monkeypatch.setattr("razor_robot.rollout.pool.EnvPool.rollout", refuse)
    monkeypatch.setattr("razor_robot.rollout.pool.rollout", refuse)


def _fails(capsys, argv, *fragments):
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"razor-robot {argv[0]}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_unknown_task_for_video(capsys, tmp_path):
    _fails(capsys, ["video", "--task", "fly-away", "--out", tmp_path / "v.mp4"], "unknown task 'fly-away'")
    assert not (tmp_path / "v.mp4").exists()


def test_bad_episode_count_for_video(capsys, tmp_path):
    _fails(capsys, ["video", "--task", "pick-can", "--episodes", "0", "--out", tmp_path / "v.mp4"],
           "--episodes must be >= 1, got 0")


def test_missing_checkpoint_for_eval(capsys, config_file, tmp_path):
    _fails(capsys, ["eval", config_file, "--checkpoint", tmp_path / "nope"], "checkpoint not found", "nope")


def test_missing_config_file(capsys, tmp_path):
    _fails(capsys, ["sweep", tmp_path / "missing.yaml"], "config file not found", "missing.yaml")


def test_bad_config_value(capsys, config_file, tmp_path):
    _fails(capsys, ["train", "sft", config_file, "--set", "sft.config.optim.learning_rate=-1",
                    "--out", tmp_path / "out"], "learning_rate must be > 0, got -1")


def test_unknown_rl_variant(capsys, config_file, tmp_path):
    _fails(capsys, ["train", "rl", config_file, "--set", "rl.config.variant=ppo", "--out", tmp_path / "out"],
           "unknown RL variant 'ppo'")


def test_unknown_key_and_mistyped_value(capsys, config_file, tmp_path):
    _fails(capsys, ["sweep", config_file, "--set", "sft.config.optim.lr=0.1", "--out", tmp_path / "o"],
           "cli-test.sft.config.optim.lr: unknown key")
    _fails(capsys, ["sweep", config_file, "--set", "num_workers=two", "--out", tmp_path / "o"],
           "small.num_workers: expected an integer, got 'two'")
    _fails(capsys, ["sweep", config_file, "--set", "novalue", "--out", tmp_path / "o"],
           "--set expects KEY=VALUE, got 'novalue'")


def test_invalid_yaml(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsft: [1, 2\n")
    _fails(capsys, ["sweep", path, "--out", tmp_path / "o"], "broken.yaml")


def test_missing_results_for_frontier(capsys, tmp_path):
    _fails(capsys, ["frontier", tmp_path / "results.jsonl"], "results file not found")


@pytest.mark.parametrize("command, options", [
    ("sweep", ["--out", "--engine", "--set", "--no-progress"]),
    ("train", ["sft", "rl", "--set", "--out"]),
    ("pretrain", ["--out", "--set"]),
    ("collect", ["--task", "--out", "--set"]),
    ("eval", ["--checkpoint", "--out", "--no-kl"]),
    ("frontier", ["--out", "--scale", "--tolerance"]),
    ("video", ["--task", "--policy", "--backend", "--episodes", "--out", "--temperature", "--unnorm-key"]),
])
def test_help_of_every_command(capsys, command, options):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: razor-robot {command}")
    for option in options:
        assert option in out, option


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("sweep", "train", "pretrain", "collect", "eval", "frontier", "video"):
        assert command in out


def test_missing_simulator_backend_names_the_install(capsys, tmp_path):
    import importlib.util

    if importlib.util.find_spec("simpler_env") is not None:
        pytest.skip("simpler_env is installed here")
    _fails(capsys, ["video", "--task", "pick-can", "--backend", "simpler", "--out", tmp_path / "x.mp4"],
           "simpler_env", "ManiSkill2_real2sim")


@pytest.mark.parametrize("setting", ["engine=ray", "rollout_engine=ray"])
def test_missing_ray_names_the_install_before_work(capsys, config_file, tmp_path, monkeypatch, setting):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if ray were not installed
    _fails(capsys, ["sweep", config_file, "--set", setting, "--out", tmp_path / "out"],
           "ray is not installed", 'pip install "razor-robot[ray]"')
    assert not (tmp_path / "out").exists()


def test_fsdp_without_gpus_is_one_line_before_work(capsys, config_file, tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPUs present: fsdp is allowed")
    _fails(capsys, ["sweep", config_file, "--set", "distributed.strategy=fsdp", "--out", tmp_path / "out"],
           "fsdp needs CUDA GPUs")
    assert not (tmp_path / "out").exists()

from dataclasses import dataclass, field

import pytest

from razor_robot.config import ConfigError, config_hash, from_dict, set_dotted
from razor_robot.experiment.schema import SweepConfig, expand_runs
from razor_robot.training.reinforce import RLConfig
from razor_robot.training.sft import SFTConfig


@dataclass
class Inner:
    rate: float = 1.0
    """A rate."""
    names: list[str] = field(default_factory=list)
    """Names."""

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    count: int = 1
    label: str | None = None


def test_from_dict_builds_nested_and_accepts_yaml_exponent_strings():
    config = from_dict(Outer, {"inner": {"rate": "3e-5", "names": ["a"]}, "count": 2})
    assert config.inner.rate == 3e-5 and config.inner.names == ["a"] and config.count == 2 and config.label is None


@pytest.mark.parametrize("data, message", [
    ({"cont": 1}, "outer.cont: unknown key"),
    ({"count": 1.5}, "outer.count: expected an integer, got 1.5"),
    ({"inner": {"rate": "fast"}}, "outer.inner.rate: expected a number, got 'fast'"),
    ({"inner": {"rate": -1}}, "outer.inner: rate must be >= 0, got -1.0"),
    ({"inner": {"names": "a"}}, "outer.inner.names: expected a list"),
])
def test_from_dict_errors_name_the_key_and_value(data, message):
    with pytest.raises(ConfigError) as error:
        from_dict(Outer, data, "outer")
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_set_dotted_copies():
    data = {"a": {"b": 1}}
    assert set_dotted(data, "a.c.d", 2) == {"a": {"b": 1, "c": {"d": 2}}} and data == {"a": {"b": 1}}


def test_config_hash_depends_on_content_only():
    assert config_hash(Inner(1.0)) == config_hash(Inner(1.0)) != config_hash(Inner(2.0))


def test_expand_runs_is_the_product_of_grid_and_seeds():
    config = from_dict(SweepConfig, {
        "seeds": [0, 1],
        "sft": {"config": {"epochs": 1}, "grid": {"optim.batch_size": [16, 32], "optim.learning_rate": [1e-5, 3e-5]}},
        "rl": {"config": {"iterations": 2}, "grid": {"optim.learning_rate": [1e-5]}},
    })
    runs = expand_runs(config)
    assert [r.method for r in runs].count("sft") == 8 and [r.method for r in runs].count("rl") == 2
    assert isinstance(runs[0].config, SFTConfig) and isinstance(runs[-1].config, RLConfig)
    assert runs[0].hparams == {"optim.batch_size": 16, "optim.learning_rate": 1e-5}
    assert runs[0].config.optim.batch_size == 16 and runs[0].config.seed == 0 and runs[1].config.seed == 1
    assert len({r.run_id for r in runs}) == 10


@pytest.mark.parametrize("data, message", [
    ({"sft": {"config": {"optim": {"learning_rate": -1}}}}, "learning_rate must be > 0, got -1"),
    ({"sft": {"config": {"optim": {"batch_size": 0}}}}, "batch_size must be >= 1, got 0"),
    ({"rl": {"config": {"variant": "ppo2"}}}, "unknown RL variant 'ppo2'"),
    ({"sft": {"grid": {"optim.learning_rate": []}}}, "expected a non-empty list"),
    ({"demos": {"episodes_per_point": 0}}, "episodes_per_point (K) must be >= 1"),
    ({"backend": "isaac"}, "isaac"),
    ({"engine": "slurm"}, "engine must be local or ray"),
])
def test_bad_sweep_configs_fail_before_work(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand_runs(from_dict(SweepConfig, data, "sweep"))


@pytest.mark.parametrize("name, sft_runs, rl_runs", [
    ("quickstart", 2, 1), ("reproduce", 3, 3), ("cpu_full", 21, 7), ("paper_simpler_openvla", 21, 21), ("simpler_cpu_smoke", 1, 1)])
def test_shipped_configs_validate_and_expand(name, sft_runs, rl_runs):
    from pathlib import Path

    from razor_robot.config import load_yaml

    config = load_yaml(SweepConfig, Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    runs = expand_runs(config)
    assert [r.method for r in runs].count("sft") == sft_runs and [r.method for r in runs].count("rl") == rl_runs
    policy_data_runs = 1 if name == "reproduce" else 0  # the quickstart is SFT vs RL; reproduce has all four
    if name in ("quickstart", "reproduce"):  # the stable REINFORCE; the paper's 10 demonstrations per point
        assert [r.method for r in runs].count("oracle-sft") == policy_data_runs
        assert [r.method for r in runs].count("distill-sft") == policy_data_runs
        assert next(r for r in runs if r.method == "rl").config.optimizer_steps_per_iteration == 1
        assert config.demos.episodes_per_point == 10
    if name == "paper_simpler_openvla":
        assert config.backend == "simpler" and config.demos.grid_size == 10 and config.demos.episodes_per_point == 10
        assert config.eval.new_task_positions == 100 and config.rl.config["rollouts_per_point"] == 5
        assert sorted({r.config.optim.learning_rate for r in runs}) == [1e-6, 3e-6, 5e-6, 7e-6, 9e-6, 1e-5, 3e-5]
        assert sorted({r.config.optim.batch_size for r in runs if r.method == "sft"}) == [16, 32, 64]
        # "RL used the same training config as SFT": its batch sizes too (the README's RL batch choice)
        assert sorted({r.config.optim.batch_size for r in runs if r.method == "rl"}) == [16, 32, 64]


def test_bf16_sparsity_uses_the_paper_configs_precision_switch():
    import importlib.util
    from pathlib import Path

    from razor_robot.cli import _load_config

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("bf16_sparsity", root / "scripts" / "bf16_sparsity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    paper = root / "configs" / "paper_simpler_openvla.yaml"
    assert _load_config(str(paper)).policy.dtype == "bfloat16"  # the paper's bf16 training
    for dtype in script.MASTER_DTYPES:
        assert _load_config(str(paper), [f"{script.PRECISION_KEY}={dtype}"]).policy.dtype == dtype


def test_one_base_seed_is_that_base_of_the_multi_base_sweep():
    from pathlib import Path

    from razor_robot.cli import _load_config

    reproduce = str(Path(__file__).parents[1] / "configs" / "reproduce.yaml")
    one = _load_config(reproduce, ["base.seeds=[3]"])
    assert one.base.seeds is None and one.base.checkpoint == "builtin:tiny-metaworld-s3"
    assert one.bases() == [("", one)]
    label, of_three = _load_config(reproduce).bases()[1]
    assert label == "base-s3" and one.base == of_three.base
    shifted = _load_config(reproduce).base.pretrain.seed + 3_000_000  # BASE_SEED_STRIDE * 3
    assert one.base.pretrain.seed == of_three.base.pretrain.seed == shifted
    with pytest.raises(ValueError, match="has \\{seed\\} but base.seeds is not set"):
        _load_config(reproduce, ["base.seeds=null"])

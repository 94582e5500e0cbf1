"""Shipped bases (razor_robot.policies.builtin): the card matches the recipe of every config that names it,
files are checked before use, and bad references fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from razor_robot.cli import _load_config  # noqa: E402
from razor_robot.policies import builtin  # noqa: E402

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.yaml"))


def _named_bases():
    """(config file, base label, single-base config) of every shipped base a config names."""
    out = []
    for path in CONFIGS:
        config = _load_config(str(path))
        for label, single in config.bases():
            if builtin.is_builtin(single.base.checkpoint):
                out.append((path.name, label, single))
    return out


def test_some_config_names_a_shipped_base():
    assert any(name == "quickstart.yaml" for name, _, _ in _named_bases())


@pytest.mark.parametrize("name, label, single", _named_bases(), ids=lambda v: v if isinstance(v, str) else "")
def test_card_hash_equals_the_recipe_hash(name, label, single):
    from razor_robot.experiment.stages.base import recipe, recipe_hash

    card = builtin.read_card(single.base.checkpoint)
    assert card["recipe_hash"] == recipe_hash(single), f"{name} {label}: rebuild with razor-robot pretrain --ship"
    assert card["recipe"] == json.loads(json.dumps(recipe(single)))  # the recipe itself, as JSON keeps it
    rates = card["evaluation"]["rates"]
    for key in ("new_task", "prior_task"):  # every rate with its count and interval
        assert set(rates[key]) == {"rate", "n", "successes", "ci95"} and rates[key]["n"] > 0


def test_shipped_base_loads_after_its_files_are_checked():
    from razor_robot.policies import load_policy

    names = builtin.builtin_names()
    assert names, "no shipped base"
    directory = builtin.resolve_builtin(f"builtin:{names[0]}")
    policy = load_policy(f"builtin:{names[0]}")
    same = load_policy(str(directory))
    for (key, a), (_, b) in zip(policy.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), key


def _fake_shipped(root: Path, monkeypatch) -> Path:
    directory = root / "toy"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"weights")
    card = {"recipe_hash": "abc", "files": builtin.file_digests(directory, ["model.safetensors"])}
    (directory / builtin.CARD_FILE).write_text(json.dumps(card))
    monkeypatch.setattr(builtin, "BUILTIN_ROOT", root)
    return directory


def test_corrupt_missing_and_unknown_files_are_one_line_errors(tmp_path, monkeypatch):
    directory = _fake_shipped(tmp_path, monkeypatch)
    assert builtin.resolve_builtin("builtin:toy") == directory
    (directory / "model.safetensors").write_bytes(b"weighTs")
    with pytest.raises(ValueError, match=r"shipped base 'builtin:toy': .*model.safetensors is corrupt \(sha256"):
        builtin.resolve_builtin("builtin:toy")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"shipped base 'builtin:toy' is missing .*model.safetensors"):
        builtin.resolve_builtin("builtin:toy")
    with pytest.raises(FileNotFoundError, match=r"unknown shipped base 'builtin:nope'.*\(shipped: builtin:toy\)"):
        builtin.resolve_builtin("builtin:nope")
    (directory / builtin.CARD_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt shipped-base card .*card.json"):
        builtin.read_card("builtin:toy")


def test_ship_base_writes_a_card_with_the_recipe_and_file_hashes(tmp_path):
    from razor_robot.policies import load_policy
    from razor_robot.experiment.stages.base import recipe_hash, ship_base

    config = _load_config(str(Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"))
    source = tmp_path / "built"
    load_policy("tiny").save_pretrained(source)
    scores = {"new_task": 25.0, "new_task/n": 4, "new_task/successes": 1, "new_task/ci95": [4.6, 69.9],
              "prior_task": 100.0, "prior_task/n": 2, "prior_task/successes": 2, "prior_task/ci95": [34.2, 100.0]}
    target = ship_base(config, source, scores, "toy", root=tmp_path / "shipped")
    card = json.loads((target / builtin.CARD_FILE).read_text())
    assert card["reference"] == "builtin:toy" and card["recipe_hash"] == recipe_hash(config)
    assert card["evaluation"]["rates"]["new_task"] == {"rate": 25.0, "n": 4, "successes": 1, "ci95": [4.6, 69.9]}
    assert set(card["files"]) == {p.name for p in source.iterdir()}
    assert card["files"] == builtin.file_digests(target, sorted(card["files"]))
    with pytest.raises(ValueError, match="--ship needs a plain folder name"):
        ship_base(config, source, scores, "../x", root=tmp_path / "shipped")


def test_pretrain_rejects_a_bad_ship_name_before_any_work(capsys, monkeypatch):
    from razor_robot import cli
    from razor_robot.experiment.stages import base

    def no_work(*args, **kwargs):
        raise AssertionError("pretraining started before the name was checked")

    monkeypatch.setattr(base, "base_checkpoint", no_work)
    config = str(Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml")
    assert cli.main(["pretrain", config, "--ship", "../elsewhere"]) == 2
    assert "--ship needs a plain folder name" in capsys.readouterr().err

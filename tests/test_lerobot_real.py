"""Against the real lerobot 0.4.4 (.ci/run's lerobot environment): LeRobotDataset loads what the package writes,
and the package reads what LeRobotDataset writes. Skipped where lerobot is not installed (the main environment:
lerobot pins an older torch); .ci/run fails if these tests skip in its lerobot environment."""

import os

import numpy as np
import pytest

from razor_robot.training.data import load_dataset, save_dataset, trajectories_to_dataset
from razor_robot.rollout.episodes import Trajectory

pytestmark = pytest.mark.lerobot
lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset", reason="lerobot is not installed")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _trajectory(rng, length, task, instruction, seed, success_at):
    images = rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8)
    actions = rng.uniform(-1.5, 1.5, (length, 4))  # beyond the box: `action` keeps them, labels are clipped
    step_success = np.arange(length) >= success_at
    return Trajectory(task, instruction, seed, None, True, images, rng.normal(size=(length, 5)), actions,
                      step_success)


def test_lerobot_loads_what_the_package_writes(tmp_path):
    import torch

    rng = np.random.default_rng(0)
    trajectories = [_trajectory(rng, 3, "pick-can", "pick up the can", 10, 2),
                    _trajectory(rng, 4, "pick-can", "pick up the can", 11, 3),
                    _trajectory(rng, 2, "open-drawer", "open the drawer", 12, 1)]
    dataset = trajectories_to_dataset(trajectories, grid_index=[5, 6, -1])
    dataset.meta["backend"] = "metaworld"
    root = save_dataset(dataset, tmp_path / "demos")
    loaded = lerobot_dataset.LeRobotDataset("razor-robot/demos", root=root)
    assert loaded.num_frames == len(loaded) == 9 and loaded.num_episodes == 3 and loaded.fps == 20
    episodes = loaded.meta.episodes
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 3), (3, 7), (7, 9)]
    assert list(loaded.meta.tasks.index) == ["pick up the can", "open the drawer"]
    for i in range(9):
        item = loaded[i]
        image = (item["observation.image"].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # (H, W, 3)
        np.testing.assert_array_equal(image, dataset.images[i])
        np.testing.assert_array_equal(item["action"].numpy(), dataset.env_actions[i])
        np.testing.assert_array_equal(item["action.label"].numpy(), dataset.actions[i])
        np.testing.assert_array_equal(item["observation.state"].numpy(), dataset.states[i])
        assert item["task"] == dataset.instructions[i]
        assert item["episode_index"].item() == dataset.episode_ids[i]
        assert bool(item["next.success"]) == dataset.step_success[i]
        assert item["episode.seed"].item() == dataset.seeds[i]
    assert [bool(loaded[i]["next.done"]) for i in range(9)] == [False, False, True, False, False, False, True,
                                                                 False, True]


def test_the_package_reads_what_lerobot_writes(tmp_path):
    rng = np.random.default_rng(1)
    features = {"observation.images.front": {"dtype": "image", "shape": (16, 16, 3),
                                             "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
                "action": {"dtype": "float32", "shape": (4,), "names": None}}
    created = lerobot_dataset.LeRobotDataset.create("someone/towels", fps=10, features=features,
                                                    root=tmp_path / "towels", use_videos=False)
    frames = []
    for episode, (length, task) in enumerate([(3, "fold the towel"), (2, "hang the towel")]):
        for _ in range(length):
            frame = {"observation.images.front": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                     "observation.state": rng.normal(size=3).astype(np.float32),
                     "action": rng.normal(size=4).astype(np.float32), "task": task}
            frames.append(dict(frame))
            created.add_frame(frame)
        created.save_episode()
    created.finalize()
    dataset = load_dataset(tmp_path / "towels")
    np.testing.assert_array_equal(dataset.images, np.stack([f["observation.images.front"] for f in frames]))
    np.testing.assert_array_equal(dataset.actions, np.stack([f["action"] for f in frames]))
    np.testing.assert_array_equal(dataset.states, np.stack([f["observation.state"] for f in frames]))
    assert dataset.instructions == ["fold the towel"] * 3 + ["hang the towel"] * 2
    assert dataset.episode_ids.tolist() == [0, 0, 0, 1, 1]

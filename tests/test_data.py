"""Demonstration datasets: exact Parquet round trip, K successes per grid point with shortfalls, bad input."""

import functools
import json

import numpy as np
import pytest

from fake_envs import make_reach_env
from razor_robot.training.data import (
    CollectionPlan, DemoDataset, collect, episodes_per_task, load_dataset, save_dataset,
    trajectories_to_dataset,
)
from razor_robot.rollout.pool import EnvPool
from razor_robot.rollout.demonstrator import DemonstratorPolicy
from razor_robot.rollout.episodes import Trajectory


def _dataset(n_steps=(3, 2), task="pick-can", seed=0) -> DemoDataset:
    rng = np.random.default_rng(seed)
    n = sum(n_steps)
    return DemoDataset(
        images=rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8),
        states=rng.normal(size=(n, 4)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        instructions=[f"instr {i}" for i, k in enumerate(n_steps) for _ in range(k)],
        tasks=[task] * n,
        episode_ids=np.repeat(np.arange(len(n_steps)), n_steps).astype(np.int64),
        grid_index=np.repeat(np.array([4, -1][: len(n_steps)] + [0] * max(0, len(n_steps) - 2)), n_steps),
        meta={"shortfall_per_point": {"3": 1}, "norm_stats": {"k": {"action": {"q01": [-1.0, 0.5]}}}},
    )


def test_save_load_round_trip_is_exact(tmp_path):
    dataset = _dataset()
    dataset.env_actions = dataset.actions * 3  # the env action as sent, beside the clipped label
    dataset.seeds = np.array([11, 11, 11, 12, 12])
    dataset.step_success = np.array([False, False, True, False, True])
    out = save_dataset(dataset, tmp_path / "demos")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet",
                     "meta/info.json", "meta/stats.json", "meta/tasks.parquet"]  # no temp files left behind
    loaded = load_dataset(out)
    for name in ("images", "states", "actions", "episode_ids", "env_actions", "seeds", "step_success"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(dataset, name), err_msg=name)
        assert getattr(loaded, name).dtype == getattr(dataset, name).dtype, name
    np.testing.assert_array_equal(loaded.grid_index, [4, 4, 4, -1, -1])
    assert loaded.grid_index.dtype == np.int64 and loaded.tokens is None
    assert loaded.instructions == ["instr 0"] * 3 + ["instr 1"] * 2 and loaded.tasks == ["pick-can"] * 5
    assert loaded.meta == dict(dataset.meta, image_shape=[6, 5, 3], action_dim=2, n_steps=5, n_episodes=2)
    assert json.loads((out / "meta/info.json").read_text())["razor_robot"]["meta"]["n_episodes"] == 2


def test_lerobot_v3_layout_as_lerobot_defines_it(tmp_path):
    import pyarrow.parquet as pq

    dataset = _dataset()
    dataset.step_success = np.array([False, True, True, False, True])
    dataset.tokens = np.arange(10, dtype=np.int64).reshape(5, 2) + 1000
    out = save_dataset(dataset, tmp_path / "demos")
    info = json.loads((out / "meta/info.json").read_text())
    assert (info["codebase_version"], info["fps"], info["total_episodes"], info["total_frames"],
            info["total_tasks"], info["chunks_size"]) == ("v3.0", 20, 2, 5, 2, 1000)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None and info["splits"] == {"train": "0:2"}
    features = info["features"]
    assert features["observation.image"] == {"dtype": "image", "shape": [6, 5, 3],
                                             "names": ["height", "width", "channels"]}
    assert features["action"]["shape"] == features["action.label"]["shape"] == [2]
    assert features["action.tokens"] == {"dtype": "int64", "shape": [2], "names": None}
    assert features["next.done"]["dtype"] == "bool" and features["episode.seed"]["dtype"] == "int64"
    data = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    assert set(data) == set(features)
    assert data["episode_index"] == [0, 0, 0, 1, 1] and data["frame_index"] == [0, 1, 2, 0, 1]
    assert data["index"] == [0, 1, 2, 3, 4] and data["task_index"] == [0, 0, 0, 1, 1]
    assert data["timestamp"] == [0.0, 0.05, 0.1, 0.0, 0.05] or np.allclose(data["timestamp"], [0, .05, .1, 0, .05])
    assert data["next.done"] == [False, False, True, False, True]
    assert data["next.reward"] == [0.0, 1.0, 1.0, 0.0, 1.0] and data["next.success"] == [False, True, True, False, True]
    assert data["action.tokens"][1] == [1002, 1003]
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["episode_index"], e["tasks"], e["length"], e["dataset_from_index"], e["dataset_to_index"],
             e["data/chunk_index"], e["data/file_index"]) for e in episodes] == [
        (0, ["instr 0"], 3, 0, 3, 0, 0), (1, ["instr 1"], 2, 3, 5, 0, 0)]
    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["instr 0", "instr 1"] and tasks.column("task_index").to_pylist() == [0, 1]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((out / "meta/stats.json").read_text())
    expected = dataset.images.reshape(-1, 3).astype(np.float64).mean(0) / 255
    np.testing.assert_allclose(np.asarray(stats["observation.image"]["mean"]).reshape(3), expected, rtol=1e-12)
    assert stats["action"]["max"] == dataset.actions.max(0).astype(np.float64).tolist()
    assert stats["next.reward"]["count"] == [5]


def test_data_files_split_between_episodes_at_the_size_limit(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import razor_robot.training.lerobot_format as lf

    monkeypatch.setattr(lf, "DATA_FILES_SIZE_IN_MB", 1e-9)  # every episode passes it: one file each
    dataset = _dataset((2, 2, 1))
    out = save_dataset(dataset, tmp_path / "demos")
    assert sorted(p.name for p in (out / "data/chunk-000").iterdir()) == [
        "file-000.parquet", "file-001.parquet", "file-002.parquet"]
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert episodes["data/file_index"] == [0, 1, 2] and episodes["dataset_from_index"] == [0, 2, 4]
    np.testing.assert_array_equal(load_dataset(out).images, dataset.images)


def test_an_old_layout_is_not_misread_and_a_rewrite_replaces_it(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "steps.parquet").write_bytes(b"PAR1")
    (old / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="pre-LeRobot layout"):
        load_dataset(old)
    save_dataset(_dataset(), old)  # what a cache miss does: collect again, write over it
    assert not (old / "steps.parquet").exists() and len(load_dataset(old)) == 5


def test_load_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="no LeRobot dataset at"):
        load_dataset(tmp_path / "nowhere")
    empty = _dataset().subset(np.zeros(5, bool))
    with pytest.raises(ValueError, match="empty dataset"):
        save_dataset(empty, tmp_path / "empty")
    with pytest.raises(ValueError, match="empty dataset"):
        trajectories_to_dataset([])
    with pytest.raises(ValueError, match="empty dataset"):
        DemoDataset.concatenate([empty])


def test_concatenate_offsets_episode_ids_and_subsets_by_task():
    a, b = _dataset((3, 2), "open-drawer"), _dataset((1, 1), "pick-can", seed=1)
    both = DemoDataset.concatenate([a, b])
    assert both.episode_ids.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert episodes_per_task(both) == {"open-drawer": 2, "pick-can": 2}
    picks = both.for_tasks(["pick-can"])
    assert len(picks) == 2 and picks.episode_ids.tolist() == [2, 3]
    np.testing.assert_array_equal(picks.images, b.images)


def test_trajectories_to_dataset_clips_actions_and_numbers_episodes():
    def trajectory(actions):
        t = len(actions)
        return Trajectory("pick-can", "pick coke can", 0, (0.1, 0.2), True, np.zeros((t, 4, 4, 3), np.uint8),
                          np.zeros((t, 4)), np.asarray(actions, np.float64), np.ones(t, bool))

    dataset = trajectories_to_dataset([trajectory([[2.5, -0.5]]), trajectory([[0.25, -3.0], [1.0, 0.0]])],
                                      grid_index=[7, 2], first_episode_id=10)
    assert dataset.actions.dtype == np.float32 and dataset.states.dtype == np.float32
    assert dataset.actions.tolist() == [[1.0, -0.5], [0.25, -1.0], [1.0, 0.0]]
    assert dataset.episode_ids.tolist() == [10, 11, 11] and dataset.grid_index.tolist() == [7, 2, 2]


def test_collection_plan_rejects_bad_k():
    with pytest.raises(ValueError, match="episodes_per_point .K. must be >= 1, got 0"):
        CollectionPlan("pick-can", 0)
    with pytest.raises(ValueError, match="max_attempts_factor"):
        CollectionPlan("pick-can", 1, max_attempts_factor=0)


class PickyReacher:
    """Moves straight to the can (ReachEnv state = [point, can]) except on odd seeds and when the can is at x < 0,
    where it walks away. The seed is readable from image[0, 0, 1]."""

    built = 0

    def __init__(self):
        PickyReacher.built += 1

    def act(self, obs):
        point, can = obs["state"][:2], obs["state"][2:]
        if obs["image"][0, 0, 1] % 2 == 1 or can[0] < 0:
            return np.array([-1.0, -1.0])
        return np.clip((can - point) / 0.1, -1, 1)


def test_collect_keeps_k_per_point_and_reports_shortfalls():
    # K=2, cap = 2 * 3 = 6 attempts per point; point 0 succeeds on even seeds, point 1 never.
    #   round 1: p0 seeds 0,1 (keeps 0); p1 seeds 2,3          -> p0 wants 1, p1 wants 2
    #   round 2: p0 seed 4 (keeps 4);    p1 seeds 5,6          -> p0 done, p1 has 4 attempts
    #   round 3:                          p1 seeds 7,8          -> p1 capped at 6 attempts, short by 2
    plan = CollectionPlan("pick-can", 2, np.array([[0.2, 0.1], [-0.2, 0.0]]), max_attempts_factor=3)
    PickyReacher.built = 0
    with EnvPool(num_workers=1, envs_per_worker=2, env_factory=make_reach_env) as pool:
        kept, index, shortfall, attempts = collect(plan, DemonstratorPolicy(PickyReacher), pool=pool, progress=False)
    assert [t.seed for t in kept] == [0, 4] and index == [0, 0]
    assert all(t.success and t.object_xy == (0.2, 0.1) for t in kept)
    assert shortfall == {"1": 2}
    assert attempts == {"0": 3, "1": 6}
    assert PickyReacher.built == 9  # one fresh demonstrator per episode: 4 + 3 + 2 attempts


class EvenSeedReacher(PickyReacher):
    def act(self, obs):
        point, can = obs["state"][:2], obs["state"][2:]
        if obs["image"][0, 0, 1] % 2 == 1:
            return np.array([-1.0, -1.0])
        return np.clip((can - point) / 0.1, -1, 1)


def test_collect_without_positions_counts_k_in_total():
    # K=3 in total: seeds 10, 11, 12 (keeps 10, 12), then 13 (fails), then 14 (keeps) -> 5 attempts.
    plan = CollectionPlan("pick-can", 3, None, seed=10)
    # The env draws the can in [-1, 1]^2; 12 steps of up to 0.1 reach any of it.
    PickyReacher.built = 0
    with EnvPool(num_workers=1, envs_per_worker=2, env_factory=functools.partial(make_reach_env, horizon=12)) as pool:
        kept, index, shortfall, attempts = collect(plan, DemonstratorPolicy(EvenSeedReacher), pool=pool, progress=False)
    assert [t.seed for t in kept] == [10, 12, 14] and index == [-1, -1, -1] and shortfall == {}
    assert attempts == {"0": 5}
    assert PickyReacher.built == 5

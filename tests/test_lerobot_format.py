"""Foreign LeRobot v3.0 datasets: mapped onto the package's dataset, one-line errors for what does not map."""

import io
import json

import numpy as np
import pytest

from razor_robot.cli import main
from razor_robot.training.lerobot_format import check_training_data, read_lerobot


def _png(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_foreign(root, *, cameras=("observation.images.top", "observation.images.wrist"), action_dim=4,
                  version="v3.0", lengths=(2, 3), seed=0):
    """A LeRobot v3.0 dataset as lerobot writes one (tasks.parquet through pandas' default index column, images as
    {bytes, path} structs), with none of the package's own features or metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n = sum(lengths)
    images = {key: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for key in cameras}
    actions = rng.normal(size=(n, action_dim)).astype(np.float32)
    episode = np.repeat(np.arange(len(lengths)), lengths)
    frame = np.concatenate([np.arange(k) for k in lengths])
    features = {key: {"dtype": "image", "shape": [8, 8, 3], "names": ["height", "width", "channel"]}
                for key in cameras}
    features.update({"action": {"dtype": "float32", "shape": [action_dim], "names": None},
                     "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                     "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                     "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                     "index": {"dtype": "int64", "shape": [1], "names": None},
                     "task_index": {"dtype": "int64", "shape": [1], "names": None}})
    columns = {key: pa.array([{"bytes": _png(im), "path": f"frame-{i}.png"} for i, im in enumerate(images[key])])
               for key in cameras}
    columns.update({"action": pa.array(list(actions), pa.list_(pa.float32(), action_dim)),
                    "timestamp": pa.array(frame / 10, pa.float32()), "frame_index": frame,
                    "episode_index": episode, "index": np.arange(n), "task_index": episode % 2})
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(columns), root / "data/chunk-000/file-000.parquet")
    tasks = pa.table({"task_index": [0, 1], "__index_level_0__": ["fold the towel", "stack the cups"]})
    pandas_meta = {"index_columns": ["__index_level_0__"], "columns": []}
    pq.write_table(tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}),
                   root / "meta/tasks.parquet")
    info = {"codebase_version": version, "fps": 10, "features": features, "total_episodes": len(lengths),
            "total_frames": n, "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"}
    (root / "meta/info.json").write_text(json.dumps(info))
    return images, actions


def test_a_foreign_dataset_maps_its_camera_action_and_task_strings(tmp_path):
    images, actions = write_foreign(tmp_path)
    dataset = read_lerobot(tmp_path)  # the first image feature
    np.testing.assert_array_equal(dataset.images, images["observation.images.top"])
    np.testing.assert_array_equal(dataset.actions, actions)
    np.testing.assert_array_equal(dataset.env_actions, actions)
    assert dataset.instructions == ["fold the towel"] * 2 + ["stack the cups"] * 3
    assert dataset.tasks == dataset.instructions and dataset.episode_ids.tolist() == [0, 0, 1, 1, 1]
    assert dataset.states.shape == (5, 0) and dataset.grid_index.tolist() == [-1] * 5 and dataset.tokens is None
    wrist = read_lerobot(tmp_path, image_key="observation.images.wrist")
    np.testing.assert_array_equal(wrist.images, images["observation.images.wrist"])
    assert check_training_data(tmp_path, action_dim=4) == "observation.images.top"


def test_one_line_errors_for_what_does_not_map(tmp_path):
    def error(root, **kwargs):
        with pytest.raises(ValueError) as caught:
            check_training_data(root, **{"action_dim": 4, **kwargs})
        assert "\n" not in str(caught.value)
        return str(caught.value)

    write_foreign(tmp_path / "ok")
    assert "'action' has shape [4], the policy acts in 7 dimensions" in error(tmp_path / "ok", action_dim=7)
    assert "no image feature 'observation.images.side'" in error(tmp_path / "ok", image_key="observation.images.side")
    write_foreign(tmp_path / "no-image", cameras=())
    assert "no image feature (dtype image)" in error(tmp_path / "no-image")
    write_foreign(tmp_path / "v21", version="v2.1")
    message = error(tmp_path / "v21")
    assert "LeRobot v2.1 dataset" in message and "lerobot.datasets.v30.convert_dataset_v21_to_v30" in message
    write_foreign(tmp_path / "no-action")
    info = json.loads((tmp_path / "no-action/meta/info.json").read_text())
    del info["features"]["action"]
    (tmp_path / "no-action/meta/info.json").write_text(json.dumps(info))
    assert "no 'action' feature" in error(tmp_path / "no-action")
    with pytest.raises(ValueError, match="no 'action' feature"):
        read_lerobot(tmp_path / "no-action")


def test_train_sft_on_a_foreign_dataset_of_the_wrong_dimension_fails_before_any_work(tmp_path, capsys):
    write_foreign(tmp_path / "demos", action_dim=7)
    code = main(["train", "sft", "configs/quickstart.yaml", "--demos", str(tmp_path / "demos"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.endswith("'action' has shape [7], the policy acts in 4 dimensions")
    assert not (tmp_path / "out").exists()  # nothing ran
    assert main(["train", "rl", "configs/quickstart.yaml", "--demos", str(tmp_path / "demos")]) == 2

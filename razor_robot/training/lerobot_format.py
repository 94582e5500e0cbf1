"""LeRobotDataset v3.0 on disk, written and read with pyarrow alone (installing ``lerobot`` would pin an older
torch).

The layout is the one ``lerobot/datasets/utils.py`` and ``lerobot_dataset.py`` (lerobot 0.4.4) define::

    DIR/meta/info.json                                codebase_version "v3.0", fps, features, totals, path templates
    DIR/meta/stats.json                               per-feature min/max/mean/std/count
    DIR/meta/tasks.parquet                            the task strings (pandas index "task") and task_index
    DIR/meta/episodes/chunk-000/file-000.parquet      one row per episode: tasks, length, its rows in data/
    DIR/data/chunk-XXX/file-XXX.parquet               one row per frame; episodes never span two files

Frame features of the package's datasets: ``observation.image`` (PNG bytes, lossless), ``observation.state``,
``action`` (the env action as the demonstrator or policy sent it), ``action.label`` (the label in the policy's
action convention, clipped to [-1, 1]: what SFT bins with the policy's statistics), ``action.tokens`` (the
OpenVLA vocabulary ids a policy sampled; only in datasets of a policy's own episodes, where they are the SFT
labels), ``next.reward``, ``next.done``, ``next.success``, ``episode.grid_index`` (-1 without a position) and
``episode.seed``, plus lerobot's ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``.
The task string is the instruction; the package's task name and collection metadata sit in info.json under
``razor_robot``. Every file is written atomically (temp file, rename), info.json last: a directory without
info.json is incomplete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from razor_robot.io import atomic_path, dumps_strict, loads_strict
from razor_robot.training.dataset import DemoDataset

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000
"""Files per chunk folder (lerobot's DEFAULT_CHUNK_SIZE)."""
DATA_FILES_SIZE_IN_MB = 100
"""A data file is closed before it would pass this size (lerobot's DEFAULT_DATA_FILE_SIZE_IN_MB)."""
FPS = {"metaworld": 20, "simpler": 3}
"""Policy steps per second: Meta-World's 80 Hz control with the package's 4 repeats per action; the Google
robot of SimplerEnv at its 3 Hz control frequency."""
CONVERT_HINT = "python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=REPO_ID"
"""lerobot's own converter of v2.1 datasets (lerobot >= 0.4)."""
LEGACY_FILES = ("steps.parquet", "meta.json")
"""razor-robot's layout before LeRobot v3.0 (one Parquet of steps + a JSON)."""


def _feature(dtype: str, shape: tuple[int, ...], names: Any = None) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "names": names}


def _vector_type(pa: Any, dtype: str, length: int) -> Any:
    # A Sequence(length=n) of the datasets library is a fixed-size list in Arrow.
    return pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), length)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # lossless: pixels round-trip exactly
    return buffer.getvalue()


def _stats(values: np.ndarray, image: bool = False) -> dict[str, Any]:
    """lerobot's per-feature statistics: images per channel in [0, 1] with shape (3, 1, 1), vectors per
    dim."""
    if image:  # (N, H, W, 3) uint8
        values = values.astype(np.float64) / 255.0
        axes, shape = (0, 1, 2), (3, 1, 1)
    else:
        values = values.astype(np.float64).reshape(len(values), -1)
        axes, shape = (0,), (values.shape[1],)
    return {"min": values.min(axes).reshape(shape).tolist(), "max": values.max(axes).reshape(shape).tolist(),
            "mean": values.mean(axes).reshape(shape).tolist(), "std": values.std(axes).reshape(shape).tolist(),
            "count": [len(values)]}


def _tasks_table(pa: Any, tasks: list[str]) -> Any:
    """meta/tasks.parquet as pandas writes ``DataFrame({"task_index": ...}, index=tasks)``: lerobot reads it
    with pandas and takes a task's string from the index, so the pandas metadata names "task" as the index."""
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        # The metadata layout of pandas 2.x, which lerobot's pd.read_parquet expects.
        "creator": {"library": "razor-robot", "version": "0.1.0"}, "pandas_version": "2.2.0"}
    table = pa.table({"task_index": pa.array(np.arange(len(tasks)), pa.int64()), "task": pa.array(tasks)})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="snappy")


def frame_features(dataset: Any) -> dict[str, dict[str, Any]]:
    """info.json's features of a DemoDataset (lerobot's five index features last, as lerobot lists them)."""
    n, h, w, c = dataset.images.shape
    a = dataset.actions.shape[1]
    features = {
        "observation.image": _feature("image", (h, w, c), ["height", "width", "channels"]),
        "observation.state": _feature("float32", (dataset.states.shape[1],)),
        "action": _feature("float32", (a,)),
        "action.label": _feature("float32", (a,)),
    }
    if dataset.tokens is not None:
        features["action.tokens"] = _feature("int64", (dataset.tokens.shape[1],))
    features.update({
        "next.reward": _feature("float32", (1,)), "next.done": _feature("bool", (1,)),
        "next.success": _feature("bool", (1,)), "episode.grid_index": _feature("int64", (1,)),
        "episode.seed": _feature("int64", (1,)),
        "timestamp": _feature("float32", (1,)), "frame_index": _feature("int64", (1,)),
        "episode_index": _feature("int64", (1,)), "index": _feature("int64", (1,)),
        "task_index": _feature("int64", (1,)),
    })
    return features


def _frame_columns(dataset: Any, starts: np.ndarray, ends: np.ndarray, fps: int,
                   tasks: list[str]) -> dict[str, Any]:
    """The data files' columns, keyed as in :func:`frame_features`: (N, k) arrays, (N,) arrays, image
    structs."""
    import pyarrow as pa

    n = len(dataset)
    frame_index = np.arange(n) - np.repeat(starts, ends - starts)
    task_of = {t: i for i, t in enumerate(tasks)}
    success = (dataset.step_success if dataset.step_success is not None else np.zeros(n, bool)).astype(bool)
    done = np.zeros(n, bool)
    done[ends - 1] = True
    columns: dict[str, Any] = {
        "observation.image": pa.array([{"bytes": _png(image), "path": None} for image in dataset.images],
                                      pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "observation.state": dataset.states.astype(np.float32),
        "action": (dataset.env_actions if dataset.env_actions is not None else dataset.actions).astype(np.float32),
        "action.label": dataset.actions.astype(np.float32),
    }
    if dataset.tokens is not None:
        columns["action.tokens"] = dataset.tokens.astype(np.int64)
    columns.update({
        "next.reward": success.astype(np.float32), "next.done": done, "next.success": success,
        "episode.grid_index": dataset.grid_index.astype(np.int64),
        "episode.seed": (dataset.seeds if dataset.seeds is not None else np.full(n, -1)).astype(np.int64),
        "timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index.astype(np.int64),
        "episode_index": np.repeat(np.arange(len(starts)), ends - starts).astype(np.int64),
        "index": np.arange(n, dtype=np.int64),
        "task_index": np.array([task_of[t] for t in dataset.instructions], np.int64),
    })
    return columns


def _arrow_table(columns: dict[str, Any]) -> Any:
    import pyarrow as pa

    arrays = {}
    for key, value in columns.items():
        if isinstance(value, np.ndarray) and value.ndim == 2:  # (N, k) -> a fixed-size list per row
            flat = pa.array(value.reshape(-1), pa.from_numpy_dtype(value.dtype))
            arrays[key] = pa.FixedSizeListArray.from_arrays(flat, value.shape[1])
        else:
            arrays[key] = pa.array(value) if isinstance(value, np.ndarray) else value
    return pa.table(arrays)


def _episode_rows(instructions: list[str], starts: np.ndarray, ends: np.ndarray,
                  frames_per_file: int) -> list[dict[str, Any]]:
    """meta/episodes rows: an episode starts a new data file when its file would pass ``frames_per_file``."""
    rows, file_number, file_start = [], 0, 0
    for e, (start, end) in enumerate(zip(starts, ends)):
        if end - file_start > frames_per_file and start > file_start:
            file_number, file_start = file_number + 1, start
        rows.append({"episode_index": e, "tasks": [instructions[start]], "length": int(end - start),
                     "data/chunk_index": file_number // CHUNKS_SIZE, "data/file_index": file_number % CHUNKS_SIZE,
                     "dataset_from_index": int(start), "dataset_to_index": int(end),
                     "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    return rows


def write_lerobot(dataset: Any, directory: str | os.PathLike, *, fps: int | None = None) -> Path:
    """Write a DemoDataset as a LeRobotDataset v3.0 directory (see the module docstring). Episodes are
    renumbered 0..E-1 in order of first appearance; ``episode_ids`` must keep each episode's frames
    together."""
    import pyarrow as pa

    directory = Path(directory)
    n = len(dataset)
    if n == 0:
        raise ValueError(f"empty dataset: nothing to write to {directory}")
    change = np.flatnonzero(np.diff(dataset.episode_ids)) + 1
    starts, ends = np.concatenate([[0], change]), np.concatenate([change, [n]])
    if len(np.unique(dataset.episode_ids)) != len(starts):
        raise ValueError("episode_ids interleave: each episode's frames must be contiguous")
    fps = fps or FPS.get(dataset.meta.get("backend", "metaworld"), FPS["metaworld"])
    tasks = list(dict.fromkeys(dataset.instructions))
    columns = _frame_columns(dataset, starts, ends, fps, tasks)
    table = _arrow_table(columns)
    # Data files close before DATA_FILES_SIZE_IN_MB, estimated from the whole table's bytes per frame.
    rows = _episode_rows(dataset.instructions, starts, ends,
                         max(1, int(DATA_FILES_SIZE_IN_MB * 1024 ** 2 // (table.nbytes / n))))
    if directory.exists():  # a rewrite: clear what an older layout or an older write left
        for stale in ("data", "meta", *LEGACY_FILES):
            path = directory / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for chunk, file in sorted({(r["data/chunk_index"], r["data/file_index"]) for r in rows}):
        mine = [r for r in rows if (r["data/chunk_index"], r["data/file_index"]) == (chunk, file)]
        lo, hi = mine[0]["dataset_from_index"], mine[-1]["dataset_to_index"]
        _write_parquet(table.slice(lo, hi - lo), directory / DATA_PATH.format(chunk_index=chunk, file_index=file))
    _write_parquet(pa.Table.from_pylist(rows), directory / EPISODES_PATH.format(chunk_index=0, file_index=0))
    _write_parquet(_tasks_table(pa, tasks), directory / TASKS_PATH)
    stats = {"observation.image": _stats(dataset.images, image=True)}
    stats.update({key: _stats(value) for key, value in columns.items()
                  if key != "observation.image" and isinstance(value, np.ndarray)})
    with atomic_path(directory / STATS_PATH) as tmp:
        tmp.write_text(dumps_strict(stats, indent=4))
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": dataset.meta.get("backend"),
        "total_episodes": len(starts), "total_frames": n, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB, "video_files_size_in_mb": 200, "fps": fps,
        "splits": {"train": f"0:{len(starts)}"}, "data_path": DATA_PATH, "video_path": None,
        "features": frame_features(dataset),
        "razor_robot": {"tasks": sorted(set(dataset.tasks)), "task_of_instruction":
                        dict(zip(dataset.instructions, dataset.tasks)), "meta": dataset.meta},
    }
    with atomic_path(directory / INFO_PATH) as tmp:  # last: marks the directory complete
        tmp.write_text(dumps_strict(info, indent=4))
    return directory


def read_info(directory: Path) -> dict[str, Any]:
    """meta/info.json of a v3.0 dataset, or a one-line error for anything else (v2.x, the old layout,
    none)."""
    info_path = directory / INFO_PATH
    if not info_path.exists():
        if all((directory / name).exists() for name in LEGACY_FILES):
            raise FileNotFoundError(f"{directory}: razor-robot's pre-LeRobot layout ({' + '.join(LEGACY_FILES)}); "
                                    f"collect it again (razor-robot collect) to get a LeRobot v3.0 dataset")
        raise FileNotFoundError(f"no LeRobot dataset at {directory} (expected {INFO_PATH})")
    try:
        info = loads_strict(info_path.read_text())
    except ValueError as error:
        raise ValueError(f"{info_path}: not valid JSON ({error})") from None
    version = str(info.get("codebase_version", "?"))
    if version.startswith("v2") or (directory / "meta" / "episodes.jsonl").exists():
        raise ValueError(f"{directory} is a LeRobot {version} dataset; convert it to v3.0 with lerobot's "
                         f"{CONVERT_HINT}")
    if version != CODEBASE_VERSION:
        raise ValueError(f"{directory}: LeRobot codebase_version {version} is not supported (expected "
                         f"{CODEBASE_VERSION})")
    return info


def _read_tasks(directory: Path) -> list[str]:
    """Task strings by task_index, from the pandas index of meta/tasks.parquet (read without pandas)."""
    import pyarrow.parquet as pq

    table = pq.read_table(directory / TASKS_PATH)
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    key = next((c for c in index + ["task", "__index_level_0__"] if c in table.column_names), None)
    if key is None:
        raise ValueError(f"{directory / TASKS_PATH}: no task column (columns: {', '.join(table.column_names)})")
    order = np.asarray(table.column("task_index").to_numpy(), np.int64)
    tasks = [""] * (int(order.max()) + 1 if len(order) else 0)
    for i, task in zip(order, table.column(key).to_pylist()):
        tasks[i] = task
    return tasks


def _column(table: Any, key: str, dtype: Any) -> np.ndarray:
    import pyarrow as pa

    column = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        if pa.types.is_list(column.type):
            lengths = np.asarray(column.value_lengths().to_numpy(zero_copy_only=False))
            if len(set(lengths.tolist())) > 1:
                raise ValueError(f"feature {key!r} has rows of different lengths")
        width = len(column[0]) if len(column) else 0
        return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype).reshape(len(column), width)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype)


def _decode_images(table: Any, key: str) -> np.ndarray:
    """(N, H, W, 3) uint8 from an image column ({bytes, path} structs of encoded images, as lerobot embeds
    them)."""
    from PIL import Image

    decoded = []
    for cell in table.column(key).to_pylist():
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None:
            raise ValueError(f"feature {key!r}: an image without embedded bytes (a path-only image)")
        decoded.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    if len({image.shape for image in decoded}) > 1:
        raise ValueError(f"feature {key!r}: images of different sizes")
    return np.stack(decoded)


def read_lerobot(directory: str | os.PathLike, *, image_key: str | None = None) -> Any:
    """A LeRobotDataset v3.0 directory -> DemoDataset. The package's own datasets come back exactly; a foreign
    one maps its image feature (``image_key``, else the first feature of dtype image), ``action``, the
    optional ``observation.state`` and its task strings (the instructions). One-line errors name what is
    missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    directory = Path(directory)
    info = read_info(directory)
    features = info.get("features", {})
    image_key = _mapped_keys(directory, features, image_key)
    files = sorted((directory / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{directory}: no data files (data/chunk-XXX/file-XXX.parquet)")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    table = table.sort_by("index") if "index" in table.column_names else table
    n = table.num_rows
    if n == 0:
        raise ValueError(f"empty dataset at {directory}")
    task_strings = _read_tasks(directory)
    own = info.get("razor_robot") or {}
    instructions = [task_strings[i] for i in _column(table, "task_index", np.int64)]
    task_names = own.get("task_of_instruction", {})
    has = set(table.column_names)
    return DemoDataset(
        images=_decode_images(table, image_key),
        states=_column(table, "observation.state", np.float32) if "observation.state" in has
        else np.zeros((n, 0), np.float32),
        actions=_column(table, "action.label" if "action.label" in has else "action", np.float32),
        instructions=instructions,
        tasks=[task_names.get(i, i) for i in instructions],
        episode_ids=_column(table, "episode_index", np.int64),
        grid_index=_column(table, "episode.grid_index", np.int64) if "episode.grid_index" in has
        else np.full(n, -1, np.int64),
        meta=dict(own.get("meta", {})),
        tokens=_column(table, "action.tokens", np.int64) if "action.tokens" in has else None,
        env_actions=_column(table, "action", np.float32),
        seeds=_column(table, "episode.seed", np.int64) if "episode.seed" in has else None,
        step_success=_column(table, "next.success", bool) if "next.success" in has else None,
    )


def _mapped_keys(directory: Path, features: dict[str, Any], image_key: str | None) -> str:
    """The image feature a dataset maps to the policy's camera (``image_key``, else its first of dtype image);
    one-line errors where there is none or no ``action``."""
    images = [k for k, f in features.items() if f.get("dtype") == "image"]
    if image_key is not None and image_key not in images:
        raise ValueError(f"{directory}: no image feature {image_key!r} in {INFO_PATH} (image features: "
                         f"{', '.join(images) or 'none'})")
    if not images:
        videos = [k for k, f in features.items() if f.get("dtype") == "video"]
        hint = f"; its cameras are videos ({', '.join(videos)}), only Parquet images are read" if videos else ""
        raise ValueError(f"{directory}: no image feature (dtype image) in {INFO_PATH}{hint}")
    if "action" not in features:
        raise ValueError(f"{directory}: no 'action' feature in {INFO_PATH} (features: {', '.join(features)})")
    return image_key or images[0]


def check_training_data(directory: str | os.PathLike, *, action_dim: int, image_key: str | None = None) -> str:
    """Check a LeRobot v3.0 dataset for SFT before any work starts (info.json only): an image feature, an
    ``action`` of the policy's dimension. Returns the image key it will use; one-line errors otherwise."""
    directory = Path(directory)
    features = read_info(directory).get("features", {})
    key = _mapped_keys(directory, features, image_key)
    shape = list(features["action"].get("shape", []))
    if shape != [action_dim]:
        raise ValueError(f"{directory}: 'action' has shape {shape}, the policy acts in {action_dim} dimensions")
    return key

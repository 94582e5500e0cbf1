"""The one atomic writer, and strict JSON.

Every file a sweep writes (records, caches, datasets, checkpoints, plots, videos) goes through
:func:`atomic_path`: the writer fills a temporary path beside the target, which replaces the target only once
it is complete, so a sweep killed at any moment leaves each file either as it was or whole, and a re-run
resumes.

Strict JSON (:func:`dumps_strict` / :func:`loads_strict`): every JSON file is standard JSON that jq, pandas
and browsers read. A NaN or infinite number is written as ``null`` and named in the object's ``null_reasons``
(JSON pointer -> "NaN" / "Infinity" / "-Infinity"), and restored as that number on reading.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np



@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write a file or a directory into; on leaving the block it
    replaces ``path`` (a directory replaced whole), and on an error it is removed and ``path`` is untouched.

    ``suffix`` ends the temporary name (default: ``path``'s own suffix), for writers that choose a format by
    the file name (numpy's ``.npz``, imageio's ``.mp4``). A file is flushed to disk before the rename, so a
    crash right after it cannot leave an empty file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix if suffix is None else suffix}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():  # os.replace cannot rename a directory over a non-empty one
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


NULL_REASONS = "null_reasons"
"""Key of the map JSON pointer -> why the value there is null (a number that was NaN or infinite)."""
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _pointer_part(key: Any) -> str:
    # RFC 6901 escaping: record keys hold "/" ("kl/forward").
    return str(key).replace("~", "~0").replace("/", "~1")


def _finite_copy(value: Any, pointer: str, reasons: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by None; ``reasons[pointer]`` says what it was."""
    if isinstance(value, dict):
        return {k: _finite_copy(v, f"{pointer}/{_pointer_part(k)}", reasons) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_copy(v, f"{pointer}/{i}", reasons) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _finite_copy(value.tolist(), pointer, reasons)
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        reasons[pointer] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return None
    if isinstance(value, np.generic):  # numpy scalars: json.dumps refuses them
        return value.item()
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` as strict JSON: non-finite numbers become ``null``, named in
    ``null_reasons`` (top-level objects; elsewhere a non-finite number is an error rather than a silent
    null)."""
    reasons: dict[str, str] = {}
    clean = _finite_copy(value, "", reasons)
    if reasons:
        if not isinstance(clean, dict):
            raise ValueError(f"non-finite numbers at {sorted(reasons)} outside a JSON object: no place for "
                             f"their {NULL_REASONS}")
        clean[NULL_REASONS] = {**clean.get(NULL_REASONS, {}), **reasons}
    return json.dumps(clean, allow_nan=False, **kwargs)


def _restore(record: Any) -> Any:
    """Put back the non-finite numbers :func:`dumps_strict` wrote as null (the in-memory record as
    measured)."""
    if not isinstance(record, dict) or not isinstance(record.get(NULL_REASONS), dict):
        return record
    for pointer, reason in record.pop(NULL_REASONS).items():
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        target = record
        for part in parts[:-1]:
            target = target[int(part) if isinstance(target, list) else part]
        target[int(parts[-1]) if isinstance(target, list) else parts[-1]] = _NON_FINITE[reason]
    return record


def loads_strict(text: str) -> Any:
    """Parse what :func:`dumps_strict` wrote (and older files with bare NaN), non-finite numbers restored."""
    return _restore(json.loads(text))

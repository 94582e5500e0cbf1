"""Backend-independent task logic (envs/core.py): specs, position sets, validation. No simulator needed."""

from __future__ import annotations

import numpy as np
import pytest

from razor_robot.envs import (
    BACKENDS,
    NEW_TASK,
    PRIOR_TASKS,
    TASKS,
    MissingDependencyError,
    TaskSpec,
    eval_positions,
    grid_positions,
    position_ranges,
    task_spec,
)
from razor_robot.envs.core import check_image_size, check_object_xy, check_success_mode

pytestmark = pytest.mark.core


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_task_names_and_split():
    assert TASKS == ("pick-can", "open-drawer", "close-drawer")
    assert NEW_TASK == "pick-can" and PRIOR_TASKS == ("open-drawer", "close-drawer")
    assert BACKENDS == ("metaworld", "simpler")


def test_task_specs_simpler_match_the_paper():
    assert task_spec("pick-can", "simpler") == TaskSpec(
        "pick-can", "simpler", "pick coke can", 80, 7, (-0.35, -0.12), (-0.02, 0.42)
    )
    assert task_spec("open-drawer", "simpler").horizon == 113
    assert task_spec("close-drawer", "simpler").instruction == "close drawer"


def test_task_specs_metaworld():
    spec = task_spec("open-drawer")
    assert (spec.backend, spec.instruction) == ("metaworld", "open drawer")
    assert (spec.horizon, spec.action_dim) == (30, 4)
    assert (spec.x_range, spec.y_range) == ((-0.15, 0.15), (0.55, 0.75))


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: task_spec("pick-cup"), "unknown task 'pick-cup'"),
        (lambda: task_spec("pick-can", "isaac"), "unknown backend 'isaac'"),
        (lambda: position_ranges("simpler", "wide"), "unknown position range 'wide'"),
        (lambda: grid_positions(1), "n must be an int >= 2"),
        (lambda: grid_positions(3, x_range=(0.2, 0.1)), "x_range must satisfy low < high"),
        (lambda: eval_positions(0), "n must be an int >= 1"),
        (lambda: eval_positions(5, y_range="ab"), "y_range must be a (low, high) pair"),
        (lambda: check_image_size(8), "image_size must be in [16, 1024]"),
        (lambda: check_image_size(64.0), "image_size must be an int"),
        (lambda: check_success_mode("best"), "unknown success_mode 'best'"),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, fragment):
    with pytest.raises(ValueError) as excinfo:
        call()
    assert fragment in _one_line(excinfo)


def test_grid_exact_small_case():
    grid = grid_positions(3, x_range=(0.0, 1.0), y_range=(10.0, 12.0))
    expected = [[0, 10], [0, 11], [0, 12], [0.5, 10], [0.5, 11], [0.5, 12], [1, 10], [1, 11], [1, 12]]
    np.testing.assert_array_equal(grid, np.array(expected, dtype=np.float64))


@pytest.mark.parametrize(
    "backend, ranges", [("metaworld", "default"), ("simpler", "default"), ("simpler", "paper-printed")]
)
def test_grid_has_n_squared_points_and_corners_on_range_ends(backend, ranges):
    (x0, x1), (y0, y1) = position_ranges(backend, ranges)
    grid = grid_positions(10, backend=backend, ranges=ranges)
    assert grid.shape == (100, 2) and grid.dtype == np.float64
    corners = {tuple(p) for p in grid[[0, 9, 90, 99]]}
    assert corners == {(x0, y0), (x0, y1), (x1, y0), (x1, y1)}
    assert len({tuple(p) for p in grid}) == 100


def test_paper_printed_range_reaches_positive_x():
    assert position_ranges("simpler", "paper-printed") == ((-0.35, 0.12), (-0.02, 0.42))
    assert grid_positions(2, backend="simpler", ranges="paper-printed")[-1].tolist() == [0.12, 0.42]


def test_eval_positions_reproducible_inside_range_and_seed_dependent():
    a, b = eval_positions(100, seed=0), eval_positions(100, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (100, 2)
    (x0, x1), (y0, y1) = position_ranges("metaworld")
    assert np.all((a[:, 0] >= x0) & (a[:, 0] <= x1) & (a[:, 1] >= y0) & (a[:, 1] <= y1))
    assert not np.array_equal(a, eval_positions(100, seed=1))


def test_eval_positions_are_the_affine_image_of_pcg64_uniforms():
    unit = np.random.default_rng(7).random((4, 2))
    expected = np.array([-0.35, -0.02]) + unit * np.array([0.23, 0.44])
    np.testing.assert_allclose(eval_positions(4, seed=7, backend="simpler"), expected, rtol=0, atol=1e-12)


def test_eval_positions_explicit_ranges_override_backend():
    pos = eval_positions(50, seed=3, x_range=(2.0, 3.0), y_range=(-1.0, -0.5))
    assert pos[:, 0].min() >= 2.0 and pos[:, 0].max() <= 3.0
    assert pos[:, 1].min() >= -1.0 and pos[:, 1].max() <= -0.5


def test_check_object_xy():
    spec = task_spec("pick-can")
    assert check_object_xy(None, spec) is None
    np.testing.assert_array_equal(check_object_xy((0.15, 0.55), spec), [0.15, 0.55])  # corner accepted
    with pytest.raises(ValueError) as excinfo:
        check_object_xy((0.2, 0.6), spec)
    assert "outside the metaworld range" in _one_line(excinfo)
    with pytest.raises(ValueError, match="finite"):
        check_object_xy((0.0, float("nan")), spec)
    with pytest.raises(ValueError, match="only supported for pick-can"):
        check_object_xy((0.0, 0.6), task_spec("open-drawer"))


def test_missing_dependency_error_is_an_import_error_with_hint():
    err = MissingDependencyError("simpler_env", "install it from its repository")
    assert isinstance(err, ImportError)
    assert str(err) == "simpler_env is not installed; install it from its repository"


def test_make_env_rejects_bad_task_before_importing_a_backend():
    from razor_robot.envs import make_env

    with pytest.raises(ValueError, match="unknown task"):
        make_env("stack-blocks")
    with pytest.raises(ValueError, match="unknown backend"):
        make_env("pick-can", backend="isaac")

import imageio.v2 as imageio
import numpy as np
import pytest

from fake_envs import make_reach_env
from razor_robot.rollout.episodes import EpisodeRequest
from razor_robot.rollout.pool import rollout
from razor_robot.report.video import FAILURE_COLOUR, SUCCESS_COLOUR, mosaic, render_video_frames, write_rollout_video

pytestmark = pytest.mark.core


def right(images, states, instructions, slots):
    return np.tile(np.array([1.0, 0.0], np.float32), (len(images), 1))


def test_mosaic_places_tiles_row_major():
    tiles = [np.full((2, 2, 3), v, np.uint8) for v in (1, 2, 3)]
    canvas = mosaic(tiles, columns=2)
    assert canvas.shape == (4, 4, 3)
    assert canvas[0, 0, 0] == 1 and canvas[0, 2, 0] == 2 and canvas[2, 0, 0] == 3 and canvas[2, 2, 0] == 0


def test_video_has_one_frame_per_step_and_success_borders(tmp_path):
    requests = [EpisodeRequest("pick-can", seed=s, object_xy=(x, 0.0)) for s, x in enumerate([0.5, -0.5, 0.5, 0.5])]
    trajectories = rollout(requests, right, env_factory=make_reach_env, progress=False)
    frames = render_video_frames(trajectories, tile_size=32, hold_last=2)
    assert len(frames) == 5 + 2 and frames[0].shape == (64, 64, 3)
    last = frames[-1]
    assert tuple(last[31, 0]) == SUCCESS_COLOUR  # left border of the successful first tile
    assert tuple(last[31, 32]) == FAILURE_COLOUR  # second tile failed
    path = write_rollout_video(trajectories, tmp_path / "out.mp4", tile_size=32)
    reader = imageio.get_reader(path)
    assert reader.count_frames() == 5 + 5 and reader.get_data(0).shape == (64, 64, 3)


def test_video_needs_images_and_valid_tile(tmp_path):
    trajectories = rollout([EpisodeRequest("pick-can", 0, (0.5, 0.0))], right, env_factory=make_reach_env,
                           progress=False, keep_images=False)
    with pytest.raises(ValueError, match="keep_images"):
        render_video_frames(trajectories)
    with pytest.raises(ValueError, match="multiple of 16"):
        write_rollout_video(trajectories, tmp_path / "x.mp4", tile_size=30)


def test_comparison_frames_put_checkpoints_side_by_side_with_captions_and_outcome_borders():
    from razor_robot.report.video import render_comparison_frames

    requests = [EpisodeRequest("pick-can", seed=s, object_xy=(x, 0.0)) for s, x in enumerate([0.5, -0.5])]
    wins = rollout(requests, right, env_factory=make_reach_env, progress=False)
    left = lambda images, states, instructions, slots: -right(images, states, instructions, slots)  # noqa: E731
    losses = rollout(requests, left, env_factory=make_reach_env, progress=False)
    frames = render_comparison_frames([(["A", "rate a"], wins), (["B", "rate b"], losses)], tile_size=32,
                                      hold_last=1)
    assert len(frames) == 5 + 1 and frames[0].shape == (32 + 2 * 32, 2 * 32, 3)  # band 28 px -> 32
    assert frames[0][:26].any() and not frames[0][27:32].any()  # two caption lines (2 + 2 x 12 px), black below
    last = frames[-1]
    assert [w.success for w in wins] == [True, False] and [x.success for x in losses] == [False, True]
    assert tuple(last[32 + 16, 0]) == SUCCESS_COLOUR and tuple(last[64 + 16, 0]) == FAILURE_COLOUR
    assert tuple(last[32 + 16, 32]) == FAILURE_COLOUR and tuple(last[64 + 16, 32]) == SUCCESS_COLOUR
    with pytest.raises(ValueError, match="same episodes"):
        render_comparison_frames([(["A"], wins), (["B"], losses[:1])])

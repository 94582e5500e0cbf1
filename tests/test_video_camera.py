"""Videos from a camera of their own: the episodes do not change (same seeds, same actions, same observations),
side-by-side frames of checkpoints on the same episodes, the matched SFT/RL pair, `razor-robot video
--checkpoint A --checkpoint B`."""

import functools
import re

import imageio.v2 as imageio
import numpy as np
import pytest

pytest.importorskip("metaworld")

from razor_robot.cli import main  # noqa: E402
from razor_robot.policies import make_demonstrator  # noqa: E402
from razor_robot.rollout.demonstrator import DemonstratorPolicy  # noqa: E402
from razor_robot.rollout.episodes import EpisodeRequest
from razor_robot.rollout.pool import rollout
from razor_robot.experiment.stages.report import matched_pair  # noqa: E402
from razor_robot.report.stats import wilson_interval  # noqa: E402


def test_the_video_camera_leaves_the_episodes_as_they_were():
    requests = [EpisodeRequest("pick-can", 3, (0.05, 0.62)), EpisodeRequest("pick-can", 4, (-0.1, 0.7)),
                EpisodeRequest("open-drawer", 5, None)]

    def run(env_options):
        policy = DemonstratorPolicy(functools.partial(make_demonstrator, "pick-can", "metaworld"))
        by_task = [r for r in requests if r.task == "pick-can"]
        drawer = DemonstratorPolicy(functools.partial(make_demonstrator, "open-drawer", "metaworld"))
        return (rollout(by_task, policy, env_options=env_options, num_workers=1, progress=False)
                + rollout(requests[2:], drawer, env_options=env_options, num_workers=1, progress=False))

    plain, filmed = run({"image_size": 64}), run({"image_size": 64, "viewer_size": 96})
    for a, b in zip(plain, filmed):
        np.testing.assert_array_equal(a.images, b.images)  # the policy's input, pixel for pixel
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.step_success, b.step_success)
        assert (a.seed, a.success) == (b.seed, b.success) and "viewer" not in a.extras
        assert b.extras["viewer"].shape == (len(b.actions), 96, 96, 3) and b.extras["viewer"].dtype == np.uint8
    assert plain[0].success  # a real episode: the expert lifts the can


def _record(method, new, step=1):
    return {"method": method, "run_id": f"{method}-{step}", "step": step, "new_task": new, "prior_task": 90.0}


def test_matched_pair_is_the_closest_new_task_success_then_the_higher():
    records = [_record("base", 10.0), _record("sft", 12.5, 1), _record("sft", 31.0, 2), _record("rl", 30.0, 1),
               _record("rl", 11.5, 2), _record("sft", 29.0, 3)]
    sft, rl = matched_pair(records)
    assert (sft["run_id"], rl["run_id"]) == ("sft-2", "rl-1")  # |31 - 30| = |29 - 30| = |12.5 - 11.5|: the higher
    assert matched_pair([_record("sft", 1.0)]) is None


def test_video_command_puts_checkpoints_side_by_side(tmp_path, capsys):
    import torch

    from razor_robot.experiment.plan import EMBEDDED_UNNORM_KEY
    from razor_robot.policies import load_policy

    stats = {"action": {"q01": [-1.0] * 4, "q99": [1.0] * 4, "mask": [True] * 4}}
    for seed in (0, 1):
        torch.manual_seed(seed)
        policy = load_policy("tiny", action_dim=4)
        policy.set_norm_stats(EMBEDDED_UNNORM_KEY, stats)
        policy.save_pretrained(tmp_path / f"ckpt-{seed}")
    out = tmp_path / "side.mp4"
    code = main(["video", "--task", "pick-can", "--checkpoint", str(tmp_path / "ckpt-0"), "--checkpoint",
                 str(tmp_path / "ckpt-1"), "--episodes", "2", "--camera-size", "64", "--tile", "64",
                 "--workers", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    rates = re.findall(r"ckpt-\d: pick-can ([\d.]+)% \((\d)/2, 95% CI ([\d.]+)-([\d.]+)\)", capsys.readouterr().out)
    assert len(rates) == 2
    for rate, k, lo, hi in rates:  # each caption's rate, count and Wilson interval over the video's episodes
        low, high = wilson_interval(int(k), 2)
        assert (float(rate), float(lo), float(hi)) == (50.0 * int(k), round(100 * low, 1), round(100 * high, 1))
    reader = imageio.get_reader(out)
    # A caption band of 2 lines (28 px, rounded up to 32: a multiple of 16) over 2 episodes of 64 px per column;
    # one frame per step of the 30-step horizon and the last held 5 more.
    assert reader.get_data(0).shape == (32 + 2 * 64, 2 * 64, 3) and reader.count_frames() == 30 + 5
    assert main(["video", "--task", "pick-can", "--checkpoint", str(tmp_path / "nowhere"), "--out",
                 str(out)]) == 2

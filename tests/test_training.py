"""SFT and the shared training pieces: exact losses, targets, bins, warmup, checkpoints, NaN guard, determinism."""

import copy
import math

import numpy as np
import pytest
import torch

from razor_robot.training.dataset import DemoDataset
from razor_robot.policies import ActionTokenizer, load_policy
from razor_robot.training.sft import SFTConfig, sft_loss, train_sft
from razor_robot.training.optim import (
    NonFiniteLossError, OptimConfig, action_bins, make_optimizer, shift_augment, soft_bin_targets,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_policy("tiny", action_dim=4).eval()


# ------------------------------------------------------------------------------------------------- losses


def test_sft_loss_is_cross_entropy_of_the_action_logits(tiny):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    instructions = ["pick coke can", "open drawer", "close drawer"]
    targets = torch.tensor([[0, 255, 128, 7], [1, 2, 3, 4], [200, 100, 50, 25]])
    with torch.no_grad():
        loss = sft_loss(tiny, images, instructions, targets)
        logits = tiny.action_logits(images, instructions, targets + tiny.action_token_offset)  # (3, 4, 256)
        logp = torch.log_softmax(logits, -1)
        by_hand = -sum(logp[b, d, targets[b, d]] for b in range(3) for d in range(4)) / 12
        # A near-zero label sigma is one-hot: the soft loss falls back to the same cross-entropy.
        soft = sft_loss(tiny, images, instructions, targets, label_sigma_bins=0.05)
        wide = sft_loss(tiny, images, instructions, targets, label_sigma_bins=3.0)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert soft.item() == pytest.approx(loss.item(), rel=1e-6)
    assert wide.item() != pytest.approx(loss.item(), rel=1e-3)


def test_soft_targets_sum_to_one_and_peak_at_the_target():
    bins = torch.tensor([[0, 100, 255]])
    soft = soft_bin_targets(bins, 256, sigma=1.0)  # (1, 3, 256)
    assert soft.shape == (1, 3, 256)
    torch.testing.assert_close(soft.sum(-1), torch.ones(1, 3))
    assert soft.argmax(-1).tolist() == [[0, 100, 255]]
    # Gaussian shape: neighbours at ±1 bin weigh exp(-1/2) of the peak, ±2 bins exp(-2).
    row = soft[0, 1]
    assert row[99].item() == pytest.approx(row[101].item())
    assert (row[101] / row[100]).item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert (row[102] / row[100]).item() == pytest.approx(math.exp(-2.0), rel=1e-5)
    # Interior row normalisation constant: sum_k exp(-k²/2) = 2.5066 (√(2π)), so the peak is 1/2.5066.
    assert row[100].item() == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-5)


# ----------------------------------------------------------------------------------------- augmentation


def test_shift_augment_without_shift_is_the_identity():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    out = shift_augment(images, 0, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and torch.equal(out, images)


def test_shift_augment_crops_an_edge_padded_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    out = shift_augment(torch.from_numpy(images), 2, torch.Generator().manual_seed(0)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    shifts = []
    for image, shifted in zip(images, out):
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(padded[dy:dy + 8, dx:dx + 8], shifted)]
        assert matches, "output is not a shifted crop of the edge-padded input"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # different images get different shifts


# -------------------------------------------------------------------------------------------------- bins


def test_action_bins_follow_q01_q99_and_the_masked_gripper(tiny):
    policy = copy.deepcopy(tiny)
    policy.set_norm_stats("demo", {"action": {"q01": [-2.0, 0.0, -1.0, -1.0], "q99": [2.0, 10.0, 1.0, 1.0],
                                              "mask": [True, True, True, False]}})
    actions = np.array([
        [0.0, 7.5, 1.5, -1.0],    # -> normalised [0, 0.5, 1 (clipped), -1 (gripper passes through)]
        [-5.0, 0.0, 0.0, 1.0],    # -> [-1 (clipped), -1, 0, 1]
        [2.0 + 1.0, 5.0, -1.0, 0.3],  # -> [1, 0, -1, 0.3 (gripper unchanged)]
    ])
    bins = action_bins(policy, actions, "demo")
    # OpenVLA binning: bin = 256 - digitize(x, linspace(-1, 1, 256)); x=0 -> 128, 0.5 -> 64, 1 -> 0, -1 -> 255,
    # 0.3 -> 256 - 166 = 90.
    assert bins.dtype == np.int64
    assert bins.tolist() == [[128, 64, 0, 255], [255, 255, 128, 0], [0, 128, 255, 90]]
    normalized = np.array([[0.0, 0.5, 1.0, -1.0], [-1.0, -1.0, 0.0, 1.0], [1.0, 0.0, -1.0, 0.3]])
    by_tokenizer = ActionTokenizer(policy.config.vocab_size).encode(normalized) - policy.action_token_offset
    np.testing.assert_array_equal(bins, by_tokenizer)
    with pytest.raises(ValueError, match="no action statistics 'other'"):
        action_bins(policy, actions, "other")


# ------------------------------------------------------------------------------------------------ optimiser


def test_warmup_is_linear_then_constant():
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = make_optimizer(model, OptimConfig(learning_rate=0.1, warmup_steps=4))
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # Step k (0-based) uses lr * (k + 1) / warmup until it reaches lr.
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], abs=1e-12)
    optimizer, _ = make_optimizer(model, OptimConfig(learning_rate=0.1, warmup_steps=0))
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_cosine_schedule_decays_to_the_floor_at_the_last_step():
    model = torch.nn.Linear(2, 1)
    config = OptimConfig(learning_rate=0.1, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    optimizer, scheduler = make_optimizer(model, config, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # Warmup 0.05, 0.1; then 0.01 + 0.09 * (1 + cos(pi * k / 4)) / 2 for k = 1..4 of the 4 decay steps.
    decay = [0.01 + 0.09 * (1 + math.cos(math.pi * k / 4)) / 2 for k in (1, 2, 3, 4)]
    assert lrs == pytest.approx([0.05, 0.1, *decay], abs=1e-12)
    assert lrs[-1] == pytest.approx(0.01, abs=1e-12)
    with pytest.raises(ValueError, match="needs the run's total number of optimiser steps"):
        make_optimizer(model, config)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="min_lr_ratio must be in"):
        OptimConfig(schedule="cosine", min_lr_ratio=1.5)


def test_optimizer_needs_trainable_parameters_and_valid_config():
    model = torch.nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(model, OptimConfig())
    with pytest.raises(ValueError, match="learning_rate must be > 0, got -1"):
        OptimConfig(learning_rate=-1)
    with pytest.raises(ValueError, match="batch_size"):
        OptimConfig(batch_size=0)
    assert OptimConfig(batch_size=16, micro_batch_size=64).micro_batch == 16


# ------------------------------------------------------------------------------------------------- train_sft


def _dataset(n=64) -> DemoDataset:
    """Dark images -> action +0.5 on every dim, bright images -> -0.5: learnable from the pixels alone."""
    rng = np.random.default_rng(0)
    bright = np.arange(n) % 2 == 1
    images = np.where(bright[:, None, None, None], 200, 20).astype(np.uint8) + rng.integers(
        0, 10, (n, 64, 64, 3), dtype=np.uint8)
    actions = np.where(bright[:, None], -0.5, 0.5).repeat(4, axis=1).astype(np.float32)
    return DemoDataset(images=images, states=np.zeros((n, 4), np.float32), actions=actions,
                       instructions=["pick coke can"] * n, tasks=["pick-can"] * n,
                       episode_ids=np.arange(n) // 8, grid_index=np.zeros(n, np.int64))


def _sft_policy():
    torch.manual_seed(0)
    policy = load_policy("tiny", action_dim=4)
    policy.set_norm_stats("demo", {"action": {"q01": [-1.0] * 4, "q99": [1.0] * 4, "mask": [True] * 4}})
    return policy


def _full_loss(policy, dataset) -> float:
    targets = torch.from_numpy(action_bins(policy, dataset.actions, "demo"))
    with torch.no_grad():
        return sft_loss(policy, torch.from_numpy(dataset.images), dataset.instructions, targets).item()


@pytest.fixture(scope="module")
def sft_start():
    return _sft_policy()


def test_train_sft_lowers_the_loss_and_checkpoints_evenly(sft_start):
    policy, dataset = copy.deepcopy(sft_start), _dataset()
    before = _full_loss(policy, dataset)
    calls, logs = [], []
    config = SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=16, warmup_steps=2), epochs=3, checkpoints=3)
    summary = train_sft(policy, dataset, config, unnorm_key="demo", progress=False,
                        on_checkpoint=lambda step, frac, model: calls.append((step, frac, model.training)),
                        log=lambda metrics, step: logs.append((step, metrics)))
    after = _full_loss(policy, dataset)
    # 64 samples / batch 16 = 4 steps per epoch, 3 epochs = 12 steps; checkpoints at 4, 8, 12 (in eval mode).
    assert calls == [(4, 1 / 3, False), (8, 2 / 3, False), (12, 1.0, False)]
    assert summary["train/steps"] == 12 and [s for s, _ in logs] == list(range(1, 13))
    assert [m["train/lr"] for _, m in logs[:3]] == pytest.approx([1e-3, 1e-3, 1e-3])  # after scheduler.step
    assert before == pytest.approx(math.log(256), rel=0.05)  # untrained: ~uniform over 256 bins
    assert after < before - 1.0, (before, after)
    assert not policy.training


def test_max_steps_caps_training(sft_start):
    calls = []
    config = SFTConfig(OptimConfig(batch_size=16), epochs=10, max_steps=3, checkpoints=2)
    summary = train_sft(copy.deepcopy(sft_start), _dataset(), config, unnorm_key="demo", progress=False,
                        on_checkpoint=lambda step, frac, model: calls.append(step))
    assert summary["train/steps"] == 3 and calls == [2, 3]  # round(1.5) = 2 (banker's), round(3) = 3


def test_micro_batches_give_the_same_first_step(sft_start):
    def first_step(micro):
        logs = []
        config = SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=16, micro_batch_size=micro), max_steps=1)
        train_sft(copy.deepcopy(sft_start), _dataset(), config, unnorm_key="demo", progress=False,
                  log=lambda metrics, step: logs.append(metrics))
        return logs[0]

    whole, split = first_step(None), first_step(5)  # 16 = 5 + 5 + 3 + 3 (np.array_split)
    assert split["train/loss"] == pytest.approx(whole["train/loss"], rel=1e-5)
    assert split["train/grad_norm"] == pytest.approx(whole["train/grad_norm"], rel=1e-4)


def test_nan_loss_raises(sft_start):
    policy = copy.deepcopy(sft_start)
    with torch.no_grad():
        policy.language_model.lm_head.weight.fill_(float("nan"))
    config = SFTConfig(OptimConfig(batch_size=16), max_steps=2)
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at step 1"):
        train_sft(policy, _dataset(), config, unnorm_key="demo", progress=False)


def test_empty_dataset_is_rejected(sft_start):
    empty = _dataset().subset(np.zeros(64, bool))
    with pytest.raises(ValueError, match="empty dataset"):
        train_sft(sft_start, empty, SFTConfig(OptimConfig()), unnorm_key="demo", progress=False)


def test_same_seed_gives_identical_weights(sft_start):
    config = SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=16, micro_batch_size=8), max_steps=3,
                       label_sigma_bins=1.5, shift_augment_px=2, seed=3)
    a, b, c = (copy.deepcopy(sft_start) for _ in range(3))
    for policy, seed in ((a, 3), (b, 3), (c, 4)):
        config.seed = seed
        train_sft(policy, _dataset(), config, unnorm_key="demo", progress=False)
    pairs = list(zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()))
    for (name, wa), wb, _ in pairs:
        assert torch.equal(wa, wb), name
    assert any(not torch.equal(wa, wc) for (_, wa), _, wc in pairs)  # another seed: another data order


def test_sft_config_rejects_bad_values():
    with pytest.raises(ValueError, match="epochs must be > 0"):
        SFTConfig(OptimConfig(), epochs=0)
    with pytest.raises(ValueError, match="checkpoints"):
        SFTConfig(OptimConfig(), checkpoints=0)


def test_sft_on_a_dataset_read_back_from_lerobot_v3_gives_the_same_weights(sft_start, tmp_path):
    """The dataset format changed (LeRobot v3.0): SFT on what was written and read back trains bit for bit the
    same weights as SFT on the dataset in memory (same seed). scripts/check_sft_format.py compares against the
    previous format's writer too."""
    from razor_robot.training.data import load_dataset, save_dataset

    dataset = _dataset(48)
    loaded = load_dataset(save_dataset(dataset, tmp_path / "demos"))
    config = SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=16, warmup_steps=2), epochs=1, checkpoints=1,
                       shift_augment_px=2)
    trained = []
    for data in (dataset, loaded):
        policy = copy.deepcopy(sft_start)
        train_sft(policy, data, config, unnorm_key="demo", progress=False)
        trained.append(policy.state_dict())
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    start = sft_start.state_dict()
    assert any(not torch.equal(trained[0][k], start[k]) for k in start)  # training moved the weights

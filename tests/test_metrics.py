"""Exact-value tests of the action-token distances (razor_robot.measure.distances) on a toy autoregressive
policy."""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest
import torch

from razor_robot.measure.distances import CI_KEYS, METRIC_KEYS, action_token_distances, token_distances
from razor_robot.report.stats import bootstrap_ci

torch.set_num_threads(1)

K, D, VOCAB = 8, 3, 40  # small config: 8 bins, 3 action dims, token id = VOCAB - K + bin
OFFSET = VOCAB - K


class ToyPolicy(torch.nn.Module):
    """Autoregressive categorical policy with the razor-robot policy API and K bins per action dimension.

    logits[d] = bias[d] + mean_pixel(x) image_w[d] + len(instruction) text_w[d] + Σ_{j<d} prefix[d, j, a_j]
    (+ delta when its "adapter" is on), so every conditional depends on the observation and the prefix.
    """

    def __init__(self, seed: int, scale: float = 1.0, adapter_scale: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bias = torch.nn.Parameter(scale * torch.randn(D, K, generator=g, dtype=torch.float64))
        self.image_w = torch.nn.Parameter(scale * torch.randn(D, K, generator=g, dtype=torch.float64))
        self.text_w = torch.nn.Parameter(0.1 * scale * torch.randn(D, K, generator=g, dtype=torch.float64))
        self.prefix = torch.nn.Parameter(scale * torch.randn(D, D, K, K, generator=g, dtype=torch.float64))
        self.delta = torch.nn.Parameter(adapter_scale * torch.randn(D, K, generator=g, dtype=torch.float64))
        self.dropout = torch.nn.Dropout(0.5)  # must be off during evaluation for KL(π‖π) = 0
        self.adapter_on = True
        self.action_token_offset = OFFSET
        self.action_dim = D
        self.eval()

    @contextlib.contextmanager
    def disable_adapter(self):
        self.adapter_on = False
        try:
            yield
        finally:
            self.adapter_on = True

    def _logits_at(self, d: int, images, instructions, bins: torch.Tensor) -> torch.Tensor:
        pixels = torch.as_tensor(np.asarray(images), dtype=torch.float64).mean(dim=(1, 2, 3)) / 255.0  # (B,)
        lengths = torch.tensor([len(s) for s in instructions], dtype=torch.float64)  # (B,)
        out = self.bias[d] + pixels[:, None] * self.image_w[d] + lengths[:, None] * self.text_w[d]  # (B, K)
        for j in range(d):
            out = out + self.prefix[d, j][bins[:, j]]  # (B, K)
        if self.adapter_on:
            out = out + self.delta[d]
        return self.dropout(out)

    def action_logits(self, images, instructions, action_tokens) -> torch.Tensor:
        bins = torch.as_tensor(action_tokens) - OFFSET  # (B, D)
        return torch.stack([self._logits_at(d, images, instructions, bins) for d in range(D)], dim=1)

    def sample_actions(self, images, instructions, temperature=1.0, generator=None) -> torch.Tensor:
        bins = torch.zeros(len(instructions), D, dtype=torch.long)
        for d in range(D):
            probs = torch.softmax(self._logits_at(d, images, instructions, bins) / temperature, dim=-1)
            bins[:, d] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return bins + OFFSET


def _observations(n: int = 3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    instructions = ["pick coke can", "pick up the can", "grasp can"][:n]
    return images, instructions


def _all_sequences() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K), repeat=D)), dtype=torch.long) + OFFSET  # (K^D, D)


def _sequence_log_probs(policy: ToyPolicy, image, instruction, sequences) -> torch.Tensor:
    """log π(a|x) for every sequence a (K^D,), by teacher forcing."""
    n = len(sequences)
    with torch.no_grad():
        logits = policy.action_logits(np.repeat(image[None], n, 0), [instruction] * n, sequences)  # (n, D, K)
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, (sequences - OFFSET)[..., None])  # (n, D, 1)
    return log_probs[..., 0].sum(dim=-1)  # (n,)


def _exact_prefixes(base: ToyPolicy, images, instructions):
    """All K^D sequences for every observation, weighted by π0(a|x): the exact expectation path."""
    sequences = _all_sequences()
    weights = torch.stack(
        [_sequence_log_probs(base, img, ins, sequences).exp() for img, ins in zip(images, instructions)]
    )  # (B, K^D)
    tokens = sequences[None].expand(len(images), -1, -1)  # (B, K^D, D)
    return tokens, weights


def test_two_bin_hand_computed():
    # p0 = (1/2, 1/2), p = (1/4, 3/4)
    base = torch.log(torch.tensor([[0.5, 0.5]]))
    tuned = torch.log(torch.tensor([[0.25, 0.75]]))
    out = token_distances(base, tuned)
    assert out["forward"].shape == (1,)
    assert out["forward"].item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-7)
    assert out["reverse"].item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-7)
    assert out["tv"].item() == pytest.approx(0.25, abs=1e-7)
    assert out["l2"].item() == pytest.approx(math.sqrt(2 * 0.25**2), abs=1e-7)


def test_token_distances_identical_logits_exactly_zero():
    logits = torch.randn(5, D, 256, generator=torch.Generator().manual_seed(1)) * 10
    for name, value in token_distances(logits, logits.clone()).items():
        assert value.shape == (5, D)
        assert torch.equal(value, torch.zeros_like(value)), name


def test_token_distances_non_negative_on_random_logits():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(200, D, 256, generator=g) * 5
    tuned = base + 1e-6 * torch.randn(200, D, 256, generator=g)  # near-identical: rounding could go below 0
    for value in token_distances(base, tuned).values():
        assert (value >= 0).all()


def test_token_distances_finite_when_probabilities_underflow():
    base = torch.tensor([[0.0, -1e4, 0.0]])  # exp(-1e4) underflows to exactly 0 in probability space
    tuned = torch.tensor([[-1e4, 0.0, -1e4]])
    out = token_distances(base, tuned)
    for name, value in out.items():
        assert torch.isfinite(value).all(), name
    # p0 = (1/2, 0, 1/2), p ≈ (0, 1, 0) with log p = (-1e4, 0, -1e4): KL = Σ ½ (log ½ + 1e4)
    assert out["forward"].item() == pytest.approx(1e4 - math.log(2), rel=1e-12)
    assert out["reverse"].item() == pytest.approx(1e4 + math.log(2), rel=1e-12)
    assert out["tv"].item() == pytest.approx(1.0)


def test_token_distances_masked_bins_no_nan():
    # a bin masked to -inf in both: 0·(−inf − (−inf)) must not become NaN
    base = torch.tensor([[0.0, 0.0, -math.inf]])
    tuned = torch.tensor([[0.0, math.log(3.0), -math.inf]], dtype=torch.float64)
    out = token_distances(base, tuned)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert out["forward"].item() == pytest.approx(expected, abs=1e-12)
    assert not any(torch.isnan(v).any() for v in out.values())


def test_token_distances_shape_mismatch():
    with pytest.raises(ValueError, match="logit shapes differ"):
        token_distances(torch.zeros(2, 3, 8), torch.zeros(2, 3, 7))


def test_identical_policies_exactly_zero():
    images, instructions = _observations()
    policy = ToyPolicy(seed=0)
    policy.train()  # dropout on: the estimator must switch it off
    out = action_token_distances(
        policy, policy, images, instructions, n_prefix_samples=4, generator=torch.Generator().manual_seed(0)
    )
    assert set(out) == set(METRIC_KEYS) | set(CI_KEYS)
    assert all(out[key] == 0.0 for key in METRIC_KEYS), out
    assert all(out[key] == [0.0, 0.0] for key in CI_KEYS), out  # no spread over observations
    assert policy.training  # mode restored


def test_exact_expectation_matches_brute_force_sequence_kl():
    images, instructions = _observations()
    base, tuned = ToyPolicy(seed=0), ToyPolicy(seed=1, scale=0.7)
    sequences = _all_sequences()
    brute = []
    for img, ins in zip(images, instructions):
        log_p0 = _sequence_log_probs(base, img, ins, sequences)  # (K^D,)
        log_p = _sequence_log_probs(tuned, img, ins, sequences)
        assert log_p0.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
        brute.append(float((log_p0.exp() * (log_p0 - log_p)).sum()))
    tokens, weights = _exact_prefixes(base, images, instructions)
    out = action_token_distances(
        base, tuned, images, instructions, prefix_tokens=tokens, prefix_weights=weights, batch_size=300
    )
    assert out["kl/forward"] > 0.1  # a non-trivial pair of policies
    assert out["kl/forward"] == pytest.approx(float(np.mean(brute)), abs=1e-9)
    # the CI is the seeded bootstrap of the exact per-observation KLs
    assert out["kl/forward/ci95"] == pytest.approx(list(bootstrap_ci(brute, np.mean, 2000, 0)), abs=1e-9)
    lo, hi = out["kl/forward/ci95"]
    assert min(brute) - 1e-9 <= lo < out["kl/forward"] < hi <= max(brute) + 1e-9


def test_ci_per_observation_hand_computed_and_options():
    # one observation repeated three times: zero spread, so the CI collapses onto the estimate
    images, instructions = _observations(3)
    base, tuned = ToyPolicy(seed=0), ToyPolicy(seed=1, scale=0.7)
    tokens, weights = _exact_prefixes(base, images, instructions)
    same = np.repeat(images[:1], 3, 0), [instructions[0]] * 3
    one = action_token_distances(base, tuned, *same, prefix_tokens=tokens[:1].expand(3, -1, -1),
                                 prefix_weights=weights[:1].expand(3, -1), batch_size=300)
    for key in METRIC_KEYS:  # identical observations: every resample has the same mean
        assert one[f"{key}/ci95"] == pytest.approx([one[key], one[key]], rel=1e-12)
    # per-observation values: each observation alone, then the bootstrap of those three numbers
    full = action_token_distances(base, tuned, images, instructions, prefix_tokens=tokens,
                                  prefix_weights=weights, batch_size=100, ci_resamples=500, ci_seed=7)
    singles = [action_token_distances(base, tuned, images[i:i + 1], instructions[i:i + 1],
                                      prefix_tokens=tokens[i:i + 1], prefix_weights=weights[i:i + 1],
                                      ci_resamples=0) for i in range(3)]
    assert all(set(s) == set(METRIC_KEYS) for s in singles)  # ci_resamples=0: no CI keys
    for key in METRIC_KEYS:
        values = [s[key] for s in singles]
        assert full[f"{key}/ci95"] == pytest.approx(list(bootstrap_ci(values, np.mean, 500, 7)), rel=1e-9)
    with pytest.raises(ValueError, match="ci_resamples"):
        action_token_distances(base, tuned, images, instructions, ci_resamples=-1)


def test_monte_carlo_estimate_within_four_standard_errors():
    images, instructions = _observations(2)
    base, tuned = ToyPolicy(seed=0), ToyPolicy(seed=1, scale=0.7)
    sequences = _all_sequences()
    n_prefix = 500
    # exact mean and variance of the per-sample estimator Σ_d KL_d(a<d) under a ~ π0, per observation
    means, variances = [], []
    for img, ins in zip(images, instructions):
        p0 = _sequence_log_probs(base, img, ins, sequences).exp()
        many = np.repeat(img[None], len(sequences), 0)
        with torch.no_grad():
            per_seq = token_distances(
                base.action_logits(many, [ins] * len(sequences), sequences),
                tuned.action_logits(many, [ins] * len(sequences), sequences),
            )["forward"].sum(-1)  # (K^D,)
        mean = float((p0 * per_seq).sum())
        means.append(mean)
        variances.append(float((p0 * (per_seq - mean) ** 2).sum()))
    std_error = math.sqrt(sum(variances) / n_prefix) / len(images)
    out = action_token_distances(
        base, tuned, images, instructions, n_prefix_samples=n_prefix, batch_size=256,
        generator=torch.Generator().manual_seed(123),
    )
    assert abs(out["kl/forward"] - float(np.mean(means))) < 4 * std_error


def test_seeded_generator_reproducible_and_batch_size_invariant():
    images, instructions = _observations()
    base, tuned = ToyPolicy(seed=0), ToyPolicy(seed=1)
    kwargs = dict(n_prefix_samples=3, batch_size=4)
    first = action_token_distances(base, tuned, images, instructions,
                                   generator=torch.Generator().manual_seed(5), **kwargs)
    second = action_token_distances(base, tuned, images, instructions,
                                    generator=torch.Generator().manual_seed(5), **kwargs)
    assert first == second
    tokens, weights = _exact_prefixes(base, images, instructions)
    small = action_token_distances(base, tuned, images, instructions, prefix_tokens=tokens[:, :20],
                                   prefix_weights=weights[:, :20], batch_size=7)
    large = action_token_distances(base, tuned, images, instructions, prefix_tokens=tokens[:, :20],
                                   prefix_weights=weights[:, :20], batch_size=64)
    for key in METRIC_KEYS:
        assert small[key] == pytest.approx(large[key], rel=1e-12, abs=1e-15)


def test_base_context_gives_base_logits_from_same_weights():
    images, instructions = _observations()
    lora = ToyPolicy(seed=0, adapter_scale=0.5)  # adapter on = fine-tuned, off = base
    base_copy = ToyPolicy(seed=0, adapter_scale=0.5)
    base_copy.delta.data.zero_()
    tokens, weights = _exact_prefixes(base_copy, images, instructions)
    shared = action_token_distances(lora, lora, images, instructions, base_context=lora.disable_adapter,
                                    prefix_tokens=tokens, prefix_weights=weights, per_position=True)
    separate = action_token_distances(base_copy, lora, images, instructions, prefix_tokens=tokens,
                                      prefix_weights=weights, per_position=True)
    assert shared["kl/forward"] > 0.01
    assert lora.adapter_on
    for key, value in separate.items():
        assert shared[key] == pytest.approx(value, rel=1e-12)
    # per-position values add up to the totals
    for name in ("forward", "reverse", "tv", "l2"):
        parts = sum(shared[f"kl/{name}/d{d}"] for d in range(D))
        assert parts == pytest.approx(shared[f"kl/{name}"], rel=1e-12)


def test_sampled_prefixes_come_from_base_under_context():
    images, instructions = _observations()
    lora = ToyPolicy(seed=0, adapter_scale=0.5)
    seen = []
    original = lora.sample_actions

    def spy(*args, **kwargs):
        seen.append((lora.adapter_on, kwargs.get("temperature")))
        return original(*args, **kwargs)

    lora.sample_actions = spy
    action_token_distances(lora, lora, images, instructions, base_context=lora.disable_adapter,
                           n_prefix_samples=2, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert seen and all(entry == (False, 1.0) for entry in seen)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(instructions=["a", "b"]), "3 images but 2 instructions"),
        (dict(n_prefix_samples=0), "n_prefix_samples must be >= 1"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(prefix_tokens=torch.zeros(3, 2, D, dtype=torch.long) + OFFSET,
              prefix_weights=-torch.ones(3, 2)), "non-negative"),
        (dict(prefix_tokens=torch.zeros(2, 2, D, dtype=torch.long)), r"prefix_tokens must be \(B=3, M, D\)"),
        (dict(images=np.zeros((0, 4, 4, 3), np.uint8), instructions=[]), "at least one observation"),
        (dict(instructions="pick coke can"), "list of strings"),
    ],
)
def test_bad_input_raises_before_work(kwargs, message):
    images, instructions = _observations()
    args = dict(images=images, instructions=instructions)
    args.update(kwargs)
    images, instructions = args.pop("images"), args.pop("instructions")
    policy = ToyPolicy(seed=0)
    with pytest.raises(ValueError, match=message):
        action_token_distances(policy, policy, images, instructions, **args)

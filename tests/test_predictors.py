"""Table 1 predictors: exact values on hand-made model pairs, the Fisher by hand, CKA identities, bf16
sparsity, LoRA effective weights, and the VLA entry point on the tiny policy."""

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
from razor_robot.measure import predictors as P  # noqa: E402


def linear(weight, bias):
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


@pytest.fixture
def pair():
    """Base and tuned two-layer models whose updates are
    layer 0: ΔW = [[0, 2], [0, 0]] (rank 1, σ = 2), Δb = [0, -0.5];
    layer 1: ΔW = diag(3, 1) (rank 2, σ = 3, 1),  Δb = 0."""
    base = nn.Sequential(linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
                         linear([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]))
    tuned = nn.Sequential(linear([[1.0, 2.0], [0.0, 1.0]], [0.0, -0.5]),
                          linear([[4.0, 1.0], [1.0, 2.0]], [1.0, 1.0]))
    return P.EffectiveParameters(base), P.EffectiveParameters(tuned)


FISHER = {
    "0.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
    "0.bias": torch.tensor([5.0, 6.0]),
    "1.weight": torch.tensor([[0.5, 7.0], [7.0, 0.1]]),
    "1.bias": torch.tensor([9.0, 9.0]),
}


def test_weight_predictors_by_hand(pair):
    base, tuned = pair
    assert sorted(base) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert P.weight_change_l1(base, tuned) == 2 + 0.5 + 3 + 1
    fisher_l2 = 2 * 2**2 + 6 * 0.5**2 + 0.5 * 3**2 + 0.1 * 1**2  # F_i Δ_i² over the changed entries
    assert P.fisher_weighted_l2(base, tuned, FISHER) == pytest.approx(fisher_l2)
    assert P.spectral_norm_sum(base, tuned) == pytest.approx(2 + 3)
    assert P.update_sparsity(base, tuned) == 8 / 12  # 4 of the 12 entries changed
    assert P.update_sparsity(base, tuned, atol=1.0) == 10 / 12  # |Δ| = 0.5 and 1 count as unchanged
    assert P.update_rank(base, tuned) == (1 + 2) / 2
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # entropy of σ / Σσ = (3, 1) / 4
    assert P.update_effective_rank(base, tuned) == pytest.approx((1 + math.exp(h)) / 2)
    everything = P.weight_predictors(base, tuned, FISHER)
    assert everything == pytest.approx({
        "pred/weight_l1": 6.5, "pred/fisher_l2": 14.1, "pred/spectral_norm": 5.0,
        "pred/update_sparsity": 8 / 12,
        "pred/update_sparsity_bf16": 8 / 12, "pred/update_rank": 1.5,
        "pred/update_effective_rank": (1 + math.exp(h)) / 2,
    })
    assert "pred/fisher_l2" not in P.weight_predictors(base, tuned)


def test_weight_predictors_of_a_model_against_itself_are_zero(pair):
    base, _ = pair
    assert P.weight_predictors(base, base, FISHER) == {
        "pred/weight_l1": 0.0, "pred/fisher_l2": 0.0, "pred/spectral_norm": 0.0, "pred/update_sparsity": 1.0,
        "pred/update_sparsity_bf16": 1.0, "pred/update_rank": 0.0, "pred/update_effective_rank": 0.0,
    }


def test_mismatched_parameters_are_one_line_errors(pair):
    base, tuned = pair
    with pytest.raises(ValueError, match="names differ"):
        P.weight_change_l1(base, {"0.weight": tuned["0.weight"]})
    with pytest.raises(ValueError, match="shape"):
        P.weight_change_l1({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="no entry"):
        P.fisher_weighted_l2(base, tuned, {"0.weight": FISHER["0.weight"]})


def test_bf16_master_weights_make_small_updates_vanish():
    """Ten SGD steps of -1e-3 on weights at 1.0: in fp32 every entry moves; in bf16 master weights each step
    is under half a bf16 ulp (2^-8 below 1.0), rounds away, and the update looks 100 % sparse."""
    fp32, bf16 = torch.ones(1000), torch.ones(1000, dtype=torch.bfloat16)
    fp32_run, bf16_run = fp32.clone(), bf16.clone()
    for _ in range(10):
        fp32_run -= 1e-3
        bf16_run -= 1e-3
    assert P.update_sparsity({"w": fp32}, {"w": fp32_run}) == 0.0
    assert P.update_sparsity({"w": bf16}, {"w": bf16_run}) == 1.0
    # The accumulated fp32 update (0.99) survives a bf16 cast; a single 1e-3 step does not.
    assert P.update_sparsity({"w": fp32}, {"w": fp32_run}, dtype=torch.bfloat16) == 0.0
    assert P.update_sparsity({"w": fp32}, {"w": fp32 - 1e-3}, dtype=torch.bfloat16) == 1.0
    assert P.weight_predictors({"w": fp32}, {"w": fp32 - 1e-3})["pred/update_sparsity_bf16"] == 1.0


def test_fisher_of_a_linear_softmax_model_by_hand():
    """log p(a|x) = z_a - logsumexp(z), z = W x + b: ∂/∂W_kj = (1[k=a] - p_k) x_j, ∂/∂b_k = 1[k=a] - p_k.
    At W = 0, b = 0: p = (1/2, 1/2).  Sample 1: x = (1, 2), a = 0 -> ∂W = [[.5, 1], [-.5, -1]],
    ∂b = [.5, -.5].
    Sample 2: x = (2, 0), a = 1 -> ∂W = [[-1, 0], [1, 0]], ∂b = [-.5, .5].  F = mean of the squares."""
    model = linear([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    xs, actions = torch.tensor([[1.0, 2.0], [2.0, 0.0]]), [0, 1]

    def log_likelihood(n):
        return torch.log_softmax(model(xs[n]), dim=-1)[actions[n]]

    fisher = P.empirical_fisher(model, log_likelihood, 2)
    assert torch.equal(fisher["weight"], torch.tensor([[0.625, 0.5], [0.625, 0.5]]))
    assert torch.equal(fisher["bias"], torch.tensor([0.25, 0.25]))
    # (the square of the batch-mean gradient would be [[.0625, .25], [.0625, .25]] and [0, 0])


def test_fisher_covers_frozen_parameters_and_restores_flags():
    model = linear([[1.0, 0.0]], [0.0])
    model.weight.requires_grad_(False)
    fisher = P.empirical_fisher(model, lambda n: model(torch.tensor([3.0, 1.0]))[0], 1)
    assert torch.equal(fisher["weight"], torch.tensor([[9.0, 1.0]]))
    assert torch.equal(fisher["bias"], torch.ones(1))
    assert not model.weight.requires_grad and model.bias.requires_grad


def test_activation_changes_by_hand():
    h0, h = torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert P.activation_change_l1(h0, h) == (7 + 0) / 2
    assert P.activation_change_l2(h0, h) == (5 + 0) / 2


def test_linear_cka_identities_and_a_hand_value():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert P.linear_cka(x, x) == 1.0
    assert P.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)  # orthogonal transform
    assert P.linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-12)  # isotropic scaling
    assert P.linear_cka(x, x + 2.0) == pytest.approx(1.0, abs=1e-12)  # translation (features are centred)
    assert P.linear_cka(x, torch.randn(20, 5, dtype=torch.float64)) < 0.9
    # 1-D features: CKA = squared correlation; x = (-1, 0, 1), y = (-1, 1, 0): (xᵀy)² / (‖x‖² ‖y‖²) = 1 / 4
    assert P.linear_cka(torch.tensor([[-1.0], [0.0], [1.0]]), torch.tensor([[-1.0], [1.0], [0.0]])) == 0.25
    assert math.isnan(P.linear_cka(torch.ones(3, 2), x[:3, :2]))
    assert P.activation_predictors(x, x) == {
        "pred/activation_l1": 0.0, "pred/activation_l2": 0.0, "pred/one_minus_cka": 0.0}


def test_lora_effective_weight_is_base_plus_scaled_delta():
    pytest.importorskip("peft")
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    plain = copy.deepcopy(model)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["0"]), model)
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    tuned = P.EffectiveParameters(model)
    assert sorted(tuned) == ["0.bias", "0.weight"]
    expected = plain[0].weight + (4 / 2) * b @ a
    assert torch.allclose(tuned["0.weight"], expected, atol=1e-6)
    x = torch.randn(5, 3)
    assert torch.allclose(model(x), x @ tuned["0.weight"].T + tuned["0.bias"], atol=1e-5)
    base = P.EffectiveParameters(model, adapters=False)
    assert torch.equal(base["0.weight"], plain[0].weight)
    assert P.update_rank(base, tuned) == 2.0  # W - W0 = scaling · B A has rank r
    assert P.weight_predictors(P.EffectiveParameters(plain), tuned) == P.weight_predictors(base, tuned)


# ---------------------------------------------------------------------------------------------- tiny VLA
pytest.importorskip("timm")
pytest.importorskip("transformers")
from razor_robot.policies import load_policy  # noqa: E402

INSTRUCTIONS = ["open drawer", "close drawer", "pick coke can", "open drawer"]
PERTURBED = "language_model.model.layers.3.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def policy():
    return load_policy("tiny", seed=0)


@pytest.fixture(scope="module")
def probes():
    return np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), INSTRUCTIONS


def test_final_hidden_state_predicts_the_first_action_token(policy, probes):
    images, instructions = probes
    tokens = policy.sample_actions(images, instructions, temperature=0.0)
    with torch.no_grad():
        hidden = policy.final_hidden_state(images, instructions)  # (B, H)
        logits = policy.action_logits(images, instructions, tokens)  # (B, D, 256)
    assert hidden.shape == (4, policy.config.llm.hidden_size)
    assert torch.allclose(policy._action_head(hidden), logits[:, 0], atol=1e-5)
    # after the final RMSNorm: with its unit weight, every row has RMS 1
    assert torch.allclose(hidden.square().mean(-1), torch.ones(4), atol=1e-3)


def test_checkpoint_predictors_zero_against_itself_then_one_weight(policy, probes):
    images, instructions = probes
    fisher = P.diagonal_fisher(policy, images, instructions, generator=torch.Generator().manual_seed(0))
    base_hidden = P.final_hidden_states(policy, images, instructions)
    same = P.checkpoint_predictors(policy, copy.deepcopy(policy), images, instructions, fisher=fisher,
                                   base_hidden=base_hidden)
    assert same == {k: (1.0 if "sparsity" in k else 0.0) for k in P.PREDICTOR_KEYS}

    tuned = copy.deepcopy(policy)
    eps = 0.5
    with torch.no_grad():
        tuned.get_parameter(PERTURBED)[0, 0] += eps
    out = P.checkpoint_predictors(policy, tuned, images, instructions, fisher=fisher, base_hidden=base_hidden)
    compared = P.EffectiveParameters(policy, exclude=P._unused_prefixes(policy)).values()
    n_entries = sum(t.numel() for t in compared)
    assert out["pred/weight_l1"] == pytest.approx(eps)
    assert out["pred/fisher_l2"] == pytest.approx(float(fisher[PERTURBED][0, 0]) * eps**2)
    assert out["pred/spectral_norm"] == pytest.approx(eps)
    assert out["pred/update_sparsity"] == 1 - 1 / n_entries
    n_matrices = sum(t.ndim == 2 for t in compared)
    assert out["pred/update_rank"] == pytest.approx(1 / n_matrices)
    assert out["pred/activation_l1"] > 0 and out["pred/activation_l2"] > 0 and out["pred/one_minus_cka"] > 0


def test_diagonal_fisher_is_per_sample_exact(policy, probes, tmp_path):
    images, instructions = probes
    gen = torch.Generator().manual_seed(1)
    tokens = policy.sample_actions(images, instructions, temperature=1.0, generator=gen)
    fisher = P.diagonal_fisher(policy, images[:2], instructions[:2], tokens[:2])
    assert set(fisher) == set(P.EffectiveParameters(policy))
    weight = policy.get_parameter(PERTURBED)
    squares = []
    for n in range(2):
        log_prob = policy.log_prob(images[n : n + 1], [instructions[n]], tokens[n : n + 1])  # (1,)
        (grad,) = torch.autograd.grad(log_prob.sum(), [weight])
        squares.append(grad.square())
    assert torch.allclose(fisher[PERTURBED], (squares[0] + squares[1]) / 2, rtol=1e-5, atol=1e-12)
    assert float(fisher["vision_backbone.featurizer.norm.weight"].abs().sum()) == 0.0  # unused: no gradient
    P.save_fisher(tmp_path / "fisher.safetensors", fisher)
    loaded = P.load_fisher(tmp_path / "fisher.safetensors")
    assert all(torch.equal(loaded[k], fisher[k]) for k in fisher)


def test_lora_checkpoint_compares_with_its_own_base_weights(probes):
    images, instructions = probes
    base = load_policy("tiny", seed=0)
    policy = copy.deepcopy(base).enable_lora(r=2, alpha=4)
    zero = P.checkpoint_predictors(policy, policy, images, instructions)  # lora_B starts at 0
    assert zero == {k: (1.0 if "sparsity" in k else 0.0) for k in P.PREDICTOR_KEYS if k != "pred/fisher_l2"}
    name = "language_model.model.layers.3.mlp.down_proj"
    with torch.no_grad():
        policy.get_submodule(name).lora_B["default"].weight[0, 0] = 0.1
    out = P.checkpoint_predictors(policy, policy, images, instructions)
    a = policy.get_submodule(name).lora_A["default"].weight
    assert out["pred/weight_l1"] == pytest.approx(0.1 * (4 / 2) * float(a[0].detach().abs().sum()), rel=1e-4)
    assert out["pred/activation_l2"] > 0
    against_plain = P.checkpoint_predictors(base, policy, images, instructions)
    assert against_plain == pytest.approx(out, rel=1e-6, abs=1e-9)

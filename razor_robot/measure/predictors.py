"""Table 1's alternative predictors of forgetting, for a base policy π0 (weights θ0) and a fine-tuned π (θ).

RL's Razor (Shenfeld, Pari, Agrawal 2025, arXiv 2509.04259), Table 1, compares the forward KL with predictors
read off the weights or the representations. Every sum below runs over the entries of all compared parameter
tensors and is *not* normalised by the parameter count (the paper sums).

Weight space (``weight_predictors``; θ, θ0 as mappings name -> tensor with equal names and shapes):
    weight_l1              Σ_i |θ_i − θ0_i|
    fisher_l2              Σ_i F_i (θ_i − θ0_i)²,  F the diagonal empirical Fisher of π0 (``diagonal_fisher``)
    spectral_norm          Σ_{W 2-D} σ_max(W − W0)            (weight matrices only; conv kernels, biases and
                                                              norms are left out)
    update_sparsity        #{i : θ_i == θ0_i} / #i            (exact equality; no tolerance)
    update_sparsity_bf16   the same after rounding θ and θ0 to bfloat16 ("how much of the update a bf16 copy
                           would hide"; the paper's Sec. 6 found RL's apparent sparsity to be bf16 rounding)
    update_rank            mean over 2-D W of the numerical rank of W − W0: #{σ_k > max(m, n)·ε_fp32·σ_max},
                           torch.linalg.matrix_rank's default tolerance for a float32 matrix (0 for W == W0)
    update_effective_rank  mean over 2-D W of exp(−Σ_k p_k log p_k), p = σ / Σσ (Roy & Vetterli 2007; 0 for
                           W == W0): a continuous rank, robust to the noise floor the numerical rank counts

Representations (``activation_predictors``) on a fixed probe set of N prior-task observations, h_n the
policy's final hidden state (``VLAPolicy.final_hidden_state``: the LLM's last-layer state after the final
RMSNorm at the position that predicts the first action token), h and h0 of shape (N, H):
    activation_l1          (1/N) Σ_n ‖h_n − h0_n‖_1
    activation_l2          (1/N) Σ_n ‖h_n − h0_n‖_2
    one_minus_cka          1 − CKA(h0, h), linear CKA (Kornblith et al. 2019) on column-centred features:
                           CKA(X, Y) = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)

The Fisher (``diagonal_fisher``), per sample and exact: F_i = (1/N) Σ_n (∂ log π0(a_n | x_n) / ∂θ_i)², one
backward pass per (observation, action) pair, so the square is of each sample's gradient, never of a batch
mean. x_n are prior-task observations and a_n the base's own actions there (given tokens, e.g. from its
evaluation rollouts), or, when none are given, one action per observation sampled from π0 at temperature 1
(then F is a one-sample Monte-Carlo estimate of the true Fisher).

LoRA: a peft LoRA layer's effective weight is W0 + scaling · B A; ``EffectiveParameters`` reads every LoRA
layer as that merged weight under the plain module name (``q_proj.weight``, not ``q_proj.base_layer.weight``)
and drops the adapter tensors, so a LoRA policy compares with a full base or with its own adapter-free
weights.

Public API:
    EffectiveParameters(model, adapters=True, exclude=())   lazy read-only mapping name -> effective weight
    weight_change_l1, fisher_weighted_l2, spectral_norm_sum, update_sparsity, update_rank,
        update_effective_rank                               (base_params, params[, ...]) -> float
    activation_change_l1, activation_change_l2, linear_cka  (h0, h) -> float
    empirical_fisher(model, log_likelihood, n_samples)       generic per-sample diagonal Fisher
    diagonal_fisher(policy, images, instructions, ...)       the VLA base's Fisher, once per sweep
    save_fisher(path, fisher) / load_fisher(path)            safetensors cache
    final_hidden_states(policy, images, instructions, ...)   (N, H) probe representations
    weight_predictors, activation_predictors                 {"pred/<name>": float} from weights / features
    checkpoint_predictors(base_policy, policy, probe_images, probe_instructions, fisher=..., base_hidden=...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch
import torch.nn as nn

WEIGHT_PREDICTORS = (
    "weight_l1",
    "fisher_l2",
    "spectral_norm",
    "update_sparsity",
    "update_sparsity_bf16",
    "update_rank",
    "update_effective_rank",
)
"""Names of the weight-space predictors (reported as "pred/<name>"; fisher_l2 only when a Fisher is given)."""

ACTIVATION_PREDICTORS = ("activation_l1", "activation_l2", "one_minus_cka")
"""Names of the representation predictors (reported as "pred/<name>")."""

PREDICTOR_KEYS = tuple(f"pred/{name}" for name in WEIGHT_PREDICTORS + ACTIVATION_PREDICTORS)
"""Every key ``checkpoint_predictors`` returns when given a Fisher."""

Params = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------------
# Effective weights (LoRA merged on the fly)
# --------------------------------------------------------------------------------------------------------
def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: no LoRA layers either
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _plain_parameters(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """The model's own weights under plain names: LoRA adapter tensors dropped, ".base_layer." removed."""
    layers = _lora_layers(model)
    adapter_prefixes = tuple(f"{n}." for n in layers)
    out = {}
    for name, param in model.named_parameters():
        owner = next((p for p in adapter_prefixes if name.startswith(p)), None)
        if owner is not None:
            if not name.startswith(owner + "base_layer."):
                continue  # lora_A / lora_B / ...: folded into the effective weight instead
            name = owner + name[len(owner + "base_layer.") :]
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        out[name] = param
    return out


class EffectiveParameters(Mapping):
    """Read-only mapping name -> detached effective weight of `model` (a LoRA layer's `weight` is merged on
    access: W0 + Σ_active scaling · B A, in float32 or wider, so a 7B model is never copied whole).

    adapters=False reads the adapter-free base weights (what the model computes under `disable_adapter`).
    `exclude` drops parameters under the given module prefixes (e.g. tower blocks the features never use).
    """

    def __init__(self, model: nn.Module, adapters: bool = True, exclude: Sequence[str] = ()):
        self._params = _plain_parameters(model, exclude)
        self._merge = {}
        for name, layer in _lora_layers(model).items():
            if layer.merged:
                raise ValueError(f"LoRA layer {name!r} is merged into its base weight; unmerge it first")
            if adapters and not layer.disable_adapters:
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if active and f"{name}.weight" in self._params:
                    self._merge[f"{name}.weight"] = (layer, active)

    def __getitem__(self, name: str) -> torch.Tensor:
        weight = self._params[name].detach()
        if name not in self._merge:
            return weight
        layer, active = self._merge[name]
        with torch.no_grad():
            dtype = torch.promote_types(weight.dtype, torch.float32)
            merged = weight.to(dtype)
            for adapter in active:
                merged = merged + layer.get_delta_weight(adapter).to(dtype)
        return merged

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def _paired(base_params: Params, params: Params) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, θ0, θ) for every parameter; the two mappings must name the same tensors with the same shapes."""
    if set(base_params) != set(params):
        missing, extra = sorted(set(base_params) - set(params)), sorted(set(params) - set(base_params))
        raise ValueError(f"parameter names differ: only in base {missing[:3]}, only in tuned {extra[:3]}")
    for name in base_params:
        theta0, theta = base_params[name], params[name]
        if theta0.shape != theta.shape:
            raise ValueError(f"{name}: base shape {tuple(theta0.shape)} != tuned shape {tuple(theta.shape)}")
        yield name, theta0, theta.to(theta0.device)


def _delta(theta0: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """θ − θ0 in float64: exact for fp16/bf16/fp32 weights (and 0 exactly when they are equal)."""
    return theta.detach().double() - theta0.detach().double()


# --------------------------------------------------------------------------------------------------------
# Weight-space predictors
# --------------------------------------------------------------------------------------------------------
def weight_change_l1(base_params: Params, params: Params) -> float:
    """Σ_i |θ_i − θ0_i| over every entry of every parameter (a sum, not normalised)."""
    return float(sum(_delta(t0, t).abs().sum() for _, t0, t in _paired(base_params, params)))


def fisher_weighted_l2(base_params: Params, params: Params, fisher: Params) -> float:
    """Σ_i F_i (θ_i − θ0_i)², F the base's diagonal Fisher (``diagonal_fisher``), keyed like the params."""
    total = 0.0
    for name, t0, t in _paired(base_params, params):
        if name not in fisher:
            raise ValueError(f"the Fisher has no entry for parameter {name!r}")
        total += float((fisher[name].to(t0.device).double() * _delta(t0, t).square()).sum())
    return total


def update_sparsity(base_params: Params, params: Params, *, atol: float = 0.0,
                    dtype: torch.dtype | None = None) -> float:
    """Fraction of parameter entries with |θ_i − θ0_i| <= atol (atol=0: exactly unchanged, θ_i == θ0_i).

    dtype: round θ and θ0 to it first (e.g. torch.bfloat16: the sparsity a bf16 copy of the same weights
    would show). Works for any float dtype of the master weights; NaN counts as changed.
    """
    unchanged, count = 0, 0
    for _, t0, t in _paired(base_params, params):
        if dtype is not None:
            t0, t = t0.detach().to(dtype), t.detach().to(dtype)
        unchanged += int((_delta(t0, t).abs() <= atol).sum())
        count += t0.numel()
    return unchanged / count if count else float("nan")


def _update_singular_values(base_params: Params, params: Params) -> list[torch.Tensor]:
    """Singular values (descending, float32) of W − W0 for every 2-D parameter."""
    return [
        torch.linalg.svdvals(_delta(t0, t).float())
        for _, t0, t in _paired(base_params, params)
        if t0.ndim == 2
    ]


def _numerical_rank(sigma: torch.Tensor, shape: tuple[int, int]) -> int:
    """#{σ_k > max(m, n)·ε_fp32·σ_max}: torch.linalg.matrix_rank's default tolerance for a float32 matrix."""
    tol = max(shape) * torch.finfo(torch.float32).eps * sigma[0]
    return int((sigma > tol).sum())


def _effective_rank(sigma: torch.Tensor) -> float:
    """exp(entropy of σ / Σσ) (Roy & Vetterli 2007); 0 for a zero matrix."""
    total = sigma.double().sum()
    if total == 0:
        return 0.0
    p = sigma.double() / total
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum()
    return float(entropy.exp())


def _matrix_shapes(base_params: Params) -> list[tuple[int, int]]:
    return [tuple(t.shape) for t in base_params.values() if t.ndim == 2]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def spectral_norm_sum(base_params: Params, params: Params) -> float:
    """Σ over 2-D parameters W of σ_max(W − W0), the largest singular value (spectral norm) of the update."""
    return float(sum(s[0] for s in _update_singular_values(base_params, params)))


def update_rank(base_params: Params, params: Params) -> float:
    """Mean over 2-D parameters of the numerical rank of W − W0 (tolerance: see ``_numerical_rank``)."""
    sigmas = _update_singular_values(base_params, params)
    return _mean([_numerical_rank(s, shape) for s, shape in zip(sigmas, _matrix_shapes(base_params))])


def update_effective_rank(base_params: Params, params: Params) -> float:
    """Mean over 2-D parameters of the effective rank exp(H(σ/Σσ)) of W − W0 (0 for an unchanged W)."""
    return _mean([_effective_rank(s) for s in _update_singular_values(base_params, params)])


def weight_predictors(base_params: Params, params: Params, fisher: Params | None = None) -> dict[str, float]:
    """All weight-space predictors in one pass over the parameters (one SVD per matrix), as "pred/<name>".

    "pred/fisher_l2" is present only when `fisher` is given.
    """
    l1 = fisher_l2 = 0.0
    unchanged = unchanged_bf16 = count = 0
    spectral, ranks, effective = 0.0, [], []
    for name, t0, t in _paired(base_params, params):
        delta = _delta(t0, t)
        l1 += float(delta.abs().sum())
        if fisher is not None:
            if name not in fisher:
                raise ValueError(f"the Fisher has no entry for parameter {name!r}")
            fisher_l2 += float((fisher[name].to(delta.device).double() * delta.square()).sum())
        unchanged += int((delta == 0).sum())
        unchanged_bf16 += int((t0.detach().bfloat16() == t.detach().bfloat16()).sum())
        count += t0.numel()
        if t0.ndim == 2:
            sigma = torch.linalg.svdvals(delta.float())
            spectral += float(sigma[0])
            ranks.append(_numerical_rank(sigma, tuple(t0.shape)))
            effective.append(_effective_rank(sigma))
    out = {"pred/weight_l1": l1}
    if fisher is not None:
        out["pred/fisher_l2"] = fisher_l2
    out |= {
        "pred/spectral_norm": spectral,
        "pred/update_sparsity": unchanged / count if count else float("nan"),
        "pred/update_sparsity_bf16": unchanged_bf16 / count if count else float("nan"),
        "pred/update_rank": _mean(ranks),
        "pred/update_effective_rank": _mean(effective),
    }
    return out


# --------------------------------------------------------------------------------------------------------
# Representation predictors
# --------------------------------------------------------------------------------------------------------
def _check_features(h0: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if h0.ndim != 2 or h0.shape != h.shape:
        raise ValueError(f"features must be two (N, H) tensors of one shape, got {tuple(h0.shape)}, "
                         f"{tuple(h.shape)}")
    return h0.detach().double().cpu(), h.detach().double().cpu()


def activation_change_l1(h0: torch.Tensor, h: torch.Tensor) -> float:
    """(1/N) Σ_n ‖h_n − h0_n‖_1 for (N, H) features."""
    h0, h = _check_features(h0, h)
    return float((h - h0).abs().sum(dim=1).mean())


def activation_change_l2(h0: torch.Tensor, h: torch.Tensor) -> float:
    """(1/N) Σ_n ‖h_n − h0_n‖_2 for (N, H) features."""
    h0, h = _check_features(h0, h)
    return float((h - h0).norm(dim=1).mean())


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of (N, H) features, columns centred:
    ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F).


    Computed with the N×N Gram matrices K = X Xᵀ, L = Y Yᵀ (‖Yᵀ X‖_F² = ⟨K, L⟩_F), in float64; invariant to
    orthogonal transforms and isotropic scaling of either side; exactly 1.0 for identical inputs; NaN when
    either side is constant over the N rows.
    """
    x, y = _check_features(x, y)
    if torch.equal(x, y) and bool(x.std(dim=0).gt(0).any()):
        return 1.0
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)  # (N, H) centred
    k, l = x @ x.T, y @ y.T  # (N, N)
    denominator = k.norm() * l.norm()
    if denominator == 0:
        return float("nan")
    return float(((k * l).sum() / denominator).clamp(0.0, 1.0))


def activation_predictors(h0: torch.Tensor, h: torch.Tensor) -> dict[str, float]:
    """{"pred/activation_l1", "pred/activation_l2", "pred/one_minus_cka"} for base / tuned (N, H) features."""
    return {
        "pred/activation_l1": activation_change_l1(h0, h),
        "pred/activation_l2": activation_change_l2(h0, h),
        "pred/one_minus_cka": 1.0 - linear_cka(h0, h),
    }


# --------------------------------------------------------------------------------------------------------
# Diagonal empirical Fisher of the base
# --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _all_trainable(params: Mapping[str, nn.Parameter]) -> Iterator[None]:
    """requires_grad on every parameter inside the block (LoRA freezes the base), restored afterwards."""
    flags = [p.requires_grad for p in params.values()]
    try:
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params.values(), flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def empirical_fisher(model: nn.Module, log_likelihood: Callable[[int], torch.Tensor], n_samples: int, *,
                     exclude: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Diagonal Fisher F_i = (1/N) Σ_n (∂ log_likelihood(n) / ∂θ_i)², exact per sample: one backward per n.

    log_likelihood(n) returns sample n's scalar log-likelihood under `model` (in eval mode). Gradients are
    taken with respect to every parameter (frozen ones included) under the plain names of
    ``EffectiveParameters``; a parameter no sample reaches gets F = 0. Returns float32 tensors on the CPU.
    """
    if n_samples < 1:
        raise ValueError(f"the Fisher needs at least one sample, got n_samples={n_samples}")
    params = _plain_parameters(model, exclude)
    # float32 sums: N is a few hundred, and float64 accumulators would be 8 bytes per parameter (60 GB at 7B)
    totals = {name: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for name, p in params.items()}
    with _eval_mode(model), _all_trainable(params):
        for n in range(n_samples):
            value = log_likelihood(n)
            if value.numel() != 1:
                raise ValueError(f"log_likelihood({n}) must be a scalar, got shape {tuple(value.shape)}")
            grads = torch.autograd.grad(value.reshape(()), list(params.values()), allow_unused=True)
            for name, grad in zip(params, grads):
                if grad is not None:
                    totals[name] += grad.float().square()
    return {name: (total / n_samples).cpu() for name, total in totals.items()}


def diagonal_fisher(policy: Any, images: Any, instructions: Sequence[str], action_tokens: Any = None, *,
                    generator: torch.Generator | None = None,
                    context: Callable[[], ContextManager[Any]] | None = None) -> dict[str, torch.Tensor]:
    """The base policy's diagonal empirical Fisher of its action-token log-likelihood log π0(a | x).

    F_i = (1/N) Σ_n (∂ log π0(a_n | x_n) / ∂θ_i)², one observation per backward pass (per-sample exact), with
    log π0(a | x) = ``policy.log_prob`` (sum over the D action tokens of the 256-bin log-softmax).

    Args:
        policy: π0 (a VLAPolicy). For a LoRA policy pass context=policy.disable_adapter (the base's Fisher).
        images: (N, H, W, 3) uint8 prior-task observations x_n.
        instructions: N instruction strings.
        action_tokens: (N, D) vocabulary ids a_n (the base's own actions at x_n); None samples one
            a_n ~ π0(·|x_n) at temperature 1 with `generator` (a Monte-Carlo estimate of the true Fisher).
        context: zero-argument callable returning a context manager entered around the whole computation.

    Returns:
        {name: (shape of the parameter) float32 CPU tensor} under ``EffectiveParameters`` names: cache it once
        per sweep with ``save_fisher``.
    """
    images = images if isinstance(images, torch.Tensor) else np.asarray(images)
    if isinstance(instructions, str) or len(instructions) != len(images):
        raise ValueError(f"need one instruction string per image, got {len(images)} images and "
                         f"{'a single str' if isinstance(instructions, str) else len(instructions)}")
    with (context or contextlib.nullcontext)():
        if action_tokens is None:
            tokens = policy.sample_actions(images, list(instructions), temperature=1.0, generator=generator)
        else:
            tokens = torch.as_tensor(np.asarray(action_tokens) if not torch.is_tensor(action_tokens)
                                     else action_tokens)  # (N, D)

        def log_likelihood(n: int) -> torch.Tensor:
            return policy.log_prob(images[n : n + 1], [instructions[n]], tokens[n : n + 1])  # (1,)

        return empirical_fisher(policy, log_likelihood, len(images))


def save_fisher(path: str | Path, fisher: Params) -> None:
    """Write a Fisher dict as one safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in fisher.items()}, str(path))


def load_fisher(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a Fisher dict written by ``save_fisher``."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


# --------------------------------------------------------------------------------------------------------
# VLA entry point
# --------------------------------------------------------------------------------------------------------
def final_hidden_states(policy: Any, images: Any, instructions: Sequence[str], *, batch_size: int = 64,
                        context: Callable[[], ContextManager[Any]] | None = None) -> torch.Tensor:
    """``policy.final_hidden_state`` over the probe set, batched, eval mode, no autograd: (N, H) fp32 CPU."""
    images = images if isinstance(images, torch.Tensor) else np.asarray(images)
    if isinstance(instructions, str) or len(instructions) != len(images) or len(images) == 0:
        raise ValueError(f"need N >= 1 images with one instruction string each, got {len(images)} images")
    out = []
    with torch.inference_mode(), _eval_mode(policy), (context or contextlib.nullcontext)():
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            hidden = policy.final_hidden_state(images[start:stop], list(instructions[start:stop]))  # (b, H)
            out.append(hidden.float().cpu())
    return torch.cat(out)  # (N, H)


def _unused_prefixes(policy: Any) -> tuple[str, ...]:
    """Parameters the policy's outputs never depend on (VLAPolicy: the towers' unused last block etc.)."""
    backbone = getattr(policy, "vision_backbone", None)
    return tuple(backbone.unused_prefixes()) if hasattr(backbone, "unused_prefixes") else ()


def checkpoint_predictors(base_policy: Any, policy: Any, probe_images: Any, probe_instructions: Sequence[str],
                          *, fisher: Params | None = None, base_hidden: torch.Tensor | None = None,
                          base_context: Callable[[], ContextManager[Any]] | None = None,
                          batch_size: int = 64) -> dict[str, float]:
    """All Table 1 predictors of one checkpoint, {"pred/<name>": float} (names: ``PREDICTOR_KEYS``).

    Args:
        base_policy: π0. For a LoRA checkpoint pass the same object twice: the base weights are then its
            adapter-free weights and its base representations are computed under `base_context`
            (default: policy.disable_adapter).
        policy: π, the fine-tuned checkpoint (full or LoRA; LoRA weights compare as base + adapter delta).
        probe_images, probe_instructions: the fixed probe set of prior-task observations, (N, H, W, 3) uint8.
        fisher: the base's ``diagonal_fisher`` (once per sweep); None leaves "pred/fisher_l2" out.
        base_hidden: the base's ``final_hidden_states`` on the probe set (once per sweep); None computes it.
        batch_size: probe observations per forward pass.

    Parameters the policy's outputs never depend on (the towers' unused last block and heads) are left out
    of every weight predictor; everything else counts, frozen or not (a LoRA update is sparse by design).
    """
    same = base_policy is policy
    if same and base_context is None and _lora_layers(policy):
        base_context = policy.disable_adapter
    exclude = _unused_prefixes(policy)
    base_params = EffectiveParameters(base_policy, adapters=not same, exclude=exclude)
    out = weight_predictors(base_params, EffectiveParameters(policy, exclude=exclude), fisher)
    hidden = final_hidden_states(policy, probe_images, probe_instructions, batch_size=batch_size)
    if base_hidden is None:
        base_hidden = final_hidden_states(base_policy, probe_images, probe_instructions,
                                          batch_size=batch_size, context=base_context)
    return out | activation_predictors(base_hidden, hidden)

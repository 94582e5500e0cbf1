"""Action-token distances between a base policy π0 and a fine-tuned policy π (RL's Razor, Sec. 4 and Table 1).

The paper's predictor of forgetting is the forward KL on new-task inputs,

    E_{x ~ new task} [ KL( π0(·|x) ‖ π(·|x) ) ],

where x is a fixed, cached set of observations (image + instruction) that the base policy visited on the
evaluation positions. An action is a sequence of D tokens, each a K-way (K = 256) categorical, so the
sequence-level KL factorises by the chain rule:

    KL(π0 ‖ π)(x) = E_{a ~ π0(·|x)} [ Σ_d KL( π0(·|x, a<d) ‖ π(·|x, a<d) ) ].

We sample M prefixes a ~ π0 (temperature 1), run one teacher-forced forward pass of each model on (x, a) to
get all D conditionals at once, and take the *full* K-bin KL at every position. The Monte-Carlo error comes
only from the prefixes, never from the last token, so this is an unbiased, low-variance estimator.

The Table 1 alternatives (reverse KL KL(π ‖ π0), total variation, L2 between the per-position
distributions) are computed on the same conditionals, summed over D and averaged over x and prefixes in the
same way. Note that only the forward KL sum is a sequence-level divergence; the others are per-position
quantities under base-policy prefixes (the reverse *sequence* KL would need prefixes from π).

Uncertainty: every distance also gets a percentile-bootstrap 95% CI over observations ("kl/forward/ci95":
[lo, hi], ...). Each observation's value is its own prefix-averaged distance Σ_d (1/M) Σ_m KL_d, so
resampling observations (razor_robot.report.stats.bootstrap_ci, one seed for all four distances: a paired
resample) covers both the choice of observations and the prefix Monte-Carlo noise, which is independent
across observations. With the exact expectation (all prefixes, π0 weights) only the first remains.

Public API:
    token_distances(base_logits, logits)           -> dict of (..., D) tensors: per-position distances
    action_token_distances(base_policy, policy, images, instructions, ...) -> {"kl/forward", "kl/reverse",
        "kl/tv", "kl/l2"} floats, plus {"kl/forward/ci95", ...} [lo, hi] lists
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ContextManager

import numpy as np
import torch

DISTANCES = ("forward", "reverse", "tv", "l2")
"""Names of the per-position distances; `action_token_distances` reports them as "kl/<name>"."""

METRIC_KEYS = tuple(f"kl/{name}" for name in DISTANCES)
"""Keys returned by `action_token_distances` (the `kl/` metric group)."""

CI_KEYS = tuple(f"{key}/ci95" for key in METRIC_KEYS)
"""Bootstrap-CI keys returned beside METRIC_KEYS: [lo, hi] over observations."""


# --------------------------------------------------------------------------------------------------------
# Pure math on logits
# --------------------------------------------------------------------------------------------------------
def _masked_kl(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ_k p_k (log p_k − log q_k) over the last dim, with 0·log(0/·) = 0.

    Working in log space keeps the KL finite when q_k underflows to 0 in probability space but its
    log-prob is finite (e.g. logits −1e4); masking p_k == 0 avoids 0·(−inf − x) = NaN for −inf logits.
    """
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def token_distances(base_logits: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position distances between the categoricals given by two sets of (..., D, K) logits.

    Returns {"forward": KL(p0 ‖ p), "reverse": KL(p ‖ p0), "tv": ½ Σ|p0 − p|, "l2": ‖p0 − p‖₂}, each of shape
    (..., D), computed in float64. KL(p ‖ p) is exactly 0.0 and every value is ≥ 0 (rounding clamped).
    """
    if base_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: base {tuple(base_logits.shape)} vs {tuple(logits.shape)}")
    if base_logits.ndim < 1 or base_logits.shape[-1] < 1:
        raise ValueError(f"logits need a non-empty last (bin) dim, got shape {tuple(base_logits.shape)}")
    log_p0 = torch.log_softmax(base_logits.to(torch.float64), dim=-1)  # (..., D, K)
    log_p = torch.log_softmax(logits.to(torch.float64), dim=-1)  # (..., D, K)
    p0, p = log_p0.exp(), log_p.exp()
    diff = p0 - p
    out = {
        "forward": _masked_kl(p0, log_p0, log_p),
        "reverse": _masked_kl(p, log_p, log_p0),
        "tv": 0.5 * diff.abs().sum(dim=-1),
        "l2": diff.square().sum(dim=-1).sqrt(),
    }
    # log_softmax rounding can make a KL a hair below zero; a divergence is never negative.
    return {name: value.clamp_min(0.0) for name, value in out.items()}


# --------------------------------------------------------------------------------------------------------
# Policy-level estimator
# --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    """Put torch modules in eval mode (dropout off, so KL(π‖π) = 0) and restore their mode afterwards."""
    modules = [m for m in models if isinstance(m, torch.nn.Module)]
    was_training = [m.training for m in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in zip(modules, was_training):
            module.train(mode)


def _take(images: Any, rows: np.ndarray) -> Any:
    """images[rows] for a numpy array or a torch tensor (B, H, W, 3)."""
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(rows, device=images.device)]
    return np.asarray(images)[rows]


def _check_inputs(
    images: Any,
    instructions: Sequence[str],
    n_prefix_samples: int,
    batch_size: int,
    prefix_tokens: torch.Tensor | np.ndarray | None,
    prefix_weights: torch.Tensor | np.ndarray | None,
) -> int:
    """Validate the arguments of `action_token_distances` before any forward pass; returns B."""
    if isinstance(instructions, str):
        raise ValueError("instructions must be a list of strings (one per image), not a single str")
    n_obs = len(images)
    if n_obs == 0:
        raise ValueError("action_token_distances needs at least one observation, got 0 images")
    if len(instructions) != n_obs:
        raise ValueError(f"got {n_obs} images but {len(instructions)} instructions")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if prefix_tokens is None:
        if n_prefix_samples < 1:
            raise ValueError(f"n_prefix_samples must be >= 1, got {n_prefix_samples}")
        if prefix_weights is not None:
            raise ValueError("prefix_weights is only meaningful together with prefix_tokens")
        return n_obs
    if prefix_tokens.ndim != 3 or prefix_tokens.shape[0] != n_obs:
        raise ValueError(f"prefix_tokens must be (B={n_obs}, M, D), got shape {tuple(prefix_tokens.shape)}")
    if prefix_weights is not None and tuple(prefix_weights.shape) != tuple(prefix_tokens.shape[:2]):
        raise ValueError(
            f"prefix_weights must be (B, M) = {tuple(prefix_tokens.shape[:2])}, "
            f"got {tuple(prefix_weights.shape)}"
        )
    return n_obs


def _row_weights(
    n_obs: int, n_prefix: int, prefix_weights: torch.Tensor | np.ndarray | None
) -> torch.Tensor:
    """Weight of every (observation, prefix) row, flattened to (B*M,); each observation's rows sum to 1/B."""
    if prefix_weights is None:
        return torch.full((n_obs * n_prefix,), 1.0 / (n_obs * n_prefix), dtype=torch.float64)
    weights = torch.as_tensor(prefix_weights, dtype=torch.float64)  # (B, M)
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("prefix_weights must be finite and non-negative")
    totals = weights.sum(dim=1, keepdim=True)  # (B, 1)
    if (totals <= 0).any():
        raise ValueError("every observation needs prefix_weights with a positive sum")
    return (weights / totals / n_obs).reshape(-1)  # (B*M,)


def action_token_distances(
    base_policy: Any,
    policy: Any,
    images: Any,
    instructions: Sequence[str],
    *,
    n_prefix_samples: int = 1,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    base_context: Callable[[], ContextManager[Any]] | None = None,
    prefix_tokens: torch.Tensor | np.ndarray | None = None,
    prefix_weights: torch.Tensor | np.ndarray | None = None,
    per_position: bool = False,
    ci_resamples: int = 2000,
    ci_seed: int = 0,
) -> dict[str, float | list[float]]:
    """Forward KL E_x[KL(π0 ‖ π)] over action-token sequences, plus reverse KL, TV and L2 (see module doc).

    Args:
        base_policy: π0, with `sample_actions(images, instructions, temperature, generator) -> (B, D)` token
            ids and `action_logits(images, instructions, tokens) -> (B, D, K)` (docs/ARCHITECTURE.md).
        policy: π, same API. For LoRA pass the same object twice with
            `base_context=policy.disable_adapter`: base logits then come from the same weights, adapter off.
        images: (B, H, W, 3) uint8 numpy array or torch tensor: the cached new-task observations x.
        instructions: B instruction strings.
        n_prefix_samples: M, prefixes a ~ π0(·|x) drawn per observation at temperature 1.
        batch_size: (observation, prefix) rows per forward pass.
        generator: torch.Generator for the prefix samples (reproducible estimates).
        base_context: zero-argument callable returning a context manager entered around every π0 call.
        prefix_tokens: (B, M, D) token ids to use instead of sampling: with every sequence and
            `prefix_weights` = π0(a|x) the result is the exact expectation (used by the tests).
        prefix_weights: (B, M) non-negative weights of `prefix_tokens`, normalised per observation;
            None means uniform.
        per_position: also return "kl/<name>/d<i>" for every action dimension i.
        ci_resamples: bootstrap resamples of the observations for the "/ci95" keys; 0 leaves them out.
        ci_seed: seed of those resamples (one draw shared by the four distances).

    Returns:
        {"kl/forward", "kl/reverse", "kl/tv", "kl/l2"}: per-position distances summed over D, averaged over
        observations and prefixes; {"kl/forward/ci95", ...}: [lo, hi] percentile-bootstrap 95% interval of
        that mean over observations (see module doc). Torch modules run in eval mode under
        torch.inference_mode.
    """
    if not isinstance(images, torch.Tensor):
        images = np.asarray(images)
    n_obs = _check_inputs(images, instructions, n_prefix_samples, batch_size, prefix_tokens, prefix_weights)
    if ci_resamples < 0:
        raise ValueError(f"ci_resamples must be >= 0 (0 = no CI), got {ci_resamples}")
    n_prefix = n_prefix_samples if prefix_tokens is None else prefix_tokens.shape[1]
    obs_rows = np.repeat(np.arange(n_obs), n_prefix)  # (B*M,): observation of every row
    weights = _row_weights(n_obs, n_prefix, prefix_weights)  # (B*M,)
    flat_prefixes = None
    if prefix_tokens is not None:
        flat_prefixes = torch.as_tensor(prefix_tokens).reshape(n_obs * n_prefix, -1)  # (B*M, D)
    enter_base = base_context if base_context is not None else contextlib.nullcontext

    totals: torch.Tensor | None = None  # (len(DISTANCES), D) weighted sums
    per_obs = torch.zeros(len(DISTANCES), n_obs, dtype=torch.float64)  # (4, B): Σ_d, prefix-averaged
    with torch.inference_mode(), _eval_mode(base_policy, policy):
        for start in range(0, n_obs * n_prefix, batch_size):
            rows = np.arange(start, min(start + batch_size, n_obs * n_prefix))
            stacked = _row_distances(base_policy, policy, _take(images, obs_rows[rows]),
                                     [instructions[i] for i in obs_rows[rows]],
                                     None if flat_prefixes is None else flat_prefixes[rows], generator,
                                     enter_base)
            batch_sum = torch.einsum("nbd,b->nd", stacked, weights[rows])  # (4, D)
            totals = batch_sum if totals is None else totals + batch_sum
            # each observation's rows carry weight 1/B in total: × B makes them a per-observation average
            row_values = stacked.to(torch.float64).sum(dim=-1) * (weights[rows] * n_obs)  # (4, b)
            per_obs.index_add_(1, torch.as_tensor(obs_rows[rows]), row_values)
    assert totals is not None  # at least one row: checked by _check_inputs
    metrics: dict[str, float | list[float]] = dict(_to_metrics(totals, per_position))
    if ci_resamples > 0:
        metrics.update(_bootstrap_cis(per_obs.numpy(), ci_resamples, ci_seed))
    return metrics


def _row_distances(base_policy: Any, policy: Any, images: Any, instructions: list[str], prefixes: Any,
                   generator: torch.Generator | None,
                   enter_base: Callable[[], ContextManager[Any]]) -> torch.Tensor:
    """(4, b, D) per-position distances of b rows, at prefixes sampled from π0 (or the given ones (b, D))."""
    with enter_base():
        if prefixes is None:
            tokens = base_policy.sample_actions(images, instructions, temperature=1.0,
                                                generator=generator)  # (b, D)
        else:
            tokens = prefixes  # (b, D)
        base_logits = base_policy.action_logits(images, instructions, tokens)  # (b, D, K)
    logits = policy.action_logits(images, instructions, tokens)  # (b, D, K)
    dists = token_distances(base_logits, logits)
    return torch.stack([dists[name] for name in DISTANCES]).cpu()  # (4, b, D)


def _bootstrap_cis(per_obs: np.ndarray, n_resamples: int, seed: int) -> dict[str, list[float]]:
    """(4, B) per-observation distances -> {"kl/<name>/ci95": [lo, hi]}, the same resamples for all four."""
    from razor_robot.report.stats import bootstrap_ci

    return {f"kl/{name}/ci95": list(bootstrap_ci(per_obs[i], np.mean, n_resamples, seed))
            for i, name in enumerate(DISTANCES)}


def _to_metrics(totals: torch.Tensor, per_position: bool) -> dict[str, float]:
    """(4, D) weighted per-position sums -> {"kl/<name>": Σ_d} (+ {"kl/<name>/d<i>"} when asked)."""
    metrics = {f"kl/{name}": float(totals[i].sum()) for i, name in enumerate(DISTANCES)}
    if per_position:
        for i, name in enumerate(DISTANCES):
            metrics.update({f"kl/{name}/d{d}": float(v) for d, v in enumerate(totals[i])})
    return metrics

"""Discretise continuous robot actions into the last vocabulary ids, bit-compatible with OpenVLA.

OpenVLA (Kim et al. 2024, https://arxiv.org/abs/2406.09246) normalises each action dimension to [-1, 1] with
the dataset's 1st/99th percentiles, cuts [-1, 1] into 256 uniform bins and overwrites the *last* 256 ids of
the Llama vocabulary with them. For a 32000-word vocabulary the action ids are 31744..31999 and -1 maps to
31999, +1 to 31744. This module is numpy-only so that data code can use it without torch.

The 255-bin-centre quirk (kept on purpose for compatibility): `np.linspace(-1, 1, 256)` gives 256 bin *edges*,
hence 255 bin centres, while `np.digitize` returns 256 distinct bin indices 1..256. Decoding subtracts one and
clips to [0, 254], so index 256 (only reached by values >= +1, id vocab-256) decodes to the same last centre
0.99607843 as index 255 (id vocab-255). Every action in [-1, 1] round-trips to within half a bin (1/255);
id vocab-256 is never the unique code of any value, which is why 256 ids carry only 255 distinct actions.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = [
    "ActionTokenizer",
    "FRACTAL_NORM_STATS",
    "GOOGLE_ROBOT_UNNORM_KEY",
    "compute_norm_stats",
    "normalize_actions",
    "unnormalize_actions",
    "resolve_unnorm_key",
]

GOOGLE_ROBOT_UNNORM_KEY = "fractal20220817_data"
"""OpenVLA's dataset key for the Google robot (RT-1 "fractal") statistics used on SimplerEnv."""

# Published with openvla/openvla-7b (config.json -> norm_stats["fractal20220817_data"]["action"]); the same
# numbers appear in SimplerEnv-OpenVLA ports. x, y, z, roll, pitch, yaw deltas are normalised; the gripper
# (last dim, already in [0, 1]) is not (mask False).
FRACTAL_NORM_STATS: dict[str, Any] = {
    "action": {
        "mean": [
            0.006987582892179489,
            0.006265917327255011,
            -0.01262515690177679,
            0.04333311319351196,
            -0.005756212864071131,
            0.0009130256366916001,
            0.5354204773902893,
        ],
        "std": [
            0.0692116990685463,
            0.05970962345600128,
            0.07353084534406662,
            0.15610496699810028,
            0.13164450228214264,
            0.14593800902366638,
            0.497110515832901,
        ],
        "max": [
            2.9984593391418457,
            22.09052848815918,
            2.7507524490356445,
            1.570636510848999,
            1.5321086645126343,
            1.5691522359848022,
            1.0,
        ],
        "min": [
            -2.0204520225524902,
            -5.497899532318115,
            -2.031663417816162,
            -1.569917917251587,
            -1.569892168045044,
            -1.570419430732727,
            0.0,
        ],
        "q01": [
            -0.22453527510166169,
            -0.14820013284683228,
            -0.231589707583189,
            -0.3517994859814644,
            -0.4193011274933815,
            -0.43643461108207704,
            0.0,
        ],
        "q99": [
            0.17824687153100965,
            0.14938379630446405,
            0.21842354819178575,
            0.5892666035890578,
            0.35272657424211445,
            0.44796681255102094,
            1.0,
        ],
        "mask": [True, True, True, True, True, True, False],
    },
    "num_transitions": 3786400,
    "num_trajectories": 87212,
}


class ActionTokenizer:
    """Map actions in [-1, 1]^D to vocabulary ids and back (OpenVLA's uniform 256-bin scheme).

    Example:
        >>> tok = ActionTokenizer(32000)
        >>> tok.encode(np.array([-1.0, 0.0, 1.0])).tolist()
        [31999, 31872, 31744]
        >>> np.round(tok.decode(np.array([31999, 31872, 31744])), 6).tolist()
        [-0.996078, 0.0, 0.996078]
    """

    def __init__(self, vocab_size: int, n_bins: int = 256, min_action: float = -1.0, max_action: float = 1.0):
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        if vocab_size <= n_bins:
            raise ValueError(f"vocab_size ({vocab_size}) must exceed n_bins ({n_bins})")
        if not min_action < max_action:
            raise ValueError(f"need min_action < max_action, got {min_action} >= {max_action}")
        self.vocab_size, self.n_bins = int(vocab_size), int(n_bins)
        self.min_action, self.max_action = float(min_action), float(max_action)
        self.bins = np.linspace(self.min_action, self.max_action, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def action_token_offset(self) -> int:
        """Smallest action id: id - offset indexes the 256-way action logits."""
        return self.vocab_size - self.n_bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., D) -> int64 ids (..., D); values outside [-1, 1] are clipped first."""
        actions = np.asarray(actions, dtype=np.float64)
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or inf")
        clipped = np.clip(actions, self.min_action, self.max_action)
        digitized = np.digitize(clipped, self.bins)  # in 1..n_bins
        return (self.vocab_size - digitized).astype(np.int64)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Ids (..., D) -> bin-centre actions (..., D) float64, OpenVLA's formula (outside ids clip)."""
        ids = np.asarray(ids, dtype=np.int64)
        index = np.clip(self.vocab_size - ids - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[index]


def _action_stats(stats: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept both OpenVLA's per-dataset dict ({"action": {...}}) and the inner action dict."""
    inner = stats.get("action", stats)
    for key in ("q01", "q99"):
        if key not in inner:
            raise ValueError(f"norm stats lack '{key}' (have {sorted(inner)})")
    return inner


def _stat_arrays(stats: Mapping[str, Any], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inner = _action_stats(stats)
    low, high = np.asarray(inner["q01"], np.float64), np.asarray(inner["q99"], np.float64)
    mask = np.asarray(inner.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    if not low.shape == high.shape == mask.shape == (dim,):
        raise ValueError(f"action dim {dim} does not match norm stats dim {low.shape[0]}")
    return low, high, mask


def normalize_actions(actions: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Raw actions (..., D) -> [-1, 1] with OpenVLA's BOUNDS_Q99 rule (masked dims pass through unchanged).

    Dimensions whose min equals max (unused) become 0, as in OpenVLA's RLDS pipeline.
    """
    actions = np.asarray(actions, dtype=np.float64)
    low, high, mask = _stat_arrays(stats, actions.shape[-1])
    scaled = np.clip(2.0 * (actions - low) / (high - low + 1e-8) - 1.0, -1.0, 1.0)
    out = np.where(mask, scaled, actions)
    inner = _action_stats(stats)
    if "min" in inner and "max" in inner:
        out = np.where(np.asarray(inner["min"]) == np.asarray(inner["max"]), 0.0, out)
    return out


def unnormalize_actions(normalized: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """[-1, 1] actions (..., D) -> raw scale, OpenVLA's predict_action formula (masked dims unchanged)."""
    normalized = np.asarray(normalized, dtype=np.float64)
    low, high, mask = _stat_arrays(stats, normalized.shape[-1])
    return np.where(mask, 0.5 * (normalized + 1.0) * (high - low) + low, normalized)


def compute_norm_stats(actions: np.ndarray, mask: np.ndarray | list[bool] | None = None) -> dict[str, Any]:
    """Statistics of demo actions (N, D) in OpenVLA's norm_stats layout ({"action": {...}, ...}).

    `mask[d]` False leaves dimension d un-normalised (e.g. a gripper command that is already in [-1, 1]).
    Quantiles use numpy's default (linear) interpolation, as OpenVLA's dataset statistics do.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[0] < 2:
        raise ValueError(f"actions must be (N >= 2, D), got shape {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise ValueError("actions contain NaN or inf")
    dim = actions.shape[1]
    mask_arr = np.ones(dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask_arr.shape != (dim,):
        raise ValueError(f"mask has shape {mask_arr.shape}, actions have dim {dim}")
    action = {
        "mean": actions.mean(0).tolist(),
        "std": actions.std(0).tolist(),
        "max": actions.max(0).tolist(),
        "min": actions.min(0).tolist(),
        "q01": np.quantile(actions, 0.01, axis=0).tolist(),
        "q99": np.quantile(actions, 0.99, axis=0).tolist(),
        "mask": mask_arr.tolist(),
    }
    return {"action": action, "num_transitions": int(actions.shape[0])}


def resolve_unnorm_key(norm_stats: Mapping[str, Any], unnorm_key: str | None) -> str:
    """Pick the dataset key like OpenVLA: None is allowed only when there is exactly one dataset."""
    if not norm_stats:
        raise ValueError("this policy has no norm_stats; pass actions through ActionTokenizer.decode instead")
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise ValueError(f"policy has several norm_stats; pass unnorm_key, one of {sorted(norm_stats)}")
        return next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise ValueError(f"unknown unnorm_key {unnorm_key!r}; choose from {sorted(norm_stats)}")
    return unnorm_key

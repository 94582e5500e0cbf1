"""Configuration of the OpenVLA-architecture policy: vision tower(s) -> projector MLP -> Llama causal LM.

Two named configs share one model class (see `load_policy`):
  * "openvla-7b": DINOv2 ViT-L/14 (+4 registers) + SigLIP So400m/14 at 224 px, 2176 -> 8704 -> 4096 ->
    4096 GELU projector, Llama-2-7B with 32064 embedding rows, 7 action dims (OpenVLA, arXiv 2406.09246).
  * "tiny": the same structure at ~1 M parameters for Meta-World on CPU (64 px ViT, 4-layer 128-d Llama).

    image (B,H,W,3) uint8 --resize/normalise per tower--> (B, 3*T, S, S)
        -> tower_t: second-to-last ViT block, patch tokens only -> concat over towers (B, P, sum_t d_t)
        -> projector -> (B, P, H_llm)
    Llama input: [BOS] [P patch embeddings] [prompt tokens] [empty token] [a_1 .. a_D]
        -> logits of a_d read at the position before it, restricted to the last 256 vocabulary ids.

This module has no torch import; `LLMConfig.to_llama_config` imports transformers lazily.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "OPENVLA_PROMPT",
    "SIMPLER_ENV_PROMPT",
    "PROMPT_TEMPLATES",
    "VisionTowerConfig",
    "LLMConfig",
    "VLAConfig",
    "openvla_7b_config",
    "tiny_config",
    "NAMED_CONFIGS",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
"""OpenVLA's prompt; the instruction is lower-cased and stripped before formatting."""
SIMPLER_ENV_PROMPT = "{instruction}"
"""SimplerEnv's OpenVLA wrapper passes the bare instruction to the processor (openvla_model.py)."""
PROMPT_TEMPLATES = {"openvla": OPENVLA_PROMPT, "simpler-env": SIMPLER_ENV_PROMPT}
"""Named prompts accepted by VLAConfig.prompt_template: "openvla" = OpenVLA's training prompt (its
finetune.py and predict_action), "simpler-env" = the bare instruction SimplerEnv's OpenVLA wrapper sends."""

PROJECTOR_TYPES = ("gelu-mlp", "fused-gelu-mlp")
RESIZE_STRATEGIES = ("resize-naive",)


@dataclass
class VisionTowerConfig:
    """One timm ViT tower. Patch tokens come from its second-to-last block, without the final norm."""

    timm_id: str
    """timm model name, e.g. "vit_large_patch14_reg4_dinov2.lvd142m" (the ".tag" part is ignored)."""
    image_size: int
    """Square input resolution in pixels (the policy resizes observations to it)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel normalisation mean applied to [0, 1] pixels."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel normalisation std applied to [0, 1] pixels."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides passed to timm.create_model (embed_dim, depth, num_heads, ...); empty = timm's own."""
    act_layer: str | None = None
    """OpenVLA's timm_override_act_layers entry (None keeps the timm default)."""

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean/std need 3 values, got {self.mean} / {self.std}")
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)


@dataclass
class LLMConfig:
    """Llama decoder sizes. Defaults are transformers' LlamaConfig defaults (= Llama-2-7B, but rms eps 1e-6),
    which is what OpenVLA's config.json gets, since its text_config only names vocab_size and pad_token_id."""

    vocab_size: int = 32000
    """Embedding / LM-head rows (OpenVLA: 32000 + pad_to_multiple_of 64 = 32064)."""
    hidden_size: int = 4096
    """Model width."""
    intermediate_size: int = 11008
    """SwiGLU MLP width."""
    num_hidden_layers: int = 32
    """Decoder layers."""
    num_attention_heads: int = 32
    """Query heads."""
    num_key_value_heads: int | None = None
    """Key/value heads (None = num_attention_heads, i.e. no GQA)."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """RoPE base."""
    max_position_embeddings: int = 2048
    """Longest sequence (OpenVLA: llm_max_length 2048)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads"
            )

    def to_llama_config(self, pad_token_id: int | None = None, attn_implementation: str = "sdpa"):
        """The transformers LlamaConfig for these sizes (bias-free, untied head, SiLU, like Llama-2)."""
        from transformers import LlamaConfig

        cfg = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            pad_token_id=pad_token_id,
            tie_word_embeddings=False,
        )
        cfg._attn_implementation = attn_implementation
        return cfg


@dataclass
class VLAConfig:
    """Full policy config; saved as JSON beside each project checkpoint."""

    name: str
    """Config name ("openvla-7b", "tiny", or "openvla-checkpoint" for a loaded OpenVLA dir)."""
    towers: list[VisionTowerConfig]
    """One tower, or two fused towers whose patch features are concatenated channel-wise."""
    llm: LLMConfig
    """Language-model sizes."""
    action_dim: int
    """D, action tokens per step (7 for the Google robot, 4 for Meta-World)."""
    n_action_bins: int = 256
    """Action bins = action ids at the end of the tokenizer vocabulary."""
    pad_to_multiple_of: int = 0
    """Embedding rows beyond the tokenizer vocabulary (OpenVLA: 64); action ids end just below them."""
    pad_token_id: int = 0
    """Id used for padding (never attended to)."""
    projector: str = "gelu-mlp"
    """"gelu-mlp" (fc1, fc2: d -> H -> H) or "fused-gelu-mlp" (fc1..fc3: d -> 4d -> H -> H) as OpenVLA."""
    image_resize_strategy: str = "resize-naive"
    """Only OpenVLA's "resize-naive" (squash to the tower size, bicubic, antialiased) is implemented."""
    prompt_template: str = OPENVLA_PROMPT
    """Prompt with an {instruction} field, or a PROMPT_TEMPLATES name ("openvla", "simpler-env") that is
    replaced by its template (the saved config holds the template). Either way the processor appends
    Llama's empty "▁" token, as OpenVLA's predict_action does."""
    norm_stats: dict[str, Any] = field(default_factory=dict)
    """OpenVLA-layout action statistics per dataset key ({key: {"action": {"q01", "q99", "mask", ...}}})."""
    attn_implementation: str = "sdpa"
    """transformers attention backend for the Llama decoder."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.towers) <= 2:
            raise ValueError(f"need 1 or 2 vision towers, got {len(self.towers)}")
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        if self.projector not in PROJECTOR_TYPES:
            raise ValueError(f"unknown projector {self.projector!r}; choose from {PROJECTOR_TYPES}")
        if self.image_resize_strategy not in RESIZE_STRATEGIES:
            raise ValueError(
                f"image_resize_strategy {self.image_resize_strategy!r} not supported "
                f"(only {RESIZE_STRATEGIES})"
            )
        self.prompt_template = PROMPT_TEMPLATES.get(self.prompt_template, self.prompt_template)
        if "{instruction}" not in self.prompt_template:
            raise ValueError(
                f"prompt_template must name one of {sorted(PROMPT_TEMPLATES)} or contain an {{instruction}} "
                f"field, got {self.prompt_template!r}"
            )
        if self.vocab_size <= self.n_action_bins:
            raise ValueError(
                f"vocabulary ({self.vocab_size}) must be larger than n_action_bins ({self.n_action_bins})"
            )
        for key, stats in self.norm_stats.items():
            dim = len(stats.get("action", stats)["q01"])
            if dim != self.action_dim:
                raise ValueError(
                    f"norm_stats[{key!r}] has action dim {dim}, config action_dim is {self.action_dim}"
                )

    @property
    def use_fused_vision_backbone(self) -> bool:
        return len(self.towers) == 2

    @property
    def vocab_size(self) -> int:
        """Tokenizer vocabulary (without pad rows); action ids are its last n_action_bins ids."""
        return self.llm.vocab_size - self.pad_to_multiple_of

    @property
    def action_token_offset(self) -> int:
        return self.vocab_size - self.n_action_bins

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAConfig":
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown VLAConfig fields {sorted(unknown)}")
        data["towers"] = [VisionTowerConfig(**t) for t in data["towers"]]
        data["llm"] = LLMConfig(**data["llm"])
        return cls(**data)


def openvla_7b_config(**overrides: Any) -> VLAConfig:
    """OpenVLA-7B (dinosiglip-vit-so-224px + llama2-7b-pure), fractal statistics included."""
    from .action_tokenizer import FRACTAL_NORM_STATS, GOOGLE_ROBOT_UNNORM_KEY

    cfg = VLAConfig(
        name="openvla-7b",
        towers=[
            VisionTowerConfig("vit_large_patch14_reg4_dinov2.lvd142m", 224, IMAGENET_MEAN, IMAGENET_STD),
            VisionTowerConfig("vit_so400m_patch14_siglip_224", 224, SIGLIP_MEAN, SIGLIP_STD),
        ],
        llm=LLMConfig(vocab_size=32064),
        action_dim=7,
        pad_to_multiple_of=64,
        pad_token_id=32000,
        projector="fused-gelu-mlp",
        norm_stats={GOOGLE_ROBOT_UNNORM_KEY: copy.deepcopy(FRACTAL_NORM_STATS)},
    )
    return apply_overrides(cfg, overrides)


TINY_TEXT_IDS = 64
"""Non-action ids in the tiny word-level vocabulary (specials + words + spare slots)."""


def tiny_config(**overrides: Any) -> VLAConfig:
    """~1 M-parameter debug/CPU config: 64 px ViT (patch 16, 128-d), 4-layer 128-d Llama, 64 + 256 ids.

    `fused=True` adds a second ViT tower with SigLIP-style normalisation (OpenVLA's fused layout);
    `image_size` (default 64, a multiple of `patch_size`) sets the towers' input resolution; `patch_size`
    (default 16) trades compute for spatial resolution (64 px / 8 px patches = 64 image tokens);
    `vit_depth` (default 2) is the number of ViT blocks, of which all but the last feed the features.
    """
    fused = bool(overrides.pop("fused", False))
    size = int(overrides.pop("image_size", 64))
    patch = int(overrides.pop("patch_size", 16))
    depth = int(overrides.pop("vit_depth", 2))
    if patch < 1 or size % patch or depth < 2:
        raise ValueError(f"tiny needs image_size divisible by patch_size and vit_depth >= 2, got "
                         f"image_size={size}, patch_size={patch}, vit_depth={depth}")
    vit = dict(embed_dim=128, depth=depth, num_heads=4, mlp_ratio=2.0, patch_size=patch)
    towers = [VisionTowerConfig("vit_small_patch16_224", size, IMAGENET_MEAN, IMAGENET_STD, dict(vit))]
    if fused:
        towers.append(
            VisionTowerConfig(
                "vit_small_patch16_224",
                size,
                SIGLIP_MEAN,
                SIGLIP_STD,
                dict(vit, class_token=False, global_pool="avg"),
            )
        )
    cfg = VLAConfig(
        name="tiny",
        towers=towers,
        llm=LLMConfig(
            vocab_size=TINY_TEXT_IDS + 256,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=256,
        ),
        action_dim=4,
        pad_token_id=0,
        projector="fused-gelu-mlp" if fused else "gelu-mlp",
    )
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: VLAConfig, overrides: dict[str, Any]) -> VLAConfig:
    known = {f.name for f in dataclasses.fields(VLAConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown config overrides {sorted(unknown)}; valid: {sorted(known)}")
    if (
        "action_dim" in overrides
        and "norm_stats" not in overrides
        and overrides["action_dim"] != cfg.action_dim
    ):
        if cfg.norm_stats:
            raise ValueError(
                f"action_dim={overrides['action_dim']} conflicts with the policy's norm_stats "
                f"(dim {cfg.action_dim}); pass matching norm_stats too"
            )
    data = cfg.to_dict()
    for key, value in overrides.items():
        data[key] = _plain(value)
    return VLAConfig.from_dict(data)


def _plain(value: Any) -> Any:
    """Dataclasses (also inside lists) -> dicts, so overrides may be given either way."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


NAMED_CONFIGS = {"openvla-7b": openvla_7b_config, "tiny": tiny_config}
"""Config factories by name (load_policy's first argument)."""

"""The OpenVLA architecture as one nn.Module, on current timm/transformers, without remote code.

Prismatic/OpenVLA (Kim et al. 2024, arXiv 2406.09246): timm ViT tower(s) -> GELU MLP projector -> Llama-2.
The parameter names equal OpenVLA's published checkpoint names (read in openvla/openvla
prismatic/extern/hf/modeling_prismatic.py): `vision_backbone.featurizer.*` and
`vision_backbone.fused_featurizer.*` (timm names, LayerScale `gamma` renamed `scale_factor`),
`projector.fc1/fc2/fc3.*`, `language_model.model.*`, `language_model.lm_head.*`.

Sequence layout (one row):  [BOS] [patch_1 .. patch_P] [pad ..] [prompt ..] [▁] [a_1 .. a_{D-1}]
Pads (from left-padding prompts of different lengths) sit after the patches; they are masked out and the RoPE
position ids skip them, so each row sees exactly the positions 0..T-1 of its own unpadded sequence, as in
OpenVLA's batch-size-1 forward.

Action distribution (a deliberate choice): the softmax over the logits of the 256 action ids only. OpenVLA's
`generate` takes the argmax over the whole vocabulary; for a trained policy the action ids dominate, and the
restricted softmax makes log-probabilities, KL and sampling well-defined over the action space alone. Greedy
decoding can follow OpenVLA's `predict_action` exactly (`greedy_over="vocabulary"`): the argmax over every
logit, fed back as the next token, an id outside the action range decoded by OpenVLA's clip.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from .action_tokenizer import ActionTokenizer, resolve_unnorm_key, unnormalize_actions
from .configuration_vla import VisionTowerConfig, VLAConfig
from .processing_vla import VLAProcessor
from .saving import save_policy

__all__ = ["VLAPolicy", "VisionBackbone", "Projector", "create_tower", "LayerScaleFactor"]
GREEDY_SCOPES = ("actions", "vocabulary")
"""What greedy decoding takes the argmax over: the 256 action logits, or the whole vocabulary (OpenVLA)."""


class LayerScaleFactor(nn.Module):
    """timm's LayerScale with its parameter named `scale_factor`, as in OpenVLA's checkpoints (transformers
    used to rename parameters called `gamma` on load, so OpenVLA patched the name)."""

    def __init__(self, gamma: torch.Tensor):
        super().__init__()
        self.scale_factor = nn.Parameter(gamma.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


def _rename_layerscale(model: nn.Module) -> None:
    from timm.models.vision_transformer import LayerScale

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LayerScale):
                setattr(parent, child_name, LayerScaleFactor(child.gamma))


def create_tower(cfg: VisionTowerConfig) -> nn.Module:
    """A randomly initialised timm ViT without classifier, sized by `cfg` (weights are loaded afterwards)."""
    import timm

    base_id = cfg.timm_id.split(".")[0]  # drop the pretrained tag: weights come from our checkpoint
    if not timm.is_model(base_id):
        raise ValueError(f"unknown timm model {cfg.timm_id!r}")
    kwargs = dict(pretrained=False, num_classes=0, img_size=cfg.image_size, **cfg.timm_kwargs)
    if cfg.act_layer is not None:
        kwargs["act_layer"] = cfg.act_layer
    tower = timm.create_model(base_id, **kwargs)
    if len(tower.blocks) < 2:
        raise ValueError(f"tower {cfg.timm_id!r} needs >= 2 blocks (features come from the second-to-last)")
    _rename_layerscale(tower)
    return tower


class VisionBackbone(nn.Module):
    """One tower, or two fused towers on a channel-stacked (B, 6, S, S) input split 3 + 3."""

    def __init__(self, towers: Sequence[VisionTowerConfig]):
        super().__init__()
        self.featurizer = create_tower(towers[0])
        self.embed_dim = self.featurizer.embed_dim
        self.use_fused_vision_backbone = len(towers) == 2
        if self.use_fused_vision_backbone:
            self.fused_featurizer = create_tower(towers[1])
            self.embed_dim += self.fused_featurizer.embed_dim

    def unused_prefixes(self) -> tuple[str, ...]:
        """Module names (relative to the policy) that the second-to-last-block features never use."""
        towers = ["featurizer"] + (["fused_featurizer"] if self.use_fused_vision_backbone else [])
        out = []
        for name in towers:
            tower = getattr(self, name)
            out += [
                f"vision_backbone.{name}.blocks.{len(tower.blocks) - 1}",
                f"vision_backbone.{name}.norm",
                f"vision_backbone.{name}.attn_pool",
                f"vision_backbone.{name}.head",
                f"vision_backbone.{name}.fc_norm",
            ]
        return tuple(out)

    @staticmethod
    def _patches(tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        # Second-to-last block output, prefix (cls/register) tokens dropped, no final norm: OpenVLA's
        # get_intermediate_layers(n={len(blocks) - 2}). That call also runs the last block and drops its output;
        # stop_early skips it (the same features; a ViT block less per image: half the tiny policy's towers).
        (patches,) = tower.forward_intermediates(pixels, indices=[len(tower.blocks) - 2], stop_early=True,
                                                 output_fmt="NLC", intermediates_only=True)
        return patches  # (B, P, d)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.use_fused_vision_backbone:
            return self._patches(self.featurizer, pixel_values)  # (B, P, d)
        img, img_fused = torch.split(pixel_values, [3, 3], dim=1)  # 2 x (B, 3, S, S)
        patches = self._patches(self.featurizer, img)  # (B, P, d1)
        patches_fused = self._patches(self.fused_featurizer, img_fused)  # (B, P, d2)
        return torch.cat([patches, patches_fused], dim=2)  # (B, P, d1 + d2)


class Projector(nn.Module):
    """OpenVLA's projector: "gelu-mlp" d -> H -> H, or "fused-gelu-mlp" d -> 4d -> H -> H (exact GELU)."""

    def __init__(self, kind: str, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = kind == "fused-gelu-mlp"
        if self.fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(patches)))
        return self.fc3(F.gelu(x)) if self.fused else x  # (B, P, H)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' LlamaRMSNorm, operation for operation (variance in fp32, the weight applied last)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding x * cos + rotate_half(x) * sin, without materialising rotate_half: (B, h, T, d)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos[..., :half] - x2 * sin[..., :half], x2 * cos[..., half:] + x1 * sin[..., half:]), -1)


def cached_decode(llm: nn.Module, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                  cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None, last_only: bool = False):
    """Inference-only Llama decoder with a key/value cache: the same computation as transformers' LlamaModel.

    transformers' decoder spends most of a small model's decoding time in its own plumbing (cache objects,
    mask builders, keyword dispatch): for the ~1 M-parameter policy a one-token step costs ~2.5 ms there and
    ~1.4 ms here at batch 16. The maths is LlamaModel's, operation for operation, calling the layers' own
    projection modules (so LoRA adapters apply), and the hidden states are bit-identical in fp32
    (tests/test_policy.py). Sampling only: training goes through ``VLAPolicy._decode``, where DDP/FSDP hooks
    and gradient checkpointing see every decoder layer.

    embeds (B, T, H) are the new tokens at RoPE ``positions`` (B, T); ``mask`` (B, T_past + T) marks real
    tokens (0 = pad) of the whole sequence; ``cache`` holds each layer's (keys, values) of the T_past earlier
    tokens. Returns (hidden states after the final norm (B, T, H), the cache including the new tokens).

    ``last_only``: return only the last position's hidden state (B, 1, H). The last layer then computes keys and
    values for every position (the cache needs them) but its query, attention output and MLP for the last
    position alone: a quarter less work for the tiny policy's prefill. Equal to the full computation up to
    float rounding (the kernels see other shapes), not bit for bit.
    """
    config = llm.config
    batch, length, width = embeds.shape
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or width // n_heads
    past = 0 if cache is None else cache[0][0].shape[2]
    freqs = positions[..., None].float() * llm.rotary_emb.inv_freq  # (B, T, d/2)
    angles = torch.cat((freqs, freqs), -1)[:, None]  # (B, 1, T, d)
    scaling = llm.rotary_emb.attention_scaling
    cos, sin = (angles.cos() * scaling).to(embeds.dtype), (angles.sin() * scaling).to(embeds.dtype)
    attn_mask = None
    if not bool(mask.all()):  # pads: a key must be real and not in the future
        causal = torch.ones(length, past + length, dtype=torch.bool, device=mask.device).tril(past)
        attn_mask = mask.bool()[:, None, None, :] & causal  # (B, 1, T, T_past + T)
    x, new_cache = embeds, []
    for index, layer in enumerate(llm.layers):
        attn = layer.self_attn
        h = _rms_norm(layer.input_layernorm, x)
        k = attn.k_proj(h).view(batch, length, n_kv, head_dim).transpose(1, 2)  # (B, h_kv, T, d)
        v = attn.v_proj(h).view(batch, length, n_kv, head_dim).transpose(1, 2)  # (B, h_kv, T, d)
        k = _rotate(k, cos, sin)
        if cache is not None:
            k, v = torch.cat([cache[index][0], k], 2), torch.cat([cache[index][1], v], 2)  # (B, h_kv, T_all, d)
        new_cache.append((k, v))
        layer_mask, queries = attn_mask, length
        if last_only and index == len(llm.layers) - 1 and length > 1:
            # The last position's query sees every key: no causal mask, only the pads' (if any).
            x, h, queries = x[:, -1:], h[:, -1:], 1
            layer_mask = None if attn_mask is None else attn_mask[:, :, -1:]  # (B, 1, 1, T_all)
        q = attn.q_proj(h).view(batch, queries, n_heads, head_dim).transpose(1, 2)  # (B, h, T_q, d)
        q = _rotate(q, cos[:, :, -queries:], sin[:, :, -queries:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layer_mask, scale=attn.scaling,
                                             is_causal=layer_mask is None and queries > 1,
                                             enable_gqa=n_kv != n_heads)  # (B, h, T_q, d)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, queries, n_heads * head_dim))
        h = _rms_norm(layer.post_attention_layernorm, x)
        mlp = layer.mlp
        x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
    return _rms_norm(llm.norm, x), new_cache


class VLAPolicy(nn.Module):
    """Vision-language-action policy; see the module docstring for the layout and docs/ARCHITECTURE.md."""

    def __init__(self, config: VLAConfig, tokenizer: Tokenizer):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        self.processor = VLAProcessor(config, tokenizer)
        self.vision_backbone = VisionBackbone(config.towers)
        self.projector = Projector(config.projector, self.vision_backbone.embed_dim, config.llm.hidden_size)
        llama_config = config.llm.to_llama_config(config.pad_token_id, config.attn_implementation)
        self.language_model = LlamaForCausalLM(llama_config)
        self.action_tokenizer = ActionTokenizer(config.vocab_size, config.n_action_bins)
        self.lora_config: dict | None = None

    # ---- properties ----
    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def action_token_offset(self) -> int:
        return self.config.action_token_offset

    @property
    def n_action_bins(self) -> int:
        return self.config.n_action_bins

    @property
    def norm_stats(self) -> dict:
        return self.config.norm_stats

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- sequence building ----
    def _check_batch(self, images, instructions: Sequence[str]) -> int:
        if isinstance(instructions, str):
            raise ValueError("instructions must be a list of str, got a single str")
        n_images = images.shape[0] if getattr(images, "ndim", 0) == 4 else 1
        if n_images != len(instructions):
            raise ValueError(f"{n_images} images but {len(instructions)} instructions")
        return n_images

    def _prefix(self, images, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, T0, H) and mask (B, T0) of [BOS][patches][padded prompt ... ▁]."""
        batch = self._check_batch(images, instructions)
        pixels = self.processor.pixel_values(images, self.device, self.dtype)  # (B, 3*n_towers, S, S)
        patches = self.projector(self.vision_backbone(pixels))  # (B, P, H)
        text_ids, text_mask = self.processor.text_inputs(instructions, self.device)  # (B, L)
        embed = self.language_model.get_input_embeddings()
        bos = torch.full((batch, 1), self.processor.bos_id, dtype=torch.long, device=self.device)
        embeds = torch.cat([embed(bos), patches, embed(text_ids)], dim=1)  # (B, 1 + P + L, H)
        ones = torch.ones(batch, 1 + patches.shape[1], dtype=torch.long, device=self.device)
        return embeds, torch.cat([ones, text_mask], dim=1)  # (B, T0, H), (B, T0)

    def _decode(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor):
        """transformers' Llama decoder on embeddings, without a cache (teacher-forced training and scoring, where
        DDP/FSDP hooks and gradient checkpointing act on each decoder layer); a mask without pads is dropped so
        SDPA can use its causal kernel. Returns the hidden states (B, T, H) and None (no cache)."""
        out = self.language_model.model(
            inputs_embeds=embeds,
            attention_mask=None if bool(mask.all()) else mask,
            position_ids=positions,
            use_cache=False,
        )
        return out.last_hidden_state, None  # (B, T, H)

    def _action_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) -> logits of the 256 action ids (..., 256)."""
        lm_head = self.language_model.lm_head
        lo, hi = self.action_token_offset, self.action_token_offset + self.n_action_bins
        if type(lm_head) is nn.Linear:  # slice the weight: 256 rows instead of the whole vocabulary
            bias = None if lm_head.bias is None else lm_head.bias[lo:hi]
            return F.linear(hidden, lm_head.weight[lo:hi], bias)
        return lm_head(hidden)[..., lo:hi]

    def _check_tokens(self, action_tokens, batch: int) -> torch.Tensor:
        tokens = torch.as_tensor(
            np.asarray(action_tokens) if not torch.is_tensor(action_tokens) else action_tokens
        )
        tokens = tokens.to(self.device, torch.long)
        if tokens.shape != (batch, self.action_dim):
            raise ValueError(
                f"action_tokens must have shape ({batch}, {self.action_dim}), got {tuple(tokens.shape)}"
            )
        lo = self.action_token_offset
        if bool(((tokens < lo) | (tokens >= lo + self.n_action_bins)).any()):
            raise ValueError(f"action_tokens must be vocabulary ids in [{lo}, {lo + self.n_action_bins - 1}]")
        return tokens

    # ---- policy API ----
    def forward(self, images, instructions: Sequence[str], action_tokens, full_vocabulary: bool = False) -> torch.Tensor:
        """Teacher-forced action logits (B, D, 256), as ``action_logits``; with ``full_vocabulary`` the whole
        vocabulary's logits at the D action tokens and the end-of-sequence token, as ``sequence_logits``.

        Training goes through ``policy(...)`` rather than the methods so that wrappers that hook the root
        module's forward (DDP gradient sync, FSDP parameter unsharding) see every step.
        """
        if full_vocabulary:
            return self.sequence_logits(images, instructions, action_tokens)
        return self.action_logits(images, instructions, action_tokens)

    def action_logits(self, images, instructions: Sequence[str], action_tokens) -> torch.Tensor:
        """Teacher-forced logits (B, D, 256); index j is vocabulary id action_token_offset + j."""
        tokens = self._check_tokens(action_tokens, self._check_batch(images, instructions))  # (B, D)
        embeds, mask = self._prefix(images, instructions)  # (B, T0, H), (B, T0)
        fed = self.language_model.get_input_embeddings()(tokens[:, :-1])  # (B, D-1, H)
        embeds = torch.cat([embeds, fed], dim=1)  # (B, T0 + D - 1, H)
        mask = torch.cat([mask, torch.ones_like(tokens[:, :-1])], dim=1)  # (B, T0 + D - 1)
        hidden, _ = self._decode(embeds, mask, self.processor.pad_mask_positions(mask))
        return self._action_head(hidden[:, -self.action_dim :])  # (B, D, 256)

    def log_prob(self, images, instructions: Sequence[str], action_tokens) -> torch.Tensor:
        """Sum over the D tokens of log softmax(action logits) at the given tokens: (B,)."""
        logits = self.action_logits(images, instructions, action_tokens).float()  # (B, D, 256)
        index = (self._check_tokens(action_tokens, logits.shape[0]) - self.action_token_offset).unsqueeze(-1)
        return F.log_softmax(logits, dim=-1).gather(-1, index).squeeze(-1).sum(-1)  # (B,)

    def sequence_logits(self, images, instructions: Sequence[str], action_tokens) -> torch.Tensor:
        """Teacher-forced logits over the whole vocabulary (B, D + 1, V) at the positions openvla's
        finetune.py puts its loss on: rows 0..D-1 predict the D action tokens, row D the end-of-sequence
        token (``processor.eos_id``) after them. V = the LM head's rows (pad rows included, as OpenVLA's).
        """
        tokens = self._check_tokens(action_tokens, self._check_batch(images, instructions))  # (B, D)
        embeds, mask = self._prefix(images, instructions)  # (B, T0, H), (B, T0)
        fed = self.language_model.get_input_embeddings()(tokens)  # (B, D, H): all D tokens, EOS follows
        embeds = torch.cat([embeds, fed], dim=1)  # (B, T0 + D, H)
        mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)  # (B, T0 + D)
        hidden, _ = self._decode(embeds, mask, self.processor.pad_mask_positions(mask))
        return self.language_model.lm_head(hidden[:, -(self.action_dim + 1) :])  # (B, D + 1, V)

    def final_hidden_state(self, images, instructions: Sequence[str]) -> torch.Tensor:
        """The LLM's last-layer hidden state, after the final RMSNorm (LlamaModel's last_hidden_state), at the
        position that predicts the first action token (the prompt's closing "▁"): (B, H).

        The action head maps it to the first action token's logits; the representation of Table 1's
        activation-change predictors (razor_robot/measure/predictors.py).
        """
        embeds, mask = self._prefix(images, instructions)  # (B, T0, H), (B, T0)
        hidden, _ = self._decode(embeds, mask, self.processor.pad_mask_positions(mask))  # (B, T0, H)
        return hidden[:, -1]  # (B, H): pads sit before the prompt, so -1 is every row's "▁"

    def sample_actions(
        self,
        images,
        instructions: Sequence[str],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
        uniforms=None,
        greedy_over: str = "actions",
    ):
        """Autoregressive action ids (B, D) with a KV cache; greedy at temperature 0.

        Greedy decoding takes the argmax over the 256 action logits (``greedy_over="actions"``) or, as OpenVLA's
        ``predict_action`` (``generate`` with greedy search), over the whole vocabulary (``"vocabulary"``): then
        an id may fall outside the action range, and ``tokens_to_actions`` decodes it with OpenVLA's clip.

        Sampling draws from ``generator`` (torch.multinomial), or, given ``uniforms`` (B, D) in [0, 1), takes
        for token d of row b the bin where the CDF of softmax(logits / T) first exceeds uniforms[b, d]
        (inverse-CDF sampling): each row's tokens then depend on its own numbers only, not on the batch.
        With return_logits=True also returns the (B, D, 256) action logits seen at each step (fp32).
        """
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if uniforms is not None:
            uniforms = torch.as_tensor(uniforms, dtype=torch.float64)
            if uniforms.shape != (self._check_batch(images, instructions), self.action_dim):
                raise ValueError(f"uniforms must have shape (B, {self.action_dim}), got {tuple(uniforms.shape)}")
        if greedy_over not in GREEDY_SCOPES:
            raise ValueError(f"greedy_over must be one of {', '.join(GREEDY_SCOPES)}, got {greedy_over!r}")
        vocabulary = temperature == 0 and greedy_over == "vocabulary"
        tokens, logits = self._sample(images, instructions, float(temperature), generator, uniforms, vocabulary)
        tokens, logits = tokens.clone(), logits.clone()  # ordinary tensors, usable in autograd code later
        return (tokens, logits) if return_logits else tokens

    @torch.inference_mode()
    def _sample(self, images, instructions, temperature, generator, uniforms=None,
                vocabulary: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = self._prefix(images, instructions)  # (B, T0, H), (B, T0)
        positions = self.processor.pad_mask_positions(mask)  # (B, T0)
        hidden, cache = cached_decode(self.language_model.model, embeds, positions, mask, last_only=True)
        embed = self.language_model.get_input_embeddings()
        steps_tokens, steps_logits = [], []
        for step in range(self.action_dim):
            if vocabulary:  # OpenVLA's greedy generate: the argmax over every logit (padding rows included)
                every = self.language_model.lm_head(hidden[:, -1]).float()  # (B, V)
                steps_tokens.append(every.argmax(-1))
                logits = every[:, self.action_token_offset:self.action_token_offset + self.n_action_bins]
            else:
                logits = self._action_head(hidden[:, -1]).float()  # (B, 256)
                u = None if uniforms is None else uniforms[:, step]  # (B,)
                index = self._choose(logits, temperature, generator, u)  # (B,)
                steps_tokens.append(index + self.action_token_offset)
            steps_logits.append(logits)
            if step == self.action_dim - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, T + 1)
            positions = positions[:, -1:] + 1  # (B, 1)
            hidden, cache = cached_decode(self.language_model.model, embed(steps_tokens[-1][:, None]), positions,
                                          mask, cache)
        return torch.stack(steps_tokens, 1), torch.stack(steps_logits, 1)  # (B, D), (B, D, 256)

    @staticmethod
    def _choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy or softmax(logits / T) sampling over the 256 action bins: (B, 256) -> (B,)."""
        if temperature == 0:
            return logits.argmax(-1)
        probs = F.softmax(logits / temperature, dim=-1)
        if uniforms is not None:
            cdf = probs.double().cumsum(-1)  # (B, K)
            # First bin whose CDF exceeds u * total: never a zero-probability bin, never past the last bin.
            target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
            return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)
        if generator is not None and generator.device != probs.device:
            return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def tokens_to_actions(self, tokens, unnorm_key: str | None = None) -> np.ndarray:
        """Action ids (B, D) -> continuous actions (B, D) float64, un-normalised with norm_stats[unnorm_key].

        A policy without norm_stats returns the normalised [-1, 1] bin centres.
        """
        tokens = tokens.detach().cpu().numpy() if torch.is_tensor(tokens) else np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.action_dim:
            raise ValueError(f"tokens must have shape (B, {self.action_dim}), got {tokens.shape}")
        normalized = self.action_tokenizer.decode(tokens)  # (B, D)
        if not self.norm_stats and unnorm_key is None:
            return normalized
        key = resolve_unnorm_key(self.norm_stats, unnorm_key)
        return unnormalize_actions(normalized, self.norm_stats[key])

    def set_norm_stats(self, unnorm_key: str, stats: dict) -> None:
        """Add or replace one dataset's action statistics (OpenVLA layout, e.g. from compute_norm_stats)."""
        dim = len(stats.get("action", stats)["q01"])
        if dim != self.action_dim:
            raise ValueError(
                f"norm stats for {unnorm_key!r} have action dim {dim}, policy has {self.action_dim}"
            )
        self.config.norm_stats[unnorm_key] = stats

    def predict_action(self, image, instruction: str, unnorm_key: str | None = None) -> np.ndarray:
        """One uint8 (H, W, 3) image + instruction -> greedy continuous action (D,), like OpenVLA's."""
        image = image if getattr(image, "ndim", 0) == 4 else image[None]
        tokens = self.sample_actions(image, [instruction], temperature=0.0)  # (1, D)
        return self.tokens_to_actions(tokens, unnorm_key)[0]

    # ---- training hooks ----
    def enable_lora(
        self,
        r: int = 32,
        alpha: int = 16,
        target_modules: str | Sequence[str] = "all-linear",
        dropout: float = 0.0,
        target: str | Sequence[str] | None = None,
    ) -> "VLAPolicy":
        """Inject LoRA adapters (peft) and freeze every other weight; `target` is an alias of target_modules.

        "all-linear" = every nn.Linear of towers, projector and LLM except the LM head (peft's convention) and
        the tower parts the features never pass through (last block, attention pool), whose adapters would
        get no gradient.
        """
        from peft import LoraConfig, inject_adapter_in_model

        if self.lora_config is not None:
            raise ValueError("LoRA is already enabled on this policy")
        target_modules = target if target is not None else target_modules
        if target_modules == "all-linear":
            unused = ("language_model.lm_head",) + self.vision_backbone.unused_prefixes()
            names = [
                n
                for n, m in self.named_modules()
                if isinstance(m, nn.Linear) and not any(n == u or n.startswith(u + ".") for u in unused)
            ]
        elif isinstance(target_modules, str):
            raise ValueError(
                f"target_modules must be 'all-linear' or a list of module names, got {target_modules!r}"
            )
        else:
            names = list(target_modules)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
        inject_adapter_in_model(config, self)
        for name, param in self.named_parameters():
            param.requires_grad = "lora_" in name
            if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
                # fp32 adapters on a half-precision base: AdamW steps of lr ~1e-6 vanish in bf16 rounding
                param.data = param.data.float()
        self.lora_config = dict(r=r, alpha=alpha, target_modules=names, dropout=dropout)
        return self

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block the policy computes with its base weights (adapters bypassed, no weight copy)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.modules() if isinstance(m, BaseTunerLayer)]
        if not layers:
            raise ValueError("disable_adapter() needs LoRA adapters; call enable_lora() first")
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in the backward pass (needed to fine-tune 7B on one GPU)."""
        llm = self.language_model
        # transformers 5 renamed the switch; both keep activations out of memory in the same way
        if hasattr(llm, "activation_checkpointing_enable"):
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.vision_backbone.featurizer.set_grad_checkpointing(True)
        if self.vision_backbone.use_fused_vision_backbone:
            self.vision_backbone.fused_featurizer.set_grad_checkpointing(True)

    def save_pretrained(self, directory, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write safetensors weights, config JSON, tokenizer and norm stats (see saving.save_policy)."""
        save_policy(self, directory, state_dict)

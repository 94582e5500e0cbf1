"""Build or load a VLAPolicy: named configs, OpenVLA HF checkpoint dirs, and the project's own checkpoints.

OpenVLA checkpoint dir (e.g. a local copy of openvla/openvla-7b): config.json (OpenVLAConfig fields incl.
norm_stats, timm_model_ids, image_sizes, text_config), model.safetensors.index.json + shards (or one
model.safetensors), tokenizer.json, optionally preprocessor_config.json. Our parameter names equal OpenVLA's,
so the key mapping is the identity once the architecture is sized right; the sizes are read from the tensors
(patch embedding, block count, MLP width, register/class tokens, LLM width/depth/vocab): config.json only
names timm ids and a partial Llama text_config (missing Llama fields take transformers' LlamaConfig defaults,
as OpenVLA's own loader does). Anything that still does not match fails with a one-line ValueError.

Project checkpoint dir (written by `save_policy` / `policy.save_pretrained`): config.json with
"format": "razor-vla/1", model.safetensors, tokenizer.json, norm_stats.json.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from .builtin import is_builtin, resolve_builtin
from .configuration_vla import (
    NAMED_CONFIGS,
    LLMConfig,
    VisionTowerConfig,
    VLAConfig,
    apply_overrides,
)
from .modeling_vla import VLAPolicy, create_tower
from .processing_vla import SPECIAL_TOKENS, TINY_WORDS, build_word_tokenizer
from .saving import PROJECT_CONFIG_NAME, PROJECT_FORMAT, save_policy

__all__ = ["load_policy", "save_policy", "PROJECT_CONFIG_NAME", "read_safetensors_dir"]

"""Project checkpoints use config.json too; its "format" key tells them apart from OpenVLA's."""


def load_policy(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> VLAPolicy:
    """ "tiny" / "openvla-7b" (random init; device="meta" builds without memory), a checkpoint dir, or a shipped
    base "builtin:<name>" (its files checked against its card first, see razor_robot.policies.builtin).

    dtype None = bfloat16 on CUDA, float32 elsewhere. Named-config overrides are VLAConfig fields, plus for
    "tiny": `fused` (two towers), `words` (extra tokenizer words, e.g. task instructions) and `seed` (init).
    """
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    name = str(name_or_path)
    if name in NAMED_CONFIGS:
        return _build_named(name, device, dtype, overrides)
    path = resolve_builtin(name) if is_builtin(name) else Path(name_or_path)
    if not path.exists():
        raise ValueError(
            f"no policy named {name!r} (known: {sorted(NAMED_CONFIGS)}) and no checkpoint at {path}"
        )
    if not path.is_dir():
        raise ValueError(f"checkpoint path {path} is not a directory")
    if not (path / "config.json").exists():
        raise ValueError(f"{path} has no config.json (neither a project nor an OpenVLA checkpoint)")
    raw = json.loads((path / "config.json").read_text())
    if raw.get("format") == PROJECT_FORMAT:
        return _load_project_dir(path, raw, device, dtype, overrides)
    if "timm_model_ids" in raw and "text_config" in raw:
        return _load_openvla_dir(path, raw, device, dtype, overrides)
    raise ValueError(f"{path / 'config.json'} is neither a {PROJECT_FORMAT} nor an OpenVLA config")


# ---- named configs ----
def _build_named(name: str, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> VLAPolicy:
    overrides = dict(overrides)
    words = list(TINY_WORDS) + [
        w for text in overrides.pop("words", ()) for w in re.findall(r"\w+|[^\w\s]+", text)
    ]
    seed = int(overrides.pop("seed", 0))
    config = NAMED_CONFIGS[name](**overrides)
    # The named 7B architecture has no Llama-2 tokenizer here (gated); a word-level one keeps ids consistent.
    n_text = config.vocab_size - config.n_action_bins
    if name == "tiny":  # grow the text ids in steps of 64 when extra words do not fit
        n_needed = len(SPECIAL_TOKENS) + len(set(words) - set(SPECIAL_TOKENS))
        n_text = max(config.vocab_size - config.n_action_bins, -(-n_needed // 64) * 64)
        if n_text != config.vocab_size - config.n_action_bins:
            llm = dataclasses.replace(config.llm, vocab_size=n_text + config.n_action_bins)
            config = apply_overrides(config, {"llm": llm})
    tokenizer = build_word_tokenizer(words, n_text, config.n_action_bins)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        policy = VLAPolicy(config, tokenizer)
    return _finish(policy, device, dtype)


def _finish(policy: VLAPolicy, device: torch.device, dtype: torch.dtype) -> VLAPolicy:
    """Cast parameters to dtype (buffers such as RoPE frequencies stay fp32) and set eval mode. On the meta
    device too: a meta-built replica must have the dtypes of the one whose weights it will receive."""
    for param in policy.parameters():
        param.data = param.data.to(device=device, dtype=dtype)
    policy.language_model.config.dtype = dtype
    return policy.eval()


# ---- loading weights into a meta-built policy ----
def _materialise(
    config: VLAConfig,
    tokenizer,
    tensors: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    lora: dict | None = None,
) -> VLAPolicy:
    with torch.device("meta"):
        policy = VLAPolicy(config, tokenizer)
    if lora is not None:
        policy.enable_lora(
            r=lora["r"], alpha=lora["alpha"], target_modules=lora["target_modules"], dropout=lora["dropout"]
        )
    _check_keys(policy, tensors)
    target = device if device.type != "meta" else torch.device("meta")
    policy.load_state_dict({k: v.to(target, dtype) for k, v in tensors.items()}, strict=True, assign=True)
    rebuild_rotary(policy, target)
    if lora is not None:  # load_state_dict(assign=True) replaces Parameters, so reset the trainable flags
        for pname, param in policy.named_parameters():
            param.requires_grad = "lora_" in pname
    return _finish(policy, device, dtype)


def _check_keys(policy: VLAPolicy, tensors: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint keys do not match the architecture: missing {missing[:3]} "
            f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        )
    wrong = [(k, tuple(tensors[k].shape), s) for k, s in expected.items() if tuple(tensors[k].shape) != s]
    if wrong:
        raise ValueError(
            f"checkpoint shapes do not match the architecture, e.g. {wrong[0]} ({len(wrong)} in all)"
        )


def rebuild_rotary(policy: VLAPolicy, device: torch.device) -> None:
    """RoPE frequencies are non-persistent buffers, absent from checkpoints: recompute them on `device`."""
    for module in policy.language_model.modules():
        for name, child in list(module.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                with torch.device(device):
                    setattr(module, name, type(child)(config=policy.language_model.config))
    if device.type != "meta":
        left = [n for n, b in policy.named_buffers() if b.is_meta]
        if left:
            raise ValueError(f"buffers left uninitialised after loading: {left[:3]}")


def read_safetensors_dir(path: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a dir with model.safetensors.index.json + shards, or one model.safetensors (on CPU).

    meta=True reads only the headers: tensors of the right shapes and dtypes on the meta device, no weights
    (a distributed process that receives its weights from the main one).
    """
    from safetensors.torch import load_file

    if meta:
        load_file = _read_meta  # noqa: F811  (same interface, headers only)
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).exists():
                raise ValueError(f"shard {shard} listed in {index.name} is missing from {path}")
            tensors.update(load_file(str(path / shard)))
        missing = set(weight_map) - set(tensors)
        if missing:
            raise ValueError(f"{len(missing)} tensors listed in {index.name} are absent from the shards")
        return tensors
    single = path / "model.safetensors"
    if not single.exists():
        raise ValueError(f"{path} has no model.safetensors(.index.json)")
    return load_file(str(single))


def _read_meta(filename: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as meta tensors (shape and dtype from its header; nothing is read)."""
    from safetensors import safe_open

    with safe_open(filename, framework="pt", device="cpu") as handle:
        return {key: torch.empty(handle.get_slice(key).get_shape(),
                                 dtype=_SAFETENSORS_DTYPES[handle.get_slice(key).get_dtype()], device="meta")
                for key in handle.keys()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def _read_tokenizer(path: Path):
    from tokenizers import Tokenizer

    file = path / "tokenizer.json"
    if not file.exists():
        raise ValueError(f"{path} has no tokenizer.json (a fast-tokenizer file is needed)")
    return Tokenizer.from_file(str(file))


# ---- project checkpoints ----
def _load_project_dir(
    path: Path, meta: dict[str, Any], device: torch.device, dtype: torch.dtype, overrides: dict
) -> VLAPolicy:
    data = dict(meta["config"])
    stats_file = path / "norm_stats.json"
    data["norm_stats"] = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    config = apply_overrides(VLAConfig.from_dict(data), dict(overrides))
    tensors = read_safetensors_dir(path, meta=device.type == "meta")
    return _materialise(config, _read_tokenizer(path), tensors, device, dtype, meta.get("lora"))


# ---- OpenVLA checkpoints ----
def _load_openvla_dir(
    path: Path, raw: dict[str, Any], device: torch.device, dtype: torch.dtype, overrides: dict
) -> VLAPolicy:
    tensors = read_safetensors_dir(path, meta=device.type == "meta")
    config = apply_overrides(_config_from_openvla(raw, _read_preprocessor(path), tensors), dict(overrides))
    return _materialise(config, _read_tokenizer(path), tensors, device, dtype)


def _read_preprocessor(path: Path) -> dict[str, Any]:
    file = path / "preprocessor_config.json"
    return json.loads(file.read_text()) if file.exists() else {}


def _config_from_openvla(
    raw: dict[str, Any], pre: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> VLAConfig:
    timm_ids = list(raw["timm_model_ids"])
    fused = bool(raw.get("use_fused_vision_backbone", len(timm_ids) == 2))
    if fused != (len(timm_ids) == 2):
        raise ValueError(f"use_fused_vision_backbone={fused} but {len(timm_ids)} timm ids")
    sizes = list(raw.get("image_sizes", [224] * len(timm_ids)))
    acts = list(raw.get("timm_override_act_layers", [None] * len(timm_ids)))
    strategy = pre.get("image_resize_strategy", raw.get("image_resize_strategy", "resize-naive"))
    prefixes = ["vision_backbone.featurizer", "vision_backbone.fused_featurizer"]
    towers = [
        _infer_tower(prefixes[i], timm_ids[i], int(sizes[i]), acts[i], tensors, pre, i)
        for i in range(len(timm_ids))
    ]
    norm_stats = raw.get("norm_stats") or {}
    dims = {len(s.get("action", s)["q01"]) for s in norm_stats.values()}
    if len(dims) > 1:
        raise ValueError(f"norm_stats datasets disagree on the action dim: {sorted(dims)}")
    return VLAConfig(
        name="openvla-checkpoint",
        towers=towers,
        llm=_infer_llm(raw.get("text_config") or {}, tensors),
        action_dim=dims.pop() if dims else 7,
        n_action_bins=int(raw.get("n_action_bins", 256)),
        pad_to_multiple_of=int(raw.get("pad_to_multiple_of", 64)),
        pad_token_id=int(raw.get("pad_token_id", 32000)),
        projector="fused-gelu-mlp" if fused else "gelu-mlp",
        image_resize_strategy=strategy,
        norm_stats=norm_stats,
    )


def _count_blocks(prefix: str, tensors: dict[str, torch.Tensor], part: str) -> int:
    pattern = re.compile(re.escape(prefix) + rf"\.{part}\.(\d+)\.")
    found = {int(m.group(1)) for k in tensors if (m := pattern.match(k))}
    if not found:
        raise ValueError(f"checkpoint has no {prefix}.{part}.* tensors")
    return max(found) + 1


def _infer_tower(
    prefix: str,
    timm_id: str,
    image_size: int,
    act_layer: str | None,
    tensors: dict[str, torch.Tensor],
    pre: dict[str, Any],
    index: int,
) -> VisionTowerConfig:
    """Size a timm tower from the checkpoint tensors, keeping timm's defaults wherever they already match."""
    key = f"{prefix}.patch_embed.proj.weight"
    if key not in tensors:
        raise ValueError(f"checkpoint lacks {key}")
    embed_dim, patch = tensors[key].shape[0], tensors[key].shape[-1]
    depth = _count_blocks(prefix, tensors, "blocks")
    mlp_hidden = tensors[f"{prefix}.blocks.0.mlp.fc1.weight"].shape[0]
    ref_cfg = VisionTowerConfig(timm_id, image_size, act_layer=act_layer)
    with torch.device("meta"):
        ref = create_tower(ref_cfg)
    kwargs: dict[str, Any] = {}
    if embed_dim != ref.embed_dim:
        head_dim = ref.embed_dim // ref.blocks[0].attn.num_heads
        if embed_dim % head_dim:
            raise ValueError(
                f"{prefix}: width {embed_dim} is not a multiple of {timm_id}'s head dim {head_dim}"
            )
        kwargs.update(embed_dim=embed_dim, num_heads=embed_dim // head_dim)
    if depth != len(ref.blocks):
        kwargs["depth"] = depth
    if patch != ref.patch_embed.proj.weight.shape[-1]:
        kwargs["patch_size"] = patch
    if mlp_hidden != ref.blocks[0].mlp.fc1.weight.shape[0] or "embed_dim" in kwargs:
        kwargs["mlp_ratio"] = (mlp_hidden + 0.5) / embed_dim  # timm floors embed_dim * mlp_ratio
    n_reg = tensors[f"{prefix}.reg_token"].shape[1] if f"{prefix}.reg_token" in tensors else 0
    if n_reg != ref.num_reg_tokens:
        kwargs["reg_tokens"] = n_reg
    has_cls = f"{prefix}.cls_token" in tensors
    if has_cls != ref.has_class_token:
        kwargs["class_token"] = has_cls
    if (f"{prefix}.attn_pool.latent" in tensors) != (ref.global_pool == "map"):
        kwargs["global_pool"] = (
            "map" if f"{prefix}.attn_pool.latent" in tensors else ("token" if has_cls else "avg")
        )
    has_ls = f"{prefix}.blocks.0.ls1.scale_factor" in tensors
    if has_ls != (type(ref.blocks[0].ls1).__name__ == "LayerScaleFactor"):
        kwargs["init_values"] = 1e-5 if has_ls else None
    mean = tuple(pre["means"][index]) if "means" in pre else tuple(ref.pretrained_cfg.get("mean", (0.5,) * 3))
    std = tuple(pre["stds"][index]) if "stds" in pre else tuple(ref.pretrained_cfg.get("std", (0.5,) * 3))
    return VisionTowerConfig(timm_id, image_size, mean, std, kwargs, act_layer)


def _infer_llm(text_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LLMConfig:
    """Llama sizes from the tensors; heads/eps/RoPE from text_config or LlamaConfig defaults."""
    emb_key = "language_model.model.embed_tokens.weight"
    if emb_key not in tensors:
        raise ValueError(f"checkpoint lacks {emb_key}")
    vocab, hidden = tensors[emb_key].shape
    layer0 = "language_model.model.layers.0"
    sizes = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=tensors[f"{layer0}.mlp.gate_proj.weight"].shape[0],
        num_hidden_layers=_count_blocks("language_model.model", tensors, "layers"),
    )
    for field_name, value in sizes.items():
        if field_name in text_config and int(text_config[field_name]) != value:
            raise ValueError(
                f"text_config.{field_name}={text_config[field_name]} but the weights have {value}"
            )
    defaults = LLMConfig()
    heads = int(text_config.get("num_attention_heads", defaults.num_attention_heads))
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by num_attention_heads={heads}")
    kv_heads = tensors[f"{layer0}.self_attn.k_proj.weight"].shape[0] // (hidden // heads)
    rope = text_config.get("rope_theta", (text_config.get("rope_parameters") or {}).get("rope_theta"))
    return LLMConfig(
        **{k: int(v) for k, v in sizes.items()},
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rms_norm_eps=float(text_config.get("rms_norm_eps", defaults.rms_norm_eps)),
        rope_theta=float(rope if rope is not None else defaults.rope_theta),
        max_position_embeddings=int(
            text_config.get("max_position_embeddings", defaults.max_position_embeddings)
        ),
    )

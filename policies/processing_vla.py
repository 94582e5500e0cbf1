"""Observation processing for the VLA policy: images -> per-tower pixels, instructions -> prompt token ids.

Images: uint8 (B, H, W, 3) numpy or torch -> resized to each tower's size with antialiased bicubic
interpolation on uint8 (OpenVLA's "resize-naive" strategy; torchvision's tensor resize, which is close to but
not bit-identical with the PIL resize OpenVLA uses), scaled to [0, 1], normalised with the tower's mean/std,
channel-stacked: (B, 3 * n_towers, S, S).

Prompts: OpenVLA formats "In: What action should the robot take to {instruction}?\\nOut:" with a lower-cased,
stripped instruction, tokenises it with BOS, and (in `predict_action`) appends Llama's empty "▁" token
(id 29871) when the prompt does not already end with it, because training sequences had that token between
"Out:" and the action tokens. We append the vocabulary's "▁" id whenever the tokenizer has one. The template
is `config.prompt_template`: "openvla" (the above, default) or "simpler-env" (the bare instruction, which
SimplerEnv's OpenVLA wrapper sends; its instructions are already lower case).

SimplerEnv's 224 px frames: its OpenVLA wrapper shrinks the native 512 x 640 frame to 224 x 224 with
cv2.INTER_AREA. In razor-robot the simpler env does that resize itself (`image_size=224`, a bit-exact
INTER_AREA), so the frames arrive at the towers' size and are not resized again here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TVF

from .configuration_vla import VLAConfig

__all__ = ["VLAProcessor", "build_word_tokenizer", "TINY_WORDS", "EMPTY_TOKEN"]

EMPTY_TOKEN = "\u2581"
"""Llama's "▁" piece (id 29871 in Llama-2), which OpenVLA places between "Out:" and the action tokens."""

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", EMPTY_TOKEN)
"""Ids 0..3 of the word-level tokenizer, in Llama's order (unk, bos, eos) plus the empty token."""

TINY_WORDS = (
    "In",
    "What",
    "action",
    "should",
    "the",
    "robot",
    "take",
    "to",
    "Out",
    ":",
    "?",
    ".",
    ",",
    "pick",
    "up",
    "coke",
    "can",
    "open",
    "close",
    "drawer",
    "top",
    "middle",
    "bottom",
    "place",
    "put",
    "push",
    "pull",
    "grasp",
    "lift",
    "move",
    "reach",
    "a",
    "an",
    "on",
    "in",
    "into",
    "of",
    "and",
    "cup",
    "block",
    "button",
    "door",
    "window",
    "handle",
    "left",
    "right",
    "near",
    "object",
    "red",
    "green",
    "blue",
    "table",
)
"""Prompt words plus the task vocabulary of the embedded backend; unknown words map to <unk>."""


def build_word_tokenizer(words: Sequence[str], n_text_ids: int, n_action_bins: int = 256) -> Tokenizer:
    """Word-level tokenizer: specials, `words`, spares up to `n_text_ids`, then `n_action_bins` action ids.

    The action ids occupy the last `n_action_bins` ids, as in OpenVLA; BOS is prepended by the post-processor.
    """
    unique = list(dict.fromkeys(w for w in words if w not in SPECIAL_TOKENS))
    n_used = len(SPECIAL_TOKENS) + len(unique)
    if n_used > n_text_ids:
        raise ValueError(f"{n_used} specials+words do not fit in {n_text_ids} text ids")
    names = list(SPECIAL_TOKENS) + unique + [f"<extra_{i}>" for i in range(n_text_ids - n_used)]
    names += [f"<act_{i}>" for i in range(n_action_bins)]
    tokenizer = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def _to_uint8_nhwc(images) -> torch.Tensor:
    """numpy/torch uint8 (B, H, W, 3) (or one (H, W, 3) image) -> torch uint8 (B, H, W, 3)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a uint8 numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (B, H, W, 3), got {tuple(images.shape)}")
    return images


class VLAProcessor:
    """Turns (images, instructions) into model inputs; holds the tokenizer and per-tower pixel settings."""

    def __init__(self, config: VLAConfig, tokenizer: Tokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.bos_id = tokenizer.token_to_id("<s>")
        if self.bos_id is None:
            raise ValueError("tokenizer has no <s> (BOS) token")
        self.empty_id = tokenizer.token_to_id(EMPTY_TOKEN)
        self.eos_id = tokenizer.token_to_id("</s>")  # ends OpenVLA's training sequences (its loss target)
        self._prompt_cache: dict[str, list[int]] = {}

    # ---- images ----
    def pixel_values(self, images, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised (B, 3 * n_towers, S, S) in `dtype` on `device`."""
        # The arithmetic runs on (B, H, W, 3), the layout the images come in: the same values as on a permuted
        # view, at a third of the time (strided element-wise ops are slow on CPU); the result is permuted last.
        images = _to_uint8_nhwc(images).to(device)  # (B, H, W, 3) uint8
        per_tower = []
        for tower in self.config.towers:
            size = tower.image_size
            resized = images
            if tuple(images.shape[1:3]) != (size, size):
                resized = TVF.resize(images.permute(0, 3, 1, 2), [size, size], interpolation=InterpolationMode.BICUBIC,
                                     antialias=True).permute(0, 2, 3, 1)  # (B, S, S, 3)
            pixels = resized.float() / 255.0  # (B, S, S, 3) in [0, 1]
            mean = torch.tensor(tower.mean, device=device)
            std = torch.tensor(tower.std, device=device)
            per_tower.append((pixels - mean) / std)
        if len({p.shape[1] for p in per_tower}) != 1:
            raise ValueError("fused towers must share one image size (pixels are channel-stacked)")
        return torch.cat(per_tower, dim=-1).permute(0, 3, 1, 2).to(dtype)  # (B, 3 * n_towers, S, S)

    # ---- text ----
    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the full prompt for one instruction: [BOS, ..., "Out", ":", "▁"]."""
        if not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        cached = self._prompt_cache.get(instruction)
        if cached is None:
            text = self.config.prompt_template.format(instruction=instruction.strip().lower())
            ids = list(self.tokenizer.encode(text).ids)
            if not ids or ids[0] != self.bos_id:
                ids = [self.bos_id] + ids
            if self.empty_id is not None and ids[-1] != self.empty_id:
                ids.append(self.empty_id)
            cached = self._prompt_cache[instruction] = ids
        return cached

    def text_inputs(
        self, instructions: Sequence[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids after BOS, left-padded: ids (B, L) int64 and mask (B, L) int64 (1 = real token).

        Left padding puts every prompt's last token in the last column, so the first action token is predicted
        at the same column for all rows; the pad columns are masked out and skipped by the position ids.
        """
        if isinstance(instructions, str):
            raise ValueError("instructions must be a list of str, got a single str")
        rows = [self.prompt_ids(s)[1:] for s in instructions]  # drop BOS: it goes before the image patches
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids.to(device), mask.to(device)

    def pad_mask_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """RoPE positions for a (B, T) mask: running count of real tokens (pads repeat the left one)."""
        return (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)

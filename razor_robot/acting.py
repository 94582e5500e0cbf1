"""Turn a VLA policy into a batched rollout policy: sample action tokens, decode, adapt to the env."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch


class VLAActor:
    """``BatchPolicy`` over a VLA: tokens ~ π(·|image, instruction), then un-normalise and adapt per backend.

    The sampled tokens come back as the per-step extra ``"tokens"`` (N, D) so that RL can score them later.
    ``temperature=0`` is greedy decoding (evaluation, as OpenVLA's ``predict_action``); 1.0 samples on-policy.
    """

    def __init__(self, policy: Any, *, unnorm_key: str, temperature: float = 0.0, seed: int = 0,
                 adapter_factory: Callable[[], Any] | None = None, batch_size: int = 64):
        self.policy = policy
        self.unnorm_key = unnorm_key
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.adapter_factory = adapter_factory
        self.batch_size = batch_size
        self._adapters: list[Any] = []

    def reset(self) -> None:
        self._adapters = []

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str]):
        was_training = self.policy.training
        self.policy.eval()
        try:
            tokens = torch.cat([
                self.policy.sample_actions(images[i:i + self.batch_size], list(instructions[i:i + self.batch_size]),
                                           temperature=self.temperature, generator=self.generator).cpu()
                for i in range(0, len(images), self.batch_size)
            ])  # (N, D)
        finally:
            self.policy.train(was_training)
        actions = np.asarray(self.policy.tokens_to_actions(tokens, self.unnorm_key), np.float32)  # (N, D)
        if self.adapter_factory is not None:
            if len(self._adapters) != len(actions):
                self._adapters = [self.adapter_factory() for _ in range(len(actions))]
            actions = np.stack([a(action) for a, action in zip(self._adapters, actions)]).astype(np.float32)
        return actions, {"tokens": tokens.numpy()}

"""Turn a VLA policy into a batched rollout policy: sample action tokens, decode, adapt to the env."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from razor_robot.rollout.episodes import EpisodeRequest


class VLAActor:
    """``BatchPolicy`` over a VLA: tokens ~ π(·|image, instruction), then un-normalise and adapt per backend.

    The sampled tokens come back as the per-step extra ``"tokens"`` (N, D) so that RL can score them later.
    ``temperature=0`` is greedy decoding (evaluation, as OpenVLA's ``predict_action``); 1.0 samples on-policy.

    Every episode draws its samples from its own stream, seeded by (``seed``, the request's env seed), and
    keeps its own action adapter (the sticky gripper of the Google robot holds state): an episode's actions
    depend on its request and observations only, however the engine batches episodes.
    """

    def __init__(self, policy: Any, *, unnorm_key: str, temperature: float = 0.0, seed: int = 0,
                 adapter_factory: Callable[[], Any] | None = None, batch_size: int = 64,
                 greedy_over: str = "actions"):
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.greedy_over = greedy_over  # at temperature 0: argmax over the action logits or the vocabulary
        self.policy = policy
        self.unnorm_key = unnorm_key
        self.temperature = temperature
        self.seed = int(seed)
        self.adapter_factory = adapter_factory
        self.batch_size = batch_size
        self._streams: dict[int, np.random.Generator] = {}
        self._adapters: dict[int, Any] = {}

    def start_episode(self, slot: int, request: EpisodeRequest) -> None:
        self._streams[slot] = np.random.default_rng([self.seed % 2**63, int(request.seed) % 2**63])
        if self.adapter_factory is not None:
            adapter = self.adapter_factory()
            adapter.reset()
            self._adapters[slot] = adapter

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str],
                 slots: Sequence[int], **observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        dim = self.policy.action_dim
        uniforms = None
        if self.temperature > 0:
            uniforms = np.stack([self._streams[s].random(dim) for s in slots])  # (N, D) in [0, 1)
        was_training = self.policy.training
        if was_training:  # eval() walks every module: once per rollout call adds up to seconds per sweep
            self.policy.eval()
        try:
            tokens = torch.cat([
                self.policy.sample_actions(
                    images[i:i + self.batch_size], list(instructions[i:i + self.batch_size]),
                    temperature=self.temperature, greedy_over=self.greedy_over,
                    uniforms=None if uniforms is None else uniforms[i:i + self.batch_size]).cpu()
                for i in range(0, len(images), self.batch_size)
            ])  # (N, D)
        finally:
            if was_training:
                self.policy.train()
        actions = np.asarray(self.policy.tokens_to_actions(tokens, self.unnorm_key), np.float32)  # (N, D)
        if self.adapter_factory is not None:
            actions = np.stack([self._adapters[s](a) for s, a in zip(slots, actions)]).astype(np.float32)
        return actions, {"tokens": tokens.numpy()}

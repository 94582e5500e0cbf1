"""Per-episode demonstrators (Meta-World's experts, RT-1, the scripted Google-robot pick) as one
BatchPolicy."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from razor_robot.rollout.episodes import EpisodeRequest


class DemonstratorPolicy:
    """Batches per-episode demonstrators (objects with ``act(obs) -> action``) into a :class:`BatchPolicy`.

    Each demonstrator sees ``obs = {"image", "state", "instruction", ...}``: RT-1 needs the drawer's
    instruction, and the env's other observation keys (SimplerEnv's ``image_native``) come along too.
    Demonstrators keep per-episode state, so every episode gets a fresh one (``start_episode``). A
    demonstrator whose ``done`` attribute turns True (RT-1's ``terminate_episode``) ends its episode.
    """

    def __init__(self, make_demonstrator: Callable[[], Any]):
        self._make = make_demonstrator
        self._demonstrators: dict[int, Any] = {}

    def start_episode(self, slot: int, request: EpisodeRequest) -> None:
        self._demonstrators[slot] = self._make()

    def __call__(self, images: np.ndarray, states: np.ndarray, instructions: Sequence[str],
                 slots: Sequence[int], **observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        demonstrators = [self._demonstrators[s] for s in slots]
        actions = np.stack([
            np.asarray(d.act({"image": images[i], "state": states[i], "instruction": instructions[i],
                              **{k: v[i] for k, v in observations.items()}}), dtype=np.float32)
            for i, d in enumerate(demonstrators)
        ])
        terminate = np.array([bool(getattr(d, "done", False)) for d in demonstrators])
        return actions, {"terminate": terminate}

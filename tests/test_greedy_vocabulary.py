"""Greedy decoding as OpenVLA's predict_action: the argmax over the whole vocabulary, each choice fed back,
non-action ids decoded by OpenVLA's clip (``eval.greedy_over: vocabulary``)."""

import numpy as np
import pytest
import torch

from razor_robot.policies import load_policy

INSTRUCTIONS = ["pick coke can", "open top drawer"]


def _policy():
    torch.manual_seed(0)
    return load_policy("tiny", action_dim=3, device="cpu")


def _images():
    return np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


@torch.no_grad()
def reference_greedy(policy, images, instructions):
    """Greedy search over every logit with a full (uncached) forward per token, as transformers' generate."""
    embeds, mask = policy._prefix(images, instructions)  # (B, T0, H), (B, T0)
    chosen = []
    for _ in range(policy.action_dim):
        hidden, _ = policy._decode(embeds, mask, policy.processor.pad_mask_positions(mask))
        ids = policy.language_model.lm_head(hidden[:, -1]).float().argmax(-1)  # (B,)
        chosen.append(ids)
        embeds = torch.cat([embeds, policy.language_model.get_input_embeddings()(ids[:, None])], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(chosen, 1)  # (B, D)


def test_vocabulary_greedy_equals_greedy_search_over_every_logit():
    policy = _policy()
    tokens = policy.sample_actions(_images(), INSTRUCTIONS, temperature=0.0, greedy_over="vocabulary")
    assert torch.equal(tokens, reference_greedy(policy, _images(), INSTRUCTIONS))


def test_a_winning_text_token_decodes_by_openvlas_clip():
    policy = _policy()
    images = _images()
    _, logits = policy.sample_actions(images, INSTRUCTIONS, temperature=0.0, return_logits=True)
    first = logits[0, 0]  # (256,) row 0's first action logits
    # A text id whose logit is 100x the largest (or -100x the smallest) action logit: it wins the whole
    # vocabulary's argmax at row 0's first token, and only there matters for the check.
    text_id = 5
    sign, bin_ = (100.0, int(first.argmax())) if first.max() > 0 else (-100.0, int(first.argmin()))
    with torch.no_grad():
        weight = policy.language_model.lm_head.weight
        weight[text_id] = sign * weight[policy.action_token_offset + bin_]
    actions_mode = policy.sample_actions(images, INSTRUCTIONS, temperature=0.0)
    vocab_mode = policy.sample_actions(images, INSTRUCTIONS, temperature=0.0, greedy_over="vocabulary")
    assert int(vocab_mode[0, 0]) == text_id and int(actions_mode[0, 0]) != text_id
    assert torch.equal(vocab_mode, reference_greedy(policy, images, INSTRUCTIONS))
    # OpenVLA: discretized = vocab_size - id, clipped to the last of its 255 bin centres.
    decoded = policy.tokens_to_actions(vocab_mode)[0, 0]
    assert decoded == pytest.approx(policy.action_tokenizer.bin_centers[-1])
    with pytest.raises(ValueError, match="greedy_over must be one of actions, vocabulary"):
        policy.sample_actions(images, INSTRUCTIONS, temperature=0.0, greedy_over="all")


def test_eval_config_checks_greedy_over():
    from razor_robot.config import ConfigError, from_dict
    from razor_robot.measure.evaluation import EvalConfig

    assert from_dict(EvalConfig, {"greedy_over": "vocabulary"}, "eval").greedy_over == "vocabulary"
    with pytest.raises(ConfigError, match="greedy_over must be actions or vocabulary"):
        from_dict(EvalConfig, {"greedy_over": "tokens"}, "eval")

"""OpenVLA both ways: the prompt choice (OpenVLA's training prompt or SimplerEnv's bare instruction) and
openvla's finetune.py SFT loss (full-vocabulary cross-entropy on the action tokens and EOS)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from razor_robot.policies import load_policy
from razor_robot.policies.configuration_vla import (
    OPENVLA_PROMPT,
    PROMPT_TEMPLATES,
    SIMPLER_ENV_PROMPT,
    VLAConfig,
    tiny_config,
)
from razor_robot.training.sft import SFTConfig, openvla_sft_loss, sft_loss
from razor_robot.training.optim import OptimConfig

INSTRUCTIONS = ["pick coke can", "open top drawer"]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return load_policy("tiny")


def _word_ids(policy, words):
    return [policy.processor.tokenizer.token_to_id(w) for w in words]


# ------------------------------------------------------------------ prompts


def test_named_prompts_resolve_to_their_templates():
    assert PROMPT_TEMPLATES == {"openvla": OPENVLA_PROMPT, "simpler-env": "{instruction}"}
    assert tiny_config(prompt_template="simpler-env").prompt_template == SIMPLER_ENV_PROMPT
    assert tiny_config(prompt_template="openvla").prompt_template == OPENVLA_PROMPT
    assert tiny_config().prompt_template == OPENVLA_PROMPT  # the default: OpenVLA's training prompt
    saved = tiny_config(prompt_template="simpler-env").to_dict()
    assert saved["prompt_template"] == "{instruction}"
    assert VLAConfig.from_dict(saved).prompt_template == "{instruction}"
    with pytest.raises(ValueError, match="prompt_template must name one of") as info:
        tiny_config(prompt_template="bare")
    assert "\n" not in str(info.value)


def test_prompt_token_ids_both_ways():
    openvla = load_policy("tiny")
    simpler = load_policy("tiny", prompt_template="simpler-env")
    bos, empty = openvla.processor.bos_id, openvla.processor.empty_id
    words = "In : What action should the robot take to pick coke can ? Out :".split()
    assert openvla.processor.prompt_ids("Pick coke can ") == [bos, *_word_ids(openvla, words), empty]
    bare = _word_ids(simpler, ["pick", "coke", "can"])
    assert simpler.processor.prompt_ids("pick coke can") == [bos, *bare, empty]


# ------------------------------------------------------------------ the openvla loss


def _inputs(policy):
    images = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    images[1] = 200
    targets = torch.tensor([[1, 2, 3, 4], [250, 0, 128, 7]])  # (B, D) action bins
    return images, targets, targets + policy.action_token_offset


def test_sequence_logits_cover_the_actions_and_eos_over_the_whole_vocabulary(policy):
    images, _, tokens = _inputs(policy)
    with torch.no_grad():
        full = policy.sequence_logits(images, INSTRUCTIONS, tokens)  # (B, D + 1, V)
        actions = policy.action_logits(images, INSTRUCTIONS, tokens)  # (B, D, 256)
    assert full.shape == (2, policy.action_dim + 1, policy.config.llm.vocab_size)
    lo = policy.action_token_offset
    torch.testing.assert_close(full[:, :-1, lo:lo + 256], actions, rtol=0, atol=1e-5)
    changed = tokens.clone()
    changed[:, -1] = lo + 99
    with torch.no_grad():
        other = policy.sequence_logits(images, INSTRUCTIONS, changed)
    torch.testing.assert_close(other[:, :-1], full[:, :-1])  # the last token only feeds the EOS row
    assert not torch.allclose(other[:, -1], full[:, -1])


def test_openvla_loss_is_mean_full_vocabulary_cross_entropy_on_actions_and_eos(policy):
    images, targets, tokens = _inputs(policy)
    loss = openvla_sft_loss(policy, images, INSTRUCTIONS, targets)
    with torch.no_grad():
        logp = F.log_softmax(policy.sequence_logits(images, INSTRUCTIONS, tokens).float(), dim=-1)
    eos = policy.processor.eos_id
    assert eos == policy.processor.tokenizer.token_to_id("</s>") == 2
    terms = [-logp[b, d, tokens[b, d]] for b in range(2) for d in range(4)]
    terms += [-logp[b, 4, eos] for b in range(2)]
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sft_loss(policy, images, INSTRUCTIONS, targets, loss="openvla"), loss)
    action_only = sft_loss(policy, images, INSTRUCTIONS, targets)  # the default: the 256-way action softmax
    assert not torch.allclose(action_only, loss)
    loss.backward()
    head = policy.language_model.lm_head.weight.grad
    assert head[eos].abs().sum() > 0 and head[3].abs().sum() > 0  # EOS learnt; non-action ids pushed down
    policy.zero_grad(set_to_none=True)


class CountingWrapper(torch.nn.Module):
    """Stands in for DDP/FSDP: they act through the root module's forward, so the loss must call it."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_openvla_loss_goes_through_the_wrapped_models_forward(policy):
    images, targets, _ = _inputs(policy)
    wrapper = CountingWrapper(policy)
    with torch.no_grad():
        wrapped = openvla_sft_loss(policy, images, INSTRUCTIONS, targets, model=wrapper)
        plain = openvla_sft_loss(policy, images, INSTRUCTIONS, targets)
    assert wrapper.calls == 1
    torch.testing.assert_close(wrapped, plain, rtol=0, atol=0)


def test_sft_config_loss_option():
    optim = OptimConfig()
    assert SFTConfig(optim).loss == "action" and SFTConfig(optim, loss="openvla").loss == "openvla"
    for kwargs, message in [({"loss": "ce"}, "unknown SFT loss"),
                            ({"loss": "openvla", "label_sigma_bins": 1.0}, "label_sigma_bins")]:
        with pytest.raises(ValueError, match=message) as info:
            SFTConfig(optim, **kwargs)
        assert "\n" not in str(info.value)

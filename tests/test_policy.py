"""Tiny VLA policy: conditioning, log-probs, KV-cache sampling, padding, LoRA, checkpoints, input errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from razor_robot.policies import compute_norm_stats, load_policy  # noqa: E402
from razor_robot.policies.configuration_vla import LLMConfig  # noqa: E402

INSTRUCTIONS = ["pick coke can", "open drawer", "Close the TOP drawer  "]


@pytest.fixture(scope="module")
def policy():
    return load_policy("tiny", seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def random_tokens(policy, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, policy.action_dim), generator=gen) + policy.action_token_offset


def test_tiny_sizes(policy):
    assert policy.action_dim == 4 and policy.config.vocab_size == 320 and policy.action_token_offset == 64
    assert 1.0e6 < policy.num_parameters() < 1.2e6
    assert policy.processor.prompt_ids("x")[0] == 1  # BOS
    ids = policy.processor.prompt_ids(" Pick Coke can ")
    assert ids == policy.processor.prompt_ids("pick coke can")  # lower-cased and stripped
    assert ids[-1] == policy.processor.empty_id  # OpenVLA's "▁" before the action tokens
    words = policy.processor.tokenizer.encode("In: What action should the robot take to pick coke can?\nOut:")
    assert words.tokens == [
        "<s>",
        "In",
        ":",
        "What",
        "action",
        "should",
        "the",
        "robot",
        "take",
        "to",
        "pick",
        "coke",
        "can",
        "?",
        "Out",
        ":",
    ]
    assert ids == words.ids + [3]


def test_tiny_image_size_override():
    pol = load_policy("tiny", image_size=96)
    assert pol.vision_backbone.featurizer.patch_embed.num_patches == 36
    tokens = pol.sample_actions(np.zeros((2, 96, 96, 3), np.uint8), ["open drawer"] * 2, temperature=0)
    assert tokens.shape == (2, 4)


def test_tiny_vocabulary_grows_for_extra_words():
    extra = [f"word{i} slide" for i in range(30)]  # 31 new words: 56 + 31 ids > 64
    pol = load_policy("tiny", words=extra)
    assert pol.config.vocab_size == 128 + 256 and pol.action_token_offset == 128
    assert 0 not in pol.processor.prompt_ids("word29 slide")  # no <unk>
    assert 0 in load_policy("tiny").processor.prompt_ids("word29 slide")


def test_llm_defaults_equal_transformers_llama_defaults():
    from transformers import LlamaConfig

    ref, ours = LlamaConfig(), LLMConfig()
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "rms_norm_eps",
        "max_position_embeddings",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.rope_theta == ref.rope_parameters["rope_theta"]


def test_logits_depend_on_image_and_instruction(policy, images):
    tokens = random_tokens(policy, 1)
    with torch.no_grad():
        base = policy.action_logits(images[:1], ["pick coke can"], tokens)
        other_image = policy.action_logits(images[1:2], ["pick coke can"], tokens)
        other_text = policy.action_logits(images[:1], ["open drawer"], tokens)
    assert base.shape == (1, 4, 256)
    assert (base - other_image).abs().max() > 1e-3
    assert (base - other_text).abs().max() > 1e-3


def test_log_prob_is_sum_of_token_log_softmax(policy, images):
    tokens = random_tokens(policy, 3, seed=1)
    with torch.no_grad():
        logits = policy.action_logits(images, INSTRUCTIONS, tokens)  # (3, 4, 256)
        logp = policy.log_prob(images, INSTRUCTIONS, tokens)
    expected = torch.stack(
        [sum(F.log_softmax(logits[b, d], -1)[tokens[b, d] - 64] for d in range(4)) for b in range(3)]
    )
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-5)


def test_padded_batch_equals_single_rows(policy, images):
    tokens = random_tokens(policy, 3, seed=2)
    with torch.no_grad():
        batched = policy.action_logits(images, INSTRUCTIONS, tokens)
        for b in range(3):
            single = policy.action_logits(images[b : b + 1], INSTRUCTIONS[b : b + 1], tokens[b : b + 1])
            torch.testing.assert_close(batched[b : b + 1], single, rtol=0, atol=1e-5)


def test_kv_cache_greedy_equals_step_by_step_full_forwards(policy, images):
    tokens, step_logits = policy.sample_actions(images, INSTRUCTIONS, temperature=0.0, return_logits=True)
    assert tokens.shape == (3, 4) and tokens.dtype == torch.long
    filler = torch.full_like(tokens, policy.action_token_offset)
    with torch.no_grad():
        for d in range(4):
            prefix = torch.cat(
                [tokens[:, :d], filler[:, d:]], dim=1
            )  # positions >= d are never attended at d
            full = policy.action_logits(images, INSTRUCTIONS, prefix)[:, d]  # (3, 256)
            torch.testing.assert_close(step_logits[:, d], full, rtol=0, atol=1e-5)
            assert torch.equal(full.argmax(-1) + policy.action_token_offset, tokens[:, d])


def test_sampling_seeded_and_in_range(policy, images):
    def draw(seed):
        return policy.sample_actions(images, INSTRUCTIONS, 1.0, torch.Generator().manual_seed(seed))

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= policy.action_token_offset and a.max() < policy.action_token_offset + 256
    assert not a.is_inference()  # usable as an index in autograd code


def test_sampling_follows_the_action_softmax(policy, images):
    gen = torch.Generator().manual_seed(0)
    img, text = np.repeat(images[:1], 512, axis=0), ["open drawer"] * 512
    tokens, logits = policy.sample_actions(img, text, 1.0, gen, return_logits=True)
    first = (
        tokens[:, 0] - policy.action_token_offset
    )  # the first token's distribution is the same for all rows
    probs = F.softmax(logits[0, 0], -1)
    top = probs.argmax()
    freq = (first == top).float().mean()
    assert abs(freq - probs[top]) < 4 * (probs[top] * (1 - probs[top]) / 512) ** 0.5 + 1e-3


def test_tokens_to_actions_and_predict_action():
    demo = np.random.default_rng(1).uniform(-2, 2, (200, 4))
    stats = compute_norm_stats(demo, mask=[True, True, True, False])
    pol = load_policy("tiny", norm_stats={"metaworld": stats})
    offset = pol.action_token_offset
    tokens = torch.tensor([[offset + 255, offset, offset + 128, offset + 255]])  # -1, +1, 0, gripper -1
    q01, q99 = np.array(stats["action"]["q01"]), np.array(stats["action"]["q99"])
    centre = 1 - 1 / 255
    expected = [
        q01[0] + 0.5 * (1 - centre) * (q99[0] - q01[0]),
        q01[1] + 0.5 * (1 + centre) * (q99[1] - q01[1]),
        q01[2] + 0.5 * (q99[2] - q01[2]),
        -centre,
    ]
    np.testing.assert_allclose(pol.tokens_to_actions(tokens, "metaworld")[0], expected, rtol=1e-12)
    np.testing.assert_allclose(pol.tokens_to_actions(tokens)[0], expected, rtol=1e-12)  # the only key
    image = np.zeros((64, 64, 3), np.uint8)
    action = pol.predict_action(image, "pick coke can")
    greedy = pol.sample_actions(image[None], ["pick coke can"], temperature=0)
    assert action.shape == (4,)
    np.testing.assert_array_equal(action, pol.tokens_to_actions(greedy)[0])
    pol.set_norm_stats("other", compute_norm_stats(demo * 2))
    with pytest.raises(ValueError, match="several"):
        pol.tokens_to_actions(tokens)
    with pytest.raises(ValueError, match="action dim 3, policy has 4"):
        pol.set_norm_stats("bad", compute_norm_stats(demo[:, :3]))


def test_lora_adapter_and_base_logits(policy, images):
    pol = load_policy("tiny", seed=0)
    tokens = random_tokens(pol, 3, seed=3)
    with torch.no_grad():
        before = pol.action_logits(images, INSTRUCTIONS, tokens)
    pol.enable_lora(r=4, alpha=8)
    trainable = [n for n, p in pol.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    assert any("featurizer" in n for n in trainable) and any("projector" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(pol.action_logits(images, INSTRUCTIONS, tokens), before)  # B = 0 at init
        for n, p in pol.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        adapted = pol.action_logits(images, INSTRUCTIONS, tokens)
        with pol.disable_adapter():
            base = pol.action_logits(images, INSTRUCTIONS, tokens)
    assert (adapted - before).abs().max() > 1e-3
    torch.testing.assert_close(base, before, rtol=0, atol=1e-6)
    pol.train()
    pol.log_prob(images, INSTRUCTIONS, tokens).sum().backward()
    assert all(p.grad is not None for p in pol.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="enable_lora"):
        with policy.disable_adapter():
            pass


def test_gradient_checkpointing_gives_same_gradients(images):
    tokens = random_tokens(load_policy("tiny"), 3, seed=4)
    grads = []
    for checkpointing in (False, True):
        pol = load_policy("tiny", seed=0).train()
        if checkpointing:
            pol.gradient_checkpointing_enable()
        pol.log_prob(images, INSTRUCTIONS, tokens).sum().backward()
        grads.append(pol.projector.fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_project_checkpoint_round_trip(tmp_path, images, lora):
    stats = compute_norm_stats(np.random.default_rng(2).normal(size=(50, 4)), mask=[True] * 3 + [False])
    pol = load_policy("tiny", seed=3, fused=True, norm_stats={"mw": stats})
    if lora:
        pol.enable_lora(r=2)
        with torch.no_grad():
            for n, p in pol.named_parameters():
                if "lora_B" in n:
                    p.normal_()
    tokens = random_tokens(pol, 3, seed=5)
    pol.save_pretrained(tmp_path)
    loaded = load_policy(tmp_path)
    assert loaded.config == pol.config and loaded.lora_config == pol.lora_config
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "norm_stats.json",
        "tokenizer.json",
    ]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.action_logits(images, INSTRUCTIONS, tokens),
            pol.action_logits(images, INSTRUCTIONS, tokens),
            rtol=0,
            atol=1e-6,
        )
    if lora:
        assert all("lora_" in n for n, p in loaded.named_parameters() if p.requires_grad)


def test_one_line_errors(policy, images, tmp_path):
    tokens = random_tokens(policy, 3)
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        policy.action_logits(images, INSTRUCTIONS, tokens[:, :3])
    with pytest.raises(ValueError, match="vocabulary ids in"):
        policy.action_logits(images, INSTRUCTIONS, tokens - 100)
    with pytest.raises(ValueError, match="3 images but 2 instructions"):
        policy.sample_actions(images, INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match="uint8"):
        policy.sample_actions(images.astype(np.float32), INSTRUCTIONS)
    with pytest.raises(ValueError, match="temperature"):
        policy.sample_actions(images, INSTRUCTIONS, temperature=-1)
    with pytest.raises(ValueError, match="no policy named 'tiny-xl'"):
        load_policy("tiny-xl")
    with pytest.raises(ValueError, match="no checkpoint at"):
        load_policy(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither"):
        load_policy(tmp_path)
    with pytest.raises(ValueError, match="unknown config overrides"):
        load_policy("tiny", hidden=3)
    with pytest.raises(ValueError, match="action_dim=4 conflicts"):
        load_policy("openvla-7b", device="meta", action_dim=4)
    stats = compute_norm_stats(np.zeros((3, 4)) + np.arange(3)[:, None])
    with pytest.raises(ValueError, match="has action dim 4, config action_dim is 7"):
        load_policy("tiny", action_dim=7, norm_stats={"mw": stats})


def test_cached_decode_is_bit_identical_to_transformers_llama(policy, images):
    from transformers import DynamicCache

    from razor_robot.policies.modeling_vla import cached_decode

    llm = policy.language_model.model
    with torch.inference_mode():
        embeds, mask = policy._prefix(images, INSTRUCTIONS)  # INSTRUCTIONS differ in length: padded rows
        assert not bool(mask.all())
        positions = policy.processor.pad_mask_positions(mask)
        reference = DynamicCache(config=llm.config)
        expected = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=reference,
                       use_cache=True).last_hidden_state
        hidden, cache = cached_decode(llm, embeds, positions, mask)
        assert torch.equal(hidden, expected)
        step = policy.language_model.get_input_embeddings()(torch.full((3, 1), policy.action_token_offset + 7))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = positions[:, -1:] + 1
        expected = llm(inputs_embeds=step, attention_mask=mask, position_ids=positions, cache=reference,
                       use_cache=True).last_hidden_state
        hidden, _ = cached_decode(llm, step, positions, mask, cache)
        assert torch.equal(hidden, expected)


@pytest.mark.parametrize("overrides", [{"fused": True}, {"image_size": 32}])
def test_pixel_values_equal_the_per_channel_formula(images, overrides):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TVF

    processor = load_policy("tiny", seed=0, **overrides).processor
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    expected = []
    for tower in processor.config.towers:  # resize (when the tower's size differs), [0, 1], (x - mean) / std
        resized = nchw if tower.image_size == 64 else TVF.resize(
            nchw, [tower.image_size] * 2, interpolation=InterpolationMode.BICUBIC, antialias=True)
        pixels = resized.float() / 255.0
        expected.append((pixels - torch.tensor(tower.mean).view(1, 3, 1, 1)) / torch.tensor(tower.std).view(1, 3, 1, 1))
    pixels = processor.pixel_values(images, torch.device("cpu"), torch.float32)
    assert torch.equal(pixels, torch.cat(expected, dim=1))


def test_last_only_prefill_matches_the_full_prefill(policy, images):
    from razor_robot.policies.modeling_vla import cached_decode

    llm = policy.language_model.model
    with torch.inference_mode():
        for rows in (INSTRUCTIONS, [INSTRUCTIONS[0]] * 3):  # padded rows, then no pads (the causal path)
            embeds, mask = policy._prefix(images, rows)
            positions = policy.processor.pad_mask_positions(mask)
            full, full_cache = cached_decode(llm, embeds, positions, mask)
            last, last_cache = cached_decode(llm, embeds, positions, mask, last_only=True)
            assert last.shape == (3, 1, full.shape[-1])
            torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
            for (k_full, v_full), (k_last, v_last) in zip(full_cache, last_cache):
                assert torch.equal(k_full, k_last) and torch.equal(v_full, v_last)  # every key still cached


def test_vision_features_skip_the_unused_last_block_and_equal_openvlas_call(policy, images):
    backbone = policy.vision_backbone
    tower = backbone.featurizer
    pixels = policy.processor.pixel_values(images, policy.device, policy.dtype)[:, :3]
    calls = []
    hook = tower.blocks[-1].register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.inference_mode():
            (expected,) = tower.get_intermediate_layers(pixels, n=[len(tower.blocks) - 2])  # OpenVLA's call
            assert calls == [1]
            patches = backbone._patches(tower, pixels)
    finally:
        hook.remove()
    assert calls == [1], "the last block ran although its output is unused"
    assert torch.equal(patches, expected)


def test_inverse_cdf_sampling_is_per_row_and_follows_the_softmax(policy, images):
    rng = np.random.default_rng(0)
    uniforms = rng.random((3, 4))
    batch = policy.sample_actions(images, INSTRUCTIONS, 1.0, uniforms=uniforms)
    for b in range(3):  # a row's tokens depend on its own uniforms only, not on its batch
        single = policy.sample_actions(images[b:b + 1], INSTRUCTIONS[b:b + 1], 1.0, uniforms=uniforms[b:b + 1])
        assert torch.equal(single[0], batch[b])
    img, text = np.repeat(images[:1], 512, axis=0), ["open drawer"] * 512
    tokens, logits = policy.sample_actions(img, text, 1.0, uniforms=rng.random((512, 4)), return_logits=True)
    probs = F.softmax(logits[0, 0], -1)
    first = tokens[:, 0] - policy.action_token_offset
    for k in torch.topk(probs, 3).indices:  # the most likely bins come up at their probability
        freq = (first == k).float().mean()
        assert abs(freq - probs[k]) < 4 * (probs[k] * (1 - probs[k]) / 512) ** 0.5 + 1e-3
    edge = policy.sample_actions(images[:1], INSTRUCTIONS[:1], 1.0, uniforms=np.full((1, 4), 1 - 1e-12))
    assert edge.max() < policy.action_token_offset + 256  # u -> 1 never runs past the last bin
    with pytest.raises(ValueError, match="uniforms"):
        policy.sample_actions(images, INSTRUCTIONS, 1.0, uniforms=uniforms[:2])

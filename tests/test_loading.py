"""Loading OpenVLA checkpoints by key mapping, checked against an independent reference forward.

OpenVLA's remote code cannot run on timm >= 1 / transformers >= 4.50, so the reference below is a plain
restatement of its forward (prismatic/extern/hf/modeling_prismatic.py): raw timm towers run block by
block up to the second-to-last, prefix tokens dropped, fused features concatenated, fc1-GELU-fc2-GELU-fc3,
patches inserted right after BOS, LlamaForCausalLM (eager attention) on inputs_embeds, default positions.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from razor_robot.policies import FRACTAL_NORM_STATS, load_policy  # noqa: E402
from razor_robot.policies.processing_vla import TINY_WORDS, build_word_tokenizer  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

DINO_ID, SIGLIP_ID = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"
IMAGE = 56  # 4 x 4 patches of 14 px
TEXT_VOCAB, PAD_ROWS = 320, 64  # tokenizer ids (64 text + 256 action), embedding rows 384 like 32000/32064
PROMPT = "In: What action should the robot take to {}?\nOut:"


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or "gamma" in name):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


class Reference(torch.nn.Module):
    """Small OpenVLA-layout model with raw timm towers (LayerScale still called gamma)."""

    def __init__(self):
        super().__init__()
        self.dino = timm.create_model(
            DINO_ID.split(".")[0],
            pretrained=False,
            num_classes=0,
            img_size=IMAGE,
            embed_dim=64,
            num_heads=1,
            depth=3,
            mlp_ratio=4.0,
        )
        self.siglip = timm.create_model(
            SIGLIP_ID,
            pretrained=False,
            num_classes=0,
            img_size=IMAGE,
            embed_dim=144,
            num_heads=2,
            depth=3,
            mlp_ratio=3.75,
        )
        vision = 64 + 144
        self.fc1, self.fc2, self.fc3 = (
            torch.nn.Linear(vision, 4 * vision),
            torch.nn.Linear(4 * vision, 96),
            torch.nn.Linear(96, 96),
        )
        cfg = LlamaConfig(
            vocab_size=TEXT_VOCAB + PAD_ROWS,
            hidden_size=96,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=TEXT_VOCAB,
        )
        cfg._attn_implementation = "eager"
        self.llm = LlamaForCausalLM(cfg)

    @staticmethod
    def tower_patches(tower, pixels):
        x = tower.norm_pre(tower._pos_embed(tower.patch_embed(pixels)))
        for block in tower.blocks[:-1]:
            x = block(x)
        return x[:, tower.num_prefix_tokens :]  # (B, P, d)

    def forward(self, images_u8: np.ndarray, ids: list[int]) -> torch.Tensor:
        """One sample, as OpenVLA runs it (batch size 1); returns the full-vocabulary logits (T, V)."""
        x = torch.from_numpy(images_u8).permute(2, 0, 1)[None].float() / 255  # (1, 3, S, S)
        dino_px = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        siglip_px = (x - 0.5) / 0.5
        feats = torch.cat(
            [self.tower_patches(self.dino, dino_px), self.tower_patches(self.siglip, siglip_px)], 2
        )
        patches = self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(feats)))))  # (1, P, H)
        emb = self.llm.get_input_embeddings()(torch.tensor([ids]))  # (1, T, H)
        embeds = torch.cat([emb[:, :1], patches, emb[:, 1:]], dim=1)
        return self.llm(inputs_embeds=embeds).logits[0]  # (1 + P + T - 1, V)

    def openvla_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, module in (
            ("vision_backbone.featurizer.", self.dino),
            ("vision_backbone.fused_featurizer.", self.siglip),
            ("language_model.", self.llm),
        ):
            for key, value in module.state_dict().items():
                out[prefix + key.replace(".gamma", ".scale_factor")] = value
        for name in ("fc1", "fc2", "fc3"):
            for kind in ("weight", "bias"):
                out[f"projector.{name}.{kind}"] = getattr(self, name).state_dict()[kind]
        return out


def write_openvla_dir(path, reference: Reference) -> None:
    """config.json / sharded safetensors + index / tokenizer.json in OpenVLA's published layout."""
    tensors = {k: v.contiguous() for k, v in reference.openvla_state_dict().items()}
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for key, value in tensors.items():  # towers + projector in shard 1, LLM in shard 2, as in openvla-7b
        shards["model-0000%d-of-00002.safetensors" % (2 if key.startswith("language_model") else 1)][key] = (
            value
        )
    weight_map = {}
    for shard, part in shards.items():
        save_file(part, str(path / shard))
        weight_map.update({k: shard for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [IMAGE, IMAGE],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": {"fractal20220817_data": FRACTAL_NORM_STATS},
        "output_projector_states": False,
        "pad_to_multiple_of": PAD_ROWS,
        "pad_token_id": TEXT_VOCAB,
        # like openvla-7b's, a partial text_config: the missing Llama fields take LlamaConfig defaults
        "text_config": {
            "model_type": "llama",
            "pad_token_id": TEXT_VOCAB,
            "torch_dtype": "float32",
            "vocab_size": TEXT_VOCAB + PAD_ROWS,
            "num_attention_heads": 4,
        },
        "timm_model_ids": [DINO_ID, SIGLIP_ID],
        "timm_override_act_layers": [None, None],
        "torch_dtype": "float32",
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
    }
    (path / "config.json").write_text(json.dumps(config))
    build_word_tokenizer(TINY_WORDS, TEXT_VOCAB - 256).save(str(path / "tokenizer.json"))


@pytest.fixture(scope="module")
def openvla_dir(tmp_path_factory):
    torch.manual_seed(0)
    reference = Reference().eval()
    _randomise(reference, seed=1)
    path = tmp_path_factory.mktemp("openvla-small")
    write_openvla_dir(path, reference)
    return path, reference


def test_openvla_layout_checkpoint_matches_reference_logits(openvla_dir):
    path, reference = openvla_dir
    policy = load_policy(path)
    tower = policy.config.towers
    assert [t.timm_kwargs for t in tower] == [
        dict(embed_dim=64, num_heads=1, depth=3, mlp_ratio=256.5 / 64),
        dict(embed_dim=144, num_heads=2, depth=3, mlp_ratio=540.5 / 144),
    ]
    assert tower[0].mean == (0.485, 0.456, 0.406) and tower[1].std == (
        0.5,
        0.5,
        0.5,
    )  # from timm's data config
    llm = policy.config.llm
    assert (llm.hidden_size, llm.num_hidden_layers, llm.num_key_value_heads, llm.rms_norm_eps) == (
        96,
        2,
        2,
        1e-6,
    )
    assert policy.action_dim == 7 and policy.action_token_offset == TEXT_VOCAB - 256

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, IMAGE, IMAGE, 3), dtype=np.uint8)
    instructions = ["pick coke can", "open the top drawer"]  # different prompt lengths -> padded batch
    tokens = torch.from_numpy(rng.integers(TEXT_VOCAB - 256, TEXT_VOCAB, (2, 7)))
    with torch.no_grad():
        ours = policy.action_logits(images, instructions, tokens)  # (2, 7, 256)
        for b, text in enumerate(instructions):
            tok = build_word_tokenizer(TINY_WORDS, TEXT_VOCAB - 256)
            ids = tok.encode(PROMPT.format(text)).ids + [tok.token_to_id("\u2581")] + tokens[b].tolist()
            full = reference(images[b], ids)  # (T', V)
            expected = full[-8:-1, TEXT_VOCAB - 256 : TEXT_VOCAB]  # predictions of the 7 action tokens
            torch.testing.assert_close(ours[b], expected, rtol=0, atol=1e-4)
            assert (expected - ours[1 - b]).abs().max() > 1e-3  # the rows really differ


def test_openvla_checkpoint_predict_action_unnormalises_with_fractal_stats(openvla_dir):
    policy = load_policy(openvla_dir[0])
    image = np.full((IMAGE, IMAGE, 3), 90, np.uint8)
    action = policy.predict_action(image, "pick coke can", unnorm_key="fractal20220817_data")
    tokens = policy.sample_actions(image[None], ["pick coke can"], temperature=0)
    q01, q99 = np.array(FRACTAL_NORM_STATS["action"]["q01"]), np.array(FRACTAL_NORM_STATS["action"]["q99"])
    normalized = policy.action_tokenizer.decode(tokens.numpy())[0]
    np.testing.assert_allclose(action[:6], 0.5 * (normalized[:6] + 1) * (q99 - q01)[:6] + q01[:6])
    assert action[6] == normalized[6]


def test_openvla_checkpoint_errors(openvla_dir, tmp_path):
    path, _ = openvla_dir
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in path.iterdir():
        if file.name != "model-00002-of-00002.safetensors":
            (broken / file.name).write_bytes(file.read_bytes())
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors listed"):
        load_policy(broken)
    (broken / "model-00002-of-00002.safetensors").write_bytes(
        (path / "model-00002-of-00002.safetensors").read_bytes()
    )
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["hidden_size"] = 4096
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="text_config.hidden_size=4096 but the weights have 96"):
        load_policy(broken)
    with pytest.raises(ValueError, match="action_dim=4 conflicts with the policy.s norm_stats"):
        load_policy(path, action_dim=4)


def test_openvla_7b_on_meta_has_published_size_and_names():
    policy = load_policy("openvla-7b", device="meta")
    assert policy.num_parameters() == 7_541_237_184
    state = policy.state_dict()
    shapes = {
        "vision_backbone.featurizer.patch_embed.proj.weight": (1024, 3, 14, 14),
        "vision_backbone.featurizer.reg_token": (1, 4, 1024),
        "vision_backbone.featurizer.blocks.23.ls2.scale_factor": (1024,),
        "vision_backbone.fused_featurizer.pos_embed": (1, 256, 1152),
        "vision_backbone.fused_featurizer.blocks.26.mlp.fc1.weight": (4304, 1152),
        "vision_backbone.fused_featurizer.attn_pool.latent": (1, 1, 1152),
        "projector.fc1.weight": (8704, 2176),
        "projector.fc2.weight": (4096, 8704),
        "projector.fc3.bias": (4096,),
        "language_model.model.embed_tokens.weight": (32064, 4096),
        "language_model.model.layers.31.self_attn.q_proj.weight": (4096, 4096),
        "language_model.model.layers.31.mlp.down_proj.weight": (4096, 11008),
        "language_model.model.norm.weight": (4096,),
        "language_model.lm_head.weight": (32064, 4096),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(".gamma" in k for k in state)
    assert {k.split(".")[0] for k in state} == {"vision_backbone", "projector", "language_model"}
    # DINOv2: 24 blocks x 14 + 7; SigLIP: 27 x 12 + 5 + 13 (attention pool); projector 6; Llama: 32 x 9 + 3
    assert len(state) == (24 * 14 + 7) + (27 * 12 + 5 + 13) + 6 + (32 * 9 + 3)
    assert policy.action_token_offset == 31744 and policy.config.llm.rms_norm_eps == 1e-6

"""Model tests: VideoMAE-compatible checkpoint keys and sizes, masked-autoencoder semantics, attention, timm registry.

ViT-B models are only constructed (for parameter counts and key lists); everything that runs forward uses the mini
configs at 64x64 pixels and 4 frames, i.e. a (2, 4, 4) grid of 32 tubelet tokens.
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import modeling_finetune
import modeling_pretrain
from modeling_finetune import Attention, Block, PatchEmbed, VisionTransformer, get_sinusoid_encoding_table
from modeling_pretrain import PretrainVisionTransformer, PretrainVisionTransformerDecoder

MINI_IMG_SIZE = 64
MINI_FRAMES = 4
MINI_GRID = (2, 4, 4)  # (T', H', W') for 4 frames at tubelet 2 and 64 px at patch 16
MINI_NUM_TOKENS = 32
PIXELS_PER_TUBELET = 3 * 2 * 16 * 16

FINETUNE_NAMES = [f"vit_{size}_patch16_224" for size in ("mini", "small", "base", "large", "huge")]
PRETRAIN_NAMES = [f"pretrain_videomae_{size}_patch16_224" for size in ("mini", "small", "base", "large", "huge")]


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_shapes(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys and shapes of one VideoMAE block (q/v biases, no qkv.bias, MLP ratio 4)."""
    hidden = 4 * dim
    return {
        f"{prefix}.norm1.weight": (dim,),
        f"{prefix}.norm1.bias": (dim,),
        f"{prefix}.attn.q_bias": (dim,),
        f"{prefix}.attn.v_bias": (dim,),
        f"{prefix}.attn.qkv.weight": (3 * dim, dim),
        f"{prefix}.attn.proj.weight": (dim, dim),
        f"{prefix}.attn.proj.bias": (dim,),
        f"{prefix}.norm2.weight": (dim,),
        f"{prefix}.norm2.bias": (dim,),
        f"{prefix}.mlp.fc1.weight": (hidden, dim),
        f"{prefix}.mlp.fc1.bias": (hidden,),
        f"{prefix}.mlp.fc2.weight": (dim, hidden),
        f"{prefix}.mlp.fc2.bias": (dim,),
    }


def videomae_base_pretrain_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Keys of VideoMAE's ViT-B pretraining checkpoint (decoder depth 4), as listed in the reference notes."""
    shapes = {"encoder.patch_embed.proj.weight": (768, 3, 2, 16, 16), "encoder.patch_embed.proj.bias": (768,)}
    for index in range(12):
        shapes.update(block_shapes(f"encoder.blocks.{index}", 768))
    shapes.update({"encoder.norm.weight": (768,), "encoder.norm.bias": (768,)})
    shapes.update({"encoder_to_decoder.weight": (384, 768), "mask_token": (1, 1, 384)})
    for index in range(4):
        shapes.update(block_shapes(f"decoder.blocks.{index}", 384))
    shapes.update({"decoder.norm.weight": (384,), "decoder.norm.bias": (384,)})
    shapes.update({"decoder.head.weight": (1536, 384), "decoder.head.bias": (1536,)})
    return shapes


def videomae_base_finetune_checkpoint_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Keys of VideoMAE's ViT-B fine-tuning checkpoint with mean pooling (no final ``norm``, no positions)."""
    shapes = {"patch_embed.proj.weight": (768, 3, 2, 16, 16), "patch_embed.proj.bias": (768,)}
    for index in range(12):
        shapes.update(block_shapes(f"blocks.{index}", 768))
    shapes.update({"fc_norm.weight": (768,), "fc_norm.bias": (768,)})
    shapes.update({"head.weight": (num_classes, 768), "head.bias": (num_classes,)})
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def assert_loads_strictly(model: torch.nn.Module, checkpoint: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model_state = model.state_dict()
    for key in ("head.bias", "decoder.head.bias", "mask_token", "blocks.11.attn.v_bias"):
        if key in checkpoint:
            assert torch.equal(model_state[key], checkpoint[key])


def tube_mask(masked_cells: list[int]) -> torch.Tensor:
    """(N,) bool mask hiding the given cells of the H'xW' grid in every time slice (tube masking)."""
    _, height, width = MINI_GRID
    per_frame = torch.zeros(height * width, dtype=torch.bool)
    per_frame[masked_cells] = True
    return per_frame.repeat(MINI_GRID[0])


def tubelet_pixels(token_index: int) -> tuple[slice, slice, slice]:
    """(T, H, W) pixel slices covered by a token under the (t, h, w) row-major token order."""
    _, height, width = MINI_GRID
    t, h, w = token_index // (height * width), (token_index // width) % height, token_index % width
    return slice(2 * t, 2 * t + 2), slice(16 * h, 16 * h + 16), slice(16 * w, 16 * w + 16)


def mini_clip(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, MINI_FRAMES, MINI_IMG_SIZE, MINI_IMG_SIZE, generator=generator)


def build_mini_pretrain(**kwargs) -> PretrainVisionTransformer:
    torch.manual_seed(0)
    model = timm.create_model(
        "pretrain_videomae_mini_patch16_224", img_size=MINI_IMG_SIZE, num_frames=MINI_FRAMES, **kwargs
    )
    return model.eval()


def build_mini_finetune(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", 5)
    model = timm.create_model("vit_mini_patch16_224", img_size=MINI_IMG_SIZE, all_frames=MINI_FRAMES, **kwargs)
    return model.eval()


@pytest.fixture(scope="module")
def base_pretrain_model() -> PretrainVisionTransformer:
    return timm.create_model("pretrain_videomae_base_patch16_224", decoder_depth=4)


@pytest.fixture(scope="module")
def base_finetune_model() -> VisionTransformer:
    return timm.create_model("vit_base_patch16_224", num_classes=174)


# ---- sizes and checkpoint compatibility ------------------------------------------------------------------------


def test_base_pretrain_parameter_counts_match_released_code(base_pretrain_model):
    assert num_params(base_pretrain_model) == 94_210_944
    assert num_params(base_pretrain_model.encoder) == 86_227_200
    assert num_params(base_pretrain_model.decoder) == 7_688_448
    assert num_params(base_pretrain_model.encoder_to_decoder) == 294_912
    assert base_pretrain_model.mask_token.numel() == 384


def test_base_finetune_parameter_count_matches_released_code(base_finetune_model):
    assert isinstance(base_finetune_model, VisionTransformer)
    assert num_params(base_finetune_model) == 86_361_006


def test_base_pretrain_state_dict_is_videomae_checkpoint_layout(base_pretrain_model):
    expected = videomae_base_pretrain_checkpoint_shapes()
    actual = {key: tuple(value.shape) for key, value in base_pretrain_model.state_dict().items()}
    assert actual == expected
    assert_loads_strictly(base_pretrain_model, random_state_dict(expected))


def test_base_finetune_state_dict_is_videomae_checkpoint_layout(base_finetune_model):
    expected = videomae_base_finetune_checkpoint_shapes(num_classes=174)
    actual = {key: tuple(value.shape) for key, value in base_finetune_model.state_dict().items()}
    assert actual == expected
    assert_loads_strictly(base_finetune_model, random_state_dict(expected))


@pytest.mark.parametrize("build", [build_mini_pretrain, build_mini_finetune])
def test_fixed_position_tables_are_buffers_outside_the_state_dict(build):
    model = build()
    assert not any("pos_embed" in key for key in model.state_dict())
    assert any("pos_embed" in name for name, _ in model.named_buffers())
    model.to(torch.float64)
    assert all(buffer.dtype == torch.float64 for name, buffer in model.named_buffers() if "pos_embed" in name)


def test_learnable_position_embedding_is_a_saved_parameter():
    finetune = build_mini_finetune(use_learnable_pos_emb=True)
    assert finetune.state_dict()["pos_embed"].shape == (1, MINI_NUM_TOKENS, 96)
    pretrain = build_mini_pretrain(use_learnable_pos_emb=True)
    assert pretrain.state_dict()["encoder.pos_embed"].shape == (1, MINI_NUM_TOKENS, 96)
    assert "pos_embed" not in pretrain.state_dict()  # the decoder's table stays fixed, as in VideoMAE


# ---- building blocks -------------------------------------------------------------------------------------------


def test_sinusoid_table_matches_transformer_formula():
    num_positions, dim = 10, 8
    table = get_sinusoid_encoding_table(num_positions, dim)
    assert table.shape == (1, num_positions, dim) and table.dtype == torch.float32
    for position in range(num_positions):
        for channel in range(dim):
            angle = position / 10000 ** (2 * (channel // 2) / dim)
            expected = math.sin(angle) if channel % 2 == 0 else math.cos(angle)
            assert table[0, position, channel].item() == pytest.approx(expected, abs=1e-6)


def test_patch_embed_orders_tokens_time_then_rows_then_columns():
    embed = PatchEmbed(img_size=MINI_IMG_SIZE, patch_size=16, in_chans=3, embed_dim=8, num_frames=MINI_FRAMES)
    assert embed.grid_size == MINI_GRID and embed.num_patches == MINI_NUM_TOKENS
    clip = torch.zeros(1, 3, MINI_FRAMES, MINI_IMG_SIZE, MINI_IMG_SIZE)
    token = 1 * 16 + 2 * 4 + 3  # t=1, h=2, w=3
    clip[(0, slice(None), *tubelet_pixels(token))] = 1.0
    with torch.no_grad():
        tokens = embed(clip)
    assert tokens.shape == (1, MINI_NUM_TOKENS, 8)
    changed = (tokens[0] != embed.proj.bias).any(dim=1).nonzero().flatten().tolist()
    assert changed == [token]
    with pytest.raises(ValueError, match="expected input"):
        embed(torch.zeros(1, 3, 2 * MINI_FRAMES, MINI_IMG_SIZE, MINI_IMG_SIZE))


@pytest.mark.parametrize(("num_frames", "img_size", "named"), [
    (5, 64, ["--num_frames 5 is not a multiple of the tubelet's 2 frames"]),
    (8, 72, ["--input_size 72 is not a multiple of the patch size 16"]),
    (5, 72, ["--num_frames 5", "--input_size 72"]),
])
def test_a_clip_that_does_not_split_into_tubelets_names_the_flag(num_frames, img_size, named):
    with pytest.raises(ValueError) as error:
        PatchEmbed(img_size=img_size, patch_size=16, embed_dim=8, num_frames=num_frames)
    assert all(flag in str(error.value) for flag in named), str(error.value)
    assert ("--num_frames" in str(error.value)) == (num_frames % 2 == 1)
    assert ("--input_size" in str(error.value)) == (img_size % 16 > 0)


@pytest.mark.parametrize(("attn_head_dim", "qk_scale"), [(None, None), (16, 0.3)])
def test_attention_matches_explicit_softmax_reference(attn_head_dim, qk_scale):
    torch.manual_seed(0)
    dim, heads = 32, 4
    attention = Attention(dim, num_heads=heads, qkv_bias=True, qk_scale=qk_scale, attn_head_dim=attn_head_dim).eval()
    with torch.no_grad():
        attention.q_bias.normal_()
        attention.v_bias.normal_()
    x = torch.randn(2, 7, dim)

    head_dim = attn_head_dim or dim // heads
    scale = qk_scale or head_dim**-0.5
    bias = torch.cat([attention.q_bias, torch.zeros_like(attention.q_bias), attention.v_bias])
    q, k, v = (x @ attention.qkv.weight.T + bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(2, 7, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 7, heads * head_dim))

    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-5)


def test_attention_has_query_and_value_biases_but_no_key_bias():
    names = {name for name, _ in Attention(32, num_heads=4, qkv_bias=True).named_parameters()}
    assert names == {"q_bias", "v_bias", "qkv.weight", "proj.weight", "proj.bias"}
    names = {name for name, _ in Attention(32, num_heads=4, qkv_bias=False).named_parameters()}
    assert names == {"qkv.weight", "proj.weight", "proj.bias"}


def test_layer_scale_parameters_exist_only_with_positive_init_values():
    assert "gamma_1" not in Block(32, num_heads=4, init_values=0.0).state_dict()
    block = Block(32, num_heads=4, init_values=0.1)
    assert torch.equal(block.gamma_1, torch.full((32,), 0.1))
    assert torch.equal(block.gamma_2, torch.full((32,), 0.1))


# ---- pretraining model semantics -------------------------------------------------------------------------------


def two_tube_masks() -> torch.Tensor:
    """Two different tube masks with 12 of 16 cells (24 of 32 tokens) masked each."""
    first = tube_mask([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    second = tube_mask([1, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 15])
    return torch.stack([first, second])


def test_pretrain_predicts_every_masked_token():
    model = build_mini_pretrain()
    masks = two_tube_masks()
    with torch.no_grad():
        predictions = model(mini_clip(2), masks)
    assert predictions.shape == (2, 24, PIXELS_PER_TUBELET)


def test_pretrain_output_ignores_pixels_of_masked_tubelets():
    model = build_mini_pretrain()
    masks = two_tube_masks()
    clip = mini_clip(2)
    with torch.no_grad():
        reference = model(clip, masks)
        for sample in range(2):
            for token in masks[sample].nonzero().flatten().tolist():
                clip[(sample, slice(None), *tubelet_pixels(token))] = 100.0
        torch.testing.assert_close(model(clip, masks), reference, rtol=0, atol=1e-6)

        visible_token = (~masks[0]).nonzero()[0].item()
        clip[(0, slice(None), *tubelet_pixels(visible_token))] += 1.0
        changed = model(clip, masks)
    assert not torch.allclose(changed[0], reference[0])
    torch.testing.assert_close(changed[1], reference[1], rtol=0, atol=1e-6)


def natural_order_reference(model: PretrainVisionTransformer, clip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One sample decoded with all N tokens in their natural order, each masked slot holding mask_token + its position.

    Self-attention is permutation-equivariant, so this must equal the model's [visible | masked] ordering if the
    model attaches each position to the right token and returns masked predictions in ascending token order.
    """
    encoder, decoder = model.encoder, model.decoder
    num_tokens = mask.numel()
    tokens = encoder.patch_embed(clip[None]) + get_sinusoid_encoding_table(num_tokens, encoder.embed_dim)
    visible = tokens[:, ~mask]
    for block in encoder.blocks:
        visible = block(visible)
    visible = model.encoder_to_decoder(encoder.norm(visible))

    sequence = model.mask_token.expand(1, num_tokens, -1).clone()
    sequence[:, ~mask] = visible
    sequence = sequence + get_sinusoid_encoding_table(num_tokens, decoder.embed_dim)
    for block in decoder.blocks:
        sequence = block(sequence)
    return decoder.head(decoder.norm(sequence))[0, mask]


def test_pretrain_predictions_follow_masked_positions_in_ascending_order():
    model = build_mini_pretrain(decoder_depth=2)
    masks = two_tube_masks()
    clip = mini_clip(2)
    with torch.no_grad():
        predictions = model(clip, masks)
        for sample in range(2):
            expected = natural_order_reference(model, clip[sample], masks[sample])
            torch.testing.assert_close(predictions[sample], expected, rtol=1e-4, atol=1e-5)
    # Rows differ from one another, so the comparison above really pins down the order.
    assert torch.cdist(predictions[0], predictions[0]).fill_diagonal_(float("inf")).min() > 1e-3


def test_pretrain_rejects_unequal_or_malformed_masks():
    model = build_mini_pretrain()
    masks = two_tube_masks()
    masks[1, (~masks[1]).nonzero()[0]] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        model(mini_clip(2), masks)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model(mini_clip(2), two_tube_masks().to(torch.uint8))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model(mini_clip(2), two_tube_masks()[:, :-1])


def test_decoder_output_width_must_match_tubelet_pixels():
    with pytest.raises(ValueError, match="3 \\* tubelet_size"):
        PretrainVisionTransformerDecoder(patch_size=16, tubelet_size=2, num_classes=768, embed_dim=48, num_heads=3)


def test_pretrain_no_weight_decay_names():
    assert build_mini_pretrain().no_weight_decay() == {"pos_embed", "cls_token", "mask_token"}


# ---- activation checkpointing ----------------------------------------------------------------------------------


def loss_and_gradients(model: torch.nn.Module, run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    output = run(model)
    loss = F.mse_loss(output, torch.linspace(-1, 1, output.numel()).reshape(output.shape))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_activation_checkpointing_keeps_loss_and_gradients(kind, monkeypatch):
    clip, masks = mini_clip(2), two_tube_masks()
    if kind == "pretrain":
        plain, checkpointed = build_mini_pretrain(), build_mini_pretrain(use_checkpoint=True)

        def run(model):
            return model(clip, masks)
    else:
        plain, checkpointed = build_mini_finetune(), build_mini_finetune(use_checkpoint=True)

        def run(model):
            return model(clip)

    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    original_checkpoint = modeling_finetune.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original_checkpoint(*args, **kwargs)

    monkeypatch.setattr(modeling_finetune, "checkpoint", counting_checkpoint)
    plain_loss, plain_grads = loss_and_gradients(plain, run)
    assert not calls
    checkpointed_loss, checkpointed_grads = loss_and_gradients(checkpointed, run)
    assert len(calls) == (3 if kind == "pretrain" else 2)  # one per block: 2 encoder + 1 decoder, or 2

    torch.testing.assert_close(checkpointed_loss, plain_loss)
    assert checkpointed_grads.keys() == plain_grads.keys() == {n for n, _ in plain.named_parameters()}
    for name, gradient in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], gradient, msg=name)


# ---- fine-tuning model -----------------------------------------------------------------------------------------


def test_finetune_mini_outputs_and_pooling():
    model = build_mini_finetune(num_classes=7)
    clip = mini_clip(2)
    with torch.no_grad():
        logits = model(clip)
        tokens = model.forward_tokens(clip)
        features = model.forward_features(clip)
    assert logits.shape == (2, 7)
    assert tokens.shape == (2, MINI_NUM_TOKENS, 96)
    torch.testing.assert_close(features, model.fc_norm(tokens.mean(dim=1)))
    torch.testing.assert_close(logits, model.head(features))
    assert model.get_num_layers() == 2
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


def test_finetune_without_mean_pooling_uses_final_norm_and_first_token():
    model = build_mini_finetune(use_mean_pooling=False)
    assert model.fc_norm is None and isinstance(model.norm, torch.nn.LayerNorm)
    clip = mini_clip(1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(clip), model.forward_tokens(clip)[:, 0])


def test_init_scale_multiplies_the_head():
    unscaled = build_mini_finetune(init_scale=1.0)
    scaled = build_mini_finetune(init_scale=0.001)
    torch.testing.assert_close(scaled.head.weight, unscaled.head.weight * 0.001)
    assert unscaled.head.weight.std().item() == pytest.approx(0.02, rel=0.3)
    registry_default = timm.create_model("vit_mini_patch16_224", num_classes=5)
    assert 0 < registry_default.head.weight.abs().max() < 1e-4  # registry default init_scale is 0.001
    assert VisionTransformer(embed_dim=96, depth=1, num_heads=3, num_classes=5).head.weight.abs().max() == 0


def test_pretraining_init_follows_videomae():
    """Blocks' Linear layers xavier-uniform (bound sqrt(6 / (fan_in + fan_out))); encoder_to_decoder keeps PyTorch's
    default (bound 1 / sqrt(fan_in)), as VideoMAE never applies its model-level init."""
    model = build_mini_pretrain()  # 96-dim encoder, 48-dim decoder
    fc1 = model.encoder.blocks[0].mlp.fc1.weight
    assert fc1.abs().max().item() == pytest.approx((6 / (96 + 384)) ** 0.5, rel=0.02)
    assert model.encoder_to_decoder.weight.abs().max().item() == pytest.approx(1 / 96**0.5, rel=0.02)


def test_stochastic_depth_rises_linearly_to_drop_path_rate():
    model = build_mini_finetune(drop_path_rate=0.2)
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    assert model.blocks[1].drop_path.drop_prob == pytest.approx(0.2)


# ---- timm registry ---------------------------------------------------------------------------------------------


def test_our_names_override_timm_image_vits():
    for name in FINETUNE_NAMES:
        assert timm.models.model_entrypoint(name) is getattr(modeling_finetune, name)
    for name in PRETRAIN_NAMES:
        assert timm.models.model_entrypoint(name) is getattr(modeling_pretrain, name)


@pytest.mark.parametrize(
    ("name", "embed_dim", "depth", "num_heads"),
    [
        ("vit_mini_patch16_224", 96, 2, 3),
        ("vit_small_patch16_224", 384, 12, 6),
        ("vit_base_patch16_224", 768, 12, 12),
        ("vit_large_patch16_224", 1024, 24, 16),
        ("vit_huge_patch16_224", 1280, 32, 16),
    ],
)
def test_create_model_builds_finetune_sizes(name, embed_dim, depth, num_heads):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=174, img_size=112, all_frames=8, drop_path_rate=0.1)
    assert type(model) is VisionTransformer
    assert isinstance(model.patch_embed.proj, torch.nn.Conv3d)
    assert model.patch_embed.grid_size == (4, 7, 7)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (embed_dim, depth, num_heads)
    assert model.blocks[0].attn.q_bias is not None and model.fc_norm.eps == 1e-6
    assert model.head.out_features == 174
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    with torch.device("meta"):  # every encoder size pretraining offers also comes with the MOFO head
        mofo = timm.create_model(f"{name}_mofo", num_classes=174, img_size=112, all_frames=8)
    assert (mofo.embed_dim, len(mofo.blocks), mofo.blocks[0].attn.num_heads) == (embed_dim, depth, num_heads)


@pytest.mark.parametrize(
    ("name", "encoder", "decoder_dim_heads", "default_decoder_depth"),
    [
        ("pretrain_videomae_mini_patch16_224", (96, 2, 3), (48, 3), 1),
        ("pretrain_videomae_small_patch16_224", (384, 12, 6), (192, 3), 4),
        ("pretrain_videomae_base_patch16_224", (768, 12, 12), (384, 6), 4),
        ("pretrain_videomae_large_patch16_224", (1024, 24, 16), (512, 8), 4),
        ("pretrain_videomae_huge_patch16_224", (1280, 32, 16), (640, 8), 4),
    ],
)
def test_create_model_builds_pretrain_sizes(name, encoder, decoder_dim_heads, default_decoder_depth):
    with torch.device("meta"):
        model = timm.create_model(name, drop_path_rate=0.1)
        deeper = timm.create_model(name, decoder_depth=12)
    assert type(model) is PretrainVisionTransformer
    embed_dim, depth, num_heads = encoder
    assert (model.encoder.embed_dim, len(model.encoder.blocks), model.encoder.blocks[0].attn.num_heads) == encoder
    assert (model.decoder.embed_dim, model.decoder.blocks[0].attn.num_heads) == decoder_dim_heads
    assert len(model.decoder.blocks) == default_decoder_depth and len(deeper.decoder.blocks) == 12
    assert model.encoder.patch_embed.num_patches == 1568 and model.decoder.head.out_features == 1536
    assert model.encoder.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert model.encoder_to_decoder.weight.shape == (decoder_dim_heads[0], embed_dim)


def test_pretrained_weights_are_refused():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("vit_mini_patch16_224", pretrained=True)


def test_importing_the_model_modules_is_quiet():
    script = (
        "import warnings, timm\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import modeling_finetune, modeling_pretrain\n"
        "print([str(w.message) for w in caught])\n"
    )
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

"""VideoMAE-style masked autoencoder for video pretraining (the MOFO pretraining model).

The encoder sees only the visible tubelet tokens; a light decoder receives them (projected to its width) followed by
one mask token per masked position, each carrying the sinusoidal position of the token it stands for, and predicts
the pixels of the masked tubelets in ascending token order. State-dict keys are exactly VideoMAE's
(``encoder.*``, ``encoder_to_decoder.weight``, ``mask_token``, ``decoder.*``; no position tables), so released
VideoMAE/MOFO pretraining checkpoints load with ``strict=True``.

Importing this module registers ``pretrain_videomae_{mini,small,base,large,huge}_patch16_224`` in timm's registry.
"""

import itertools
from collections.abc import Callable

import torch
from timm.layers import trunc_normal_
from timm.models import register_model
from torch import nn

from modeling_finetune import (
    LayerNorm6,
    PatchEmbed,
    build_blocks,
    drop_timm_factory_kwargs,
    get_sinusoid_encoding_table,
    run_blocks,
)

__all__ = [
    "PretrainVisionTransformer",
    "PretrainVisionTransformerDecoder",
    "PretrainVisionTransformerEncoder",
]


def init_weights_xavier(module: nn.Module) -> None:
    """VideoMAE pretraining init: Linear weights xavier-uniform, zero biases; LayerNorm to identity."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


TARGETS = ("pixel", "trajectory", "hog")
TARGET_CHOICES = tuple("+".join(names) for size in range(1, len(TARGETS) + 1)
                       for names in itertools.combinations(TARGETS, size))
DEFAULT_TUBELET_SIZE = 2  # frames per token of every registered model (VideoMAE's)
DEFAULT_PATCH_SIZE = 16  # patch side of every registered model


def canonical_target(target: str) -> str:
    """``--target`` in the order of :data:`TARGETS` (``hog+pixel`` -> ``pixel+hog``), for argparse's ``type``."""
    names = target.split("+")
    return "+".join(sorted(names, key=lambda name: TARGETS.index(name) if name in TARGETS else len(TARGETS)))


def parse_targets(target: str) -> tuple[str, ...]:
    """``--target`` (``pixel``, ``trajectory``, ``hog`` or a ``+``-joined set of them) as a tuple of names."""
    names = tuple(target.split("+"))
    if not names or any(name not in TARGETS for name in names) or len(set(names)) != len(names):
        raise ValueError(f"target must be '+'-joined names from {TARGETS}, got {target!r}")
    return names


def split_tokens(mask: torch.Tensor, num_masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, N_visible) and (B, N_masked) of the visible and masked tokens, each ascending: the tokens
    ``x[~mask]`` and ``x[mask]`` select. Boolean indexing waits for the device to count the selection; with
    ``num_masked`` (the same for every sample, known to the data loader) nothing waits."""
    if num_masked is None:
        num_masked = int(mask[0].sum())
    order = torch.argsort(mask.to(torch.int32), dim=1, stable=True)
    num_visible = mask.shape[1] - num_masked
    return order[:, :num_visible], order[:, num_visible:]


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, N, C) at ``index`` (B, K) -> (B, K, C)."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


class PretrainVisionTransformerEncoder(nn.Module):
    """ViT encoder over the visible tokens only: embed the visible tubelets, add their positions, run blocks."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 0,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNorm6,
        init_values: float | None = None,
        tubelet_size: int = 2,
        use_checkpoint: bool = False,
        use_learnable_pos_emb: bool = False,
        num_frames: int = 16,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.use_checkpoint = use_checkpoint
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            num_frames=num_frames,
            tubelet_size=tubelet_size,
        )
        num_patches = self.patch_embed.num_patches
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", get_sinusoid_encoding_table(num_patches, embed_dim), persistent=False)
        self.blocks = build_blocks(
            depth=depth,
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            init_values=init_values,
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights_xavier)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
        """Encoded visible tokens (B, N_visible, C) in ascending token order; ``mask`` (B, N) is True where masked.
        Only the visible tubelets are embedded (exact: see ``PatchEmbed.embed_tokens``)."""
        visible_index, _ = split_tokens(mask, num_masked)
        visible = self.patch_embed.embed_tokens(x, visible_index)
        pos = self.pos_embed.to(dtype=visible.dtype).expand(x.shape[0], -1, -1)
        visible = visible + gather_tokens(pos, visible_index)
        visible = run_blocks(self.blocks, visible, self.use_checkpoint and self.training)
        return self.head(self.norm(visible))


class PretrainVisionTransformerDecoder(nn.Module):
    """Transformer decoder with one linear head per target: ``head`` predicts 3 * tubelet * patch^2 pixels per
    token (VideoMAE's key), ``trajectory_head`` ``trajectory_dim`` trajectory values and ``hog_head`` ``hog_dim``
    HOG values (M3Video / MME)."""

    def __init__(
        self,
        patch_size: int = 16,
        num_classes: int = 1536,
        embed_dim: int = 384,
        depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNorm6,
        init_values: float | None = None,
        tubelet_size: int = 2,
        use_checkpoint: bool = False,
        targets: tuple[str, ...] = ("pixel",),
        trajectory_dim: int = 0,
        hog_dim: int = 0,
    ):
        super().__init__()
        if "trajectory" in targets and trajectory_dim <= 0:
            raise ValueError("the trajectory target needs trajectory_dim > 0 (see trajectory_targets.py)")
        if "hog" in targets and hog_dim <= 0:
            raise ValueError("the hog target needs hog_dim > 0 (see hog_targets.py)")
        pixels_per_tubelet = 3 * tubelet_size * patch_size**2
        if num_classes != pixels_per_tubelet:
            raise ValueError(
                f"decoder num_classes must be 3 * tubelet_size * patch_size^2 = {pixels_per_tubelet}, got {num_classes}"
            )
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.use_checkpoint = use_checkpoint
        self.blocks = build_blocks(
            depth=depth,
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            init_values=init_values,
        )
        self.norm = norm_layer(embed_dim)
        self.targets = tuple(targets)
        if "pixel" in self.targets:
            self.head = nn.Linear(embed_dim, num_classes)
        if "trajectory" in self.targets:
            self.trajectory_head = nn.Linear(embed_dim, trajectory_dim)
        if "hog" in self.targets:
            self.hog_head = nn.Linear(embed_dim, hog_dim)
        self.apply(init_weights_xavier)

    def forward(self, x: torch.Tensor, return_token_num: int | None = None) -> dict[str, torch.Tensor]:
        """Each target's predictions for the last ``return_token_num`` tokens (all tokens when None)."""
        x = run_blocks(self.blocks, x, self.use_checkpoint and self.training)
        if return_token_num is not None:
            x = x[:, x.shape[1] - return_token_num :]
        x = self.norm(x)
        heads = {"pixel": "head", "trajectory": "trajectory_head", "hog": "hog_head"}
        return {name: getattr(self, heads[name])(x) for name in self.targets}


class PretrainVisionTransformer(nn.Module):
    """Encoder + ``encoder_to_decoder`` projection + ``mask_token`` + decoder, with VideoMAE's state-dict keys.

    ``forward(x, mask)`` returns (B, N_masked, decoder_num_classes) predictions for the masked tubelets in ascending
    token order, which is the order of ``patches[mask]`` when building the reconstruction target. A model built
    with other ``targets`` than ``("pixel",)`` returns a dict of such predictions, one per target.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        encoder_in_chans: int = 3,
        encoder_num_classes: int = 0,
        encoder_embed_dim: int = 768,
        encoder_depth: int = 12,
        encoder_num_heads: int = 12,
        decoder_num_classes: int = 1536,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNorm6,
        init_values: float = 0.0,
        use_learnable_pos_emb: bool = False,
        use_checkpoint: bool = False,
        tubelet_size: int = 2,
        num_frames: int = 16,
        targets: tuple[str, ...] | str = ("pixel",),
        trajectory_dim: int = 0,
        hog_dim: int = 0,
    ):
        super().__init__()
        self.targets = parse_targets(targets) if isinstance(targets, str) else tuple(targets)
        self.encoder = PretrainVisionTransformerEncoder(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=encoder_in_chans,
            num_classes=encoder_num_classes,
            embed_dim=encoder_embed_dim,
            depth=encoder_depth,
            num_heads=encoder_num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            init_values=init_values,
            tubelet_size=tubelet_size,
            use_checkpoint=use_checkpoint,
            use_learnable_pos_emb=use_learnable_pos_emb,
            num_frames=num_frames,
        )
        self.decoder = PretrainVisionTransformerDecoder(
            patch_size=patch_size,
            num_classes=decoder_num_classes,
            embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            init_values=init_values,
            tubelet_size=tubelet_size,
            use_checkpoint=use_checkpoint,
            targets=self.targets,
            trajectory_dim=trajectory_dim,
            hog_dim=hog_dim,
        )
        encoder_out_dim = encoder_num_classes if encoder_num_classes > 0 else encoder_embed_dim
        # PyTorch's default Linear init, as in VideoMAE (its model-level xavier init is defined but never applied)
        self.encoder_to_decoder = nn.Linear(encoder_out_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # VideoMAE truncates at +-1 std here (its own trunc_normal_ wrapper), not timm's absolute +-2.
        trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        num_patches = self.encoder.patch_embed.num_patches
        self.register_buffer("pos_embed", get_sinusoid_encoding_table(num_patches, decoder_embed_dim), persistent=False)

    def get_num_layers(self) -> int:
        return len(self.encoder.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token"}  # VideoMAE's set

    def _check_mask(self, mask: torch.Tensor, batch: int, num_masked: int | None) -> None:
        """Shape and dtype; the per-sample counts only when ``num_masked`` is not given (that check waits for the
        device: the engine checks the data loader's CPU mask instead)."""
        expected_shape = (batch, self.encoder.patch_embed.num_patches)
        if mask.dtype != torch.bool or tuple(mask.shape) != expected_shape:
            raise ValueError(
                f"mask must be a bool tensor of shape {expected_shape} (True = masked), "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        if num_masked is not None:
            return
        masked_per_sample = mask.sum(dim=1)
        if bool((masked_per_sample != masked_per_sample[0]).any()):
            raise ValueError(
                "every sample in the batch must mask the same number of tokens, "
                f"got per-sample counts {masked_per_sample.tolist()}"
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None):
        """Pixel predictions (B, N_masked, decoder_num_classes) for clips (B, C, T, H, W) and mask (B, N), or a
        dict of predictions per target. ``num_masked``: the number of True entries per row of ``mask``, when the
        caller knows it (then nothing in the forward waits for the device)."""
        self._check_mask(mask, x.shape[0], num_masked)
        visible_index, masked_index = split_tokens(mask, num_masked)
        visible = self.encoder_to_decoder(self.encoder(x, mask, masked_index.shape[1]))
        pos = self.pos_embed.to(dtype=visible.dtype).expand(visible.shape[0], -1, -1)
        pos_masked = gather_tokens(pos, masked_index)
        decoder_input = torch.cat([visible + gather_tokens(pos, visible_index),
                                   self.mask_token.to(dtype=visible.dtype) + pos_masked], dim=1)
        outputs = self.decoder(decoder_input, return_token_num=pos_masked.shape[1])
        return outputs["pixel"] if self.targets == ("pixel",) else outputs


DECODER_DEFAULT_DEPTH = 4


def _build_pretrain_model(
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    decoder_embed_dim: int,
    decoder_num_heads: int,
    pretrained: bool,
    kwargs: dict,
    decoder_depth: int = DECODER_DEFAULT_DEPTH,
) -> PretrainVisionTransformer:
    """Builder behind the registered names; keyword arguments override every default.

    ``decoder_num_classes`` defaults to 3 * tubelet_size * patch_size^2 for the requested tubelet and patch sizes.
    """
    if pretrained:
        raise ValueError("no pretrained weights are bundled; create the model and load a checkpoint instead")
    config = dict(
        img_size=224,
        patch_size=16,
        encoder_embed_dim=encoder_embed_dim,
        encoder_depth=encoder_depth,
        encoder_num_heads=encoder_num_heads,
        encoder_num_classes=0,
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=LayerNorm6,
    )
    config.update(drop_timm_factory_kwargs(kwargs))
    config.setdefault("tubelet_size", DEFAULT_TUBELET_SIZE)
    config.setdefault("decoder_num_classes", 3 * config["tubelet_size"] * config["patch_size"] ** 2)
    return PretrainVisionTransformer(**config)


@register_model
def pretrain_videomae_mini_patch16_224(pretrained: bool = False, **kwargs) -> PretrainVisionTransformer:
    """Tiny model (encoder 96-dim/2 blocks/3 heads, decoder 48-dim/1 block/3 heads) for CPU tests and demos."""
    return _build_pretrain_model(96, 2, 3, 48, 3, pretrained, kwargs, decoder_depth=1)


@register_model
def pretrain_videomae_small_patch16_224(pretrained: bool = False, **kwargs) -> PretrainVisionTransformer:
    return _build_pretrain_model(384, 12, 6, 192, 3, pretrained, kwargs)


@register_model
def pretrain_videomae_base_patch16_224(pretrained: bool = False, **kwargs) -> PretrainVisionTransformer:
    return _build_pretrain_model(768, 12, 12, 384, 6, pretrained, kwargs)


@register_model
def pretrain_videomae_large_patch16_224(pretrained: bool = False, **kwargs) -> PretrainVisionTransformer:
    return _build_pretrain_model(1024, 24, 16, 512, 8, pretrained, kwargs)


@register_model
def pretrain_videomae_huge_patch16_224(pretrained: bool = False, **kwargs) -> PretrainVisionTransformer:
    return _build_pretrain_model(1280, 32, 16, 640, 8, pretrained, kwargs)

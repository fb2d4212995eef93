"""Video ViT for fine-tuning, plus the building blocks shared with the pretraining model.

Re-implements the VideoMAE fine-tuning architecture with identical state-dict names, so VideoMAE/MOFO checkpoints
load without renaming: tubelet patch embedding, fixed 1-D sinusoidal positions over the flattened (t, h, w) token
index, pre-norm blocks whose attention has learned q and v biases but no k bias (BEiT style), and mean pooling
followed by ``fc_norm`` and a linear head. Attention runs through ``F.scaled_dot_product_attention`` so fused kernels
are used where available.

Importing this module registers ``vit_{mini,small,base,large,huge}_patch16_224`` in timm's model registry. Those names
shadow timm's own image ViTs (and their pretrained tags) for the rest of the process, as VideoMAE's code did.
"""

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_
from timm.models import register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from masking_generator import inside_box_tokens, overlapping_box_tokens

__all__ = [
    "Attention",
    "Block",
    "Mlp",
    "PatchEmbed",
    "MotionFocusedVisionTransformer",
    "MultiCrossAttention",
    "VisionTransformer",
    "build_blocks",
    "drop_timm_factory_kwargs",
    "get_sinusoid_encoding_table",
    "run_blocks",
]

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)

# Arguments timm.create_model always hands to registered functions; our builders have no pretrained configs.
TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def get_sinusoid_encoding_table(n_position: int, d_hid: int) -> torch.Tensor:
    """Transformer sin/cos table of shape (1, n_position, d_hid), float32.

    Channel i of position p holds p / 10000^(2*(i//2)/d_hid), through sin for even i and cos for odd i. Computed in
    float64 and rounded once, like VideoMAE's NumPy version.
    """
    positions = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)
    exponents = 2 * torch.div(torch.arange(d_hid), 2, rounding_mode="floor").to(torch.float64) / d_hid
    angles = positions / torch.pow(10000.0, exponents)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


class Mlp(nn.Module):
    """Transformer feed-forward: fc1 -> act -> fc2 -> dropout.

    As in VideoMAE (and BERT), dropout is applied only after fc2.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Attention(nn.Module):
    """Multi-head self-attention with BEiT-style biases.

    ``qkv`` is a bias-free Linear; with ``qkv_bias`` the bias (q_bias, 0, v_bias) is added, so keys get no bias
    (a key bias would shift every score of a query by the same amount and cancel in the softmax).
    ``attn_head_dim`` decouples the per-head width from ``dim // num_heads``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_head_dim: int | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        all_head_dim = self.head_dim * num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.attn_drop_p = attn_drop

        self.qkv = nn.Linear(dim, all_head_dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(all_head_dim))
            self.v_bias = nn.Parameter(torch.zeros(all_head_dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.proj = nn.Linear(all_head_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over (B, N, C)."""
        batch, num_tokens, _ = x.shape
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(batch, num_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop_p if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(batch, num_tokens, -1)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth and optional layer scale (``gamma_1``/``gamma_2``).

    Layer-scale parameters exist only when ``init_values > 0``, matching VideoMAE's checkpoint keys.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        init_values: float | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = LayerNorm6,
        attn_head_dim: int | None = None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
            attn_head_dim=attn_head_dim,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        if init_values and init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = None
            self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


def build_blocks(
    depth: int,
    dim: int,
    num_heads: int,
    mlp_ratio: float,
    qkv_bias: bool,
    qk_scale: float | None,
    drop_rate: float,
    attn_drop_rate: float,
    drop_path_rate: float,
    norm_layer: Callable[[int], nn.Module],
    init_values: float | None,
) -> nn.ModuleList:
    """A stack of ``depth`` blocks whose stochastic-depth rate rises linearly from 0 to ``drop_path_rate``."""
    drop_path_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
    return nn.ModuleList(
        Block(
            dim=dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            drop_path=rate,
            init_values=init_values,
            norm_layer=norm_layer,
        )
        for rate in drop_path_rates
    )


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply ``blocks`` in order; with ``use_checkpoint`` each block's activations are recomputed in backward."""
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
    return x


class PatchEmbed(nn.Module):
    """Video to tubelet tokens: a Conv3d with kernel = stride = (tubelet, patch, patch), flattened to (B, N, C).

    Tokens are ordered (t, h, w) row-major; ``grid_size`` is (T', H', W') and ``num_patches`` their product.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        num_frames: int = 16,
        tubelet_size: int = 2,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.tubelet_size = int(tubelet_size)
        self.num_frames = num_frames
        sizes = (num_frames, *self.img_size)
        kernel = (self.tubelet_size, *self.patch_size)
        misfits = [f"--num_frames {num_frames} is not a multiple of the tubelet's {self.tubelet_size} frames"
                   ] if num_frames % self.tubelet_size else []
        if any(size % step for size, step in zip(self.img_size, self.patch_size, strict=True)):
            side = self.img_size[0] if len(set(self.img_size)) == 1 else " x ".join(map(str, self.img_size))
            patch = self.patch_size[0] if len(set(self.patch_size)) == 1 else " x ".join(map(str, self.patch_size))
            misfits.append(f"--input_size {side} is not a multiple of the patch size {patch}")
        if misfits:
            raise ValueError(f"clips of (frames, height, width) {sizes} do not split into tubelets of {kernel}: "
                             + "; ".join(misfits))
        self.grid_size = tuple(size // step for size, step in zip(sizes, kernel, strict=True))
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.num_frames, *self.img_size)
        if tuple(x.shape[2:]) != expected:
            raise ValueError(f"expected input (B, C, T, H, W) with (T, H, W) = {expected}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)

    def embed_tokens(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` at the tokens ``index`` (B, K) only, (B, K, C): a convolution whose kernel equals its stride
        is one linear map per tubelet, so only the K tubelets are gathered and projected. With 90% masking the
        encoder embeds a tenth of the tokens."""
        self._check_input(x)
        (t, h, w), (pt, ph, pw) = self.grid_size, (self.tubelet_size, *self.patch_size)
        batch, channels = x.shape[:2]
        tubes = x.reshape(batch, channels, t, pt, h, ph, w, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)  # a view
        rows = torch.arange(batch, device=x.device)[:, None]
        picked = tubes[rows, index // (h * w), index // w % h, index % w]  # (B, K, C, pt, ph, pw): copies K only
        return F.linear(picked.flatten(2), self.proj.weight.flatten(1), self.proj.bias)


def init_weights_trunc_normal(module: nn.Module) -> None:
    """VideoMAE fine-tuning init: Linear weights ~ N(0, 0.02) truncated, zero biases; LayerNorm to identity."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """VideoMAE's fine-tuning ViT: tubelet tokens + positions -> blocks -> mean pool -> ``fc_norm`` -> head.

    With ``use_mean_pooling=False`` the final ``norm`` is applied and the first token is returned as the feature
    (VideoMAE's ``--use_cls`` path; there is no class token, so it is the first patch token).
    Positions are a fixed sinusoid buffer (not saved in checkpoints) unless ``use_learnable_pos_emb``.
    The head is initialised like the other Linear layers, then multiplied by ``init_scale``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
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
        init_values: float = 0.0,
        use_learnable_pos_emb: bool = False,
        init_scale: float = 0.0,
        all_frames: int = 16,
        tubelet_size: int = 2,
        use_mean_pooling: bool = True,
        fc_drop_rate: float = 0.0,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.tubelet_size = tubelet_size
        self.use_checkpoint = use_checkpoint

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            num_frames=all_frames,
            tubelet_size=tubelet_size,
        )
        num_patches = self.patch_embed.num_patches
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        else:
            self.register_buffer("pos_embed", get_sinusoid_encoding_table(num_patches, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(p=drop_rate)

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
        self.norm = nn.Identity() if use_mean_pooling else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_mean_pooling else None
        self.fc_dropout = nn.Dropout(p=fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        if use_learnable_pos_emb:
            trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_weights_trunc_normal)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    def get_num_layers(self) -> int:
        return len(self.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}  # VideoMAE's set (it has no class token either)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-layer tokens (B, N, C) before pooling, in (t, h, w) order."""
        x = self.patch_embed(x)
        x = self.pos_drop(x + self.pos_embed.to(dtype=x.dtype))
        x = run_blocks(self.blocks, x, self.use_checkpoint and self.training)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled clip feature (B, C): ``fc_norm`` of the token mean (or the first token without mean pooling)."""
        tokens = self.forward_tokens(x)
        if self.fc_norm is not None:
            return self.fc_norm(tokens.mean(dim=1))
        return tokens[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) for a clip batch (B, C, T, H, W)."""
        return self.head(self.fc_dropout(self.forward_features(x)))


def slice_frame_boxes(boxes: torch.Tensor, num_slices: int) -> torch.Tensor:
    """(B, T', frames per slice, 4) from one box per clip (B, 4: one frame per slice) or one per frame (B, T, 4)."""
    if boxes.ndim == 2:
        return boxes[:, None, None].expand(-1, num_slices, 1, -1)
    batch, frames, _ = boxes.shape
    if frames % num_slices:
        raise ValueError(f"{frames} per-frame boxes do not split into {num_slices} token time slices")
    return boxes.reshape(batch, num_slices, frames // num_slices, 4)


def tubelet_boxes(boxes: torch.Tensor, num_slices: int) -> torch.Tensor:
    """Motion boxes per token time slice (B, T', 4) from one box per clip (B, 4) or one per frame (B, T, 4); a
    slice's box is the union of its frames' boxes (NaN rows ignored, NaN when all are)."""
    per_slice = slice_frame_boxes(boxes, num_slices)
    missing = torch.isnan(per_slice).any(-1, keepdim=True)
    low = torch.where(missing, torch.inf, per_slice).amin(2)
    high = torch.where(missing, -torch.inf, per_slice).amax(2)
    union = torch.cat([low[..., :2], high[..., 2:]], dim=-1)
    return torch.where(missing.all(2), torch.nan, union)


def cross_set_attention_mask(inside: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N) mask letting every token of ``inside``'s two sets (B, N) attend to the tokens of the other set,
    or to all tokens where a sample has one set only (its own set is then all of them). One comparison: the mask is
    the largest tensor of the head (N x N per clip)."""
    one_set = (inside.all(dim=1) | ~inside.any(dim=1))[:, None, None]
    return ((inside[:, :, None] != inside[:, None, :]) | one_set)[:, None]


def masked_mean(tokens: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Mean of the selected tokens per sample (B, C), summed in fp32; the mean of all tokens where none is
    selected."""
    selected = torch.where(selected.any(dim=1, keepdim=True), selected, torch.ones_like(selected))
    weights = selected.float()[..., None]
    return ((tokens.float() * weights).sum(1) / weights.sum(1)).to(tokens.dtype)  # fp32 sums: no fp16 overflow


@dataclass(frozen=True)
class TokenSets:
    """Flat row indices (into the (B * N) tokens of a batch) of the tokens each MCA block processes: ``own[i]``
    are the queries block i updates (0: inner = inside tokens, 1: outer = outside tokens), ``keys[i]`` the tokens
    whose keys and values block i computes: the other set's tokens, or a sample's own set when its other set is
    empty."""

    own: tuple[torch.Tensor, torch.Tensor]
    keys: tuple[torch.Tensor, torch.Tensor]


def mca_token_sets(inside: torch.Tensor, device: torch.device) -> TokenSets:
    """The :class:`TokenSets` of an inside mask (B, N), indexed on the host (no device wait when ``inside`` is on the
    CPU) and moved to ``device``."""
    inside = inside.cpu()
    outside = ~inside
    has_inside, has_outside = inside.any(1, keepdim=True), outside.any(1, keepdim=True)

    def rows(selected: torch.Tensor) -> torch.Tensor:
        return selected.flatten().nonzero().squeeze(1).to(device, non_blocking=True)

    return TokenSets(own=(rows(inside), rows(outside)),
                     keys=(rows(outside & has_inside | inside & ~has_outside),
                           rows(inside & has_outside | outside & ~has_inside)))


def _scatter_rows(num_rows: int, parts: list[tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """(num_rows, C) zeros with each part's values (K, C) written at its rows (K,)."""
    width = parts[0][1].shape[-1] if parts else like.shape[-1]
    out = like.new_zeros(num_rows, width, dtype=parts[0][1].dtype if parts else like.dtype)
    for rows, values in parts:
        out = out.index_copy(0, rows, values.to(out.dtype))
    return out


class MultiCrossAttention(nn.Module):
    """One MCA layer: tokens inside the motion box cross-attend to those outside (``inner`` block) and, in
    ``both`` mode, outside tokens to inside ones (``outer`` block, own weights). Both read the same input.

    Each token goes through the blocks' projections and MLP once: its query, output projection and MLP from its own
    set's block, its key and value from the block of the set that attends to it; one attention over the batch
    (masked to the other set, or to the token's own set where the other is empty) serves both blocks. The cost is
    one block, not two blocks over all tokens, and the result is that of running each block on all tokens and
    keeping its own set's outputs (:func:`cross_set_attention_mask`)."""

    def __init__(self, dim: int, num_heads: int, mode: str = "both", **block_kwargs):
        super().__init__()
        if mode not in ("both", "inner"):
            raise ValueError(f"mca_mode must be 'both' or 'inner', got {mode!r}")
        self.inner = Block(dim, num_heads, **block_kwargs)
        self.outer = Block(dim, num_heads, **block_kwargs) if mode == "both" else None

    def forward(self, tokens: torch.Tensor, inside: torch.Tensor, sets: TokenSets | None = None) -> torch.Tensor:
        """``tokens`` (B, N, C), ``inside`` (B, N) bool on the tokens' device; ``sets`` from
        :func:`mca_token_sets` (computed from ``inside`` when not given, which waits for the device)."""
        sets = sets or mca_token_sets(inside, tokens.device)
        batch, num_tokens, dim = tokens.shape
        x = tokens.reshape(batch * num_tokens, dim)
        blocks = [(block, own, keys) for block, own, keys in zip((self.inner, self.outer), sets.own, sets.keys,
                                                                 strict=True) if block is not None]
        attn = self.inner.attn
        width = attn.num_heads * attn.head_dim
        queries, keys, values = [], [], []
        for block, own, key_rows in blocks:
            weight = block.attn.qkv.weight
            queries.append((own, F.linear(block.norm1(x[own]), weight[:width], block.attn.q_bias)))
            hidden = block.norm1(x[key_rows])
            keys.append((key_rows, F.linear(hidden, weight[width:2 * width])))
            values.append((key_rows, F.linear(hidden, weight[2 * width:], block.attn.v_bias)))
        q, k, v = (_scatter_rows(batch * num_tokens, parts, x).reshape(batch, num_tokens, attn.num_heads, -1)
                   .transpose(1, 2) for parts in (queries, keys, values))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=cross_set_attention_mask(inside), scale=attn.scale,
                                                  dropout_p=attn.attn_drop_p if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch * num_tokens, width)
        updated = x
        for block, own, _ in blocks:
            y = x[own] + block.attn.proj_drop(block.attn.proj(attended[own]))
            y = y + block.mlp(block.norm2(y))
            updated = updated.index_copy(0, own, y.to(updated.dtype))
        return updated.reshape(batch, num_tokens, dim)


MCA_POOLS = ("fuse", "inside")
MCA_TOKEN_RULES = ("centre", "overlap")


MCA_SETTINGS = ("mca_mode", "mca_depth", "mca_heads", "mca_pool", "mca_tokens")  # the MOFO head's constructor flags


class MotionFocusedVisionTransformer(VisionTransformer):
    """MOFO fine-tuning model: the VideoMAE ViT encoder, then ``mca_depth`` multi-cross-attention layers fusing the
    tokens inside and outside the motion box, then (``mca_pool`` fuse) the inside and outside token means ->
    ``fuse`` -> ``fc_norm`` -> head. ``forward(x, box)`` takes normalised xyxy boxes, one per clip (B, 4) or one per
    frame (B, T, 4), best on the CPU (as the data loader gives them: the token sets are then indexed without waiting
    for the device); tokens are split by the masking generator's patch-centre rule (``mca_tokens`` centre: inside
    the union box of the slice's frames). A clip without a box (NaN) has no inside tokens: its outside tokens then
    attend among themselves and both pooled halves are the mean of all tokens.

    The MOFO release's head is ``mca_mode="inner", mca_heads=3, mca_pool="inside", mca_tokens="overlap"``: inside
    tokens attend to outside ones, only the inside mean is classified, and a token is inside when its tube shares a
    pixel with the box of either of its frames (see :func:`utils.release_mca_state` for its checkpoints)."""

    def __init__(self, mca_mode: str = "both", mca_depth: int = 1, mca_heads: int | None = None,
                 mca_pool: str = "fuse", mca_tokens: str = "centre", **kwargs):
        super().__init__(**kwargs)
        if self.fc_norm is None:
            raise ValueError("the MOFO head pools tokens: use_mean_pooling must be True")
        if mca_pool not in MCA_POOLS or mca_tokens not in MCA_TOKEN_RULES:
            raise ValueError(f"mca_pool must be one of {MCA_POOLS} and mca_tokens one of {MCA_TOKEN_RULES}, got "
                             f"{mca_pool!r} and {mca_tokens!r}")
        if mca_pool == "inside" and mca_mode == "both":
            raise ValueError("mca_pool 'inside' classifies the inside tokens only, so the last layer's outside block "
                             "would never be used: use mca_mode 'inner' with it")
        self.mca_pool, self.mca_tokens = mca_pool, mca_tokens
        dim = self.embed_dim
        block_kwargs = dict(mlp_ratio=kwargs.get("mlp_ratio", 4.0), qkv_bias=kwargs.get("qkv_bias", False),
                            norm_layer=kwargs.get("norm_layer", LayerNorm6), drop=kwargs.get("drop_rate", 0.0),
                            attn_drop=kwargs.get("attn_drop_rate", 0.0))
        heads = mca_heads or kwargs.get("num_heads", 12)
        self.mca = nn.ModuleList(MultiCrossAttention(dim, heads, mca_mode, **block_kwargs) for _ in range(mca_depth))
        self.fuse = nn.Linear(2 * dim, dim) if mca_pool == "fuse" else None  # built before the inits: same draws
        self.mca.apply(init_weights_trunc_normal)
        if self.fuse is not None:
            init_weights_trunc_normal(self.fuse)

    def mca_settings(self) -> dict:
        """The head's constructor settings, :data:`MCA_SETTINGS` (checked when a MOFO release checkpoint is
        loaded)."""
        first = self.mca[0] if len(self.mca) else None
        settings = {"mca_mode": None if first is None else "inner" if first.outer is None else "both",
                    "mca_depth": len(self.mca), "mca_heads": None if first is None else first.inner.attn.num_heads,
                    "mca_pool": self.mca_pool, "mca_tokens": self.mca_tokens}
        return {name: settings[name] for name in MCA_SETTINGS}

    def inside_tokens(self, box: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: which tokens are inside, by ``mca_tokens``: centre, the patch centre lies in the union box of
        the slice's frames; overlap, the tube shares a pixel with the box of any of its frames."""
        num_slices, grid_h, grid_w = self.patch_embed.grid_size
        if self.mca_tokens == "centre":
            return inside_box_tokens(tubelet_boxes(box.float(), num_slices), (grid_h, grid_w)).flatten(1)
        overlap = overlapping_box_tokens(slice_frame_boxes(box.float(), num_slices), (grid_h, grid_w))
        return overlap.any(2).flatten(1)  # (B, T', frames per slice, H'W') -> (B, T' * H'W')

    def forward_features(self, x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        inside_host = self.inside_tokens(box)  # where the box is: on the CPU, nothing below waits for the device
        sets = mca_token_sets(inside_host, tokens.device)
        inside = inside_host.to(tokens.device, non_blocking=True)
        for layer in self.mca:
            tokens = layer(tokens, inside, sets)
        if self.fuse is None:
            return self.fc_norm(masked_mean(tokens, inside))
        pooled = torch.cat([masked_mean(tokens, inside), masked_mean(tokens, ~inside)], dim=-1)
        return self.fc_norm(self.fuse(pooled))

    def forward(self, x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) for clips (B, C, T, H, W) and their motion boxes."""
        return self.head(self.fc_dropout(self.forward_features(x, box)))


def drop_timm_factory_kwargs(kwargs: dict) -> dict:
    """Copy of ``kwargs`` without the pretrained-config arguments that ``timm.create_model`` always passes."""
    return {key: value for key, value in kwargs.items() if key not in TIMM_FACTORY_KWARGS}


def register_overriding_timm(fn: Callable) -> Callable:
    """``register_model`` that silences timm's warning about replacing an existing entry of the same name."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=rf"Overwriting {re.escape(fn.__name__)} in registry")
        return register_model(fn)


def _build_vision_transformer(embed_dim: int, depth: int, num_heads: int, pretrained: bool, kwargs: dict,
                              model_class: type[VisionTransformer] = VisionTransformer):
    """Builder behind the registered names; keyword arguments override the size defaults.

    ``init_scale`` defaults to 0.001, VideoMAE's fine-tuning default (the class default 0 would zero the head).
    """
    if pretrained:
        raise ValueError("no pretrained weights are bundled; create the model and load a checkpoint instead")
    config = dict(
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=LayerNorm6,
        init_scale=0.001,
    )
    config.update(drop_timm_factory_kwargs(kwargs))
    return model_class(**config)


@register_overriding_timm
def vit_mini_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Tiny 96-dim, 2-block, 3-head model for CPU tests and demos."""
    return _build_vision_transformer(96, 2, 3, pretrained, kwargs)


@register_overriding_timm
def vit_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _build_vision_transformer(384, 12, 6, pretrained, kwargs)


@register_overriding_timm
def vit_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _build_vision_transformer(768, 12, 12, pretrained, kwargs)


@register_overriding_timm
def vit_large_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _build_vision_transformer(1024, 24, 16, pretrained, kwargs)


@register_overriding_timm
def vit_huge_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _build_vision_transformer(1280, 32, 16, pretrained, kwargs)


@register_model
def vit_mini_patch16_224_mofo(pretrained: bool = False, **kwargs) -> MotionFocusedVisionTransformer:
    """The mini model with the MOFO multi-cross-attention head, for CPU tests and demos."""
    return _build_vision_transformer(96, 2, 3, pretrained, kwargs, MotionFocusedVisionTransformer)


@register_model
def vit_small_patch16_224_mofo(pretrained: bool = False, **kwargs) -> MotionFocusedVisionTransformer:
    return _build_vision_transformer(384, 12, 6, pretrained, kwargs, MotionFocusedVisionTransformer)


@register_model
def vit_base_patch16_224_mofo(pretrained: bool = False, **kwargs) -> MotionFocusedVisionTransformer:
    return _build_vision_transformer(768, 12, 12, pretrained, kwargs, MotionFocusedVisionTransformer)


@register_model
def vit_large_patch16_224_mofo(pretrained: bool = False, **kwargs) -> MotionFocusedVisionTransformer:
    return _build_vision_transformer(1024, 24, 16, pretrained, kwargs, MotionFocusedVisionTransformer)


@register_model
def vit_huge_patch16_224_mofo(pretrained: bool = False, **kwargs) -> MotionFocusedVisionTransformer:
    return _build_vision_transformer(1280, 32, 16, pretrained, kwargs, MotionFocusedVisionTransformer)

"""HOG targets for masked tokens: the appearance and shape part of MME / M3Video's targets (Sun et al. 2023), also
MaskFeat's target (Wei et al. 2022).

:func:`hog_cells` computes per-channel histograms of oriented gradients: Sobel gradients with replicated borders,
unsigned orientation in [0, pi) split into ``bins`` bins with linear interpolation between the two nearest bin
centres (``k * pi / bins``), magnitudes averaged over ``cell_size`` x ``cell_size`` cells, then ``l2``: each
channel's histogram of a cell divided by its L2 norm (MaskFeat), or ``none`` (the MME release's ``--hog_norm none``).
Images are pixels in [0, 1]. Where the MME release's ``HOGDescriptorByConv`` differs: it takes the ImageNet-normalised
input (each channel's gradients scaled by 1/std); its Sobel ``nn.Conv2d`` keeps PyTorch's random bias (up to +-1/3
added to each gradient, redrawn at every training step, so flat regions get random histograms); its ``ceil`` /
``floor`` weights give nothing to a gradient exactly on a bin centre (e.g. a pure x gradient, absent that bias); and
its ``+= 9`` fits 9 bins only. Here each gradient's votes sum to its magnitude, for any number of bins.

Two samplings give a token's target (``--hog_sampling``):

- ``tubelet`` (the MME release's default recipe, ``traj_varient base``): the cells of the token's patch in the middle
  sampled frame of its tubelet, computed in the training step on the device from the uint8 batch. ``(patch /
  cell)^2 * 3 * bins`` values per token, cells row-major, then channel, then bin.
- ``trajectory`` (the MME paper's shape features zs, the release's ``VolumeHOG``): the cell each tracked point of
  :mod:`trajectory_targets` is in, at every source frame step of the token's tubelet, computed in the data
  workers. ``points * steps * 3 * bins`` values per token (points, then steps, then channel, then bin).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

HOG_NORMS = ("l2", "none")
HOG_SAMPLINGS = ("tubelet", "trajectory")
HOG_CHANNELS = 3  # one histogram per RGB channel (MaskFeat, the MME release's hog_channel rgb)
def check_hog(bins: int, cell_size: int, norm: str, patch_size: int | None = None) -> None:
    if bins < 2:
        raise ValueError(f"HOG needs at least 2 orientation bins, got {bins}")
    if norm not in HOG_NORMS:
        raise ValueError(f"HOG norm must be one of {HOG_NORMS}, got {norm!r}")
    if cell_size < 1 or (patch_size is not None and patch_size % cell_size):
        raise ValueError(f"the HOG cell size must divide the patch size {patch_size}, got {cell_size}")


def sobel(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel x and y derivatives (y down) of (N, H, W) images with replicated borders (slices: faster than a conv
    on the CPU)."""
    padded = F.pad(images[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = padded[:, :, 2:] - padded[:, :, :-2]
    dy = padded[:, 2:, :] - padded[:, :-2, :]
    return dx[:, :-2] + dx[:, 2:] + 2 * dx[:, 1:-1], dy[:, :, :-2] + dy[:, :, 2:] + 2 * dy[:, :, 1:-1]


def hog_cells(images: torch.Tensor, bins: int = 9, cell_size: int = 8, norm: str = "l2") -> torch.Tensor:
    """Histograms (N, C, bins, H / cell, W / cell) of images (N, C, H, W), float, H and W multiples of the cell.

    Each pixel votes into its cell's two nearest bins with one ``index_add_`` per bin side. A cell keeps two extra
    slots for the votes past the last bin, folded back onto bins 0 and 1: no modulo over the full-resolution maps.
    """
    check_hog(bins, cell_size, norm)
    n, c, height, width = images.shape
    if height % cell_size or width % cell_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of the HOG cell size {cell_size}")
    gx, gy = sobel(images.float().reshape(n * c, height, width))
    magnitude = torch.hypot(gx, gy)
    position = torch.atan2(gy, gx).remainder_(math.pi).mul_(bins / math.pi)  # [0, bins]: unsigned orientation
    lower = position.floor()
    upper_votes = position.sub_(lower).mul_(magnitude)
    lower_votes = magnitude.sub_(upper_votes)
    rows, cols, slots = height // cell_size, width // cell_size, bins + 2
    device = images.device
    cell_slot = ((torch.arange(height, device=device) // cell_size)[:, None] * cols
                 + (torch.arange(width, device=device) // cell_size)[None, :]) * slots
    image_slot = torch.arange(n * c, device=device)[:, None, None] * (rows * cols * slots)
    index = lower.long().add_(cell_slot).add_(image_slot).flatten()
    flat = torch.zeros(n * c * rows * cols * slots, device=device)
    flat.index_add_(0, index, lower_votes.flatten())
    flat.index_add_(0, index.add_(1), upper_votes.flatten())
    slotted = flat.view(n * c, rows, cols, slots)
    hist = slotted[..., :bins].clone()
    hist[..., :2] += slotted[..., bins:]
    hist = hist.div_(cell_size * cell_size).permute(0, 3, 1, 2)  # (N * C, bins, rows, cols): cell means
    if norm == "l2":
        hist = hist / torch.sqrt((hist**2).sum(dim=1, keepdim=True) + 1e-10)
    return hist.reshape(n, c, bins, rows, cols)


def hog_dim(patch_size: int, bins: int, cell_size: int, sampling: str = "tubelet", points_per_side: int = 2,
            steps: int = 0) -> int:
    """Values per token of ``--hog_sampling`` ``sampling`` (``steps``: source frame steps per tubelet)."""
    if sampling not in HOG_SAMPLINGS:
        raise ValueError(f"HOG sampling must be one of {HOG_SAMPLINGS}, got {sampling!r}")
    if sampling == "tubelet":
        return (patch_size // cell_size) ** 2 * HOG_CHANNELS * bins
    return points_per_side**2 * steps * HOG_CHANNELS * bins


def tubelet_hog_targets(pixels: torch.Tensor, patch_size: int, tubelet_size: int, bins: int = 9,
                        cell_size: int = 8, norm: str = "l2") -> torch.Tensor:
    """Per-token targets (B, N, dim) from videos (B, 3, T, H, W), uint8 or float pixels in [0, 1]: the HOG cells of
    each patch in frame ``tubelet_size // 2`` of its tubelet (the MME release's ``VideoHOGFeat``)."""
    check_hog(bins, cell_size, norm, patch_size)
    batch, _, _, height, width = pixels.shape
    middle = pixels[:, :, tubelet_size // 2 :: tubelet_size]  # (B, 3, T', H, W): only these frames become float
    middle = middle.float().div_(255) if middle.dtype == torch.uint8 else middle
    frames = middle.shape[2]
    cells = hog_cells(rearrange(middle, "b c t h w -> (b t) c h w"), bins, cell_size, norm)
    per_side = patch_size // cell_size
    return rearrange(cells, "(b t) c k (h p) (w q) -> b (t h w) (p q c k)", b=batch, t=frames, p=per_side,
                     q=per_side)


def trajectory_hog_targets(frames: np.ndarray, tracks: np.ndarray, bins: int = 9, cell_size: int = 8,
                           norm: str = "l2") -> np.ndarray:
    """Per-token targets (N, points * steps * 3 * bins) along the tracked points: ``frames`` (F, 3, H, W) uint8 or
    float pixels in [0, 255] (the dense clip), ``tracks`` (T', steps + 1, H'W', points, 2) (x, y) positions from
    :func:`trajectory_targets.tubelet_tracks` (tubelet ``t`` starts at frame ``t * steps``). Each point at step
    ``s`` takes the cell of the pixel it is in (pixel ``j`` spans ``[j - 0.5, j + 0.5)``) at frame ``t * steps + s``,
    as the release's ``fetch_hog``; a position outside the frame takes the border cell."""
    tubelets, steps = tracks.shape[0], tracks.shape[1] - 1
    pixels = torch.from_numpy(np.ascontiguousarray(frames[: tubelets * steps], dtype=np.float32)) / 255
    cells = hog_cells(pixels, bins, cell_size, norm).flatten(1, 2).permute(0, 2, 3, 1).numpy()  # (F, Hc, Wc, 3*bins)
    positions = tracks[:, :steps]  # (T', steps, H'W', points, 2): where each point is at the start of each step
    column, row = (np.floor((positions[..., axis] + 0.5) / cell_size).astype(np.int64) for axis in (0, 1))
    column, row = np.clip(column, 0, cells.shape[2] - 1), np.clip(row, 0, cells.shape[1] - 1)
    frame = (np.arange(tubelets)[:, None] * steps + np.arange(steps)[None, :])[:, :, None, None]
    values = cells[frame, row, column]  # (T', steps, H'W', points, 3 * bins)
    targets = values.transpose(0, 2, 3, 1, 4)  # (T', H'W', points, steps, 3 * bins)
    return np.ascontiguousarray(targets.reshape(tubelets * tracks.shape[2], -1), dtype=np.float32)

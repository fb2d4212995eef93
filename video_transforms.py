"""Clip transforms on tensors that carry the motion box through the same geometry as the frames.

Frames are uint8 tensors (T, H, W, 3) until ``normalize_clip``; a box is xyxy in pixels of the current frames
(float32 (4,)), NaN when there is none. Every geometric op maps the box exactly as it maps the pixels, so after
the last op the box still sits on the moving object (the release shifted neither crops nor flips into the box).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

NO_BOX = np.full(4, np.nan, dtype=np.float32)


def crop_box(box: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Box in the coordinates of the crop [x0, x0+width) x [y0, y0+height), clipped; NaN if nothing is left."""
    shifted = np.asarray(box, dtype=np.float32) - np.array([x0, y0, x0, y0], dtype=np.float32)
    clipped = np.clip(shifted, 0, [width, height, width, height]).astype(np.float32)
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        return NO_BOX.copy()
    return clipped


def scale_box(box: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return (np.asarray(box, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)


def normalized_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels -> [0, 1] coordinates of the frame."""
    return scale_box(box, 1.0 / width, 1.0 / height)


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, h, w) float in [0, 255], bilinear with antialiasing (PIL-like)."""
    x = frames.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def normalize_clip(frames: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """(T, 3, H, W) float in [0, 255] -> (3, T, H, W) normalised with ImageNet statistics."""
    mean_t = torch.tensor(mean, dtype=frames.dtype).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, dtype=frames.dtype).view(1, 3, 1, 1) * 255
    return ((frames - mean_t) / std_t).permute(1, 0, 2, 3).contiguous()


def multiscale_crop_params(width: int, height: int, input_size: int, rng: np.random.Generator,
                           scales=(1, 0.875, 0.75, 0.66), max_distort: int = 1) -> tuple[int, int, int, int]:
    """VideoMAE's GroupMultiScaleCrop choice: crop sides from ``scales`` x the short side (snapped to input_size
    within 3 px, width/height scale indices at most ``max_distort`` apart), at one of 13 fixed offsets.
    Returns (x0, y0, crop_w, crop_h)."""
    base = min(width, height)
    sides = [input_size if abs(int(base * s) - input_size) < 3 else int(base * s) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
               (1, 1), (3, 1), (1, 3), (3, 3)]
    ox, oy = offsets[rng.integers(len(offsets))]
    return ox * ws, oy * hs, crop_w, crop_h


def multiscale_crop(frames: torch.Tensor, box: np.ndarray, input_size: int, rng: np.random.Generator,
                    scales=(1, 0.875, 0.75, 0.66)) -> tuple[torch.Tensor, np.ndarray]:
    """Multi-scale crop + resize to input_size^2 (VideoMAE pretraining); the box follows.
    Returns frames (T, 3, S, S) float [0, 255] and the box in pixels of the output."""
    height, width = frames.shape[1:3]
    x0, y0, cw, ch = multiscale_crop_params(width, height, input_size, rng, scales)
    out = resize_frames(frames[:, y0:y0 + ch, x0:x0 + cw], (input_size, input_size))
    return out, scale_box(crop_box(box, x0, y0, cw, ch), input_size / cw, input_size / ch)

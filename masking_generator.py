"""Tube masking (VideoMAE) and motion-focused tube masking (MOFO) for video MAE pretraining.

Masks are flat boolean arrays of length T'*H'*W' over the token grid in (t, h, w) order, ``True`` = masked. Both
generators mask the same spatial positions in every time slice (tube masking), exactly ``int(mask_ratio*H'*W')``
per slice.

Motion-focused masking takes the motion box of the augmented clip, normalised xyxy in [0, 1] (x right, y down).
The box is clipped to [0, 1]; a patch (row i, column j) is *inside* when its centre ((j+0.5)/W', (i+0.5)/H') lies in
the box (bounds included), and a non-empty box always holds the patch under its own centre, so a box smaller than a
patch still counts. The inside set is therefore a rectangle of patches. Per slice ``round(motion_mask_ratio*|inside|)``
inside patches are masked (Python's round, at most the per-slice total), the rest of the per-slice total is drawn
from outside, and from inside again if outside runs out. A missing, NaN, empty or degenerate box gives plain random
tube masking. :func:`inside_box_tokens` is the single implementation of the inside rule; the fine-tuning model
splits its tokens with it as well.

The released MOFO generator differed in four ways, all fixed here:

- it swapped rows and columns when comparing patches with the box;
- it called a patch inside unless it was separated from the box on both axes (AND instead of OR), so the "inside"
  set was a cross of whole rows and columns, and far more than 75% of the real box got masked;
- it drew the remaining masks from positions 0..175 only, so the last 20 positions were almost never masked;
- the data pipeline reset NumPy's global seed for every sample, so every clip got the same mask.

Here every call is independently random: each generator owns a ``np.random.Generator`` (``seed`` argument,
:meth:`reseed` for data-loader workers, which otherwise inherit identical copies) and all draws are without
replacement over the full candidate sets. ``__call__`` also accepts an explicit ``rng``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MotionFocusedMaskingGenerator", "TubeMaskingGenerator", "inside_box_tokens"]


def inside_box_tokens(boxes: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Which spatial tokens lie inside each box, batched over any leading dimensions.

    ``boxes`` is a (..., 4) tensor of normalised xyxy boxes (any float dtype, any device); ``grid_hw`` is
    (H', W'). Returns a (..., H'*W') bool tensor in row-major (h, w) order on the boxes' device, following the rule
    in the module docstring; rows with a NaN or an empty box after clipping are all False.
    """
    boxes = torch.as_tensor(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(boxes.shape)}")
    grid_h, grid_w = grid_hw
    clipped = boxes.to(torch.float64).clamp(0.0, 1.0)  # clamp keeps NaN
    x1, y1, x2, y2 = clipped.unbind(-1)
    valid = ~torch.isnan(clipped).any(-1) & (x2 > x1) & (y2 > y1)

    col_index = torch.arange(grid_w, device=boxes.device)
    row_index = torch.arange(grid_h, device=boxes.device)
    col_centres = (col_index.to(torch.float64) + 0.5) / grid_w
    row_centres = (row_index.to(torch.float64) + 0.5) / grid_h
    cols_inside = (x1[..., None] <= col_centres) & (col_centres <= x2[..., None])
    rows_inside = (y1[..., None] <= row_centres) & (row_centres <= y2[..., None])
    inside = rows_inside[..., :, None] & cols_inside[..., None, :]

    centre_col = torch.floor((x1 + x2) / 2 * grid_w).nan_to_num(0.0).clamp(0, grid_w - 1).long()
    centre_row = torch.floor((y1 + y2) / 2 * grid_h).nan_to_num(0.0).clamp(0, grid_h - 1).long()
    is_centre_row = row_index == centre_row[..., None]
    is_centre_col = col_index == centre_col[..., None]
    centre_patch = is_centre_row[..., :, None] & is_centre_col[..., None, :]

    inside = (inside | centre_patch) & valid[..., None, None]
    return inside.reshape(*boxes.shape[:-1], grid_h * grid_w)


class _TubeMasking:
    """Grid bookkeeping, the owned random generator and tiling shared by both generators."""

    def __init__(self, input_size: tuple[int, int, int], mask_ratio: float, seed=None):
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        self.frames, self.height, self.width = input_size
        self.num_patches_per_frame = self.height * self.width
        self.total_patches = self.frames * self.num_patches_per_frame
        self.num_masks_per_frame = int(mask_ratio * self.num_patches_per_frame)
        self.total_masks = self.frames * self.num_masks_per_frame
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed) -> None:
        """Replace the generator's random stream, e.g. per data-loader worker with a worker-specific seed."""
        self.rng = np.random.default_rng(seed)

    def _tube(self, masked_positions: np.ndarray) -> np.ndarray:
        """Flat (T'*H'*W',) bool mask with the given spatial positions masked in every time slice."""
        frame_mask = np.zeros(self.num_patches_per_frame, dtype=bool)
        frame_mask[masked_positions] = True
        return np.tile(frame_mask, self.frames)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(total patches {self.total_patches}, mask patches {self.total_masks})"


class TubeMaskingGenerator(_TubeMasking):
    """VideoMAE tube masking: the same ``int(mask_ratio*H'*W')`` random positions masked in every time slice."""

    def __call__(self, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """A fresh (T'*H'*W',) bool mask; ``rng`` overrides the generator's own stream for this call."""
        rng = self.rng if rng is None else rng
        return self._tube(rng.choice(self.num_patches_per_frame, self.num_masks_per_frame, replace=False))


class MotionFocusedMaskingGenerator(_TubeMasking):
    """MOFO tube masking that masks ``motion_mask_ratio`` of the patches inside the motion box (module docstring)."""

    def __init__(
        self,
        input_size: tuple[int, int, int] = (8, 14, 14),
        mask_ratio: float = 0.9,
        motion_mask_ratio: float = 0.75,
        seed=None,
    ):
        super().__init__(input_size, mask_ratio, seed)
        if not 0.0 <= motion_mask_ratio <= 1.0:
            raise ValueError(f"motion_mask_ratio must be in [0, 1], got {motion_mask_ratio}")
        self.motion_mask_ratio = motion_mask_ratio

    def inside_positions(self, box) -> np.ndarray:
        """(H'*W',) bool: the spatial positions inside ``box`` (all False for None, NaN or empty boxes)."""
        if box is None:
            return np.zeros(self.num_patches_per_frame, dtype=bool)
        box = np.asarray(box, dtype=np.float64)
        if box.shape != (4,):
            raise ValueError(f"box must be one normalised xyxy box of shape (4,), got {box.shape}")
        return inside_box_tokens(torch.from_numpy(box), (self.height, self.width)).numpy()

    def __call__(self, box=None, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """A fresh (T'*H'*W',) bool mask for the normalised xyxy ``box`` (or None); ``rng`` overrides the stream."""
        rng = self.rng if rng is None else rng
        inside = self.inside_positions(box)
        inside_positions = np.flatnonzero(inside)
        outside_positions = np.flatnonzero(~inside)
        masked_inside = min(round(self.motion_mask_ratio * len(inside_positions)), self.num_masks_per_frame)
        masked_inside = max(masked_inside, self.num_masks_per_frame - len(outside_positions))
        masked_outside = self.num_masks_per_frame - masked_inside
        return self._tube(
            np.concatenate(
                [
                    rng.choice(inside_positions, masked_inside, replace=False),
                    rng.choice(outside_positions, masked_outside, replace=False),
                ]
            )
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, motion mask ratio {self.motion_mask_ratio})"

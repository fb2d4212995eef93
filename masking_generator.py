"""Tube masking (VideoMAE), motion-focused tube masking (MOFO) and motion-guided masking (MGMAE / MGM) for video
MAE pretraining.

Masks are flat boolean arrays of length T'*H'*W' over the token grid in (t, h, w) order, ``True`` = masked, with
exactly ``int(mask_ratio*H'*W')`` masked per time slice. The tube generators mask the same spatial positions in
every time slice; the motion-guided one moves them along the clip's motion.

Motion-focused masking takes the motion box of the augmented clip, normalised xyxy in [0, 1] (x right, y down).
The box is clipped to [0, 1]; a patch (row i, column j) is *inside* when its centre ((j+0.5)/W', (i+0.5)/H') lies in
the box (bounds included, to 1e-4 of a patch: a float32 box edge on a centre stays on it). On an axis where a
non-empty box holds no centre (it is thinner than a patch there), the column or row under the box's own centre is
taken instead, so a box smaller than a patch holds the patch under its centre, and a strip one patch thin (a box cut
by the crop's edge) holds its line of patches. The inside set is therefore a rectangle of patches. Per slice
``motion_mask_ratio*|inside|`` inside patches are masked (to the nearest whole patch, halves up; at most the per-slice
total), the rest of the per-slice total is drawn from outside, and from inside again if outside runs out. A missing,
NaN, empty or degenerate box gives plain random tube masking. :func:`inside_box_tokens` is the single implementation
of the inside rule; the fine-tuning model splits its tokens with it as well.

The released MOFO generator differed in four ways, all fixed here:

- it swapped rows and columns when comparing patches with the box;
- it called a patch inside unless it was separated from the box on both axes (AND instead of OR), so the "inside"
  set was a cross of whole rows and columns, and far more than 75% of the real box got masked;
- it drew the remaining masks from positions 0..175 only, so the last 20 positions were almost never masked;
- the data pipeline reset NumPy's global seed for every sample, so every clip got the same mask.

Here every call is independently random: each generator owns a ``np.random.Generator`` (``seed`` argument,
:meth:`reseed` for data-loader workers, which otherwise inherit identical copies) and all draws are without
replacement over the full candidate sets. ``__call__`` also accepts an explicit ``rng``.

Motion-guided masking (:class:`MotionGuidedMaskingGenerator`, after MGMAE, Huang et al. ICCV 2023, and MGM, Fan et
al. ICCV 2023) drops the "same positions in every slice" constraint: the mask is drawn at a base slice and carried
along per-token motion, still exactly ``int(mask_ratio*H'*W')`` per slice. Motion comes in as per-slice token
displacement fields, forward and optionally backward, so any motion source fits: :class:`DISTokenMotion` estimates
both from the augmented clip with OpenCV's DIS optical flow (MGMAE uses RAFT); a dense flow of the crop, such as
codec motion vectors (MGM) shifted and scaled to it, gives the fields through :func:`crop_token_motion`
(:func:`pool_to_tokens` and :func:`tubelet_displacement` of the crop).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

__all__ = [
    "DISTokenMotion",
    "MotionFocusedMaskingGenerator",
    "MotionGuidedMaskingGenerator",
    "TubeMaskingGenerator",
    "crop_token_motion",
    "inside_box_tokens",
    "overlapping_box_tokens",
    "pool_to_tokens",
    "tubelet_displacement",
]


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
    scale = torch.tensor([grid_w, grid_h, grid_w, grid_h], dtype=torch.float64, device=boxes.device)
    edges = boxes.to(torch.float64).clamp(0.0, 1.0) * scale  # in patches; clamp keeps NaN
    x1, y1, x2, y2 = edges.unbind(-1)
    valid = ~torch.isnan(edges).any(-1) & (x2 > x1) & (y2 > y1)
    cols_inside = _axis_inside(x1, x2, grid_w)
    rows_inside = _axis_inside(y1, y2, grid_h)
    inside = rows_inside[..., :, None] & cols_inside[..., None, :] & valid[..., None, None]
    return inside.reshape(*boxes.shape[:-1], grid_h * grid_w)


def _axis_inside(low: torch.Tensor, high: torch.Tensor, size: int) -> torch.Tensor:
    """(..., size) bool: the patch centres ``k + 0.5`` within [low, high] (in patches, to 1e-4), or, where there is
    none, the patch under ``(low + high) / 2``."""
    index = torch.arange(size, device=low.device)
    centres = index.to(torch.float64) + 0.5
    within = (low[..., None] - 1e-4 <= centres) & (centres <= high[..., None] + 1e-4)
    middle = torch.floor((low + high) / 2).nan_to_num(0.0).clamp(0, size - 1).long()
    return within | (~within.any(-1, keepdim=True) & (index == middle[..., None]))


def overlapping_box_tokens(boxes: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Which spatial tokens overlap each box: the MOFO release's fine-tuning rule (its ``patch_yab`` count of box
    pixels per token), for loading its fine-tuned heads. ``boxes`` (..., 4) normalised xyxy covering the pixels
    ``[x1, x2) x [y1, y2)``; a patch is in when it shares any pixel with the box. Edges within 1e-4 of a patch
    border count as on it (a float32 16/224 is not exactly one patch). Returns (..., H'*W') bool, row-major; NaN or
    empty boxes give all False. Motion-focused masking uses :func:`inside_box_tokens` instead."""
    boxes = torch.as_tensor(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(boxes.shape)}")
    grid_h, grid_w = grid_hw
    scale = torch.tensor([grid_w, grid_h, grid_w, grid_h], dtype=torch.float64, device=boxes.device)
    edges = boxes.to(torch.float64).clamp(0.0, 1.0) * scale  # in patches
    edges = torch.where((edges - edges.round()).abs() < 1e-4, edges.round(), edges)
    x1, y1, x2, y2 = edges.unbind(-1)
    valid = (x2 > x1) & (y2 > y1)  # False for NaN
    cols = torch.arange(grid_w, device=boxes.device, dtype=torch.float64)
    rows = torch.arange(grid_h, device=boxes.device, dtype=torch.float64)
    cols_in = (x1[..., None] < cols + 1) & (x2[..., None] > cols)
    rows_in = (y1[..., None] < rows + 1) & (y2[..., None] > rows)
    inside = rows_in[..., :, None] & cols_in[..., None, :] & valid[..., None, None]
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


def _inside_positions(box, grid_hw: tuple[int, int]) -> np.ndarray:
    """(H'*W',) bool: the spatial positions inside one normalised xyxy ``box`` (all False for None, NaN, empty)."""
    if box is None:
        return np.zeros(grid_hw[0] * grid_hw[1], dtype=bool)
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"box must be one normalised xyxy box of shape (4,), got {box.shape}")
    return inside_box_tokens(torch.from_numpy(box), grid_hw).numpy()


def _focused_positions(inside: np.ndarray, num_masked: int, motion_mask_ratio: float,
                       rng: np.random.Generator) -> np.ndarray:
    """MOFO's draw of one slice's ``num_masked`` positions: ``motion_mask_ratio*|inside|`` (to the nearest whole
    patch, halves up: 4.5 -> 5) from inside (at most ``num_masked``), the rest from outside, and from inside again
    if outside runs out."""
    inside_positions = np.flatnonzero(inside)
    outside_positions = np.flatnonzero(~inside)
    exact = round(motion_mask_ratio * len(inside_positions), 9)  # 0.7 * 45 is 31.4999... in floats, meant 31.5
    masked_inside = min(math.floor(exact + 0.5), num_masked)
    masked_inside = max(masked_inside, num_masked - len(outside_positions))
    return np.concatenate([
        rng.choice(inside_positions, masked_inside, replace=False),
        rng.choice(outside_positions, num_masked - masked_inside, replace=False),
    ])


class _BoxMasking(_TubeMasking):
    """Tube masking that can favour the patches inside a motion box (``motion_mask_ratio`` of them masked)."""

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
        return _inside_positions(box, (self.height, self.width))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, motion mask ratio {self.motion_mask_ratio})"


class MotionFocusedMaskingGenerator(_BoxMasking):
    """MOFO tube masking that masks ``motion_mask_ratio`` of the patches inside the motion box (module docstring)."""

    def __call__(self, box=None, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """A fresh (T'*H'*W',) bool mask for the normalised xyxy ``box`` (or None); ``rng`` overrides the stream."""
        rng = self.rng if rng is None else rng
        inside = self.inside_positions(box)
        return self._tube(_focused_positions(inside, self.num_masks_per_frame, self.motion_mask_ratio, rng))


class MotionGuidedMaskingGenerator(_BoxMasking):
    """Motion-guided masking: a mask drawn at the middle time slice and moved along per-token motion (MGMAE, MGM).

    ``__call__(displacement, box)`` takes a (T'-1, H', W', 2) float forward field: ``displacement[t, i, j]`` is
    where the content of token (i, j) of slice t sits in slice t+1, as (dx, dy) in token widths and heights (x
    right, y down). A (2, T'-1, H', W', 2) pair adds the backward field: ``[1][t, i, j]`` is where the content of
    token (i, j) of slice t+1 sits in slice t (what :class:`DISTokenMotion` returns). The base slice ``T' // 2``
    (MGMAE's ``--base_frame middle``) gets ``int(mask_ratio*H'*W')`` random positions, or, given a normalised xyxy
    ``box`` (the motion box at the base slice), MOFO's inside-box rule with ``motion_mask_ratio``. Each masked
    position then becomes a particle with a continuous position that steps slice by slice away from the base,
    clipped to the grid, by the field at the token it occupies: forwards by the forward field, backwards by the
    backward one. Without a backward field the forward one is inverted (negated displacements splatted to where the
    content lands); where a moving object covers background, the two land on one token and its step back is their
    average, so the mask lags behind the object's leading edge before the base: give both fields. Sub-token motion
    accumulates instead of being rounded away at every step. The masked tokens of a slice are the tokens the
    particles round to.

    Collisions (several particles on one token, where motion converges or content leaves the frame) would lower
    the count: the particle nearest its token's centre survives and the lost ones are replaced, so every slice has
    exactly the per-slice count. Replacements go first to unmasked tokens that no token of the slice stepped from
    moves onto (content revealed behind a moving object or entering the frame: new content, masking it leaks nothing),
    then to unmasked tokens nearest the collision sites, ties broken by ``rng``. Zero motion keeps every particle
    in place: the result is the tube mask of the base draw, bit for bit (the same ``rng`` draws as
    :class:`TubeMaskingGenerator` without a box), and a missing field (None) gives that tube mask directly.
    """

    def __init__(
        self,
        input_size: tuple[int, int, int] = (8, 14, 14),
        mask_ratio: float = 0.9,
        motion_mask_ratio: float = 0.75,
        seed=None,
    ):
        super().__init__(input_size, mask_ratio, motion_mask_ratio, seed)
        self.base_slice = self.frames // 2
        rows, cols = np.divmod(np.arange(self.num_patches_per_frame), self.width)
        self._token_rc = np.stack([rows, cols], axis=1).astype(np.float64)
        self._upper = np.array([self.height - 1, self.width - 1], dtype=np.float64)

    def base_positions(self, box=None, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """The base slice's masked positions: random, or MOFO's inside-box rule when ``box`` holds a token."""
        rng = self.rng if rng is None else rng
        inside = self.inside_positions(box)
        if not inside.any():
            return rng.choice(self.num_patches_per_frame, self.num_masks_per_frame, replace=False)
        return _focused_positions(inside, self.num_masks_per_frame, self.motion_mask_ratio, rng)

    def __call__(self, displacement=None, box=None, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """A fresh (T'*H'*W',) bool mask following ``displacement`` (a forward field or a forward/backward pair;
        a tube mask for None); ``rng`` overrides the generator's own stream."""
        rng = self.rng if rng is None else rng
        base = self.base_positions(box, rng=rng)
        if displacement is None or self.frames == 1:  # one time slice: no motion to follow
            return self._tube(base)
        field = np.asarray(displacement, dtype=np.float64)
        expected = (self.frames - 1, self.height, self.width, 2)
        if field.shape not in (expected, (2, *expected)):
            raise ValueError(f"displacement must have shape (T'-1, H', W', 2) = {expected}, or (2, ...) with the "
                             f"backward field, got {field.shape}")
        field = np.nan_to_num(field, nan=0.0, posinf=0.0, neginf=0.0)
        # (dx, dy) -> (drow, dcol), flattened over tokens, to match the particles' (row, col) positions
        steps = field[..., ::-1].reshape(-1, self.frames - 1, self.num_patches_per_frame, 2)
        masks = np.zeros((self.frames, self.num_patches_per_frame), dtype=bool)
        masks[self.base_slice, base] = True
        forward, backward = range(self.base_slice + 1, self.frames), range(self.base_slice - 1, -1, -1)
        for direction, slices in ((1, forward), (-1, backward)):
            particles = self._token_rc[base]
            for t in slices:
                if direction == 1:
                    step = steps[0, t - 1]
                else:
                    step = steps[1, t] if len(steps) == 2 else self._inverse(steps[0, t])
                particles, tokens = self._advance(particles, step, rng)
                masks[t, tokens] = True
        return masks.reshape(-1)

    def _inverse(self, step: np.ndarray) -> np.ndarray:
        """Backward (H'*W', 2) steps from a slice to the one before, from the forward steps between them: each
        token's content is splatted bilinearly onto the tokens around where it lands, carrying its negated step;
        tokens nothing lands on (content revealed in this slice) take their own negated forward step."""
        landing = self._token_rc + step
        low = np.floor(landing)
        frac = landing - low
        corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
        cells = low[None] + corners[:, None]  # (4, H'*W', 2)
        weights = np.prod(np.where(corners[:, None] == 1, frac[None], 1.0 - frac[None]), axis=2)
        valid = ((cells >= 0) & (cells <= self._upper)).all(axis=2) & (weights > 0)
        target = (cells[..., 0] * self.width + cells[..., 1]).astype(np.int64)[valid]
        weights = weights[valid]
        carried = np.broadcast_to(-step, (4, *step.shape))[valid]
        size = self.num_patches_per_frame
        total = np.bincount(target, weights, minlength=size)
        summed = np.stack([np.bincount(target, weights * carried[:, k], minlength=size) for k in range(2)], axis=1)
        reached = total > 1e-6
        return np.where(reached[:, None], summed / np.maximum(total, 1e-6)[:, None], -step)

    def _tokens(self, particles: np.ndarray) -> np.ndarray:
        """Flat token index of each (row, col) particle."""
        cells = np.floor(particles + 0.5).astype(np.int64)
        return cells[:, 0] * self.width + cells[:, 1]

    def _advance(self, particles: np.ndarray, step: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Move (n, 2) particles by ``step`` (H'*W', 2) sampled at their tokens; resolve collisions and refill to n
        particles on n distinct tokens. Returns the particles and their tokens."""
        num = len(particles)
        particles = np.clip(particles + step[self._tokens(particles)], 0.0, self._upper)
        tokens = self._tokens(particles)
        off_centre = ((particles - np.floor(particles + 0.5)) ** 2).sum(axis=1)
        order = np.lexsort((off_centre, tokens))
        _, first = np.unique(tokens[order], return_index=True)
        survivors = order[first]
        lost = num - len(survivors)
        if lost == 0:
            return particles, tokens
        counts = np.bincount(tokens, minlength=self.num_patches_per_frame)
        free = np.flatnonzero(counts == 0)
        sites = self._token_rc[counts > 1]
        distance = ((self._token_rc[free, None, :] - sites[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        landing = self._tokens(np.clip(self._token_rc + step, 0.0, self._upper))
        revealed = np.bincount(landing, minlength=self.num_patches_per_frame)[free] == 0
        refill = free[np.lexsort((rng.random(len(free)), distance, ~revealed))[:lost]]
        particles = np.concatenate([particles[survivors], self._token_rc[refill]])
        return particles, np.concatenate([tokens[survivors], refill])

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, motion guided from slice {self.base_slice})"


def pool_to_tokens(flow: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Dense flow (..., h, w, 2) in pixels of an h x w image covering the clip -> per-token mean (..., H', W', 2) in
    token units (dx in token widths, dy in token heights). h and w must be multiples of H' and W'."""
    flow = np.asarray(flow)
    grid_h, grid_w = grid_hw
    height, width = flow.shape[-3:-1]
    if height % grid_h or width % grid_w:
        raise ValueError(f"flow of {height}x{width} pixels does not tile a {grid_h}x{grid_w} token grid")
    tiles = flow.reshape(*flow.shape[:-3], grid_h, height // grid_h, grid_w, width // grid_w, 2)
    return tiles.mean(axis=(-4, -2)) / np.array([width / grid_w, height / grid_h], dtype=flow.dtype)


def crop_token_motion(frame_motion: np.ndarray, crop: tuple[int, int, int, int], grid_hw: tuple[int, int],
                      tubelet_size: int, pixels_per_token: int = 4) -> np.ndarray:
    """Per-token motion between time slices (T'-1, H', W', 2) float32 of a clip cut as ``crop`` = (x0, y0, w, h)
    from frames whose forward motion between consecutive sampled frames is ``frame_motion`` (T-1, H, W, 2), in
    pixels of the uncropped frames (e.g. codec motion vectors): the crop area-resized to ``pixels_per_token`` per
    token side with its vectors scaled alike, :func:`pool_to_tokens`, then :func:`tubelet_displacement`."""
    x0, y0, width, height = crop
    size = (grid_hw[1] * pixels_per_token, grid_hw[0] * pixels_per_token)
    scale = np.array([size[0] / width, size[1] / height], dtype=np.float32)
    resized = np.stack([cv2.resize(np.ascontiguousarray(frame[y0:y0 + height, x0:x0 + width]), size,
                                   interpolation=cv2.INTER_AREA) for frame in frame_motion]) * scale
    return tubelet_displacement(pool_to_tokens(resized, grid_hw), tubelet_size).astype(np.float32)


def tubelet_displacement(frame_motion: np.ndarray, tubelet_size: int) -> np.ndarray:
    """Per-token motion between consecutive frames (T-1, H', W', 2) -> between consecutive time slices
    (T/tubelet_size - 1, H', W', 2): the displacement over ``tubelet_size`` frames, averaged over the frames of the
    tubelet (slice centre to slice centre). Motion is summed at fixed tokens, which is what the token grid resolves."""
    frame_motion = np.asarray(frame_motion)
    num_frames = len(frame_motion) + 1
    if num_frames % tubelet_size:
        raise ValueError(f"{num_frames} frames do not split into tubelets of {tubelet_size}")
    track = np.concatenate([np.zeros_like(frame_motion[:1]), np.cumsum(frame_motion, axis=0)])
    span = track[tubelet_size:] - track[:-tubelet_size]
    return span.reshape(num_frames // tubelet_size - 1, tubelet_size, *span.shape[1:]).mean(axis=1)


class DISTokenMotion:
    """Per-token motion of an augmented clip from OpenCV's DIS optical flow, for motion-guided masking.

    MGMAE runs RAFT online on the GPU; here the flow is cheap enough for the data-loader worker and is computed on
    the clip after the crop, so it is in token coordinates: grey frames area-resized to ``pixels_per_token``
    pixels per token side, DIS between consecutive frames at that full resolution (finest scale 0) with one
    token-sized patch every half token, averaged per token (:func:`pool_to_tokens`) and per tubelet
    (:func:`tubelet_displacement`). DIS's presets compute at 1/4 or 1/2 resolution and average a moving object of
    two or three tokens into the static background around it; this setting recovers most of its motion (about 0.75
    of it on the synthetic clips) in about 2 ms per frame pair and direction for a 14x14 grid on one core. Returns
    the (2, T'-1, H', W', 2) float32 forward and backward fields :class:`MotionGuidedMaskingGenerator` takes.
    """

    def __init__(self, grid_hw: tuple[int, int], tubelet_size: int = 2, pixels_per_token: int = 4):
        if pixels_per_token < 2:
            raise ValueError(f"pixels_per_token must be at least 2, got {pixels_per_token}")
        self.grid_hw, self.tubelet_size, self.pixels_per_token = tuple(grid_hw), tubelet_size, pixels_per_token

    def _flow_model(self):
        """A configured DIS instance (made per call: a few microseconds, and DIS objects cannot be pickled)."""
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        dis.setFinestScale(0)
        dis.setPatchSize(self.pixels_per_token)
        dis.setPatchStride(self.pixels_per_token // 2)
        return dis

    def __call__(self, clip) -> np.ndarray:
        """Field of a (T, 3, H, W) uint8 clip (``multiscale_crop``'s output, before normalisation)."""
        frames = np.asarray(clip, dtype=np.float32)
        luma = np.einsum("tchw,c->thw", frames, np.array([0.299, 0.587, 0.114], dtype=np.float32))
        size = (self.grid_hw[1] * self.pixels_per_token, self.grid_hw[0] * self.pixels_per_token)
        grey = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in luma])
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        dis = self._flow_model()
        pairs = range(len(grey) - 1)
        forward = pool_to_tokens(np.stack([dis.calc(grey[k], grey[k + 1], None) for k in pairs]), self.grid_hw)
        backward = pool_to_tokens(np.stack([dis.calc(grey[k + 1], grey[k], None) for k in pairs]), self.grid_hw)
        # slice t+1 -> t: the slices of the reversed clip, put back in order
        return np.stack([tubelet_displacement(forward, self.tubelet_size),
                         tubelet_displacement(backward[::-1], self.tubelet_size)[::-1]]).astype(np.float32)

    def __repr__(self) -> str:
        return f"DISTokenMotion(grid {self.grid_hw}, tubelet {self.tubelet_size}, {self.pixels_per_token} px/token)"

"""Clip transforms on tensors that carry the motion boxes through the same geometry as the frames.

Frames stay uint8 until ``normalize_clip``, as in VideoMAE's PIL pipeline: (T, H, W, 3) straight from the decoder,
then (T, 3, H, W) after the first resize, whose output is channels-last in memory (``clip.permute(0, 2, 3, 1)`` is
then a contiguous (T, H, W, 3) array; a skipped resize leaves a view of the decoded frames).

A box is xyxy in pixels of the current frames (continuous coordinates: pixel i covers [i, i + 1), so x2/y2 are
exclusive edges), float32 with shape (4,) for one box per clip or (T, 4) for one per frame; NaN rows mean "no box".
Every geometric op maps the boxes exactly as it maps the pixels, so after the last op the box still sits on the
moving object. The MOFO release got this wrong: its crops ignored the crop offset, its flips and shear/translate ops
left the box where it was.

Fine-tuning training applies, as VideoMAE and in its order: RandAugment with timm's ops (drawn once per clip) on the
decoded frames, random resized crop, horizontal flip (not for SSV2), ImageNet normalisation and timm's random erasing
(frame by frame, as VideoMAE).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import AugmentOp, rand_augment_transform
from timm.data.auto_augment import posterize as timm_posterize
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

NO_BOX = np.full(4, np.nan, dtype=np.float32)
RESIZED_CROP_SCALE = (0.08, 1.0)  # VideoMAE fine-tuning: area fraction of the frame
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)  # width / height
AUGMENT_FILL = (128, 128, 128)  # timm's fill for pixels a geometric op brings in from outside the frame
AUGMENT_LEVEL_MAX = 10.0  # timm's magnitude scale (``_LEVEL_DENOM``): magnitudes are clipped to [0, 10]
AUGMENT_INTERPOLATIONS = {  # the resampling filters PIL's affine transforms take; random: one of the first two
    "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST, "random": (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)}
AFFINE_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel", "Rotate")


def crop_box(box: np.ndarray, x0: float, y0: float, width: float, height: float) -> np.ndarray:
    """Boxes in the coordinates of the crop [x0, x0+width) x [y0, y0+height), clipped; NaN where nothing is left."""
    shifted = np.asarray(box, dtype=np.float32) - np.array([x0, y0, x0, y0], dtype=np.float32)
    clipped = np.clip(shifted, 0, [width, height, width, height]).astype(np.float32)
    clipped[~((clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1]))] = np.nan
    return clipped


def scale_box(box: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return (np.asarray(box, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)


def normalized_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels -> [0, 1] coordinates of the frame."""
    return scale_box(box, 1.0 / width, 1.0 / height)


def flip_box(box: np.ndarray, width: int) -> np.ndarray:
    """Boxes of a horizontally flipped frame of this width."""
    box = np.asarray(box, dtype=np.float32)
    return np.stack([width - box[..., 2], box[..., 1], width - box[..., 0], box[..., 3]], axis=-1)


def affine_box(box: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bounding boxes of the box corners mapped by the 2x3 (or 3x3) affine ``matrix`` (input -> output pixels),
    clipped to the width x height frame; NaN where nothing is left."""
    box = np.asarray(box, dtype=np.float32)
    x1, y1, x2, y2 = np.moveaxis(box, -1, 0)
    corners = np.stack([np.stack([x1, x1, x2, x2], -1), np.stack([y1, y2, y1, y2], -1)], -1)  # (..., 4, 2)
    mapped = corners @ np.asarray(matrix, dtype=np.float64)[:2, :2].T + np.asarray(matrix, dtype=np.float64)[:2, 2]
    bounds = np.concatenate([mapped.min(axis=-2), mapped.max(axis=-2)], axis=-1)
    return crop_box(bounds, 0, 0, width, height)


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, h, w) uint8, bilinear with antialiasing and rounded to integers like PIL's
    resize; channels-last in memory (a view of ``frames`` when the size is already right). torch's vectorised uint8
    kernel is several times faster than resizing in float."""
    x = frames.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def normalize_clip(frames: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """(T, 3, H, W) uint8 (or float in [0, 255]) -> (3, T, H, W) float32 normalised with ImageNet statistics."""
    return normalize_video(frames.transpose(0, 1), mean, std)


def normalize_video(video: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """(..., 3, T, H, W) pixels in [0, 255], uint8 or float, in any memory layout -> a contiguous float32 tensor of
    that shape normalised with ImageNet statistics. Pretraining batches of (B, T, H, W, 3) uint8 frames are
    normalised this way on the training device: ``normalize_video(frames.permute(0, 4, 1, 2, 3))``. Python-scalar
    statistics: no host-to-device copy, so nothing waits for a GPU."""
    out = torch.empty(video.shape, dtype=torch.float32, device=video.device)
    for channel in range(3):
        torch.sub(video.select(-4, channel), mean[channel] * 255, out=out.select(-4, channel))
        out.select(-4, channel).div_(std[channel] * 255)
    return out


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
                    scales=(1, 0.875, 0.75, 0.66)) -> tuple[torch.Tensor, np.ndarray, tuple[int, int, int, int]]:
    """Multi-scale crop + resize to input_size^2 (VideoMAE pretraining); the box follows.
    Returns frames (T, 3, S, S) uint8, the box in pixels of the output and the crop (x0, y0, w, h) in the input's
    pixels (for motion fields that follow the frames)."""
    height, width = frames.shape[1:3]
    crop = multiscale_crop_params(width, height, input_size, rng, scales)
    return *resized_crop(frames, box, *crop, input_size), crop


def random_resized_crop_params(width: int, height: int, rng: np.random.Generator, scale=RESIZED_CROP_SCALE,
                               ratio=RESIZED_CROP_RATIO, attempts: int = 10) -> tuple[int, int, int, int]:
    """torchvision's / VideoMAE's RandomResizedCrop choice: area fraction uniform in ``scale``, aspect ratio
    log-uniform in ``ratio``, the first of ``attempts`` draws that fits, at a uniform position; otherwise the
    largest centred crop within ``ratio``. Returns (x0, y0, crop_w, crop_h)."""
    areas = rng.uniform(*scale, size=attempts) * (width * height)
    aspects = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=attempts))
    crop_ws = np.rint(np.sqrt(areas * aspects)).astype(int)
    crop_hs = np.rint(np.sqrt(areas / aspects)).astype(int)
    fits = (crop_ws > 0) & (crop_ws <= width) & (crop_hs > 0) & (crop_hs <= height)
    if fits.any():
        first = int(np.argmax(fits))
        crop_w, crop_h = int(crop_ws[first]), int(crop_hs[first])
        return int(rng.integers(width - crop_w + 1)), int(rng.integers(height - crop_h + 1)), crop_w, crop_h
    aspect = width / height
    if aspect < min(ratio):
        crop_w, crop_h = width, int(round(width / min(ratio)))
    elif aspect > max(ratio):
        crop_w, crop_h = int(round(height * max(ratio))), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def resized_crop(frames: torch.Tensor, box: np.ndarray, x0: int, y0: int, crop_w: int, crop_h: int,
                 size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Crop uint8 frames (T, H, W, 3) and resize the crop to size^2: (T, 3, S, S) uint8 and the boxes there."""
    out = resize_frames(frames[:, y0:y0 + crop_h, x0:x0 + crop_w], (size, size))
    return out, scale_box(crop_box(box, x0, y0, crop_w, crop_h), size / crop_w, size / crop_h)


def horizontal_flip(frames: torch.Tensor, box: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Mirror (T, 3, H, W) frames left-right, and their boxes."""
    return frames.flip(-1), flip_box(box, frames.shape[-1])


def short_side_resize(frames: torch.Tensor, box: np.ndarray, short_side: int) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 frames (T, H, W, 3) -> (T, 3, h, w) uint8 with min(h, w) = short_side, aspect kept; boxes follow."""
    height, width = frames.shape[1:3]
    scale = short_side / min(width, height)
    new_w, new_h = (short_side, round(height * scale)) if width <= height else (round(width * scale), short_side)
    return resize_frames(frames, (new_h, new_w)), scale_box(box, new_w / width, new_h / height)


def spatial_crop(frames: torch.Tensor, box: np.ndarray, size: int, position: float) -> tuple[torch.Tensor, np.ndarray]:
    """size^2 crop of (T, 3, H, W) frames, centred on the short side and at ``position`` along the long side
    (0 = start, 0.5 = centre, 1 = end): VideoMAE's validation centre crop and its spread test crops."""
    height, width = frames.shape[-2:]
    if min(width, height) < size:
        raise ValueError(f"cannot crop {size}x{size} from {width}x{height} frames")
    along = round(position * (max(width, height) - size))
    across = (min(width, height) - size) // 2
    x0, y0 = (along, across) if width >= height else (across, along)
    return frames[..., y0:y0 + size, x0:x0 + size], crop_box(box, x0, y0, size, size)


@contextlib.contextmanager
def seeded_global_rngs(rng: np.random.Generator):
    """Run timm code that draws from Python's ``random`` and torch's default CPU generator with both seeded from
    ``rng``, and restore them afterwards: each item stays a function of the dataset's own stream."""
    seed = int(rng.integers(2**63))
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.set_rng_state(torch_state)


def pil_affine_inverse(name: str, level_args: tuple, width: int, height: int) -> np.ndarray:
    """The 3x3 output -> input pixel map that PIL applies for timm's geometric op ``name`` with these arguments
    (PIL's affine transform takes the inverse map; Rotate turns counter-clockwise about the frame centre)."""
    (value,) = level_args
    if name == "Rotate":
        cos, sin = math.cos(math.radians(value)), math.sin(math.radians(value))
        cx, cy = width / 2, height / 2
        return np.array([[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy], [0, 0, 1]])
    shift_x = {"TranslateX": value, "TranslateXRel": value * width}.get(name, 0.0)
    shift_y = {"TranslateY": value, "TranslateYRel": value * height}.get(name, 0.0)
    shear_x = value if name == "ShearX" else 0.0
    shear_y = value if name == "ShearY" else 0.0
    return np.array([[1, shear_x, shift_x], [shear_y, 1, shift_y], [0, 0, 1]], dtype=np.float64)


def posterize(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, where keeping 0 bits gives a black frame as Pillow before 13 did (timm's PosterizeIncreasing
    asks for 0 bits at magnitude 10, plain Posterize below 2.5; Pillow 13 refuses them, ending the run)."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_posterize(image, bits_to_keep, **kwargs)


def rand_augment_policy(value: str) -> str:
    """argparse type of ``--aa``: a timm RandAugment policy, checked by building it, or ``none`` (also ``""``): no
    RandAugment, returned as ``""``."""
    if value.strip().lower() in ("", "none"):
        return ""
    try:
        rand_augment_transform(value, {})
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        reason = f" ({e})" if str(e) else ""
        raise argparse.ArgumentTypeError(f"{value!r} is not a timm RandAugment policy such as rand-m7-n4-mstd0.5-inc1"
                                         f"{reason}; none turns RandAugment off") from None
    return value


class ClipRandAugment:
    """timm's RandAugment (policy strings such as ``rand-m7-n4-mstd0.5-inc1``, hyper-parameters as VideoMAE:
    grey fill, translate_const 0.45 x input size) drawn once per clip and applied with timm's op functions to every
    frame, so a clip gets the same ops with the same magnitudes throughout. Geometric ops move the boxes by the same
    affine map (bounding box of the mapped corners, clipped). ``transforms`` overrides the op set.

    ``interpolation`` (``--train_interpolation``) is the geometric ops' resampling, one of
    ``AUGMENT_INTERPOLATIONS``; ``random`` picks bilinear or bicubic per op and clip (timm and VideoMAE pick per
    frame, which would make one op resample the frames of a clip differently)."""

    def __init__(self, config_str: str, input_size: int, transforms: list[str] | None = None,
                 interpolation: str = "bicubic"):
        if interpolation not in AUGMENT_INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(AUGMENT_INTERPOLATIONS)}, got {interpolation!r}")
        hparams = {"translate_const": int(0.45 * input_size), "img_mean": AUGMENT_FILL,
                   "interpolation": AUGMENT_INTERPOLATIONS[interpolation]}
        policy = rand_augment_transform(config_str, hparams, transforms=transforms)
        self.ops: list[AugmentOp] = list(policy.ops)
        for op in self.ops:
            if op.aug_fn is timm_posterize:
                op.aug_fn = posterize
        self.num_layers, self.choice_weights = policy.num_layers, policy.choice_weights

    def draw(self, rng: np.random.Generator) -> list[tuple[AugmentOp, tuple]]:
        """One clip's ops and their arguments, drawn as timm's RandAugment/AugmentOp draw them for one image."""
        chosen = rng.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                            p=self.choice_weights)
        drawn = []
        with seeded_global_rngs(rng):  # timm's level functions pick the sign with Python's random
            for op in (self.ops[k] for k in chosen):
                if op.prob < 1.0 and rng.random() > op.prob:
                    continue
                magnitude = op.magnitude
                if op.magnitude_std == float("inf"):
                    magnitude = rng.uniform(0, magnitude)
                elif op.magnitude_std > 0:
                    magnitude = rng.normal(magnitude, op.magnitude_std)
                magnitude = min(max(float(magnitude), 0.0), op.magnitude_max or AUGMENT_LEVEL_MAX)
                level_args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
                resample = op.kwargs["resample"]
                if isinstance(resample, tuple):
                    op = copy.copy(op)
                    op.kwargs = {**op.kwargs, "resample": resample[rng.integers(len(resample))]}
                drawn.append((op, level_args))
        return drawn

    @staticmethod
    def apply(frames: torch.Tensor, box: np.ndarray,
              ops: list[tuple[AugmentOp, tuple]]) -> tuple[torch.Tensor, np.ndarray]:
        """Apply drawn ops to every frame of (T, 3, H, W) uint8 frames; returns uint8 frames of the same layout."""
        if not ops:
            return frames, box
        height, width = frames.shape[-2:]
        pixels = frames.permute(0, 2, 3, 1).numpy()
        images = [Image.fromarray(frame) for frame in pixels]
        for op, level_args in ops:
            images = [op.aug_fn(image, *level_args, **op.kwargs) for image in images]
            if op.name in AFFINE_OPS:
                forward = np.linalg.inv(pil_affine_inverse(op.name, level_args, width, height))
                box = affine_box(box, forward, width, height)
        frames = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2)
        return frames, box

    def __call__(self, frames: torch.Tensor, box: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        return self.apply(frames, box, self.draw(rng))


def erase_clip(video: torch.Tensor, eraser: RandomErasing, rng: np.random.Generator) -> torch.Tensor:
    """timm's random erasing as VideoMAE applies it, in place on the normalised clip (3, T, H, W): the clip goes in as
    a batch of T frames, so every frame is erased on its own (probability ``--reprob``, its own rectangles)."""
    with seeded_global_rngs(rng):
        eraser(video.transpose(0, 1))
    return video

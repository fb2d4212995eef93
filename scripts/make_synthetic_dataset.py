"""Generate the project's embedded synthetic video dataset (something-something-like, motion-labelled).

Each clip shows one textured object moving over a textured, cluttered world filmed by a panning/zooming
camera. The label is the object's motion *relative to the scene* (left/right/up/down, approach/recede,
rotate cw/ccw); static clutter uses the same kind of texture as the object, so only motion tells them apart,
which is exactly what motion-box detection and motion-focused masking should exploit.

The object is composited in frame coordinates after the camera, so its ground-truth box moves in the frame
exactly as its class says; the camera's pan and zoom are bounded against the object's own motion so that the
direction relative to the background is never flipped.

Layout written under ``--out DIR``::

    videos/{idx:06d}.mp4      mp4v-encoded RGB clips
    gt_boxes/{idx:06d}.json   per-frame ground-truth boxes (motion_detection.boxfile schema, flow method
                              "ground_truth"; extra keys: label, class_name, camera, object, scene)
    train.csv val.csv test.csv  VideoMAE lists: "<path relative to videos/> <label>" per line
    classes.txt               class names in label order

``--difficulty easy`` (a still camera over a dark world without clutter, a bright, larger and faster object) is
the preset a tiny model trained from scratch on a CPU learns in a few hundred steps (tests/test_finetune_learns.py);
``--camera_motion``, ``--clutter``, ``--background``, ``--bright_object``, ``--object_scale`` and ``--motion_scale``
change single settings of either preset.

Usage::

    python scripts/make_synthetic_dataset.py --out data/synthetic --num_videos 24
    python scripts/make_synthetic_dataset.py --out data/easy --num_videos 384 --num_frames 24 --difficulty easy
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from motion_detection.boxfile import MotionBoxes, save_boxes  # noqa: E402
from motion_detection.video import write_mp4  # noqa: E402, F401  (part of this module's API: tests encode clips with it)

CLASSES = [
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "approach",
    "recede",
    "rotate_cw",
    "rotate_ccw",
]

# Frame-space direction (unit vector, y down) of the translation classes.
_TRANSLATION_DIRECTIONS = {0: (-1.0, 0.0), 1: (1.0, 0.0), 2: (0.0, -1.0), 3: (0.0, 1.0)}

OBJECT_SIZE_RANGE = (0.20, 0.35)  # object's long side as a fraction of the frame's short side
MAX_OBJECT_SIZE = 0.60  # the largest an approaching object may grow to (same unit)
TRANSLATION_SPEED_RANGE = (1.5, 3.0)  # px/frame at 160x120, scaled with the frame's short side
SCALE_RATE_RANGE = (0.02, 0.03)  # relative size change per frame for approach/recede
ROTATION_SPEED_RANGE = (4.0, 6.0)  # degrees per frame
CAMERA_PAN_RANGE = (0.5, 2.5)  # world px/frame at 160x120, scaled with the frame's short side
CAMERA_STILL_PROBABILITY = 0.25  # chance that a moving-camera clip has no pan (zoom may remain)
CAMERA_ZOOM_MAX = 0.01  # |relative zoom change| per frame
OPPOSING_CAMERA_LIMIT = 0.5  # camera motion against the object is capped at this fraction of the object's
FRAME_MARGIN = 2  # pixels kept free between the object and the frame border
MIN_FRAME_SIDE = 32  # the smallest frame width and height rendered
PIXEL_NOISE_STD = 2.0
REFERENCE_SHORT_SIDE = 120.0


@dataclass(frozen=True)
class Scene:
    """How hard a clip is: what besides the object moves or looks like it, and how the object looks and moves.

    The default is the standard dataset (panning/zooming camera, textured world with object-like clutter);
    ``DIFFICULTIES["easy"]`` is a still camera over a dark world without clutter and a bright, larger, faster
    object, which a tiny model trained from scratch on a CPU learns in a few hundred steps (the dark world keeps
    its texture, so optical flow and motion-box detection still work on it).
    """

    camera_motion: bool = True  # pan and zoom (as before: a quarter of the clips only zoom)
    clutter: bool = True  # static object-like shapes painted into the world
    background: str = "textured"  # "textured" (noise, stripes, blobs) or "dark" (the same, dimmed to a quarter)
    bright_object: bool = False  # object (and clutter) texture lifted into the upper half of every channel
    object_scale: float = 1.0  # multiplies OBJECT_SIZE_RANGE
    motion_scale: float = 1.0  # multiplies the translation speed, the approach/recede rate and the rotation speed

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if not 0 < self.object_scale <= MAX_OBJECT_SCALE:
            raise ValueError(f"object_scale must be in (0, {MAX_OBJECT_SCALE}], got {self.object_scale}")
        if not 0 < self.motion_scale <= MAX_MOTION_SCALE:
            raise ValueError(f"motion_scale must be in (0, {MAX_MOTION_SCALE}], got {self.motion_scale}")


BACKGROUNDS = ("textured", "dark")
DARK_BACKGROUND_SCALE = 0.25  # a dark background is the textured one times this (channels <= 64 of 255)
MAX_OBJECT_SCALE = 2.0  # up to this an approaching object can still grow 1.5x before reaching MAX_OBJECT_SIZE
MAX_MOTION_SCALE = 2.0  # keeps rotations under 12 degrees/frame: cw and ccw stay apart in subsampled frames
DIFFICULTIES = {
    "standard": Scene(),
    "easy": Scene(
        camera_motion=False, clutter=False, background="dark", bright_object=True, object_scale=1.5, motion_scale=1.5
    ),
}


@dataclass
class CameraPath:
    """Per-frame camera: world point ``centers[t]`` is seen at the frame centre with magnification ``scales[t]``."""

    centers: np.ndarray  # (T, 2) world xy
    scales: np.ndarray  # (T,)
    pan: tuple[float, float]  # world px/frame
    zoom: float  # relative magnification change per frame


@dataclass
class ObjectPath:
    """Per-frame object pose in frame coordinates: centre (T, 2), long side in px (T,), angle in degrees (T,).

    Angles follow image coordinates (y down), so a growing angle turns the object clockwise on screen.
    """

    centers: np.ndarray
    sizes: np.ndarray
    angles: np.ndarray
    aspect: float  # short side / long side
    shape: str  # "rectangle" or "ellipse"


@dataclass
class RenderedClip:
    """A rendered clip: frames and object-free background (both (T, H, W, 3) uint8 RGB, same noise) and boxes."""

    frames: np.ndarray
    background: np.ndarray
    boxes: np.ndarray  # (T, 4) float32 xyxy, x2/y2 exclusive
    label: int
    camera: CameraPath
    obj: ObjectPath
    scene: Scene

    def metadata(self) -> dict:
        """JSON-ready description of the camera and object motion (stored in the ground-truth box file)."""
        return {
            "label": self.label,
            "class_name": CLASSES[self.label],
            "camera": {
                "pan_px_per_frame": [round(v, 4) for v in self.camera.pan],
                "zoom_per_frame": round(self.camera.zoom, 6),
            },
            "object": {
                "shape": self.obj.shape,
                "aspect": round(self.obj.aspect, 4),
                "start_center": [round(float(v), 2) for v in self.obj.centers[0]],
                "end_center": [round(float(v), 2) for v in self.obj.centers[-1]],
                "start_size": round(float(self.obj.sizes[0]), 2),
                "end_size": round(float(self.obj.sizes[-1]), 2),
                "rotation_deg": round(float(self.obj.angles[-1] - self.obj.angles[0]), 2),
            },
            "scene": asdict(self.scene),
        }


def textured_noise(rng: np.random.Generator, height: int, width: int, cell_sizes=(32, 12, 5)) -> np.ndarray:
    """Smooth multi-octave colour noise in [0, 1], (H, W, 3) float32: upsampled random grids, one per cell size.

    Octaves are weighted by the square root of their cell size, so fine detail survives next to the coarse blobs.
    """
    image = np.zeros((height, width, 3), np.float32)
    total_weight = 0.0
    for cell in cell_sizes:
        grid = rng.random((height // cell + 2, width // cell + 2, 3), dtype=np.float32)
        weight = math.sqrt(cell)
        image += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        total_weight += weight
    image /= total_weight
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)


def dark_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dark world, (H, W, 3) uint8: ``background_texture`` times DARK_BACKGROUND_SCALE, so every channel stays far
    below a bright object's while the texture still gives optical flow something to match."""
    return np.round(background_texture(rng, height, width) * DARK_BACKGROUND_SCALE).astype(np.uint8)


def background_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """World texture, (H, W, 3) uint8: muted noise, soft stripes and random blobs; strong texture for optical flow."""
    noise = textured_noise(rng, height, width)
    base_colour = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
    image = 0.5 * base_colour + 0.5 * noise
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(10, 24)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    image += 0.12 * stripes[..., None]
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    for _ in range(int(height * width / 2000 * rng.uniform(0.7, 1.3))):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(3, 14)), int(rng.integers(3, 14)))
        colour = tuple(int(c) for c in rng.integers(30, 226, size=3))
        cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return image


def object_texture(rng: np.random.Generator, height: int, width: int, bright: bool = False) -> np.ndarray:
    """Saturated two-colour checker or stripes modulated by noise, (H, W, 3) uint8; for the object and the clutter.

    ``bright`` maps every channel from [0, 1] to [0.5, 1] (a paler texture, always brighter than a dark background).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(6, 12)
    if rng.random() < 0.5:
        pattern = ((xx // period + yy // period) % 2).astype(np.float32)
    else:
        angle = rng.uniform(0, math.pi)
        pattern = (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0).astype(np.float32)
    colour_a, colour_b = _saturated_colour(rng), _saturated_colour(rng)
    image = pattern[..., None] * colour_a + (1 - pattern[..., None]) * colour_b
    image = 0.75 * image + 0.25 * textured_noise(rng, height, width, cell_sizes=(8, 3))
    if bright:
        image = 0.5 + 0.5 * image
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A random fully saturated RGB colour in [0, 1] (one channel high, one low, one random)."""
    colour = np.array([1.0, rng.uniform(0, 1), 0.05], np.float32)
    return rng.permutation(colour) * rng.uniform(0.7, 1.0)


def shape_mask(shape: str, height: int, width: int, inset: int = 1) -> np.ndarray:
    """Anti-aliased float32 mask in [0, 1] of a rectangle or an ellipse filling an (H, W) canvas."""
    mask = np.zeros((height, width), np.uint8)
    if shape == "rectangle":
        mask[inset : height - inset, inset : width - inset] = 255
    else:
        center = (width // 2, height // 2)
        axes = (max(width // 2 - inset, 1), max(height // 2 - inset, 1))
        cv2.ellipse(mask, center, axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def paint_clutter(
    rng: np.random.Generator,
    world: np.ndarray,
    region: tuple[float, float, float, float],
    short_side: float,
    bright: bool = False,
) -> None:
    """Paint 2-4 static textured shapes into ``world`` (in place), centred inside ``region`` (xyxy world px).

    Their sides are 15-30% of ``short_side``, i.e. about the moving object's size; ``bright`` as for the object.
    """
    world_h, world_w = world.shape[:2]
    x1, y1, x2, y2 = region
    for _ in range(int(rng.integers(2, 5))):
        shape_h = max(int(rng.uniform(0.15, 0.30) * short_side), 2)
        shape_w = max(int(rng.uniform(0.15, 0.30) * short_side), 2)
        top = int(np.clip(rng.uniform(y1, y2) - shape_h / 2, 0, world_h - shape_h))
        left = int(np.clip(rng.uniform(x1, x2) - shape_w / 2, 0, world_w - shape_w))
        alpha = shape_mask(str(rng.choice(["rectangle", "ellipse"])), shape_h, shape_w)[..., None]
        patch = world[top : top + shape_h, left : left + shape_w].astype(np.float32)
        texture = object_texture(rng, shape_h, shape_w, bright).astype(np.float32)
        world[top : top + shape_h, left : left + shape_w] = (alpha * texture + (1 - alpha) * patch).astype(np.uint8)


def _scaled(value_range: tuple[float, float], factor: float) -> tuple[float, float]:
    """A px/frame range given for a 120-px short side, rescaled to this frame (``factor`` = short side / 120)."""
    return value_range[0] * factor, value_range[1] * factor


def plan_object_motion(
    rng: np.random.Generator,
    label: int,
    num_frames: int,
    width: int,
    height: int,
    object_scale: float = 1.0,
    motion_scale: float = 1.0,
) -> ObjectPath:
    """Choose the object's per-frame pose for ``label`` so that it stays fully inside the frame throughout.

    ``object_scale`` multiplies the object's size range and ``motion_scale`` its speed (translation px/frame,
    approach/recede rate, degrees/frame); the approaching/receding object still never exceeds MAX_OBJECT_SIZE.
    """
    short_side = min(width, height)
    steps = np.arange(num_frames, dtype=np.float64)
    size_range = (OBJECT_SIZE_RANGE[0] * object_scale, OBJECT_SIZE_RANGE[1] * object_scale)
    aspect = float(rng.uniform(0.55, 0.8))
    shape = str(rng.choice(["rectangle", "ellipse"]))
    size = rng.uniform(*size_range) * short_side
    sizes = np.full(num_frames, size)
    angles = np.full(num_frames, rng.uniform(-30, 30))
    offsets = np.zeros((num_frames, 2))
    if label in _TRANSLATION_DIRECTIONS:
        speed = rng.uniform(*_scaled(TRANSLATION_SPEED_RANGE, short_side / REFERENCE_SHORT_SIDE)) * motion_scale
        offsets = np.outer(steps, _TRANSLATION_DIRECTIONS[label]) * speed
    elif label in (4, 5):
        largest_growth = MAX_OBJECT_SIZE / size_range[0]
        rate = rng.uniform(*SCALE_RATE_RANGE) * motion_scale
        growth = min((1 + rate) ** max(num_frames - 1, 1), largest_growth)
        small_end = rng.uniform(size_range[0], min(size_range[1], MAX_OBJECT_SIZE / growth)) * short_side
        sizes = small_end * growth ** (steps / max(num_frames - 1, 1))
        if label == 5:
            sizes = sizes[::-1].copy()
    else:
        direction = 1.0 if label == 6 else -1.0
        angles = angles + direction * rng.uniform(*ROTATION_SPEED_RANGE) * motion_scale * steps

    while True:
        half_extents = _rotated_half_extents(sizes, sizes * aspect, angles)
        low = np.max(half_extents - offsets, axis=0) + FRAME_MARGIN
        high = np.min(np.array([width, height]) - half_extents - offsets, axis=0) - FRAME_MARGIN
        if np.all(low <= high):
            break
        # The path does not fit (long clip or tiny frame): slow the translation and shrink the object a little.
        offsets *= 0.9
        sizes *= 0.95
    start = rng.uniform(low, high)
    return ObjectPath(start + offsets, sizes, angles, aspect, shape)


def _rotated_half_extents(long_sides: np.ndarray, short_sides: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """(T, 2) half width/height of the axis-aligned box around a rotated long x short rectangle."""
    radians = np.deg2rad(angles_deg)
    cos, sin = np.abs(np.cos(radians)), np.abs(np.sin(radians))
    half_w = 0.5 * (long_sides * cos + short_sides * sin)
    half_h = 0.5 * (long_sides * sin + short_sides * cos)
    return np.stack([half_w, half_h], axis=1) + 1.0


def plan_camera(
    rng: np.random.Generator, obj: ObjectPath, label: int, num_frames: int, width: int, height: int, moving: bool
) -> tuple[CameraPath, tuple[int, int]]:
    """Choose pan and zoom, then place the camera in a world just big enough to hold every view.

    Camera motion that opposes the object's own motion is capped at ``OPPOSING_CAMERA_LIMIT`` of it, so the
    object's motion relative to the background always has the direction its class names. Returns the camera
    path and the world size (width, height).
    """
    short_side = min(width, height)
    pan = np.zeros(2)
    zoom = 0.0
    if moving:
        if rng.random() >= CAMERA_STILL_PROBABILITY:
            heading = rng.uniform(0, 2 * math.pi)
            pan = rng.uniform(*_scaled(CAMERA_PAN_RANGE, short_side / REFERENCE_SHORT_SIDE)) * np.array(
                [math.cos(heading), math.sin(heading)]
            )
        zoom = float(rng.uniform(-CAMERA_ZOOM_MAX, CAMERA_ZOOM_MAX))
    steps = np.arange(num_frames, dtype=np.float64)
    if label in _TRANSLATION_DIRECTIONS:
        # The background moves by -pan * scale in the frame; keep that from outrunning the object.
        direction = np.array(_TRANSLATION_DIRECTIONS[label])
        object_speed = float(np.linalg.norm(obj.centers[-1] - obj.centers[0])) / max(num_frames - 1, 1)
        max_scale = max(1.0, (1 + zoom) ** (num_frames - 1))
        along = float(pan @ direction)
        floor = -OPPOSING_CAMERA_LIMIT * object_speed / max_scale
        if along < floor:
            pan = pan + (floor - along) * direction
    elif label in (4, 5):
        # Zooming the same way as the object scales makes the background grow/shrink along with it.
        object_rate = (obj.sizes[-1] / obj.sizes[0]) ** (1 / max(num_frames - 1, 1)) - 1
        if zoom * object_rate > 0:
            zoom = float(math.copysign(min(abs(zoom), OPPOSING_CAMERA_LIMIT * abs(object_rate)), zoom))
    scales = (1 + zoom) ** steps
    relative_centers = np.outer(steps, pan)
    half_views = np.stack([width / (2 * scales), height / (2 * scales)], axis=1)
    margin = 4.0
    origin = np.max(half_views - relative_centers, axis=0) + margin
    centers = origin + relative_centers
    world_size = np.ceil(np.max(centers + half_views, axis=0) + margin).astype(int)
    camera = CameraPath(centers, scales, (float(pan[0]), float(pan[1])), zoom)
    return camera, (int(world_size[0]), int(world_size[1]))


def camera_matrix(camera: CameraPath, t: int, width: int, height: int) -> np.ndarray:
    """2x3 affine map from frame pixels to world pixels at frame ``t`` (for ``cv2.WARP_INVERSE_MAP``)."""
    inverse_scale = 1.0 / camera.scales[t]
    cx, cy = camera.centers[t]
    return np.array(
        [
            [inverse_scale, 0.0, cx - inverse_scale * width / 2],
            [0.0, inverse_scale, cy - inverse_scale * height / 2],
        ]
    )


def object_matrix(obj: ObjectPath, t: int, sprite_height: int, sprite_width: int) -> np.ndarray:
    """2x3 affine map from sprite pixels (long side along x) to frame pixels at frame ``t``.

    Scales the sprite to the object's size, rotates it (OpenCV's positive angle turns counter-clockwise on
    screen, hence the minus) and puts its centre on the object's centre.
    """
    scale = obj.sizes[t] / sprite_width
    matrix = cv2.getRotationMatrix2D((0.0, 0.0), -float(obj.angles[t]), scale)
    sprite_center = np.array([sprite_width / 2, sprite_height / 2])
    matrix[:, 2] = obj.centers[t] - matrix[:, :2] @ sprite_center
    return matrix


def antialiased(image: np.ndarray, scale: float) -> np.ndarray:
    """Blur ``image`` before it is shrunk by ``scale`` (< 1), so bilinear warping does not alias its texture."""
    if scale >= 0.8:
        return image
    return cv2.GaussianBlur(image, (0, 0), 0.5 * (1 / scale - 1))


def mask_box(visible: np.ndarray) -> np.ndarray:
    """Tight xyxy box (x2/y2 exclusive) of the True pixels of an (H, W) mask; NaNs when it is empty."""
    columns, rows = visible.any(axis=0), visible.any(axis=1)
    if not columns.any():
        return np.full(4, np.nan, np.float32)
    x1, x2 = np.argmax(columns), len(columns) - np.argmax(columns[::-1])
    y1, y2 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    return np.array([x1, y1, x2, y2], np.float32)


def resolve_scene(scene: Scene | str | None = None, camera_motion: bool | None = None) -> Scene:
    """A Scene from a Scene, a DIFFICULTIES name or None (standard); ``camera_motion``, when given, overrides it."""
    if scene is None:
        scene = Scene()
    elif isinstance(scene, str):
        if scene not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {scene!r}")
        scene = DIFFICULTIES[scene]
    if camera_motion is not None:
        scene = replace(scene, camera_motion=camera_motion)
    return scene


def render_clip_details(
    label: int,
    num_frames: int = 32,
    width: int = 160,
    height: int = 120,
    seed: int = 0,
    camera_motion: bool | None = None,
    scene: Scene | str | None = None,
) -> RenderedClip:
    """Render one clip in memory and keep everything a test or a caller might want to inspect.

    ``scene`` (a Scene or a DIFFICULTIES name; default standard) sets the camera, background, clutter, object
    size and speed; ``camera_motion`` overrides the scene's camera when given.
    """
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    if num_frames < 2 or width < MIN_FRAME_SIDE or height < MIN_FRAME_SIDE:
        raise ValueError(f"need num_frames >= 2 and a frame of at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE}, got "
                         f"{num_frames}, {width}x{height}")
    scene = resolve_scene(scene, camera_motion)
    rng = np.random.default_rng(seed)
    obj = plan_object_motion(rng, label, num_frames, width, height, scene.object_scale, scene.motion_scale)
    camera, (world_w, world_h) = plan_camera(rng, obj, label, num_frames, width, height, scene.camera_motion)
    if scene.background == "dark":
        world = dark_background(rng, world_h, world_w)
    else:
        world = background_texture(rng, world_h, world_w)
    if scene.clutter:
        views_x1, views_y1 = camera.centers.min(axis=0) - (width / 2, height / 2)
        views_x2, views_y2 = camera.centers.max(axis=0) + (width / 2, height / 2)
        region = (views_x1, views_y1, views_x2, views_y2)
        paint_clutter(rng, world, region, min(width, height), scene.bright_object)

    sprite_long = int(math.ceil(obj.sizes.max()))
    sprite_short = max(int(round(sprite_long * obj.aspect)), 2)
    sprite = object_texture(rng, sprite_short, sprite_long, scene.bright_object)
    sprite_alpha = shape_mask(obj.shape, sprite_short, sprite_long)
    noise = rng.normal(0.0, PIXEL_NOISE_STD, size=(num_frames, height, width, 3)).astype(np.float32)

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    background = np.empty_like(frames)
    boxes = np.empty((num_frames, 4), np.float32)
    for t in range(num_frames):
        view = cv2.warpAffine(
            world,
            camera_matrix(camera, t, width, height),
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        ).astype(np.float32)
        placement = object_matrix(obj, t, sprite_short, sprite_long)
        texture = cv2.warpAffine(
            antialiased(sprite, obj.sizes[t] / sprite_long), placement, (width, height), flags=cv2.INTER_LINEAR
        ).astype(np.float32)
        alpha = cv2.warpAffine(sprite_alpha, placement, (width, height), flags=cv2.INTER_LINEAR)
        composite = alpha[..., None] * texture + (1 - alpha[..., None]) * view
        frames[t] = np.clip(composite + noise[t] + 0.5, 0, 255).astype(np.uint8)
        background[t] = np.clip(view + noise[t] + 0.5, 0, 255).astype(np.uint8)
        boxes[t] = mask_box(alpha >= 0.5)
    return RenderedClip(frames, background, boxes, label, camera, obj, scene)


def render_clip(
    label: int,
    num_frames: int = 32,
    width: int = 160,
    height: int = 120,
    seed: int = 0,
    camera_motion: bool | None = None,
    scene: Scene | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one clip in memory: frames (T, H, W, 3) uint8 RGB and ground-truth boxes (T, 4) float32 xyxy.

    The same arguments always give byte-identical frames (all randomness comes from ``seed``).
    """
    clip = render_clip_details(label, num_frames, width, height, seed, camera_motion, scene)
    return clip.frames, clip.boxes


def clip_seed(seed: int, index: int) -> int:
    """Independent per-video seed derived from the dataset seed and the video index."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def split_indices(labels: list[int], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """Deterministic, class-stratified train/val/test split of video indices.

    Videos are shuffled within each class and dealt round-robin over a shuffled class order, so any
    contiguous slice of that sequence is as class-balanced as possible; train takes the first slice. Val and
    test sizes are rounded down, so train is never empty.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and a sum < 1, got {val_fraction}, {test_fraction}")
    rng = np.random.default_rng(seed)
    per_class = {c: rng.permutation([i for i, label in enumerate(labels) if label == c]).tolist() for c in set(labels)}
    class_order = rng.permutation(sorted(per_class)).tolist()
    dealt = []
    for round_index in range(max(len(v) for v in per_class.values())):
        dealt += [per_class[c][round_index] for c in class_order if round_index < len(per_class[c])]
    num_val = math.floor(len(labels) * val_fraction + 1e-9)
    num_test = math.floor(len(labels) * test_fraction + 1e-9)
    num_train = len(labels) - num_val - num_test
    return {
        "train": sorted(dealt[:num_train]),
        "val": sorted(dealt[num_train : num_train + num_val]),
        "test": sorted(dealt[num_train + num_val :]),
    }


def make_dataset(
    out_dir: str | Path,
    num_videos: int,
    num_frames: int = 32,
    width: int = 160,
    height: int = 120,
    fps: float = 12,
    seed: int = 0,
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    scene: Scene | str | None = None,
) -> dict:
    """Write the whole dataset under ``out_dir`` and return its paths and split sizes.

    Video ``i`` gets label ``i % len(CLASSES)``, so every class appears once ``num_videos >= len(CLASSES)``.
    ``scene``: a Scene or a DIFFICULTIES name (default: standard, a moving camera over a cluttered world).
    """
    scene = resolve_scene(scene)
    if num_videos < 1:
        raise ValueError(f"num_videos must be positive, got {num_videos}")
    if width % 2 or height % 2:
        raise ValueError(f"the mp4v encoder needs an even frame size (it would crop), got {width}x{height}")
    out_dir = Path(out_dir)
    video_dir, box_dir = out_dir / "videos", out_dir / "gt_boxes"
    labels = [i % len(CLASSES) for i in range(num_videos)]
    splits = split_indices(labels, seed, val_fraction, test_fraction)
    for index, label in enumerate(labels):
        clip = render_clip_details(label, num_frames, width, height, clip_seed(seed, index), scene=scene)
        name = f"{index:06d}.mp4"
        write_mp4(video_dir / name, clip.frames, fps)
        boxes = clip.boxes
        union = np.array([*np.nanmin(boxes[:, :2], axis=0), *np.nanmax(boxes[:, 2:], axis=0)], np.float32)
        record = MotionBoxes(
            video=name,
            width=width,
            height=height,
            num_frames=num_frames,
            fps=fps,
            flow={"method": "ground_truth"},
            frames=boxes,
            union=union,
            extra=clip.metadata(),
        )
        save_boxes(box_dir / f"{index:06d}.json", record)
    stale = remove_stale_clips(video_dir, ".mp4", num_videos) + remove_stale_clips(box_dir, ".json", num_videos)
    split_files = {}
    for split, indices in splits.items():
        split_files[split] = out_dir / f"{split}.csv"
        split_files[split].write_text("".join(f"{i:06d}.mp4 {labels[i]}\n" for i in indices))
    classes_file = out_dir / "classes.txt"
    classes_file.write_text("".join(f"{name}\n" for name in CLASSES))
    return {
        "out_dir": out_dir,
        "video_dir": video_dir,
        "box_dir": box_dir,
        "classes_file": classes_file,
        "split_files": split_files,
        "split_sizes": {split: len(indices) for split, indices in splits.items()},
        "num_videos": num_videos,
        "labels": labels,
        "stale_removed": stale,
    }


def remove_stale_clips(directory: Path, suffix: str, num_videos: int) -> int:
    """Delete the clips of an earlier, larger dataset written to the same folder (this generator's
    ``{idx:06d}`` names from ``num_videos`` on), whose videos no list names but whose boxes a reader of the whole
    folder would still find; other files are left. Returns how many were removed."""
    stale = [path for path in directory.glob(f"*{suffix}")
             if re.fullmatch(rf"\d{{6}}{re.escape(suffix)}", path.name) and int(path.stem) >= num_videos]
    for path in stale:
        path.unlink()
    return len(stale)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--num_videos", type=int, required=True, help="number of clips; video i has label i %% 8")
    parser.add_argument("--num_frames", type=int, default=32, help="frames per clip")
    parser.add_argument("--width", type=int, default=160, help="frame width in pixels")
    parser.add_argument("--height", type=int, default=120, help="frame height in pixels")
    parser.add_argument("--fps", type=float, default=12, help="frame rate stored in the mp4 and the box files")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; same seed, same frames")
    parser.add_argument("--val_fraction", type=float, default=0.25, help="fraction of videos in val.csv")
    parser.add_argument("--test_fraction", type=float, default=0.25, help="fraction of videos in test.csv")
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="standard",
                        help="scene preset: standard (panning/zooming camera, textured cluttered world) or easy "
                        "(still camera, dark background, no clutter, bright object 1.5x larger and faster); "
                        "the flags below override single settings of it")
    parser.add_argument("--camera_motion", choices=["on", "off"], default=None,
                        help="camera pans and zooms; None: the difficulty's")
    parser.add_argument("--clutter", choices=["on", "off"], default=None,
                        help="static object-like shapes in the world; None: the difficulty's")
    parser.add_argument("--background", choices=BACKGROUNDS, default=None,
                        help="world behind the object: textured, or dark (the same texture dimmed to a quarter of "
                        "the range); None: the difficulty's")
    parser.add_argument("--bright_object", choices=["on", "off"], default=None,
                        help="object and clutter textures in the upper half of every channel; None: the "
                        "difficulty's")
    parser.add_argument("--object_scale", type=float, default=None,
                        help=f"multiplies the object's size range {OBJECT_SIZE_RANGE} (fraction of the short side; "
                        f"at most {MAX_OBJECT_SCALE}); None: the difficulty's")
    parser.add_argument("--motion_scale", type=float, default=None,
                        help=f"multiplies the object's speed: translation, approach/recede rate, rotation (at most "
                        f"{MAX_MOTION_SCALE}); None: the difficulty's")
    return parser.parse_args(argv)


def scene_from_args(args: argparse.Namespace) -> Scene:
    """The --difficulty preset with the single-setting flags that were given applied on top."""
    overrides = {
        "camera_motion": None if args.camera_motion is None else args.camera_motion == "on",
        "clutter": None if args.clutter is None else args.clutter == "on",
        "background": args.background,
        "bright_object": None if args.bright_object is None else args.bright_object == "on",
        "object_scale": args.object_scale,
        "motion_scale": args.motion_scale,
    }
    return replace(DIFFICULTIES[args.difficulty], **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        summary = make_dataset(
            args.out,
            args.num_videos,
            num_frames=args.num_frames,
            width=args.width,
            height=args.height,
            fps=args.fps,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            scene=scene_from_args(args),
        )
    except ValueError as error:  # sizes, fractions or scene settings that do not fit
        raise SystemExit(f"make_synthetic_dataset.py: {error}") from None
    sizes = ", ".join(f"{split} {n}" for split, n in summary["split_sizes"].items())
    removed = summary["stale_removed"]
    stale = f"; removed {removed} files of a larger earlier dataset" if removed else ""
    print(f"wrote {args.num_videos} videos to {summary['out_dir']} ({sizes}) in {time.perf_counter() - start:.1f}s"
          f"{stale}")


if __name__ == "__main__":
    main()

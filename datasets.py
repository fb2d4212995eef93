"""Video datasets: VideoMAE-style lists, decord decoding, and the motion box of every clip.

Pretraining: one window of ``num_frames`` frames every ``sampling_rate`` frames, VideoMAE's multi-scale crop
with the motion box carried through the same geometry, and a mask from the masking generator computed in the
worker (motion-focused when the clip has a box). Corrupt videos are logged and replaced by another sample.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import decord
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from masking_generator import MotionFocusedMaskingGenerator, TubeMaskingGenerator
from motion_detection.boxfile import BoxFileError, MotionBoxes, box_file_path, load_boxes
from motion_detection.detect import union_box
from video_transforms import NO_BOX, multiscale_crop, normalize_clip, normalized_box, scale_box

log = logging.getLogger("datasets")

MIN_VIDEO_BYTES = 1024  # VideoMAE skips smaller files: decoders can hang on them
MAX_REPLACEMENTS = 20


class VideoDecodeError(RuntimeError):
    """A video in the list cannot be decoded; the message names the file."""


def read_video_list(list_file: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """VideoMAE list: ``path [fields...]`` per line, separated by whitespace."""
    entries = []
    for line in Path(list_file).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            entries.append((parts[0], parts[1:]))
    if not entries:
        raise ValueError(f"{list_file}: no videos listed")
    return entries


def sample_window_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                          rng: np.random.Generator) -> np.ndarray:
    """VideoMAE pretraining sampling: one random window of num_frames * sampling_rate frames, every
    sampling_rate-th frame; short videos repeat their last frame."""
    span = num_frames * sampling_rate
    start = int(rng.integers(num_video_frames - span + 1)) if num_video_frames >= span else 0
    return np.minimum(start + np.arange(num_frames) * sampling_rate, num_video_frames - 1)


def decode_size(width: int, height: int, needed_short_side: int) -> tuple[int, int]:
    """Smallest decode size (even sides, aspect kept) whose short side still reaches needed_short_side; the
    original size when it is already smaller. Decoding smaller saves most of the decode and resize time."""
    short = min(width, height)
    if short <= needed_short_side:
        return width, height
    scale = needed_short_side / short
    return 2 * math.ceil(width * scale / 2), 2 * math.ceil(height * scale / 2)


class MotionBoxIndex:
    """Box files of a video list under ``box_dir`` (mirroring the list's relative paths)."""

    def __init__(self, box_dir: str, videos: list[str], missing_box: str = "error"):
        if missing_box not in ("error", "random"):
            raise ValueError(f"missing_box must be 'error' or 'random', got {missing_box!r}")
        self.box_dir, self.missing_box = box_dir, missing_box
        self.paths = [box_file_path(box_dir, v) for v in videos]
        missing = [str(p) for p in self.paths if not p.exists()]
        self.num_missing = len(missing)
        if missing and missing_box == "error":
            shown = "\n  ".join(missing[:10])
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.paths)} videos have no box file under {box_dir} (first: \n  {shown}\n)."
                " Run motion_detection.extract_boxes for them, or pass --missing_box random to use plain tube"
                " masking for those videos.")
        if missing:
            log.warning("%d of %d videos have no box file under %s; they get plain tube masking",
                        len(missing), len(self.paths), box_dir)

    def load(self, index: int) -> MotionBoxes | None:
        try:
            return load_boxes(self.paths[index])
        except BoxFileError:
            if self.missing_box == "error" or self.paths[index].exists():
                raise
            return None


def clip_box(boxes: MotionBoxes | None, frame_indices: np.ndarray, num_video_frames: int, source: str) -> np.ndarray:
    """Motion box of a clip in [0, 1] coordinates: the union of its frames' boxes (``clip``) or the video's union
    box (``video``); NaN when there is none. Frame indices are mapped proportionally when the box file counted
    a different number of frames than the decoder."""
    if boxes is None:
        return NO_BOX.copy()
    if source == "video":
        box = boxes.union
    else:
        if boxes.num_frames != num_video_frames and num_video_frames > 1:
            frame_indices = np.rint(frame_indices * (boxes.num_frames - 1) / (num_video_frames - 1)).astype(int)
        box = union_box(boxes.frames[np.clip(frame_indices, 0, boxes.num_frames - 1)])
    if box is None:
        return NO_BOX.copy()
    return normalized_box(box, boxes.width, boxes.height)


class VideoMAEPretrainDataset(Dataset):
    """Clips for masked-autoencoder pretraining with a motion-focused (or plain tube) mask per clip.

    Each item is a dict (or a list of ``num_sample`` dicts from one decode): ``video`` (3, T, S, S) normalised,
    ``mask`` (N,) bool (True = masked), ``box`` (4,) the clip's motion box in [0, 1] of the augmented frames
    (NaN: none), ``replaced`` (corrupt videos skipped to produce this item) and ``missing_box`` (0/1).
    """

    def __init__(self, list_file: str, data_root: str = "", box_dir: str | None = None, num_frames: int = 16,
                 sampling_rate: int = 4, input_size: int = 224, patch_size: int = 16, tubelet_size: int = 2,
                 mask_type: str = "tube", mask_ratio: float = 0.9, motion_mask_ratio: float = 0.75,
                 box_source: str = "clip", missing_box: str = "error", num_sample: int = 1,
                 scales=(1, 0.875, 0.75, 0.66), seed: int | None = None):
        if mask_type not in ("tube", "motion"):
            raise ValueError(f"mask_type must be 'tube' or 'motion', got {mask_type!r}")
        if box_source not in ("clip", "video"):
            raise ValueError(f"box_source must be 'clip' or 'video', got {box_source!r}")
        if mask_type == "motion" and not box_dir:
            raise ValueError("--mask_type motion needs --box_dir (the output of motion_detection.extract_boxes)")
        self.entries = read_video_list(list_file)
        self.data_root = data_root
        self.num_frames, self.sampling_rate, self.input_size = num_frames, sampling_rate, input_size
        self.box_source, self.num_sample, self.scales = box_source, num_sample, tuple(scales)
        self.window_size = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)
        if mask_type == "motion":
            self.mask_generator = MotionFocusedMaskingGenerator(self.window_size, mask_ratio, motion_mask_ratio)
        else:
            self.mask_generator = TubeMaskingGenerator(self.window_size, mask_ratio)
        videos = [path for path, _ in self.entries]
        self.boxes = MotionBoxIndex(box_dir, videos, missing_box) if mask_type == "motion" else None
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Fresh random streams for crops, windows and masks (called per data-loader worker). Both streams are
        spawned from ``seed``, so they never coincide with another seed's streams (``seed + 1`` would hand one
        worker's mask stream to the next worker's crops)."""
        data_seed, mask_seed = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(data_seed)
        self.mask_generator.reseed(mask_seed)

    def __len__(self) -> int:
        return len(self.entries)

    def video_path(self, index: int) -> str:
        return os.path.join(self.data_root, self.entries[index][0])

    def _decode(self, index: int, boxes: MotionBoxes | None) -> tuple[torch.Tensor, np.ndarray, int]:
        path = self.video_path(index)
        if not os.path.exists(path):
            raise VideoDecodeError(f"{path}: file not found")
        if os.path.getsize(path) < MIN_VIDEO_BYTES:
            raise VideoDecodeError(f"{path}: only {os.path.getsize(path)} bytes")
        needed = math.ceil(self.input_size / min(self.scales))
        kwargs = {}
        if boxes is not None:
            width, height = decode_size(boxes.width, boxes.height, needed)
            if (width, height) != (boxes.width, boxes.height):
                kwargs = {"width": width, "height": height}
        try:
            reader = decord.VideoReader(path, num_threads=1, **kwargs)
            num_video_frames = len(reader)
            if num_video_frames == 0:
                raise VideoDecodeError(f"{path}: no frames")
            indices = sample_window_indices(num_video_frames, self.num_frames, self.sampling_rate, self.rng)
            frames = torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())
        except VideoDecodeError:
            raise
        except Exception as e:  # decord raises its own error types for corrupt streams
            raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
        return frames, indices, num_video_frames

    def _load(self, index: int):
        """Decoded frames and the clip's box, replacing corrupt videos by random others (logged, counted)."""
        replaced = 0
        while True:
            try:
                boxes = self.boxes.load(index) if self.boxes is not None else None
                frames, indices, num_video_frames = self._decode(index, boxes)
                return frames, clip_box(boxes, indices, num_video_frames, self.box_source), boxes, replaced
            except VideoDecodeError as e:
                replaced += 1
                log.warning("skipping corrupt video (%s); using another sample", e)
                if replaced >= MAX_REPLACEMENTS:
                    raise RuntimeError(f"{replaced} videos in a row failed to decode; last: {e}") from None
                index = int(self.rng.integers(len(self)))

    def __getitem__(self, index: int):
        frames, box01, boxes, replaced = self._load(index)
        height, width = frames.shape[1:3]
        missing_box = int(self.boxes is not None and boxes is None)
        items = []
        for _ in range(self.num_sample):
            clip, box = multiscale_crop(frames, scale_box(box01, width, height), self.input_size, self.rng,
                                        self.scales)
            box_out = box / self.input_size
            mask_box = None if np.isnan(box_out).any() else box_out
            mask = self.mask_generator(mask_box) if self.boxes is not None else self.mask_generator()
            items.append({
                "video": normalize_clip(clip),
                "mask": torch.from_numpy(np.asarray(mask, dtype=bool)),
                "box": torch.from_numpy(box_out.astype(np.float32)),
                "replaced": 0 if items else replaced,  # counted once per decode
                "missing_box": 0 if items else missing_box,
            })
        return items[0] if self.num_sample == 1 else items


def multiple_samples_collate(batch):
    """Collate for ``num_sample > 1``: every item is a list of clips from one decode; flatten, then stack."""
    return default_collate([clip for item in batch for clip in item])


def build_pretraining_dataset(args) -> VideoMAEPretrainDataset:
    return VideoMAEPretrainDataset(
        list_file=args.data_path, data_root=args.data_root, box_dir=args.box_dir, num_frames=args.num_frames,
        sampling_rate=args.sampling_rate, input_size=args.input_size, patch_size=args.patch_size[0],
        tubelet_size=args.tubelet_size, mask_type=args.mask_type, mask_ratio=args.mask_ratio,
        motion_mask_ratio=args.motion_mask_ratio, box_source=args.box_source, missing_box=args.missing_box,
        num_sample=args.num_sample, seed=args.seed,
    )

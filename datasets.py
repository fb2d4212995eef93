"""Video datasets: VideoMAE-style lists, decord decoding, and the motion boxes of every clip.

Pretraining: one window of ``num_frames`` frames every ``sampling_rate`` frames, VideoMAE's multi-scale crop
with the motion box carried through the same geometry, and a mask from the masking generator computed in the
worker (motion-focused when the clip has a box; motion-guided masks from the crop's own optical flow).

Fine-tuning (``build_dataset``): Kinetics-400 / UCF101 / HMDB51 (``path label`` lists, dense sampling, flips),
SSV2 (``path label`` lists, TSN sampling, never flipped: its labels say left and right) and EPIC-KITCHENS-100
(the official annotation csv, TSN sampling over each action segment of the long videos, verb and noun targets),
with the motion box (the video's, as the paper; or the clip's, or each frame's: ``box_source``) of every sampled
frame carried through every geometric augmentation.

Box files mirror the list's video paths below ``data_root`` (absolute list paths must lie below it). Only the
sampled frames are decoded, at a reduced size when that loses nothing. Corrupt or missing videos, videos with a
malformed box file and videos box extraction failed on (its ``failed.tsv``) are logged and replaced by another
sample; a box file missing for any other reason (extraction not run) fails before training starts.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import re
import string
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import cv2
import decord
import numpy as np
import torch
from timm.data.random_erasing import RandomErasing
from torch.utils.data import Dataset, default_collate

from masking_generator import (
    DISTokenMotion,
    MotionFocusedMaskingGenerator,
    MotionGuidedMaskingGenerator,
    TubeMaskingGenerator,
    crop_token_motion,
)
from motion_detection.boxfile import (
    FAILED_LIST_GLOB,
    BoxFileError,
    MotionBoxes,
    box_file_path,
    load_boxes,
    read_failed_list,
    relative_video_path,
)
from motion_detection.detect import union_box
from motion_detection.video import VideoReadError, check_no_space_in_path, check_video_root
from trajectory_targets import TrajectoryTargets, worker_targets
from video_transforms import (
    NO_BOX,
    RESIZED_CROP_RATIO,
    RESIZED_CROP_SCALE,
    ClipRandAugment,
    erase_clip,
    horizontal_flip,
    multiscale_crop,
    normalize_clip,
    normalized_box,
    random_resized_crop_params,
    resized_crop,
    scale_box,
    short_side_resize,
    spatial_crop,
)

# decord passes FFmpeg's per-packet complaints about a damaged stream to stderr (hundreds of lines per corrupt video,
# from every worker); the decode error itself is raised, and the video is logged once and replaced.
decord.logging.set_level(decord.logging.QUIET)

log = logging.getLogger("datasets")

MIN_VIDEO_BYTES = 1024  # VideoMAE skips smaller files: decoders can hang on them
BOX_MISMATCH_NAMED = 5  # box files that do not fit their video named per kind and worker; the rest are counted
UNSCALABLE_VIDEOS: set[str] = set()  # videos decord failed to decode at a reduced size, in this process
BOX_CACHE_FRAMES = 1_000_000  # parsed boxes kept per worker (16 MB): about 35 of EPIC's long videos
MAX_REPLACEMENTS = 20

Loaded = TypeVar("Loaded")


class VideoDecodeError(RuntimeError):
    """A video in the list cannot be decoded; the message names the file."""


@dataclass(frozen=True)
class ClipEntry:
    """One row of a list: the video file as listed (relative to ``data_root``, or absolute), the targets (one per
    head; none for pretraining), and the clip's frames in that file: ``first_frame`` (0-based) and ``num_frames``
    (None: to the end of the file)."""

    video: str
    target: tuple[int, ...]
    first_frame: int = 0
    num_frames: int | None = None
    line: int = field(default=0, compare=False)  # in the list file, for errors (0: unknown)


def read_numbered_list(list_file: str | os.PathLike) -> list[tuple[int, str, list[str]]]:
    """VideoMAE list: ``path [fields...]`` per line, separated by whitespace, with each entry's line number in the
    file (blank lines skipped), for the readers' errors. A line whose first field is not a video file name while a
    later one is (``my clip.mp4 3``) is a ValueError: its path holds a space."""
    if Path(list_file).is_dir():
        raise ValueError(f"{list_file} is a folder, not a list file (pretraining's --data_path names the list itself;"
                         " fine-tuning's, the folder of train.csv, val.csv and test.csv)")
    try:
        text = Path(list_file).read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's BOM
    except UnicodeDecodeError as e:
        raise ValueError(f"{list_file} is not a text list ({e.reason} at byte {e.start}): a list names one video per "
                         "line ('path [label]'); is it a video itself?") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        check_no_space_in_path(parts, f"{list_file}:{number}")
        entries.append((number, parts[0], parts[1:]))
    if not entries:
        raise ValueError(f"{list_file}: no videos listed")
    return entries


def read_video_list(list_file: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """VideoMAE list: ``(path, [fields...])`` per entry (:func:`read_numbered_list` without the line numbers)."""
    return [(path, fields) for _, path, fields in read_numbered_list(list_file)]


def read_pretrain_list(list_file: str | os.PathLike) -> list[ClipEntry]:
    """Pretraining list: VideoMAE's ``path label`` (or bare ``path``) lines take the whole video. Lines whose first
    two fields are integers, VideoMAE V2's ``path start_index total_frames [label]``, take frames ``start_index`` ..
    ``start_index + total_frames - 1`` (0-based; ``-1`` frames: to the end, so ``0 -1`` is the whole video). V2
    reads the range for frame folders only; here it selects frames of a video file too, so clips of long videos
    (EPIC's action segments) need no trimming."""
    entries = []
    for line, path, fields in read_numbered_list(list_file):
        try:
            start, total = int(fields[0]), int(fields[1])
        except (IndexError, ValueError):
            entries.append(ClipEntry(path, (), line=line))
            continue
        if start < 0 or total == 0 or total < -1:
            raise ValueError(f"{list_file}:{line}: need start_index >= 0 and total_frames >= 1 (or -1: to the end),"
                             f" got {start} {total}")
        entries.append(ClipEntry(path, (), start, None if total == -1 else total, line))
    return entries


def listed_length(entry: ClipEntry, num_file_frames: int, warned: set[str]) -> int:
    """The frames of a list entry that the file holds: the count it names (to the end of the file when it names
    none), cut at the file's last frame. ValueError when it starts after that frame; a clip that ends past it is
    logged once per video and worker (``warned``) and sampled over the frames there are."""
    if entry.first_frame >= num_file_frames:
        raise ValueError(f"clip starts at frame {entry.first_frame + 1} but the video has {num_file_frames} frames")
    length = entry.num_frames if entry.num_frames is not None else num_file_frames - entry.first_frame
    if entry.first_frame + length > num_file_frames and entry.video not in warned:
        warned.add(entry.video)
        log.warning("%s: a listed clip ends at frame %d of a video of %d frames (re-encoded at another frame rate "
                    "than the annotations?); it is sampled over its frames up to the video's last", entry.video,
                    entry.first_frame + length, num_file_frames)
    return min(length, num_file_frames - entry.first_frame)


def sample_window_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                          rng: np.random.Generator, dense: bool = False) -> np.ndarray:
    """VideoMAE pretraining sampling: one random window of num_frames * sampling_rate frames, every
    sampling_rate-th frame; short videos repeat their last frame. ``dense``: every frame of the same window plus
    the next one (num_frames * sampling_rate + 1 frames, the sampled ones every sampling_rate-th), for targets
    computed at the full frame rate."""
    span = num_frames * sampling_rate
    needed = span + 1 if dense else span
    start = int(rng.integers(num_video_frames - needed + 1)) if num_video_frames >= needed else 0
    steps = np.arange(span + 1) if dense else np.arange(num_frames) * sampling_rate
    return np.minimum(start + steps, num_video_frames - 1)


def decode_size(width: int, height: int, needed_short_side: int) -> tuple[int, int]:
    """Smallest decode size (even sides, aspect kept) whose short side still reaches needed_short_side; the
    original size when it is already smaller. Decoding smaller saves most of the decode and resize time."""
    short = min(width, height)
    if short <= needed_short_side:
        return width, height
    scale = needed_short_side / short
    return 2 * math.ceil(width * scale / 2), 2 * math.ceil(height * scale / 2)


def frame_counts_differ(box_frames: int, video_frames: int) -> bool:
    """More than decoders differ by (a frame or two at the end, 5% on long videos): another copy or video."""
    return abs(box_frames - video_frames) > max(2, 0.05 * video_frames)


def box_file_doubts(boxes: MotionBoxes, video_path: str, num_video_frames: int, width: int, height: int
                    ) -> list[str]:
    """Why a box file given for one video (the visualisers' ``--box_file``) may be another video's: it names a file
    of another name, counts other frames than the decoder, or was made on a frame of another aspect ratio."""
    doubts = []
    if Path(boxes.video).name != Path(video_path).name:
        doubts.append(f"it was made for {boxes.video}, not {Path(video_path).name}")
    if frame_counts_differ(boxes.num_frames, num_video_frames):
        doubts.append(f"it counts {boxes.num_frames} frames, the decoder {num_video_frames}")
    if abs(boxes.width * height / (boxes.height * width) - 1) > 0.01:
        doubts.append(f"it was made on a {boxes.width}x{boxes.height} frame, the video's is {width}x{height}")
    return doubts


class BoxMismatches:
    """Names the box files that do not fit their video (of a frame of another aspect ratio, or counting other
    frames than the decoder by more than decoders differ: made from another copy or another video), once per video:
    the first :data:`BOX_MISMATCH_NAMED` of each kind in this worker, then one line saying the rest go unnamed (a
    folder of box files made from re-encoded copies would otherwise log a line per video in every worker)."""

    def __init__(self):
        self.named: set[tuple[str, str]] = set()
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, video: str, message: str, *args) -> None:
        if (kind, video) in self.named:
            return
        self.named.add((kind, video))
        self.counts[kind] = count = self.counts.get(kind, 0) + 1
        if count <= BOX_MISMATCH_NAMED:
            log.warning(message, *args)
        if count == BOX_MISMATCH_NAMED:
            log.warning("more box files of a %s than their video's are not named (this worker)", kind)

    def check_frames(self, boxes: MotionBoxes | None, num_video_frames: int, video: str) -> None:
        if boxes is not None and frame_counts_differ(boxes.num_frames, num_video_frames):
            self.warn("frame count", video, "%s: its box file counts %d frames, the decoder %d; its boxes are "
                      "mapped proportionally", video, boxes.num_frames, num_video_frames)


def stored_video_size(path: str, boxes: MotionBoxes | None, known: dict[str, tuple[int, int]],
                      mismatches: BoxMismatches | None = None) -> tuple[int, int] | None:
    """A video's stored (width, height): from ``known`` (sizes read before, updated) or the container header
    (OpenCV, about 0.5 ms once per video and worker; it orients frames as decord does). A box file of a frame with
    another aspect ratio goes to ``mismatches`` (its boxes, placed by the box file's proportions, would be
    misplaced). None when unreadable (the box file's size, if any): decord then names the problem."""
    if path in known:
        return known[path]
    size = (0, 0)
    if os.path.exists(path) and os.path.getsize(path) >= MIN_VIDEO_BYTES:
        capture = cv2.VideoCapture(path)
        size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        capture.release()
    if min(size) <= 0:
        return None if boxes is None else (boxes.width, boxes.height)
    known[path] = size
    aspect_ratio_differs = boxes is not None and abs(boxes.width * size[1] / (boxes.height * size[0]) - 1) > 0.01
    if aspect_ratio_differs and mismatches is not None:
        mismatches.warn("frame shape", path, "%s is %dx%d, its box file of a %dx%d frame: boxes of another video or "
                        "crop? They are placed by the box file's proportions", path, *size, boxes.width, boxes.height)
    return size


def reduced_decode_size(native_size: tuple[int, int] | None, needed_short_side: int) -> tuple[int, int] | None:
    """``decode_size`` when the stored size is known and decoding smaller saves work; None: decode as stored."""
    if native_size is None:
        return None
    size = decode_size(*native_size, needed_short_side)
    return None if size == tuple(native_size) else size


_STDERR_CAPTURE = threading.Lock()  # fd 2 is the process's: one capture at a time


@contextlib.contextmanager
def native_stderr_captured():
    """Collect the lines native code writes to file descriptor 2 meanwhile (decord's C++ log prints "ERROR opening"
    for every unreadable file, past decord.logging, and the decode error would then be logged twice). The list
    yielded gets decord's lines on exit; what other writers wrote meanwhile goes to stderr again, byte for byte.
    Where no spool can be made (no file descriptors or disk left), nothing is captured."""
    lines: list[str] = []
    with _STDERR_CAPTURE:
        sys.stderr.flush()
        try:
            spool = (os.fdopen(os.memfd_create("stderr"), "w+b") if hasattr(os, "memfd_create")
                     else tempfile.TemporaryFile())
        except OSError:
            yield lines
            return
        with spool:
            try:
                saved = os.dup(2)
            except OSError:
                yield lines
                return
            os.dup2(spool.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                spool.seek(0)
                kept = []
                for line in spool.read().splitlines(keepends=True):
                    (lines if b"ERROR opening: " in line else kept).append(line)
                lines[:] = [line.decode(errors="replace").rstrip("\n") for line in lines]
                if kept:
                    os.write(2, b"".join(kept))


DECORD_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # "[21:00:29] src/video/ffmpeg/decoder.cc:292: "


def decord_reason(error: Exception) -> str:
    """decord's error without the clock time and source line its C++ log puts before every message: the same
    damaged video gives the same text on every draw, so it is logged once (:func:`load_with_replacement`)."""
    return f"{type(error).__name__}: {DECORD_LOG_PREFIX.sub('', str(error))}"


def decode_frames(path: str, pick_indices: Callable[[int], np.ndarray],
                  size: tuple[int, int] | None = None) -> tuple[torch.Tensor, np.ndarray, int]:
    """Decode only the frames ``pick_indices(num_video_frames)`` selects (one decord ``get_batch``), at ``size``
    (width, height) or as stored. Returns frames (T, H, W, 3) uint8, the indices and the video's frame count;
    every failure (missing, tiny, corrupt or empty file; ``pick_indices`` raising ValueError) raises VideoDecodeError
    naming the file."""
    if not os.path.exists(path):
        raise VideoDecodeError(f"{path}: file not found")
    if os.path.getsize(path) < MIN_VIDEO_BYTES:
        raise VideoDecodeError(f"{path}: only {os.path.getsize(path)} bytes")
    if path in UNSCALABLE_VIDEOS:
        size = None
    kwargs = {} if size is None else {"width": size[0], "height": size[1]}
    decord_log: list[str] = []
    try:
        with native_stderr_captured() as decord_log:
            reader = decord.VideoReader(path, num_threads=1, **kwargs)
        num_video_frames = len(reader)
    except Exception as e:  # decord raises its own error types for corrupt streams
        opening = [line.partition(f"ERROR opening: {path}, ")[2] for line in decord_log]
        reason = next((r for r in opening if r), decord_reason(e))
        raise VideoDecodeError(f"{path}: cannot decode ({reason})") from None
    if num_video_frames == 0:
        raise VideoDecodeError(f"{path}: no frames")
    try:
        indices = pick_indices(num_video_frames)
    except ValueError as e:
        raise VideoDecodeError(f"{path}: {e}") from None
    try:
        frames = torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())
    except Exception as e:
        if size is None:
            raise VideoDecodeError(f"{path}: cannot decode ({decord_reason(e)})") from None
        frames = None
    if size is not None and (frames is None or tuple(frames.shape[1:]) != (size[1], size[0], 3)):
        # decord's scaler fails on some streams (rotated ones, at some sizes, give 4 channels): decode as stored,
        # now and in this worker's later draws of the file
        UNSCALABLE_VIDEOS.add(path)
        return decode_frames(path, lambda n: indices, None)
    return frames, indices, num_video_frames


class UnusableDataError(RuntimeError):
    """MAX_REPLACEMENTS entries in a row could not be loaded: the data, not one video, is broken."""


def load_with_replacement(load: Callable[[int], Loaded], index: int, num_entries: int, rng: np.random.Generator,
                          reported: set[str] | None = None, left_out: bool = False) -> tuple[int, Loaded, int]:
    """``load(index)``, replacing an entry whose video fails to decode or has no usable box file by a random other
    one. Each failure (its message, which names the file) is logged once per ``reported`` set, a worker's: a bad
    video's every view, epoch or list row would log it again; as a sample ``left_out`` (evaluation drops replaced
    items) or replaced. Returns the entry actually loaded, its result and how many were skipped; gives up after
    MAX_REPLACEMENTS in a row."""
    replaced = 0
    while True:
        try:
            return index, load(index), replaced
        except (VideoDecodeError, BoxFileError) as e:
            replaced += 1
            if reported is None or str(e) not in reported:
                what = "unreadable video" if isinstance(e, VideoDecodeError) else "video without a usable box file"
                log.warning("skipping %s (%s); %s", what, e,
                            "it is left out of the evaluation" if left_out else "using another sample")
                if reported is not None:
                    reported.add(str(e))
            if replaced >= MAX_REPLACEMENTS:
                raise UnusableDataError(f"{replaced} videos in a row were missing, failed to decode or had no usable "
                                        "box file (a wrong --data_root, corrupt or truncated files, or list ranges "
                                        f"past the videos' ends?); last: {e}") from None
            index = int(rng.integers(num_entries))


PRETRAINING_BOX_REMEDY = ("Run motion_detection.extract_boxes for them, or pass --missing_box random to mask those"
                          " videos as clips without motion (random tubes, or a random motion-guided base).")
FINETUNING_BOX_REMEDY = ("Run motion_detection.extract_boxes for them: the motion-box model needs the box of every"
                         " video.")


def check_data_root(videos: list[str], data_root: str, list_file) -> None:
    """A wrong --data_root (or list) fails at startup (:func:`check_video_root`); single missing videos are skipped
    and replaced at run time, as unreadable ones."""
    check_video_root(videos, data_root, list_file, "--data_root")


def box_video_paths(videos: list[str], data_root: str) -> list[str]:
    """The listed videos as paths below ``data_root`` (absolute entries below it included), which the box files
    mirror."""
    try:
        return [relative_video_path(video, data_root, "--data_root") for video in videos]
    except ValueError as e:
        raise ValueError(f"{e} (box files mirror the paths below it)") from None


def unusable_videos(box_dir: str, data_root: str, missing: dict[Path, str]) -> dict[Path, str]:
    """Of the videos without a box file (box file -> path below ``data_root``), those extraction could not box,
    which the run skips as it skips unreadable videos: the ones in the box folder's failed lists and the ones not on
    disk (box file -> the message naming the video and the reason). Box extraction not run for the others is an
    error at startup."""
    failed = {}
    for failed_list in sorted(Path(box_dir).glob(FAILED_LIST_GLOB)):
        try:
            rows = read_failed_list(failed_list)
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read %s: %s", failed_list, e)
            continue
        for video, reason in rows.items():
            with contextlib.suppress(ValueError):  # a row of an absolute path outside --data_root names no video here
                failed[relative_video_path(video, data_root)] = (
                    f"box extraction failed on it, {failed_list.name}: {reason}")
    unusable = {}
    for box_path, video in missing.items():
        video_path = os.path.join(data_root, video)
        if video in failed:
            unusable[box_path] = f"{video_path}: no box file ({failed[video]})"
        elif not os.path.exists(video_path):
            unusable[box_path] = f"{video_path}: no box file (video file not found)"
    return unusable


class MotionBoxIndex:
    """Box files of a video list under ``box_dir`` (mirroring the list's relative paths; a video may be listed many
    times, as EPIC's long videos are, once per action segment). Parsed files are kept per worker up to
    ``BOX_CACHE_FRAMES`` boxes in all, least recently used out first: a long video's file takes tens of
    milliseconds to parse."""

    def __init__(self, box_dir: str, videos: list[str], missing_box: str = "error",
                 remedy: str = PRETRAINING_BOX_REMEDY, data_root: str = ""):
        if missing_box not in ("error", "random"):
            raise ValueError(f"missing_box must be 'error' or 'random', got {missing_box!r}")
        if not box_dir or not os.path.isdir(box_dir):  # a typo, not videos without boxes (--missing_box random)
            raise FileNotFoundError(f"--box_dir {box_dir or '(none)'}: no such folder (the box files of "
                                    "motion_detection.extract_boxes)")
        self.box_dir, self.missing_box = box_dir, missing_box
        self.paths = [box_file_path(box_dir, v) for v in videos]
        distinct = dict(zip(self.paths, videos, strict=True))
        missing = [p for p in distinct if not p.exists()]
        self.num_missing = len(missing)
        self.unusable: dict[Path, str] = {}  # box file -> why its video has none (--missing_box error)
        if missing and missing_box == "error":
            self.unusable = unusable_videos(box_dir, data_root, {p: distinct[p] for p in missing})
            unexplained = [str(p) for p in missing if p not in self.unusable]
            if unexplained:
                shown = "\n  ".join(unexplained[:10])
                raise FileNotFoundError(
                    f"{len(unexplained)} of {len(distinct)} videos have no box file under {box_dir}, and box "
                    f"extraction did not list them as failed ({FAILED_LIST_GLOB} there); the first "
                    f"{min(len(unexplained), 10)}:\n  {shown}\n{remedy}")
            if len(self.unusable) == len(distinct):
                raise FileNotFoundError(f"none of the {len(distinct)} videos has a box file under {box_dir}: box "
                                        f"extraction failed on all of them or they are not on disk (first: "
                                        f"{next(iter(self.unusable.values()))})")
            log.warning("%d of %d videos have no box file under %s because box extraction failed on them (listed "
                        "in its %s) or they are not on disk; each is skipped and replaced by another sample",
                        len(self.unusable), len(distinct), box_dir, FAILED_LIST_GLOB)
        elif missing:
            log.warning("%d of %d videos have no box file under %s; they are masked as clips without motion",
                        len(missing), len(distinct), box_dir)
        self._cache: OrderedDict[Path, MotionBoxes] = OrderedDict()
        self._cached_frames = 0
        self._malformed: set[Path] = set()

    def load(self, index: int) -> MotionBoxes | None:
        """The entry's boxes (shared with the cache: do not modify them); None for a missing or malformed file
        when ``missing_box`` is ``random`` (a malformed one logged once per worker); else BoxFileError naming the
        file (the sample is then replaced, as a corrupt video's)."""
        path = self.paths[index]
        if path in self.unusable:
            raise BoxFileError(self.unusable[path])
        if path not in self._cache:
            try:
                boxes = load_boxes(path)
            except BoxFileError as e:
                if self.missing_box == "error":
                    raise
                if path.exists() and path not in self._malformed:
                    self._malformed.add(path)
                    log.warning("%s; masking its video as a clip without motion (--missing_box random)", e)
                return None
            for array in (boxes.frames, boxes.union):
                if array is not None:
                    array.setflags(write=False)  # shared by every later load: nobody may change them
            self._cache[path] = boxes
            self._cached_frames += boxes.num_frames
            while self._cached_frames > BOX_CACHE_FRAMES and len(self._cache) > 1:
                self._cached_frames -= self._cache.popitem(last=False)[1].num_frames
        self._cache.move_to_end(path)
        return self._cache[path]


def _box_file_rows(boxes: MotionBoxes, frame_indices: np.ndarray, num_video_frames: int) -> np.ndarray:
    """The box file's rows (pixels of the box file) for decoded frame indices, mapped proportionally when the box
    file counted a different number of frames than the decoder."""
    if boxes.num_frames != num_video_frames and num_video_frames > 1:
        frame_indices = np.rint(frame_indices * (boxes.num_frames - 1) / (num_video_frames - 1)).astype(int)
    return boxes.frames[np.clip(frame_indices, 0, boxes.num_frames - 1)]


def clip_box(boxes: MotionBoxes | None, frame_indices: np.ndarray, num_video_frames: int, source: str) -> np.ndarray:
    """Motion box of a clip in [0, 1] coordinates: the union of its frames' boxes (``clip``) or the video's union
    box (``video``); NaN when there is none."""
    if boxes is None:
        return NO_BOX.copy()
    box = boxes.union if source == "video" else union_box(_box_file_rows(boxes, frame_indices, num_video_frames))
    if box is None:
        return NO_BOX.copy()
    return normalized_box(box, boxes.width, boxes.height)


BOX_SOURCES = ("video", "clip", "frame")


def source_box(boxes: MotionBoxes | None, entry: ClipEntry, frame_indices: np.ndarray, num_video_frames: int,
               source: str) -> np.ndarray:
    """The one motion box of a clip in [0, 1] (NaN: none): ``video`` (the paper's and the MOFO release's) the listed
    clip's, i.e. the file's union box, or for a line listing part of a video (``path start total``, an EPIC segment)
    the union of those frames' boxes; ``clip`` the union of the sampled frames' boxes."""
    if source == "clip" or (entry.first_frame == 0 and entry.num_frames is None):
        return clip_box(boxes, frame_indices, num_video_frames, source)
    end = num_video_frames if entry.num_frames is None else min(num_video_frames, entry.first_frame + entry.num_frames)
    return clip_box(boxes, np.arange(entry.first_frame, end), num_video_frames, "clip")


def frame_boxes(boxes: MotionBoxes | None, frame_indices: np.ndarray, num_video_frames: int) -> np.ndarray:
    """Motion box of every sampled frame (T, 4) in [0, 1] coordinates; NaN rows where there is none."""
    if boxes is None:
        return np.tile(NO_BOX, (len(frame_indices), 1))
    return normalized_box(_box_file_rows(boxes, frame_indices, num_video_frames), boxes.width, boxes.height)


MASK_TYPES = ("tube", "motion", "motion_guided")
GUIDED_BASES = ("random", "box")
GUIDED_MOTIONS = ("dis", "codec_mv")


class VideoMAEPretrainDataset(Dataset):
    """Clips for masked-autoencoder pretraining with a motion-focused, motion-guided or plain tube mask per clip.

    Each item is a dict (or a list of ``num_sample`` dicts from one decode): ``frames`` (T, S, S, 3) uint8, the
    augmented clip's pixels (the training step normalises the batch on its device with
    :func:`video_transforms.normalize_video`: a quarter of float32's bytes through worker memory, pinning and the
    host-to-device copy, and no normalisation in the worker), ``mask`` (N,) bool (True = masked), ``box`` (4,) the
    clip's motion box in [0, 1] of the augmented frames (NaN: none), ``replaced`` (corrupt videos, or videos with a
    malformed box file, skipped to produce this item: counted on the first clip of a decode) and ``missing_box``
    (0/1: this clip had no box file, and was masked as a clip without motion).

    ``mask_type``: ``tube`` (VideoMAE), ``motion`` (MOFO: needs ``box_dir``) or ``motion_guided`` (the mask is
    drawn at the middle time slice and follows the per-token motion of each augmented clip, computed here by
    ``motion_source``, by default :class:`DISTokenMotion`). ``guided_base`` picks that base draw: ``random``, or
    ``box``, MOFO's inside-box rule on the motion box of the base slice's own frames (needs ``box_dir``; a clip
    without a box there gets a random base). ``motion_source`` maps the (T, 3, S, S) uint8 clip to the
    (T'-1, H', W', 2) forward token displacement field, or a (2, T'-1, H', W', 2) forward/backward pair (see
    :class:`MotionGuidedMaskingGenerator`). ``guided_motion="codec_mv"`` takes the motion from the file's codec
    motion vectors instead (MGM): summed over each sampling interval at the decoded size, once per decode
    (:func:`motion_detection.codec_mv.sampled_frame_motion`), then cut and scaled with each clip's crop
    (:func:`crop_token_motion`); a video whose codec stores none (VP9, HEVC, ...) is skipped as unreadable.

    ``trajectory`` (a :class:`TrajectoryTargets`): every source frame of the window is decoded and cropped alike,
    and each item also holds its outputs, each (N, dim): ``trajectory``, the motion-trajectory target of every
    token (M3Video), and/or ``hog``, the HOG along those trajectories.
    """

    def __init__(self, list_file: str, data_root: str = "", box_dir: str | None = None, num_frames: int = 16,
                 sampling_rate: int = 4, input_size: int = 224, patch_size: int = 16, tubelet_size: int = 2,
                 mask_type: str = "tube", mask_ratio: float = 0.9, motion_mask_ratio: float = 0.75,
                 box_source: str = "video", missing_box: str = "error", num_sample: int = 1,
                 scales=(1, 0.875, 0.75, 0.66), seed: int | None = None, guided_base: str = "random",
                 motion_source: Callable[[torch.Tensor], np.ndarray] | None = None, guided_motion: str = "dis",
                 trajectory: TrajectoryTargets | None = None):
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if box_source not in ("clip", "video"):
            raise ValueError(f"box_source must be 'clip' or 'video', got {box_source!r}")
        if guided_base not in GUIDED_BASES:
            raise ValueError(f"guided_base must be one of {GUIDED_BASES}, got {guided_base!r}")
        if guided_base == "box" and mask_type != "motion_guided":
            raise ValueError("--guided_base box only applies to --mask_type motion_guided")
        if guided_motion not in GUIDED_MOTIONS:
            raise ValueError(f"guided_motion must be one of {GUIDED_MOTIONS}, got {guided_motion!r}")
        if guided_motion != "dis" and (mask_type != "motion_guided" or motion_source is not None):
            raise ValueError(f"--guided_motion {guided_motion} only applies to --mask_type motion_guided (and "
                             "replaces a motion_source)")
        uses_boxes = mask_type == "motion" or guided_base == "box"
        if uses_boxes and not box_dir:
            raise ValueError(f"--mask_type {mask_type}{' --guided_base box' if guided_base == 'box' else ''} needs"
                             " --box_dir (the output of motion_detection.extract_boxes)")
        self.entries = read_pretrain_list(list_file)
        self.data_root = data_root
        check_data_root([entry.video for entry in self.entries], data_root, list_file)
        self.num_frames, self.sampling_rate, self.input_size = num_frames, sampling_rate, input_size
        self.box_source, self.num_sample, self.scales = box_source, num_sample, tuple(scales)
        self.mask_type, self.guided_base, self.guided_motion = mask_type, guided_base, guided_motion
        self.trajectory = trajectory
        if trajectory is not None and (trajectory.sampling_rate, trajectory.tubelet_size) != (sampling_rate,
                                                                                            tubelet_size):
            raise ValueError(f"{trajectory} was built for another sampling rate or tubelet size")
        self.window_size = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)
        self.tubelet_size = tubelet_size
        self.motion_source, self.base_frames = None, None
        if mask_type == "motion":
            self.mask_generator = MotionFocusedMaskingGenerator(self.window_size, mask_ratio, motion_mask_ratio)
        elif mask_type == "motion_guided":
            self.mask_generator = MotionGuidedMaskingGenerator(self.window_size, mask_ratio, motion_mask_ratio)
            if guided_motion == "dis":
                self.motion_source = motion_source or DISTokenMotion(self.window_size[1:], tubelet_size)
            base = self.mask_generator.base_slice
            self.base_frames = slice(base * tubelet_size, (base + 1) * tubelet_size)  # sampled frames of the base
        else:
            self.mask_generator = TubeMaskingGenerator(self.window_size, mask_ratio)
        videos = box_video_paths([entry.video for entry in self.entries], data_root) if uses_boxes else []
        self.boxes = MotionBoxIndex(box_dir, videos, missing_box, data_root=data_root) if uses_boxes else None
        self._stored_sizes: dict[str, tuple[int, int]] = {}
        self._box_mismatches = BoxMismatches()
        self._reported_unusable: set[str] = set()  # failures this worker has logged
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Fresh random streams for crops, windows and masks (called per data-loader worker). Both streams are
        spawned from ``seed``, so they never coincide with another seed's streams (``seed + 1`` would hand one
        worker's mask stream to the next worker's crops)."""
        data_seed, mask_seed = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(data_seed)
        self._overrun_warned: set[str] = set()
        self.mask_generator.reseed(mask_seed)

    def __len__(self) -> int:
        return len(self.entries)

    def video_path(self, index: int) -> str:
        return os.path.join(self.data_root, self.entries[index].video)

    def _load(self, index: int):
        """Decoded frames, the clip's box and the base slice's box (NaN unless ``guided_base`` is ``box``) in [0, 1]
        of the decoded frames, the box file, the number of corrupt videos replaced by random others (logged) and,
        with ``guided_motion="codec_mv"``, the codec motion between the sampled frames (else None)."""
        dense = self.trajectory is not None

        def load(entry: int):
            boxes = self.boxes.load(entry) if self.boxes is not None else None
            path = self.video_path(entry)
            size = reduced_decode_size(stored_video_size(path, boxes, self._stored_sizes, self._box_mismatches),
                                       math.ceil(self.input_size / min(self.scales)))
            frames, indices, num_video_frames = decode_frames(path, lambda n: self.window(entry, n, dense), size)
            self._box_mismatches.check_frames(boxes, num_video_frames, path)
            indices = indices[self.sampled_frames]
            box = self.motion_box(entry, boxes, indices, num_video_frames)
            base_box = (self.motion_box(entry, boxes, indices[self.base_frames], num_video_frames)
                        if self.guided_base == "box" else NO_BOX.copy())
            motion = None
            if self.guided_motion == "codec_mv":
                from motion_detection.codec_mv import sampled_frame_motion  # PyAV only where it is used

                try:
                    motion = sampled_frame_motion(path, indices, (frames.shape[2], frames.shape[1]))
                except VideoReadError as e:
                    raise VideoDecodeError(f"{path}: --guided_motion codec_mv: {e}") from None
            return frames, np.stack([box, base_box]), boxes, motion

        _, loaded, replaced = load_with_replacement(load, index, len(self), self.rng, self._reported_unusable)
        frames, boxes01, boxes, motion = loaded
        return frames, boxes01, boxes, replaced, motion

    def motion_box(self, entry: int, boxes: MotionBoxes | None, frame_indices: np.ndarray,
                   num_video_frames: int) -> np.ndarray:
        return source_box(boxes, self.entries[entry], frame_indices, num_video_frames, self.box_source)

    def window(self, entry: int, num_video_frames: int, dense: bool) -> np.ndarray:
        """A random window's frame indices in the file, inside the entry's frames; ValueError when those start
        after the file's last frame."""
        clip = self.entries[entry]
        length = listed_length(clip, num_video_frames, self._overrun_warned)
        return clip.first_frame + sample_window_indices(length, self.num_frames, self.sampling_rate, self.rng, dense)

    @property
    def sampled_frames(self) -> slice:
        """The sampled frames among the decoded ones (every frame, or every sampling_rate-th of a dense window)."""
        if self.trajectory is None:
            return slice(None)
        return slice(0, self.num_frames * self.sampling_rate, self.sampling_rate)

    def _mask(self, clip: torch.Tensor, box: np.ndarray, base_box: np.ndarray, motion: np.ndarray | None,
              crop: tuple[int, int, int, int]) -> np.ndarray:
        """The clip's mask from its generator: boxes in [0, 1] of the augmented clip (NaN: none); ``motion``, the
        decode's codec motion, cut as the clip was (``crop`` of the decoded frames)."""
        if self.mask_type == "motion_guided":
            base = None if np.isnan(base_box).any() else base_box
            if motion is not None:
                field = crop_token_motion(motion, crop, self.window_size[1:], self.tubelet_size)
            else:
                field = self.motion_source(clip)
            return self.mask_generator(field, base)
        if self.mask_type == "motion":
            return self.mask_generator(None if np.isnan(box).any() else box)
        return self.mask_generator()

    def __getitem__(self, index: int):
        frames, boxes01, boxes, replaced, motion = self._load(index)
        height, width = frames.shape[1:3]
        missing_box = int(self.boxes is not None and boxes is None)
        items = []
        for _ in range(self.num_sample):
            clip, crop_boxes, crop = multiscale_crop(frames, scale_box(boxes01, width, height), self.input_size,
                                                     self.rng, self.scales)
            box_out, base_box = crop_boxes / self.input_size
            item = {}
            if self.trajectory is not None:
                item.update({name: torch.from_numpy(value) for name, value in self.trajectory(clip).items()})
                clip = clip[self.sampled_frames]
            mask = self._mask(clip, box_out, base_box, motion, crop)
            item.update({
                "frames": clip.permute(0, 2, 3, 1).contiguous(),  # a copy only if the resize was skipped or T sliced
                "mask": torch.from_numpy(np.asarray(mask, dtype=bool)),
                "box": torch.from_numpy(box_out.astype(np.float32)),
                "replaced": 0 if items else replaced,  # counted once per decode
                "missing_box": missing_box,  # per clip: each is masked without a box
            })
            items.append(item)
        return items[0] if self.num_sample == 1 else items


def multiple_samples_collate(batch):
    """Collate for ``num_sample > 1``: every item is a list of clips from one decode; flatten, then stack."""
    return default_collate([clip for item in batch for clip in item])


def build_pretraining_dataset(args) -> VideoMAEPretrainDataset:
    outputs = worker_targets(args.target.split("+"), args.hog_sampling)
    trajectory = None
    if outputs:
        trajectory = TrajectoryTargets(args.window_size, args.patch_size[0], args.tubelet_size, args.sampling_rate,
                                       args.trajectory_points, args.trajectory_flow, norm=args.trajectory_norm,
                                       outputs=outputs, hog_bins=args.hog_bins,
                                       hog_cell_size=args.hog_cell_size, hog_norm=args.hog_norm)
    return VideoMAEPretrainDataset(
        list_file=args.data_path, data_root=args.data_root, box_dir=args.box_dir, num_frames=args.num_frames,
        sampling_rate=args.sampling_rate, input_size=args.input_size, patch_size=args.patch_size[0],
        tubelet_size=args.tubelet_size, mask_type=args.mask_type, mask_ratio=args.mask_ratio,
        motion_mask_ratio=args.motion_mask_ratio, box_source=args.box_source, missing_box=args.missing_box,
        num_sample=args.num_sample, seed=args.seed, guided_base=args.guided_base, guided_motion=args.guided_motion,
        trajectory=trajectory,
    )


# Fine-tuning: classification lists, EPIC-KITCHENS-100 action segments, TSN or dense sampling, boxes per frame.

EPIC_KITCHENS = "EPIC-KITCHENS-100"
DATA_SET_CLASSES = {"Kinetics-400": 400, "SSV2": 174, "UCF101": 101, "HMDB51": 51}  # --nb_classes, as VideoMAE's
LABEL_LIST_DATA_SETS = tuple(DATA_SET_CLASSES)
TSN_DATA_SETS = ("SSV2", EPIC_KITCHENS)  # segment sampling over the whole clip; the others sample dense windows
NO_FLIP_DATA_SETS = ("SSV2",)  # left/right in the labels ("pushing something from left to right")
EPIC_VIDEO_TEMPLATE = "{participant_id}/videos/{video_id}.MP4"
EPIC_LABEL_COLUMNS = ("verb_class", "noun_class")


def read_label_list(list_file: str | os.PathLike) -> list[ClipEntry]:
    """VideoMAE classification list: ``path label`` per line. The label is the last field, so the MOFO release's
    SSV2 lists (``path "class name" label``) read the same. A row whose first two fields after the path are both
    numbers (VideoMAE V2's ``path start total label``, which pretraining reads as a frame range) is refused rather
    than trained on whole videos, and so is ``path number label`` (a frame count? which is the label?)."""
    entries = []
    for line, path, fields in read_numbered_list(list_file):
        row = " ".join([path, *fields])
        numbers = [field.lstrip("-").isdigit() for field in fields]
        if len(fields) >= 3 and all(numbers[:2]):
            raise ValueError(f"{list_file}:{line}: '{row}' looks like a frame range ('path start total label', a "
                             "pretraining list's); fine-tuning lists are 'path label', one trimmed clip per row")
        if len(fields) == 2 and all(numbers):
            raise ValueError(f"{list_file}:{line}: '{row}' has two numbers after the path; "
                             "fine-tuning lists are 'path label' (or the MOFO release's 'path \"class name\" label')")
        try:
            entries.append(ClipEntry(path, (int(fields[-1]),), line=line))
        except (IndexError, ValueError):
            epic = (" (a csv row: EPIC-KITCHENS-100's annotation files need --data_set EPIC-KITCHENS-100)"
                    if "," in row else "")
            raise ValueError(f"{list_file}:{line}: '{row}' does not end in an integer label{epic}") from None
    return entries


def read_epic_list(list_file: str | os.PathLike, video_template: str = EPIC_VIDEO_TEMPLATE) -> list[ClipEntry]:
    """EPIC-KITCHENS-100 annotation csv (EPIC_100_train.csv / EPIC_100_validation.csv, with its header row): one
    action segment per row, targets (verb_class, noun_class).

    ``video_template`` names the video file from the row's columns. Long videos (the default
    ``{participant_id}/videos/{video_id}.MP4``) are trimmed to the row's frames: EPIC frame numbers are 1-based
    indices at the native frame rate, so the clip is frames start_frame-1 .. stop_frame-1 of the file. A template
    that uses ``{narration_id}`` names pre-trimmed clips (one file per row), sampled over all their frames (a clip
    cut at a lower frame rate than the annotation's has fewer than stop-start+1).
    A csv without the class columns (the test set's timestamps file) gets targets -1.
    """
    with open(list_file, encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        rows, lines = [], []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)  # the file's line (csv skips blank lines)
    if not rows:
        raise ValueError(f"{list_file}: no action segments listed")
    columns = set(rows[0])
    template_fields = {name for _, name, _, _ in string.Formatter().parse(video_template) if name}
    missing = sorted(({"start_frame", "stop_frame"} | template_fields) - columns)
    if missing:
        label_list = len(columns) == 1 and len(next(iter(columns)).split()) > 1
        hint = " (a 'path label' list: pass the --data_set it is of, such as SSV2)" if label_list else ""
        raise ValueError(f"{list_file}: columns {missing} missing (needed by the EPIC reader and the video template "
                         f"{video_template!r}); the header has {sorted(columns)}{hint}")
    labelled = set(EPIC_LABEL_COLUMNS) <= columns
    if not labelled:
        log.warning("%s has no %s columns: targets are -1, accuracies on it are meaningless", list_file,
                    "/".join(EPIC_LABEL_COLUMNS))
    trimmed = "narration_id" in template_fields
    entries = []
    for line, row in zip(lines, rows, strict=True):
        if None in row or None in row.values():
            raise ValueError(f"{list_file}:{line}: {len(columns)} columns in the header, another number in this row")
        try:
            start, stop = int(row["start_frame"]), int(row["stop_frame"])
            target = tuple(int(row[c]) for c in EPIC_LABEL_COLUMNS) if labelled else (-1, -1)
        except ValueError as e:
            raise ValueError(f"{list_file}:{line}: a frame number or class that is not an integer ({e})") from None
        if not 1 <= start <= stop:
            raise ValueError(f"{list_file}:{line}: need 1 <= start_frame <= stop_frame, got {start}, {stop}")
        entries.append(ClipEntry(video_template.format(**row), target, 0 if trimmed else start - 1,
                                 None if trimmed else stop - start + 1, line))
    return entries


def segment_bounds(num_frames: int, num_segments: int) -> np.ndarray:
    """num_segments + 1 integer boundaries splitting frames 0..num_frames-1 into near-equal consecutive parts."""
    return np.arange(num_segments + 1) * num_frames // num_segments


def tsn_indices(num_video_frames: int, num_segments: int, rng: np.random.Generator | None = None,
                position: float = 0.5) -> np.ndarray:
    """TSN sampling (VideoMAE's SSV2): one frame per segment of the whole clip, at a uniformly random place in it
    (``rng``) or at the fraction ``position`` of it; clips shorter than num_segments repeat frames."""
    bounds = segment_bounds(num_video_frames, num_segments)
    offsets = rng.random(num_segments) if rng is not None else position
    indices = bounds[:-1] + np.floor(offsets * (bounds[1:] - bounds[:-1])).astype(int)
    return np.minimum(indices, num_video_frames - 1)


def dense_indices(num_video_frames: int, num_frames: int, sampling_rate: int, num_windows: int = 1,
                  rng: np.random.Generator | None = None, position: float = 0.5) -> np.ndarray:
    """Dense sampling (VideoMAE's Kinetics): in each of ``num_windows`` consecutive parts of the clip, num_frames
    frames every sampling_rate frames, in a window starting at a random place (``rng``) or at the fraction
    ``position`` of the possible starts; windows longer than their part repeat its last frame."""
    bounds = segment_bounds(num_video_frames, num_windows)
    span = (num_frames - 1) * sampling_rate + 1
    windows = []
    for first, end in zip(bounds[:-1], bounds[1:], strict=True):
        length = max(end - first, 1)
        if rng is not None:
            window = sample_window_indices(length, num_frames, sampling_rate, rng)
        else:
            start = round(position * max(length - span, 0))
            window = np.minimum(start + np.arange(num_frames) * sampling_rate, length - 1)
        windows.append(first + window)
    return np.minimum(np.concatenate(windows), num_video_frames - 1)


class VideoClassificationDataset(Dataset):
    """Fine-tuning clips with their targets and the motion box of every sampled frame (VideoMAE's VideoClsDataset
    and SSVideoClsDataset in one, with boxes): ``box_source`` ``video`` gives every frame the listed clip's box (the
    paper's), ``clip`` the union of the sampled frames' boxes, ``frame`` each frame its own.

    ``mode``: ``train`` (random temporal sampling; per clip RandAugment, a random resized crop, a horizontal flip if
    ``flip``, normalisation and random erasing; ``num_sample`` clips from one decode), ``validation`` (middle
    temporal clip, short side resized to short_side_size, centre crop) or ``test`` (``test_num_segment`` temporal
    clips x ``test_num_crop`` crops spread along the long side; every view is an item). ``sampling``: ``tsn``
    (num_frames x num_segments segments over the clip) or ``dense`` (num_segments windows of num_frames frames at
    sampling_rate). Items are dicts: ``video`` (3, T, S, S) normalised, ``target`` (heads,) long, ``box`` (T, 4)
    float32 in [0, 1] of the output frames (NaN rows: none), ``replaced`` (videos skipped because they failed to
    decode or had no usable box file), and in test mode ``sample_id`` (the entry) and ``view`` (segment *
    test_num_crop + crop).
    """

    def __init__(self, entries: list[ClipEntry], data_root: str = "", box_dir: str | None = None,
                 mode: str = "train", sampling: str = "dense", flip: bool = True, num_frames: int = 16,
                 sampling_rate: int = 4, num_segments: int = 1, input_size: int = 224, short_side_size: int = 224,
                 test_num_segment: int = 5, test_num_crop: int = 3, num_sample: int = 1, rand_augment: str = "",
                 reprob: float = 0.0, remode: str = "pixel", recount: int = 1, seed: int | None = None,
                 crop_scale: tuple[float, float] = RESIZED_CROP_SCALE, interpolation: str = "bicubic",
                 box_source: str = "video"):
        if box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {BOX_SOURCES}, got {box_source!r}")
        if mode not in ("train", "validation", "test"):
            raise ValueError(f"mode must be 'train', 'validation' or 'test', got {mode!r}")
        if sampling not in ("tsn", "dense"):
            raise ValueError(f"sampling must be 'tsn' or 'dense', got {sampling!r}")
        if mode != "train" and short_side_size < input_size:
            raise ValueError(f"short_side_size {short_side_size} is smaller than input_size {input_size}")
        if not entries:
            raise ValueError("no clips listed")
        self.entries, self.data_root, self.mode, self.sampling, self.flip = entries, data_root, mode, sampling, flip
        self.box_source = box_source
        self.num_frames, self.sampling_rate, self.num_segments = num_frames, sampling_rate, num_segments
        self.input_size, self.short_side_size = input_size, short_side_size
        self.test_num_segment, self.test_num_crop = test_num_segment, test_num_crop
        self.num_views = test_num_segment * test_num_crop if mode == "test" else 1
        self.num_sample = num_sample if mode == "train" else 1
        train = mode == "train"
        self.rand_augment = (ClipRandAugment(rand_augment, input_size, interpolation=interpolation)
                             if train and rand_augment else None)
        # num_splits=0: VideoMAE's num_splits=recount would leave the first T/recount frames unerased (timm keeps
        # a batch's first split clean for AugMix-style training)
        self.eraser = (RandomErasing(reprob, mode=remode, max_count=recount, num_splits=0, device="cpu")
                       if train and reprob > 0 else None)
        # Decoding smaller never drops pixels the output uses: training crops keep at least
        # sqrt(min scale x min ratio) of the short side, validation/test resize the short side to short_side_size.
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        self.crop_scale = tuple(crop_scale)
        self.needed_short_side = (math.ceil(input_size / math.sqrt(self.crop_scale[0] * RESIZED_CROP_RATIO[0]))
                                  if train else short_side_size)
        self.box_index = None
        if box_dir:
            relative = box_video_paths([entry.video for entry in entries], data_root)
            self.box_index = MotionBoxIndex(box_dir, relative, "error", FINETUNING_BOX_REMEDY, data_root)
        self._stored_sizes: dict[str, tuple[int, int]] = {}
        self._box_mismatches = BoxMismatches()
        self._reported_unusable: set[str] = set()  # failures this worker has logged
        self._overrun_warned: set[str] = set()
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """A fresh random stream for sampling, augmentation and replacements (per epoch and data-loader worker)."""
        self.rng = np.random.default_rng(np.random.SeedSequence(seed))

    def __len__(self) -> int:
        return len(self.entries) * self.num_views

    def video_path(self, index: int) -> str:
        return os.path.join(self.data_root, self.entries[index].video)

    def motion_boxes(self, index: int) -> MotionBoxes | None:
        """The entry's box file (None without ``box_dir``); malformed files raise BoxFileError naming the file."""
        return None if self.box_index is None else self.box_index.load(index)

    def frame_indices(self, entry: ClipEntry, num_file_frames: int, segment: int) -> np.ndarray:
        """Frame indices in the file for this entry: random in training, else at the test segment's position
        (validation: the middle). TSN test view ``k`` of ``n > 1`` takes every segment's frame at ``k / n`` of it:
        VideoMAE's SSV2 2-view test (segment starts, then segment middles); one view takes the middles, as
        validation. ValueError when the clip starts after the file's last frame."""
        length = listed_length(entry, num_file_frames, self._overrun_warned)
        rng = self.rng if self.mode == "train" else None
        if self.sampling == "tsn":
            position = segment / self.test_num_segment if self.mode == "test" and self.test_num_segment > 1 else 0.5
            indices = tsn_indices(length, self.num_frames * self.num_segments, rng, position)
        else:
            spread = self.mode == "test" and self.test_num_segment > 1
            position = segment / (self.test_num_segment - 1) if spread else 0.5
            indices = dense_indices(length, self.num_frames, self.sampling_rate, self.num_segments, rng, position)
        return np.minimum(entry.first_frame + indices, num_file_frames - 1)

    def _decode(self, index: int, segment: int) -> tuple[torch.Tensor, np.ndarray]:
        """Sampled frames (T, H, W, 3) uint8 and their boxes (T, 4) in pixels of the decoded frames (decoded smaller
        where that loses nothing: the stored size comes from the container, ``stored_video_size``)."""
        path, entry = self.video_path(index), self.entries[index]
        boxes = self.motion_boxes(index)
        size = reduced_decode_size(stored_video_size(path, boxes, self._stored_sizes, self._box_mismatches),
                                   self.needed_short_side)
        frames, indices, num_file_frames = decode_frames(path, lambda n: self.frame_indices(entry, n, segment), size)
        self._box_mismatches.check_frames(boxes, num_file_frames, path)
        height, width = frames.shape[1:3]
        if self.box_source == "frame":
            rows = frame_boxes(boxes, indices, num_file_frames)
        else:
            rows = np.tile(source_box(boxes, entry, indices, num_file_frames, self.box_source), (len(indices), 1))
        return frames, scale_box(rows, width, height)

    def _train_clip(self, frames: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """One augmented clip (3, T, S, S) and its boxes in output pixels, from decoded frames and their boxes. In
        VideoMAE's order: RandAugment on the decoded frames (so a rotation's or shear's filled corners are mostly
        cropped away, and translations are relative to the frame), random resized crop, flip, erasing."""
        if self.rand_augment is not None:
            augmented, boxes = self.rand_augment(frames.permute(0, 3, 1, 2), boxes, self.rng)
            frames = augmented.permute(0, 2, 3, 1)
        height, width = frames.shape[1:3]
        crop = random_resized_crop_params(width, height, self.rng, scale=self.crop_scale)
        clip, boxes = resized_crop(frames, boxes, *crop, self.input_size)
        if self.flip and self.rng.random() < 0.5:
            clip, boxes = horizontal_flip(clip, boxes)
        video = normalize_clip(clip)
        if self.eraser is not None:
            erase_clip(video, self.eraser, self.rng)
        return video, boxes

    def _eval_clip(self, frames: torch.Tensor, boxes: np.ndarray, crop: int) -> tuple[torch.Tensor, np.ndarray]:
        """The validation centre crop, or test crop number ``crop`` spread along the long side, and its boxes."""
        clip, boxes = short_side_resize(frames, boxes, self.short_side_size)
        position = crop / (self.test_num_crop - 1) if self.mode == "test" and self.test_num_crop > 1 else 0.5
        clip, boxes = spatial_crop(clip, boxes, self.input_size, position)
        return normalize_clip(clip), boxes

    def __getitem__(self, index: int):
        entry_index, view = divmod(index, self.num_views)
        segment, crop = divmod(view, self.test_num_crop) if self.mode == "test" else (0, 0)
        entry_index, (frames, boxes), replaced = load_with_replacement(
            lambda i: self._decode(i, segment), entry_index, len(self.entries), self.rng, self._reported_unusable,
            left_out=self.mode != "train")
        target = torch.tensor(self.entries[entry_index].target, dtype=torch.long)
        items = []
        for _ in range(self.num_sample):
            if self.mode == "train":
                video, out_boxes = self._train_clip(frames, boxes)
            else:
                video, out_boxes = self._eval_clip(frames, boxes, crop)
            item = {"video": video, "target": target,
                    "box": torch.from_numpy((out_boxes / self.input_size).astype(np.float32)),
                    "replaced": 0 if items else replaced}  # counted once per decode
            if self.mode == "test":
                item.update(sample_id=entry_index, view=view)
            items.append(item)
        return items[0] if self.num_sample == 1 else items


def check_labels(entries: list[ClipEntry], heads: dict[str, int], list_file, unlabelled: bool) -> None:
    """Every target inside its head's classes (``heads``: flag -> size), or -1 in every head where ``unlabelled``
    rows may be (a test list without labels, such as EPIC's test csv: the test writes scores, no loss), so that a
    list with more classes than the model fails here, naming the row, rather than in the loss of the first batch
    that draws it (a device-side assert on a GPU)."""
    for entry in entries:
        if unlabelled and all(value == -1 for value in entry.target):
            continue
        for value, (flag, size) in zip(entry.target, heads.items(), strict=True):
            if not 0 <= value < size:
                raise ValueError(f"{list_file}:{entry.line}: {entry.video} has label {value}, not one of the "
                                 f"--{flag} {size} classes" + (" (training and validation need labels)"
                                                              if value == -1 else f" (0 to {size - 1})"))


def build_dataset(is_train: bool, test_mode: bool, args) -> VideoClassificationDataset:
    """The fine-tuning dataset of ``args.data_set`` from ``args.data_path``/train.csv (is_train), test.csv
    (test_mode: every test view an item) or val.csv. EPIC-KITCHENS-100 reads the official csv files: copy or link
    EPIC_100_train.csv -> train.csv and EPIC_100_validation.csv -> val.csv (and -> test.csv to test on it)."""
    split, mode = ("train", "train") if is_train else ("test", "test") if test_mode else ("val", "validation")
    if Path(args.data_path).is_file():
        raise ValueError(f"--data_path {args.data_path} is a file: fine-tuning reads the folder holding train.csv, "
                         "val.csv and test.csv")
    if not Path(args.data_path).is_dir():
        raise ValueError(f"--data_path {args.data_path}: no such folder (the one holding train.csv, val.csv and "
                         "test.csv)")
    list_file = Path(args.data_path) / f"{split}.csv"
    if not list_file.is_file():
        raise ValueError(f"{list_file}: no such file (the {mode} list, in the --data_path folder)")
    if args.data_set == EPIC_KITCHENS:
        entries = read_epic_list(list_file, getattr(args, "epic_video_template", EPIC_VIDEO_TEMPLATE))
    elif args.data_set in LABEL_LIST_DATA_SETS:
        entries = read_label_list(list_file)
    else:
        raise ValueError(f"unknown data set {args.data_set!r}; known: {[*LABEL_LIST_DATA_SETS, EPIC_KITCHENS]}")
    heads = ({"nb_verbs": args.nb_verbs, "nb_nouns": args.nb_nouns} if args.data_set == EPIC_KITCHENS
             else {"nb_classes": args.nb_classes})
    check_labels(entries, heads, list_file, unlabelled=test_mode)
    check_data_root([entry.video for entry in entries], args.data_root, list_file)
    return VideoClassificationDataset(
        entries, data_root=args.data_root, box_dir=args.box_dir, mode=mode,
        sampling="tsn" if args.data_set in TSN_DATA_SETS else "dense",
        flip=args.flip and args.data_set not in NO_FLIP_DATA_SETS,
        num_frames=args.num_frames, sampling_rate=args.sampling_rate, num_segments=args.num_segments,
        input_size=args.input_size, short_side_size=args.short_side_size, test_num_segment=args.test_num_segment,
        test_num_crop=args.test_num_crop, num_sample=args.num_sample, rand_augment=args.aa, reprob=args.reprob,
        remode=args.remode, recount=args.recount, seed=args.seed,
        crop_scale=tuple(getattr(args, "crop_scale", RESIZED_CROP_SCALE)),
        interpolation=getattr(args, "train_interpolation", "bicubic"), box_source=getattr(args, "box_source", "video"),
    )

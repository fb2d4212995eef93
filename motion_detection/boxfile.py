"""Motion-box files: one JSON per video, written atomically, read back with validation.

Schema (version 1)::

    {"version": 1, "video": "a/b.mp4", "width": W, "height": H, "num_frames": T, "fps": 25.0,
     "flow": {"method": "tvl1", ...parameters...},
     "frames": [[x1, y1, x2, y2] or null, ...],   # T entries, original-resolution pixels
     "union": [x1, y1, x2, y2] or null}

Boxes are xyxy in pixels of the stored video (x right, y down, x2/y2 exclusive edges), so
``0 <= x1 <= x2 <= width``. ``null`` means no motion was found (or the box was rejected).

While a long video is processed, the boxes of its frame pairs so far are saved beside the box file as
``b.json.partial`` (:func:`save_partial`), so that an interrupted extraction goes on from there.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BOX_FILE_VERSION = 1
_COORD_DECIMALS = 2
_TOLERANCE = 1e-3
MAX_NAME_BYTES = 255  # of one path component on Linux and macOS file systems
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")  # .NAME.RANDOM.tmp, written by atomic_write_text
PARTIAL_SUFFIX = ".partial"  # a/b.json.partial, see partial_file_path
PARTIAL_FILE_VERSION = 1
PARTIAL_KEY_NAMES = {
    "file": "version of the video file (size, modification time)",
    "flow": "flow or detection settings",
}
STALE_TEMP_AGE = 3600.0  # seconds; a temp file lives for one write, so an older one was left by a killed writer


class BoxFileError(ValueError):
    """A box file is missing, unreadable or does not follow the schema; the message names file and field."""


@dataclass
class MotionBoxes:
    """The contents of one box file; ``frames`` is float32 (T, 4) with NaN rows where there is no box."""

    video: str
    width: int
    height: int
    num_frames: int
    fps: float
    flow: dict
    frames: np.ndarray
    union: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """Deterministic serialisation (same boxes, same bytes)."""
        record = {
            "version": BOX_FILE_VERSION,
            "video": self.video,
            "width": int(self.width),
            "height": int(self.height),
            "num_frames": int(self.num_frames),
            "fps": round(float(self.fps), 6) if math.isfinite(self.fps) and self.fps >= 0 else 0.0,  # 0: unknown
            "flow": self.flow,
            "frames": [_box_to_list(b) for b in np.asarray(self.frames, dtype=np.float64)],
            "union": None if self.union is None else _box_to_list(self.union),
        }
        record.update(self.extra)
        return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"  # what load_boxes reads


def _box_to_list(box) -> list[float] | None:
    box = np.asarray(box, dtype=np.float64)
    if not np.all(np.isfinite(box)):
        return None
    return [round(float(v), _COORD_DECIMALS) for v in box]


def box_file_path(output_dir: str | os.PathLike, video_rel_path: str) -> Path:
    """``a/b.mp4`` -> ``output_dir/a/b.json``: the box file mirrors the video's relative path."""
    rel = Path(video_rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"video path must be relative to the video root: {video_rel_path}")
    return Path(output_dir) / rel.with_suffix(".json")


def relative_video_path(entry: str, video_root: str, root_flag: str = "--video_root") -> str:
    """The path below the video root (given by ``root_flag``, named in the errors), which the box file mirrors."""
    p = Path(entry)
    if p.is_absolute():
        if not video_root:
            raise ValueError(f"{entry}: absolute path in the list; pass {root_flag} (a common parent folder)")
        try:
            return p.relative_to(Path(video_root).resolve()).as_posix()
        except ValueError:
            try:
                return p.relative_to(Path(video_root)).as_posix()
            except ValueError:
                raise ValueError(f"{entry}: not below {root_flag} {video_root}") from None
    return p.as_posix()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file of its own in the same folder (``.NAME.RANDOM.tmp``, created exclusively, so two
    writers never share one) and rename it to ``path``: a killed writer never leaves a half-written ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = os.fsencode(path.name)[:MAX_NAME_BYTES - 18].decode(errors="ignore")  # a 255-byte name has a temp too
    tmp = path.with_name(f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


FAILED_LIST_HEADER = "video\treason"
FAILED_LIST_GLOB = "failed*.tsv"  # failed.tsv, or failed.shardIIII-of-KKKK.tsv per shard


def read_failed_list(path: str | os.PathLike) -> dict[str, str]:
    """The rows of an extract_boxes failed list (video as listed -> reason); {} when there is no such file. A line
    without a tab (not written by extract_boxes) is read as a video without a reason."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    rows = {}
    for line in lines[1:] if lines and lines[0] == FAILED_LIST_HEADER else lines:
        video, _, reason = line.partition("\t")
        if video.strip():
            rows[video] = reason
    return rows


def failed_list_text(rows: dict[str, str]) -> str:
    """A failed list: the header and one ``video\treason`` row per video, sorted, reasons folded onto one line."""
    return FAILED_LIST_HEADER + "\n" + "".join(f"{video}\t{' '.join(rows[video].split())}\n" for video in sorted(rows))


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and write and remove a file of its own there (an OSError if it cannot), so that a run
    finds out before its work rather than when it first saves it."""
    probe = Path(folder) / f".write_probe_{secrets.token_hex(8)}"  # one of its own: other writers share the folder
    atomic_write_text(probe, "")
    probe.unlink(missing_ok=True)


def remove_stale_temp_files(folder: str | os.PathLike, max_age: float = STALE_TEMP_AGE) -> int:
    """Delete the temp files of :func:`atomic_write_text` in ``folder`` older than ``max_age`` seconds (left by
    killed writers; younger ones may belong to a run still writing). Returns how many were deleted."""
    deadline, removed = time.time() - max_age, 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < deadline:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # removed meanwhile by another run
            continue
    return removed


def save_boxes(path: str | os.PathLike, boxes: MotionBoxes) -> None:
    atomic_write_text(path, boxes.to_json())


def _fail(path, field_name: str, problem: str):
    raise BoxFileError(f"{path}: field '{field_name}' {problem}")


def _ordered_inside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per (N, 4) row: finite, x1 <= x2, y1 <= y2 and inside the frame (within the rounding tolerance)."""
    x1, y1, x2, y2 = boxes.T
    return (np.isfinite(boxes).all(axis=1) & (-_TOLERANCE <= x1) & (x1 <= x2) & (x2 <= width + _TOLERANCE)
            & (-_TOLERANCE <= y1) & (y1 <= y2) & (y2 <= height + _TOLERANCE))


def _check_box(path, field_name: str, value, width: int, height: int) -> np.ndarray:
    if not isinstance(value, list) or len(value) != 4:
        _fail(path, field_name, f"must be [x1, y1, x2, y2] or null, got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        _fail(path, field_name, f"must hold 4 finite numbers, got {value!r}")
    if not _ordered_inside(np.asarray([value], dtype=np.float64), width, height)[0]:
        frame = f" inside the {width}x{height} frame" if math.isfinite(width * height) else ""
        _fail(path, field_name, f"{value!r} is not an ordered box{frame}")
    return np.asarray(value, dtype=np.float32)


def _check_frames(path, entries: list, width: float, height: float, field_name: str = "frames") -> np.ndarray:
    """The ``frames`` (or other ``field_name``) entries as float32 (T, 4), NaN rows for null. All boxes are checked
    at once; only when that fails are they checked one by one, to name the first bad entry (a long video's file has
    10^5 boxes)."""
    frames = np.full((len(entries), 4), np.nan, dtype=np.float32)
    present = [i for i, box in enumerate(entries) if box is not None]
    boxes = [entries[i] for i in present]
    if {type(b) for b in boxes} <= {list} and {len(b) for b in boxes} <= {4} \
            and {type(v) for b in boxes for v in b} <= {int, float}:
        values = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        if _ordered_inside(values, width, height).all():
            frames[present] = values
            return frames
    for i in present:
        frames[i] = _check_box(path, f"{field_name}[{i}]", entries[i], width, height)
    return frames


def _read_json(path: Path, kind: str):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BoxFileError(f"{path}: {kind} not found") from None
    except OSError as e:
        raise BoxFileError(f"{path}: cannot read {kind} ({e})") from None
    except UnicodeDecodeError as e:
        raise BoxFileError(f"{path}: not UTF-8 text ({e})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BoxFileError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None


def load_boxes(path: str | os.PathLike) -> MotionBoxes:
    """Read and validate a box file; any problem raises BoxFileError naming the file and the field."""
    path = Path(path)
    record = _read_json(path, "box file")
    try:
        return _validated(path, record)
    except OverflowError as e:  # an integer too large for a float
        raise BoxFileError(f"{path}: a number out of range ({e})") from None


def partial_file_path(box_path: str | os.PathLike) -> Path:
    """``a/b.json`` -> ``a/b.json.partial``: the pair boxes of a video whose box file is not finished yet."""
    box_path = Path(box_path)
    return box_path.with_name(box_path.name + PARTIAL_SUFFIX)


def video_identity(path: str | os.PathLike) -> dict:
    """Size and modification time of a video file: a partial file goes on only with the file it was made from."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def save_partial(path: str | os.PathLike, key: dict, pair_boxes) -> None:
    """Write the pair boxes of an unfinished video (exact float32 values, null where none) with ``key``, what they
    depend on (video, its :func:`video_identity`, flow and detection settings), atomically."""
    pairs = [None if np.isnan(box).any() else [float(v) for v in box] for box in pair_boxes]
    record = {"partial_version": PARTIAL_FILE_VERSION, **key, "pairs": pairs}
    atomic_write_text(path, json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")


def load_partial(path: str | os.PathLike, key: dict) -> list[np.ndarray]:
    """The pair boxes :func:`save_partial` wrote with the same ``key``, float32 (4,) each, NaN where none.
    BoxFileError naming the file when it is unreadable or malformed, or was made for another key (settings, or
    another version of the video file)."""
    path = Path(path)
    record = _read_json(path, "partial box file")
    if not isinstance(record, dict) or record.get("partial_version") != PARTIAL_FILE_VERSION:
        raise BoxFileError(f"{path}: not a partial box file of version {PARTIAL_FILE_VERSION}")
    changed = [PARTIAL_KEY_NAMES.get(name, name) for name in key if record.get(name) != key[name]]
    if changed:
        raise BoxFileError(f"{path}: made for another {' and '.join(changed)}")
    pairs = record.get("pairs")
    if not isinstance(pairs, list) or not pairs:
        _fail(path, "pairs", "must be a non-empty list")
    try:
        return list(_check_frames(path, pairs, math.inf, math.inf, "pairs"))
    except OverflowError as e:
        raise BoxFileError(f"{path}: a number out of range ({e})") from None


def _validated(path: Path, record) -> MotionBoxes:
    if not isinstance(record, dict):
        raise BoxFileError(f"{path}: top level must be a JSON object")
    for key in ("version", "video", "width", "height", "num_frames", "fps", "flow", "frames", "union"):
        if key not in record:
            _fail(path, key, "is missing")
    if record["version"] != BOX_FILE_VERSION:
        _fail(path, "version", f"is {record['version']!r}, this code reads version {BOX_FILE_VERSION}")
    if not isinstance(record["video"], str):
        _fail(path, "video", "must be a string")
    for key in ("width", "height", "num_frames"):
        value = record[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            _fail(path, key, f"must be a positive integer, got {value!r}")
    fps = record["fps"]
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not math.isfinite(fps) or fps < 0:
        _fail(path, "fps", f"must be a non-negative number, got {fps!r}")
    if not isinstance(record["flow"], dict):
        _fail(path, "flow", "must be an object")
    width, height, num_frames = record["width"], record["height"], record["num_frames"]
    frames_in = record["frames"]
    if not isinstance(frames_in, list) or len(frames_in) != num_frames:
        got = len(frames_in) if isinstance(frames_in, list) else type(frames_in).__name__
        _fail(path, "frames", f"must be a list of num_frames={num_frames} entries, got {got}")
    frames = _check_frames(path, frames_in, width, height)
    union = None if record["union"] is None else _check_box(path, "union", record["union"], width, height)
    known = {"version", "video", "width", "height", "num_frames", "fps", "flow", "frames", "union"}
    extra = {k: v for k, v in record.items() if k not in known}
    return MotionBoxes(record["video"], width, height, num_frames, float(fps), record["flow"], frames, union, extra)

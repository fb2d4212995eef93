"""Sequential video decoding for motion extraction (OpenCV: every frame in order, no seeking).

OpenCV reports bad input as a failed open/read rather than crashing the process, which lets the
extractor record the reason and go on with the next video.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

# FFmpeg prints a line for every damaged packet it meets (hundreds per corrupt video, from every worker) to stderr.
# What matters reaches the caller as an error or a short decode, and the video is reported once; set
# OPENCV_FFMPEG_LOGLEVEL to see FFmpeg's own messages (it is read when the first video is opened).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

# Decoding may end this many frames (or this fraction of them) short of the frame count the container stores (an
# encoder's count can be off by a frame or two). Clearly fewer frames means a truncated or corrupt file, whose
# decoding ends early without an error.
FRAME_COUNT_SLACK = 2
FRAME_COUNT_TOLERANCE = 0.05


ROOT_PROBES = 64  # listed videos whose existence is checked at startup, spread over the list


def check_video_root(videos: list[str], root: str, list_file, flag: str) -> None:
    """A ValueError when none of a few listed videos, spread over the list, exists below ``root`` (the folder
    ``flag`` names): a wrong root (or list) fails at startup instead of after a screen of missing videos. Single
    missing videos are the callers' to skip, and so is an empty list."""
    if not videos:
        return
    probes = [videos[i] for i in sorted({k * len(videos) // ROOT_PROBES for k in range(ROOT_PROBES)})]
    if probes and not any(os.path.exists(os.path.join(root, video)) for video in probes):
        raise ValueError(f"{list_file}: none of the {len(probes)} videos checked is found below {flag} "
                         f"{root or '(none)'}, e.g. {os.path.join(root, probes[0])}")


VIDEO_SUFFIXES = {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp"}


def check_no_space_in_path(fields: list[str], where: str) -> None:
    """A ValueError when a list line's whitespace-separated ``fields`` hold a video path with a space (the first is
    not a video file name, a later one is: ``clips/my clip.mp4 3``): as in VideoMAE's lists a space ends the path,
    which would name the missing ``clips/my``. ``where`` (``list.csv:12``) starts the message."""
    spaced = next((k for k, field in enumerate(fields[1:], 1) if Path(field).suffix.lower() in VIDEO_SUFFIXES), 0)
    if spaced and Path(fields[0]).suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{where}: the video path seems to hold a space, '{' '.join(fields[:spaced + 1])}': fields "
                         f"are separated by whitespace, as in VideoMAE's lists, so it reads as the path '{fields[0]}'."
                         " Rename or link the videos to paths without spaces")


class VideoReadError(RuntimeError):
    """The video cannot be used; the message says why (missing, empty, undecodable, truncated, too short)."""


class StartPastEndError(VideoReadError):
    """The video ends before the frame (or frame pair) decoding was asked to start at."""


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    reported_frames: int  # the count the container stores, 0 when it stores none
    duration_ms: float = 0.0  # the container's duration where it stores no count (Matroska, WebM), else 0
    decoded_ms: float = -1.0  # the position of the last frame decoded so far (iter_frames)
    path: str = ""  # the file, read again only to explain a short decode (hidden_frames)


def matroska_duration_ms(tag: str) -> float:
    """A Matroska / WebM track's DURATION tag (``HH:MM:SS.fraction``, written by FFmpeg) in ms; 0 when malformed."""
    try:
        hours, minutes, seconds = tag.split(":")
        return (int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000
    except ValueError:
        return 0.0


def stored_length(path: str) -> tuple[int, float]:
    """(the frame count the container stores, 0 when it stores none; the video's duration in ms, 0 when unknown),
    (0, 0) when it cannot be read. Matroska / WebM store no count, and OpenCV's CAP_PROP_FRAME_COUNT then estimates
    duration x nominal frame rate, which for a variable frame rate can be twice the frames there are; their
    duration still shows a truncated file: the video track's own (its DURATION tag), not the file's, which is
    that of the longest track (an audio track may outlast the video)."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return 0, 0.0
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base) * 1000
            elif tag_duration := matroska_duration_ms(stream.metadata.get("DURATION", "")):
                duration = tag_duration
            elif len(container.streams) == 1 and container.duration:  # else the longest stream's, audio's perhaps
                duration = container.duration / 1000  # in microseconds
            else:
                duration = 0.0
            return max(int(stream.frames), 0), duration
    except (av.FFmpegError, OSError, ValueError):
        return 0, 0.0


def open_video(path: str | os.PathLike) -> tuple[cv2.VideoCapture, VideoInfo]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoReadError("file not found")
    if os.path.getsize(path) == 0:
        raise VideoReadError("file is empty (0 bytes)")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise VideoReadError("cannot be opened as a video (corrupt or unsupported container)")
    stored_frames, duration_ms = stored_length(path)
    info = VideoInfo(
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
        reported_frames=stored_frames,
        duration_ms=0.0 if stored_frames else duration_ms,
        path=path,
    )
    if info.width <= 0 or info.height <= 0:
        cap.release()
        raise VideoReadError("no video stream with a valid frame size")
    return cap, info


def check_frame_count(decoded: int, reported: int) -> None:
    """Raise VideoReadError when clearly fewer frames decode than the container reports (``reported`` 0 means
    unknown), so that a truncated or corrupt video fails instead of giving boxes for part of it."""
    if reported > 0 and reported - decoded > max(FRAME_COUNT_SLACK, FRAME_COUNT_TOLERANCE * reported):
        raise VideoReadError(f"only {decoded} of the {reported} frames the container reports could be decoded "
                             "(truncated or corrupt file)")


def hidden_frames(path: str) -> int:
    """Frames the container stores but hides by an edit list (packets marked discard: the frames from the keyframe
    before the cut that a cut by stream copy, ``ffmpeg -ss T -c copy``, keeps); 0 when it cannot be read."""
    try:
        with av.open(path) as container:
            return sum(packet.is_discard for packet in container.demux(video=0) if packet.size)
    except (av.FFmpegError, OSError, ValueError):
        return 0


def check_complete(decoded: int, info: VideoInfo) -> None:
    """VideoReadError when a whole video decoded to clearly less than its container holds: fewer frames than it
    stores (:func:`check_frame_count`) or, where it stores no count, a last frame clearly before its duration's end
    (the same slack: a few nominal frame intervals, or 5%). Frames hidden by an edit list are named as such: the
    file is whole, but OpenCV skips them and decord (training) decodes them, so its boxes would be off by them."""
    try:
        check_frame_count(decoded, info.reported_frames)
    except VideoReadError:
        hidden = hidden_frames(info.path) if info.path else 0
        if not hidden:
            raise
        try:
            check_frame_count(decoded, info.reported_frames - hidden)
        except VideoReadError:
            raise VideoReadError(f"only {decoded} of the {info.reported_frames - hidden} frames the container shows "
                                 "could be decoded (truncated or corrupt file)") from None
        raise VideoReadError(f"an edit list hides its first {hidden} of {info.reported_frames} frames (a cut by stream "
                             "copy, ffmpeg -ss ... -c copy): OpenCV skips them and decord decodes them, so boxes and "
                             "training frames would not line up; re-encode it (ffmpeg -i IN -c:v libx264 OUT)"
                             ) from None
    if info.reported_frames or info.duration_ms <= 0 or info.decoded_ms < 0:
        return
    interval = 1000 / info.fps if info.fps > 0 else 0.0
    slack = max((FRAME_COUNT_SLACK + 1) * interval, FRAME_COUNT_TOLERANCE * info.duration_ms)
    if info.duration_ms - info.decoded_ms > slack:
        raise VideoReadError(f"decoding ends at {info.decoded_ms / 1000:.2f} s of the {info.duration_ms / 1000:.2f} s "
                             "the container reports (truncated or corrupt file)")


def iter_frames(cap: cv2.VideoCapture, start: int = 0, info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames from frame ``start`` on (the ones before it are decoded and dropped: no seeking, so
    frame numbers are those of a sequential decode) until the stream ends; releases the capture. VideoReadError
    (StartPastEndError) when the stream has no frame ``start``. ``info.decoded_ms`` follows the decoded frames."""
    try:
        for index in range(start):
            if not cap.grab():
                raise StartPastEndError(f"the video ends at frame {index}, before frame {start}")
        first = True
        while True:
            ok, bgr = cap.read()
            if not ok:
                if first and start:
                    raise StartPastEndError(f"the video ends at frame {start}: it has no frame {start} to go on from")
                return
            first = False
            if info is not None:
                info.decoded_ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def read_video(path: str | os.PathLike, start_frame: int = 0,
               num_frames: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Decode a (short) video to (T, H, W, 3) RGB uint8; for clips, tests and visualisation. With ``start_frame``
    / ``num_frames`` only that range is kept: the frames before it are decoded and dropped, so frame numbers are
    those of a sequential decode, as ``extract_boxes`` counts them. A whole video that decodes to clearly fewer
    frames (or a shorter time) than its container reports raises VideoReadError (:func:`check_complete`)."""
    cap, info = open_video(path)
    decoded = iter_frames(cap, info=info)
    end = None if num_frames is None else start_frame + num_frames
    frames = list(itertools.islice(decoded, start_frame, end))
    decoded.close()
    if not frames:
        raise VideoReadError("no decodable frames" + (f" from frame {start_frame} on" if start_frame else ""))
    if start_frame == 0 and num_frames is None:
        check_complete(len(frames), info)
    return np.stack(frames), info


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Encode RGB frames (T, H, W, 3) uint8 as an mp4v .mp4 with OpenCV; odd sizes are padded with black (mp4v
    would crop them silently). Raises RuntimeError when OpenCV cannot open the writer."""
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
    height, width = frames.shape[1:3]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot open an mp4v writer for {path} ({width}x{height} @ {fps} fps)")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()

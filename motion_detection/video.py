"""Sequential video decoding for motion extraction (OpenCV: every frame in order, no seeking).

OpenCV reports bad input as a failed open/read rather than crashing the process, which lets the
extractor record the reason and go on with the next video.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np


class VideoReadError(RuntimeError):
    """The video cannot be used; the message says why (missing, empty, undecodable, too short)."""


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    reported_frames: int


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
    info = VideoInfo(
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
        reported_frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
    )
    if info.width <= 0 or info.height <= 0:
        cap.release()
        raise VideoReadError("no video stream with a valid frame size")
    return cap, info


def iter_frames(cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames until the stream ends; releases the capture."""
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, VideoInfo]:
    """Decode a whole (short) video to (T, H, W, 3) RGB uint8; for clips, tests and visualisation."""
    cap, info = open_video(path)
    frames = list(iter_frames(cap))
    if not frames:
        raise VideoReadError("no decodable frames")
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

"""Draw a video's motion boxes: per-frame box (green), union box (yellow), optional ground truth (cyan),
optionally the smoothed motion map beside each frame.

    python -m motion_detection.visualize VIDEO BOXES --out check.mp4 [--show_map] [--gt GT.json]
        [--start_frame N --num_frames M]

The output kind follows the extension: ``.mp4`` (video), ``.gif`` (animation), ``.png`` (a strip of
``--strip_frames`` evenly spaced frames). A long video (EPIC-KITCHENS' are 10^4 to 10^5 frames) is drawn for a
range of frames only: the whole one would not fit in memory, so it is refused beyond ``MAX_DECODED_BYTES``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .boxfile import BoxFileError, load_boxes
from .detect import MotionBoxDetector
from .flow import available_flows
from .video import VideoReadError, open_video, read_video, write_mp4

OUTPUT_KINDS = (".mp4", ".gif", ".png")
FRAME_COLOUR = (0, 255, 0)
UNION_COLOUR = (255, 220, 0)
GT_COLOUR = (0, 200, 255)
MAX_DECODED_BYTES = 4 << 30  # decoded frames held at once: about 2000 frames of 1080p


def draw_box(frame: np.ndarray, box, colour, thickness: int = 1) -> None:
    if box is None or np.isnan(np.asarray(box, dtype=np.float32)).any():
        return
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(frame, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thickness)


def colour_map(motion_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Map (working resolution) -> RGB heat image of the frame's size, normalised per frame."""
    m = motion_map - motion_map.min()
    m = (255 * m / max(float(m.max()), 1e-6)).astype(np.uint8)
    heat = cv2.applyColorMap(cv2.resize(m, size, interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)


def detector_for(flow_config: dict, fallback_flow: str) -> MotionBoxDetector:
    """The detector that made a box file (so the map shown is the one thresholded), else ``fallback_flow``.
    Settings this code cannot rebuild (another version's) raise ValueError saying which."""
    if flow_config.get("method") not in available_flows():
        return MotionBoxDetector(fallback_flow)
    params, detection = flow_config.get("params") or {}, flow_config.get("detection") or {}
    if not isinstance(params, dict) or not isinstance(detection, dict):
        raise ValueError("'flow' field: 'params' and 'detection' must be objects")
    try:
        return MotionBoxDetector(flow_config["method"], params, **detection)
    except TypeError as e:  # a parameter this version does not have
        raise ValueError(f"{flow_config['method']} flow or detection settings this code does not take ({e})") from None


def render(frames: np.ndarray, boxes, gt=None, maps=None) -> np.ndarray:
    """Annotated frames (T, H, W', 3); with maps, each frame has its motion map to the right."""
    height, width = frames.shape[1:3]
    thickness = max(1, round(min(height, width) / 160))
    out = []
    for t, frame in enumerate(frames):
        canvas = frame.copy()
        draw_box(canvas, boxes.union, UNION_COLOUR, thickness)
        if gt is not None:
            draw_box(canvas, gt.frames[t], GT_COLOUR, thickness)
        draw_box(canvas, boxes.frames[t], FRAME_COLOUR, thickness)
        if maps is not None:
            heat = colour_map(maps[min(t, len(maps) - 1)], (width, height))
            draw_box(heat, boxes.frames[t], FRAME_COLOUR, thickness)
            canvas = np.concatenate([canvas, heat], axis=1)
        out.append(canvas)
    return np.stack(out)


def unknown_kind(out: Path) -> str:
    return f"--out {out}: unknown output kind {out.suffix!r}; use {', '.join(OUTPUT_KINDS)}"


def write_output(frames: np.ndarray, out: Path, fps: float, strip_frames: int) -> None:
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_KINDS:
        raise SystemExit(unknown_kind(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        try:
            write_mp4(out, frames, fps or 12.0)
        except RuntimeError as e:
            raise SystemExit(f"--out {out}: {e}") from None
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / (fps or 12.0)), loop=0)
    else:  # .png: frames side by side, or one above the other when they are wide (frame + map)
        picks = np.linspace(0, len(frames) - 1, min(strip_frames, len(frames))).round().astype(int)
        Image.fromarray(np.concatenate(list(frames[picks]), axis=0 if frames.shape[2] > 2 * frames.shape[1] else 1)
                        ).save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="the video file")
    parser.add_argument("boxes", help="its box file (from motion_detection.extract_boxes)")
    parser.add_argument("--out", required=True, help="output .mp4, .gif or .png (strip)")
    parser.add_argument("--gt", help="a ground-truth box file to draw as well")
    parser.add_argument("--show_map", action="store_true", help="show the motion map beside each frame")
    parser.add_argument("--flow", default="dis", choices=available_flows(),
                        help="flow for --show_map when the box file does not name one (default: dis)")
    parser.add_argument("--strip_frames", type=int, default=8, help="frames in a .png strip (default: 8)")
    parser.add_argument("--start_frame", type=int, default=0, help="first frame drawn (default: 0)")
    parser.add_argument("--num_frames", type=int, default=None,
                        help="frames drawn from --start_frame (default: to the end of the video)")
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() not in OUTPUT_KINDS:
        parser.error(unknown_kind(Path(args.out)))
    if args.strip_frames < 1:
        parser.error(f"--strip_frames must be >= 1, got {args.strip_frames}")
    if args.start_frame < 0 or (args.num_frames is not None and args.num_frames < 1):
        parser.error("--start_frame must be >= 0 and --num_frames >= 1")

    whole = args.start_frame == 0 and args.num_frames is None
    try:
        boxes = load_boxes(args.boxes)
        gt = load_boxes(args.gt) if args.gt else None
        cap, info = open_video(args.video)
        cap.release()
        wanted = boxes.num_frames - args.start_frame
        if args.num_frames is not None:
            wanted = min(wanted, args.num_frames)
        if wanted * info.width * info.height * 3 > MAX_DECODED_BYTES:
            raise SystemExit(f"{args.video}: {wanted} frames of {info.width}x{info.height} would take "
                             f"{wanted * info.width * info.height * 3 / 2**30:.1f} GiB; draw a range with "
                             "--start_frame and --num_frames")
        frames, info = read_video(args.video, args.start_frame, args.num_frames)
    except BoxFileError as e:
        raise SystemExit(str(e)) from None
    except VideoReadError as e:
        raise SystemExit(f"{args.video}: {e}") from None
    height, width = frames.shape[1:3]
    end = args.start_frame + len(frames)
    for path, record in ((args.boxes, boxes), (args.gt, gt)):
        if record is not None and (record.num_frames != len(frames) if whole else record.num_frames < end):
            raise SystemExit(f"{path}: {record.num_frames} frames, but {args.video} decodes to "
                             f"{len(frames) if whole else f'frame {end - 1} and more'}")
        if record is not None and (record.width, record.height) != (width, height):
            raise SystemExit(f"{path}: boxes for a {record.width}x{record.height} video, "
                             f"but {args.video} is {width}x{height}")
        if record is not None and Path(record.video).name != Path(args.video).name:  # same size, maybe a sibling
            print(f"warning: {path} was made for {record.video}, not {Path(args.video).name}: its boxes are drawn "
                  "all the same", file=sys.stderr)
    boxes, gt = (None if r is None else dataclasses.replace(r, frames=r.frames[args.start_frame:end],
                                                             num_frames=len(frames)) for r in (boxes, gt))
    if args.show_map and len(frames) < 2:
        raise SystemExit(f"--show_map: {args.video} has {len(frames)} frame; flow needs a frame pair")
    maps = None
    if args.show_map:
        try:
            detector = detector_for(boxes.flow, args.flow)
        except ValueError as e:
            raise SystemExit(f"{args.boxes}: --show_map cannot recompute the motion map: {e}") from None
        if hasattr(detector.backend, "flows_from_video"):  # motion read from the file (codec motion vectors)
            size = detector.working_size(frames.shape[2], frames.shape[1])
            flows = itertools.islice(detector.backend.flows_from_video(args.video, size), args.start_frame, end)
            maps = [detector.motion_map(f) for f in flows]
        else:
            try:
                maps = list(detector.iter_maps(frames))
            except ValueError as e:  # e.g. frames too small for DIS
                raise SystemExit(f"{args.video}: --show_map cannot compute the motion map: {e}") from None
    write_output(render(frames, boxes, gt, maps), Path(args.out), info.fps, args.strip_frames)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

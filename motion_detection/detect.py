"""Motion-area detection (MOFO paper, section 2.1).

For each pair of consecutive frames: dense flow (u, v) -> motion-boundary map (eq. 1, spatial derivatives of
the flow, which cancel camera translation and turn camera rotation/zoom into a near-constant level) ->
Gaussian smoothing -> threshold above the frame's background level -> contours (Suzuki's border following,
``cv2.findContours``) -> the N largest -> their bounding box. Per video, implausible frame boxes are rejected,
the rest smoothed over time, and their union is the video's motion box.

Spatial parameters are fractions of the working short side and areas fractions of the frame, so the defaults
mean the same at any resolution; flow is computed at a working resolution (``short_side``) and boxes are
reported in the original pixels. ``min_peak`` is a level of the map itself, which a motion boundary reaches less
on small frames (a short side under about 160 pixels) and with smoother flow (dis): extract_boxes names the videos
left without any box.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from .boxfile import MotionBoxes
from .flow import create_flow
from .video import StartPastEndError, VideoReadError, check_complete, iter_frames, open_video

MOTION_MAPS = ("boundary", "magnitude")


@dataclass(frozen=True)
class DetectionParams:
    short_side: int = 224
    motion_map: str = "boundary"
    smooth_sigma: float = 0.01
    border: float = 0.03
    rel_threshold: float = 0.3
    min_peak: float = 0.1
    close_size: float = 0.03
    num_contours: int = 2
    min_contour_area: float = 0.001
    min_contour_ratio: float = 0.1
    max_box_area: float = 0.7
    min_box_area: float = 0.002
    temporal_window: int = 5

    def __post_init__(self):
        if self.motion_map not in MOTION_MAPS:
            raise ValueError(f"motion_map must be one of {MOTION_MAPS}, got {self.motion_map!r}")
        if self.num_contours < 1 or self.temporal_window < 1 or self.short_side < 0:
            raise ValueError("num_contours and temporal_window must be >= 1, short_side >= 0")
        if self.temporal_window % 2 == 0:
            raise ValueError(f"temporal_window must be odd (a median centred on the frame), got {self.temporal_window}")
        if not 0 <= self.border < 0.5:
            raise ValueError(f"border is a margin on each side, a fraction of the short side in [0, 0.5), got "
                             f"{self.border}")


PARAM_HELP = {
    "short_side": "flow is computed with the frame's short side resized to this many pixels (never upsampled; "
    "0 = native resolution); boxes are reported in original pixels",
    "motion_map": "'boundary': paper eq. 1, spatial derivatives of the flow (camera-robust); "
    "'magnitude': plain flow magnitude, the camera-sensitive baseline",
    "smooth_sigma": "sigma of the Gaussian smoothing of the map, as a fraction of the working short side",
    "border": "margin ignored at the frame edges (fraction of the short side): flow is unreliable where "
    "content enters or leaves the view",
    "rel_threshold": "a pixel is moving when its map value exceeds background + rel_threshold * (peak - "
    "background), background being the frame's median map value",
    "min_peak": "no motion in the frame when peak - background is below this (flow pixels per pixel for the boundary "
    "map, flow pixels for the magnitude map)",
    "close_size": "morphological closing radius (fraction of the short side) that joins boundary fragments "
    "into regions",
    "num_contours": "keep the N largest contours (paper: 2, for the hands and the object)",
    "min_contour_area": "contours smaller than this fraction of the frame are dropped as specks",
    "min_contour_ratio": "contours smaller than this fraction of the largest one are dropped",
    "max_box_area": "frame boxes covering more than this fraction of the frame are rejected (camera shake, shot "
    "cuts, global motion)",
    "min_box_area": "frame boxes covering less than this fraction of the frame are rejected",
    "temporal_window": "running median of the frame boxes over this many frames (odd; 1 = off), which smooths their "
    "jitter; where the window holds two boxes that do not overlap, the frame keeps its own (their median would lie "
    "between them), and a box alone in its window stays (sparse detections of slow motion are mostly real)",
}


def add_detection_args(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per DetectionParams field, with its default and documentation."""
    group = parser.add_argument_group("motion-box detection")
    for f in fields(DetectionParams):
        kwargs = {"type": type(f.default), "default": f.default, "help": PARAM_HELP[f.name] + " (default: %(default)s)"}
        if f.name == "motion_map":
            kwargs["choices"] = MOTION_MAPS
        group.add_argument(f"--{f.name}", **kwargs)


def params_from_args(args: argparse.Namespace) -> DetectionParams:
    return DetectionParams(**{f.name: getattr(args, f.name) for f in fields(DetectionParams)})


def motion_boundaries(flow: np.ndarray) -> np.ndarray:
    """Paper eq. 1: sqrt(u_x^2 + u_y^2 + v_x^2 + v_y^2) for flow (..., H, W, 2), central differences."""
    flow = np.asarray(flow, dtype=np.float32)
    du_dy, du_dx = np.gradient(flow[..., 0], axis=(-2, -1))
    dv_dy, dv_dx = np.gradient(flow[..., 1], axis=(-2, -1))
    return np.sqrt(du_dx**2 + du_dy**2 + dv_dx**2 + dv_dy**2)


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float32)
    return np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)


def smooth_map(motion_map: np.ndarray, params: DetectionParams) -> np.ndarray:
    """Gaussian smoothing; the border margin is set to the frame's median so it never fires."""
    h, w = motion_map.shape
    short = min(h, w)
    sigma = params.smooth_sigma * short
    m = cv2.GaussianBlur(motion_map, (0, 0), sigma) if sigma > 0 else motion_map.copy()
    b = int(round(params.border * short))
    if b > 0 and 2 * b < short:
        level = np.median(m[b:-b, b:-b])
        m[:b], m[-b:], m[:, :b], m[:, -b:] = level, level, level, level
    return m


def box_from_map(smoothed: np.ndarray, params: DetectionParams) -> np.ndarray:
    """xyxy box (map pixels) around the N largest moving regions of a smoothed map; NaN when none."""
    h, w = smoothed.shape
    background = float(np.median(smoothed))
    peak = float(smoothed.max())
    none = np.full(4, np.nan, dtype=np.float32)
    if peak - background < params.min_peak:
        return none
    binary = (smoothed > background + params.rel_threshold * (peak - background)).astype(np.uint8)
    radius = int(round(params.close_size * min(h, w)))
    if radius > 0:
        # Closed inside a margin of background: OpenCV's default border counts pixels outside the image as
        # foreground when eroding, so a region near the edge would stay dilated up to it.
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        padded = cv2.copyMakeBorder(binary, radius, radius, radius, radius, cv2.BORDER_CONSTANT, value=0)
        binary = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[radius:-radius, radius:-radius]
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return none
    areas = np.array([cv2.contourArea(c) for c in contours])
    order = np.argsort(-areas, kind="stable")[: params.num_contours]
    min_area = max(params.min_contour_area * h * w, params.min_contour_ratio * areas[order[0]])
    kept = [contours[i] for i in order if areas[i] >= min_area and areas[i] > 0]
    if not kept:
        return none
    x, y, bw, bh = cv2.boundingRect(np.concatenate(kept))
    return np.array([x, y, x + bw, y + bh], dtype=np.float32)


def clean_boxes(boxes: np.ndarray, width: int, height: int, params: DetectionParams) -> np.ndarray:
    """Reject implausible frame boxes (by area), then a running median over time of the rest, per coordinate over
    the window's boxes (``PARAM_HELP["temporal_window"]``: of two that do not overlap, the frame keeps its own)."""
    boxes = np.array(boxes, dtype=np.float32, copy=True)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(width * height)
    with np.errstate(invalid="ignore"):
        plausible = (area >= params.min_box_area) & (area <= params.max_box_area)
    boxes[~plausible] = np.nan
    r = params.temporal_window // 2
    valid = np.flatnonzero(plausible)
    if r > 0 and valid.size:
        padded = np.pad(boxes, ((r, r), (0, 0)), constant_values=np.nan)
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * r + 1, axis=0)[valid]  # (V, 4, window)
        median = np.nanmedian(windows, axis=-1)
        count = (~np.isnan(windows[:, 0])).sum(-1)
        own = boxes[valid]
        other = 2 * median - own  # the window's other box, where it holds two
        apart = (np.minimum(own[:, 2:], other[:, 2:]) <= np.maximum(own[:, :2], other[:, :2])).any(-1)
        keep_own = (count == 2) & apart
        median[keep_own] = own[keep_own]
        boxes[valid] = median
    return boxes


def union_box(boxes: np.ndarray) -> np.ndarray | None:
    """Smallest box holding every non-NaN row of (T, 4) xyxy boxes; None when there is none."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    boxes = boxes[~np.isnan(boxes).any(axis=1)]
    if boxes.size == 0:
        return None
    return np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()], dtype=np.float32)


def box_iou(a, b) -> np.ndarray:
    """IoU of xyxy boxes (broadcasting over leading axes); 0 where either box is missing (NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (union - inter)
    return np.nan_to_num(iou, nan=0.0)


def prefetch(items: Iterable, depth: int) -> Iterator:
    """Iterate ``items`` on a background thread, at most ``depth`` items ahead of the consumer (OpenCV decoding
    and torch both release the GIL, so the two overlap). An exception raised by ``items`` is re-raised here;
    closing the returned generator stops the thread (and closes ``items`` if it is a generator)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):  # full: check whether the consumer stopped, then retry
                buffer.put(entry, timeout=0.05)
                return True
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((end, None))
        except Exception as e:
            put((end, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


class MotionBoxDetector:
    """Flow backend + detection parameters; turns a stream of RGB frames into per-frame boxes."""

    def __init__(self, flow: str = "tvl1", flow_params: dict | None = None, batch_size: int = 8, **params):
        self.backend = create_flow(flow, **(flow_params or {}))
        self.params = DetectionParams(**params)
        self.batch_size = batch_size

    def config(self) -> dict:
        """What determines the boxes; stored as the box file's ``flow`` field."""
        return {"method": self.backend.name, "params": self.backend.params(), "detection": asdict(self.params)}

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        short = self.params.short_side
        scale = 1.0 if short == 0 else min(1.0, short / min(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def working_gray(self, frame: np.ndarray) -> np.ndarray:
        """An RGB frame as the backend's input: grey, resized to the working resolution."""
        height, width = frame.shape[:2]
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        size = self.working_size(width, height)
        if size != (width, height):
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray

    def iter_flows(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Flow (working resolution, (h, w, 2)) of each consecutive pair of RGB frames, in batches. For a backend
        on an accelerator (``on_accelerator``, e.g. tvl1_torch on a GPU), frames are decoded and converted on a
        background thread, up to two batches ahead, while the device works on the current batch."""
        grays = map(self.working_gray, frames)
        if getattr(self.backend, "on_accelerator", False):
            grays = prefetch(grays, 2 * self.batch_size + 1)
        prev = None
        batch_prev, batch_next = [], []
        for gray in grays:
            if prev is not None:
                batch_prev.append(prev)
                batch_next.append(gray)
            if len(batch_prev) == self.batch_size:
                yield from self.backend(np.stack(batch_prev), np.stack(batch_next))
                batch_prev, batch_next = [], []
            prev = gray
        if batch_prev:
            yield from self.backend(np.stack(batch_prev), np.stack(batch_next))

    def motion_map(self, flow: np.ndarray) -> np.ndarray:
        """The smoothed map that is thresholded: motion boundaries (eq. 1) or flow magnitude."""
        raw = motion_boundaries(flow) if self.params.motion_map == "boundary" else flow_magnitude(flow)
        return smooth_map(raw, self.params)

    def iter_maps(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return map(self.motion_map, self.iter_flows(frames))

    def pair_boxes(self, flows: Iterable[np.ndarray], width: int, height: int) -> Iterator[np.ndarray]:
        """The box (original pixels, NaN when none) of each pair flow, before the per-video cleaning."""
        for flow in flows:
            scale = np.array([width / flow.shape[1], height / flow.shape[0]] * 2, dtype=np.float32)
            yield box_from_map(self.motion_map(flow), self.params) * scale

    def video_boxes(self, pair_boxes: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
        """Cleaned (T, 4) boxes from the T-1 pair boxes; frame i uses pair (i, i+1) and the last frame repeats the
        last pair. No pair at all (fewer than two frames) raises VideoReadError."""
        if not len(pair_boxes):
            raise VideoReadError("fewer than 2 decodable frames: optical flow needs a frame pair")
        return clean_boxes(np.stack([*pair_boxes, pair_boxes[-1]]), width, height, self.params)

    def boxes_from_flows(self, flows: Iterable[np.ndarray], width: int, height: int) -> np.ndarray:
        """Cleaned (T, 4) boxes in original pixels from the T-1 pair flows (:meth:`video_boxes`)."""
        return self.video_boxes(list(self.pair_boxes(flows, width, height)), width, height)

    def detect(self, frames: Iterable[np.ndarray], width: int, height: int) -> np.ndarray:
        return self.boxes_from_flows(self.iter_flows(frames), width, height)

    def detect_video(self, path, video_name: str, done_pairs: Sequence[np.ndarray] = (),
                     on_pair: Callable[[list[np.ndarray]], None] | None = None) -> MotionBoxes:
        """Decode a video file frame by frame (constant memory) and build its box record. A backend that reads
        motion from the file itself (``flows_from_video(path, working_size)``, e.g. codec motion vectors) is
        given the file instead of decoded frame pairs. A video that decodes to clearly fewer frames than its
        container reports (truncated or corrupt) raises VideoReadError rather than giving boxes for part of it.

        ``done_pairs`` are the pair boxes of the video's first pairs, from an interrupted run: their frames are
        decoded and dropped, and flow starts at the next pair (StartPastEndError when the video has fewer pairs).
        ``on_pair`` is called with the pair boxes so far (to save them) after each batch of pairs the backend computes
        together, and after the last pair: a save between the pairs of a batch would miss those done with it."""
        cap, info = open_video(path)
        pairs = list(done_pairs)
        from_file = hasattr(self.backend, "flows_from_video")
        batch, start = 1 if from_file else self.batch_size, len(pairs)
        if from_file:
            cap.release()
            flows = iter(self.backend.flows_from_video(path, self.working_size(info.width, info.height)))
            for index in range(len(pairs)):
                if next(flows, None) is None:
                    raise StartPastEndError(f"the video ends at frame pair {index}, before pair {len(pairs)}")
        else:
            flows = self.iter_flows(iter_frames(cap, start=len(pairs), info=info))
        for box in self.pair_boxes(flows, info.width, info.height):
            pairs.append(box)
            if on_pair is not None and (len(pairs) - start) % batch == 0:
                on_pair(pairs)
        if on_pair is not None and (len(pairs) - start) % batch:
            on_pair(pairs)
        if not pairs:  # a file whose frames do not decode is truncated or corrupt, not a video of one frame
            check_complete(0 if info.decoded_ms < 0 else 1, info)
        boxes = self.video_boxes(pairs, info.width, info.height)
        check_complete(len(boxes), info)
        return MotionBoxes(
            video=video_name, width=info.width, height=info.height, num_frames=len(boxes), fps=info.fps,
            flow=self.config(), frames=boxes, union=union_box(boxes),
        )


def detect_motion_boxes(frames: np.ndarray, flow: str = "tvl1", flow_params: dict | None = None, **params):
    """Per-frame motion boxes of a clip: uint8 RGB (T, H, W, 3) -> float32 (T, 4) xyxy pixels, NaN rows
    where there is no motion. Frame i uses the pair (i, i+1); the last frame repeats the last pair."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB (T, H, W, 3), got {frames.dtype} {frames.shape}")
    detector = MotionBoxDetector(flow, flow_params, **params)
    return detector.detect(frames, frames.shape[2], frames.shape[1])

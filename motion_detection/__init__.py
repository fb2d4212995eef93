"""Motion-area detection: optical flow -> motion boundaries -> per-frame and per-video motion boxes."""

from .boxfile import BoxFileError, MotionBoxes, box_file_path, load_boxes, save_boxes
from .detect import (
    DetectionParams,
    MotionBoxDetector,
    box_iou,
    detect_motion_boxes,
    flow_magnitude,
    motion_boundaries,
    union_box,
)
from .flow import available_flows, create_flow, register_flow
from .video import VideoReadError

__all__ = [
    "BoxFileError",
    "DetectionParams",
    "MotionBoxDetector",
    "MotionBoxes",
    "VideoReadError",
    "available_flows",
    "box_file_path",
    "box_iou",
    "create_flow",
    "detect_motion_boxes",
    "flow_magnitude",
    "load_boxes",
    "motion_boundaries",
    "register_flow",
    "save_boxes",
    "union_box",
]

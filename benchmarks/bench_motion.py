"""Motion-extraction benchmark: frame pairs per second per flow backend, and box agreement between backends.

    python benchmarks/bench_motion.py                      # this machine, defaults below
    python benchmarks/bench_motion.py --pairs 10 --num_videos 4   # quick

1. Speed: flow alone and the whole per-pair detection (flow + motion map + box) on synthetic frames with the
   short side at ``--short_side`` (default 224, i.e. 298x224), with OpenCV limited to 1 thread (cost per core)
   and with all threads.
2. Agreement on the synthetic set (in memory, 160x120): union-box and per-frame IoU of every backend's boxes
   with the first backend's (TV-L1, the paper's) and with the ground truth (two missing boxes agree).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "scripts")]

import make_synthetic_dataset as synthetic  # noqa: E402
from motion_detection import MotionBoxDetector, available_flows, union_box  # noqa: E402
from motion_detection.evaluate import agreement  # noqa: E402


def gray_frames(num_frames: int, short_side: int) -> list[np.ndarray]:
    width = int(round(short_side * 4 / 3 / 2)) * 2
    frames, _ = synthetic.render_clip(label=0, num_frames=num_frames, width=width, height=short_side, seed=0)
    return frames


def time_backend(flow: str, frames: np.ndarray, threads: int) -> tuple[float, float]:
    """(flow-only pairs/s, full-detection pairs/s)."""
    cv2.setNumThreads(threads)
    detector = MotionBoxDetector(flow, short_side=0, batch_size=1)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[None] for f in frames]
    detector.backend(gray[0], gray[1])  # warm-up
    start = time.perf_counter()
    for prev, nxt in zip(gray[:-1], gray[1:], strict=True):
        detector.backend(prev, nxt)
    flow_rate = (len(gray) - 1) / (time.perf_counter() - start)
    start = time.perf_counter()
    detector.detect(frames, frames.shape[2], frames.shape[1])
    detect_rate = (len(gray) - 1) / (time.perf_counter() - start)
    return flow_rate, detect_rate


def speed_table(flows: list[str], pairs: int, short_side: int, all_threads: int) -> None:
    frames = gray_frames(pairs + 1, short_side)
    print(f"speed: {frames.shape[2]}x{frames.shape[1]}, {pairs} pairs, OpenCV {cv2.__version__}, {all_threads} CPUs")
    print(f"{'flow':<8} {'threads':>7} {'flow pairs/s':>12} {'detect pairs/s':>14} {'ms/pair':>8}")
    for flow in flows:
        for threads in sorted({1, all_threads}):
            flow_rate, detect_rate = time_backend(flow, frames, threads)
            print(f"{flow:<8} {threads:>7} {flow_rate:>12.2f} {detect_rate:>14.2f} {1000 / detect_rate:>8.1f}")


def agreement_table(flows: list[str], num_videos: int, num_frames: int) -> dict[str, dict[str, float]]:
    cv2.setNumThreads(os.cpu_count() or 1)
    clips = [synthetic.render_clip(label=i % len(synthetic.CLASSES), num_frames=num_frames, seed=500 + i)
             for i in range(num_videos)]
    boxes = {f: [MotionBoxDetector(f).detect(frames, frames.shape[2], frames.shape[1]) for frames, _ in clips]
             for f in flows}
    gts = [gt for _, gt in clips]
    ref = flows[0]

    def union_iou(a, b):
        return float(agreement(union_box(a), union_box(b)))

    rows = {}
    for f in flows:
        rows[f] = {
            f"union IoU vs {ref}": np.mean([union_iou(a, b) for a, b in zip(boxes[f], boxes[ref], strict=True)]),
            f"frame IoU vs {ref}": np.mean([agreement(a, b).mean() for a, b in zip(boxes[f], boxes[ref], strict=True)]),
            "union IoU vs truth": np.mean([union_iou(a, g) for a, g in zip(boxes[f], gts, strict=True)]),
            "frame IoU vs truth": np.mean([agreement(a, g).mean() for a, g in zip(boxes[f], gts, strict=True)]),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", nargs="+", default=None, help="backends (default: all, TV-L1 first)")
    parser.add_argument("--short_side", type=int, default=224, help="frame short side for the speed test")
    parser.add_argument("--pairs", type=int, default=20, help="frame pairs timed per backend")
    parser.add_argument("--num_videos", type=int, default=16, help="synthetic clips for the agreement test")
    parser.add_argument("--num_frames", type=int, default=24, help="frames per synthetic clip")
    parser.add_argument("--skip_speed", action="store_true", help="only the agreement table")
    args = parser.parse_args()
    flows = args.flows or sorted(available_flows(), key=lambda f: f != "tvl1")
    all_threads = os.cpu_count() or 1

    if not args.skip_speed:
        speed_table(flows, args.pairs, args.short_side, all_threads)
    rows = agreement_table(flows, args.num_videos, args.num_frames)
    print(f"\nagreement: {args.num_videos} synthetic clips of {args.num_frames} frames (160x120)")
    columns = list(next(iter(rows.values())))
    print(f"{'flow':<8} " + " ".join(f"{c:>20}" for c in columns))
    for flow, row in rows.items():
        print(f"{flow:<8} " + " ".join(f"{row[c]:>20.3f}" for c in columns))


if __name__ == "__main__":
    main()

"""Box quality against ground truth: one row per box folder.

    python -m motion_detection.evaluate --gt_dir data/gt_boxes --pred_dir boxes_tvl1 boxes_dis

Columns: the number of videos and of missing (or invalid) prediction files, mean IoU of the per-video union box
with the true union box, mean per-frame IoU, the share of frames that have a box, and the share of frames with
IoU >= 0.5. A box against no box scores 0, no box where the ground truth has none scores 1, and a missing
prediction file scores 0 throughout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .boxfile import BoxFileError, load_boxes
from .detect import box_iou


def agreement(pred, gt) -> np.ndarray:
    """IoU of xyxy boxes (broadcasting), except that two missing boxes (None / NaN) agree: 1."""
    pred = np.full(4, np.nan) if pred is None else np.asarray(pred, dtype=np.float64)
    gt = np.full(4, np.nan) if gt is None else np.asarray(gt, dtype=np.float64)
    return np.where(np.isnan(pred).any(-1) & np.isnan(gt).any(-1), 1.0, box_iou(pred, gt))


def box_quality(gt_dir: str | Path, pred_dir: str | Path) -> dict:
    """Mean metrics over the videos that have a ground-truth file; a missing or invalid prediction (unreadable,
    or for another frame count or frame size) scores 0. An unreadable ground-truth file raises BoxFileError."""
    gt_files = sorted(Path(gt_dir).rglob("*.json"))
    if not gt_files:
        raise SystemExit(f"no ground-truth box files under {gt_dir}")
    if not Path(pred_dir).is_dir():
        raise SystemExit(f"prediction folder {pred_dir} does not exist")
    union_iou, frame_iou, coverage, hit = [], [], [], []
    missing = 0
    for gt_path in gt_files:
        gt = load_boxes(gt_path)
        try:
            pred = load_boxes(Path(pred_dir) / gt_path.relative_to(gt_dir))
        except BoxFileError:
            pred = None
        if pred is None or (pred.num_frames, pred.width, pred.height) != (gt.num_frames, gt.width, gt.height):
            missing += 1
            union_iou.append(0.0)
            frame_iou.append(0.0)
            coverage.append(0.0)
            hit.append(0.0)
            continue
        union_iou.append(float(agreement(pred.union, gt.union)))
        ious = agreement(pred.frames, gt.frames)
        frame_iou.append(float(ious.mean()))
        coverage.append(float((~np.isnan(pred.frames).any(axis=1)).mean()))
        hit.append(float((ious >= 0.5).mean()))
    return {
        "videos": len(gt_files),
        "missing": missing,
        "union_iou": float(np.mean(union_iou)),
        "frame_iou": float(np.mean(frame_iou)),
        "coverage": float(np.mean(coverage)),
        "frame_hit@0.5": float(np.mean(hit)),
    }


def format_table(rows: dict[str, dict]) -> str:
    header = (f"{'boxes':<28} {'videos':>6} {'missing':>7} {'union IoU':>9} {'frame IoU':>9} {'has box':>7} "
              f"{'IoU>=.5':>7}")
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        lines.append(f"{name:<28} {r['videos']:>6} {r['missing']:>7} {r['union_iou']:>9.3f} {r['frame_iou']:>9.3f} "
                     f"{r['coverage']:>7.2f} {r['frame_hit@0.5']:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt_dir", required=True, help="ground-truth box files (e.g. the synthetic gt_boxes/)")
    parser.add_argument("--pred_dir", required=True, nargs="+", help="one or more folders of extracted box files")
    parser.add_argument("--names", nargs="+",
                        help="row names (default: the folder names, or the paths as given where those repeat)")
    args = parser.parse_args(argv)
    names = args.names or [Path(p).name for p in args.pred_dir]
    if len(names) != len(args.pred_dir):
        parser.error(f"--names gives {len(names)} names for {len(args.pred_dir)} --pred_dir folders")
    if not args.names and len(set(names)) < len(names):
        names = list(args.pred_dir)
    if len(set(names)) < len(names):
        parser.error(f"row names must differ, got {names}")
    try:
        rows = {n: box_quality(args.gt_dir, p) for n, p in zip(names, args.pred_dir, strict=True)}
    except BoxFileError as e:
        raise SystemExit(f"ground truth: {e}") from None
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

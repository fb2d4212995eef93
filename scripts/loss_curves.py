"""Per-epoch training loss of one or more runs (their ``log.txt``), as a table and optionally a PNG plot.

    python scripts/loss_curves.py out/pretrain_tube out/pretrain_motion --png curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def read_losses(run_dir: str | Path, key: str = "train_loss") -> dict[int, float]:
    """The last logged value of ``key`` for every epoch of a run (a line a killed run cut short is skipped, as the
    run scripts' ``utils.read_log`` skips it)."""
    log_file = Path(run_dir) / "log.txt"
    if not log_file.exists():
        raise SystemExit(f"{log_file}: no log (did the run start?)")
    losses = {}
    for line in log_file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and key in record and isinstance(record.get("epoch"), int):
            losses[record["epoch"]] = float(record[key])
    return losses


def table(curves: dict[str, dict[int, float]]) -> str:
    epochs = sorted({e for c in curves.values() for e in c})
    names = list(curves)
    lines = [f"{'epoch':>5} " + " ".join(f"{n:>16}" for n in names)]
    for e in epochs:
        lines.append(f"{e:>5} " + " ".join(f"{curves[n][e]:>16.4f}" if e in curves[n] else f"{'':>16}" for n in names))
    return "\n".join(lines)


def plot(curves: dict[str, dict[int, float]], path: str, size=(640, 400), margin=50) -> None:
    """A plain line plot drawn with OpenCV (no plotting library needed)."""
    width, height = size
    image = np.full((height, width, 3), 255, np.uint8)
    values = [v for c in curves.values() for v in c.values()]
    epochs = [e for c in curves.values() for e in c]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1e-6
    e_min, e_max = min(epochs), max(epochs)  # 0-based, as in log.txt and the table
    span = max(e_max - e_min, 1)
    colours = [(200, 60, 30), (30, 120, 220), (40, 160, 40), (150, 50, 150)]

    def xy(epoch, value):
        return (int(margin + (width - 2 * margin) * (epoch - e_min) / span),
                int(height - margin - (height - 2 * margin) * (value - lo) / (hi - lo)))

    cv2.rectangle(image, (margin, margin), (width - margin, height - margin), (0, 0, 0), 1)
    cv2.putText(image, f"{hi:.4g}", (2, margin + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.putText(image, f"{lo:.4g}", (2, height - margin), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.putText(image, f"epoch {e_min}", (margin, height - margin + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    if e_max > e_min:  # one epoch: a point at the left edge, no second label
        cv2.putText(image, f"epoch {e_max}", (width - margin - 40, height - margin + 15), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 0, 0), 1)
    for i, (name, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        points = np.array([xy(e, curve[e]) for e in sorted(curve)], np.int32)
        cv2.polylines(image, [points], False, colour, 2)
        for point in points:  # a run of one epoch is a point, not a line
            cv2.circle(image, tuple(int(v) for v in point), 3, colour, -1)
        cv2.putText(image, name, (margin + 10, margin + 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(path, image):
        raise SystemExit(f"--png {path}: the plot could not be written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run output folders holding log.txt")
    parser.add_argument("--key", default="train_loss", help="logged value to show (default: train_loss)")
    parser.add_argument("--png", help="also draw the curves into this PNG (its folders are created)")
    parser.add_argument("--names", nargs="+", help="column names (default: the folder names)")
    args = parser.parse_args()
    names = args.names or [Path(r).name for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit("--names must name every run")
    if len(set(names)) != len(names):
        raise SystemExit(f"two runs would share a column ({', '.join(names)}): name them with --names")
    if args.png and Path(args.png).suffix.lower() != ".png":
        parser.error(f"--png {args.png}: the plot is a PNG; give a file name ending in .png")
    curves = {name: read_losses(run, args.key) for name, run in zip(names, args.runs, strict=True)}
    without = [name for name, curve in curves.items() if not curve]
    if len(without) == len(curves):
        raise SystemExit(f"no run logged {args.key} (fine-tuning logs val_* and pretraining does not; log.txt "
                         "names each epoch's keys)")
    if without:
        print(f"note: {', '.join(without)} logged no {args.key}: left out")
        curves = {name: curve for name, curve in curves.items() if curve}
    print(table(curves))
    if args.png:
        plot(curves, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()

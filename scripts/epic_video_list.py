"""VideoMAE V2 list of the EPIC-KITCHENS-100 action segments in annotation csvs, on stdout, for pretraining and box
extraction: ``video start_index total_frames`` per segment of a long video (0-based frames start_frame-1 ..
stop_frame-1), or the bare ``video`` of a pre-trimmed clip, named by the same ``--epic_video_template`` and read
by the same reader as fine-tuning (datasets.read_epic_list).

    python scripts/epic_video_list.py data/epic/train.csv > train_videos.csv
    python scripts/epic_video_list.py data/epic/{train,val,test}.csv --epic_video_template "clips/{narration_id}.mp4"
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import EPIC_VIDEO_TEMPLATE, read_epic_list  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="EPIC-KITCHENS-100 annotation csvs (EPIC_100_train.csv, ...)")
    parser.add_argument("--epic_video_template", default=EPIC_VIDEO_TEMPLATE,
                        help="the video file of a row, from its columns (default %(default)s)")
    args = parser.parse_args()
    logging.getLogger("datasets").setLevel(logging.ERROR)  # a test csv's missing labels do not matter here
    try:
        entries = [entry for csv in args.csv for entry in read_epic_list(csv, args.epic_video_template)]
    except (OSError, ValueError) as e:
        raise SystemExit(f"epic_video_list: {e}") from None
    spaced = next((entry.video for entry in entries if len(entry.video.split()) != 1), None)
    if spaced is not None:  # the list's readers split a line on whitespace: they would look for its first word
        raise SystemExit(f"epic_video_list: --epic_video_template {args.epic_video_template} names {spaced!r}, "
                         "with whitespace, which a VideoMAE list cannot hold: name the clips without it")
    try:
        for entry in entries:
            print(entry.video if entry.num_frames is None else f"{entry.video} {entry.first_frame} {entry.num_frames}")
        sys.stdout.flush()
    except BrokenPipeError:  # a reader that stopped early (| head): not an error of this script
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush would raise again


if __name__ == "__main__":
    main()

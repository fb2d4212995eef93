"""The benchmark scripts run (tiny sizes) and print their tables, so they cannot rot unnoticed."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_motion_prints_speed_and_agreement_tables():
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_motion.py", "--pairs", "2", "--short_side", "64", "--num_videos", "1",
         "--num_frames", "4", "--flows", "dis"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    speed_rows = [line.split() for line in lines if line.startswith("dis ") and len(line.split()) == 5]
    assert speed_rows and all(float(row[2]) > 0 for row in speed_rows)
    agreement_row = [line.split() for line in lines if line.startswith("dis ") and len(line.split()) == 5][-1]
    assert float(agreement_row[1]) == 1.0  # a backend agrees with itself

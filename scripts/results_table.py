"""Test results of several fine-tuning runs side by side (each run's ``test_results.json``).

    python scripts/results_table.py out/ft_videomae out/ft_mofo --names VideoMAE MOFO
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="fine-tuning output folders holding test_results.json")
    parser.add_argument("--names", nargs="+", help="row names (default: the folder names)")
    args = parser.parse_args()
    names = args.names or [Path(r).name for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit("--names must name every run")
    if len(set(names)) != len(names):
        raise SystemExit(f"two runs would share a row ({', '.join(names)}): name them with --names")
    results = {}
    for name, run in zip(names, args.runs, strict=True):
        path = Path(run) / "test_results.json"
        if not path.exists():
            raise SystemExit(f"{path}: missing (did the run finish its test?)")
        results[name] = json.loads(path.read_text())
    columns = list(dict.fromkeys(k for r in results.values() for k in r if "acc" in k))  # SSV2 and EPIC runs mix
    width = max(len(n) for n in names)
    print(f"{'run':<{width}} " + " ".join(f"{c:>12}" for c in columns) + f" {'videos':>7}")
    for name, r in results.items():
        cells = (f"{r[c]:>12.2f}" if c in r else f"{'':>12}" for c in columns)
        print(f"{name:<{width}} " + " ".join(cells) + f" {r['videos']:>7}")


if __name__ == "__main__":
    main()

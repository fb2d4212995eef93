"""Motion-extraction benchmark: frame pairs per second per flow backend, and box agreement between backends.

    python benchmarks/bench_motion.py                      # this machine, defaults below
    python benchmarks/bench_motion.py --pairs 10 --num_videos 4   # quick

1. Speed: flow alone and the whole per-pair detection (flow + motion map + box) on synthetic frames with the short
   side at ``--short_side`` (default 224) and ``--aspect`` (default 4:3, i.e. 298x224; 1 for 224x224), with OpenCV
   (and torch) limited to 1 thread (cost per core) and with all threads. ``tvl1_torch`` gets ``--batch_size`` pairs
   per call, on the CPU and, when there is one, on a CUDA GPU (rows labelled ``tvl1_torch[device,bN]``,
   ``[device,bN,compile]`` through torch.compile; ``--torch_devices``, ``--batch_size`` and ``--torch_modes`` pick
   them). A GPU row's pairs/s includes copying the grey frames to the device and the flows back (as extraction
   does), the compile in an untimed warm-up call.
2. Agreement on the synthetic set (in memory, 160x120): union-box and per-frame IoU of every backend's boxes
   with the first backend's (TV-L1, the paper's) and with the ground truth (two missing boxes agree).
3. With ``codec_mv`` among the flows: codec motion vectors against TV-L1 on the same clips encoded to mp4 files
   (mp4v, and libx264 when PyAV has it) at each ``--codec_sizes``: IoUs and frames/s from the file (decoding
   included). Backends that read the file (``codec_mv``) are left out of tables 1 and 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "scripts"),
               str(Path(__file__).resolve().parent)]

from bench_pretrain_step import environment_lines, markdown_table  # noqa: E402

import make_synthetic_dataset as synthetic  # noqa: E402
import utils  # noqa: E402
from motion_detection import MotionBoxDetector, available_flows, create_flow, union_box  # noqa: E402
from motion_detection.evaluate import agreement  # noqa: E402

COMPILE_GRAPH_LIMIT = 64  # graphs per compiled function torch.compile may build before it falls back to eager


def gray_frames(num_frames: int, short_side: int, aspect: float = 4 / 3) -> list[np.ndarray]:
    width = int(round(short_side * aspect / 2)) * 2
    frames, _ = synthetic.render_clip(label=0, num_frames=num_frames, width=width, height=short_side, seed=0)
    return frames


def time_backend(
    flow: str, frames: np.ndarray, threads: int, flow_params: dict | None = None, batch_size: int = 1
) -> tuple[float, float]:
    """(flow-only pairs/s, full-detection pairs/s), ``batch_size`` pairs per backend call, ``threads`` OpenCV and
    torch threads."""
    detector = MotionBoxDetector(flow, flow_params, short_side=0, batch_size=batch_size)
    cv2.setNumThreads(threads)
    if "torch" in sys.modules:  # imported by a torch backend
        sys.modules["torch"].set_num_threads(threads)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    pairs = len(gray) - 1
    first = min(batch_size, pairs)
    detector.backend(gray[:first], gray[1 : first + 1])  # warm-up
    if (flow_params or {}).get("compile"):
        detector.backend(gray[:1], gray[1:2])  # and torch.compile's graphs for a single pair, which it specialises
    start = time.perf_counter()
    for i in range(0, pairs, batch_size):
        j = min(i + batch_size, pairs)
        detector.backend(gray[i:j], gray[i + 1 : j + 1])
    flow_rate = pairs / (time.perf_counter() - start)
    start = time.perf_counter()
    detector.detect(frames, frames.shape[2], frames.shape[1])
    detect_rate = pairs / (time.perf_counter() - start)
    return flow_rate, detect_rate


def speed_configs(flow: str, batch_sizes: list[int], all_threads: int, torch_devices: list[str],
                  torch_modes: list[str]) -> list[tuple[str, dict | None, int, list[int]]]:
    """(row label, flow parameters, pairs per call, thread counts) timed for a backend: the OpenCV ones one pair
    per call, with 1 thread (the cost per core) and all; tvl1_torch each of ``batch_sizes`` pairs per call on each
    of ``torch_devices``, ``eager`` and/or ``compile`` (torch.compile), on a GPU with all threads only."""
    threads = sorted({1, all_threads})
    if flow != "tvl1_torch":
        return [(flow, None, 1, threads)]
    return [(f"{flow}[{d},b{b}{',compile' if mode == 'compile' else ''}]", {"device": d, "compile": mode == "compile"},
             b, threads if d == "cpu" else [all_threads])
            for d in torch_devices for mode in torch_modes for b in batch_sizes]


def speed_table(flows: list[str], pairs: int, short_side: int, all_threads: int, batch_sizes: list[int],
                torch_devices: list[str], torch_modes: list[str], aspect: float = 4 / 3) -> None:
    frames = gray_frames(pairs + 1, short_side, aspect)
    print(f"speed: {frames.shape[2]}x{frames.shape[1]}, {pairs} pairs, OpenCV {cv2.__version__}, {all_threads} CPUs")
    compiling = "tvl1_torch" in flows and "compile" in torch_modes
    if compiling:  # every batch size and device gets its graphs: past dynamo's default of 8 a row would run eager
        torch._dynamo.config.recompile_limit = COMPILE_GRAPH_LIMIT
    rows = [(flow, *config) for flow in flows
            for config in speed_configs(flow, batch_sizes, all_threads, torch_devices, torch_modes)]
    print(markdown_table(["flow", "threads", "flow pairs/s", "detect pairs/s", "ms per pair (detect)"], []),
          flush=True)
    for flow, label, flow_params, batch, thread_counts in rows:
        for threads in thread_counts:  # a row as it ends: a time limit costs only the rows not yet timed
            flow_rate, detect_rate = time_backend(flow, frames, threads, flow_params, batch)
            print(f"| {label} | {threads} | {flow_rate:.2f} | {detect_rate:.2f} | {1000 / detect_rate:.1f} |",
                  flush=True)
    if compiling:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        fallback = "so none fell back to eager" if graphs < COMPILE_GRAPH_LIMIT else "SOME MAY HAVE RUN EAGER"
        print(f"torch.compile: {graphs} graphs in all, under a limit of {COMPILE_GRAPH_LIMIT} per function, {fallback}")


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


def encode_clips(folder: Path, clips: list, encoder: str) -> list[Path]:
    """Write clips to mp4: ``mp4v`` with OpenCV as the synthetic dataset does, any other name with PyAV."""
    paths = []
    for i, (frames, _) in enumerate(clips):
        path = folder / f"{encoder}_{frames.shape[2]}x{frames.shape[1]}_{i}.mp4"
        if encoder == "mp4v":
            synthetic.write_mp4(path, frames, 12)
        else:
            import av

            with av.open(str(path), "w") as container:
                stream = container.add_stream(encoder, rate=12)
                stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                for frame in frames:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
        paths.append(path)
    return paths


def mean_ious(boxes: list, reference: list) -> tuple[float, float]:
    """Mean union-box IoU and mean per-frame IoU of per-video boxes against reference boxes."""
    union = np.mean([agreement(union_box(a), union_box(b)) for a, b in zip(boxes, reference, strict=True)])
    frame = np.mean([agreement(a, b).mean() for a, b in zip(boxes, reference, strict=True)])
    return float(union), float(frame)


def codec_table(num_videos: int, num_frames: int, sizes: list[str]) -> None:
    """codec_mv (both reference models) and TV-L1 boxes of the same encoded files: IoUs and frames/s."""
    import av  # PyAV: only this table needs it

    cv2.setNumThreads(os.cpu_count() or 1)
    detectors = {"codec_mv": MotionBoxDetector("codec_mv"),
                 "codec_mv adjacent": MotionBoxDetector("codec_mv", {"reference": "adjacent"}),
                 "tvl1": MotionBoxDetector("tvl1")}
    encoders = ["mp4v"] + (["libx264"] if "libx264" in av.codecs_available else [])
    columns = ["union IoU vs tvl1", "frame IoU vs tvl1", "union IoU vs truth", "frame IoU vs truth", "frames/s"]
    print(f"\ncodec motion vectors: {num_videos} synthetic clips of {num_frames} frames, PyAV {av.__version__}")
    print(markdown_table(["encoder", "size", "flow", *columns], []), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            width, height = map(int, size.split("x"))
            clips = [synthetic.render_clip(i % len(synthetic.CLASSES), num_frames, width, height, seed=500 + i)
                     for i in range(num_videos)]
            for encoder in encoders:
                paths = encode_clips(Path(tmp), clips, encoder)
                boxes, rates = {}, {}
                for name, detector in detectors.items():
                    start = time.perf_counter()
                    boxes[name] = [detector.detect_video(path, path.name).frames for path in paths]
                    rates[name] = num_videos * num_frames / (time.perf_counter() - start)
                truth = [gt for _, gt in clips]
                for name in detectors:
                    values = [*mean_ious(boxes[name], boxes["tvl1"]), *mean_ious(boxes[name], truth)]
                    print("| " + " | ".join([encoder, size, name, *(f"{v:.3f}" for v in values),
                                             f"{rates[name]:.1f}"]) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", nargs="+", default=None, help="backends (default: all, TV-L1 first)")
    parser.add_argument("--short_side", type=utils.positive_int, default=224,
                        help="frame short side for the speed test")
    parser.add_argument("--aspect", type=float, default=4 / 3,
                        help="width / height of the speed test's frames (default 4:3, 298x224; 1 for 224x224)")
    parser.add_argument("--pairs", type=utils.positive_int, default=20, help="frame pairs timed per backend")
    parser.add_argument("--num_videos", type=utils.positive_int, default=16,
                        help="synthetic clips for the agreement test")
    parser.add_argument("--num_frames", type=utils.positive_int, default=24, help="frames per synthetic clip")
    parser.add_argument("--skip_speed", action="store_true", help="only the agreement table")
    parser.add_argument("--batch_size", type=utils.positive_int, nargs="+", default=[8],
                        help="frame pairs per call of a batched backend (tvl1_torch) in the speed test; a row each")
    parser.add_argument("--torch_devices", nargs="+", default=None, choices=["cpu", "cuda"],
                        help="devices of the tvl1_torch speed rows (default: cpu, and cuda when there is a GPU)")
    parser.add_argument("--torch_modes", nargs="+", default=["eager"], choices=["eager", "compile"],
                        help="tvl1_torch speed rows run eagerly and/or through torch.compile (its compilation is "
                        "in the untimed warm-up call)")
    parser.add_argument("--codec_sizes", nargs="+", default=["160x120", "320x240"],
                        help="frame sizes (WxH) of the encoded clips for the codec_mv table")
    args = parser.parse_args()
    if not args.aspect >= 1:
        parser.error(f"--aspect is width / height with the height the short side: >= 1, got {args.aspect}")
    if args.num_frames < 2:
        parser.error(f"--num_frames: a clip needs 2 frames for a flow, got {args.num_frames}")
    if args.short_side < synthetic.MIN_FRAME_SIDE:
        parser.error(f"--short_side: at least {synthetic.MIN_FRAME_SIDE} pixels, got {args.short_side}")
    flows = args.flows or sorted(available_flows(), key=lambda f: f != "tvl1")
    torch_devices = args.torch_devices
    if torch_devices is None and "tvl1_torch" in flows:
        torch_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in (torch_devices or []) and not torch.cuda.is_available():
        parser.error("--torch_devices cuda but no GPU is visible")
    all_threads = os.cpu_count() or 1

    print("\n".join(environment_lines(torch.device("cuda" if "cuda" in (torch_devices or []) else "cpu"))))
    file_flows = [f for f in flows if hasattr(create_flow(f), "flows_from_video")]
    flows = [f for f in flows if f not in file_flows]

    if not args.skip_speed and flows:
        speed_table(flows, args.pairs, args.short_side, all_threads, args.batch_size, torch_devices or [],
                    args.torch_modes, args.aspect)
    if flows:
        rows = agreement_table(flows, args.num_videos, args.num_frames)
        print(f"\nagreement: {args.num_videos} synthetic clips of {args.num_frames} frames (160x120)")
        columns = list(next(iter(rows.values())))
        print(markdown_table(["flow", *columns], [[flow, *(f"{row[c]:.3f}" for c in columns)]
                                                  for flow, row in rows.items()]))
    if "codec_mv" in file_flows:
        codec_table(args.num_videos, args.num_frames, args.codec_sizes)


if __name__ == "__main__":
    main()

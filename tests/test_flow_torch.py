"""The batched PyTorch TV-L1 backend (``tvl1_torch``) against ground truth and OpenCV's DualTVL1, on the CPU.

The tests run torch with one intra-op thread: on the 2-core CI VM, OpenMP's spinning threads make 2 threads many
times slower than 1 whenever other processes share the cores, and 1 thread keeps this file at about 30 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import make_synthetic_dataset as synthetic
from motion_detection import MotionBoxDetector, create_flow, load_boxes, union_box
from motion_detection.detect import prefetch
from motion_detection.evaluate import agreement
from motion_detection.extract_boxes import build_detector, build_parser, default_workers
from motion_detection.flow import TVL1Params
from motion_detection.flow_torch import DEVICE_CHECK_EVERY, median_filter, median_network, pyramid_sizes, tvl1_flow

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def texture(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    t = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    return 15 + 220 * (t - t.min()) / (t.max() - t.min())


def known_flow_pair(seed: int, amplitude: float, square: bool = True, h: int = 96, w: int = 128):
    """(prev, nxt, flow): a texture seen through a smooth sinusoidal flow field of the given amplitude (pixels)
    and, optionally, a textured square translating by (3, -2) over it; ``prev[y, x] = nxt[y + v, x + u]``."""
    rng = np.random.default_rng(seed)
    nxt = texture(rng, h, w, 3.0)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi, 4)
    u = (amplitude * np.sin(2 * np.pi * xs / w + a[0]) * np.cos(2 * np.pi * ys / h + a[1])).astype(np.float32)
    v = (amplitude * np.cos(1.4 * np.pi * xs / w + a[2]) * np.sin(2.6 * np.pi * ys / h + a[3])).astype(np.float32)
    flow = np.stack([u, v], -1)
    prev = cv2.remap(nxt, xs + u, ys + v, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    if square:
        s, y0, x0, d = h // 4, h // 3, w // 3, (3.0, -2.0)
        patch, canvas, mask = texture(rng, s, s, 1.5), np.zeros_like(nxt), np.zeros_like(nxt)
        prev[y0 : y0 + s, x0 : x0 + s] = canvas[y0 : y0 + s, x0 : x0 + s] = patch
        mask[y0 : y0 + s, x0 : x0 + s] = 1
        moved, alpha = (cv2.remap(m, xs - d[0], ys - d[1], cv2.INTER_LINEAR) for m in (canvas, mask))
        nxt = nxt * (1 - alpha) + moved
        flow[y0 : y0 + s, x0 : x0 + s] = d
    as_uint8 = lambda image: np.clip(np.round(image), 0, 255).astype(np.uint8)  # noqa: E731
    return as_uint8(prev), as_uint8(nxt), flow


def epe(flow: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(flow - truth, axis=-1).mean())


@pytest.fixture(scope="module")
def known_pairs():
    cases = [(0, 1.0, True), (1, 2.0, True), (2, 3.0, True), (3, 2.0, False)]
    prev, nxt, truth = zip(*(known_flow_pair(*case) for case in cases), strict=True)
    return np.stack(prev), np.stack(nxt), np.stack(truth)


@pytest.fixture(scope="module")
def torch_flows(known_pairs):
    prev, nxt, _ = known_pairs
    return create_flow("tvl1_torch", device="cpu")(prev, nxt)


def test_epe_no_worse_than_opencv(known_pairs, torch_flows):
    """The same algorithm as OpenCV's, as accurate and close to its flow. Measured (CI VM, 2026-12-01): mean EPE
    0.2060 px (tvl1_torch) vs 0.2065 (OpenCV); the two flows differ by 0.015."""
    prev, nxt, truth = known_pairs
    cv2.setNumThreads(1)
    opencv = create_flow("tvl1")(prev, nxt)
    ours = np.mean([epe(f, t) for f, t in zip(torch_flows, truth, strict=True)])
    theirs = np.mean([epe(f, t) for f, t in zip(opencv, truth, strict=True)])
    between = np.mean([epe(f, g) for f, g in zip(torch_flows, opencv, strict=True)])
    print(f"mean EPE: tvl1_torch {ours:.3f}, OpenCV {theirs:.3f}, between them {between:.3f}")
    assert ours <= theirs
    assert ours < 0.25 and between < 0.03


def test_output_format_and_still_frames(known_pairs, torch_flows):
    prev, nxt, _ = known_pairs
    assert torch_flows.shape == (*prev.shape, 2) and torch_flows.dtype == np.float32
    still = create_flow("tvl1_torch", device="cpu")(prev[:1], prev[:1])
    assert np.abs(still).max() < 0.01


def test_batched_equals_one_by_one(known_pairs, torch_flows):
    """A pair's iterations do not depend on the others in its batch (converged pairs leave the working batch)."""
    prev, nxt, _ = known_pairs
    backend = create_flow("tvl1_torch", device="cpu")
    singles = np.stack([backend.pair(p, n) for p, n in zip(prev, nxt, strict=True)])
    np.testing.assert_allclose(torch_flows, singles, atol=1e-4)
    reordered = backend(prev[::-1].copy(), nxt[::-1].copy())[::-1]
    np.testing.assert_allclose(torch_flows, reordered, atol=1e-4)


def test_stopping_test_read_every_few_iterations_gives_the_same_flow(known_pairs, torch_flows):
    """On a GPU the stopping test is read on the host every DEVICE_CHECK_EVERY iterations, and a pair that stops in
    between is frozen by a mask until then: each pair still ends on its own iteration, so the flow is the same to
    the bit. A still pair (stops after one iteration) joins the batch; 7 does not divide the 30 inner iterations,
    so frozen pairs also meet an outer iteration's median filter, which must leave them alone."""
    prev, nxt, _ = known_pairs
    images = torch.from_numpy(np.stack([np.concatenate([prev, prev[:1]]), np.concatenate([nxt, prev[:1]])], 1))
    expected = torch.from_numpy(torch_flows).permute(0, 3, 1, 2)
    for check_every in (3, 7, DEVICE_CHECK_EVERY):
        flow = tvl1_flow(images[:, :1].float(), images[:, 1:].float(), check_every=check_every)
        assert torch.equal(flow[:-1], expected)
        assert flow[-1].abs().max() < 0.01


def test_compiled_matches_eager(known_pairs, torch_flows):
    """torch.compile of the iterations gives the eager flow to float rounding, both as on a GPU (stopping test read
    every DEVICE_CHECK_EVERY iterations, masks) and as on a CPU (``compile=True`` there: read every iteration);
    ``compile`` is not recorded in box files. Measured (CI VM, 2026-12-01): mean EPE 0.0002 px from the eager flow."""
    prev, nxt, truth = known_pairs
    images = torch.from_numpy(np.stack([prev, nxt], 1)).float()
    as_gpu = tvl1_flow(images[:, :1], images[:, 1:], compile=True, check_every=DEVICE_CHECK_EVERY)
    backend = create_flow("tvl1_torch", device="cpu", compile=True)
    assert backend.compile and backend.params() == create_flow("tvl1_torch", device="cpu").params()
    for flows in (as_gpu.permute(0, 2, 3, 1).numpy(), backend(prev, nxt)):
        between = np.mean([epe(f, g) for f, g in zip(flows, torch_flows, strict=True)])
        print(f"mean EPE between compiled and eager: {between:.4f}")
        assert between < 0.01
        assert np.mean([epe(f, t) for f, t in zip(flows, truth, strict=True)]) < 0.25
    with pytest.raises(ValueError, match="check_every"):
        tvl1_flow(images[:1, :1], images[:1, 1:], check_every=0)


def test_median_network_and_filter():
    for m in (9, 25):
        network = median_network(m)
        for values in np.random.default_rng(m).permutation(np.tile(np.arange(m), (200, 1)), axis=1):
            wires = list(values)
            for i, j, _, _ in network:
                wires[i], wires[j] = min(wires[i], wires[j]), max(wires[i], wires[j])
            assert wires[m // 2] == m // 2
    flow = torch.randn(2, 2, 11, 13)
    windows = F.pad(flow, (2, 2, 2, 2), mode="replicate").unfold(2, 5, 1).unfold(3, 5, 1)
    assert torch.equal(median_filter(flow, 5), windows.reshape(2, 2, 11, 13, 25).median(-1).values)


def test_params_and_validation():
    backend = create_flow("tvl1_torch", device="cpu")
    params = backend.params()
    assert {k: params[k] for k in asdict(TVL1Params())} == asdict(TVL1Params())
    assert "device" not in params and params["implementation"].startswith("torch")
    assert not backend.on_accelerator
    assert create_flow("tvl1_torch", device="cpu", warps=3).params()["warps"] == 3
    for bad in ({"median_filtering": 4}, {"scale_step": 1.0}, {"warps": 0}, {"device": "nonsense"}):
        with pytest.raises(ValueError):
            create_flow("tvl1_torch", **bad)
    assert pyramid_sizes(120, 160, 5, 0.8) == [(120, 160), (96, 128), (77, 102), (62, 82), (50, 66)]
    assert pyramid_sizes(20, 24, 5, 0.8) == [(20, 24), (16, 19)]  # OpenCV builds no level under 16 pixels
    assert pyramid_sizes(12, 16, 5, 0.8) == [(12, 16)]


def test_boxes_agree_with_opencv():
    """Union-box IoU with OpenCV TV-L1's boxes on clips of four classes (move_left, move_down, approach,
    rotate_ccw; moving camera, 160x120, 10 frames). Measured (revision 2): union 1.000, 1.000, 0.981, 0.971; frame
    IoU 0.991, 0.992, 0.995, 0.988."""
    cv2.setNumThreads(1)
    opencv, ours = MotionBoxDetector("tvl1"), MotionBoxDetector("tvl1_torch", {"device": "cpu"})
    union_ious, frame_ious = [], []
    for label in (0, 3, 4, 7):
        frames, _ = synthetic.render_clip(label=label, num_frames=10, seed=1000 + label, camera_motion=True)
        a, b = (d.detect(frames, frames.shape[2], frames.shape[1]) for d in (opencv, ours))
        union_ious.append(float(agreement(union_box(a), union_box(b))))
        frame_ious.append(float(agreement(a, b).mean()))
    print("IoU vs OpenCV: union", np.round(union_ious, 3), "frame", np.round(frame_ious, 3))
    assert np.mean(union_ious) >= 0.95 and min(union_ious) >= 0.9 and min(frame_ious) >= 0.95


def test_prefetch_overlaps_propagates_errors_and_stops():
    assert list(prefetch(iter(range(100)), 3)) == list(range(100))

    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        list(prefetch(failing(), 2))
    produced, closed = [], threading.Event()

    def endless():
        try:
            while True:
                produced.append(len(produced))
                yield produced[-1]
        finally:
            closed.set()

    stream = prefetch(endless(), 2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.is_set() and len(produced) <= 3 + 2 + 1

    frames, _ = synthetic.render_clip(label=2, num_frames=8, seed=5)
    detector = MotionBoxDetector("dis", batch_size=3)
    direct = list(detector.iter_flows(frames))
    detector.backend.on_accelerator = True  # as tvl1_torch on a GPU: decode on a background thread
    np.testing.assert_array_equal(np.stack(direct), np.stack(list(detector.iter_flows(frames))))


def test_extract_boxes_cli(tmp_path):
    """The CLI with --flow tvl1_torch in one process; box files record no device, so a rerun on another device
    finds them done. Importing the package does not import torch."""
    root = tmp_path / "videos"
    for i, label in enumerate((1, 6)):
        frames, _ = synthetic.render_clip(label=label, num_frames=6, seed=20 + i, camera_motion=True)
        synthetic.write_mp4(root / f"{i}.mp4", frames, 12)
    (tmp_path / "list.csv").write_text("0.mp4 1\n1.mp4 6\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "motion_detection.extract_boxes", "--video_list", str(tmp_path / "list.csv"),
               "--video_root", str(root), "--output_dir", str(tmp_path / "boxes"), "--flow", "tvl1_torch",
               "--num_workers", "0", "--batch_size", "3"]
    result = subprocess.run([*command, "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 written" in result.stdout
    boxes = load_boxes(tmp_path / "boxes" / "0.json")
    assert boxes.flow["method"] == "tvl1_torch" and boxes.num_frames == 6
    assert boxes.flow["params"] == create_flow("tvl1_torch", device="cpu").params()
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "2 already done" in rerun.stdout, rerun.stderr
    for flag in ("--device=cpu", "--compile"):
        wrong = subprocess.run([*command, "--flow", "dis", flag], cwd=REPO, capture_output=True, text=True)
        assert wrong.returncode == 2 and f"{flag.split('=')[0]} applies to tvl1_torch" in wrong.stderr
    lazy = "import sys, motion_detection.extract_boxes; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", lazy], cwd=REPO).returncode == 0


def test_extract_boxes_settings_by_device():
    """What every worker gets: the flow settings, and batch size and worker count defaults for a CPU run (on a GPU:
    64 pairs per call, no workers; the CUDA test below)."""
    parser = build_parser()
    base = ["--video_list", "list.csv", "--output_dir", "boxes", "--flow", "tvl1_torch", "--device", "cpu"]
    args = parser.parse_args([*base, "--compile"])
    detector, kwargs = build_detector(args)
    assert kwargs["flow_params"] == {"device": "cpu", "compile": True} and detector.backend.compile
    assert kwargs["batch_size"] == 8 and args.num_workers == default_workers()
    args = parser.parse_args([*base, "--batch_size", "5", "--num_workers", "0"])
    _, kwargs = build_detector(args)
    assert kwargs["batch_size"] == 5 and args.num_workers == 0 and kwargs["flow_params"] == {"device": "cpu"}
    with pytest.raises(ValueError, match="--compile applies to tvl1_torch"):
        build_detector(parser.parse_args([*base[:-4], "--flow", "dis", "--compile"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(known_pairs, torch_flows):
    prev, nxt, truth = known_pairs
    backend = create_flow("tvl1_torch", device="cuda")
    assert backend.on_accelerator
    flows = backend(prev, nxt)
    assert np.mean([epe(f, g) for f, g in zip(flows, torch_flows, strict=True)]) < 0.05
    assert np.mean([epe(f, t) for f, t in zip(flows, truth, strict=True)]) < 0.25
    singles = np.stack([backend.pair(p, n) for p, n in zip(prev, nxt, strict=True)])
    assert np.mean([epe(f, g) for f, g in zip(flows, singles, strict=True)]) < 0.05
    compiled = create_flow("tvl1_torch", device="cuda", compile=True)(prev, nxt)
    assert np.mean([epe(f, g) for f, g in zip(compiled, flows, strict=True)]) < 0.01
    args = build_parser().parse_args(["--video_list", "list.csv", "--output_dir", "boxes", "--flow", "tvl1_torch"])
    assert build_detector(args)[1]["batch_size"] == 64 and args.num_workers == 0
    frames, _ = synthetic.render_clip(label=4, num_frames=10, seed=1004, camera_motion=True)
    cpu, gpu = (MotionBoxDetector("tvl1_torch", {"device": d}).detect(frames, 160, 120) for d in ("cpu", "cuda"))
    assert agreement(union_box(cpu), union_box(gpu)) >= 0.9

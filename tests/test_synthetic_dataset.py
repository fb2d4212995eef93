"""The synthetic dataset: file layout, decodable videos, valid boxes, motion that matches each class, and the
scene options (the easy preset and the single-setting flags)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import decord
import numpy as np
import pytest

from make_synthetic_dataset import (
    CLASSES,
    DARK_BACKGROUND_SCALE,
    DIFFICULTIES,
    Scene,
    clip_seed,
    make_dataset,
    render_clip,
    render_clip_details,
    split_indices,
)
from motion_detection.boxfile import load_boxes

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic_dataset.py"
NUM_VIDEOS, NUM_FRAMES, WIDTH, HEIGHT, FPS, SEED = 16, 12, 96, 72, 10, 3
CLIP_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """A small dataset written by the command line, exactly as the demo runs it."""
    out = tmp_path_factory.mktemp("synthetic")
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--num_videos", str(NUM_VIDEOS)]
    command += ["--num_frames", str(NUM_FRAMES), "--width", str(WIDTH), "--height", str(HEIGHT)]
    command += ["--fps", str(FPS), "--seed", str(SEED)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    return out


def read_split(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines()
    assert all(re.fullmatch(r"\d{6}\.mp4 \d+", line) for line in lines), lines
    return [(name, int(label)) for name, label in (line.split(" ") for line in lines)]


def test_layout_splits_and_classes(dataset_dir):
    assert (dataset_dir / "classes.txt").read_text().splitlines() == CLASSES
    splits = {name: read_split(dataset_dir / f"{name}.csv") for name in ("train", "val", "test")}
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 8, "val": 4, "test": 4}
    names = [video for rows in splits.values() for video, _ in rows]
    assert sorted(names) == [f"{i:06d}.mp4" for i in range(NUM_VIDEOS)]
    for rows in splits.values():
        for video, label in rows:
            assert label == int(video[:6]) % len(CLASSES)
            assert (dataset_dir / "videos" / video).stat().st_size > 1000
    assert {label for _, label in splits["train"]} == set(range(len(CLASSES)))


def test_split_is_deterministic_and_class_balanced():
    labels = [i % len(CLASSES) for i in range(50)]
    splits = split_indices(labels, seed=7, val_fraction=0.2, test_fraction=0.1)
    assert splits == split_indices(labels, seed=7, val_fraction=0.2, test_fraction=0.1)
    assert splits != split_indices(labels, seed=8, val_fraction=0.2, test_fraction=0.1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [35, 10, 5]
    for indices in splits.values():
        counts = Counter(labels[i] for i in indices)
        assert max(counts.values()) - min(counts.get(c, 0) for c in range(len(CLASSES))) <= 1
    with pytest.raises(ValueError):
        split_indices(labels, seed=0, val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize("index", [0, 5])
def test_videos_decode_and_match_the_rendered_clip(dataset_dir, index):
    path = dataset_dir / "videos" / f"{index:06d}.mp4"
    decoded = decord.VideoReader(str(path)).get_batch(range(NUM_FRAMES)).asnumpy()
    assert decoded.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    capture = cv2.VideoCapture(str(path))
    cv2_frames = []
    while (frame := capture.read()[1]) is not None:
        cv2_frames.append(frame)
    capture.release()
    assert len(cv2_frames) == NUM_FRAMES and cv2_frames[0].shape == (HEIGHT, WIDTH, 3)

    rendered, _ = render_clip(index % len(CLASSES), NUM_FRAMES, WIDTH, HEIGHT, seed=clip_seed(SEED, index))
    error = np.abs(decoded.astype(np.float32) - rendered).mean()
    swapped_error = np.abs(decoded[..., ::-1].astype(np.float32) - rendered).mean()
    assert error < 12, f"mp4v round trip is too lossy: mean abs error {error:.1f}"
    assert swapped_error > error + 5, "colour channels are swapped somewhere between RGB and BGR"


def test_ground_truth_box_files(dataset_dir):
    for index in range(NUM_VIDEOS):
        boxes = load_boxes(dataset_dir / "gt_boxes" / f"{index:06d}.json")
        assert boxes.video == f"{index:06d}.mp4"
        assert (boxes.width, boxes.height, boxes.num_frames, boxes.fps) == (WIDTH, HEIGHT, NUM_FRAMES, FPS)
        assert boxes.flow == {"method": "ground_truth"}
        assert boxes.extra["label"] == index % len(CLASSES)
        assert boxes.extra["class_name"] == CLASSES[index % len(CLASSES)]
        assert set(boxes.extra["camera"]) == {"pan_px_per_frame", "zoom_per_frame"}
        assert boxes.extra["scene"] == asdict(Scene())
        frames = boxes.frames
        assert np.all(np.isfinite(frames))
        assert np.all(frames[:, 0] < frames[:, 2]) and np.all(frames[:, 1] < frames[:, 3])
        expected_union = [frames[:, 0].min(), frames[:, 1].min(), frames[:, 2].max(), frames[:, 3].max()]
        np.testing.assert_allclose(boxes.union, expected_union)


def test_tiny_dataset_keeps_train_non_empty(tmp_path):
    summary = make_dataset(tmp_path, 2, num_frames=4, width=64, height=48)
    assert summary["split_sizes"] == {"train": 2, "val": 0, "test": 0}
    assert summary["video_dir"] == tmp_path / "videos" and summary["labels"] == [0, 1]
    assert summary["split_files"]["val"].read_text() == ""
    assert len(read_split(summary["split_files"]["train"])) == 2
    with pytest.raises(ValueError, match="even"):
        make_dataset(tmp_path / "odd", 1, width=65, height=48)


def test_smaller_dataset_into_the_same_folder_removes_the_earlier_clips(tmp_path):
    make_dataset(tmp_path, 4, num_frames=4, width=64, height=48)
    (tmp_path / "videos" / "notes.mp4").write_text("not the generator's")
    summary = make_dataset(tmp_path, 2, num_frames=4, width=64, height=48)
    assert summary["stale_removed"] == 4
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["000000.mp4", "000001.mp4", "notes.mp4"]
    assert sorted(p.name for p in (tmp_path / "gt_boxes").iterdir()) == ["000000.json", "000001.json"]
    assert make_dataset(tmp_path, 2, num_frames=4, width=64, height=48)["stale_removed"] == 0


def box_centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def background_shift(background: np.ndarray) -> np.ndarray:
    """Mean per-frame (dx, dy) of the object-free scene, by phase correlation."""
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) for frame in background]
    return np.mean([cv2.phaseCorrelate(a, b)[0] for a, b in zip(gray[:-1], gray[1:], strict=True)], axis=0)


def rotation_curl(frames: np.ndarray, boxes: np.ndarray) -> float:
    """Mean curl of Farneback flow inside the object (positive = clockwise on screen, y pointing down)."""
    curls = []
    for t in range(len(frames) - 1):
        gray = [cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY) for i in (t, t + 1)]
        flow = cv2.calcOpticalFlowFarneback(gray[0], gray[1], None, 0.5, 3, 9, 3, 5, 1.1, 0)
        x1, y1, x2, y2 = boxes[t].astype(int)
        inset = (x2 - x1) // 4, (y2 - y1) // 4
        inner = flow[y1 + inset[1] : y2 - inset[1], x1 + inset[0] : x2 - inset[0]]
        curls.append((np.gradient(inner[..., 1], axis=1) - np.gradient(inner[..., 0], axis=0)).mean())
    return float(np.mean(curls))


def orientation_steps(frames: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per-frame change (degrees, positive = clockwise on screen) of the orientation of the pixels that differ from
    the object-free scene, from their second moments; the object has a long side, so the orientation is defined."""
    angles = []
    for frame, scene in zip(frames, background, strict=True):
        mask = (np.abs(frame.astype(np.int16) - scene).sum(axis=2) > 60).astype(np.uint8)
        moments = cv2.moments(mask, binaryImage=True)
        angles.append(0.5 * np.degrees(np.arctan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"])))
    return (np.diff(angles) + 90) % 180 - 90  # the orientation is defined modulo 180 degrees


@pytest.mark.parametrize("difficulty", ["standard", "easy"])
@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_object_motion_matches_class(label, difficulty):
    for seed in CLIP_SEEDS:
        clip = render_clip_details(label, num_frames=16, seed=seed, scene=difficulty)
        boxes, name = clip.boxes, CLASSES[label]
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 160) and np.all(boxes[:, 3] <= 120)
        centres = box_centres(boxes)
        velocity = (centres[-1] - centres[0]) / (len(boxes) - 1)
        relative_velocity = velocity - background_shift(clip.background)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        axis = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}.get(name)
        if axis is not None:
            along, across = np.dot(velocity, axis), abs(np.dot(velocity, axis[::-1]))
            assert along >= 1.4 and across < 0.1, (name, seed, velocity)
            assert np.dot(relative_velocity, axis) > 0.5, (name, seed, relative_velocity)
            assert areas.max() / areas.min() < 1.2
        else:
            assert np.abs(centres - centres[0]).max() <= 1.5, (name, seed)
        if name == "approach":
            assert areas[-1] > 1.5 * areas[0] and np.all(np.diff(areas) >= -2)
        if name == "recede":
            assert areas[-1] < areas[0] / 1.5 and np.all(np.diff(areas) <= 2)
        if name.startswith("rotate"):
            sign = 1 if name == "rotate_cw" else -1
            expected = sign * np.diff(clip.obj.angles).mean()
            assert 2 * clip.scene.motion_scale <= expected <= 8 * clip.scene.motion_scale
            steps = orientation_steps(clip.frames, clip.background)
            assert abs(np.median(steps) - sign * expected) < 0.3 * expected, (name, seed, steps)
            if not clip.scene.bright_object:
                # Farneback's curl inside the inset box: around a bright object over a dark world, the flow of its
                # strong outline smears into the box's background corners and can dominate it
                curl = rotation_curl(clip.frames, boxes)
                assert (curl > 0.02) if name == "rotate_cw" else (curl < -0.02), (name, seed, curl)


@pytest.mark.parametrize("label", range(4))
def test_camera_never_reverses_the_objects_motion_relative_to_the_scene(label):
    axis = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)][label])
    for seed in range(20):
        clip = render_clip_details(label, num_frames=8, seed=seed)
        centres = box_centres(clip.boxes)
        relative_velocity = (centres[-1] - centres[0]) / 7 - background_shift(clip.background)
        assert np.dot(relative_velocity, axis) > 0.5, (CLASSES[label], seed, relative_velocity)


@pytest.mark.parametrize("difficulty", ["standard", "easy"])
def test_object_pixels_differ_from_the_scene_only_inside_the_box(difficulty):
    clip = render_clip_details(4, seed=11, scene=difficulty)
    for t in range(0, 32, 8):
        x1, y1, x2, y2 = clip.boxes[t].astype(int)
        difference = np.abs(clip.frames[t].astype(np.int16) - clip.background[t]).sum(axis=2)
        assert difference[y1:y2, x1:x2].mean() > 30
        for margin, largest in ((1, 0 if difficulty == "standard" else 2), (2, 0)):
            # the box holds the pixels with alpha >= 0.5; the anti-aliased rim beyond it changes a pixel by at most
            # a rounding step, which shows against the easy scene's dark background
            outside = np.ones_like(difference, dtype=bool)
            outside[max(y1 - margin, 0) : y2 + margin, max(x1 - margin, 0) : x2 + margin] = False
            assert difference[outside].max() <= largest, (t, margin)


def test_rendering_is_deterministic():
    frames, boxes = render_clip(2, num_frames=8, seed=5)
    assert frames.dtype == np.uint8 and frames.shape == (8, 120, 160, 3)
    assert boxes.dtype == np.float32 and boxes.shape == (8, 4)
    again_frames, again_boxes = render_clip(2, num_frames=8, seed=5)
    assert frames.tobytes() == again_frames.tobytes() and np.array_equal(boxes, again_boxes)
    other_frames, _ = render_clip(2, num_frames=8, seed=6)
    assert np.abs(frames.astype(np.int16) - other_frames).mean() > 20


@pytest.mark.parametrize("seed", CLIP_SEEDS)
def test_camera_moves_the_scene_only_when_asked(seed):
    for camera_motion in (True, False):
        clip = render_clip_details(6, num_frames=16, seed=seed, camera_motion=camera_motion)
        first, last = (clip.background[t].astype(np.float32) for t in (0, -1))
        change = np.abs(first - last).mean()
        if camera_motion:
            assert change > 10, (seed, change)
        else:
            assert change < 4, (seed, change)


def test_standard_scene_is_the_default():
    default = render_clip_details(6, num_frames=8, seed=4)
    assert default.scene == Scene() == DIFFICULTIES["standard"]
    for scene in ("standard", Scene()):
        same = render_clip_details(6, num_frames=8, seed=4, scene=scene)
        assert same.frames.tobytes() == default.frames.tobytes() and np.array_equal(same.boxes, default.boxes)
    still = render_clip_details(6, num_frames=8, seed=4, camera_motion=False)
    assert still.scene == Scene(camera_motion=False)
    same = render_clip_details(6, num_frames=8, seed=4, scene=Scene(camera_motion=False))
    assert same.frames.tobytes() == still.frames.tobytes()
    # an explicit camera_motion overrides the scene's
    assert render_clip_details(6, num_frames=8, seed=4, camera_motion=True, scene="easy").scene.camera_motion


DARK_LIMIT = DARK_BACKGROUND_SCALE * 255 + 12  # the brightest a dark world's pixel gets, with the pixel noise


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_easy_preset_is_a_bright_object_over_a_still_dark_world(label):
    assert not DIFFICULTIES["easy"].camera_motion and not DIFFICULTIES["easy"].clutter
    for seed in CLIP_SEEDS:
        clip = render_clip_details(label, num_frames=16, seed=seed, scene="easy")
        background = clip.background.astype(np.float32)
        assert background.max() <= DARK_LIMIT
        assert background.std() > 3  # still textured (the pixel noise alone has a std of 2)
        assert np.abs(background[0] - background[-1]).mean() < 4  # no camera motion
        # the object is bright in every channel (checked around its centre, inside it in every pose)
        for t in range(16):
            cx, cy = np.round(clip.obj.centers[t]).astype(int)
            assert clip.frames[t, cy - 1 : cy + 2, cx - 1 : cx + 2].min() >= 110, (label, seed, t)


@pytest.mark.parametrize("label", [0, 3, 6, 7])
def test_object_and_motion_scales_multiply_size_and_speed(label):
    """Translation and rotation classes draw the same numbers in both scenes, so the poses scale exactly."""
    easy = DIFFICULTIES["easy"]
    for seed in CLIP_SEEDS:
        standard_obj = render_clip_details(label, num_frames=16, seed=seed).obj
        easy_obj = render_clip_details(label, num_frames=16, seed=seed, scene=easy).obj
        np.testing.assert_allclose(easy_obj.sizes, easy.object_scale * standard_obj.sizes)
        np.testing.assert_allclose(np.diff(easy_obj.centers, axis=0),
                                   easy.motion_scale * np.diff(standard_obj.centers, axis=0), atol=1e-9)
        np.testing.assert_allclose(np.diff(easy_obj.angles), easy.motion_scale * np.diff(standard_obj.angles),
                                   atol=1e-9)


def test_clutter_flag_paints_static_shapes_into_the_world():
    cluttered = Scene(camera_motion=False, background="dark", bright_object=True, clutter=True)
    for seed in CLIP_SEEDS:
        background = render_clip_details(0, num_frames=4, seed=seed, scene=cluttered).background
        assert (background.min(axis=3) >= 110).mean() > 0.01  # bright shapes on the dark world, in every frame
        assert np.abs(background[0].astype(np.float32) - background[-1]).mean() < 4
        clean = render_clip_details(0, num_frames=4, seed=seed, scene=replace(cluttered, clutter=False)).background
        assert clean.max() <= DARK_LIMIT


def test_bright_object_on_the_standard_scene():
    clip = render_clip_details(2, num_frames=8, seed=1, scene=Scene(bright_object=True))
    for t in range(8):
        cx, cy = np.round(clip.obj.centers[t]).astype(int)
        assert clip.frames[t, cy - 1 : cy + 2, cx - 1 : cx + 2].min() >= 110
    assert clip.background.std() > 20  # still the textured, moving world


@pytest.mark.parametrize(
    "settings",
    [dict(background="plain"), dict(object_scale=0.0), dict(object_scale=2.5), dict(motion_scale=-1.0),
     dict(motion_scale=2.5)],
)
def test_bad_scene_settings_are_refused(settings):
    with pytest.raises(ValueError):
        Scene(**settings)


def test_unknown_difficulty_is_refused():
    with pytest.raises(ValueError, match="difficulty"):
        render_clip(0, num_frames=4, scene="hard")


def test_command_line_difficulty_with_overrides(tmp_path):
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "data"), "--num_videos", "8", "--num_frames", "8",
               "--width", "64", "--height", "48", "--seed", "2", "--difficulty", "easy", "--clutter", "on",
               "--motion_scale", "2"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    expected = replace(DIFFICULTIES["easy"], clutter=True, motion_scale=2.0)
    for index in range(8):
        boxes = load_boxes(tmp_path / "data" / "gt_boxes" / f"{index:06d}.json")
        assert boxes.extra["scene"] == asdict(expected)
        clip = render_clip_details(index % len(CLASSES), 8, 64, 48, seed=clip_seed(2, index), scene=expected)
        np.testing.assert_array_equal(boxes.frames, clip.boxes)
    refused = subprocess.run([*command[:3], str(tmp_path / "bad"), *command[4:], "--object_scale", "3"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "object_scale" in refused.stderr
    assert not (tmp_path / "bad").exists()

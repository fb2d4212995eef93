"""MOFO pretraining data on real synthetic mp4 files decoded by decord: sampling, box/crop consistency, reduced
decoding, missing boxes, corrupt videos, repeated sampling, masks and seeding.

The key test replays the dataset's random draws (window, then crop, from ``dataset.rng``) and checks every output
against arithmetic done here: pixels equal the crop of the decoded frames, the box equals the ground-truth union of
the sampled frames pushed through that crop, and the tubes the mask treats as inside sit on the moving object.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, default_collate

import datasets
import utils
from datasets import (
    ClipEntry,
    MotionBoxIndex,
    VideoClassificationDataset,
    VideoDecodeError,
    VideoMAEPretrainDataset,
    clip_box,
    decode_frames,
    decode_size,
    multiple_samples_collate,
    native_stderr_captured,
    sample_window_indices,
    stored_video_size,
)
from make_synthetic_dataset import CLASSES, clip_seed, make_dataset, render_clip_details, write_mp4
from masking_generator import inside_box_tokens
from motion_detection.boxfile import MotionBoxes, load_boxes
from video_transforms import multiscale_crop_params, normalize_clip, normalize_video

NUM_VIDEOS, VIDEO_FRAMES, WIDTH, HEIGHT = 8, 24, 160, 120
NUM_FRAMES, SAMPLING_RATE, INPUT_SIZE, PATCH = 8, 2, 64, 8
GRID = INPUT_SIZE // PATCH
SCALES = (1, 0.875, 0.75, 0.66)
OFFSETS = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
MASKS_PER_SLICE = int(0.9 * GRID * GRID)
OBJECT_DIFF = 25.0  # mean |frame - background| of a patch the object covers (~70); codec noise < 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 videos (24 frames, 160x120) with ground-truth box files, a list of all of them, and one 480x360 video."""
    root = tmp_path_factory.mktemp("pretrain_data")
    make_dataset(root / "small", NUM_VIDEOS, num_frames=VIDEO_FRAMES, width=WIDTH, height=HEIGHT)
    make_dataset(root / "large", 1, num_frames=VIDEO_FRAMES, width=480, height=360)
    (root / "all.csv").write_text("".join(f"{i:06d}.mp4 {i % len(CLASSES)}\n" for i in range(NUM_VIDEOS)))
    return root


def write_list(path: Path, names) -> str:
    path.write_text("".join(f"{name} 0\n" for name in names))
    return str(path)


def motion_dataset(data, list_file=None, data_root=None, box_dir=None, **kwargs) -> VideoMAEPretrainDataset:
    options = dict(num_frames=NUM_FRAMES, sampling_rate=SAMPLING_RATE, input_size=INPUT_SIZE, patch_size=PATCH,
                   mask_type="motion", seed=0, box_source="clip")
    options.update(kwargs)
    return VideoMAEPretrainDataset(str(list_file or data / "all.csv"), str(data_root or data / "small" / "videos"),
                                   str(box_dir or data / "small" / "gt_boxes"), **options)


def pixels(item: dict) -> torch.Tensor:
    """An item's uint8 (T, S, S, 3) frames as float (T, 3, S, S)."""
    return item["frames"].permute(0, 3, 1, 2).float()


def assert_resized_alike(clip: torch.Tensor, expected: torch.Tensor) -> None:
    """The item's uint8 pixels against a float resize of the same crop: equal up to the integer rounding of
    torch's uint8 kernel (PIL rounds the same way), which a wrong crop offset or scale exceeds by far."""
    difference = (clip - expected).abs()
    assert difference.max() <= 1.01 and difference.mean() <= 0.5, (difference.max(), difference.mean())


def resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, 3, h, w) float -> (T, 3, height, width), bilinear with antialiasing."""
    return F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def crop_resize(frames: torch.Tensor, x0: int, y0: int, cw: int, ch: int) -> torch.Tensor:
    return resize(frames[:, :, y0:y0 + ch, x0:x0 + cw], INPUT_SIZE, INPUT_SIZE)


def expected_box(gt: np.ndarray, indices: np.ndarray, sx: float, sy: float, x0: int, y0: int, cw: int,
                 ch: int) -> np.ndarray:
    """Union of the ground-truth boxes of the sampled frames, scaled to the decoded frames, moved into the crop,
    clipped, and normalised to the crop (which the resize maps onto the whole output)."""
    rows = gt[indices]
    rows = rows[~np.isnan(rows).any(axis=1)]
    x1, y1 = rows[:, 0].min() * sx - x0, rows[:, 1].min() * sy - y0
    x2, y2 = rows[:, 2].max() * sx - x0, rows[:, 3].max() * sy - y0
    x1, x2 = np.clip([x1, x2], 0, cw)
    y1, y2 = np.clip([y1, y2], 0, ch)
    if x2 <= x1 or y2 <= y1:
        return np.full(4, np.nan)
    return np.array([x1 / cw, y1 / ch, x2 / cw, y2 / ch])


def videomae_crops(width: int, height: int) -> set[tuple[int, int, int, int]]:
    """Every (x0, y0, crop_w, crop_h) VideoMAE's GroupMultiScaleCrop (fix_crop, more_fix_crop) can pick."""
    sides = [INPUT_SIZE if abs(int(min(width, height) * s) - INPUT_SIZE) < 3 else int(min(width, height) * s)
             for s in SCALES]
    crops = set()
    for i, ch in enumerate(sides):
        for j, cw in enumerate(sides):
            if abs(i - j) <= 1:
                ws, hs = (width - cw) // 4, (height - ch) // 4
                crops |= {(ox * ws, oy * hs, cw, ch) for ox, oy in OFFSETS}
    return crops


def replay(dataset: VideoMAEPretrainDataset, num_video_frames: int, width: int, height: int, crops: int = 1):
    """The window and crops the dataset's next item will draw (it draws the window, then each crop)."""
    probe = copy.deepcopy(dataset.rng)
    indices = sample_window_indices(num_video_frames, dataset.num_frames, dataset.sampling_rate, probe)
    params = [multiscale_crop_params(width, height, dataset.input_size, probe, dataset.scales) for _ in range(crops)]
    return indices, params


def decode(path: Path, width: int, height: int) -> torch.Tensor:
    """Every frame of a video, decoded by decord at width x height: (T, 3, H, W) uint8."""
    reader = decord.VideoReader(str(path), width=width, height=height)
    return torch.from_numpy(reader.get_batch(list(range(len(reader)))).asnumpy()).permute(0, 3, 1, 2)


class Video:
    """One synthetic video decoded as the dataset decodes it, its true boxes, and its object-free background
    (rendered with the same noise, encoded and decoded the same way, so only the object differs)."""

    def __init__(self, root: Path, index: int, width: int, height: int):
        self.width, self.height = width, height
        self.decoded_w, self.decoded_h = decode_size(width, height, int(np.ceil(INPUT_SIZE / min(SCALES))))
        self.frames = decode(root / "videos" / f"{index:06d}.mp4", self.decoded_w, self.decoded_h)
        clip = render_clip_details(index % len(CLASSES), VIDEO_FRAMES, width, height, clip_seed(0, index))
        write_mp4(root / "background" / f"{index:06d}.mp4", clip.background, fps=12)
        self.background = decode(root / "background" / f"{index:06d}.mp4", self.decoded_w, self.decoded_h).float()
        self.gt = load_boxes(root / "gt_boxes" / f"{index:06d}.json").frames
        assert np.allclose(self.gt, clip.boxes, atol=0.01, equal_nan=True)


@pytest.fixture(scope="module")
def videos(data):
    return {i: Video(data / "small", i, WIDTH, HEIGHT) for i in range(NUM_VIDEOS)}


def check_item(item: dict, video: Video, indices: np.ndarray, crop: tuple[int, int, int, int],
               box_source: str = "clip") -> int:
    """The item's pixels, box and mask against the crop computed here on the decoded frames and the true boxes.
    Returns how many patches show the object (0 when the crop lost the box)."""
    x0, y0, cw, ch = crop
    clip = pixels(item)
    assert_resized_alike(clip, crop_resize(video.frames[indices].float(), *crop))

    sx, sy = video.decoded_w / video.width, video.decoded_h / video.height
    rows = indices if box_source == "clip" else np.arange(len(video.gt))
    box = item["box"].numpy()
    np.testing.assert_allclose(box, expected_box(video.gt, rows, sx, sy, x0, y0, cw, ch), atol=1e-4)
    if np.isnan(box).any():
        return 0

    inside = inside_box_tokens(item["box"], (GRID, GRID))
    masked = item["mask"].reshape(NUM_FRAMES // 2, GRID * GRID)
    assert (masked == masked[0]).all() and masked[0].sum() == MASKS_PER_SLICE
    num_inside = int(inside.sum())
    motion = max(min(int(0.75 * num_inside + 0.5), MASKS_PER_SLICE), MASKS_PER_SLICE - (GRID * GRID - num_inside))
    assert int((masked[0] & inside).sum()) == motion

    # The object is what differs from the object-free background under the same crop.
    diff = (clip - crop_resize(video.background[indices], *crop)).abs().amax(1)
    patch_diff = diff.reshape(NUM_FRAMES, GRID, PATCH, GRID, PATCH).mean((2, 4)).amax(0).flatten()
    object_patches = patch_diff > OBJECT_DIFF
    near_box = inside_box_tokens(item["box"] + torch.tensor([-0.5, -0.5, 0.5, 0.5]) / GRID, (GRID, GRID))
    assert not (object_patches & ~near_box).any(), "object patches outside the motion box"
    if (~near_box).any():
        assert patch_diff[inside].mean() > 4 * patch_diff[~near_box].mean()
    return int(object_patches.sum())


def test_box_follows_every_crop_scale_and_offset(data, videos):
    """Key acceptance test: every VideoMAE crop geometry, box from the ground truth of exactly the sampled frames."""
    dataset = motion_dataset(data)
    decoded_w, decoded_h = videos[0].decoded_w, videos[0].decoded_h
    assert (decoded_w, decoded_h) == (130, 98)  # 160x120 is decoded smaller: input 64 needs a short side of 97
    wanted = videomae_crops(decoded_w, decoded_h)
    seeds = {}
    for seed in range(5000):
        dataset.reseed(seed)
        _, [crop] = replay(dataset, VIDEO_FRAMES, decoded_w, decoded_h)
        assert crop in wanted
        seeds.setdefault(crop, seed)
        if len(seeds) == len(wanted):
            break
    assert set(seeds) == wanted
    assert len({(cw, ch) for _, _, cw, ch in wanted}) == 10  # 4 scales, width and height at most one step apart
    starts, object_seen = set(), 0
    for crop, seed in seeds.items():
        dataset.reseed(seed)
        index = seed % NUM_VIDEOS
        indices, [replayed] = replay(dataset, VIDEO_FRAMES, decoded_w, decoded_h)
        assert replayed == crop
        object_seen += check_item(dataset[index], videos[index], indices, crop) > 0
        starts.add(int(indices[0]))
    assert len(starts) > 3 and object_seen >= 0.6 * len(seeds)  # the object check is not vacuous


def test_box_source_video_uses_the_file_union(data, videos):
    dataset = motion_dataset(data, box_source="video")
    for seed in range(12):
        dataset.reseed(seed)
        indices, [crop] = replay(dataset, VIDEO_FRAMES, videos[0].decoded_w, videos[0].decoded_h)
        check_item(dataset[seed % NUM_VIDEOS], videos[seed % NUM_VIDEOS], indices, crop, box_source="video")


def test_sample_window_indices():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(400):
        indices = sample_window_indices(40, 8, 4, rng)
        assert len(indices) == 8 and np.all(np.diff(indices) == 4)
        assert indices[0] >= 0 and indices[-1] < 40
        starts.add(int(indices[0]))
    assert starts == set(range(40 - 32 + 1))
    np.testing.assert_array_equal(sample_window_indices(32, 8, 4, rng), np.arange(0, 32, 4))
    np.testing.assert_array_equal(sample_window_indices(10, 8, 2, rng), [0, 2, 4, 6, 8, 9, 9, 9])
    np.testing.assert_array_equal(sample_window_indices(1, 4, 3, rng), [0, 0, 0, 0])
    # dense windows (trajectory targets) hold one more frame: a window that fits never repeats its last one
    dense_starts = set()
    for _ in range(400):
        indices = sample_window_indices(40, 8, 4, rng, dense=True)
        assert len(indices) == 33 and np.all(np.diff(indices) == 1) and indices[-1] < 40
        dense_starts.add(int(indices[0]))
    assert dense_starts == set(range(40 - 33 + 1))
    np.testing.assert_array_equal(sample_window_indices(33, 8, 4, rng, dense=True), np.arange(33))


def make_boxes(frames, width=100, height=50, union=None) -> MotionBoxes:
    frames = np.asarray(frames, dtype=np.float32)
    return MotionBoxes("v.mp4", width, height, len(frames), 10.0, {}, frames,
                       None if union is None else np.asarray(union, dtype=np.float32))


def test_clip_box_union_of_the_sampled_frames():
    nan = [np.nan] * 4
    frames = [[10 + k, 5, 20 + k, 10 + k] for k in range(10)]
    frames[4] = nan
    boxes = make_boxes(frames, union=[0, 0, 50, 25])
    np.testing.assert_allclose(clip_box(boxes, np.array([2, 4, 6]), 10, "clip"), [0.12, 0.1, 0.26, 0.32])
    np.testing.assert_allclose(clip_box(boxes, np.array([3, 3]), 10, "clip"), [0.13, 0.1, 0.23, 0.26])
    np.testing.assert_allclose(clip_box(boxes, np.array([3]), 10, "video"), [0, 0, 0.5, 0.5])
    assert np.isnan(clip_box(boxes, np.array([4, 4]), 10, "clip")).all()
    assert np.isnan(clip_box(make_boxes([nan, nan]), np.array([0, 1]), 2, "video")).all()
    assert np.isnan(clip_box(None, np.array([0, 1]), 2, "clip")).all()
    # The box file counted 19 frames, the decoder 10: decoder frame k is box frame round(k * 18 / 9) = 2k.
    frames = [[k, 0, k + 1, 1] for k in range(19)]
    boxes = make_boxes(frames)
    np.testing.assert_allclose(clip_box(boxes, np.array([3, 5]), 10, "clip") * [100, 50, 100, 50], [6, 0, 11, 1])
    np.testing.assert_allclose(clip_box(boxes, np.array([9]), 10, "clip") * [100, 50, 100, 50], [18, 0, 19, 1])


def rotated_copy(source: Path, target: Path) -> Path:
    """``source`` with a 90-degree display rotation in its mp4 track header (as phones write them)."""
    data = bytearray(source.read_bytes())
    tkhd = data.find(b"tkhd")
    version = data[tkhd + 4]
    matrix = tkhd + 8 + (8 if version == 0 else 16) + 8 + (4 if version == 0 else 8) + 16
    assert struct.unpack(">9i", data[matrix:matrix + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    target.write_bytes(data)
    return target


def test_every_mask_type_decodes_at_the_same_reduced_size(data, videos, tmp_path, monkeypatch):
    """The stored size comes from the container, with box files or without, so VideoMAE's tube masking decodes the
    same reduced frames as MOFO's; rotated videos come out upright at any size, as decord decodes them as stored."""
    tube = VideoMAEPretrainDataset(str(data / "all.csv"), str(data / "small" / "videos"), None,
                                   num_frames=NUM_FRAMES, sampling_rate=SAMPLING_RATE, input_size=INPUT_SIZE,
                                   patch_size=PATCH, mask_type="tube", seed=0)
    motion = motion_dataset(data)
    for seed in range(3):
        tube.reseed(seed)
        motion.reseed(seed)
        frames = tube._load(seed)[0]
        assert frames.shape[1:] == (videos[0].decoded_h, videos[0].decoded_w, 3)
        assert torch.equal(frames, motion._load(seed)[0])

    rotated = str(rotated_copy(data / "small" / "videos" / "000000.mp4", tmp_path / "rotated.mp4"))
    upright = decord.VideoReader(rotated).get_batch([0, 5]).asnumpy()
    assert upright.shape[1:] == (WIDTH, HEIGHT, 3) and stored_video_size(rotated, None, {}) == (HEIGHT, WIDTH)
    monkeypatch.setattr(datasets, "UNSCALABLE_VIDEOS", set())
    for size in ((98, 130), (48, 64), (48, 64)):  # decord fails to scale to 48x64 (4 channels): decoded as stored
        frames = decode_frames(rotated, lambda n: np.array([0, 5]), size)[0].numpy()
        if size == (48, 64):
            assert datasets.UNSCALABLE_VIDEOS == {rotated}  # remembered: later draws decode as stored at once
            np.testing.assert_array_equal(frames, upright)
        else:
            assert frames.shape[1:] == (*size[::-1], 3)
            resized = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in upright])
            assert np.abs(resized.astype(int) - frames).mean() < 5


def test_decode_size():
    assert decode_size(480, 360, 170) == (228, 170)
    assert decode_size(360, 480, 170) == (170, 228)
    assert decode_size(160, 120, 170) == (160, 120)
    assert decode_size(160, 120, 97) == (130, 98)
    for width, height, needed in [(1920, 1080, 340), (641, 359, 97), (300, 300, 111)]:
        w, h = decode_size(width, height, needed)
        assert w % 2 == 0 and h % 2 == 0 and min(w, h) >= needed and min(w, h) <= needed + 1
        assert abs(w / h - width / height) < 0.02


def test_large_video_decoded_smaller_with_correct_boxes(data):
    """480x360 with input 112 is decoded at short side ceil(112 / 0.66) = 170: the outputs are crops of those
    frames, with the true boxes."""
    large = data / "large"
    size = 112
    dataset = VideoMAEPretrainDataset(str(large / "train.csv"), str(large / "videos"), str(large / "gt_boxes"),
                                      num_frames=NUM_FRAMES, sampling_rate=SAMPLING_RATE, input_size=size,
                                      patch_size=16, mask_type="motion", seed=0, box_source="clip")
    decoded = decode_size(480, 360, int(np.ceil(size / 0.66)))
    assert decoded == (228, 170)
    name = large.joinpath("train.csv").read_text().split()[0]
    frames = decode(large / "videos" / name, *decoded).float()
    gt = load_boxes(large / "gt_boxes" / name.replace(".mp4", ".json")).frames
    for seed in range(6):
        dataset.reseed(seed)
        indices, [(x0, y0, cw, ch)] = replay(dataset, VIDEO_FRAMES, *decoded)
        assert min(cw, ch) >= size  # the reduced decode still never upsamples a crop
        item = dataset[0]
        expected = resize(frames[indices, :, y0:y0 + ch, x0:x0 + cw], size, size)
        assert_resized_alike(pixels(item), expected)
        box = expected_box(gt, indices, decoded[0] / 480, decoded[1] / 360, x0, y0, cw, ch)
        np.testing.assert_allclose(item["box"].numpy(), box, atol=1e-4)


def box_folder_with_videos(data, tmp_path, names: list[str], boxed: int) -> tuple[Path, Path]:
    """(video root, box folder): every name a copy of video 0 on disk, the first ``boxed`` with its box file."""
    videos, boxes = tmp_path / "videos", tmp_path / "boxes"
    for k, name in enumerate(names):
        for folder in (videos, boxes):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).symlink_to(data / "small" / "videos" / "000000.mp4")
        if k < boxed:
            shutil.copy(data / "small" / "gt_boxes" / "000000.json", (boxes / name).with_suffix(".json"))
    return videos, boxes


def test_missing_box_error_lists_the_first_missing_files(data, tmp_path):
    """Videos on disk, not in a failed list, without a box file: extraction was not run for them, so the run stops
    at startup naming the first ten, one per line."""
    names = [f"{i:06d}.mp4" for i in range(2)] + [f"part/{k:02d}.mp4" for k in range(12)]
    videos, boxes = box_folder_with_videos(data, tmp_path, names, boxed=2)
    with pytest.raises(FileNotFoundError) as error:
        motion_dataset(data, list_file=write_list(tmp_path / "list.csv", names), data_root=videos, box_dir=boxes)
    message = str(error.value)
    assert f"12 of 14 videos have no box file under {boxes}, and box extraction did not list them" in message
    assert "--missing_box random" in message
    lines = message.splitlines()
    assert lines[1:11] == [f"  {boxes / 'part' / f'{k:02d}.json'}" for k in range(10)], lines
    assert "10.json" not in message and "11.json" not in message


def test_videos_box_extraction_failed_on_are_skipped_at_run_time(data, tmp_path, caplog):
    """A video in the box folder's failed.tsv (or a shard's failed list) or no longer on disk has no box file for
    a reason extraction recorded: the run starts, and each such sample is skipped, logged once with its reason, and
    replaced, as an unreadable video is (pretraining and fine-tuning alike). A video missing its box file for no
    recorded reason still stops the run; so does a list where no video has one."""
    names = ["000000.mp4", "000001.mp4", "bad/broken.mp4", "other.mp4", "gone.mp4"]
    videos, boxes = box_folder_with_videos(data, tmp_path, names[:4], boxed=2)
    (boxes / "failed.tsv").write_text("video\treason\n./bad/broken.mp4\tcannot be opened\nunboxed.webm\tshares\n")
    (boxes / "failed.shard0001-of-0002.tsv").write_text(f"video\treason\n{videos / 'other.mp4'}\ttoo small\n")
    list_file = write_list(tmp_path / "list.csv", names)
    with caplog.at_level(logging.WARNING, logger="datasets"):
        dataset = motion_dataset(data, list_file=list_file, data_root=videos, box_dir=boxes)
    assert f"3 of 5 videos have no box file under {boxes} because box extraction failed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datasets"):
        items = [dataset[index] for index in (2, 3, 4) * 2]
    assert all(item["replaced"] >= 1 for item in items)
    for video, reason in (("bad/broken.mp4", "box extraction failed on it, failed.tsv: cannot be opened"),
                          ("other.mp4", "box extraction failed on it, failed.shard0001-of-0002.tsv: too small"),
                          ("gone.mp4", "video file not found")):
        logged = [r.getMessage() for r in caplog.records if f"{videos / video}:" in r.getMessage()]
        assert logged == [f"skipping video without a usable box file ({videos / video}: no box file ({reason})); "
                          "using another sample"], logged
    finetune = VideoClassificationDataset([ClipEntry(name, (0,)) for name in names], str(videos), str(boxes),
                                          "validation", num_frames=NUM_FRAMES, input_size=INPUT_SIZE,
                                          short_side_size=INPUT_SIZE)
    assert finetune[4]["replaced"] >= 1 and finetune[0]["replaced"] == 0
    (tmp_path / "videos" / "unboxed.mp4").symlink_to(data / "small" / "videos" / "000000.mp4")
    with pytest.raises(FileNotFoundError, match="1 of 6 videos have no box file"):  # the .webm row is another video
        motion_dataset(data, list_file=write_list(tmp_path / "more.csv", [*names, "unboxed.mp4"]), data_root=videos,
                       box_dir=boxes)
    with pytest.raises(FileNotFoundError, match="none of the 3 videos has a box file"):
        motion_dataset(data, list_file=write_list(tmp_path / "bad.csv", names[2:]), data_root=videos, box_dir=boxes)


def test_box_files_mirror_the_list_paths(data, videos, tmp_path):
    (tmp_path / "videos" / "a").mkdir(parents=True)
    (tmp_path / "boxes" / "a").mkdir(parents=True)
    shutil.copy(data / "small" / "videos" / "000003.mp4", tmp_path / "videos" / "a" / "b.mp4")
    shutil.copy(data / "small" / "gt_boxes" / "000003.json", tmp_path / "boxes" / "a" / "b.json")
    dataset = motion_dataset(data, list_file=write_list(tmp_path / "list.csv", ["a/b.mp4"]),
                             data_root=tmp_path / "videos", box_dir=tmp_path / "boxes", box_source="video")
    for seed in range(4):
        dataset.reseed(seed)
        indices, [crop] = replay(dataset, VIDEO_FRAMES, videos[3].decoded_w, videos[3].decoded_h)
        item = dataset[0]
        assert item["missing_box"] == 0
        check_item(item, videos[3], indices, crop, box_source="video")
    # VideoMAE's lists often hold absolute paths: below --data_root they find the same box file.
    absolute = write_list(tmp_path / "absolute.csv", [str(tmp_path / "videos" / "a" / "b.mp4")])
    dataset = motion_dataset(data, list_file=absolute, data_root=tmp_path / "videos", box_dir=tmp_path / "boxes")
    assert dataset[0]["missing_box"] == 0 and dataset.boxes.load(0) is not None
    outside = write_list(tmp_path / "outside.csv", [str(data / "small" / "videos" / "000003.mp4")])
    with pytest.raises(ValueError, match="000003.mp4: not below --data_root .*box files mirror the paths below it"):
        motion_dataset(data, list_file=outside, data_root=tmp_path / "videos", box_dir=tmp_path / "boxes")


def test_videomae_v2_lines_draw_windows_inside_their_frames(data, tmp_path, caplog):
    """``path start_index total_frames`` (VideoMAE V2; EPIC's action segments in the long videos): every window
    lies inside those frames; ``0 -1`` and VideoMAE's ``path label`` take the whole video; a clip that starts past
    the end is skipped like a corrupt video, naming it; a malformed one fails naming the line."""
    lines = ["000000.mp4 5 18", "000001.mp4 0 -1", "000002.mp4 3", "000003.mp4 30 4"]
    (tmp_path / "list.csv").write_text("".join(f"{line}\n" for line in lines))
    dataset = motion_dataset(data, list_file=tmp_path / "list.csv")
    assert [(e.first_frame, e.num_frames) for e in dataset.entries] == [(5, 18), (0, None), (0, None), (30, 4)]
    span = NUM_FRAMES * SAMPLING_RATE
    inside = [dataset.window(0, VIDEO_FRAMES, False) for _ in range(200)]
    assert all(w.min() >= 5 and w.max() <= 22 for w in inside)
    assert {int(w[0]) for w in inside} == set(range(5, 5 + 18 - span + 1))
    for whole in (1, 2):
        starts = {int(dataset.window(whole, VIDEO_FRAMES, False)[0]) for _ in range(200)}
        assert starts == set(range(VIDEO_FRAMES - span + 1))
    with caplog.at_level(logging.WARNING, logger="datasets"):
        assert dataset[3]["replaced"] == 1
    assert any("000003.mp4: clip starts at frame 31 but the video has 24 frames" in r.getMessage()
               for r in caplog.records)
    # a range past the end (a video re-encoded at a lower frame rate than the list's) is named once, and sampled
    # up to the last frame
    (tmp_path / "overrun.csv").write_text("000000.mp4 20 10\n")
    overrun = motion_dataset(data, list_file=tmp_path / "overrun.csv")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datasets"):
        windows = [overrun.window(0, VIDEO_FRAMES, False) for _ in range(5)]
    assert all(w.min() >= 20 and w.max() <= VIDEO_FRAMES - 1 for w in windows)
    assert [r.getMessage() for r in caplog.records] == [
        "000000.mp4: a listed clip ends at frame 30 of a video of 24 frames (re-encoded at another frame rate than "
        "the annotations?); it is sampled over its frames up to the video's last"]
    # --box_source video: the union box of the listed frames (the whole file's for whole-video lines)
    dataset = motion_dataset(data, list_file=tmp_path / "list.csv", box_source="video")
    for entry, frames in ((0, slice(5, 23)), (1, slice(None))):
        gt = load_boxes(data / "small" / "gt_boxes" / f"{entry:06d}.json")
        union = np.array([*np.nanmin(gt.frames[frames, :2], 0), *np.nanmax(gt.frames[frames, 2:], 0)])
        expected = union / [WIDTH, HEIGHT, WIDTH, HEIGHT]
        np.testing.assert_allclose(dataset.motion_box(entry, gt, np.arange(3), VIDEO_FRAMES), expected, atol=1e-6)
    assert not np.allclose(dataset.motion_box(0, gt, np.arange(3), VIDEO_FRAMES), expected)  # not vacuous
    (tmp_path / "bad.csv").write_text("000000.mp4 0 -1\n\n000001.mp4 4 0\n")  # the file's line, blank lines too
    with pytest.raises(ValueError, match=r"bad.csv:3: need start_index >= 0 and total_frames >= 1"):
        motion_dataset(data, list_file=tmp_path / "bad.csv")


def test_box_files_are_parsed_once_per_worker_within_the_cache_budget(data, monkeypatch):
    """A video listed many times (EPIC's long videos, once per segment) is parsed once; the cache drops the least
    recently used files beyond BOX_CACHE_FRAMES boxes, and always keeps the last one."""
    names = ["000000.mp4", "000001.mp4", "000000.mp4", "000002.mp4", "000000.mp4"]
    index = MotionBoxIndex(str(data / "small" / "gt_boxes"), names)
    first = index.load(0)
    assert index.load(2) is first and index.load(4) is first
    np.testing.assert_array_equal(first.frames, load_boxes(data / "small" / "gt_boxes" / "000000.json").frames)
    monkeypatch.setattr(datasets, "BOX_CACHE_FRAMES", 2 * VIDEO_FRAMES)
    index = MotionBoxIndex(str(data / "small" / "gt_boxes"), names)
    first, second = index.load(0), index.load(1)
    assert index.load(2) is first  # two files fit; 000000 is now the most recent
    index.load(3)  # a third: 000001, the least recently used, goes
    assert index.load(4) is first and index.load(1) is not second
    monkeypatch.setattr(datasets, "BOX_CACHE_FRAMES", 1)
    assert index.load(3) is index.load(3) and list(index._cache) == [index.paths[3]]  # a new file, alone
    with pytest.raises(ValueError, match="read-only"):  # shared by every later load
        index.load(3).frames[0] = 0


def test_missing_box_random_gives_plain_tube_masks(data, tmp_path, caplog):
    video_dir = tmp_path / "videos"
    shutil.copytree(data / "small" / "videos", video_dir)
    (video_dir / "nobox").mkdir()
    for i in (1, 5):
        shutil.copy(video_dir / f"{i:06d}.mp4", video_dir / "nobox" / f"{i:06d}.mp4")
    names = ["000000.mp4", "nobox/000001.mp4", "000002.mp4", "000003.mp4", "nobox/000005.mp4", "000004.mp4"]
    with caplog.at_level(logging.WARNING, logger="datasets"):
        dataset = motion_dataset(data, list_file=write_list(tmp_path / "list.csv", names), data_root=video_dir,
                                 missing_box="random")
    assert dataset.boxes.num_missing == 2
    assert any("2 of 6 videos have no box file" in r.getMessage() for r in caplog.records)
    for index, name in enumerate(names):
        for _ in range(3):
            item = dataset[index]
            masked = item["mask"].reshape(NUM_FRAMES // 2, GRID * GRID)
            assert (masked == masked[0]).all() and masked[0].sum() == MASKS_PER_SLICE
            assert item["missing_box"] == int(name.startswith("nobox"))
            assert item["replaced"] == 0
            if name.startswith("nobox"):
                assert torch.isnan(item["box"]).all()
    loader = DataLoader(dataset, batch_size=4, num_workers=0)
    assert sum(int(batch["missing_box"].sum()) for batch in loader) == 2
    repeated = motion_dataset(data, list_file=tmp_path / "list.csv", data_root=video_dir, missing_box="random",
                              num_sample=2)  # every clip of a video without a box is counted, not its first
    assert [[clip["missing_box"] for clip in repeated[index]] for index in (0, 1)] == [[0, 0], [1, 1]]


def test_box_files_that_do_not_fit_their_video(data, tmp_path, caplog):
    """A malformed box file costs only its sample: replaced and logged with ``--missing_box error``, masked as a clip
    without motion (logged once) with ``random``. A box file of another frame shape or frame count is named."""
    box_dir = tmp_path / "boxes"
    shutil.copytree(data / "small" / "gt_boxes", box_dir)
    (box_dir / "000001.json").write_text("{not json")
    for name, change in (("000002.json", {"width": WIDTH * 2}), ("000003.json", {"num_frames": VIDEO_FRAMES * 2})):
        record = json.loads((box_dir / name).read_text())
        record.update(change)
        if "num_frames" in change:
            record["frames"] = record["frames"] * 2
        (box_dir / name).write_text(json.dumps(record))
    names = [f"{i:06d}.mp4" for i in range(4)]
    list_file = write_list(tmp_path / "list.csv", names)
    with caplog.at_level(logging.WARNING, logger="datasets"):
        strict = motion_dataset(data, list_file=list_file, box_dir=box_dir, box_source="video")
        assert strict[1]["replaced"] == 1 and strict[0]["replaced"] == 0
        assert f"skipping video without a usable box file ({box_dir / '000001.json'}" in caplog.text
        assert strict[2]["replaced"] == 0 and strict[3]["replaced"] == 0
    assert f"is {WIDTH}x{HEIGHT}, its box file of a {WIDTH * 2}x{HEIGHT} frame" in caplog.text
    assert f"000003.mp4: its box file counts {VIDEO_FRAMES * 2} frames, the decoder {VIDEO_FRAMES}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datasets"):
        lenient = motion_dataset(data, list_file=list_file, box_dir=box_dir, missing_box="random")
        items = [lenient[1] for _ in range(3)]
    assert [(item["replaced"], item["missing_box"]) for item in items] == [(0, 1)] * 3
    assert all(torch.isnan(item["box"]).all() for item in items)
    assert caplog.text.count("masking its video as a clip without motion") == 1


def test_box_files_that_do_not_fit_are_named_once_each_and_then_counted(caplog):
    """A folder of box files made from other copies of the videos names the first few per worker, not every one."""
    mismatches = datasets.BoxMismatches()
    boxes = MotionBoxes("v", WIDTH, HEIGHT, 100, 25.0, {}, np.zeros((100, 4), np.float32))
    with caplog.at_level(logging.WARNING, logger="datasets"):
        for video in [f"{i}.mp4" for i in range(datasets.BOX_MISMATCH_NAMED + 3)] * 2:
            mismatches.check_frames(boxes, 50, video)
        mismatches.check_frames(boxes, 98, "close.mp4")  # decoders differ by a frame or two
    named = [r.getMessage() for r in caplog.records if "its box file counts 100 frames" in r.getMessage()]
    assert len(named) == datasets.BOX_MISMATCH_NAMED and named[0].startswith("0.mp4:")
    assert caplog.text.count("more box files of a frame count than their video's are not named") == 1


@pytest.fixture
def corrupt_list(data, tmp_path):
    """Eight good videos plus random bytes, a zero-byte file, a listed file that does not exist, and a good video
    whose stream is zeroed after its first frames (it opens, then fails to decode)."""
    video_dir = tmp_path / "videos"
    shutil.copytree(data / "small" / "videos", video_dir)
    (video_dir / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (video_dir / "empty.mp4").write_bytes(b"")
    damaged = bytearray((video_dir / "000000.mp4").read_bytes())
    damaged[len(damaged) // 10:len(damaged) * 9 // 10] = bytes(len(damaged) * 9 // 10 - len(damaged) // 10)
    (video_dir / "damaged.mp4").write_bytes(bytes(damaged))
    names = [f"{i:06d}.mp4" for i in range(NUM_VIDEOS)]
    names[1:1] = ["random.mp4"]
    names[4:4] = ["empty.mp4"]
    names.append("gone.mp4")
    names.append("damaged.mp4")
    return write_list(tmp_path / "list.csv", names), video_dir


def test_corrupt_videos_are_replaced_and_logged(data, corrupt_list, caplog, capfd):
    """Each bad video is logged once by name and replaced, also when drawn again (each epoch); FFmpeg's own line per
    damaged packet and decord's "ERROR opening" line stay silent, decord's reason is in the log line, without the clock
    time decord's log puts in it (a draw in another second would log the video again)."""
    list_file, video_dir = corrupt_list
    dataset = motion_dataset(data, list_file=list_file, data_root=video_dir, missing_box="random")
    names = [line.split()[0] for line in Path(list_file).read_text().splitlines()]
    capfd.readouterr()
    bad_videos = ("random.mp4", "empty.mp4", "gone.mp4", "damaged.mp4")
    with caplog.at_level(logging.WARNING, logger="datasets"):
        items = [dataset[names.index(bad)] for bad in bad_videos * 2]
    for item in items:
        assert item["replaced"] >= 1
        assert item["frames"].shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)
        assert item["missing_box"] == 0  # the box belongs to the replacement, which has one
    for bad in bad_videos:
        logged = [r.getMessage() for r in caplog.records if f"{video_dir / bad}:" in r.getMessage()]
        assert len(logged) == 1 and logged[0].startswith("skipping unreadable video"), logged
    err = capfd.readouterr().err
    assert "[mpeg4 @" not in err and "ERROR opening" not in err
    with pytest.raises(VideoDecodeError, match="random.mp4: cannot decode \\(Invalid data found when processing"):
        decode_frames(str(video_dir / "random.mp4"), lambda n: np.arange(2))
    damaged = [r.getMessage() for r in caplog.records if "damaged.mp4" in r.getMessage()][0]
    assert "DECORDError: Check failed" in damaged and not re.search(r"\d\d:\d\d:\d\d|\.cc:\d", damaged), damaged
    assert dataset[0]["replaced"] == 0


def test_native_stderr_is_captured_and_other_writers_output_kept(capfd, monkeypatch):
    """decord's "ERROR opening" lines go to the caller; any other bytes written to fd 2 meanwhile (a progress bar's
    carriage returns, non-UTF-8) reach stderr unchanged; without a spool (no descriptors left) nothing is captured
    and nothing breaks."""
    capfd.readouterr()
    with native_stderr_captured() as lines:
        os.write(2, b"[12:00:00] video_reader.cc:83: ERROR opening: a.mp4, Invalid data\nbar 1/2\r\xff\n")
    assert lines == ["[12:00:00] video_reader.cc:83: ERROR opening: a.mp4, Invalid data"]
    assert capfd.readouterr().err == "bar 1/2\r\ufffd\n"  # capfd decodes; the bytes written were b"\r\xff"
    descriptors = len(os.listdir("/proc/self/fd"))

    def no_descriptors(*args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", no_descriptors)
    with native_stderr_captured() as lines:
        os.write(2, b"through\n")
    assert lines == [] and capfd.readouterr().err == "through\n"
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_corrupt_videos_do_not_stop_a_two_worker_epoch(data, corrupt_list):
    list_file, video_dir = corrupt_list
    dataset = motion_dataset(data, list_file=list_file, data_root=video_dir, missing_box="random")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, worker_init_fn=utils.seed_worker,
                        generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert sum(len(batch["replaced"]) for batch in batches) == len(dataset) == 12
    assert sum(int(batch["replaced"].sum()) for batch in batches) >= 4


def test_only_corrupt_videos_fail_loudly(data, tmp_path):
    """A list of unreadable videos fails once the replacements run out; one whose videos are not below --data_root
    at all (a wrong root) fails at startup, while one with a few missing videos starts."""
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 200)
    list_file = write_list(tmp_path / "list.csv", ["broken.mp4"])
    dataset = motion_dataset(data, list_file=list_file, data_root=tmp_path, mask_type="tube")
    with pytest.raises(RuntimeError, match="in a row were missing, failed to decode or had no usable box file"):
        dataset[0]
    with pytest.raises(ValueError, match=f"list.csv: none of the 1 videos checked is found below --data_root "
                                         f"{data}, e.g. {data}/broken.mp4"):
        motion_dataset(data, list_file=list_file, data_root=data, mask_type="tube")
    some_missing = write_list(tmp_path / "some.csv", ["gone.mp4", "broken.mp4"])
    assert len(motion_dataset(data, list_file=some_missing, data_root=tmp_path, mask_type="tube")) == 2


LOGGING_WORKERS = """
import os, sys, time
import torch
sys.path.insert(0, {repo!r})
import utils
from datasets import UnusableDataError


class Unusable(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 0:
            raise UnusableDataError("20 videos in a row were missing")
        os.write(2, b"[")  # a line written in pieces, as decord logs an unreadable file
        time.sleep(0.5)
        os.write(2, b"noise]\\n")
        return index


loader = torch.utils.data.DataLoader(Unusable(), num_workers=2, persistent_workers=True)
with utils.training_errors(loader):
    for _ in loader:
        pass
"""


def test_the_run_ending_error_line_is_not_cut_by_the_other_workers(tmp_path):
    """When one worker gives up, another is still loading and logging; its half-written line must not swallow the
    run's last message (it did, now and then, on a loaded CI machine)."""
    script = tmp_path / "run.py"
    script.write_text(LOGGING_WORKERS.format(repo=str(Path(utils.__file__).parent)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == "error: 20 videos in a row were missing", result.stderr


def test_repeated_sampling_crops_one_decoded_window(data, videos):
    dataset = motion_dataset(data, num_sample=3)
    for seed in range(4):
        dataset.reseed(seed)
        index = seed % NUM_VIDEOS
        indices, crops = replay(dataset, VIDEO_FRAMES, videos[0].decoded_w, videos[0].decoded_h, crops=3)
        items = dataset[index]
        assert isinstance(items, list) and len(items) == 3
        for item, crop in zip(items, crops, strict=True):
            check_item(item, videos[index], indices, crop)  # one window: the three clips share the frames
        masks = [item["mask"] for item in items]
        assert not any(torch.equal(masks[a], masks[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
        if len(set(crops)) > 1:
            assert not all(torch.equal(items[0]["frames"], item["frames"]) for item in items[1:])
        assert [item["replaced"] for item in items] == [0, 0, 0]
    batch = multiple_samples_collate([dataset[0], dataset[1]])
    assert batch["frames"].shape == (6, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)
    assert batch["mask"].shape == (6, NUM_FRAMES // 2 * GRID * GRID) and batch["mask"].dtype == torch.bool
    assert batch["box"].shape == (6, 4) and batch["replaced"].shape == (6,)


def test_masks_exact_counts_and_independent(data):
    motion = motion_dataset(data)
    tube = motion_dataset(data, mask_type="tube")
    for dataset in (motion, tube):
        masks = [dataset[3]["mask"] for _ in range(10)]
        for mask in masks:
            slices = mask.reshape(NUM_FRAMES // 2, GRID * GRID)
            assert (slices == slices[0]).all() and slices[0].sum() == MASKS_PER_SLICE
        assert len({tuple(mask.tolist()) for mask in masks}) == 10
    shares = []
    for index in range(5 * NUM_VIDEOS):
        item = motion[index % NUM_VIDEOS]
        inside = inside_box_tokens(item["box"], (GRID, GRID))
        if 4 <= inside.sum() <= 28:  # larger boxes leave too few outside tubes for the per-slice total
            shares.append(float(item["mask"][: GRID * GRID][inside].float().mean()))
    assert len(shares) >= 5 and all(abs(share - 0.75) <= 0.1 for share in shares)


def test_reseed_streams_reproducible_and_distinct(data):
    dataset = motion_dataset(data)

    def draws(seed):
        dataset.reseed(seed)
        return dataset.rng.integers(2**62, size=4).tolist(), dataset.mask_generator.rng.integers(2**62, size=4).tolist()

    assert draws(5) == draws(5)
    data5, mask5 = draws(5)
    data6, mask6 = draws(6)
    assert len({tuple(data5), tuple(mask5), tuple(data6), tuple(mask6)}) == 4
    assert draws(None) != draws(None)


def loader_outputs(dataset, seed: int) -> list[dict]:
    """One epoch through two workers seeded as the training script seeds them."""
    loader = DataLoader(dataset, batch_size=2, num_workers=2, worker_init_fn=utils.seed_worker,
                        generator=torch.Generator().manual_seed(seed))
    return list(loader)


def test_workers_differ_and_runs_reproduce(data, tmp_path):
    """The same video eight times, so only the random streams make items differ: workers differ from each other,
    and the loader's seed reproduces every crop and mask."""
    dataset = motion_dataset(data, list_file=write_list(tmp_path / "list.csv", ["000002.mp4"] * 8))
    first = loader_outputs(dataset, seed=1)
    masks = torch.cat([batch["mask"] for batch in first])
    clips = torch.cat([batch["frames"] for batch in first])
    assert len({tuple(mask.tolist()) for mask in masks}) == 8
    assert not torch.equal(masks[0], masks[2]) and not torch.equal(clips[0], clips[2])  # worker 0 vs worker 1
    again = loader_outputs(dataset, seed=1)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["frames"], b["frames"])
        assert torch.equal(a["box"].nan_to_num(-1.0), b["box"].nan_to_num(-1.0))
    other = torch.cat([batch["mask"] for batch in loader_outputs(dataset, seed=2)])
    assert not torch.equal(masks, other)


def test_output_format(data, videos):
    dataset = motion_dataset(data)
    for index in range(NUM_VIDEOS):
        item = dataset[index]
        assert set(item) == {"frames", "mask", "box", "replaced", "missing_box"}
        assert item["frames"].dtype == torch.uint8 and item["frames"].is_contiguous()
        assert item["frames"].shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)
        assert item["mask"].dtype == torch.bool and item["mask"].shape == (NUM_FRAMES // 2 * GRID * GRID,)
        assert item["box"].dtype == torch.float32 and item["box"].shape == (4,)
        box = item["box"]
        assert torch.isnan(box).all() or (box.min() >= 0 and box.max() <= 1 and box[2] > box[0] and box[3] > box[1])
        assert item["replaced"] == 0 and item["missing_box"] == 0
        clip, frames = pixels(item), videos[index].frames.float()
        assert clip.min() >= frames.min() and clip.max() <= frames.max()
        assert 2 < clip.std() and clip.min() < clip.max()


def test_device_normalisation_of_a_batch_equals_normalising_each_clip(data):
    """The training step normalises a collated (B, T, S, S, 3) uint8 batch in one pass into (B, 3, T, S, S); each
    clip comes out as VideoMAE's per-clip ImageNet normalisation of the same pixels."""
    dataset = motion_dataset(data)
    items = [dataset[index] for index in range(3)]
    batch = default_collate(items)["frames"]
    video = normalize_video(batch.permute(0, 4, 1, 2, 3))
    assert video.shape == (3, 3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE) and video.is_contiguous()
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1, 1)
    for clip, item in zip(video, items, strict=True):
        expected = (item["frames"].permute(3, 0, 1, 2).float() / 255 - mean) / std
        torch.testing.assert_close(clip, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(normalize_clip(item["frames"].permute(0, 3, 1, 2)), clip)

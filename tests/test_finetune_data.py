"""Fine-tuning data on real synthetic mp4 files decoded by decord: per-frame motion boxes through every augmentation
(random resized crop, flips, each geometric RandAugment op), SSV2 never flipped, TSN and dense sampling,
EPIC-KITCHENS-100 action segments, the multi-view test, clip-consistent RandAugment and erasing, missing or
malformed files, output format.

Boxes are checked against pixels: the object's mask (frame minus the object-free background the generator renders
with it) and a filled mask of the input box go through the same ops as the frames; the output box must bound the
first and match the second within a few pixels. Training items are replayed from a copy of the dataset's random
stream (temporal indices, RandAugment draw, crop, flip, in that order: VideoMAE's) and their pixels checked too.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import decord
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import datasets
import modeling_finetune  # noqa: F401  (registers the models)
from datasets import (
    BOX_SOURCES,
    EPIC_VIDEO_TEMPLATE,
    build_dataset,
    decode_size,
    dense_indices,
    multiple_samples_collate,
    segment_bounds,
    tsn_indices,
)
from make_synthetic_dataset import CLASSES, clip_seed, make_dataset, render_clip_details, write_mp4
from motion_detection import extract_boxes
from motion_detection.boxfile import MotionBoxes, load_boxes, save_boxes
from video_transforms import (
    AFFINE_OPS,
    AUGMENT_FILL,
    NO_BOX,
    ClipRandAugment,
    horizontal_flip,
    normalized_box,
    random_resized_crop_params,
    resized_crop,
    scale_box,
    short_side_resize,
)

NUM_VIDEOS, VIDEO_FRAMES, WIDTH, HEIGHT = 8, 24, 160, 120
NUM_FRAMES, SAMPLING_RATE, INPUT = 8, 2, 64
EVAL_DECODE = decode_size(WIDTH, HEIGHT, INPUT)  # validation/test decode at short side short_side_size = INPUT
OBJECT_DIFF = 20  # |frame - background| of object pixels; exactly 0 elsewhere (same noise in both renders)
SOURCE_TOL = 1.5  # pixels of the source frames: object mask vs box file (1), rasterised box (0.5)
POLICY = "rand-m9-n4-mstd0.5-inc1"
EPIC_HEADER = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
               "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
               "noun_class", "all_nouns", "all_noun_classes"]
# (narration_id, participant, video, start_frame, stop_frame, verb_class, noun_class); P01_01 is video 0 (24 frames)
EPIC_ROWS = [("P01_01_0", "P01", "P01_01", 3, 20, 5, 17), ("P01_01_1", "P01", "P01_01", 10, 24, 2, 40),
             ("P02_03_0", "P02", "P02_03", 1, 12, 7, 3), ("P01_01_2", "P01", "P01_01", 21, 23, 0, 9)]
EPIC_SOURCES = {"P01_01": 0, "P02_03": 3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_lists(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (folder / f"{split}.csv").write_text("".join(f"{line}\n" for line in lines))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 videos (24 frames, 160x120) with ground-truth box files; every list holds all of them."""
    root = tmp_path_factory.mktemp("finetune_data")
    make_dataset(root, NUM_VIDEOS, num_frames=VIDEO_FRAMES, width=WIDTH, height=HEIGHT)
    return write_lists(root, [f"{i:06d}.mp4 {i % len(CLASSES)}" for i in range(NUM_VIDEOS)])


def make_args(data: Path, **overrides) -> SimpleNamespace:
    args = dict(data_set="Kinetics-400", data_path=str(data), data_root=str(data / "videos"),
                box_dir=str(data / "gt_boxes"), num_frames=NUM_FRAMES, sampling_rate=SAMPLING_RATE, num_segments=1,
                input_size=INPUT, short_side_size=INPUT, test_num_segment=2, test_num_crop=3, num_sample=1, aa="",
                reprob=0.0, remode="pixel", recount=1, seed=0, tubelet_size=2, nb_classes=len(CLASSES), nb_verbs=97,
                nb_nouns=300, box_source="frame", flip=True)  # each frame's own box: what the geometry tests follow
    args.update(overrides)
    return SimpleNamespace(**args)


def decode(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Every frame, decoded by decord as stored or at size (width, height): (T, H, W, 3) uint8."""
    kwargs = {} if size is None else {"width": size[0], "height": size[1]}
    reader = decord.VideoReader(str(path), **kwargs)
    return torch.from_numpy(reader.get_batch(list(range(len(reader)))).asnumpy())


def as_frames(mask: np.ndarray) -> torch.Tensor:
    """(T, H, W) bool -> (T, H, W, 3) uint8 frames, 255 on the mask."""
    return torch.from_numpy(np.repeat(mask[..., None], 3, axis=-1).astype(np.uint8) * 255)


def box_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W) bool: pixels whose centre lies in the frame's box (none for NaN rows)."""
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside_x = (boxes[:, None, 0] <= xs) & (xs < boxes[:, None, 2])
    inside_y = (boxes[:, None, 1] <= ys) & (ys < boxes[:, None, 3])
    return inside_y[:, :, None] & inside_x[:, None, :]


def mask_bbox(mask: torch.Tensor | np.ndarray) -> np.ndarray | None:
    mask = np.asarray(mask)
    if not mask.any():
        return None
    cols, rows = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def unnormalize(video: torch.Tensor) -> torch.Tensor:
    """(3, T, S, S) normalised -> (T, 3, S, S) in [0, 255]."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1) * 255
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1, 1) * 255
    return (video * std + mean).permute(1, 0, 2, 3)


class Video:
    """A synthetic video as decoded, its true boxes, and its object mask from the generator's own render."""

    def __init__(self, root: Path, index: int):
        clip = render_clip_details(index % len(CLASSES), VIDEO_FRAMES, WIDTH, HEIGHT, clip_seed(0, index))
        self.object_mask = np.abs(clip.frames.astype(int) - clip.background.astype(int)).max(-1) > OBJECT_DIFF
        self.frames = decode(root / "videos" / f"{index:06d}.mp4")
        self.eval_frames = decode(root / "videos" / f"{index:06d}.mp4", EVAL_DECODE)
        self.gt = load_boxes(root / "gt_boxes" / f"{index:06d}.json").frames


@pytest.fixture(scope="module")
def videos(data):
    return {i: Video(data, i) for i in range(NUM_VIDEOS)}


@dataclass
class TrainDraw:
    indices: np.ndarray
    crop: tuple[int, int, int, int]
    flip: bool
    ops: list


def replay_train(dataset, num_file_frames: int, first_frame: int = 0, length: int | None = None) -> TrainDraw:
    """The draws the dataset's next training item makes, from a copy of its stream."""
    probe = copy.deepcopy(dataset.rng)
    length = num_file_frames if length is None else length
    if dataset.sampling == "tsn":
        indices = tsn_indices(length, NUM_FRAMES, probe)
    else:
        indices = dense_indices(length, NUM_FRAMES, SAMPLING_RATE, 1, probe)
    ops = dataset.rand_augment.draw(probe) if dataset.rand_augment is not None else []
    crop = random_resized_crop_params(WIDTH, HEIGHT, probe)
    flip = dataset.flip and probe.random() < 0.5
    return TrainDraw(first_frame + indices, crop, flip, ops)


def mask_ops(ops: list) -> list:
    """The geometric ops among ``ops``, filling with 0 (no object) where they bring in pixels from outside."""
    filled = []
    for op, level_args in ops:
        if op.name in AFFINE_OPS:
            op = copy.copy(op)
            op.kwargs = {**op.kwargs, "fillcolor": (0, 0, 0)}
            filled.append((op, level_args))
    return filled


def augment(frames: torch.Tensor, draw: TrainDraw, ops: list) -> torch.Tensor:
    """RandAugment, crop and flip (T, H, W, 3) uint8 frames as the draw says: (T, 3, S, S) uint8."""
    no_boxes = np.full((len(frames), 4), np.nan, np.float32)
    frames = ClipRandAugment.apply(frames.permute(0, 3, 1, 2), no_boxes, ops)[0].permute(0, 2, 3, 1)
    clip, _ = resized_crop(frames, no_boxes, *draw.crop, INPUT)
    return clip.flip(-1) if draw.flip else clip


def check_boxes(boxes01: np.ndarray, object_clip: torch.Tensor, rect_clip: torch.Tensor, skew_ops: int,
                upsampling: float = 1.0) -> int:
    """Output boxes against the transformed object mask and the transformed mask of the input box, within a pixel
    plus the source tolerance times the crop's ``upsampling``. Both masks must lie inside the box. Crops, flips and
    translations map boxes to boxes, so then the box equals the box mask's bounds (and the object's, unless an
    edge cuts the object); after one rotation or shear the box is the bounds of the turned box mask unless an edge
    cuts it; after two, the box of a turned box is only a bound. Returns how many frames show the object."""
    height, width = object_clip.shape[-2:]
    tol = 1.0 + SOURCE_TOL * upsampling
    shown = 0
    for t, box in enumerate(np.asarray(boxes01, dtype=np.float64) * [width, height, width, height]):
        rect, obj = mask_bbox(rect_clip[t, 0] > 127), mask_bbox(object_clip[t, 0] > 127)
        if np.isnan(box).any() or rect is None:  # the box left the frame: at most a sliver of it is visible
            # (after a rotation or shear the box of the turned box may hold more than the sliver: only a bound)
            for bounds in (rect, obj, None if np.isnan(box).any() or skew_ops else box):
                assert bounds is None or min(bounds[2] - bounds[0], bounds[3] - bounds[1]) <= tol
            continue
        for inside in (rect, obj):
            if inside is not None:
                assert (inside[:2] >= box[:2] - tol).all() and (inside[2:] <= box[2:] + tol).all(), (inside, box)
        uncut = (box[:2] > tol).all() and (box[2:] < np.array([width, height]) - tol).all()
        if skew_ops == 0 or (skew_ops == 1 and uncut):
            np.testing.assert_allclose(rect, box, atol=tol)
        if obj is not None:
            shown += 1
            if skew_ops == 0 and uncut:
                np.testing.assert_allclose(obj, box, atol=tol)
    return shown


def check_train_item(item: dict, video: Video, draw: TrainDraw) -> tuple[int, bool]:
    """Pixels equal the replayed augmentation of the decoded frames; boxes sit on the object. Returns the frames
    showing the object and whether a rotation or shear was applied."""
    expected = augment(video.frames[draw.indices], draw, draw.ops).float()
    assert torch.allclose(unnormalize(item["video"]), expected, atol=1e-3)
    geometric = mask_ops(draw.ops)
    object_clip = augment(as_frames(video.object_mask[draw.indices]), draw, geometric)
    rect_clip = augment(as_frames(box_mask(video.gt[draw.indices], HEIGHT, WIDTH)), draw, geometric)
    skew_ops = sum(op.name in ("Rotate", "ShearX", "ShearY") for op, _ in geometric)
    upsampling = max(INPUT / draw.crop[2], INPUT / draw.crop[3])
    return check_boxes(item["box"].numpy(), object_clip, rect_clip, skew_ops, upsampling), skew_ops > 0


@pytest.mark.parametrize("data_set", ["Kinetics-400", "SSV2"])
def test_train_boxes_follow_crop_flip_and_rand_augment(data, videos, data_set):
    """Key test: random resized crops, flips and RandAugment, replayed; pixels exact, boxes on the object."""
    dataset = build_dataset(True, False, make_args(data, data_set=data_set, aa=POLICY))
    shown, skewed, flips, crop_sizes = 0, 0, 0, set()
    for seed in range(24):
        dataset.reseed(seed)
        index = seed % NUM_VIDEOS
        draw = replay_train(dataset, VIDEO_FRAMES)
        frames_shown, was_skewed = check_train_item(dataset[index], videos[index], draw)
        shown, skewed, flips = shown + frames_shown, skewed + was_skewed, flips + draw.flip
        crop_sizes.add(draw.crop[2:])
    assert shown >= 24 * NUM_FRAMES // 2 and skewed >= 5 and len(crop_sizes) >= 20  # not vacuous
    assert flips >= 5 if data_set == "Kinetics-400" else flips == 0


@pytest.mark.parametrize("policy, name", [("rand-m10-n1-mstd0-p1.0-inc1", "PosterizeIncreasing"),
                                          ("rand-m1-n1-mstd0-p1.0", "Posterize")])
def test_posterize_keeping_no_bits_gives_black_frames(policy, name):
    """timm asks for 0 bits at these magnitudes, which Pillow 13 refuses with a ValueError (a worker's, so the run
    ended): the frames come out black, as before Pillow 13."""
    augmenter = ClipRandAugment(policy, INPUT, transforms=[name])
    [(op, (bits,))] = augmenter.draw(np.random.default_rng(0))
    assert op.name == name and bits == 0
    frames = torch.randint(1, 256, (2, 3, INPUT, INPUT), dtype=torch.uint8)
    assert not ClipRandAugment.apply(frames, np.zeros((2, 4), np.float32), [(op, (bits,))])[0].any()
    kept = ClipRandAugment.apply(frames, np.zeros((2, 4), np.float32), [(op, (2,))])[0]
    assert torch.equal(kept, frames & 0b11000000)


def test_flip_maps_box_edges_exactly():
    """Boxes are in pixel-edge coordinates: the columns [2, 5) of a 10-wide frame become [5, 8), not [4, 7)."""
    frames = torch.zeros(2, 3, 4, 10, dtype=torch.uint8)
    frames[..., 1:3, 2:5] = 255
    flipped, box = horizontal_flip(frames, np.array([[2, 1, 5, 3], [0, 0, 10, 4]], dtype=np.float32))
    np.testing.assert_array_equal(box, [[5, 1, 8, 3], [0, 0, 10, 4]])
    x1, y1, x2, y2 = box[0].astype(int)
    assert flipped[..., y1:y2, x1:x2].eq(255).all() and flipped.sum() == frames.sum()


@pytest.mark.parametrize("name", AFFINE_OPS)
def test_each_geometric_op_moves_the_box_with_the_pixels(videos, name):
    """Each geometric op forced by a one-op policy at magnitude 9, both signs, on real frames and masks."""
    augmenter = ClipRandAugment("rand-m9-n1-mstd0-p1.0", INPUT, transforms=[name])
    [(op, (value,))] = augmenter.draw(np.random.default_rng(0))
    assert op.name == name and value != 0
    frames = np.arange(0, VIDEO_FRAMES, 3)
    no_boxes = np.full((len(frames), 4), np.nan, np.float32)
    shown = 0
    for index in (0, 2, 5, 6):
        video = videos[index]
        for square in (True, False):  # 64 x 64 (training) and 85 x 64 (the op on a frame that is not square)
            def resize(x, square=square):
                return (resized_crop(x, no_boxes, 0, 0, WIDTH, HEIGHT, INPUT) if square
                        else short_side_resize(x, no_boxes, INPUT))[0]

            clip = resize(video.frames[frames])
            height, width = clip.shape[-2:]
            boxes = scale_box(video.gt[frames], width / WIDTH, height / HEIGHT)
            object_frames = resize(as_frames(video.object_mask[frames]))
            rect_frames = resize(as_frames(box_mask(video.gt[frames], HEIGHT, WIDTH)))
            for signed in (abs(value), -abs(value)):
                ops = [(op, (signed,))]
                _, moved = augmenter.apply(clip, boxes, ops)
                object_clip = augmenter.apply(object_frames, boxes, mask_ops(ops))[0]
                rect_clip = augmenter.apply(rect_frames, boxes, mask_ops(ops))[0]
                shown += check_boxes(normalized_box(moved, width, height), object_clip, rect_clip,
                                     int(not name.startswith("Translate")))
    assert shown >= 8 * len(frames)


def test_train_interpolation_sets_the_resampling_of_geometric_ops(data, videos):
    """``--train_interpolation``: each filter is PIL's own rotation with that filter; ``random`` draws bilinear or
    bicubic per op and clip, so every frame of a clip is resampled alike."""
    clip = resized_crop(videos[1].frames[:NUM_FRAMES], np.full((NUM_FRAMES, 4), np.nan, np.float32),
                        0, 0, WIDTH, HEIGHT, INPUT)[0]
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "nearest": Image.Resampling.NEAREST}
    outputs = {}
    for name, resample in filters.items():
        augmenter = ClipRandAugment("rand-m9-n1-mstd0-p1.0", INPUT, transforms=["Rotate"], interpolation=name)
        ops = augmenter.draw(np.random.default_rng(0))
        [(_, (degrees,))] = ops
        outputs[name] = augmenter.apply(clip, NO_BOX, ops)[0]
        expected = [np.asarray(Image.fromarray(frame).rotate(degrees, resample=resample, fillcolor=AUGMENT_FILL))
                    for frame in clip.permute(0, 2, 3, 1).numpy()]
        assert torch.equal(outputs[name], torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2))
    assert not torch.equal(outputs["bilinear"], outputs["bicubic"])

    augmenter = ClipRandAugment("rand-m9-n2-mstd0-p1.0", INPUT, transforms=["Rotate", "ShearX"],
                                interpolation="random")
    still = clip[[0] * NUM_FRAMES]
    rng, picked = np.random.default_rng(0), []
    for _ in range(10):
        ops = augmenter.draw(rng)
        picked += [op.kwargs["resample"] for op, _ in ops]
        out = augmenter.apply(still, NO_BOX, ops)[0]
        assert (out == out[0]).all() and not torch.equal(out, still)
    assert len(picked) == 20 and set(picked) == {Image.Resampling.BILINEAR, Image.Resampling.BICUBIC}

    dataset = build_dataset(True, False, make_args(data, aa=POLICY, train_interpolation="bilinear"))
    assert {op.kwargs["resample"] for op in dataset.rand_augment.ops} == {Image.Resampling.BILINEAR}
    with pytest.raises(ValueError, match="lanczos"):
        ClipRandAugment(POLICY, INPUT, interpolation="lanczos")


def box_centres_x(box: torch.Tensor) -> np.ndarray:
    box = box.numpy()
    valid = ~np.isnan(box).any(axis=1)
    return (box[valid, 0] + box[valid, 2]) / 2


def test_ssv2_never_flips_and_kinetics_flips_with_the_box(data, videos, tmp_path):
    """A move_left clip: SSV2 samples always move left; Kinetics samples move right exactly when flipped."""
    lists = write_lists(tmp_path / "lists", ["000000.mp4 0"])
    assert CLASSES[0] == "move_left"
    ssv2 = build_dataset(True, False, make_args(data, data_set="SSV2", data_path=str(lists), aa=POLICY,
                                                reprob=0.25))
    kinetics = build_dataset(True, False, make_args(data, data_path=str(lists), aa=POLICY))
    directions = {}
    for name, dataset in (("SSV2", ssv2), ("Kinetics-400", kinetics)):
        directions[name] = []
        for seed in range(40):
            dataset.reseed(seed)
            draw = replay_train(dataset, VIDEO_FRAMES)
            centres = box_centres_x(dataset[0]["box"])
            if len(centres) >= 2:
                moved_right = centres[-1] > centres[0]
                assert moved_right == draw.flip, (name, seed, centres)
                directions[name].append(moved_right)
    assert len(directions["SSV2"]) >= 30 and not any(directions["SSV2"])
    assert 5 <= sum(directions["Kinetics-400"]) <= len(directions["Kinetics-400"]) - 5
    unflipped = build_dataset(True, False, make_args(data, data_path=str(lists), aa=POLICY, flip=False))  # --no_flip
    for seed in range(20):
        unflipped.reseed(seed)
        centres = box_centres_x(unflipped[0]["box"])
        assert len(centres) < 2 or centres[-1] < centres[0], seed


def test_tsn_indices():
    rng = np.random.default_rng(0)
    for num_video_frames in (8, 24, 50, 97):
        bounds = segment_bounds(num_video_frames, NUM_FRAMES)
        assert bounds[0] == 0 and bounds[-1] == num_video_frames and (np.diff(bounds) >= 1).all()
        seen = [set() for _ in range(NUM_FRAMES)]
        for _ in range(300):
            indices = tsn_indices(num_video_frames, NUM_FRAMES, rng)
            assert indices.shape == (NUM_FRAMES,)
            assert ((bounds[:-1] <= indices) & (indices < bounds[1:])).all()  # one per segment
            for segment, index in enumerate(indices):
                seen[segment].add(int(index))
        assert all(seen[s] == set(range(bounds[s], bounds[s + 1])) for s in range(NUM_FRAMES))
        views = [tsn_indices(num_video_frames, NUM_FRAMES, position=(s + 0.5) / 3) for s in range(3)]
        for view in views:
            assert ((bounds[:-1] <= view) & (view < bounds[1:])).all()
        np.testing.assert_array_equal(tsn_indices(num_video_frames, NUM_FRAMES, position=0.0), bounds[:-1])
        if num_video_frames >= 3 * NUM_FRAMES:
            assert (views[0] < views[1]).all() and (views[1] < views[2]).all()
    short = tsn_indices(5, NUM_FRAMES, rng)
    assert short.min() >= 0 and short.max() <= 4 and (np.diff(short) >= 0).all()


def test_dense_indices():
    rng = np.random.default_rng(0)
    span = (NUM_FRAMES - 1) * SAMPLING_RATE + 1
    starts = set()
    for _ in range(300):
        indices = dense_indices(40, NUM_FRAMES, SAMPLING_RATE, rng=rng)
        assert (np.diff(indices) == SAMPLING_RATE).all() and indices[0] >= 0 and indices[-1] < 40
        starts.add(int(indices[0]))
    assert starts == set(range(40 - NUM_FRAMES * SAMPLING_RATE + 1))
    first, last = (dense_indices(40, NUM_FRAMES, SAMPLING_RATE, position=p) for p in (0.0, 1.0))
    assert first[0] == 0 and last[-1] == 40 - 1 and last[0] == 40 - span
    np.testing.assert_array_equal(dense_indices(40, NUM_FRAMES, SAMPLING_RATE), first + (40 - span) // 2)
    two = dense_indices(60, 4, 3, num_windows=2, rng=rng)
    assert two[:4].max() < 30 <= two[4:].min() and (np.diff(two[:4]) == 3).all()
    np.testing.assert_array_equal(dense_indices(10, NUM_FRAMES, SAMPLING_RATE), [0, 2, 4, 6, 8, 9, 9, 9])


def test_dataset_sampling_positions(data):
    """The datasets' test views: TSN (SSV2) at distinct fixed places per test segment, dense (Kinetics) windows
    from the start to the end of the video; the same every time."""
    ssv2 = build_dataset(False, True, make_args(data, data_set="SSV2", test_num_segment=3))
    views = [ssv2.frame_indices(ssv2.entries[0], VIDEO_FRAMES, s) for s in range(3)]
    np.testing.assert_array_equal(views[0], np.arange(0, VIDEO_FRAMES, 3))
    np.testing.assert_array_equal(views[2], np.arange(2, VIDEO_FRAMES, 3))
    assert all((ssv2.frame_indices(ssv2.entries[0], VIDEO_FRAMES, s) == views[s]).all() for s in range(3))
    # VideoMAE's SSV2 2-view test: view 0 at int(tick * x), view 1 at int(tick / 2 + tick * x), tick = frames / 16.
    two_views = build_dataset(False, True, make_args(data, data_set="SSV2", test_num_segment=2))
    tick = VIDEO_FRAMES / NUM_FRAMES
    for view, offset in enumerate((0.0, tick / 2)):
        np.testing.assert_array_equal(two_views.frame_indices(two_views.entries[0], VIDEO_FRAMES, view),
                                      [int(offset + tick * x) for x in range(NUM_FRAMES)])
    kinetics = build_dataset(False, True, make_args(data, test_num_segment=3))
    windows = [kinetics.frame_indices(kinetics.entries[0], VIDEO_FRAMES, s) for s in range(3)]
    assert [int(w[0]) for w in windows] == [0, 4, 9] and windows[2][-1] == VIDEO_FRAMES - 1
    val = build_dataset(False, False, make_args(data, data_set="SSV2"))
    np.testing.assert_array_equal(val.frame_indices(val.entries[0], VIDEO_FRAMES, 0), np.arange(1, VIDEO_FRAMES, 3))


def test_labels_outside_the_head_are_refused_naming_the_row(data, tmp_path):
    """A list with more classes than --nb_classes (or a negative label) fails when the dataset is built, naming the
    list and line, the video and the flag, instead of in the loss of the first batch that draws it."""
    for label in (len(CLASSES), -2):
        lists = write_lists(tmp_path / f"label{label}", ["000000.mp4 1", f"000001.mp4 {label}"])
        for is_train, test_mode in ((True, False), (False, False), (False, True)):
            with pytest.raises(ValueError, match=f"csv:2: 000001.mp4 has label {label}, not one of the --nb_classes "
                                                 f"{len(CLASSES)} classes"):
                build_dataset(is_train, test_mode, make_args(data, data_path=str(lists)))


def test_validation_leaves_out_videos_that_fail_to_decode(data, tmp_path, capsys):
    """The loader hands another video in a broken one's place; validation must not count that one twice."""
    import timm

    from engine_for_finetuning import accuracies, validation_one_epoch

    lines = [f"{i:06d}.mp4 {i % len(CLASSES)}" for i in range(NUM_VIDEOS)] + ["gone.mp4 3"]
    dataset = build_dataset(False, False, make_args(data, data_path=str(write_lists(tmp_path, lines)), box_dir=""))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    model = timm.create_model("vit_mini_patch16_224", num_classes=len(CLASSES), img_size=INPUT,
                              all_frames=NUM_FRAMES).eval()
    args = SimpleNamespace(print_freq=100, use_box=False, precision="fp32", head_sizes=[len(CLASSES)])
    stats = validation_one_epoch(loader, model, torch.device("cpu"), args)
    assert stats["skipped_videos"] == 1
    out = capsys.readouterr().out
    assert "validation: 1 videos could not be used (unreadable, or without a usable box file) and are left out" in out
    good = [dataset[i] for i in range(NUM_VIDEOS)]
    with torch.no_grad():
        logits = model(torch.stack([item["video"] for item in good]))
    expected = accuracies(logits, torch.stack([item["target"] for item in good]), [len(CLASSES)])
    assert stats["acc1"] == pytest.approx(expected["acc1"]) and stats["acc5"] == pytest.approx(expected["acc5"])


def test_a_single_tsn_test_view_takes_the_segment_middles_as_validation(data):
    val = build_dataset(False, False, make_args(data, data_set="SSV2"))
    test = build_dataset(False, True, make_args(data, data_set="SSV2", test_num_segment=1, test_num_crop=1))
    np.testing.assert_array_equal(test.frame_indices(test.entries[0], VIDEO_FRAMES, 0),
                                  val.frame_indices(val.entries[0], VIDEO_FRAMES, 0))


def expected_eval_view(video_frames: torch.Tensor, gt: np.ndarray, indices: np.ndarray, position: float):
    """Short side to INPUT, square crop at ``position`` along the long side, computed here: (T, 3, S, S), boxes."""
    frames = video_frames[indices].permute(0, 3, 1, 2).float()
    height, width = frames.shape[-2:]
    new_w = round(width * INPUT / height)
    frames = torch.nn.functional.interpolate(frames, size=(INPUT, new_w), mode="bilinear", antialias=True)
    x0 = round(position * (new_w - INPUT))
    boxes = gt[indices] * np.array([new_w / WIDTH, INPUT / HEIGHT] * 2, np.float32) - [x0, 0, x0, 0]
    boxes = np.clip(boxes, 0, INPUT)
    boxes[(boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])] = np.nan
    return frames[..., x0:x0 + INPUT], boxes / INPUT


def test_multi_view_test_and_validation(data, videos):
    dataset = build_dataset(False, True, make_args(data))
    assert EVAL_DECODE == (86, 64)  # 160x120 is decoded at the short side the test resizes to
    assert len(dataset) == NUM_VIDEOS * 2 * 3
    starts = {0: 0, 1: VIDEO_FRAMES - (NUM_FRAMES - 1) * SAMPLING_RATE - 1}
    for index in (1, 6):
        items = [dataset[index * 6 + view] for view in range(6)]
        for view, item in enumerate(items):
            segment, crop = divmod(view, 3)
            assert item["sample_id"] == index and item["view"] == view and item["replaced"] == 0
            indices = starts[segment] + np.arange(NUM_FRAMES) * SAMPLING_RATE
            frames, boxes = expected_eval_view(videos[index].eval_frames, videos[index].gt, indices, crop / 2)
            assert torch.allclose(unnormalize(item["video"]), frames, atol=1e-2)
            np.testing.assert_allclose(item["box"].numpy(), boxes, atol=1e-4)
        left, centre, right = (items[k]["video"] for k in range(3))
        assert not torch.equal(left, centre) and not torch.equal(centre, right)
        assert torch.equal(left[..., 11:], centre[..., :-11]) and torch.equal(centre[..., 11:], right[..., :-11])
        assert not torch.equal(items[0]["video"], items[3]["video"])  # the second temporal clip
    validation = build_dataset(False, False, make_args(data))
    assert len(validation) == NUM_VIDEOS
    item = validation[4]
    assert "sample_id" not in item and "view" not in item
    indices = (VIDEO_FRAMES - (NUM_FRAMES - 1) * SAMPLING_RATE - 1) // 2 + np.arange(NUM_FRAMES) * SAMPLING_RATE
    frames, boxes = expected_eval_view(videos[4].eval_frames, videos[4].gt, indices, 0.5)
    assert torch.allclose(unnormalize(item["video"]), frames, atol=1e-2)
    np.testing.assert_allclose(item["box"].numpy(), boxes, atol=1e-4)


def test_test_views_of_frames_decoded_at_full_size_scale_their_boxes(data, videos, monkeypatch):
    """A video decord cannot decode at a reduced size is decoded whole: the short-side resize then shrinks 160x120
    to 85x64, and the boxes must shrink with it (the decode above already has the test's size)."""
    monkeypatch.setattr(datasets, "decode_size", lambda width, height, short_side: (width, height))
    dataset = build_dataset(False, True, make_args(data))
    for view in (0, 2):
        item = dataset[3 * 6 + view]
        indices = np.arange(NUM_FRAMES) * SAMPLING_RATE
        frames, boxes = expected_eval_view(videos[3].frames, videos[3].gt, indices, view / 2)
        assert item["video"].shape[-2:] == (INPUT, INPUT)
        assert (unnormalize(item["video"]) - frames).abs().mean() < 1
        np.testing.assert_allclose(item["box"].numpy(), boxes, atol=1e-4)


def write_epic_csv(path: Path, rows=EPIC_ROWS, labelled: bool = True) -> None:
    header = EPIC_HEADER if labelled else [c for c in EPIC_HEADER if not c.endswith(("_class", "_classes"))]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for narration_id, participant, video, start, stop, verb, noun in rows:
            writer.writerow({"narration_id": narration_id, "participant_id": participant, "video_id": video,
                             "narration_timestamp": "00:00:01.00", "start_timestamp": "00:00:01.00",
                             "stop_timestamp": "00:00:02.00", "start_frame": start, "stop_frame": stop,
                             "narration": "open drawer", "verb": "open", "verb_class": verb, "noun": "drawer",
                             "noun_class": noun, "all_nouns": "['drawer']", "all_noun_classes": f"[{noun}]"})


@pytest.fixture(scope="module")
def epic(data, tmp_path_factory):
    """EPIC layout: synthetic videos renamed to long videos {participant}/videos/{video}.MP4 with mirrored box files,
    the official csv copied to train/val/test.csv, and pre-trimmed clips {narration_id}.mp4 with their own boxes."""
    root = tmp_path_factory.mktemp("epic")
    for video_id, index in EPIC_SOURCES.items():
        participant = video_id.split("_")[0]
        (root / "videos" / participant / "videos").mkdir(parents=True, exist_ok=True)
        (root / "boxes" / participant / "videos").mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "videos" / f"{index:06d}.mp4", root / "videos" / participant / "videos" / f"{video_id}.MP4")
        shutil.copy(data / "gt_boxes" / f"{index:06d}.json",
                    root / "boxes" / participant / "videos" / f"{video_id}.json")
    write_epic_csv(root / "EPIC_100_train.csv")
    for split in ("train", "val", "test"):
        shutil.copy(root / "EPIC_100_train.csv", root / f"{split}.csv")
    for narration_id, _, video_id, start, stop, _, _ in EPIC_ROWS:
        index = EPIC_SOURCES[video_id]
        clip = render_clip_details(index % len(CLASSES), VIDEO_FRAMES, WIDTH, HEIGHT, clip_seed(0, index))
        write_mp4(root / "trimmed" / f"{narration_id}.mp4", clip.frames[start - 1:stop], fps=12)
        rows = clip.boxes[start - 1:stop]
        save_boxes(root / "trimmed_boxes" / f"{narration_id}.json",
                   MotionBoxes(f"{narration_id}.mp4", WIDTH, HEIGHT, len(rows), 12.0, {}, rows))
    return root


def epic_args(epic: Path, **overrides) -> SimpleNamespace:
    options = dict(data_set="EPIC-KITCHENS-100", data_path=str(epic), data_root=str(epic / "videos"),
                   box_dir=str(epic / "boxes"), epic_video_template=EPIC_VIDEO_TEMPLATE)
    options.update(overrides)
    return make_args(epic, **options)


def test_epic_test_views_name_each_segment_and_split_per_head(epic, tmp_path):
    """The test view file, which holds the scores for an EPIC submission: each line names the list row, its long
    video and the segment's frames (0-based), and the logits are the verb head's, then the noun head's."""
    import timm

    from engine_for_finetuning import final_test, merge_views

    dataset = build_dataset(False, True, epic_args(epic, test_num_segment=1, test_num_crop=1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    heads = [7, 41]
    model = timm.create_model("vit_mini_patch16_224", num_classes=sum(heads), img_size=INPUT,
                              all_frames=NUM_FRAMES).eval()
    args = SimpleNamespace(print_freq=100, use_box=False, precision="fp32", head_sizes=heads)
    final_test(loader, model, torch.device("cpu"), args, tmp_path / "views.jsonl")
    views = [json.loads(line) for line in (tmp_path / "views.jsonl").read_text().splitlines()]
    assert [(v["id"], v["line"], v["video"], v["frames"], v["target"]) for v in views] == [
        (row, row + 2, f"{participant}/videos/{video_id}.MP4", [start - 1, stop - 1], [verb, noun])
        for row, (_, participant, video_id, start, stop, verb, noun) in enumerate(EPIC_ROWS)]
    assert all(len(v["logits"]) == sum(heads) for v in views)
    assert merge_views([tmp_path / "views.jsonl"], heads)["videos"] == len(EPIC_ROWS)


def test_epic_segments_targets_frame_ranges_and_boxes(epic, videos, caplog):
    validation = build_dataset(False, False, epic_args(epic))
    assert len(validation) == len(EPIC_ROWS)
    for row, (_, _, video_id, start, stop, verb, noun) in enumerate(EPIC_ROWS):
        video = videos[EPIC_SOURCES[video_id]]
        item = validation[row]
        assert item["target"].tolist() == [verb, noun] and item["target"].dtype == torch.long
        indices = start - 1 + tsn_indices(stop - start + 1, NUM_FRAMES)
        assert indices.min() >= start - 1 and indices.max() <= stop - 1
        frames, boxes = expected_eval_view(video.eval_frames, video.gt, indices, 0.5)
        assert torch.allclose(unnormalize(item["video"]), frames, atol=1e-2)
        np.testing.assert_allclose(item["box"].numpy(), boxes, atol=1e-4)
    # --box_source video (the default): every frame gets the union box of its action segment, not of the long video
    segment_boxes = build_dataset(False, False, epic_args(epic, box_source="video"))
    for row, (_, _, video_id, start, stop, _, _) in enumerate(EPIC_ROWS):
        video = videos[EPIC_SOURCES[video_id]]
        segment = video.gt[start - 1:stop]
        union = np.array([*np.nanmin(segment[:, :2], 0), *np.nanmax(segment[:, 2:], 0)])
        _, boxes = expected_eval_view(video.eval_frames, np.tile(union, (len(video.gt), 1)),
                                      start - 1 + tsn_indices(stop - start + 1, NUM_FRAMES), 0.5)
        np.testing.assert_allclose(segment_boxes[row]["box"].numpy(), boxes, atol=1e-4)

    train = build_dataset(True, False, epic_args(epic, aa=POLICY))
    shown = 0
    for seed in range(16):
        train.reseed(seed)
        row = seed % len(EPIC_ROWS)
        _, _, video_id, start, stop, verb, noun = EPIC_ROWS[row]
        draw = replay_train(train, VIDEO_FRAMES, start - 1, stop - start + 1)
        assert draw.indices.min() >= start - 1 and draw.indices.max() <= stop - 1
        item = train[row]
        assert item["target"].tolist() == [verb, noun]
        shown += check_train_item(item, videos[EPIC_SOURCES[video_id]], draw)[0]
    assert shown >= 16 * NUM_FRAMES // 2

    # A segment past the video's end (annotations at another frame rate than the file): named once, not an error.
    overrun = epic_args(epic, data_path=str(write_lists(epic / "overrun", [])))
    write_epic_csv(Path(overrun.data_path) / "val.csv", [("P01_01_9", "P01", "P01_01", 20, 30, 1, 2)])
    with caplog.at_level(logging.WARNING, logger="datasets"):
        overrun_dataset = build_dataset(False, False, overrun)
        overrun_dataset[0]
    assert [r.getMessage() for r in caplog.records if "ends at frame 30 of a video of 24 frames" in r.getMessage()]
    # sampled over the frames the file holds (19..23), as if listed to its end, not stuck on its last frame
    listed = overrun_dataset.entries[0]
    np.testing.assert_array_equal(overrun_dataset.frame_indices(listed, VIDEO_FRAMES, 0),
                                  19 + tsn_indices(VIDEO_FRAMES - 19, NUM_FRAMES))

    test = build_dataset(False, True, epic_args(epic, test_num_segment=2, test_num_crop=1))
    first, second = test[2], test[3]  # row 2 (frames 1..12), both temporal clips
    assert (first["sample_id"], first["view"], second["sample_id"], second["view"]) == (1, 0, 1, 1)
    assert not torch.equal(first["video"], second["video"])


def test_epic_pretrimmed_clips_and_unlabelled_csv(epic, videos, tmp_path):
    long = build_dataset(False, False, epic_args(epic))
    trimmed = build_dataset(False, False, epic_args(epic, data_root=str(epic / "trimmed"),
                                                    box_dir=str(epic / "trimmed_boxes"),
                                                    epic_video_template="{narration_id}.mp4"))
    for row in range(len(EPIC_ROWS)):
        assert trimmed.entries[row].first_frame == 0 and trimmed.entries[row].num_frames is None  # the whole file
        a, b = long[row], trimmed[row]
        np.testing.assert_allclose(a["box"].numpy(), b["box"].numpy(), atol=1e-4)  # the same frames' boxes
        assert (a["video"] - b["video"]).abs().mean() < 0.1  # the same frames, encoded twice
    # A clip cut at half the annotation's frame rate (8 of its 15 frames): sampled over all of them, none repeated.
    assert trimmed.frame_indices(trimmed.entries[1], 8, 0).tolist() == list(range(8))
    write_epic_csv(tmp_path / "test.csv", labelled=False)  # the official test csv has no labels
    unlabelled = build_dataset(False, True, epic_args(epic, data_path=str(tmp_path)))
    assert unlabelled[0]["target"].tolist() == [-1, -1]
    for split, is_train in (("train", True), ("val", False)):
        write_epic_csv(tmp_path / f"{split}.csv", labelled=False)
        with pytest.raises(ValueError, match=f"{split}.csv:2: .* has label -1, not one of the --nb_verbs 97 classes "
                                             r"\(training and validation need labels"):
            build_dataset(is_train, False, epic_args(epic, data_path=str(tmp_path)))
    for heads, flag in (({"nb_verbs": 3}, "nb_verbs 3"), ({"nb_nouns": 2}, "nb_nouns 2")):
        with pytest.raises(ValueError, match=f"val.csv:\\d+: .* has label \\d+, not one of the --{flag} classes"):
            build_dataset(False, False, epic_args(epic, **heads))
    with open(epic / "train.csv", encoding="utf-8") as f:
        text = f.read().replace("stop_frame", "end_frame")
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(ValueError, match="stop_frame"):
        build_dataset(True, False, epic_args(epic, data_path=str(tmp_path)))


def test_clip_consistent_rand_augment_and_per_frame_erasing(data, videos):
    """A clip of one repeated frame stays a clip of one repeated frame through RandAugment (VideoMAE draws its ops
    once per clip); random erasing, as in VideoMAE, erases each frame on its own."""
    augmenter = ClipRandAugment(POLICY, INPUT)
    still = videos[3].frames[[5] * NUM_FRAMES]
    boxes = np.tile(scale_box(videos[3].gt[5], INPUT / WIDTH, INPUT / HEIGHT), (NUM_FRAMES, 1))
    clip, boxes = resized_crop(still, boxes, 0, 0, WIDTH, HEIGHT, INPUT)
    rng, changed = np.random.default_rng(0), 0
    for _ in range(30):
        out, out_boxes = augmenter(clip, boxes, rng)
        assert (out == out[0]).all() and np.array_equal(out_boxes, np.tile(out_boxes[0], (NUM_FRAMES, 1)),
                                                        equal_nan=True)
        changed += not torch.equal(out, clip)
    assert changed >= 20

    # Random erasing as VideoMAE does it: every frame on its own, one rectangle each at --reprob 1.
    for mode in ("const", "pixel"):
        dataset = build_dataset(True, False, make_args(data, reprob=1.0, remode=mode))
        erased_frames, differing_clips = 0, 0
        for index in range(NUM_VIDEOS):
            dataset.reseed(index)
            draw = replay_train(dataset, VIDEO_FRAMES)
            video = unnormalize(dataset[index]["video"])
            erased = (video - augment(videos[index].frames[draw.indices], draw, []).float()).abs().amax(1) > 1e-2
            for frame in erased:
                box = mask_bbox(frame)
                assert box is not None and frame.sum() == (box[2] - box[0]) * (box[3] - box[1])
            erased_frames += int(erased.any((1, 2)).sum())
            differing_clips += not (erased == erased[0]).all()
        assert erased_frames == NUM_VIDEOS * NUM_FRAMES and differing_clips == NUM_VIDEOS

    # --recount 4: up to 4 rectangles in every frame (VideoMAE's num_splits=4 leaves the first T/4 frames alone).
    dataset = build_dataset(True, False, make_args(data, reprob=1.0, remode="const", recount=4))
    for index in range(NUM_VIDEOS):
        dataset.reseed(index)
        draw = replay_train(dataset, VIDEO_FRAMES)
        video = unnormalize(dataset[index]["video"])
        erased = (video - augment(videos[index].frames[draw.indices], draw, []).float()).abs().amax(1) > 1e-2
        assert erased.any((1, 2)).all()


def test_box_sources_give_every_frame_one_box(data, tmp_path):
    """--box_source video (the paper's) gives every frame the file's union box, as a box file holding that union in
    every frame (the MOFO release's) gives with --box_source frame; clip the union of the sampled frames' own."""
    release = tmp_path / "release_boxes"
    release.mkdir()
    for path in (data / "gt_boxes").glob("*.json"):
        record = json.loads(path.read_text())
        record["frames"] = [record["union"]] * len(record["frames"])
        (release / path.name).write_text(json.dumps(record))
    for mode in ("train", "validation"):
        is_train = mode == "train"
        boxes = {source: build_dataset(is_train, False, make_args(data, box_source=source)) for source in BOX_SOURCES}
        boxes["release"] = build_dataset(is_train, False, make_args(data, box_dir=str(release)))
        for index in range(NUM_VIDEOS):
            for dataset in boxes.values():
                dataset.reseed(index)  # the same frames and crop from every dataset
            item = {name: dataset[index]["box"].numpy() for name, dataset in boxes.items()}
            own, clip, video = item["frame"], item["clip"], item["video"]
            np.testing.assert_array_equal(video, item["release"])
            for one_box in (clip, video):
                np.testing.assert_array_equal(one_box, np.broadcast_to(one_box[0], one_box.shape))
            if not np.isnan(own).any():  # the crop keeps every frame's box: cropping and union commute
                np.testing.assert_allclose(clip[0], [*own[:, :2].min(0), *own[:, 2:].max(0)], atol=1e-6)
            elif not np.isnan(own).all():  # else the union may reach into the crop between the frames' boxes
                assert (clip[0, :2] <= np.nanmin(own[:, :2], 0) + 1e-6).all()
                assert (clip[0, 2:] >= np.nanmax(own[:, 2:], 0) - 1e-6).all()
            if not np.isnan(clip).any():
                assert (video[0, :2] <= clip[0, :2] + 1e-6).all() and (video[0, 2:] >= clip[0, 2:] - 1e-6).all()
    with pytest.raises(ValueError, match="box_source must be one of"):
        build_dataset(False, False, make_args(data, box_source="frames"))


def test_missing_and_malformed_box_files(data, tmp_path, caplog):
    """Box files missing for videos on disk stop the run at the start, all named (a listed video not on disk,
    part/a.mp4, is skipped at run time instead); a malformed one (found when drawn) costs only its sample, replaced
    and logged as a corrupt video's."""
    shutil.copytree(data / "gt_boxes", tmp_path / "boxes")
    lists = write_lists(tmp_path / "lists", [f"{i:06d}.mp4 0" for i in range(NUM_VIDEOS)] + ["part/a.mp4 1"])
    for name in ("000002.json", "000005.json"):
        (tmp_path / "boxes" / name).unlink()
    with pytest.raises(FileNotFoundError) as error:
        build_dataset(True, False, make_args(data, data_path=str(lists), box_dir=str(tmp_path / "boxes")))
    message = str(error.value)
    assert "2 of 9 videos" in message and "part/a.json" not in message
    for name in ("000002.json", "000005.json"):
        assert str(tmp_path / "boxes" / name) in message

    shutil.copy(data / "gt_boxes" / "000002.json", tmp_path / "boxes" / "000002.json")
    record = json.loads((data / "gt_boxes" / "000005.json").read_text())
    record["frames"] = record["frames"][:-1]
    (tmp_path / "boxes" / "000005.json").write_text(json.dumps(record))
    lists = write_lists(tmp_path / "lists", [f"{i:06d}.mp4 0" for i in range(NUM_VIDEOS)])
    dataset = build_dataset(True, False, make_args(data, data_path=str(lists), box_dir=str(tmp_path / "boxes")))
    assert dataset[4]["replaced"] == 0
    assert dataset[5]["replaced"] == 1
    malformed = tmp_path / "boxes" / "000005.json"
    assert f"skipping video without a usable box file ({malformed}: field 'frames'" in caplog.text


def test_missing_video_replaced_and_absolute_paths(data, videos, tmp_path, caplog):
    shutil.copytree(data / "gt_boxes", tmp_path / "boxes")
    shutil.copy(data / "gt_boxes" / "000000.json", tmp_path / "boxes" / "gone.json")
    root = data / "videos"
    lines = [f"{root / f'{i:06d}.mp4'} {i % len(CLASSES)}" for i in range(NUM_VIDEOS)] + ["gone.mp4 3"]
    lists = write_lists(tmp_path / "lists", lines)
    for is_train, test_mode in ((True, False), (False, True)):
        dataset = build_dataset(is_train, test_mode, make_args(data, data_path=str(lists),
                                                               box_dir=str(tmp_path / "boxes")))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="datasets"):
            item = dataset[NUM_VIDEOS * dataset.num_views]
        assert item["replaced"] >= 1 and item["video"].shape == (3, NUM_FRAMES, INPUT, INPUT)
        assert any("gone.mp4" in r.getMessage() and "file not found" in r.getMessage() for r in caplog.records)
        if test_mode:
            assert item["sample_id"] < NUM_VIDEOS and item["view"] == 0  # the replacement's id, the same view
            assert item["target"].item() == item["sample_id"] % len(CLASSES)
    # Absolute list paths below data_root find their box files; validation boxes as computed here.
    validation = build_dataset(False, False, make_args(data, data_path=str(lists), box_dir=str(tmp_path / "boxes")))
    indices = 4 + np.arange(NUM_FRAMES) * SAMPLING_RATE
    _, boxes = expected_eval_view(videos[6].eval_frames, videos[6].gt, indices, 0.5)
    np.testing.assert_allclose(validation[6]["box"].numpy(), boxes, atol=1e-4)
    with pytest.raises(ValueError, match="not below"):
        build_dataset(False, False, make_args(data, data_path=str(lists), data_root=str(tmp_path),
                                              box_dir=str(tmp_path / "boxes")))


def test_output_format_and_normalisation(data, videos):
    train = build_dataset(True, False, make_args(data, data_set="SSV2", num_sample=2, aa=POLICY, reprob=0.25))
    samples = train[3]
    assert isinstance(samples, list) and len(samples) == 2 and [s["replaced"] for s in samples] == [0, 0]
    batch = multiple_samples_collate([train[0], train[1]])
    assert batch["video"].shape == (4, 3, NUM_FRAMES, INPUT, INPUT) and batch["video"].dtype == torch.float32
    assert batch["target"].shape == (4, 1) and batch["target"].dtype == torch.long
    assert batch["box"].shape == (4, NUM_FRAMES, 4) and batch["box"].dtype == torch.float32
    plain = build_dataset(False, False, make_args(data, box_dir=None))
    assert torch.isnan(plain[0]["box"]).all() and plain[0]["box"].shape == (NUM_FRAMES, 4)
    for dataset in (build_dataset(True, False, make_args(data)), build_dataset(False, False, make_args(data)),
                    build_dataset(False, True, make_args(data))):
        valid_rows, num_items = 0, 0
        for index in range(0, len(dataset), max(len(dataset) // 8, 1)):
            item = dataset[index]
            keys = {"video", "target", "box", "replaced"} | ({"sample_id", "view"} if dataset.mode == "test" else set())
            assert set(item) == keys
            assert item["video"].shape == (3, NUM_FRAMES, INPUT, INPUT) and item["video"].dtype == torch.float32
            assert item["target"].tolist() == [dataset.entries[index // dataset.num_views].target[0]]
            box = item["box"]
            valid = ~torch.isnan(box).any(1)
            assert torch.isnan(box[~valid]).all()
            valid_rows += int(valid.sum())
            assert (box[valid] >= 0).all() and (box[valid] <= 1).all()
            assert (box[valid, 2] > box[valid, 0]).all() and (box[valid, 3] > box[valid, 1]).all()
            pixels = unnormalize(item["video"])
            assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
            assert abs(item["video"].mean()) < 2 and 0.2 < item["video"].std() < 2
            num_items += 1
        assert valid_rows >= num_items * NUM_FRAMES // 2  # the boxes are not vacuous


def test_reseed_reproduces_and_differs(data):
    dataset = build_dataset(True, False, make_args(data, aa=POLICY, reprob=0.5))

    def item(seed):
        dataset.reseed(seed)
        return dataset[2]

    a, b, c = item(7), item(7), item(8)
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["box"].nan_to_num(-1), b["box"].nan_to_num(-1))
    assert not torch.equal(a["video"], c["video"])


def test_crop_scale_bounds_the_random_resized_crop(data):
    """``--crop_scale 1 1`` keeps the whole 4:3 frame (only resized), so the boxes are the frame boxes rescaled;
    an impossible range is refused."""
    dataset = build_dataset(True, False, make_args(data, data_set="SSV2", aa="", reprob=0.0, crop_scale=(1.0, 1.0)))
    frames = torch.randint(0, 255, (4, 120, 160, 3), dtype=torch.uint8)
    boxes = np.array([[16, 12, 80, 60]] * 4, dtype=np.float32)
    video, out_boxes = dataset._train_clip(frames, boxes)
    size = dataset.input_size
    np.testing.assert_allclose(out_boxes, boxes * np.array([size / 160, size / 120] * 2), rtol=1e-5)
    assert video.shape == (3, 4, size, size)
    with pytest.raises(ValueError, match="crop_scale"):
        build_dataset(True, False, make_args(data, data_set="SSV2", crop_scale=(0.5, 0.2)))


def test_epic_rows_that_cannot_be_read_are_named_and_a_bom_is_ignored(tmp_path):
    """A spreadsheet's byte-order mark before the header changes nothing; a row with a non-integer frame or class,
    or with too few columns, is named by file and line."""
    good = tmp_path / "good.csv"
    write_epic_csv(good)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    assert datasets.read_epic_list(bom) == datasets.read_epic_list(good)
    lines = good.read_text().splitlines()
    for name, line in (("letters.csv", lines[2].replace(",10,24,", ",ten,24,")), ("short.csv", lines[2][:40])):
        (tmp_path / name).write_text("\n".join([lines[0], lines[1], line]) + "\n")
        with pytest.raises(ValueError, match=f"{name}:3: "):
            datasets.read_epic_list(tmp_path / name)
    with open(tmp_path / "list.csv", "wb") as f:
        f.write(b"\xef\xbb\xbf000000.mp4 0\n")
    assert datasets.read_label_list(tmp_path / "list.csv")[0].video == "000000.mp4"


def test_a_data_path_of_the_wrong_kind_is_named(data, tmp_path):
    """Pretraining's --data_path is a list file, fine-tuning's the folder of its three lists: each mistake is named
    at startup instead of surfacing as IsADirectoryError / NotADirectoryError from deep in the reader."""
    (tmp_path / "train.csv").write_text("a.mp4 0\n")
    with pytest.raises(ValueError, match=f"{tmp_path} is a folder, not a list file"):
        datasets.read_video_list(tmp_path)
    video = data / "videos" / "000000.mp4"
    with pytest.raises(ValueError, match=rf"{video} is not a text list \([^)]* at byte \d+\): a list "
                                         r"names one video per line \('path \[label\]'\); is it a video itself\?"):
        datasets.read_pretrain_list(video)
    with pytest.raises(ValueError, match="train.csv is a file: fine-tuning reads the folder holding train.csv"):
        datasets.build_dataset(True, False, SimpleNamespace(data_path=str(tmp_path / "train.csv"), data_set="SSV2"))
    with pytest.raises(ValueError, match="no_such: no such folder"):
        datasets.build_dataset(True, False, SimpleNamespace(data_path=str(tmp_path / "no_such"), data_set="SSV2"))
    with pytest.raises(ValueError, match=r"test.csv: no such file \(the test list, in the --data_path folder\)"):
        datasets.build_dataset(False, True, SimpleNamespace(data_path=str(tmp_path), data_set="SSV2"))
    with pytest.raises(ValueError, match=r"train.csv: none of the \d+ videos checked is found below --data_root"):
        build_dataset(True, False, make_args(data, data_root=str(data)))  # the videos are in data/videos


def test_a_list_path_with_a_space_is_named_by_its_line(tmp_path):
    """``my clip.mp4 3`` splits into the path ``my``: each list reader (fine-tuning, pretraining, box extraction)
    names the line and the space instead of a run-time "my: file not found" per draw; the MOFO release's
    ``path "class name" label`` rows and VideoMAE V2's frame ranges still read."""
    (tmp_path / "list.csv").write_text("a.mp4 3\nclips/my clip.MP4 4\n")
    for read in (datasets.read_label_list, datasets.read_pretrain_list, datasets.read_video_list,
                 extract_boxes.read_video_list):
        with pytest.raises(ValueError, match=r"list.csv:2: the video path seems to hold a space, 'clips/my clip.MP4'"):
            read(tmp_path / "list.csv")
    (tmp_path / "release.csv").write_text('a.mp4 "Pushing something from left to right" 3\n')
    assert datasets.read_label_list(tmp_path / "release.csv")[0].target == (3,)
    (tmp_path / "v2.csv").write_text("frames/b 0 30 2\n")
    assert datasets.read_pretrain_list(tmp_path / "v2.csv")[0].num_frames == 30


def test_a_label_list_row_without_a_label_is_named_by_its_line(tmp_path):
    (tmp_path / "train.csv").write_text("a.mp4 3\n\nb.mp4 cat\n")
    with pytest.raises(ValueError, match=r"train.csv:3: 'b.mp4 cat' does not end in an integer label"):
        datasets.read_label_list(tmp_path / "train.csv")
    (tmp_path / "bare.csv").write_text("a.mp4 3\nb.mp4\n")
    with pytest.raises(ValueError, match=r"bare.csv:2: 'b.mp4' does not end in an integer label$"):
        datasets.read_label_list(tmp_path / "bare.csv")


def test_an_epic_csv_of_only_the_columns_dataset_md_names_reads(tmp_path):
    (tmp_path / "own.csv").write_text("participant_id,video_id,start_frame,stop_frame,verb_class,noun_class\n"
                                      "P01,P01_01,3,20,5,17\n")
    expected = datasets.ClipEntry("P01/videos/P01_01.MP4", (5, 17), first_frame=2, num_frames=18)
    assert datasets.read_epic_list(tmp_path / "own.csv") == [expected]


def test_a_list_of_the_other_format_names_the_data_set_to_pass(tmp_path):
    """An EPIC annotation csv read as a label list, or a label list read as EPIC's csv, says which --data_set fits."""
    write_epic_csv(tmp_path / "epic.csv")
    with pytest.raises(ValueError, match=r"epic.csv:1: .* does not end in an integer label \(a csv row: "
                                         r"EPIC-KITCHENS-100's annotation files need --data_set EPIC-KITCHENS-100\)"):
        datasets.read_label_list(tmp_path / "epic.csv")
    (tmp_path / "ssv2.csv").write_text("000003.mp4 3\n000004.mp4 1\n")
    with pytest.raises(ValueError, match=r"the header has \['000003.mp4 3'\] \(a 'path label' list: pass the "
                                         r"--data_set it is of, such as SSV2\)"):
        datasets.read_epic_list(tmp_path / "ssv2.csv")


def test_a_label_list_row_with_a_frame_range_is_refused(tmp_path):
    """Pretraining's V2 rows (path start total label) would otherwise train on the whole video, range ignored; the
    MOFO release's rows with a quoted class name still read."""
    (tmp_path / "train.csv").write_text('a.mp4 "Pushing 2 things" 5\nb.mp4 100 5 3\n')
    with pytest.raises(ValueError, match=r"train.csv:2: 'b.mp4 100 5 3' looks like a frame range"):
        datasets.read_label_list(tmp_path / "train.csv")
    (tmp_path / "train.csv").write_text('a.mp4 "Pushing 2 things" 5\nb.mp4 3\nc.mp4 Pushing 4\n')
    assert [entry.target for entry in datasets.read_label_list(tmp_path / "train.csv")] == [(5,), (3,), (4,)]
    (tmp_path / "train.csv").write_text("a.mp4 5\nb.mp4 30 3\n")  # a frame count, or which is the label?
    with pytest.raises(ValueError, match=r"train.csv:2: 'b.mp4 30 3' has two numbers after the path"):
        datasets.read_label_list(tmp_path / "train.csv")

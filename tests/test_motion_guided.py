"""Motion-guided masking (MGMAE / MGM style): exact per-slice counts, the tube special case, the direction and
sub-token accumulation of the propagation, the DIS per-token motion on a known translation, tracking a moving
object on a synthetic clip better than a straight tube, the pretraining dataset's masks, and a tiny CPU run."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch

import make_synthetic_dataset as synthetic
from datasets import VideoMAEPretrainDataset
from masking_generator import (
    DISTokenMotion,
    MotionFocusedMaskingGenerator,
    MotionGuidedMaskingGenerator,
    TubeMaskingGenerator,
    crop_token_motion,
    inside_box_tokens,
    pool_to_tokens,
    tubelet_displacement,
)
from motion_detection.codec_mv import sampled_frame_motion
from test_codec_mv import HEIGHT, VELOCITY, WIDTH, encode, interior, translating_clip
from test_pretraining import clean_env, pretrain, pretraining_set, run_args
from video_transforms import multiscale_crop, resize_frames, scale_box

GRIDS = [(8, 14, 14), (4, 7, 10), (3, 5, 6), (1, 5, 6)]  # non-square, odd grids and one slice (no motion to follow)


def slices(mask: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(mask).reshape(grid[0], grid[1], grid[2])


@pytest.mark.parametrize("grid", GRIDS)
def test_exact_count_in_every_slice_for_random_fields(grid):
    rng = np.random.default_rng(0)
    for ratio in (0.0, 0.3, 0.75, 0.9, 1.0):
        generator = MotionGuidedMaskingGenerator(grid, ratio, motion_mask_ratio=0.75, seed=1)
        per_slice = int(ratio * grid[1] * grid[2])
        for trial in range(40):
            field = rng.normal(0.0, [0.0, 0.3, 1.0, 4.0][trial % 4], (grid[0] - 1, grid[1], grid[2], 2))
            if trial % 5 == 0:
                field += rng.uniform(-3, 3, 2)  # global pan: content leaves at one side, enters at the other
            if trial % 7 == 0:
                field[rng.random(field.shape) < 0.1] = np.nan  # a broken flow value counts as no motion
            box = None if trial % 3 else np.sort(rng.uniform(0, 1, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
            mask = generator(field, box)
            assert mask.dtype == bool and mask.shape == (grid[0] * grid[1] * grid[2],)
            assert (slices(mask, grid).sum(axis=(1, 2)) == per_slice).all()


def test_deterministic_given_the_rng_and_different_across_draws():
    grid = (8, 14, 14)
    field = np.random.default_rng(3).normal(0, 1.5, (7, 14, 14, 2))
    first = MotionGuidedMaskingGenerator(grid, 0.9, seed=5)
    again = MotionGuidedMaskingGenerator(grid, 0.9, seed=5)
    draws = [first(field) for _ in range(5)]
    for mask in draws:
        np.testing.assert_array_equal(mask, again(field))
    assert len({mask.tobytes() for mask in draws}) == 5
    np.testing.assert_array_equal(first(field, rng=np.random.default_rng(9)),
                                  again(field, rng=np.random.default_rng(9)))


@pytest.mark.parametrize("grid", GRIDS)
def test_zero_motion_is_the_tube_mask(grid):
    zero = np.zeros((grid[0] - 1, grid[1], grid[2], 2))
    for seed in range(5):
        guided = MotionGuidedMaskingGenerator(grid, 0.75, seed=seed)
        tube = TubeMaskingGenerator(grid, 0.75, seed=seed)
        for field in (zero, None):
            mask = guided(field)
            np.testing.assert_array_equal(mask, tube())
            assert (slices(mask, grid) == slices(mask, grid)[0]).all()
    box = np.array([0.2, 0.3, 0.7, 0.8])
    np.testing.assert_array_equal(MotionGuidedMaskingGenerator(grid, 0.75, 0.5, seed=2)(zero, box),
                                  MotionFocusedMaskingGenerator(grid, 0.75, 0.5, seed=2)(box))


def test_uniform_motion_moves_the_mask_both_ways_and_accumulates_sub_token_steps():
    """dx = +1 token per slice: slice b+1 is slice b moved one column right, slice b-1 one column left. At 0.4 a
    token per slice nothing moves after one step but the mask has moved one column after two (a per-step rounding
    would never move it)."""
    grid = (8, 9, 12)
    generator = MotionGuidedMaskingGenerator(grid, 0.3, seed=0)
    base = generator.base_slice
    for speed, moved in ((1.0, {base + 1: 1, base - 1: -1}), (0.4, {base + 1: 0, base + 2: 1, base - 2: -1})):
        field = np.zeros((grid[0] - 1, grid[1], grid[2], 2))
        field[..., 0] = speed
        for _ in range(10):
            mask = slices(generator(field), grid)
            rows, cols = np.nonzero(mask[base])
            for t, shift in moved.items():
                kept = (cols + shift >= 0) & (cols + shift < grid[2])  # the rest are clipped at the border
                assert mask[t][rows[kept], cols[kept] + shift].all(), (speed, t)


def test_backward_field_keeps_the_leading_edge_where_an_object_covers_background():
    """An object moving right over a still background, the base slice masking all of it. Forwards it is tracked
    exactly; backwards too with the backward field. Inverting the forward field instead averages the object's step
    back with the covered background's zero step on the object's leading tokens, so the mask lags there."""
    frames, height, width = 8, 14, 20
    for speed, size in ((1, 3), (2, 2), (2, 5)):
        obj = np.zeros((frames, height, width), dtype=bool)
        for t in range(frames):
            obj[t, 5:9, 1 + speed * t:1 + speed * t + size] = True
        forward, backward = np.zeros((2, frames - 1, height, width, 2))
        for t in range(frames - 1):
            forward[t][obj[t]] = (speed, 0)
            backward[t][obj[t + 1]] = (-speed, 0)
        rows, cols = np.nonzero(obj[frames // 2])
        box = [cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height]
        coverage = {}
        for name, field in (("pair", np.stack([forward, backward])), ("forward", forward)):
            ratio = (obj[0].sum() + 0.5) / (height * width)  # int(ratio * H'W') = the object's tokens
            generator = MotionGuidedMaskingGenerator((frames, height, width), ratio, motion_mask_ratio=1.0, seed=0)
            mask = slices(generator(field, box), (frames, height, width))
            coverage[name] = (mask & obj).sum(axis=(1, 2)) / obj.sum(axis=(1, 2))
        assert (coverage["pair"] == 1.0).all(), (speed, size, coverage)
        assert (coverage["forward"][frames // 2:] == 1.0).all()
        assert coverage["forward"][:frames // 2].max() < 1.0


def test_pool_to_tokens_and_tubelet_displacement():
    flow = np.zeros((3, 8, 12, 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = 6.0, -2.0  # pixels of an 8x12 image: tokens of 4x4 pixels on a 2x3 grid
    pooled = pool_to_tokens(flow, (2, 3))
    assert pooled.shape == (3, 2, 3, 2)
    np.testing.assert_allclose(pooled[..., 0], 1.5)
    np.testing.assert_allclose(pooled[..., 1], -0.5)
    with pytest.raises(ValueError, match="does not tile"):
        pool_to_tokens(flow, (3, 3))
    per_frame = np.arange(1, 8, dtype=np.float64)[:, None, None, None] * np.ones((7, 2, 3, 2))  # T = 8 frames
    per_slice = tubelet_displacement(per_frame, 2)
    assert per_slice.shape == (3, 2, 3, 2)
    # slice t -> t+1 averages frames 2t -> 2t+2 and 2t+1 -> 2t+3: (f[2t] + f[2t+1] + f[2t+1] + f[2t+2]) / 2
    np.testing.assert_allclose(per_slice[:, 0, 0, 0], [(1 + 2 + 2 + 3) / 2, (3 + 4 + 4 + 5) / 2, (5 + 6 + 6 + 7) / 2])


@pytest.mark.parametrize("shift", [(3, -2), (10, 4), (-6, 7), (0.5, 0.0)])
def test_dis_token_motion_of_a_translation(shift):
    """Frames of a textured world moving by ``shift`` pixels per frame: every token away from the border (where
    content enters) moves by 2 * shift / 16 tokens per slice."""
    world = (synthetic.textured_noise(np.random.default_rng(0), 400, 400) * 255).astype(np.float32)
    size, patch, num_frames = 112, 16, 8
    frames = [
        cv2.warpAffine(world, np.float32([[1, 0, 150 - k * shift[0]], [0, 1, 150 - k * shift[1]]]), (size, size),
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        for k in range(num_frames)
    ]
    clip = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    forward, backward = DISTokenMotion((size // patch, size // patch), tubelet_size=2)(clip)
    assert forward.shape == backward.shape == (num_frames // 2 - 1, size // patch, size // patch, 2)
    assert forward.dtype == backward.dtype == np.float32
    expected = 2 * np.array(shift) / patch
    assert np.abs(forward[:, 1:-1, 1:-1] - expected).max() < 0.1
    assert np.abs(backward[:, 1:-1, 1:-1] + expected).max() < 0.1


def test_dis_backward_motion_is_in_the_slices_time_order():
    """A textured world that moves 6 px per frame, then stands still: each slice's backward motion is minus its
    forward motion, so both move in the early slices and neither in the late ones (a backward field left in the
    reversed clip's order would move in the late slices instead)."""
    world = (synthetic.textured_noise(np.random.default_rng(0), 400, 400) * 255).astype(np.float32)
    size, patch, num_frames = 112, 16, 16
    frames = [cv2.warpAffine(world, np.float32([[1, 0, 150 - 6 * min(k, 6)], [0, 1, 150]]), (size, size),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP) for k in range(num_frames)]
    clip = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    forward, backward = DISTokenMotion((size // patch, size // patch), tubelet_size=2)(clip)
    moving = np.abs(forward[:, 1:-1, 1:-1, 0]).mean(axis=(1, 2))
    assert moving[0] > 0.5 and moving[-1] < 0.05, moving
    np.testing.assert_allclose(backward[:, 1:-1, 1:-1], -forward[:, 1:-1, 1:-1], atol=0.15)


def test_mask_tracks_a_moving_object_better_than_a_tube():
    """A static camera and one object moving right; the base slice masks every token of the object's true box.
    Away from the base, motion-guided masks keep far more of the object's tokens (inside its true box at that
    slice) masked than the same base repeated as a straight tube."""
    num_frames, height, width, patch = 16, 144, 192, 8
    grid = (num_frames // 2, height // patch, width // patch)
    guided_means, tube_means = [], []
    for seed in range(3):
        clip = synthetic.render_clip_details(1, num_frames=2 * num_frames, seed=seed, camera_motion=False)
        frames = resize_frames(torch.from_numpy(clip.frames[::2]), (height, width))
        boxes = (clip.boxes[::2] / np.array([160, 120, 160, 120], dtype=np.float32)).reshape(grid[0], 2, 4)
        slice_boxes = np.concatenate([boxes[:, :, :2].min(axis=1), boxes[:, :, 2:].max(axis=1)], axis=1)
        object_tokens = inside_box_tokens(torch.from_numpy(slice_boxes), grid[1:]).numpy()
        field = DISTokenMotion(grid[1:], tubelet_size=2)(frames)
        generator = MotionGuidedMaskingGenerator(grid, mask_ratio=0.25, motion_mask_ratio=1.0, seed=seed)
        base = generator.base_slice
        fractions = {"guided": [], "tube": []}
        for _ in range(20):
            for name, motion in (("guided", field), ("tube", None)):
                mask = generator(motion, slice_boxes[base]).reshape(grid[0], -1)
                fractions[name].append((mask & object_tokens).sum(axis=1) / object_tokens.sum(axis=1))
        others = np.arange(grid[0]) != base
        guided, tube = (np.mean(fractions[name], axis=0) for name in ("guided", "tube"))
        assert guided[base] == tube[base] == 1.0
        assert guided[others].mean() > tube[others].mean(), seed
        guided_means.append(guided[others].mean())
        tube_means.append(tube[others].mean())
    assert np.mean(guided_means) > np.mean(tube_means) + 0.1, (guided_means, tube_means)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return pretraining_set(tmp_path_factory.mktemp("guided_data"), num_videos=8, num_frames=16, seed=3)


def guided_dataset(root, **kwargs) -> VideoMAEPretrainDataset:
    options = dict(num_frames=8, sampling_rate=2, input_size=64, patch_size=8, mask_type="motion_guided",
                   mask_ratio=0.9, seed=0)
    options.update(kwargs)
    return VideoMAEPretrainDataset(str(root / "all.csv"), str(root / "videos"), **options)


def test_dataset_returns_motion_guided_masks(dataset_root):
    grid = (4, 8, 8)
    per_slice = int(0.9 * 64)
    for base in ("random", "box"):
        dataset = guided_dataset(dataset_root, guided_base=base, box_dir=str(dataset_root / "gt_boxes"))
        moved = 0
        for index in range(len(dataset)):
            item = dataset[index]
            assert item["mask"].dtype == torch.bool and item["mask"].shape == (4 * 64,)
            mask = slices(item["mask"].numpy(), grid)
            assert (mask.sum(axis=(1, 2)) == per_slice).all()
            moved += not (mask == mask[0]).all()
        assert moved >= len(dataset) // 2  # the synthetic clips all move (object and camera)
        dataset.reseed(7)
        first = dataset[2]["mask"]
        dataset.reseed(7)
        assert torch.equal(first, dataset[2]["mask"])


def test_dataset_hands_the_augmented_clip_to_a_pluggable_motion_source(dataset_root):
    seen = []

    def still(clip: torch.Tensor) -> np.ndarray:
        seen.append(tuple(clip.shape))
        assert clip.dtype == torch.uint8 and int(clip.min()) < int(clip.max())
        return np.zeros((3, 8, 8, 2), dtype=np.float32)

    dataset = guided_dataset(dataset_root, motion_source=still, num_sample=2)
    items = dataset[0]
    assert seen == [(8, 3, 64, 64)] * 2
    for item in items:
        mask = slices(item["mask"].numpy(), (4, 8, 8))
        assert (mask == mask[0]).all()  # no motion: a tube


def test_base_box_is_the_base_slices_own_box(dataset_root):
    dataset = guided_dataset(dataset_root, guided_base="box", box_dir=str(dataset_root / "gt_boxes"),
                             box_source="clip")
    smaller = 0
    for index in range(len(dataset)):
        _, (clip_box, base_box), *_ = dataset._load(index)
        assert not np.isnan(base_box).any()  # the synthetic object is always in view
        assert (base_box[:2] >= clip_box[:2] - 1e-6).all() and (base_box[2:] <= clip_box[2:] + 1e-6).all()
        smaller += not np.allclose(base_box, clip_box)
    assert smaller >= len(dataset) // 2  # the object moves: two frames cover less than the clip
    # --box_source video: the base is the video's union box, as for --mask_type motion
    dataset = guided_dataset(dataset_root, guided_base="box", box_dir=str(dataset_root / "gt_boxes"),
                             box_source="video")
    for index in range(len(dataset)):
        _, (clip_box, base_box), boxes, *_ = dataset._load(index)
        union = boxes.union / np.array([boxes.width, boxes.height] * 2, np.float32)
        np.testing.assert_allclose(base_box, union, atol=1e-6)
        np.testing.assert_allclose(clip_box, union, atol=1e-6)


def test_a_crop_of_a_motion_field_is_in_its_own_token_units():
    """8 px right and 4 px up per frame, cut 128 x 64 px at (10, 6) onto 8 x 4 tokens (16 px per token): half a
    token right and a quarter up per frame, one and a half per two-frame slice; a crop of the still half is still."""
    motion = np.zeros((3, 80, 300, 2), dtype=np.float32)
    motion[:, :, :150] = [8, -4]
    field = crop_token_motion(motion, (10, 6, 128, 64), (4, 8), tubelet_size=2)
    assert field.shape == (1, 4, 8, 2) and field.dtype == np.float32
    np.testing.assert_allclose(field, np.broadcast_to([1.0, -0.5], field.shape), atol=1e-5)
    np.testing.assert_array_equal(crop_token_motion(motion, (160, 0, 128, 64), (4, 8), tubelet_size=2), 0)


def test_codec_motion_between_sampled_frames_sums_the_interval(tmp_path):
    """Every second frame of an mp4v clip whose object moves VELOCITY px per frame: the object moves twice that
    between sampled frames; a repeated last index (a short video's) adds no motion."""
    path = tmp_path / "translate.mp4"
    synthetic.write_mp4(path, translating_clip(10), fps=25)
    motion = sampled_frame_motion(path, [0, 2, 4, 6, 6], (WIDTH, HEIGHT))
    assert motion.shape == (4, HEIGHT, WIDTH, 2) and motion.dtype == np.float32
    for k in range(3):
        rows, cols = interior(2 * k, margin=14)
        np.testing.assert_allclose(np.median(motion[k, rows, cols].reshape(-1, 2), axis=0), 2 * VELOCITY, atol=1.0)
    assert not motion[3].any()
    background = motion[:3, :, WIDTH - 20:]  # the object never gets there (a half-pel vector here and there)
    assert np.abs(background).mean() < 0.1


def test_dataset_masks_follow_the_codec_motion_as_they_follow_the_optical_flow(dataset_root):
    """--guided_motion codec_mv (MGM): the file's motion vectors cut with each clip's crop give the per-token motion
    the clip's own DIS flow gives (same direction, same size to a tenth of a token), and masks that move."""
    dataset = guided_dataset(dataset_root, guided_motion="codec_mv")
    rng = np.random.default_rng(0)
    cosines, errors = [], []
    for index in range(len(dataset)):
        frames, boxes01, _, _, motion = dataset._load(index)
        clip, _, crop = multiscale_crop(frames, scale_box(boxes01, frames.shape[2], frames.shape[1]), 64, rng)
        codec = crop_token_motion(motion, crop, (8, 8), tubelet_size=2)
        dis = DISTokenMotion((8, 8), tubelet_size=2)(clip)[0]
        moving = np.linalg.norm(dis, axis=-1) > 0.2
        cosines.append(((codec * dis).sum(-1) / (np.linalg.norm(codec, axis=-1) * np.linalg.norm(dis, axis=-1)
                                                  + 1e-9))[moving].mean())
        errors.append(np.abs(codec.reshape(-1, 2).mean(0) - dis.reshape(-1, 2).mean(0)).max())
    assert min(cosines) > 0.9 and max(errors) < 0.1, (cosines, errors)
    moved = 0
    for index in range(len(dataset)):
        mask = slices(dataset[index]["mask"].numpy(), (4, 8, 8))
        assert (mask.sum(axis=(1, 2)) == int(0.9 * 64)).all()
        moved += not (mask == mask[0]).all()
    assert moved >= len(dataset) // 2
    dataset.reseed(7)
    first = dataset[2]["mask"]
    dataset.reseed(7)
    assert torch.equal(first, dataset[2]["mask"])


def test_a_video_without_codec_motion_vectors_is_skipped_with_its_reason(dataset_root, tmp_path, caplog):
    """VP8 stores motion FFmpeg does not export: with --guided_motion codec_mv that video is replaced, named."""
    encode(tmp_path / "clip.webm", translating_clip(12), "libvpx")
    (tmp_path / "list.csv").write_text(f"{tmp_path / 'clip.webm'}\n{dataset_root / 'videos' / '000000.mp4'}\n")
    dataset = VideoMAEPretrainDataset(str(tmp_path / "list.csv"), "", num_frames=8, sampling_rate=1, input_size=64,
                                      patch_size=8, mask_type="motion_guided", seed=0, guided_motion="codec_mv")
    with caplog.at_level(logging.WARNING, logger="datasets"):
        assert dataset[0]["replaced"] >= 1
    assert any("clip.webm: --guided_motion codec_mv: codec 'vp8' exports no motion vectors" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ValueError, match="--guided_motion codec_mv only applies to --mask_type motion_guided"):
        guided_dataset(dataset_root, mask_type="tube", guided_motion="codec_mv")


def test_invalid_combinations_fail_early(dataset_root):
    with pytest.raises(ValueError, match="needs --box_dir"):
        guided_dataset(dataset_root, guided_base="box")
    with pytest.raises(ValueError, match="only applies to --mask_type motion_guided"):
        guided_dataset(dataset_root, mask_type="motion", guided_base="box", box_dir=str(dataset_root / "gt_boxes"))
    with pytest.raises(ValueError, match="shape"):
        MotionGuidedMaskingGenerator((4, 8, 8), 0.9)(np.zeros((4, 8, 8, 2)))


def test_pretraining_runs_with_motion_guided_masks(dataset_root, tmp_path):
    out = tmp_path / "guided"
    args = run_args(dataset_root, out, "--mask_type", "motion_guided", "--guided_base", "box", "--guided_motion",
                    "codec_mv", "--epochs", "1")
    result = pretrain(args, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MotionGuidedMaskingGenerator" in result.stdout and "following codec_mv motion" in result.stdout
    record = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert record["epoch"] == 0 and np.isfinite(record["train_loss"])

"""Motion-trajectory targets (M3Video): grid points per patch, chained sub-pixel tracking, the known displacement of
a synthetic translation (exact flow and DIS on a rendered texture), per-patch normalisation, the pretraining
dataset's dense window, the per-target decoder heads and losses, and tiny CPU runs of every ``--target``."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import cv2
import decord
import numpy as np
import pytest
import torch
from timm.models import create_model

import run_mofo_pretraining
from datasets import VideoMAEPretrainDataset, decode_frames, sample_window_indices
from engine_for_pretraining import masked_count, pixel_targets, pretrain_loss
from modeling_pretrain import parse_targets, split_tokens
from test_pretraining import pretrain, pretraining_set, run_args
from trajectory_targets import (
    TrajectoryTargets,
    patch_grid_points,
    track_points,
    trajectory_dim,
    trajectory_targets_from_flow,
)
from video_transforms import normalize_video

GRID = (2, 3, 4)  # tubelets, patch rows, patch columns: non-square catches swapped axes
PATCH = 8


def constant_flow(frames: int, height: int, width: int, dx: float, dy: float) -> np.ndarray:
    flow = np.zeros((frames, height, width, 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def test_grid_points_are_cell_centres_in_row_major_patches():
    points = patch_grid_points((2, 3), patch_size=8, points_per_side=2).reshape(2, 3, 4, 2)
    # Patch (row 1, column 2) covers x in [16, 24), y in [8, 16); its cells' centres sit 2 px inside.
    np.testing.assert_allclose(points[1, 2], [[17.5, 9.5], [21.5, 9.5], [17.5, 13.5], [21.5, 13.5]])
    np.testing.assert_allclose(patch_grid_points((1, 1), 16, 1), [[7.5, 7.5]])


def test_tracking_chains_the_flow_at_the_moved_positions():
    """A linear field u = 0.1 x: bilinear sampling is exact, and chaining gives x_k = x_0 * 1.1^k (sampling every step
    at the start point would give x_0 * (1 + 0.1 k))."""
    height, width, steps = 8, 64, 4
    flow = np.zeros((1, steps, height, width, 2), dtype=np.float32)
    flow[..., 0] = 0.1 * np.arange(width, dtype=np.float32)
    starts = np.array([[[3.25, 2.0], [10.5, 5.5]]], dtype=np.float32)
    tracks = track_points(flow, starts)
    expected_x = starts[0, :, 0][None, :] * 1.1 ** np.arange(steps + 1)[:, None]
    np.testing.assert_allclose(tracks[0, :, :, 0], expected_x, rtol=1e-5)
    np.testing.assert_allclose(tracks[0, :, :, 1], np.broadcast_to(starts[0, :, 1], (steps + 1, 2)))


@pytest.mark.parametrize("sampling_rate", [1, 2])
def test_targets_of_a_translation_are_the_known_displacement(sampling_rate):
    dx, dy = 1.5, -0.75
    steps = 2 * sampling_rate
    height, width = GRID[1] * PATCH, GRID[2] * PATCH
    flows = constant_flow(GRID[0] * steps, height, width, dx, dy)
    raw = trajectory_targets_from_flow(flows, GRID, PATCH, 2, sampling_rate, points_per_side=2, norm="none")
    assert raw.shape == (np.prod(GRID), trajectory_dim(2, 2, sampling_rate))
    inner = raw.reshape(GRID[0], GRID[1], GRID[2], 4, steps, 2)[:, 1:-1, 1:-1]  # the border patches leave the frame
    expected = np.broadcast_to([dx, dy], inner.shape)  # the same move at every step (M3Video's P[k+1] - P[k])
    np.testing.assert_allclose(inner, expected, atol=1e-5)

    normalized = trajectory_targets_from_flow(flows, GRID, PATCH, 2, sampling_rate, points_per_side=2)
    path = steps * np.hypot(dx, dy)  # every point's path length
    inner = normalized.reshape(GRID[0], GRID[1], GRID[2], 4, steps, 2)[:, 1:-1, 1:-1]
    np.testing.assert_allclose(inner, expected / path, atol=1e-5)


def test_points_leaving_the_frame_stop_at_its_edge():
    """2 px right per step through 4 steps: the last column's points (x = 25.5 and 29.5 in a 32 px frame) move until
    they reach x = 31, then stay; the others move every step."""
    flows = constant_flow(GRID[0] * 4, GRID[1] * PATCH, GRID[2] * PATCH, 2.0, 0.0)
    moves = trajectory_targets_from_flow(flows, GRID, PATCH, 2, 2, norm="none")
    moves = moves.reshape(GRID[0], GRID[1], GRID[2], 2, 2, 4, 2)  # (t, row, col, point row, point col, step, xy)
    np.testing.assert_allclose(moves[:, :, :-1, ..., 0], 2.0, atol=1e-5)
    np.testing.assert_allclose(moves[:, :, -1, :, 0, :, 0], np.broadcast_to([2, 2, 1.5, 0], (2, 3, 2, 4)), atol=1e-5)
    np.testing.assert_allclose(moves[:, :, -1, :, 1, :, 0], np.broadcast_to([1.5, 0, 0, 0], (2, 3, 2, 4)), atol=1e-5)
    assert np.abs(moves[..., 1]).max() == 0


def test_each_tubelet_tracks_through_its_own_flow_steps():
    """Tubelet t reads flows t*steps ... (t+1)*steps-1; the second tubelet here moves, the first does not."""
    steps = 4
    flows = constant_flow(GRID[0] * steps, GRID[1] * PATCH, GRID[2] * PATCH, 0, 0)
    flows[steps:, ..., 0] = 2.0
    raw = trajectory_targets_from_flow(flows, GRID, PATCH, 2, 2, norm="none").reshape(GRID[0], -1, 4, steps, 2)
    assert np.abs(raw[0]).max() == 0
    np.testing.assert_allclose(raw[1].reshape(GRID[1], GRID[2], 4, steps, 2)[:, :-1, ..., 0], 2.0)


def test_patch_std_standardises_each_step_over_the_patch_points():
    """The MME release's ``PatchStd``: a shear u = 0.25 (y mod 8) moves a patch's upper and lower points differently
    (by 0.5 and 1.5 px a step); each step's x over the 4 points has mean 0 and unbiased std 1 after it, and the
    still y stays 0 (patches of the last column, whose points reach the frame's edge, left out)."""
    steps = 4
    flows = constant_flow(GRID[0] * steps, GRID[1] * PATCH, GRID[2] * PATCH, 0, 0)
    flows[..., 0] = 0.25 * (np.arange(GRID[1] * PATCH, dtype=np.float32)[:, None] % PATCH)
    targets = trajectory_targets_from_flow(flows, GRID, PATCH, 2, 2, norm="patch_std")
    moves = targets.reshape(*GRID, 4, steps, 2)[:, :, :-1].reshape(-1, 4, steps, 2)  # (tokens, points, steps, xy)
    np.testing.assert_allclose(moves[..., 0].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(moves[..., 0].std(axis=1, ddof=1), 1, atol=1e-3)
    assert np.abs(moves[..., 1]).max() == 0
    raw = trajectory_targets_from_flow(flows, GRID, PATCH, 2, 2, norm="none").reshape(*GRID, 4, steps, 2)
    assert not np.allclose(raw[:, :, :-1].reshape(-1, 4, steps, 2)[..., 0], moves[..., 0])
    with pytest.raises(ValueError, match="at least 2 points per side"):
        TrajectoryTargets(GRID, PATCH, 2, 2, points_per_side=1, norm="patch_std")
    with pytest.raises(ValueError, match="trajectory norm must be one of"):
        trajectory_targets_from_flow(flows, GRID, PATCH, 2, 2, norm="max")
    assert run_mofo_pretraining.get_args_parser().parse_args(["--trajectory_norm", "patch_std"]).trajectory_norm \
        == "patch_std"


def test_static_patches_are_not_blown_up_by_the_normalisation():
    rng = np.random.default_rng(0)
    flows = rng.normal(0, 0.01, size=(GRID[0] * 4, GRID[1] * PATCH, GRID[2] * PATCH, 2)).astype(np.float32)
    targets = trajectory_targets_from_flow(flows, GRID, PATCH, 2, 2, min_motion=1.0)
    assert np.abs(targets).max() < 0.2  # noise of 0.01 px stays small; dividing by its own path length would not
    panning = flows + np.float32(0.25)  # a rigid pan (no point reaches the edge): the spread is the noise alone
    for field in (flows, panning):  # patch_std: standardising by the noise's own spread would give unit-size noise
        assert np.abs(trajectory_targets_from_flow(field, GRID, PATCH, 2, 2, norm="patch_std")).max() < 0.2


def test_flow_shape_errors_name_the_requirement():
    with pytest.raises(ValueError, match="at least 8 flow fields of 24x32"):
        trajectory_targets_from_flow(np.zeros((3, 24, 32, 2), np.float32), GRID, PATCH, 2, 2)
    with pytest.raises(ValueError, match="must divide the patch size"):
        TrajectoryTargets(GRID, 16, 2, 2, points_per_side=3)
    for flow in ("codec_mv", "tvl1_torch"):  # need the compressed file or a GPU, not frames in a CPU worker
        with pytest.raises(ValueError, match=f"trajectory flow '{flow}' cannot run in the data workers"):
            TrajectoryTargets(GRID, PATCH, 2, 2, flow=flow)
    parser = run_mofo_pretraining.get_args_parser()
    assert parser.parse_args(["--trajectory_flow", "tvl1"]).trajectory_flow == "tvl1"
    with pytest.raises(SystemExit):
        parser.parse_args(["--trajectory_flow", "codec_mv"])


def translated_texture_clip(frames: int, size: int, dx: float, dy: float) -> np.ndarray:
    """(F, 3, S, S) float clip of a smooth random texture moving by (dx, dy) px per frame."""
    rng = np.random.default_rng(1)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (size * 2, size * 2)).astype(np.float32), (0, 0), 2.0)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    clip = []
    for k in range(frames):
        shift = np.float32([[1, 0, dx * k - size / 2], [0, 1, dy * k - size / 2]])
        frame = cv2.warpAffine(big, shift, (size, size), flags=cv2.INTER_CUBIC)
        clip.append(np.repeat(frame[None], 3, axis=0))
    return np.stack(clip).astype(np.float32)


def test_dis_targets_of_a_rendered_translation_match_the_known_motion():
    dx, dy = 1.0, 0.5
    grid, patch, rate = (2, 4, 4), 16, 2
    targets = TrajectoryTargets(grid, patch, tubelet_size=2, sampling_rate=rate, points_per_side=2)
    clip = translated_texture_clip(targets.num_source_frames, grid[1] * patch, dx, dy)
    result = targets(clip)["trajectory"].reshape(grid[0], grid[1], grid[2], 4, 2 * rate, 2)
    steps = 2 * rate
    expected = np.array([dx, dy]) / (steps * np.hypot(dx, dy))  # each step's move over the path length
    inner = result[:, 1:-1, 1:-1]  # border patches lose texture to the frame edge
    np.testing.assert_allclose(inner, np.broadcast_to(expected, inner.shape), atol=0.05)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return pretraining_set(tmp_path_factory.mktemp("trajectory_data"), num_videos=4, num_frames=20, seed=5)


def pretrain_dataset(root, trajectory=None, **kwargs) -> VideoMAEPretrainDataset:
    return VideoMAEPretrainDataset(str(root / "all.csv"), str(root / "videos"), num_frames=8, sampling_rate=2,
                                   input_size=64, patch_size=16, mask_ratio=0.9, seed=0, trajectory=trajectory,
                                   **kwargs)


class RecordingTargets(TrajectoryTargets):
    """The targets, keeping every dense clip they are computed from."""

    def __call__(self, clip):
        self.clips.append(clip.clone())
        return super().__call__(clip)


def test_each_repeated_sample_gets_the_targets_of_its_own_crop(dataset_root):
    """With --num_sample 2 each clip's trajectory targets are those of the dense crop whose sampled frames it holds,
    not the first crop's."""
    targets = RecordingTargets((4, 4, 4), 16, 2, 2)
    dataset = pretrain_dataset(dataset_root, targets, num_sample=2)
    differing = 0
    for index in range(len(dataset)):
        targets.clips = []
        items = dataset[index]
        assert len(targets.clips) == len(items) == 2
        for item, clip in zip(items, targets.clips, strict=True):
            assert torch.equal(item["frames"], clip[dataset.sampled_frames].permute(0, 2, 3, 1))
            own = torch.from_numpy(TrajectoryTargets((4, 4, 4), 16, 2, 2)(clip)["trajectory"])
            torch.testing.assert_close(item["trajectory"], own)
        differing += not torch.equal(items[0]["trajectory"], items[1]["trajectory"])
    assert differing >= 2  # the two crops of a video differ, and so do their targets


def test_dataset_adds_targets_and_keeps_the_sampled_clip(dataset_root):
    """The dense window (every frame, plus the one after) holds the sampled frames of a plain window at the same
    start; the mask stream does not depend on the targets. A window that fits never repeats its last frame, so
    the last flow step is a real one."""
    targets = TrajectoryTargets((4, 4, 4), 16, 2, 2)
    with_targets = pretrain_dataset(dataset_root, targets, num_sample=2)
    plain = pretrain_dataset(dataset_root, num_sample=2)
    rng, starts = np.random.default_rng(0), set()
    for _ in range(50):
        dense = sample_window_indices(20, 8, 2, rng, dense=True)
        assert len(np.unique(dense)) == 17
        np.testing.assert_array_equal(dense[with_targets.sampled_frames], dense[0] + np.arange(8) * 2)
        starts.add(int(dense[0]))
    assert starts == {0, 1, 2, 3}
    for index in range(len(plain)):
        for item, reference in zip(with_targets[index], plain[index], strict=True):
            assert item["frames"].shape == reference["frames"].shape
            assert torch.equal(item["mask"], reference["mask"])
            assert item["trajectory"].shape == (64, targets.dims["trajectory"])
            assert item["trajectory"].dtype == torch.float32
            assert torch.isfinite(item["trajectory"]).all()
        # The decoded dense window is the file's frames at the window's indices (its replayed first draw).
        replay = copy.deepcopy(with_targets.rng)  # the window is an item's first draw
        frames = with_targets._load(index)[0]
        with_targets.rng = replay
        path = with_targets.video_path(index)
        indices = with_targets.window(index, len(decord.VideoReader(path)), dense=True)
        assert len(frames) == len(indices) == 17
        expected = decode_frames(path, lambda n, indices=indices: indices, tuple(frames.shape[2:0:-1]))[0]
        assert torch.equal(frames, expected)
    # The synthetic object moves: some token's points travel, most background tokens move with the camera.
    assert float(with_targets[0][0]["trajectory"].abs().max()) > 0.1


def test_dataset_rejects_targets_for_another_sampling_rate(dataset_root):
    with pytest.raises(ValueError, match="another sampling rate"):
        pretrain_dataset(dataset_root, TrajectoryTargets((4, 4, 4), 16, 2, sampling_rate=4))


def test_parse_targets():
    assert parse_targets("pixel+trajectory") == ("pixel", "trajectory")
    assert parse_targets("trajectory") == ("trajectory",)
    for bad in ("pixels", "pixel+pixel", ""):
        with pytest.raises(ValueError, match="target must be"):
            parse_targets(bad)


def tiny_model(targets: str, traj_dim: int = 32):
    return create_model("pretrain_videomae_mini_patch16_224", img_size=64, num_frames=8, targets=targets,
                        trajectory_dim=traj_dim)


def test_one_head_per_target_with_videomae_keys_for_pixels():
    pixel = tiny_model("pixel").state_dict()
    both = tiny_model("pixel+trajectory").state_dict()
    trajectory = tiny_model("trajectory").state_dict()
    assert set(both) - set(pixel) == {"decoder.trajectory_head.weight", "decoder.trajectory_head.bias"}
    assert not any(key.startswith("decoder.head.") for key in trajectory)
    assert both["decoder.trajectory_head.weight"].shape == (32, 48)
    with pytest.raises(ValueError, match="trajectory_dim"):
        tiny_model("trajectory", traj_dim=0)


def test_loss_sums_the_weighted_target_losses():
    torch.manual_seed(0)
    model = tiny_model("pixel+trajectory").eval()
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    frames = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8)
    batch = {"frames": frames, "mask": mask, "trajectory": torch.randn(2, 64, 32)}
    args = SimpleNamespace(targets=("pixel", "trajectory"), patch_size=(16, 16), tubelet_size=2, normlize_target=True,
                           precision="fp32", pixel_loss_weight=0.5, trajectory_loss_weight=2.0, hog_sampling="tubelet")
    loss, parts = pretrain_loss(model, batch, torch.device("cpu"), args)
    assert set(parts) == {"pixel", "trajectory"}
    torch.testing.assert_close(loss, 0.5 * parts["pixel"] + 2.0 * parts["trajectory"])
    # The trajectory loss compares the masked tokens' predictions with their targets, in token order.
    video = frames.permute(0, 4, 1, 2, 3)
    predictions = model(normalize_video(video), mask)
    expected = torch.nn.functional.mse_loss(predictions["trajectory"], batch["trajectory"][mask].reshape(2, -1, 32))
    torch.testing.assert_close(parts["trajectory"], expected)
    # The pixel target comes from the uint8 frames as pixels in [0, 1] (VideoMAE un-normalises its input instead).
    pixels = pixel_targets(video.float() / 255, 16, 2)[mask].reshape(2, -1, 16 * 16 * 2 * 3)
    torch.testing.assert_close(parts["pixel"], torch.nn.functional.mse_loss(predictions["pixel"], pixels))


def test_masked_count_needs_equal_counts():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :3] = True
    assert masked_count(mask) == 3
    mask[1, 5] = True
    with pytest.raises(ValueError, match=r"same number of tokens, got \[3, 4\]"):
        masked_count(mask)


def test_split_tokens_selects_what_boolean_indexing_selects():
    generator = torch.Generator().manual_seed(0)
    mask = torch.stack([torch.randperm(40, generator=generator) < 30 for _ in range(3)])
    tokens = torch.randn(3, 40, 5, generator=generator)
    visible, masked = split_tokens(mask, 30)
    torch.testing.assert_close(tokens.gather(1, visible[..., None].expand(-1, -1, 5)), tokens[~mask].reshape(3, -1, 5))
    torch.testing.assert_close(tokens.gather(1, masked[..., None].expand(-1, -1, 5)), tokens[mask].reshape(3, -1, 5))
    assert all(torch.equal(a, b) for a, b in zip(split_tokens(mask), (visible, masked), strict=True))


def test_visible_token_embedding_equals_the_full_convolution():
    torch.manual_seed(0)
    model = tiny_model("pixel")
    embed = model.encoder.patch_embed
    video = torch.randn(2, 3, 8, 64, 64)
    index = torch.stack([torch.randperm(64)[:7].sort().values for _ in range(2)])
    full = embed(video)
    torch.testing.assert_close(embed.embed_tokens(video, index), full.gather(1, index[..., None].expand(-1, -1, 96)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["trajectory", "pixel+trajectory"])
def test_pretraining_runs_with_trajectory_targets(dataset_root, tmp_path, target):
    out = tmp_path / target.replace("+", "_")
    args = run_args(dataset_root, out, "--target", target, "--mask_type", "tube", "--epochs", "1",
                    "--trajectory_loss_weight", "0.5", "--print_freq", "1")
    result = pretrain(args)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert record["epoch"] == 0 and np.isfinite(record["train_loss"])
    if target == "pixel+trajectory":
        expected = record["train_loss_pixel"] + 0.5 * record["train_loss_trajectory"]
        assert record["train_loss"] == pytest.approx(expected, rel=1e-4)
    state = torch.load(out / "checkpoint-0.pth", weights_only=True)["model"]
    assert "decoder.trajectory_head.weight" in state

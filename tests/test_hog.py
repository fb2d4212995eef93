"""HOG targets (MME / M3Video's appearance and shape features, MaskFeat's target): the histogram against a direct
per-pixel reference, edges on and between bin centres, the per-cell L2 norm, the tubelet (middle frame) and
trajectory (cell of each tracked point at every step) samplings, the decoder head, the loss, and tiny CPU runs."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from timm.models import create_model

import run_mofo_pretraining
from datasets import build_pretraining_dataset
from engine_for_pretraining import pretrain_loss
from hog_targets import hog_cells, hog_dim, trajectory_hog_targets, tubelet_hog_targets
from modeling_pretrain import TARGET_CHOICES, parse_targets
from test_pretraining import pretrain, pretraining_set, run_args
from trajectory_targets import TrajectoryTargets, tubelet_tracks, worker_targets
from video_transforms import normalize_video


def reference_hog(image: np.ndarray, bins: int, cell: int) -> np.ndarray:
    """(bins, H / cell, W / cell) cell means of one channel, pixel by pixel: Sobel with replicated borders, each
    gradient's magnitude split between the two bins around its unsigned orientation."""
    padded = np.pad(image.astype(np.float64), 1, mode="edge")
    height, width = image.shape
    hist = np.zeros((bins, height // cell, width // cell))
    for y in range(height):
        for x in range(width):
            window = padded[y:y + 3, x:x + 3]
            gx = (window[:, 2] - window[:, 0]) @ np.array([1, 2, 1])
            gy = (window[2, :] - window[0, :]) @ np.array([1, 2, 1])
            position = (math.atan2(gy, gx) % math.pi) * bins / math.pi
            low = math.floor(position)
            frac = position - low
            magnitude = math.hypot(gx, gy)
            hist[low % bins, y // cell, x // cell] += magnitude * (1 - frac)
            hist[(low + 1) % bins, y // cell, x // cell] += magnitude * frac
    return hist / cell**2


def test_histograms_match_a_per_pixel_reference():
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 16, 24)).astype(np.float32)  # non-square: swapped rows and columns fail
    cells = hog_cells(torch.from_numpy(images), bins=9, cell_size=8, norm="none").numpy()
    assert cells.shape == (2, 3, 9, 2, 3)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(cells[n, c], reference_hog(images[n, c], 9, 8), rtol=1e-4, atol=1e-5)
    six_bins = hog_cells(torch.from_numpy(images[:1, :1]), bins=6, cell_size=4, norm="none")[0, 0].numpy()
    np.testing.assert_allclose(six_bins, reference_hog(images[0, 0], 6, 4), rtol=1e-4, atol=1e-5)


def ramp_image(angle: float, size: int = 32) -> torch.Tensor:
    """An intensity ramp whose gradient points at ``angle`` (radians, y down), 0.01 per pixel."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    return torch.from_numpy(0.01 * (x * math.cos(angle) + y * math.sin(angle)))[None, None]


def test_gradients_on_a_bin_centre_keep_their_magnitude():
    """Gradients at 0, 20 and 180 degrees fall on bin centres: all their votes go to that bin (the MME release's
    ceil/floor weights give an exact x gradient nothing); 90 degrees (4.5 bins) splits evenly; opposite gradients
    share an unsigned orientation. Sobel's magnitude on a ramp of slope 0.01 is 0.08. Inner cells only: the
    replicated border changes the gradient there."""
    for angle, expected in ((0.0, {0: 1.0}), (math.pi / 9, {1: 1.0}), (math.pi, {0: 1.0}),
                            (math.pi / 2, {4: 0.5, 5: 0.5}), (-math.pi / 2, {4: 0.5, 5: 0.5}),
                            (math.pi / 36, {0: 0.75, 1: 0.25})):
        inner = hog_cells(ramp_image(angle), norm="none")[0, 0, :, 1:3, 1:3]  # (bins, 2, 2)
        votes = torch.zeros(9)
        for k, share in expected.items():
            votes[k] = 0.08 * share
        torch.testing.assert_close(inner, votes[:, None, None].expand(9, 2, 2), rtol=1e-4, atol=1e-6)


def test_l2_norm_makes_each_cell_channel_unit_and_flat_cells_zero():
    image = torch.rand(1, 3, 16, 16)
    image[..., :9, :9] = 0.5  # one flat cell (and its neighbours in the Sobel window) in every channel
    cells = hog_cells(image, norm="l2")[0]  # (3, bins, 2, 2)
    norms = cells.norm(dim=1)
    torch.testing.assert_close(norms[:, 0, 0], torch.zeros(3))
    torch.testing.assert_close(norms.flatten()[norms.flatten() > 0], torch.ones(9))  # the other 3 cells x 3 channels
    assert torch.isfinite(cells).all()
    with pytest.raises(ValueError, match="multiple of the HOG cell size"):
        hog_cells(torch.rand(1, 1, 12, 16))
    with pytest.raises(ValueError, match="HOG norm must be one of"):
        hog_cells(torch.rand(1, 1, 16, 16), norm="l1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_histograms_and_targets_match_the_cpu():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 48)
    torch.testing.assert_close(hog_cells(images.cuda()).cpu(), hog_cells(images), rtol=1e-4, atol=1e-5)
    pixels = torch.rand(2, 3, 8, 64, 64)
    torch.testing.assert_close(tubelet_hog_targets(pixels.cuda(), 16, 2).cpu(), tubelet_hog_targets(pixels, 16, 2),
                               rtol=1e-4, atol=1e-5)


def test_tubelet_targets_are_each_patch_in_its_tubelets_middle_frame():
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 4, 32, 48)  # 2 tubelets of 2 frames, 2 x 3 patches of 16
    targets = tubelet_hog_targets(pixels, patch_size=16, tubelet_size=2)
    assert targets.shape == (2, 2 * 2 * 3, hog_dim(16, 9, 8)) == (2, 12, 108)
    for b in range(2):
        for t in range(2):
            cells = hog_cells(pixels[b, :, 2 * t + 1][None])[0]  # (3, 9, 4, 6): frame 2t + 1 is tubelet t's middle
            for h in range(2):
                for w in range(3):
                    patch = cells[:, :, 2 * h:2 * h + 2, 2 * w:2 * w + 2]  # (c, k, p, q)
                    torch.testing.assert_close(targets[b, t * 6 + h * 3 + w], patch.permute(2, 3, 0, 1).reshape(-1))
    changed = pixels.clone()
    changed[:, :, 0::2] = 0  # the first frame of each tubelet is not a HOG target
    torch.testing.assert_close(tubelet_hog_targets(changed, 16, 2), targets)
    as_uint8 = torch.randint(0, 256, (1, 3, 4, 32, 48), dtype=torch.uint8)
    torch.testing.assert_close(tubelet_hog_targets(as_uint8, 16, 2), tubelet_hog_targets(as_uint8.float() / 255, 16, 2))


def test_trajectory_targets_follow_the_tracked_points_cell_by_cell():
    """A translation of one cell (8 px) right per frame step: each point's HOG at step s is the cell it started in,
    s cells further right, in frame t * steps + s; the first step is the tubelet's first frame where it started."""
    grid, patch, rate = (2, 2, 4), 16, 2
    steps = 2 * rate
    rng = np.random.default_rng(1)
    frames = (rng.random((grid[0] * steps + 1, 3, grid[1] * patch, grid[2] * patch)) * 255).astype(np.uint8)
    flows = np.zeros((grid[0] * steps, grid[1] * patch, grid[2] * patch, 2), np.float32)
    flows[..., 0] = 8.0
    tracks = tubelet_tracks(flows, grid, patch, 2, rate, points_per_side=2)
    targets = trajectory_hog_targets(frames, tracks)
    assert targets.shape == (np.prod(grid), hog_dim(patch, 9, 8, "trajectory", 2, steps))
    per_point = targets.reshape(grid[0], grid[1], grid[2], 4, steps, 3 * 9)
    cells = hog_cells(torch.from_numpy(frames.astype(np.float32) / 255)).flatten(1, 2).numpy()  # (F, 27, 4, 8)
    for t, h, w, point, step in ((0, 0, 0, 0, 0), (1, 1, 2, 3, 1), (0, 1, 1, 2, 3), (1, 0, 3, 1, 3)):
        row = 2 * h + point // 2
        column = min(2 * w + point % 2 + step, cells.shape[3] - 1)  # a point leaving the frame stops at its edge
        np.testing.assert_allclose(per_point[t, h, w, point, step], cells[t * steps + step, :, row, column],
                                   rtol=1e-5, atol=1e-6)
    # Pixel j spans [j - 0.5, j + 0.5): x = 7.6 is in pixel 8, the second cell; x = 7.4 in pixel 7, the first.
    edge = np.zeros((1, 2, 1, 2, 2), np.float32)
    edge[0, :, 0, 0] = (7.6, 20.0)
    edge[0, :, 0, 1] = (7.4, 20.0)
    picked = trajectory_hog_targets(frames, edge).reshape(2, 27)  # one tubelet of one step, one token, two points
    np.testing.assert_allclose(picked[0], cells[0, :, 2, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(picked[1], cells[0, :, 2, 0], rtol=1e-5, atol=1e-6)


def test_worker_targets_give_hog_and_trajectory_from_the_same_tracks():
    grid, patch, rate = (2, 2, 2), 16, 2
    both = TrajectoryTargets(grid, patch, 2, rate, outputs=("trajectory", "hog"), hog_norm="none")
    only_hog = TrajectoryTargets(grid, patch, 2, rate, outputs=("hog",), hog_norm="none")
    clip = (np.random.default_rng(2).random((both.num_source_frames, 3, 32, 32)) * 255).astype(np.uint8)
    result = both(clip)
    assert set(result) == {"trajectory", "hog"} and set(only_hog(clip)) == {"hog"}
    assert result["hog"].shape == (8, both.dims["hog"]) == (8, 4 * 4 * 27) and result["hog"].dtype == np.float16
    np.testing.assert_array_equal(only_hog(clip)["hog"], result["hog"])
    assert "HOG 9 bins 8 px cells norm none" in repr(both)
    with pytest.raises(ValueError, match="outputs must be"):
        TrajectoryTargets(grid, patch, 2, rate, outputs=("pixel",))
    with pytest.raises(ValueError, match="cell size must divide the patch size"):
        TrajectoryTargets(grid, patch, 2, rate, outputs=("hog",), hog_cell_size=6)
    # the tracks' HOG is not normalised as trajectories are: a trajectory norm is no reason to refuse it
    one_point = TrajectoryTargets(grid, patch, 2, rate, 1, outputs=("hog",), norm="patch_std", hog_norm="none")
    assert set(one_point(clip)) == {"hog"}
    with pytest.raises(ValueError, match="patch_std trajectory norm needs at least 2 points"):
        TrajectoryTargets(grid, patch, 2, rate, 1, outputs=("trajectory", "hog"), norm="patch_std")


def test_targets_combine_and_the_hog_head_has_its_own_key():
    assert parse_targets("trajectory+hog") == ("trajectory", "hog")
    parser = run_mofo_pretraining.get_args_parser()
    assert parser.parse_args(["--target", "hog+pixel"]).target == "pixel+hog"  # any order, one spelling
    with pytest.raises(SystemExit):
        parser.parse_args(["--target", "hog+pixels"])
    assert {"hog", "pixel+hog", "pixel+trajectory+hog"} <= set(TARGET_CHOICES)
    model = create_model("pretrain_videomae_mini_patch16_224", img_size=64, num_frames=8, targets="pixel+hog",
                         hog_dim=108)
    state = model.state_dict()
    assert state["decoder.hog_head.weight"].shape == (108, 48) and "decoder.head.weight" in state
    with pytest.raises(ValueError, match="hog_dim"):
        create_model("pretrain_videomae_mini_patch16_224", img_size=64, num_frames=8, targets="hog")


def loss_args(sampling: str, **extra) -> SimpleNamespace:
    return SimpleNamespace(targets=("pixel", "hog"), patch_size=(16, 16), tubelet_size=2, normlize_target=True,
                           precision="fp32", pixel_loss_weight=1.0, hog_loss_weight=0.25, hog_sampling=sampling,
                           hog_bins=9, hog_cell_size=8, hog_norm="l2", **extra)


def test_loss_uses_the_middle_frame_hog_or_the_workers_hog():
    torch.manual_seed(0)
    model = create_model("pretrain_videomae_mini_patch16_224", img_size=64, num_frames=8, targets="pixel+hog",
                         hog_dim=108).eval()
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, 1::3] = True
    frames = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8)
    loss, parts = pretrain_loss(model, {"frames": frames, "mask": mask}, torch.device("cpu"), loss_args("tubelet"))
    video = frames.permute(0, 4, 1, 2, 3)
    predictions = model(normalize_video(video), mask)
    hog = tubelet_hog_targets(video.float() / 255, 16, 2)[mask].reshape(2, -1, 108)
    torch.testing.assert_close(parts["hog"], torch.nn.functional.mse_loss(predictions["hog"], hog))
    torch.testing.assert_close(loss, parts["pixel"] + 0.25 * parts["hog"])
    worker_hog = torch.randn(2, 64, 108)
    _, parts = pretrain_loss(model, {"frames": frames, "mask": mask, "hog": worker_hog}, torch.device("cpu"),
                             loss_args("trajectory"))
    expected = torch.nn.functional.mse_loss(predictions["hog"], worker_hog[mask].reshape(2, -1, 108))
    torch.testing.assert_close(parts["hog"], expected)


def test_hog_flags_are_checked_before_the_run():
    parser = run_mofo_pretraining.get_args_parser()
    args = parser.parse_args(["--target", "pixel+hog", "--hog_cell_size", "6", "--model",
                              "pretrain_videomae_mini_patch16_224", "--input_size", "64", "--num_frames", "8"])
    with pytest.raises(ValueError, match="cell size must divide the patch size 16"):
        run_mofo_pretraining.build_model(args)
    args = parser.parse_args(["--target", "hog", "--hog_sampling", "trajectory", "--hog_bins", "6", "--model",
                              "pretrain_videomae_mini_patch16_224", "--input_size", "64", "--num_frames", "8",
                              "--sampling_rate", "2"])
    model = run_mofo_pretraining.build_model(args)
    assert model.decoder.hog_head.out_features == 4 * 4 * 3 * 6


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return pretraining_set(tmp_path_factory.mktemp("hog_data"), num_videos=4, num_frames=20, seed=6)


def test_workers_compute_only_what_the_training_step_does_not(dataset_root):
    """Tubelet HOG comes from the training step: the workers then compute no flow at all for it."""
    assert worker_targets(("pixel", "hog"), "tubelet") == ()
    assert worker_targets(("trajectory", "hog"), "tubelet") == ("trajectory",)
    assert worker_targets(("hog",), "trajectory") == ("hog",)
    parser = run_mofo_pretraining.get_args_parser()
    for target, sampling, expected in (("pixel+hog", "tubelet", None), ("pixel+hog", "trajectory", ("hog",)),
                                       ("trajectory+hog", "tubelet", ("trajectory",))):
        args = parser.parse_args(run_args(dataset_root, dataset_root / "unused", "--target", target,
                                          "--hog_sampling", sampling))
        run_mofo_pretraining.build_model(args)
        dataset = build_pretraining_dataset(args)
        assert (None if dataset.trajectory is None else dataset.trajectory.outputs) == expected
        assert set(dataset[0]) - {"frames", "mask", "box", "replaced", "missing_box"} == set(expected or ())


@pytest.mark.parametrize("target, sampling", [("pixel+hog", "tubelet"), ("trajectory+hog", "trajectory")])
def test_pretraining_runs_with_hog_targets(dataset_root, tmp_path, target, sampling):
    out = tmp_path / sampling
    args = run_args(dataset_root, out, "--target", target, "--hog_sampling", sampling, "--mask_type", "tube",
                    "--epochs", "1", "--hog_loss_weight", "0.5", "--print_freq", "1")
    result = pretrain(args)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "log.txt").read_text().splitlines()[-1])
    other = target.split("+")[0]
    expected = record[f"train_loss_{other}"] + 0.5 * record["train_loss_hog"]
    assert record["train_loss"] == pytest.approx(expected, rel=1e-4) and record["train_loss_hog"] > 0
    state = torch.load(out / "checkpoint-0.pth", weights_only=True)["model"]
    dim = 108 if sampling == "tubelet" else 4 * 4 * 27
    assert state["decoder.hog_head.weight"].shape[0] == dim

"""run_mofo_vis.py on a real synthetic mp4, its ground-truth box file and a saved mini-model checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import create_model

import make_synthetic_dataset
import modeling_finetune  # noqa: F401  (registers the fine-tuning models)
import run_mofo_vis
from engine_for_pretraining import pixel_targets
from masking_generator import TubeMaskingGenerator
from motion_detection.boxfile import load_boxes, save_boxes

REPO = Path(__file__).resolve().parents[1]
MODEL = "pretrain_videomae_mini_patch16_224"
INPUT_SIZE, NUM_FRAMES, SAMPLING_RATE = 64, 8, 2


def save_checkpoint(path: Path, **model_kwargs) -> Path:
    model_kwargs = {"decoder_depth": 1, **model_kwargs}
    model = create_model(MODEL, img_size=INPUT_SIZE, num_frames=NUM_FRAMES, **model_kwargs)
    torch.save({"model": model.state_dict(), "args": {"model": MODEL, **model_kwargs}}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("vis")
    make_synthetic_dataset.make_dataset(root, num_videos=1, num_frames=24, seed=5)
    return {
        "video": root / "videos" / "000000.mp4",
        "boxes": root / "gt_boxes" / "000000.json",
        "checkpoint": save_checkpoint(root / "checkpoint-0.pth"),
    }


def vis_args(data: dict, output: Path, *extra: str, box_file: bool = True) -> list[str]:
    args = [str(data["video"]), str(output), "--model_path", str(data["checkpoint"]), "--model", MODEL,
            "--decoder_depth", "1", "--input_size", str(INPUT_SIZE), "--num_frames", str(NUM_FRAMES),
            "--sampling_rate", str(SAMPLING_RATE), "--box_source", "clip"]  # the box expected_box computes
    return args + (["--box_file", str(data["boxes"])] if box_file else []) + list(extra)


def visualize(data: dict, output: Path, *extra: str, box_file: bool = True) -> run_mofo_vis.Visualization:
    return run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(vis_args(data, output, *extra,
                                                                                       box_file=box_file)))


def expected_box(box_file: Path, frame_indices: np.ndarray, width: int = 160, height: int = 120) -> np.ndarray:
    """Union of the sampled frames' boxes, moved into the centred square crop and normalised to it."""
    frames = np.array(json.loads(box_file.read_text())["frames"], dtype=np.float64)[frame_indices]
    union = np.array([*frames[:, :2].min(axis=0), *frames[:, 2:].max(axis=0)])
    side = min(width, height)
    offset = np.array([(width - side) // 2, (height - side) // 2] * 2)
    return np.clip(union - offset, 0, side) / side


def test_png_grid_holds_the_rows_and_visible_tubes_keep_the_original_pixels(data, tmp_path):
    output = tmp_path / "sub" / "vis.png"
    result = visualize(data, output, "--start_frame", "3")
    assert result.frame_indices.tolist() == [3, 5, 7, 9, 11, 13, 15, 17]
    np.testing.assert_allclose(result.box, expected_box(data["boxes"], result.frame_indices), atol=1e-4)
    assert result.rows == ["original", "masked input", "reconstruction", "|error|"]
    image = np.asarray(Image.open(output).convert("RGB"))
    rows, columns, tile, gap = 4, NUM_FRAMES, INPUT_SIZE, run_mofo_vis.GAP
    assert image.shape[:2] == (run_mofo_vis.HEADER_HEIGHT + rows * tile + (rows - 1) * gap,
                               run_mofo_vis.LABEL_WIDTH + columns * tile + (columns - 1) * gap)

    patch = INPUT_SIZE // result.grid_size[1]
    tubelet = NUM_FRAMES // result.grid_size[0]
    for column, t in enumerate(result.shown_frames):
        y, x = run_mofo_vis.tile_origin(result.rows.index("reconstruction"), column, tile)
        drawn = image[y:y + tile, x:x + tile]
        np.testing.assert_array_equal(drawn, result.reconstruction[t])
        slice_mask = result.mask.reshape(result.grid_size)[t // tubelet]
        for row, col in zip(*np.nonzero(~slice_mask), strict=True):
            cell = np.s_[row * patch:(row + 1) * patch, col * patch:(col + 1) * patch]
            np.testing.assert_array_equal(drawn[cell], result.original[t][cell])
    masked_cells = np.repeat(np.repeat(result.mask.reshape(result.grid_size), patch, 1), patch, 2)
    masked_pixels = np.repeat(masked_cells, tubelet, 0)
    assert not np.array_equal(result.reconstruction[masked_pixels], result.original[masked_pixels])
    assert 0 < result.pixel_mse < 1 and result.target_mse > 0


def test_motion_mask_hides_motion_mask_ratio_of_the_tubes_inside_the_box(data, tmp_path):
    result = visualize(data, tmp_path / "vis.png", "--input_size", "112", "--mask_ratio", "0.5",
                       "--motion_mask_ratio", "0.75")
    inside = result.inside_box
    assert 4 <= inside.sum() < inside.size
    grid_t, grid_h, grid_w = result.grid_size
    per_slice = result.mask.reshape(grid_t, grid_h * grid_w)
    for slice_mask in per_slice:
        assert slice_mask.sum() == int(0.5 * grid_h * grid_w)
        assert slice_mask[inside].sum() == int(0.75 * inside.sum() + 0.5)
    share_inside = per_slice[:, inside].mean()
    assert abs(share_inside - 0.75) <= 0.5 / inside.sum()
    again = visualize(data, tmp_path / "again.png", "--input_size", "112", "--mask_ratio", "0.5")
    np.testing.assert_array_equal(again.mask, result.mask)


def test_tube_masking_ignores_the_box_and_plain_targets_work(data, tmp_path):
    with_box = visualize(data, tmp_path / "a.png", "--mask_type", "tube", "--normlize_target", "false",
                         "--no_error_map", "--seed", "3")
    without_box = visualize(data, tmp_path / "b.png", "--mask_type", "tube", "--normlize_target", "false",
                            "--no_error_map", "--seed", "3", box_file=False)
    np.testing.assert_array_equal(with_box.mask, without_box.mask)
    np.testing.assert_array_equal(with_box.mask, TubeMaskingGenerator(with_box.grid_size, 0.9, seed=3)())
    assert np.isnan(without_box.box).all() and not without_box.inside_box.any()
    assert with_box.rows == ["original", "masked input", "reconstruction"]
    assert Image.open(tmp_path / "a.png").size[1] == run_mofo_vis.HEADER_HEIGHT + 3 * INPUT_SIZE + 2 * run_mofo_vis.GAP


class OracleModel(torch.nn.Module):
    """Predicts exactly the training targets of the masked tubes."""

    def __init__(self, normalize: bool):
        super().__init__()
        self.encoder = create_model(MODEL, img_size=INPUT_SIZE, num_frames=NUM_FRAMES).encoder
        self.normalize = normalize

    def forward(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        std, mean = (torch.tensor(stats).view(3, 1, 1, 1) for stats in (IMAGENET_DEFAULT_STD, IMAGENET_DEFAULT_MEAN))
        pixels = video * std + mean
        targets = pixel_targets(pixels, 16, self.encoder.patch_embed.tubelet_size, self.normalize)
        return targets[mask].reshape(video.shape[0], -1, targets.shape[-1])


@pytest.mark.parametrize("normalize", [True, False])
def test_perfect_predictions_reconstruct_the_clip(normalize):
    torch.manual_seed(0)
    video = torch.randn(3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE).clamp(-2, 2)
    mask = torch.from_numpy(TubeMaskingGenerator((4, 4, 4), 0.75, seed=0)())
    original, reconstruction, pixel_mse, target_mse = run_mofo_vis.reconstruct(OracleModel(normalize), video, mask,
                                                                              normalize)
    assert original.shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)
    assert original.min() >= 0 and original.max() <= 1
    torch.testing.assert_close(reconstruction, original, atol=1e-5, rtol=0)
    assert pixel_mse < 1e-10 and target_mse < 1e-10


def test_at_most_eight_columns():
    assert run_mofo_vis.shown_frame_positions(8) == list(range(8))
    assert run_mofo_vis.shown_frame_positions(16) == list(range(0, 16, 2))
    assert run_mofo_vis.shown_frame_positions(32) == list(range(0, 32, 4))


@pytest.mark.parametrize(("model_kwargs", "expected"), [
    ({"decoder_depth": 2}, r"unexpected keys: decoder\.blocks\.1\..*trained with --model .* --decoder_depth 2"),
    ({"encoder_embed_dim": 192}, r"shape mismatches: encoder\.patch_embed\.proj\.weight \(192, 3, 2, 16, 16\) vs "
                                 r"model \(96, 3, 2, 16, 16\)"),
])
def test_checkpoint_of_another_size_fails_clearly(data, tmp_path, model_kwargs, expected):
    checkpoint = save_checkpoint(tmp_path / "other.pth", **model_kwargs)
    args = vis_args(data, tmp_path / "vis.png")
    args[args.index("--model_path") + 1] = str(checkpoint)
    with pytest.raises(run_mofo_vis.VisualizationError, match=rf"does not fit --model {MODEL} --decoder_depth 1: "):
        run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(args))
    with pytest.raises(run_mofo_vis.VisualizationError, match=expected):
        run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(args))
    assert not (tmp_path / "vis.png").exists()


def test_bad_inputs_exit_with_a_clear_message(data, tmp_path):
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"not a video" * 200)
    cases = [
        ("video", tmp_path / "missing.mp4", "missing.mp4: file not found"),
        ("video", broken_video, r"broken.mp4: cannot decode \("),
        ("--box_file", tmp_path / "missing.json", "missing.json: box file not found"),
        ("--model_path", tmp_path / "missing.pth", "missing.pth: checkpoint not found"),
        ("--model", "pretrain_videomae_tiny_patch16_224", "unknown --model pretrain_videomae_tiny_patch16_224"),
    ]
    for option, value, message in cases:
        args = vis_args(data, tmp_path / "vis.png")
        args[0 if option == "video" else args.index(option) + 1] = str(value)
        with pytest.raises(SystemExit, match=f"^error: .*{message}"):
            run_mofo_vis.main(args)
    with pytest.raises(SystemExit, match="--mask_type motion needs --box_file"):
        run_mofo_vis.main(vis_args(data, tmp_path / "vis.png", box_file=False))
    # a fine-tuned checkpoint (its saved --model a classifier's) is named as one, not as an unknown --model
    classifier = create_model("vit_mini_patch16_224", num_classes=4, img_size=64, all_frames=4)
    torch.save({"model": classifier.state_dict(), "args": {"model": "vit_mini_patch16_224"}}, tmp_path / "ft.pth")
    args = vis_args(data, tmp_path / "vis.png")
    args[args.index("--model_path") + 1] = str(tmp_path / "ft.pth")
    model_flag = args.index("--model")
    del args[model_flag:model_flag + 2]
    with pytest.raises(SystemExit, match="ft.pth is a fine-tuned checkpoint .*run_mofo_gradcam.py"):
        run_mofo_vis.main(args)
    box_flag = args.index("--box_file")  # named as such first, not asked for a box file it would not need
    with pytest.raises(SystemExit, match="ft.pth is a fine-tuned checkpoint"):
        run_mofo_vis.main(args[:box_flag] + args[box_flag + 2:])
    assert not (tmp_path / "vis.png").exists()
    for output, message in ((tmp_path, "is a folder: name the image to write"),
                            (tmp_path / "vis.txt", "name an image file, ending in .png")):
        with pytest.raises(SystemExit, match=message):  # before any work
            run_mofo_vis.main(vis_args(data, output))


def test_a_clip_past_the_videos_end_and_flags_a_checkpoint_did_not_save_are_named(data, tmp_path, capsys):
    """A clip that runs past the video's last frame repeats it, with a note; a checkpoint whose saved flags lack
    some (a Hugging Face folder's config holds only the model's sizes) names the defaults it is drawn with."""
    result = visualize(data, tmp_path / "late.jpg", "--start_frame", "20")
    assert result.frame_indices.tolist() == [20, 22] + [23] * 6
    assert "the clip's last 6 of 8 repeat frame 23" in capsys.readouterr().out
    assert Image.open(tmp_path / "late.jpg").format == "JPEG"
    model = create_model(MODEL, img_size=INPUT_SIZE, num_frames=NUM_FRAMES, decoder_depth=1)
    partial = tmp_path / "sizes_only.pth"
    torch.save({"model": model.state_dict(), "args": {"model": MODEL, "decoder_depth": 1, "input_size": INPUT_SIZE,
                                                      "num_frames": NUM_FRAMES}}, partial)
    run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(
        [str(data["video"]), str(tmp_path / "vis.png"), "--model_path", str(partial), "--box_file",
         str(data["boxes"])]))
    note = next(line for line in capsys.readouterr().out.splitlines() if "drawn with" in line)
    assert "saved no --sampling_rate" in note and "--sampling_rate 4" in note and "--model " not in note


def test_cli_end_to_end(data, tmp_path):
    output = tmp_path / "vis.png"
    run = subprocess.run([sys.executable, "run_mofo_vis.py", *vis_args(data, output)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"wrote {output}" in run.stdout and "MSE on masked tubes" in run.stdout
    assert Image.open(output).format == "PNG"


def test_settings_come_from_the_checkpoint_and_other_heads_are_kept(data, tmp_path):
    """Without --model, --decoder_depth, --input_size, --num_frames and --sampling_rate the checkpoint's own flags
    are used; a pixel+trajectory+hog model is drawn with its pixel head, a trajectory-only one is refused."""
    for target, dim in (("pixel+trajectory+hog", 32), ("trajectory", 32)):
        model = create_model(MODEL, img_size=INPUT_SIZE, num_frames=NUM_FRAMES, decoder_depth=1,
                             targets=tuple(target.split("+")), trajectory_dim=dim, hog_dim=108)
        checkpoint = tmp_path / f"{target}.pth"
        torch.save({"model": model.state_dict(), "args": {
            "model": MODEL, "decoder_depth": 1, "input_size": INPUT_SIZE, "num_frames": NUM_FRAMES,
            "sampling_rate": SAMPLING_RATE, "target": target}}, checkpoint)
        args = [str(data["video"]), str(tmp_path / "vis.png"), "--model_path", str(checkpoint), "--box_file",
                str(data["boxes"])]
        if target == "trajectory":
            with pytest.raises(SystemExit, match="trained with --target trajectory: no pixel head"):
                run_mofo_vis.main(args)
            continue
        result = run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(args))
        assert result.original.shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)
        assert list(result.frame_indices) == list(range(0, NUM_FRAMES * SAMPLING_RATE, SAMPLING_RATE))
        assert np.isfinite(result.pixel_mse)


def test_a_tubelet_1_model_and_a_bare_state_dict_are_drawn(data, tmp_path, capsys):
    """The tubelet size is the checkpoint's patch embedding's (export_hf.py writes tubelet-1 models too); a bare
    state dict (DeepSpeed's zero_to_fp32.py output) is read as the weights, and the defaults it is drawn with where
    no flag was passed are named."""
    model = create_model(MODEL, img_size=INPUT_SIZE, num_frames=NUM_FRAMES, decoder_depth=1, tubelet_size=1)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    result = run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(vis_args(
        {**data, "checkpoint": tmp_path / "pytorch_model.bin"}, tmp_path / "vis.png", "--mask_type", "tube")))
    assert result.grid_size == (NUM_FRAMES, INPUT_SIZE // 16, INPUT_SIZE // 16) and np.isfinite(result.pixel_mse)
    note = next(line for line in capsys.readouterr().out.splitlines() if "saved no run flags" in line)
    assert "--mask_ratio 0.9" in note and "--mask_type" not in note and "--model" not in note  # passed: not defaults


def test_mask_and_box_settings_come_from_the_checkpoint(data, tmp_path):
    """A run's --mask_type, --mask_ratio, --motion_mask_ratio and --box_source are the visualiser's defaults (a
    motion-guided run is drawn with its base slice's masking); flags given win."""
    def saved(name: str, **run_args) -> Path:
        checkpoint = torch.load(data["checkpoint"], weights_only=True)
        torch.save({**checkpoint, "args": {**checkpoint["args"], **run_args}}, tmp_path / f"{name}.pth")
        return tmp_path / f"{name}.pth"

    def vis(checkpoint: Path, *extra: str, box_file: bool = True) -> run_mofo_vis.Visualization:
        args = [str(data["video"]), str(tmp_path / "vis.png"), "--model_path", str(checkpoint)]
        args += ["--box_file", str(data["boxes"])] if box_file else []
        return run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(
            args + ["--input_size", str(INPUT_SIZE), "--num_frames", str(NUM_FRAMES), "--sampling_rate", "1", *extra]))

    tube = vis(saved("tube", mask_type="tube", mask_ratio=0.5), box_file=False)
    grid_t, grid_h, grid_w = tube.grid_size
    np.testing.assert_array_equal(tube.mask, TubeMaskingGenerator(tube.grid_size, 0.5, seed=0)())
    assert vis(saved("tube", mask_type="tube", mask_ratio=0.5), "--mask_ratio", "0.25",
               box_file=False).mask.sum() == grid_t * int(0.25 * grid_h * grid_w)

    guided = vis(saved("guided", mask_type="motion_guided", mask_ratio=0.5), box_file=False)  # random base: tubes
    np.testing.assert_array_equal(guided.mask, tube.mask)
    motion = vis(saved("motion", mask_type="motion_guided", guided_base="box", mask_ratio=0.5, motion_mask_ratio=0.5,
                       box_source="video"))
    whole = json.loads(data["boxes"].read_text())
    np.testing.assert_allclose(motion.box, expected_box(data["boxes"], np.arange(whole["num_frames"])), atol=1e-4)
    clip = vis(saved("clip", mask_ratio=0.5, motion_mask_ratio=0.5, box_source="clip"))
    np.testing.assert_allclose(clip.box, expected_box(data["boxes"], clip.frame_indices), atol=1e-4)
    # no box_source saved: the video's (the default), or the clip's for this project's runs from before it
    np.testing.assert_allclose(vis(data["checkpoint"]).box, motion.box, atol=1e-6)
    np.testing.assert_allclose(vis(saved("old", mask_type="motion")).box, clip.box, atol=1e-6)
    videomae = saved("videomae", mask_type="tube")  # VideoMAE's and the MOFO release's runs: no boxes, no clip's
    np.testing.assert_allclose(vis(videomae, "--mask_type", "motion").box, motion.box, atol=1e-6)
    assert not np.allclose(clip.box, motion.box), "the sampled frames' boxes cover all of the video's"
    for result in (motion, clip):
        per_slice = result.mask.reshape(grid_t, grid_h * grid_w)
        assert (per_slice.sum(axis=1) == int(0.5 * grid_h * grid_w)).all()
        assert (per_slice[:, result.inside_box].sum(axis=1) == int(0.5 * result.inside_box.sum() + 0.5)).all()


def test_settings_from_videomaes_namespace_args_with_unset_entries(data, tmp_path):
    """VideoMAE's checkpoints store an argparse Namespace; an entry saved as None falls back to the default."""
    import argparse

    model = create_model(MODEL, img_size=INPUT_SIZE, num_frames=NUM_FRAMES, decoder_depth=1)
    checkpoint = tmp_path / "videomae.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(
        model=MODEL, decoder_depth=1, input_size=INPUT_SIZE, num_frames=NUM_FRAMES, sampling_rate=SAMPLING_RATE,
        normlize_target=None)}, checkpoint)
    args = run_mofo_vis.get_args_parser().parse_args([str(data["video"]), str(tmp_path / "vis.png"), "--model_path",
                                                      str(checkpoint), "--mask_type", "tube"])
    result = run_mofo_vis.visualize(args)
    assert args.normlize_target is True and args.decoder_depth == 1
    assert result.original.shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)


def test_a_box_file_of_another_video_is_named(data, tmp_path, capsys):
    """A --box_file made for another file name, frame count or frame shape is drawn with a warning naming each
    doubt (the loaders warn the same way; a frame-count mismatch maps the boxes proportionally)."""
    boxes = load_boxes(data["boxes"])
    other = tmp_path / "000007.json"
    save_boxes(other, replace(boxes, video="000007.mp4", width=boxes.width * 2,
                              num_frames=2 * boxes.num_frames, frames=np.concatenate([boxes.frames, boxes.frames])))
    args = vis_args(data, tmp_path / "vis.png")
    args[args.index("--box_file") + 1] = str(other)
    run_mofo_vis.visualize(run_mofo_vis.get_args_parser().parse_args(args))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert [line.split(": ", 2)[2] for line in warnings] == [
        "it was made for 000007.mp4, not 000000.mp4: another video's boxes?",
        f"it counts {2 * boxes.num_frames} frames, the decoder {boxes.num_frames}: another video's boxes?",
        f"it was made on a {2 * boxes.width}x{boxes.height} frame, the video's is {boxes.width}x{boxes.height}: "
        "another video's boxes?"]
    visualize(data, tmp_path / "own.png")
    assert "warning:" not in capsys.readouterr().out

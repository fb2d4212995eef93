"""run_mofo_gradcam.py: Grad-CAM on constructed models with a known answer, and the CLI on a real synthetic mp4, its
ground-truth box file and saved mini-model checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models import create_model
from torch import nn

import datasets
import make_synthetic_dataset
import run_mofo_gradcam
import run_mofo_vis
import utils
from run_mofo_gradcam import GradCamError, grad_cam
from test_mofo_model import RELEASE, release_head_state
from video_transforms import normalize_clip

REPO = Path(__file__).resolve().parents[1]
PLAIN, MOFO = "vit_mini_patch16_224", "vit_mini_patch16_224_mofo"
INPUT_SIZE, NUM_FRAMES, SAMPLING_RATE, NUM_CLASSES = 64, 8, 2, 8
PATCH, TUBELET = 16, 2


def mini_model(name: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, img_size=INPUT_SIZE, all_frames=NUM_FRAMES)
    with torch.no_grad():  # a non-trivial head so that classes differ clearly
        model.head.weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gradcam")
    make_synthetic_dataset.make_dataset(root, num_videos=1, num_frames=24, seed=5)
    checkpoints = {}
    for name in (PLAIN, MOFO):
        checkpoints[name] = root / f"{name}.pth"
        torch.save({"model": mini_model(name).state_dict()}, checkpoints[name])
    return {"video": root / "videos" / "000000.mp4", "boxes": root / "gt_boxes" / "000000.json",
            "checkpoints": checkpoints}


def cli_args(data: dict, output: Path, model: str = PLAIN, *extra: str, box_file: bool = True) -> list[str]:
    args = [str(data["video"]), str(output), "--model", model, "--checkpoint", str(data["checkpoints"][model]),
            "--nb_classes", str(NUM_CLASSES), "--layer", "1", "--input_size", str(INPUT_SIZE), "--num_frames",
            str(NUM_FRAMES), "--sampling_rate", str(SAMPLING_RATE)]
    return args + (["--box_file", str(data["boxes"])] if box_file else []) + list(extra)


def figure(data: dict, output: Path, model: str = PLAIN, *extra: str, box_file: bool = True
           ) -> run_mofo_gradcam.GradCamFigure:
    args = run_mofo_gradcam.get_args_parser().parse_args(cli_args(data, output, model, *extra, box_file=box_file))
    return run_mofo_gradcam.gradcam_figure(args)


def colour_detector() -> nn.Module:
    """A plain mini model whose logit c (c < 3) is the mean over tokens of the tubelet's mean of colour channel c.

    The patch embedding's channel c averages input channel c and the other channels are 0; there are no position
    embeddings, the blocks add nothing (zero output projections) and the head reads channel c for class c with no
    norm before it. So class c depends only on the tokens whose tubelet holds colour c.
    """
    model = mini_model(PLAIN)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.pos_embed.zero_()
        kernel = model.patch_embed.proj.weight
        for channel in range(3):
            kernel[channel, channel] = 1 / kernel[channel, channel].numel()
        model.head.weight[:3, :3] = torch.eye(3)
    model.fc_norm = nn.Identity()
    return model


def square_video(squares: dict[int, tuple[int, int, int, float]]) -> torch.Tensor:
    """A black clip (3, T, S, S) with colour channel c set to value v on token (t, h, w) for c -> (t, h, w, v)."""
    video = torch.zeros(3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE)
    for channel, (t, h, w, value) in squares.items():
        video[channel, t * TUBELET:(t + 1) * TUBELET, h * PATCH:(h + 1) * PATCH, w * PATCH:(w + 1) * PATCH] = value
    return video


def token_means(cam: np.ndarray) -> np.ndarray:
    """The map averaged over every tubelet's pixels: (T', H', W')."""
    grid = (NUM_FRAMES // TUBELET, TUBELET, INPUT_SIZE // PATCH, PATCH, INPUT_SIZE // PATCH, PATCH)
    return cam.reshape(grid).mean(axis=(1, 3, 5))


def test_the_map_sits_on_the_tokens_the_target_class_depends_on():
    model = colour_detector()
    red, green = (1, 1, 2), (3, 2, 0)  # (t, h, w) tokens: asymmetric, so a transposed layout would show
    video = square_video({0: (*red, 1.0), 1: (*green, 0.5)})
    maps = {}
    for target in (None, 0, 1):
        cam, logits = grad_cam(model, video, None, layer=1, target_class=target)
        assert cam.shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE) and cam.dtype == np.float32
        assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() == pytest.approx(1)
        maps[target] = cam
    torch.testing.assert_close(logits, model(video[None])[0].detach())
    assert int(logits.argmax()) == 0  # the red square is brighter: red is the predicted class
    np.testing.assert_array_equal(maps[None], maps[0])
    for target, token in ((0, red), (1, green)):
        means = token_means(maps[target])
        assert np.unravel_index(means.argmax(), means.shape) == token
        outside = np.delete(maps[target], np.s_[token[0] * TUBELET:(token[0] + 1) * TUBELET], axis=0)
        assert not outside.any(), "nearest in time: frames of other tubelets get nothing"
        t, h, w = token
        tile = maps[target][t * TUBELET]
        assert tile[h * PATCH:(h + 1) * PATCH, w * PATCH:(w + 1) * PATCH].mean() > 0.5
        assert tile.mean() < 0.15
    assert all(parameter.grad is None for parameter in model.parameters())


def test_the_map_follows_the_paper_recipe_at_the_chosen_one_based_layer():
    model = mini_model(PLAIN)
    video = torch.randn(3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    grid = model.patch_embed.grid_size
    cams = {}
    for layer in (1, 2):
        tokens = model.patch_embed(video[None]) + model.pos_embed
        for index, block in enumerate(model.blocks):
            tokens = block(tokens)
            if index == layer - 1:
                kept = tokens
                kept.retain_grad()
        logits = model.head(model.fc_norm(model.norm(tokens).mean(1)))[0]
        target = int(logits.argmax())
        logits[target].backward()
        token_cam = F.relu(kept[0] @ kept.grad[0].mean(0)).detach()
        expected = F.interpolate(token_cam.reshape(grid[0], 1, *grid[1:]), size=(INPUT_SIZE, INPUT_SIZE),
                                 mode="bilinear", align_corners=False)[:, 0].repeat_interleave(TUBELET, dim=0)
        cams[layer], got_logits = grad_cam(model, video, None, layer)
        np.testing.assert_allclose(cams[layer], (expected / expected.max()).numpy(), atol=1e-5)
        torch.testing.assert_close(got_logits, logits.detach())
    assert not np.allclose(cams[1], cams[2])


def test_bad_layer_target_or_missing_box_is_a_clear_error():
    model, mofo = mini_model(PLAIN), mini_model(MOFO)
    video = torch.zeros(3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE)
    for layer in (0, 3):
        with pytest.raises(GradCamError, match=f"layer {layer} is out of range: .* has blocks 1 to 2"):
            grad_cam(model, video, None, layer)
    with pytest.raises(GradCamError, match="target class 8 is out of range: the model has 8 classes$"):
        grad_cam(model, video, None, 1, target_class=8)
    with pytest.raises(GradCamError, match=r"target class 5 is out of range: .* 3 classes in this head \(EPIC"):
        grad_cam(model, video, None, 1, target_class=5, head=slice(0, 3))
    with pytest.raises(GradCamError, match="MOFO model needs the clip's motion box"):
        grad_cam(mofo, video, None, 1)
    cam, _ = grad_cam(mofo, video, np.array([0.25, 0.25, 0.75, 0.75]), 2)
    assert cam.shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE) and np.isfinite(cam).all()
    assert model.training is False and mofo.training is False


def test_cli_compares_two_models_in_a_png_with_one_row_each(data, tmp_path):
    output = tmp_path / "sub" / "gradcam.png"
    extra = ["--compare_model", MOFO, "--compare_checkpoint", str(data["checkpoints"][MOFO]), "--frames", "3",
             "--layer", "2", "--compare_label", "MOFO"]
    run = subprocess.run([sys.executable, "run_mofo_gradcam.py", *cli_args(data, output, PLAIN, *extra)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"wrote {output}" in run.stdout and "block 2" in run.stdout and "video frames [2, 8, 12]" in run.stdout
    assert f"{PLAIN}: predicted class" in run.stdout and "MOFO: predicted class" in run.stdout
    image = Image.open(output)
    assert image.format == "PNG"
    height, width = run_mofo_vis.canvas_size(num_rows=3, num_columns=3, tile=INPUT_SIZE)
    assert image.size == (width, height)


def expected_frame_boxes(box_file: Path, frame_indices: np.ndarray, short_side: int = INPUT_SIZE, width: int = 160,
                         height: int = 120, source: str = "frame") -> np.ndarray:
    """The sampled frames' own boxes (``source`` frame) or the file's union box in every frame (video) in the
    fine-tuning loader's validation view, normalised to it: decoded at even sides whose short one reaches
    ``short_side`` (160x120 -> 2 ceil(160 s / 240) x s), the short side resized to it, then the centre INPUT_SIZE
    square."""
    record = json.loads(box_file.read_text())
    frames = (np.array(record["frames"], dtype=np.float64)[frame_indices] if source == "frame"
              else np.tile(np.array(record["union"], dtype=np.float64), (len(frame_indices), 1)))
    decoded_width, decoded_height = datasets.decode_size(width, height, short_side)
    new_width = round(decoded_width * short_side / decoded_height)
    scaled = frames * np.array([new_width / width, short_side / height] * 2)
    offset = np.array([round(0.5 * (new_width - INPUT_SIZE)), (short_side - INPUT_SIZE) // 2] * 2)
    return np.clip(scaled - offset, 0, INPUT_SIZE) / INPUT_SIZE


def test_figure_holds_the_video_box_and_a_normalised_map_per_model(data, tmp_path):
    """MOFO models get the box the fine-tuning loader gives them (by default the video's union box in every frame;
    each frame's own with --box_source frame, below): the logits shown are those of the forward pass the test
    runs."""
    output = tmp_path / "gradcam.png"
    result = figure(data, output, MOFO, "--start_frame", "3", "--compare_model", PLAIN, "--compare_checkpoint",
                    str(data["checkpoints"][PLAIN]))
    assert result.frame_indices.tolist() == [3, 5, 7, 9, 11, 13, 15, 17]
    assert result.shown_frames == [NUM_FRAMES // 2]
    np.testing.assert_allclose(result.box, expected_frame_boxes(data["boxes"], result.frame_indices, source="video"),
                               atol=1e-4)
    assert result.rows == ["input", MOFO, PLAIN]
    assert result.image_size == run_mofo_vis.canvas_size(3, 1, INPUT_SIZE)
    for model in result.models:
        assert model.cam.shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE) and model.cam.dtype == np.float32
        assert np.isfinite(model.cam).all() and model.cam.min() >= 0 and model.cam.max() == pytest.approx(1)
        assert model.target_class == model.predicted_class
        assert model.probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert not np.allclose(result.models[0].cam, result.models[1].cam)

    image = np.asarray(Image.open(output).convert("RGB"))
    tiles = [image[y:y + INPUT_SIZE, x:x + INPUT_SIZE] for y, x in
             (run_mofo_vis.tile_origin(row, 0, INPUT_SIZE) for row in range(3))]
    assert not np.array_equal(tiles[0], tiles[1]) and not np.array_equal(tiles[1], tiles[2])

    frame_boxes = expected_frame_boxes(data["boxes"], result.frame_indices)
    assert np.ptp(frame_boxes[:, 0]) > 0.1  # the synthetic object moves: the frame boxes differ from the union
    mofo = run_mofo_gradcam.load_classifier(MOFO, str(data["checkpoints"][MOFO]), NUM_CLASSES, INPUT_SIZE,
                                            NUM_FRAMES, "cpu")
    video = normalize_clip(torch.from_numpy(result.frames).permute(0, 3, 1, 2))
    with torch.no_grad():
        of_union = mofo(video[None], torch.from_numpy(result.box).float()[None])[0].softmax(-1)
        per_frame = mofo(video[None], torch.from_numpy(frame_boxes).float()[None])[0].softmax(-1)
    np.testing.assert_allclose(result.models[0].probabilities, of_union.numpy(), atol=1e-5)
    assert not np.allclose(result.models[0].probabilities, per_frame.numpy(), atol=1e-5)

    targeted = figure(data, tmp_path / "target.png", MOFO, "--start_frame", "3", "--target_class", "3")
    assert targeted.models[0].target_class == 3 != targeted.models[0].predicted_class
    assert not np.allclose(targeted.models[0].cam, result.models[0].cam)


def test_tsn_takes_the_frames_the_fine_tuning_loader_validates_on(data, tmp_path):
    """The middle frame of each of equal segments, as datasets.tsn_indices: also for lengths that are not a multiple
    of the clip (VideoMAE's int(tick / 2 + tick k) differs there: 45 frames into 16 is 1, 4, 7, 9, ...)."""
    args = cli_args(data, tmp_path / "tsn.png", PLAIN, "--tsn", box_file=False)
    del args[args.index("--sampling_rate"):args.index("--sampling_rate") + 2]  # a stride is refused with --tsn
    result = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(args))
    assert result.frame_indices.tolist() == [1, 4, 7, 10, 13, 16, 19, 22]
    assert result.box.shape == (NUM_FRAMES, 4) and np.isnan(result.box).all()
    video = tmp_path / "45.mp4"
    make_synthetic_dataset.write_mp4(video, np.zeros((45, 64, 64, 3), np.uint8), fps=12)
    frames, indices, _ = run_mofo_gradcam.read_frames(str(video), 16, 1, 0, tsn=True, short_side_size=64,
                                                      stored_size=(64, 64))
    assert indices.tolist() == datasets.tsn_indices(45, 16, None, 0.5).tolist()
    assert indices.tolist()[:4] == [1, 3, 6, 9] and frames.shape[0] == 16


def test_clip_settings_come_from_the_checkpoint_and_the_view_is_the_loaders(data, tmp_path):
    """A checkpoint fine-tuned at 64 px, 8 frames, stride 2 and short side 80 is explained on that clip without
    the flags; two checkpoints of other settings need them."""
    trained = tmp_path / "trained.pth"
    torch.save({"model": mini_model(PLAIN).state_dict(),
                "args": {"input_size": INPUT_SIZE, "num_frames": NUM_FRAMES, "sampling_rate": SAMPLING_RATE,
                         "short_side_size": 80}}, trained)
    args = [str(data["video"]), str(tmp_path / "cam.png"), "--model", PLAIN, "--checkpoint", str(trained),
            "--layer", "1", "--box_file", str(data["boxes"]), "--start_frame", "3", "--box_source", "frame"]
    result = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(args))
    assert result.frames.shape == (NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)
    assert result.frame_indices.tolist() == [3, 5, 7, 9, 11, 13, 15, 17]
    np.testing.assert_allclose(result.box, expected_frame_boxes(data["boxes"], result.frame_indices, 80), atol=1e-4)
    other = tmp_path / "other.pth"
    torch.save({"model": mini_model(PLAIN).state_dict(), "args": {"input_size": 32}}, other)
    with pytest.raises(GradCamError, match=r"different --input_size \[32, 64\]: pass --input_size"):
        run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(
            args + ["--compare_model", PLAIN, "--compare_checkpoint", str(other)]))


def test_an_ssv2_checkpoints_clip_is_its_validation_loaders_pixel_for_pixel(data, tmp_path, capsys):
    """Fine-tuned on SSV2 (saved --data_set), a checkpoint is explained on TSN frames without --tsn, and the clip
    is the validation loader's to the pixel: decoded as it decodes (smaller than the stored 160x120, where its short
    side still reaches --short_side_size), resized and cropped alike."""
    trained = tmp_path / "ssv2.pth"
    torch.save({"model": mini_model(PLAIN).state_dict(),
                "args": {"data_set": "SSV2", "input_size": INPUT_SIZE, "num_frames": NUM_FRAMES,
                         "short_side_size": 72}}, trained)
    args = [str(data["video"]), str(tmp_path / "cam.jpg"), "--model", PLAIN, "--checkpoint", str(trained), "--layer",
            "1"]
    result = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(args))
    assert "note: fine-tuned on SSV2: TSN frames" in capsys.readouterr().out
    assert result.frame_indices.tolist() == datasets.tsn_indices(24, NUM_FRAMES, None, 0.5).tolist()
    (tmp_path / "val.csv").write_text(f"{data['video'].name} 0\n")
    loader = datasets.VideoClassificationDataset(datasets.read_label_list(tmp_path / "val.csv"),
                                                 str(data["video"].parent), mode="validation", sampling="tsn",
                                                 num_frames=NUM_FRAMES, input_size=INPUT_SIZE, short_side_size=72)
    figure_clip = normalize_clip(torch.from_numpy(result.frames).permute(0, 3, 1, 2))
    torch.testing.assert_close(figure_clip, loader[0]["video"], rtol=0, atol=1e-6)
    with Image.open(tmp_path / "cam.jpg") as image:  # written in the format of its extension
        assert image.format == "JPEG"
    strided = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(
        args + ["--sampling_rate", "2"]))
    assert strided.frame_indices.tolist() == list(range(0, 16, 2))


def test_an_epic_checkpoint_is_explained_one_head_at_a_time(data, tmp_path, capsys):
    """Verb and noun logits are one layer (EPIC's heads concatenated): classes, probabilities and the target count
    within the chosen head. Without a stride or start it is not given TSN frames over the whole (long) video: a
    note says how to place the clip on the action."""
    model = mini_model(PLAIN, num_classes=3 + 5)
    checkpoint = tmp_path / "epic.pth"
    torch.save({"model": model.state_dict(), "args": {"head_sizes": [3, 5], "data_set": "EPIC-KITCHENS-100"}},
               checkpoint)
    args = cli_args(data, tmp_path / "epic.png", PLAIN)
    args[args.index("--checkpoint") + 1] = str(checkpoint)
    del args[args.index("--nb_classes"):args.index("--nb_classes") + 2]
    for head, classes in (("verb", slice(0, 3)), ("noun", slice(3, 8))):
        result = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(
            args + ["--head", head]))
        video = normalize_clip(torch.from_numpy(result.frames).permute(0, 3, 1, 2))
        with torch.no_grad():
            expected = model(video[None])[0][classes].softmax(-1)
        np.testing.assert_allclose(result.models[0].probabilities, expected.numpy(), atol=1e-5)
        assert result.models[0].label == f"{PLAIN} ({head})"
    assert "loader samples TSN frames over an action segment" not in capsys.readouterr().out  # a stride was given
    default = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(args))
    assert default.models[0].label == f"{PLAIN} (verb)"
    unplaced = args[:args.index("--sampling_rate")] + args[args.index("--sampling_rate") + 2:]
    result = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(unplaced))
    assert result.frame_indices.tolist() == [min(4 * k, 23) for k in range(NUM_FRAMES)]  # the default stride
    out = capsys.readouterr().out
    assert "--start_frame at the action and a --sampling_rate that spans it" in out
    assert "has 24 frames: the clip's last 2 of 8 repeat frame 23" in out
    compared = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(
        args + ["--head", "noun", "--compare_model", PLAIN, "--compare_checkpoint", str(data["checkpoints"][PLAIN]),
                "--nb_classes", "8"]))  # --head picks the EPIC model's head; the other has one
    assert [model.label for model in compared.models] == [f"{PLAIN} (noun)", PLAIN]


@pytest.mark.parametrize("model, extra, box_file, message", [
    (MOFO, [], False, f"{MOFO} is a MOFO model: it needs the clip's motion box, pass --box_file"),
    (PLAIN, ["--layer", "5"], True, "layer 5 is out of range"),
    (PLAIN, ["--nb_classes", "174"], True, "its head has 8 classes; pass --nb_classes 8"),
    (PLAIN, ["--compare_model", MOFO], True, "--compare_model and --compare_checkpoint go together"),
    (PLAIN, ["--frames", "9"], True, "--frames must be between 1 and --num_frames 8"),
    (PLAIN, ["--head", "noun"], True, f"--head noun: .*{PLAIN}.pth has one head, not EPIC-KITCHENS-100.s"),
    (PLAIN, ["--tsn"], True, "--tsn samples segments of the whole video: --sampling_rate and --start_frame do not"),
])
def test_cli_errors_are_clear(data, tmp_path, model, extra, box_file, message):
    with pytest.raises(SystemExit, match=f"^error: .*{message}"):
        run_mofo_gradcam.main(cli_args(data, tmp_path / "x.png", model, *extra, box_file=box_file))
    assert not (tmp_path / "x.png").exists()


def test_a_pretraining_checkpoint_or_a_folder_output_is_named_before_other_flags(data, tmp_path):
    """A checkpoint without a classifier is named as such, not asked for the box file a MOFO model would need; an
    OUTPUT that is a folder or of no image format is refused before any work."""
    pretraining = tmp_path / "pretraining.pth"
    torch.save({"model": create_model("pretrain_videomae_mini_patch16_224", img_size=INPUT_SIZE,
                                      num_frames=NUM_FRAMES).state_dict()}, pretraining)
    with pytest.raises(SystemExit, match="pretraining.pth has no classifier head: Grad-CAM needs a fine-tuned"):
        run_mofo_gradcam.main(cli_args(data, tmp_path / "x.png", MOFO, "--checkpoint", str(pretraining),
                                       box_file=False))
    for output, message in ((tmp_path, "is a folder: name the image to write"),
                            (tmp_path / "x.svg", "name an image file, ending in .png")):
        with pytest.raises(SystemExit, match=message):
            run_mofo_gradcam.main(cli_args(data, output))


def test_a_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    with pytest.raises(SystemExit, match=f"holds weights not in {PLAIN}: mca"):
        run_mofo_gradcam.main(cli_args(data, tmp_path / "x.png", PLAIN, "--checkpoint",
                                       str(data["checkpoints"][MOFO])))
    with pytest.raises(SystemExit, match=f"lacks weights of {MOFO}: mca"):
        run_mofo_gradcam.main(cli_args(data, tmp_path / "x.png", MOFO, "--checkpoint",
                                       str(data["checkpoints"][PLAIN])))


def test_a_videomae_checkpoint_without_flags_is_built_as_its_weights_say(tmp_path):
    """A VideoMAE fine-tuned file (DeepSpeed 'module', no args): --use_cls (no fc_norm) and its tubelet size come from
    the weights; a file of another model size is a clear error."""
    clip = torch.randn(1, 3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE)
    for settings in (dict(use_mean_pooling=False), dict(tubelet_size=4)):
        torch.manual_seed(2)
        trained = create_model(PLAIN, num_classes=5, img_size=INPUT_SIZE, all_frames=NUM_FRAMES, **settings).eval()
        torch.save({"module": trained.state_dict()}, tmp_path / "videomae.pth")
        model = run_mofo_gradcam.load_classifier(PLAIN, str(tmp_path / "videomae.pth"), None, INPUT_SIZE,
                                                 NUM_FRAMES, "cpu")
        with torch.no_grad():
            torch.testing.assert_close(model(clip), trained(clip))
    torch.save({"module": create_model("vit_small_patch16_224", num_classes=5, img_size=INPUT_SIZE,
                                       all_frames=NUM_FRAMES).state_dict()}, tmp_path / "small.pth")
    with pytest.raises(GradCamError, match=r"small\.pth: .* weights are another shape than vit_mini_patch16_224's"):
        run_mofo_gradcam.load_classifier(PLAIN, str(tmp_path / "small.pth"), None, INPUT_SIZE, NUM_FRAMES, "cpu")


def test_head_settings_and_classes_come_from_the_checkpoint(data, tmp_path):
    """A MOFO head fine-tuned with --mca_depth 2 --mca_mode inner (saved in the checkpoint's args) loads without
    repeating those flags or --nb_classes, and gives the same logits as the model itself."""
    torch.manual_seed(1)
    trained = create_model(MOFO, num_classes=5, img_size=INPUT_SIZE, all_frames=NUM_FRAMES, mca_depth=2,
                           mca_mode="inner").eval()
    checkpoint = tmp_path / "deep_mca.pth"
    torch.save({"model": trained.state_dict(), "args": {"model": MOFO, "mca_depth": 2, "mca_mode": "inner",
                                                        "mca_heads": None, "use_mean_pooling": True}}, checkpoint)
    model = run_mofo_gradcam.load_classifier(MOFO, str(checkpoint), None, INPUT_SIZE, NUM_FRAMES, "cpu")
    assert model.head.out_features == 5 and len(model.state_dict()) == len(trained.state_dict())
    clip = torch.randn(1, 3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE)
    boxes = torch.tensor([[[0.2, 0.2, 0.7, 0.8]] * NUM_FRAMES])
    with torch.no_grad():
        torch.testing.assert_close(model(clip, boxes), trained(clip, boxes))
    args = cli_args(data, tmp_path / "cam.png", MOFO)
    args[args.index("--checkpoint") + 1] = str(checkpoint)
    del args[args.index("--nb_classes"):args.index("--nb_classes") + 2]
    result = run_mofo_gradcam.gradcam_figure(run_mofo_gradcam.get_args_parser().parse_args(args))
    assert result.models[0].probabilities.shape == (5,)


def test_a_mofo_release_checkpoint_is_explained_with_the_release_head(tmp_path):
    """The MOFO release's fine-tuned file (DeepSpeed 'module', its own head keys, no args of ours) loads with its
    head's settings, and the model computes what that head does."""
    trained = create_model(MOFO, num_classes=5, img_size=INPUT_SIZE, all_frames=NUM_FRAMES, **RELEASE).eval()
    release = release_head_state(trained)
    trained.load_state_dict(utils.release_mca_state(release), strict=True)
    checkpoint = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": release}, checkpoint)
    model = run_mofo_gradcam.load_classifier(MOFO, str(checkpoint), None, INPUT_SIZE, NUM_FRAMES, "cpu")
    assert model.mca_settings() == RELEASE
    clip = torch.randn(1, 3, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE)
    boxes = torch.tensor([[[0.2, 0.2, 0.7, 0.8]] * NUM_FRAMES])
    with torch.no_grad():
        torch.testing.assert_close(model(clip, boxes), trained(clip, boxes))


def test_the_box_source_is_the_mofo_checkpoints(data, tmp_path):
    """Unset, --box_source is the MOFO checkpoint's: saved, or per-frame for this project's runs from before the
    flag (their args have the MCA settings), or the video's for others (the MOFO release's, no args)."""
    state = mini_model(MOFO).state_dict()
    for name, args in (("clip", {"box_source": "clip", "mca_tokens": "centre"}), ("old", {"mca_tokens": "centre"})):
        torch.save({"model": state, "args": args}, tmp_path / f"{name}.pth")
    for checkpoint, expected in ((tmp_path / "clip.pth", "clip"), (tmp_path / "old.pth", "frame"),
                                 (data["checkpoints"][MOFO], "video")):
        argv = cli_args(data, tmp_path / "cam.png", MOFO)
        argv[argv.index("--checkpoint") + 1] = str(checkpoint)
        args = run_mofo_gradcam.get_args_parser().parse_args(argv)
        run_mofo_gradcam.check_args(args)
        assert args.box_source == expected
    argv = cli_args(data, tmp_path / "cam.png", MOFO, "--compare_model", MOFO, "--compare_checkpoint",
                    str(tmp_path / "old.pth"))
    argv[argv.index("--checkpoint") + 1] = str(tmp_path / "clip.pth")
    with pytest.raises(run_mofo_gradcam.GradCamError, match="different --box_source"):
        run_mofo_gradcam.check_args(run_mofo_gradcam.get_args_parser().parse_args(argv))

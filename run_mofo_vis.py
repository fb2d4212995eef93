r"""Reconstruction visualiser: one clip, its motion box, the mask and the model's reconstruction in one PNG.

    python run_mofo_vis.py VIDEO OUTPUT.png --model_path out/checkpoint-799.pth --box_file boxes/VIDEO.json \
        --model pretrain_videomae_base_patch16_224 --decoder_depth 4 --mask_type motion --mask_ratio 0.9

The clip is deterministic: frames ``start_frame + k * sampling_rate`` (clamped to the video), the centred square of
the short side resized to ``input_size``, ImageNet normalisation; the motion box (the video's union box from
``--box_file``, or with ``--box_source clip`` the union of the sampled frames' boxes) follows the same crop and
resize. Motion
masking uses the box, tube masking ignores it; the mask is drawn from ``--seed``. Model, clip and mask settings not
given default to the checkpoint's (its run's arguments).

Grid rows: the original frames with the motion box (green) and the tubes inside it (yellow outlines), the masked
input (masked tubes grey), the reconstruction, and the per-pixel error on the masked tubes. One column per frame, or
every other frame (every n-th) so that at most 8 columns are shown.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange
from PIL import Image
from timm import list_models
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import create_model

import modeling_pretrain  # also registers the pretrain_videomae_* models
import utils
from datasets import VideoDecodeError, box_file_doubts, clip_box, decode_frames
from engine_for_pretraining import pixel_targets
from masking_generator import MotionFocusedMaskingGenerator, TubeMaskingGenerator, inside_box_tokens
from motion_detection.boxfile import BoxFileError, load_boxes
from motion_detection.visualize import draw_box as draw_pixel_box
from video_transforms import crop_box, normalize_clip, resize_frames, scale_box

MAX_COLUMNS = 8
# The model and clip settings a checkpoint's ``args`` (ours, or VideoMAE's Namespace) supply, and these when it has
# none; a flag given on the command line wins.
TRAINED_DEFAULTS = {"model": "pretrain_videomae_base_patch16_224", "decoder_depth": 4, "input_size": 224,
                    "num_frames": 16, "sampling_rate": 4, "normlize_target": True, "mask_type": "motion",
                    "mask_ratio": 0.9, "motion_mask_ratio": 0.75, "box_source": "video"}
CHOICES = {"mask_type": ("motion", "tube"), "box_source": ("clip", "video")}
LABEL_WIDTH = 132
HEADER_HEIGHT = 20
GAP = 2
BACKGROUND = 255
TEXT_COLOUR = (0, 0, 0)
BOX_COLOUR = (0, 255, 0)
INSIDE_COLOUR = (255, 220, 0)
MASKED_GREY = 128
FONT = cv2.FONT_HERSHEY_SIMPLEX


class VisualizationError(RuntimeError):
    """An input cannot be used (missing, undecodable, or not matching the model); the message says which and why."""


@dataclass
class Visualization:
    """What was drawn: uint8 frames (T, S, S, 3), the mask (N,) over (t, h, w) tokens (True = masked), the spatial
    tokens inside the box (H'*W',), the box in [0, 1] of the crop (NaN: none) and the masked-tube errors."""

    frame_indices: np.ndarray
    shown_frames: list[int]
    box: np.ndarray
    mask: np.ndarray
    inside_box: np.ndarray
    grid_size: tuple[int, int, int]
    original: np.ndarray
    reconstruction: np.ndarray
    pixel_mse: float
    target_mse: float
    rows: list[str]
    image_size: tuple[int, int]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("MOFO reconstruction visualiser", description=__doc__,
                                     formatter_class=utils.HelpFormatter)
    parser.add_argument("img_path", metavar="VIDEO", help="the video file")
    parser.add_argument("save_path", metavar="OUTPUT", help="the image to write, in the format of its extension "
                        "(.png, .jpg, .pdf, ...; folders are created)")
    parser.add_argument("--model_path", required=True,
                        help="pretraining checkpoint: checkpoint-N.pth, a run's folder (its newest) or a Hugging Face "
                             "VideoMAEForPreTraining folder")
    parser.add_argument("--box_file", default=None, help="the video's box file (needed by --mask_type motion)")
    for name, kind, meaning in (
            ("model", str, "registered pretrain_videomae_* model"), ("decoder_depth", int, "decoder blocks"),
            ("mask_type", CHOICES["mask_type"], "motion: MOFO's motion-focused tube masking; tube: VideoMAE's random "
             "tube masking"),
            ("mask_ratio", float, "share of tubes masked"),
            ("motion_mask_ratio", float, "share of the tubes inside the motion box that are masked, motion masking"),
            ("box_source", CHOICES["box_source"], "clip: the union of the sampled frames' boxes; video: the video's "
             "union box"),
            ("input_size", int, "frame side after cropping"), ("num_frames", int, "clip length"),
            ("sampling_rate", int, "frame stride")):
        typed = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        parser.add_argument(f"--{name}", default=None, **typed,
                            help=f"{meaning} (default: the checkpoint's, else {TRAINED_DEFAULTS[name]})")
    parser.add_argument("--start_frame", default=0, type=int, help="video frame of the clip's first frame")
    parser.add_argument("--normlize_target", default=None, type=utils.str2bool,
                        help="the model predicts per-tube normalised pixels (VideoMAE's spelling; default: the "
                             "checkpoint's, else True)")
    parser.add_argument("--error_map", action="store_true", default=True, help="add the error row (default)")
    parser.add_argument("--no_error_map", action="store_false", dest="error_map")
    parser.add_argument("--seed", default=0, type=int, help="seed of the mask")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def clip_frame_indices(num_video_frames: int, num_frames: int, sampling_rate: int, start_frame: int) -> np.ndarray:
    """Frames ``start_frame + k * sampling_rate``, clamped to the last frame of the video."""
    start = min(start_frame, num_video_frames - 1)
    return np.minimum(start + np.arange(num_frames) * sampling_rate, num_video_frames - 1)


def note_clamped(video_path: str, num_video_frames: int, num_frames: int, sampling_rate: int, start_frame: int
                 ) -> None:
    """Say so when :func:`clip_frame_indices` repeated the video's last frame (the clip runs past its end)."""
    past = int((start_frame + np.arange(num_frames) * sampling_rate > num_video_frames - 1).sum())
    if past:
        print(f"note: {video_path} has {num_video_frames} frames: the clip's last {past} of {num_frames} repeat frame "
              f"{num_video_frames - 1} (a smaller --start_frame or --sampling_rate fits the clip in the video)")


def read_clip(video_path: str, num_frames: int, sampling_rate: int, start_frame: int
              ) -> tuple[torch.Tensor, np.ndarray, int]:
    """Decoded frames (T, H, W, 3) uint8, their indices in the video and the video's frame count (with the loaders'
    decoder, :func:`datasets.decode_frames`, at the stored size)."""
    try:
        decoded = decode_frames(video_path, lambda n: clip_frame_indices(n, num_frames, sampling_rate, start_frame))
    except VideoDecodeError as e:
        raise VisualizationError(str(e)) from None
    note_clamped(video_path, decoded[2], num_frames, sampling_rate, start_frame)
    return decoded


def check_image_path(path: str) -> None:
    """OUTPUT must name an image file of a format PIL writes (by its extension), not a folder."""
    output = Path(path)
    if output.is_dir():
        raise VisualizationError(f"OUTPUT {path} is a folder: name the image to write (e.g. {output / 'figure.png'})")
    extensions = Image.registered_extensions()
    if extensions.get(output.suffix.lower()) not in Image.SAVE:
        raise VisualizationError(f"OUTPUT {path}: name an image file, ending in .png (or .jpg, .pdf, ...)")


def save_image(image: np.ndarray, path: str) -> None:
    """Write an RGB image in the format of its file's extension, creating the folders."""
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(output)


def centre_crop_clip(frames: torch.Tensor, box_pixels: np.ndarray, input_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Centred square of the short side resized to input_size^2: frames (T, 3, S, S) uint8 and the box
    normalised to [0, 1] of the crop (NaN when it lies outside)."""
    height, width = frames.shape[1:3]
    side = min(height, width)
    x0, y0 = (width - side) // 2, (height - side) // 2
    resized = resize_frames(frames[:, y0:y0 + side, x0:x0 + side], (input_size, input_size))
    box = scale_box(crop_box(box_pixels, x0, y0, side, side), 1.0 / side, 1.0 / side)
    return resized, box


def read_checkpoint(checkpoint_path: str) -> dict:
    """The checkpoint as saved (weights_only; a run or Hugging Face folder's, :func:`utils.resolve_checkpoint`), or
    a VisualizationError naming the file."""
    try:
        checkpoint = utils.load_checkpoint_file(utils.resolve_checkpoint(checkpoint_path))
    except FileNotFoundError as e:
        raise VisualizationError(str(e)) from None
    except Exception as e:  # torch.load reports unreadable files and non-tensor pickles with many error types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise VisualizationError(f"{checkpoint_path}: cannot load checkpoint ({type(e).__name__}: {first_line})"
                                 ) from None
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return {"model": checkpoint}  # a bare state dict (zero_to_fp32.py's pytorch_model.bin)
    if not isinstance(checkpoint, dict) or not any(isinstance(checkpoint.get(k), dict) for k in ("model", "module")):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise VisualizationError(f"{checkpoint_path}: no 'model' or 'module' weights in the checkpoint (found {found})")
    return checkpoint


def checkpoint_state(checkpoint: dict) -> dict:
    return next(checkpoint[key] for key in ("model", "module") if isinstance(checkpoint.get(key), dict))


def refuse_fine_tuned(checkpoint: dict, checkpoint_path: str) -> None:
    """A classifier without a decoder has no reconstructions to show: said before any other flag is asked for."""
    state = checkpoint_state(checkpoint)
    if "head.weight" in state and not any(key.startswith("decoder.") for key in state):
        raise VisualizationError(f"{checkpoint_path} is a fine-tuned checkpoint (a classifier, no decoder): the "
                                 "reconstructions need a pretraining one (run_mofo_gradcam.py explains fine-tuned"
                                 " ones)")


def fill_settings(args: argparse.Namespace, trained: dict) -> None:
    """Unset model, clip and mask flags take the checkpoint's values, else ``TRAINED_DEFAULTS``. A motion-guided run
    (MGM's masks, not drawn here) is shown with the masking of its base slice: motion-focused for ``--guided_base
    box``, random tubes otherwise. A checkpoint without saved flags (a weights-only file) is drawn with the defaults,
    named in a note: its model, sizes and clip may have been others."""
    defaulted = []
    for name, default in TRAINED_DEFAULTS.items():
        if getattr(args, name) is None:
            saved = utils.saved_box_source(trained) if name == "box_source" else trained.get(name)
            if name == "mask_type" and saved == "motion_guided":
                saved = "motion" if trained.get("guided_base") == "box" else "tube"
                print(f"note: the checkpoint's --mask_type motion_guided is drawn as --mask_type {saved}")
            usable = saved is not None and (name not in CHOICES or saved in CHOICES[name])
            setattr(args, name, type(default)(saved) if usable else default)
            defaulted += [] if usable else [f"--{name} {default}"]
    if args.mask_type == "tube":  # read by motion masking only
        defaulted = [d for d in defaulted if d.split()[0] not in ("--motion_mask_ratio", "--box_source")]
    if defaulted:  # a weights-only file saves none; a Hugging Face folder's config holds the model's sizes only
        saved = "no run flags (weights only)" if not trained else f"no {' '.join(d.split()[0] for d in defaulted)}"
        print(f"note: the checkpoint saved {saved}: drawn with {' '.join(defaulted)}; pass the ones it was trained "
              "with where they differ")


def load_pretrain_model(checkpoint: dict, checkpoint_path: str, model_name: str, decoder_depth: int, input_size: int,
                        num_frames: int, device: str) -> torch.nn.Module:
    """The registered model with the checkpoint's ``model`` (or ``module``) weights loaded strictly, in eval mode,
    with the checkpoint's targets (a model with a pixel head and others keeps them all; its pixels are shown) and
    tubelet size (its patch embedding's)."""
    state = checkpoint_state(checkpoint)
    if model_name not in list_models("pretrain_videomae_*"):
        raise VisualizationError(f"unknown --model {model_name}; choose one of {', '.join(list_models('pretrain_*'))}")
    trained = utils.saved_args(checkpoint)
    targets = modeling_pretrain.parse_targets(trained.get("target", "pixel"))
    if "pixel" not in targets:
        raise VisualizationError(f"{checkpoint_path} was trained with --target {trained['target']}: no pixel head to "
                                 "show a reconstruction with")
    head_dims = {f"{name}_dim": state[f"decoder.{name}_head.weight"].shape[0] for name in ("trajectory", "hog")
                 if f"decoder.{name}_head.weight" in state}
    embedding = state.get("encoder.patch_embed.proj.weight")  # (dim, 3, tubelet, patch, patch)
    tubelet = {"tubelet_size": embedding.shape[2]} if embedding is not None and embedding.dim() == 5 else {}
    try:
        model = create_model(model_name, pretrained=False, decoder_depth=decoder_depth, img_size=input_size,
                             num_frames=num_frames, targets=targets, **head_dims, **tubelet)
    except ValueError as e:
        raise VisualizationError(f"--input_size {input_size} / --num_frames {num_frames}: {e}") from None
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        hint = ""
        if "model" in trained:
            hint = f"; it was trained with --model {trained['model']} --decoder_depth {trained.get('decoder_depth')}"
        raise VisualizationError(
            f"{checkpoint_path} does not fit --model {model_name} --decoder_depth {decoder_depth}: "
            f"{'; '.join(problems)}{hint}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def state_dict_mismatch(expected: dict, loaded: dict, examples: int = 3) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``loaded`` against ``expected``, a few named each."""

    def listed(kind: str, items: list[str]) -> str:
        more = f", ... ({len(items)} in all)" if len(items) > examples else ""
        return f"{kind}: {', '.join(items[:examples])}{more}"

    missing = [key for key in expected if key not in loaded]
    unexpected = [key for key in loaded if key not in expected]
    shapes = [f"{key} {tuple(loaded[key].shape)} vs model {tuple(value.shape)}" for key, value in expected.items()
              if key in loaded and tuple(loaded[key].shape) != tuple(value.shape)]
    return [listed(kind, items) for kind, items in
            (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]


def build_mask(mask_type: str, grid_size: tuple[int, int, int], mask_ratio: float, motion_mask_ratio: float,
               box: np.ndarray, seed: int) -> np.ndarray:
    """(T'*H'*W',) bool mask from the pretraining generators; motion masking focuses on ``box`` (NaN: random)."""
    try:
        if mask_type == "motion":
            generator = MotionFocusedMaskingGenerator(grid_size, mask_ratio, motion_mask_ratio, seed=seed)
            return generator(None if np.isnan(box).any() else box)
        return TubeMaskingGenerator(grid_size, mask_ratio, seed=seed)()
    except ValueError as e:
        raise VisualizationError(str(e)) from None


def reconstruct(model: torch.nn.Module, video: torch.Tensor, mask: torch.Tensor, normalize_target: bool
                ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Original pixels and reconstruction, both (T, S, S, 3) in [0, 1], and the MSE on the masked tubes in pixels
    and in the model's target space (the training loss).

    ``video`` is (3, T, S, S) ImageNet-normalised, ``mask`` (N,) bool. Visible tubes keep the original pixels.
    With ``normalize_target`` the predictions are per-tube normalised pixels; they are mapped back with each masked
    tube's own per-channel mean and std taken from the original pixels (VideoMAE's visualisation convention). Those
    statistics come from the hidden tubes, so such a reconstruction shows the predicted structure, while the
    brightness and colour of every masked tube are the original's.
    """
    patch_embed = model.encoder.patch_embed
    tubelet, (patch_h, patch_w) = patch_embed.tubelet_size, patch_embed.patch_size
    grid_t, grid_h, grid_w = patch_embed.grid_size
    batch_video, batch_mask = video[None], mask[None]
    with torch.inference_mode():
        predictions = model(batch_video, batch_mask)
    predictions = (predictions["pixel"] if isinstance(predictions, dict) else predictions).float()[0]
    mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN, device=video.device)[:, None, None, None]
    std = torch.as_tensor(IMAGENET_DEFAULT_STD, device=video.device)[:, None, None, None]
    pixels = video.float() * std + mean
    tubes = rearrange(pixels, "c (t p0) (h p1) (w p2) -> (t h w) (p0 p1 p2) c", p0=tubelet, p1=patch_h, p2=patch_w)
    predicted = rearrange(predictions, "n (p c) -> n p c", c=3)
    masked_tubes = tubes[mask]
    if normalize_target:
        tube_mean = masked_tubes.mean(dim=-2, keepdim=True)
        tube_std = masked_tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6
        predicted = predicted * tube_std + tube_mean
    reconstructed_tubes = tubes.clone()
    reconstructed_tubes[mask] = predicted
    reconstructed_tubes = reconstructed_tubes.clamp(0.0, 1.0)
    original_tubes = tubes.clamp(0.0, 1.0)
    pixel_mse = float(((reconstructed_tubes[mask] - original_tubes[mask]) ** 2).mean())
    targets = pixel_targets(pixels[None], patch_h, tubelet, normalize_target)[batch_mask]
    target_mse = float(((predictions - targets) ** 2).mean())

    def frames(tube_pixels: torch.Tensor) -> torch.Tensor:
        return rearrange(tube_pixels, "(t h w) (p0 p1 p2) c -> (t p0) (h p1) (w p2) c", t=grid_t, h=grid_h,
                         w=grid_w, p0=tubelet, p1=patch_h, p2=patch_w)

    return frames(original_tubes), frames(reconstructed_tubes), pixel_mse, target_mse


def shown_frame_positions(num_frames: int, max_columns: int = MAX_COLUMNS) -> list[int]:
    """Clip positions given a column: all frames, or every n-th frame so that at most max_columns remain."""
    return list(range(0, num_frames, math.ceil(num_frames / max_columns)))


def canvas_size(num_rows: int, num_columns: int, tile: int) -> tuple[int, int]:
    """(height, width) of the grid: a header line, a label column, tiles separated by GAP pixels."""
    return (HEADER_HEIGHT + num_rows * tile + (num_rows - 1) * GAP,
            LABEL_WIDTH + num_columns * tile + (num_columns - 1) * GAP)


def tile_origin(row: int, column: int, tile: int) -> tuple[int, int]:
    """(y, x) of a tile's top-left pixel in the grid."""
    return HEADER_HEIGHT + row * (tile + GAP), LABEL_WIDTH + column * (tile + GAP)


def put_text(canvas: np.ndarray, text: str, x: int, y: int, max_width: int, scale: float = 0.45) -> None:
    """Draw text with its baseline at y, shrunk until it fits max_width."""
    while scale > 0.25 and cv2.getTextSize(text, FONT, scale, 1)[0][0] > max_width:
        scale -= 0.05
    cv2.putText(canvas, text, (x, y), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)


def annotate_original(frame: np.ndarray, box: np.ndarray, inside_box: np.ndarray, grid_hw: tuple[int, int]
                      ) -> np.ndarray:
    """The frame with the tubes inside the box outlined (yellow) and the box itself (green)."""
    canvas = frame.copy()
    size = frame.shape[0]
    patch_h, patch_w = size // grid_hw[0], size // grid_hw[1]
    for position in np.flatnonzero(inside_box):
        row, column = divmod(int(position), grid_hw[1])
        top_left = (column * patch_w, row * patch_h)
        bottom_right = ((column + 1) * patch_w - 1, (row + 1) * patch_h - 1)
        cv2.rectangle(canvas, top_left, bottom_right, INSIDE_COLOUR, 1)
    draw_box(canvas, box)
    return canvas


def draw_box(canvas: np.ndarray, box: np.ndarray, colour: tuple[int, int, int] = BOX_COLOUR) -> None:
    """A normalised box (none if NaN) on a square tile, its line width growing with the tile."""
    draw_pixel_box(canvas, np.asarray(box, dtype=np.float64) * canvas.shape[0], colour,
                       max(1, round(canvas.shape[0] / 112)))


def with_box(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    canvas = frame.copy()
    draw_box(canvas, box)
    return canvas


def grey_masked_tubes(frames: np.ndarray, mask: np.ndarray, grid_size: tuple[int, int, int]) -> np.ndarray:
    """Frames (T, S, S, 3) with every masked tube filled with grey."""
    grid_t, grid_h, grid_w = grid_size
    num_frames, height, width = frames.shape[:3]
    pixel_mask = mask.reshape(grid_size).repeat(num_frames // grid_t, axis=0)
    pixel_mask = pixel_mask.repeat(height // grid_h, axis=1).repeat(width // grid_w, axis=2)
    return np.where(pixel_mask[..., None], np.uint8(MASKED_GREY), frames)


def error_image(original: np.ndarray, reconstruction: np.ndarray, scale: float) -> np.ndarray:
    """Mean absolute error over the colour channels as an inferno heat image, ``scale`` mapped to the top colour."""
    error = np.abs(reconstruction.astype(np.float32) - original.astype(np.float32)).mean(axis=-1)
    heat = cv2.applyColorMap(np.clip(255 * error / max(scale, 1e-6), 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)


def render_grid(rows: dict[str, list[np.ndarray]], column_titles: list[str]) -> np.ndarray:
    """RGB uint8 grid: one labelled row per entry (label -> tiles, ``\\n`` splits a label in lines)."""
    tile = next(iter(rows.values()))[0].shape[0]
    canvas = np.full((*canvas_size(len(rows), len(column_titles), tile), 3), BACKGROUND, dtype=np.uint8)
    for column, title in enumerate(column_titles):
        _, x = tile_origin(0, column, tile)
        put_text(canvas, title, x + 2, HEADER_HEIGHT - 6, tile - 4)
    for row, (label, tiles) in enumerate(rows.items()):
        y, _ = tile_origin(row, 0, tile)
        for line_number, line in enumerate(label.split("\n")):
            put_text(canvas, line, 4, y + 16 + 16 * line_number, LABEL_WIDTH - 8)
        for column, image in enumerate(tiles):
            y, x = tile_origin(row, column, tile)
            canvas[y:y + tile, x:x + tile] = image
    return canvas


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def visualize(args: argparse.Namespace) -> Visualization:
    """Build the clip, mask and reconstruction for ``args`` (see ``get_args_parser``) and write the PNG."""
    check_image_path(args.save_path)
    checkpoint = read_checkpoint(args.model_path)
    refuse_fine_tuned(checkpoint, args.model_path)
    fill_settings(args, utils.saved_args(checkpoint))
    if args.mask_type == "motion" and not args.box_file:
        raise VisualizationError("--mask_type motion needs --box_file (the video's box file); or use --mask_type tube")
    if args.num_frames < 1 or args.sampling_rate < 1 or args.start_frame < 0:
        raise VisualizationError("--num_frames and --sampling_rate must be positive, --start_frame not negative")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise VisualizationError(f"--device {args.device} but no GPU is visible; pass --device cpu")
    try:
        boxes = load_boxes(args.box_file) if args.box_file else None
    except BoxFileError as e:
        raise VisualizationError(str(e)) from None
    frames, frame_indices, num_video_frames = read_clip(args.img_path, args.num_frames, args.sampling_rate,
                                                        args.start_frame)
    if boxes is not None:
        for doubt in box_file_doubts(boxes, args.img_path, num_video_frames, frames.shape[2], frames.shape[1]):
            print(f"warning: {args.box_file}: {doubt}: another video's boxes?")
    model = load_pretrain_model(checkpoint, args.model_path, args.model, args.decoder_depth, args.input_size,
                                args.num_frames, args.device)
    grid_size = model.encoder.patch_embed.grid_size
    height, width = frames.shape[1:3]
    box_in_video = scale_box(clip_box(boxes, frame_indices, num_video_frames, args.box_source), width, height)
    cropped, box = centre_crop_clip(frames, box_in_video, args.input_size)
    if boxes is not None and np.isnan(box).any():
        print("note: the box file has no motion box inside this clip's crop"
              + ("; motion masking falls back to random tube masking" if args.mask_type == "motion" else ""))
    mask = build_mask(args.mask_type, grid_size, args.mask_ratio, args.motion_mask_ratio, box, args.seed)
    video = normalize_clip(cropped).to(args.device)
    original_pixels, reconstruction_pixels, pixel_mse, target_mse = reconstruct(
        model, video, torch.from_numpy(mask).to(args.device), args.normlize_target)
    original, reconstruction = to_uint8(original_pixels), to_uint8(reconstruction_pixels)

    grid_hw = grid_size[1:]
    inside_box = inside_box_tokens(torch.from_numpy(box), grid_hw).numpy()
    positions = shown_frame_positions(args.num_frames)
    masked_input = grey_masked_tubes(original, mask, grid_size)
    ratios = f"{args.mask_ratio:.0%}" + (f", box {args.motion_mask_ratio:.0%}" if args.mask_type == "motion" else "")
    rows = {
        "original\n+ motion box": [annotate_original(original[t], box, inside_box, grid_hw) for t in positions],
        f"masked input\n{args.mask_type} {ratios}": [with_box(masked_input[t], box) for t in positions],
        f"reconstruction\nMSE {pixel_mse:.4f}": [reconstruction[t] for t in positions],
    }
    if args.error_map:
        error_scale = max(float(np.abs(reconstruction.astype(np.float32) - original).mean(axis=-1).max()), 1.0)
        rows[f"|error|\nmax {error_scale / 255:.2f}"] = [
            error_image(original[t], reconstruction[t], error_scale) for t in positions]
    image = render_grid(rows, [f"frame {frame_indices[t]}" for t in positions])
    save_image(image, args.save_path)
    return Visualization(
        frame_indices=frame_indices, shown_frames=positions, box=box, mask=mask, inside_box=inside_box,
        grid_size=grid_size, original=original, reconstruction=reconstruction, pixel_mse=pixel_mse,
        target_mse=target_mse, rows=[label.split("\n")[0] for label in rows], image_size=image.shape[:2])


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        result = visualize(args)
    except VisualizationError as e:
        raise SystemExit(f"error: {e}") from None
    height, width = result.image_size
    masked, total = int(result.mask.sum()), result.mask.size
    print(f"wrote {args.save_path} ({width}x{height} px: rows {', '.join(result.rows)}; "
          f"video frames {[int(result.frame_indices[t]) for t in result.shown_frames]})")
    print(f"masked {masked}/{total} tubes ({args.mask_type}); MSE on masked tubes: {result.pixel_mse:.6f} "
          f"(pixels in [0, 1]), {result.target_mse:.6f} (model target, normlize_target={args.normlize_target})")


if __name__ == "__main__":
    main()

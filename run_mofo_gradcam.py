r"""Grad-CAM saliency of fine-tuned video classifiers (VideoMAE or MOFO) on one clip, drawn as a PNG (paper, fig. 2).

    python run_mofo_gradcam.py VIDEO OUTPUT.png --model vit_base_patch16_224 --checkpoint videomae_ssv2.pth \
        --compare_model vit_base_patch16_224_mofo --compare_checkpoint mofo_ssv2.pth --box_file boxes/VIDEO.json \
        --nb_classes 174 --layer 5 --tsn

Grad-CAM runs on the token sequence output by backbone block ``--layer``, counted from 1 like the paper's "fifth
attention layer" (``--layer 5`` is ``model.blocks[4]``; the MOFO head's cross-attention layers are not counted).
With that output A (N tokens x C channels) and G = dY/dA, the gradient of the target class's logit Y, the channel
weights are G's token means, the map is ReLU(A w) per token, laid out on the (T', H', W') token grid, repeated over
each tubelet's frames (nearest in time), resized bilinearly to the frame size and divided by its maximum over the
clip, so every model's map spans [0, 1] (all zero when no token has positive evidence). The target is the model's
predicted class unless ``--target_class`` names one (then for every model).

The clip is deterministic: frames ``start_frame + k * sampling_rate`` (clamped to the video), or with ``--tsn``
the middle frame of each of ``num_frames`` equal segments of the whole video (TSN sampling, as the fine-tuning loader
validates Something-Something and EPIC, and the default for checkpoints fine-tuned on SSV2); then the loader's
validation view, decoded as it decodes: the short side resized to ``short_side_size``, the centre ``input_size``
square, ImageNet normalisation. Unset, ``input_size``,
``num_frames`` (times ``num_segments``), ``sampling_rate`` and ``short_side_size`` are the checkpoint's. An
EPIC-KITCHENS-100 checkpoint's verb and noun heads are explained one at a time (``--head``).
The motion boxes come from ``--box_file`` as the fine-tuning loader gives them (``--box_source``, by default the
MOFO checkpoint's: the video's union box in every frame, the union of the sampled frames' or each frame's own),
carried through the same crop, so MOFO models split their tokens as in training and testing (for a clip of a long
EPIC video, whose model saw its action segment's box, ``clip`` comes closer than the whole video's). MOFO models
need them; plain models ignore them, but they are drawn when given.

PNG: a header with the video frame numbers; the input frames with their motion box (green); one row per model
with its map over the frames (jet colours, ``--alpha`` blend, box in white), labelled with the model, its predicted
class and probability, and the class the map explains. Columns: the middle frame, or ``--frames`` frames spread
evenly over the clip.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from timm import list_models
from timm.models import create_model

import utils
from datasets import (
    BOX_SOURCES,
    EPIC_KITCHENS,
    VideoDecodeError,
    box_file_doubts,
    clip_box,
    decode_frames,
    frame_boxes,
    reduced_decode_size,
    stored_video_size,
    tsn_indices,
)
from modeling_finetune import MCA_SETTINGS, MotionFocusedVisionTransformer
from motion_detection.boxfile import BoxFileError, load_boxes
from run_mofo_vis import (
    VisualizationError,
    check_image_path,
    clip_frame_indices,
    draw_box,
    note_clamped,
    render_grid,
    save_image,
    to_uint8,
    with_box,
)
from video_transforms import normalize_clip, scale_box, short_side_resize, spatial_crop

HEAT_BOX_COLOUR = (255, 255, 255)
# Clip settings a fine-tuning checkpoint's args supply, and these when it has none (short side: the input size).
CLIP_DEFAULTS = {"input_size": 224, "num_frames": 16, "sampling_rate": 4, "short_side_size": None}


class GradCamError(VisualizationError):
    """An input or option cannot be used; the message says which and why."""


@dataclass
class ModelCam:
    """One model's result: its Grad-CAM (T, S, S) in [0, 1], class probabilities and the class explained."""

    name: str
    label: str
    cam: np.ndarray
    probabilities: np.ndarray
    target_class: int

    @property
    def predicted_class(self) -> int:
        return int(self.probabilities.argmax())


@dataclass
class GradCamFigure:
    """What was drawn: the clip's video frame indices, the clip positions shown as columns, the motion boxes
    (T, 4) in [0, 1] of the crop (NaN rows: none), the frames (T, S, S, 3) uint8, one entry per model, the row
    titles and the PNG's (height, width)."""

    frame_indices: np.ndarray
    shown_frames: list[int]
    box: np.ndarray
    frames: np.ndarray
    models: list[ModelCam]
    rows: list[str]
    image_size: tuple[int, int]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("MOFO Grad-CAM", description=__doc__,
                                     formatter_class=utils.HelpFormatter)
    parser.add_argument("video", metavar="VIDEO", help="the video file")
    parser.add_argument("save_path", metavar="OUTPUT", help="the image to write, in the format of its extension "
                        "(.png, .jpg, .pdf, ...; folders are created)")
    parser.add_argument("--model", required=True, help="vit_*_patch16_224 (VideoMAE) or vit_*_patch16_224_mofo")
    parser.add_argument("--checkpoint", required=True, help="the model's fine-tuned checkpoint")
    parser.add_argument("--label", default=None, help="row title of the model (default: the model name)")
    parser.add_argument("--compare_model", default=None, help="a second model, drawn as another row")
    parser.add_argument("--compare_checkpoint", default=None, help="the second model's fine-tuned checkpoint")
    parser.add_argument("--compare_label", default=None, help="row title of the second model")
    parser.add_argument("--box_file", default=None, help="the video's box file (needed by MOFO models)")
    parser.add_argument("--box_source", default=None, choices=BOX_SOURCES,
                        help="the MOFO models' box, as run_mofo_finetuning.py's (default: the MOFO checkpoint's): "
                             "video (the file's union box), clip (the union of the sampled frames' boxes) or frame "
                             "(each frame's own)")
    parser.add_argument("--nb_classes", default=None, type=int,
                        help="classes of the fine-tuned heads, checked against the checkpoints' (default: their head "
                        "size)")
    parser.add_argument("--layer", default=5, type=int, help="backbone block whose output tokens are explained, "
                        "counted from 1 (the paper's fifth attention layer: 5)")
    parser.add_argument("--target_class", default=None, type=int,
                        help="class whose logit is explained, for every model (default: each model's prediction)")
    for name, meaning in (("input_size", "frame side after cropping"), ("num_frames", "clip length"),
                          ("sampling_rate", "frame stride"),
                          ("short_side_size", "short side the frames are resized to before the centre crop")):
        parser.add_argument(f"--{name}", default=None, type=int,
                            help=f"{meaning} (default: the checkpoint's, else {CLIP_DEFAULTS[name] or 'input_size'})")
    parser.add_argument("--head", default=None, choices=["verb", "noun"],
                        help="EPIC-KITCHENS-100 checkpoints (two heads): the head whose classes are explained "
                        "(default: verb)")
    parser.add_argument("--start_frame", default=0, type=int, help="video frame of the clip's first frame")
    parser.add_argument("--tsn", action="store_true", default=None,
                        help="sample the middle frame of num_frames equal segments of the whole video instead "
                        "(default for checkpoints fine-tuned on SSV2, unless --sampling_rate or --start_frame is "
                        "given)")
    parser.add_argument("--frames", default=1, type=int, help="frames shown: 1 is the middle one, more are spread "
                        "evenly over the clip")
    parser.add_argument("--alpha", default=0.5, type=float, help="weight of the heat map in the overlay")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def read_frames(video_path: str, num_frames: int, sampling_rate: int, start_frame: int, tsn: bool,
                short_side_size: int, stored_size: tuple[int, int] | None) -> tuple[torch.Tensor, np.ndarray, int]:
    """Decoded frames (T, H, W, 3) uint8, their indices in the video and the video's frame count; ``tsn``: the
    fine-tuning loader's validation and one-view test frames. Decoded as that loader decodes them: at the smallest
    size whose short side still reaches ``short_side_size`` (from the ``stored_size``, when known), so the pixels are
    the loader's."""
    def pick(num_video_frames: int) -> np.ndarray:
        if tsn:
            return tsn_indices(num_video_frames, num_frames, None, 0.5)
        return clip_frame_indices(num_video_frames, num_frames, sampling_rate, start_frame)

    try:
        decoded = decode_frames(video_path, pick, reduced_decode_size(stored_size, short_side_size))
    except VideoDecodeError as e:
        raise GradCamError(str(e)) from None
    if not tsn:
        note_clamped(video_path, decoded[2], num_frames, sampling_rate, start_frame)
    return decoded


def read_checkpoint(checkpoint: str) -> tuple[dict, dict, dict]:
    """A fine-tuned checkpoint's state dict as saved, its encoder state (:func:`utils.encoder_state`) and its saved
    flags; a GradCamError naming the file when it cannot be read. Read once for its settings and its model (again
    when the file or folder has changed since)."""
    path = Path(checkpoint)
    return _read_checkpoint(checkpoint, path.stat().st_mtime_ns if path.exists() else None)


@functools.lru_cache(maxsize=2)
def _read_checkpoint(checkpoint: str, modified: int | None) -> tuple[dict, dict, dict]:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            path = utils.resolve_checkpoint(checkpoint)
            saved = utils.load_checkpoint_file(path)
            raw = utils.model_state(saved, path)
    except FileNotFoundError as e:
        raise GradCamError(str(e)) from None
    except Exception as e:  # torch.load reports unreadable files and non-tensor pickles with many error types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise GradCamError(f"{checkpoint}: cannot load checkpoint ({type(e).__name__}: {first_line})") from None
    return raw, utils.encoder_state(raw), utils.saved_args(saved)


def saved_clip(trained: dict) -> dict:
    """The clip settings of :data:`CLIP_DEFAULTS` a checkpoint was fine-tuned with (the model's frames are
    ``num_frames x num_segments``)."""
    clip = {name: trained.get(name) for name in CLIP_DEFAULTS}
    if clip["num_frames"] is not None:
        clip["num_frames"] *= trained.get("num_segments") or 1
    return clip


def fill_clip_settings(args: argparse.Namespace, checkpoints: list[str]) -> None:
    """Unset clip flags take the checkpoints' values (they must agree), else :data:`CLIP_DEFAULTS`: the clip is
    then the one the model was tested on (TSN frames for an SSV2 checkpoint unless a stride or start is given;
    EPIC's are an action segment's, which only the user knows in a long video)."""
    if args.tsn is None:
        data_sets = {read_checkpoint(checkpoint)[2].get("data_set") for checkpoint in checkpoints}
        clip_unset = args.sampling_rate is None and args.start_frame == 0
        args.tsn = clip_unset and data_sets == {"SSV2"}
        if args.tsn:
            print("note: fine-tuned on SSV2: TSN frames over the video, as its loader samples them (a "
                  "--sampling_rate or --start_frame samples a strided clip instead)")
        elif clip_unset and EPIC_KITCHENS in data_sets:
            print("note: fine-tuned on EPIC-KITCHENS-100, whose loader samples TSN frames over an action segment: "
                  "--tsn for a trimmed clip of one; in a long video, --start_frame at the action and a --sampling_rate"
                  " that spans it")
    saved = [saved_clip(read_checkpoint(checkpoint)[2]) for checkpoint in checkpoints]
    for name, default in CLIP_DEFAULTS.items():
        if getattr(args, name) is not None:
            continue
        values = sorted({clip[name] for clip in saved} - {None})
        if len(values) > 1:
            raise GradCamError(f"the checkpoints were fine-tuned with different --{name} {values}: pass --{name}")
        setattr(args, name, values[0] if values else default)
    if args.short_side_size is None:
        args.short_side_size = args.input_size


def head_slice(trained: dict, head: str | None) -> tuple[slice, str | None]:
    """The logits of one head and its name: EPIC-KITCHENS-100 checkpoints concatenate their verb and noun heads
    (``head`` None: verb); other checkpoints have one, whatever ``head`` says."""
    sizes = trained.get("head_sizes") or []
    if len(sizes) != 2:
        return slice(None), None
    head = head or "verb"
    start = 0 if head == "verb" else sizes[0]
    return slice(start, start + sizes[0 if head == "verb" else 1]), head


def classifier_head(checkpoint: str) -> torch.Tensor:
    """The checkpoint's classifier weights; a GradCamError for one without (a pretraining checkpoint)."""
    head = read_checkpoint(checkpoint)[1].get("head.weight")
    if head is None:
        raise GradCamError(f"{checkpoint} has no classifier head: Grad-CAM needs a fine-tuned checkpoint")
    return head


def load_classifier(name: str, checkpoint: str, nb_classes: int | None, input_size: int, num_frames: int,
                    device: str) -> torch.nn.Module:
    """The registered fine-tuning model with every weight from ``checkpoint``, in eval mode.

    The head size (unless ``nb_classes`` is given), the pooling and the MOFO head's settings (``--use_cls``,
    ``--mca_*``) are the checkpoint's: its saved flags and weights (a MOFO release checkpoint's are the release's). A
    checkpoint that lacks some of the model's weights (a pretraining checkpoint has no head; a VideoMAE checkpoint
    has no MOFO head) or holds weights the model has no place for (a MOFO checkpoint for a plain model) is an
    error: Grad-CAM through untrained weights would explain nothing.
    """
    known = list_models(module="modeling_finetune")
    if name not in known:
        raise GradCamError(f"unknown model {name}; choose one of {', '.join(known)}")
    raw, state, trained = read_checkpoint(checkpoint)
    head = classifier_head(checkpoint)
    if nb_classes is None:
        nb_classes = head.shape[0]
    kwargs = {key: trained[key] for key in ("use_mean_pooling", "tubelet_size") if key in trained}
    kernel = state.get("patch_embed.proj.weight")  # no saved flags (a VideoMAE file): the weights say
    if kernel is not None:
        kwargs.setdefault("tubelet_size", kernel.shape[2])
    if not name.endswith("_mofo"):  # the MOFO head always pools
        kwargs.setdefault("use_mean_pooling", "fc_norm.weight" in state)
    else:
        kwargs.update({key: trained[key] for key in MCA_SETTINGS if key in trained})
        if utils.is_release_mca_state(raw):
            kwargs.update(utils.RELEASE_MCA_SETTINGS)
    try:
        model = create_model(name, pretrained=False, num_classes=nb_classes, img_size=input_size,
                             all_frames=num_frames, **kwargs)
    except ValueError as e:
        raise GradCamError(f"cannot build {name} with --input_size {input_size}, --num_frames {num_frames} and the "
                           f"checkpoint's {kwargs}: {e}") from None
    own = model.state_dict()
    if head.shape[0] != own["head.weight"].shape[0]:
        raise GradCamError(f"{checkpoint}: its head has {head.shape[0]} classes; pass --nb_classes {head.shape[0]}")
    mismatched = [f"{key} is {tuple(value.shape)}, the model's {tuple(own[key].shape)}" for key, value in state.items()
                  if key in own and value.shape != own[key].shape]
    if mismatched:
        raise GradCamError(f"{checkpoint}: {len(mismatched)} weights are another shape than {name}'s ({mismatched[0]}):"
                           " a checkpoint of another model size, patch or tubelet size, or --num_frames/--input_size")
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own and key != "pos_embed"]
    for problem, keys in (("lacks weights of", missing), ("holds weights not in", unexpected)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
            raise GradCamError(f"{checkpoint} {problem} {name}: {', '.join(keys[:3])}{more}; Grad-CAM needs the "
                               "fine-tuned checkpoint of this model")
    model.load_state_dict({key: value for key, value in state.items() if key != "pos_embed"})
    return model.to(device).eval()


def grad_cam(model: torch.nn.Module, video: torch.Tensor, box: np.ndarray | torch.Tensor | None, layer: int,
             target_class: int | None = None, head: slice = slice(None)) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM of ``target_class`` (None: the predicted class) on the tokens output by block ``layer`` (from 1);
    classes count within ``head``, the logits of one head (EPIC's verb or noun).

    ``video`` is one normalised clip (3, T, S, S) on the model's device; ``box`` its motion boxes, normalised xyxy,
    one per frame (T, 4) or one for the clip (4,), needed by MOFO models (NaN: no box) and ignored by plain ones.
    Returns the map (T, S, S) float32 in [0, 1] and the head's logits on the CPU. The model runs in eval
    mode; parameter ``.grad`` is untouched.
    """
    num_blocks = len(model.blocks)
    if not 1 <= layer <= num_blocks:
        raise GradCamError(f"layer {layer} is out of range: {type(model).__name__} has blocks 1 to {num_blocks}")
    extra_inputs = ()
    if isinstance(model, MotionFocusedVisionTransformer):
        if box is None:
            raise GradCamError("a MOFO model needs the clip's motion box: pass --box_file")
        extra_inputs = (torch.as_tensor(box, dtype=torch.float32, device=video.device)[None],)
    captured = {}
    handle = model.blocks[layer - 1].register_forward_hook(
        lambda module, inputs, output: captured.update(tokens=output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(video[None].detach().requires_grad_(), *extra_inputs)[0][head]
            target = int(logits.argmax()) if target_class is None else target_class
            if not 0 <= target < logits.numel():
                which = "" if head == slice(None) else " in this head (EPIC: --head verb or noun)"
                raise GradCamError(f"target class {target} is out of range: the model has {logits.numel()} "
                                   f"classes{which}")
            (gradients,) = torch.autograd.grad(logits[target], captured["tokens"])
    finally:
        handle.remove()
        model.train(was_training)
    activations = captured["tokens"][0].detach().float()
    weights = gradients[0].float().mean(dim=0)
    token_cam = F.relu(activations @ weights)
    grid_t, grid_h, grid_w = model.patch_embed.grid_size
    cam = F.interpolate(token_cam.reshape(grid_t, 1, grid_h, grid_w), size=tuple(video.shape[-2:]),
                        mode="bilinear", align_corners=False)[:, 0]
    cam = cam.repeat_interleave(video.shape[1] // grid_t, dim=0)
    peak = cam.max()
    if peak > 0:
        cam = cam / peak
    return cam.cpu().numpy().astype(np.float32), logits.detach().float().cpu()


def shown_positions(num_frames: int, count: int) -> list[int]:
    """``count`` clip positions at the centres of equal parts of the clip (1: the middle frame)."""
    return [int((k + 0.5) * num_frames / count) for k in range(count)]


def overlay(frame: np.ndarray, cam: np.ndarray, box: np.ndarray, alpha: float) -> np.ndarray:
    """The frame blended with the jet-coloured map, the motion box (if any) drawn in white."""
    heat = cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(frame, 1 - alpha, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), alpha, 0)
    draw_box(blended, box, HEAT_BOX_COLOUR)
    return blended


def row_label(result: ModelCam) -> str:
    predicted = result.predicted_class
    lines = [result.label, f"pred {predicted} ({result.probabilities[predicted]:.1%})"]
    target = result.target_class
    lines.append("cam: predicted" if target == predicted else f"cam: {target} ({result.probabilities[target]:.1%})")
    return "\n".join(lines)


def check_args(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The (model, checkpoint, row title) of every model to explain, after checking the options."""
    check_image_path(args.save_path)
    if (args.compare_model is None) != (args.compare_checkpoint is None):
        raise GradCamError("--compare_model and --compare_checkpoint go together")
    checkpoints = [args.checkpoint] + ([args.compare_checkpoint] if args.compare_checkpoint else [])
    for checkpoint in checkpoints:  # before any flag it would need is asked for
        classifier_head(checkpoint)
    if args.tsn and (args.sampling_rate is not None or args.start_frame != 0):
        raise GradCamError("--tsn samples segments of the whole video: --sampling_rate and --start_frame do not apply")
    fill_clip_settings(args, checkpoints)
    if args.num_frames < 1 or args.sampling_rate < 1 or args.start_frame < 0:
        raise GradCamError("--num_frames and --sampling_rate must be positive, --start_frame not negative")
    if not 1 <= args.frames <= args.num_frames:
        raise GradCamError(f"--frames must be between 1 and --num_frames {args.num_frames}, got {args.frames}")
    if not 0 <= args.alpha <= 1:
        raise GradCamError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise GradCamError(f"--device {args.device} but no GPU is visible; pass --device cpu")
    specs = [(args.model, args.checkpoint, args.label or args.model)]
    if args.compare_model is not None:
        specs.append((args.compare_model, args.compare_checkpoint, args.compare_label or args.compare_model))
    for name, _, _ in specs:
        if name.endswith("_mofo") and not args.box_file:
            raise GradCamError(f"{name} is a MOFO model: it needs the clip's motion box, pass --box_file")
    if args.box_source is None:  # runs of this project's from before --box_source: per-frame; others: the video's
        saved = {trained.get("box_source", "frame" if "mca_tokens" in trained else "video")
                 for trained in (read_checkpoint(path)[2] for name, path, _ in specs if name.endswith("_mofo"))}
        if len(saved) > 1:
            raise GradCamError(f"the MOFO checkpoints were fine-tuned with different --box_source {sorted(saved)}: "
                               "pass --box_source")
        args.box_source = saved.pop() if saved else "video"
    if args.head is not None and all(head_slice(read_checkpoint(path)[2], None)[1] is None for _, path, _ in specs):
        raise GradCamError(f"--head {args.head}: {' and '.join(path for _, path, _ in specs)} "
                           f"{'have' if len(specs) > 1 else 'has'} one head, not EPIC-KITCHENS-100's verb and noun "
                           "heads")
    return specs


def gradcam_figure(args: argparse.Namespace) -> GradCamFigure:
    """Explain every model on the clip of ``args`` (see ``get_args_parser``) and write the PNG."""
    specs = check_args(args)
    try:
        boxes = load_boxes(args.box_file) if args.box_file else None
    except BoxFileError as e:
        raise GradCamError(str(e)) from None
    stored = stored_video_size(args.video, boxes, {})
    frames, frame_indices, num_video_frames = read_frames(args.video, args.num_frames, args.sampling_rate,
                                                          args.start_frame, args.tsn, args.short_side_size, stored)
    if boxes is not None:
        width, height = stored or (frames.shape[2], frames.shape[1])  # the stored frame's, not the smaller decode's
        for doubt in box_file_doubts(boxes, args.video, num_video_frames, width, height):
            print(f"warning: {args.box_file}: {doubt}: another video's boxes?")
    height, width = frames.shape[1:3]
    if args.box_source == "frame":
        rows = frame_boxes(boxes, frame_indices, num_video_frames)
    else:
        rows = np.tile(clip_box(boxes, frame_indices, num_video_frames, args.box_source), (len(frame_indices), 1))
    box_in_video = scale_box(rows, width, height)
    resized, box_in_resized = short_side_resize(frames, box_in_video, args.short_side_size)
    try:  # the fine-tuning loader's validation view: short side resized, centre crop
        cropped, box_pixels = spatial_crop(resized, box_in_resized, args.input_size, 0.5)
    except ValueError as e:
        raise GradCamError(f"--short_side_size {args.short_side_size}, --input_size {args.input_size}: {e}") from None
    box = box_pixels / args.input_size
    if boxes is not None and np.isnan(box).any(axis=1).all():
        print("note: the box file has no motion box inside this clip's crop; MOFO models get no box")
    video = normalize_clip(cropped).to(args.device)
    results = []
    for name, checkpoint, label in specs:
        model = load_classifier(name, checkpoint, args.nb_classes, args.input_size, args.num_frames, args.device)
        head, head_name = head_slice(read_checkpoint(checkpoint)[2], args.head)
        cam, logits = grad_cam(model, video, box if boxes is not None else None, args.layer, args.target_class, head)
        target = int(logits.argmax()) if args.target_class is None else args.target_class
        label = label if head_name is None else f"{label} ({head_name})"
        results.append(ModelCam(name, label, cam, logits.softmax(-1).numpy(), target))
        del model  # freed before the next model is built

    clip = to_uint8(cropped.permute(0, 2, 3, 1) / 255)
    positions = shown_positions(args.num_frames, args.frames)
    rows = {"input\n+ motion box": [with_box(clip[t], box[t]) for t in positions]}
    for result in results:
        rows[row_label(result)] = [overlay(clip[t], result.cam[t], box[t], args.alpha) for t in positions]
    image = render_grid(rows, [f"frame {frame_indices[t]}" for t in positions])
    save_image(image, args.save_path)
    return GradCamFigure(frame_indices=frame_indices, shown_frames=positions, box=box, frames=clip, models=results,
                         rows=[label.split("\n")[0] for label in rows], image_size=image.shape[:2])


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        figure = gradcam_figure(args)
    except VisualizationError as e:
        raise SystemExit(f"error: {e}") from None
    height, width = figure.image_size
    print(f"wrote {args.save_path} ({width}x{height} px; block {args.layer}; video frames "
          f"{[int(figure.frame_indices[t]) for t in figure.shown_frames]})")
    for result in figure.models:
        predicted = result.predicted_class
        print(f"{result.label}: predicted class {predicted} (p={result.probabilities[predicted]:.3f}), map of class "
              f"{result.target_class} (p={result.probabilities[result.target_class]:.3f})")


if __name__ == "__main__":
    main()

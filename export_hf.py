r"""Export a VideoMAE / MOFO checkpoint as a Hugging Face transformers VideoMAE folder, to share on the Hub or use
with ``VideoMAEForPreTraining`` / ``VideoMAEForVideoClassification.from_pretrained``.

    python export_hf.py out/mofo_ssv2_pretrain/checkpoint-799.pth hf/mofo-vitb-ssv2
    python export_hf.py out/ft_ssv2_videomae_head/checkpoint-best.pth hf/mofo-vitb-ssv2-ft --labels ssv2_labels.txt

A pretraining checkpoint becomes a ``VideoMAEForPreTraining`` (encoder, decoder and pixel head; the trajectory and
HOG heads of ``--target`` have no HF counterpart and are left out); a fine-tuned one with VideoMAE's head a
``VideoMAEForVideoClassification``. The folder holds ``model.safetensors`` (float32), ``config.json`` (with VideoMAE's
LayerNorm epsilon, 1e-6) and ``preprocessor_config.json`` (the test transform: short side to ``--short_side_size``,
centre crop, ImageNet's mean and std, as the weights were trained).
The checkpoint is first loaded strictly into the model it names (``--model`` overrides), so a folder is only written
for weights that fit. Refused, with the reason: the MOFO fine-tuning head (HF has no multi-cross-attention head),
EPIC-KITCHENS-100's two heads in one, layer scale and learned position tables (HF's VideoMAE has neither).
Reading the folder back (``--finetune FOLDER``, ``--resume FOLDER``) gives the same weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timm.models import create_model

import hf_videomae
import modeling_finetune  # noqa: F401  (registers the vit_* models)
import modeling_pretrain  # noqa: F401  (registers the pretrain_videomae_* models)
import utils

EXTRA_TARGET_HEADS = ("decoder.trajectory_head.", "decoder.hog_head.")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("export_hf.py", description=__doc__, formatter_class=utils.HelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint file, a run's folder (its newest) or a DeepSpeed folder")
    parser.add_argument("output", help="the folder to write (must not exist)")
    parser.add_argument("--model", default=None, help="registered model of the checkpoint (default: its saved one)")
    parser.add_argument("--model_key", default="model|module", help="checkpoint keys to take the weights from")
    parser.add_argument("--input_size", default=None, type=int, help="frame side (default: the saved one, else 224)")
    parser.add_argument("--num_frames", default=None, type=int, help="clip length (default: the saved one, else 16)")
    parser.add_argument("--tubelet_size", default=None, type=int, help="(default: the saved one, else 2)")
    parser.add_argument("--short_side_size", default=None, type=int,
                        help="the preprocessor's resize of the short side before its centre crop (default: the "
                             "saved one, else --input_size)")
    parser.add_argument("--labels", default=None, help="text file with one class name per line, in class order "
                                                       "(default: LABEL_0, LABEL_1, ...)")
    return parser


def saved_or(value, trained: dict, name: str, default):
    if value is not None:
        return value
    return trained[name] if trained.get(name) is not None else default


def build_model(args, state: dict, trained: dict):
    """The checkpoint's model with its weights loaded strictly; a ValueError says why they do not fit."""
    name = args.model or trained.get("model")
    if not name:
        raise ValueError(f"{args.checkpoint} does not say which model it is: pass --model")
    if any(key.startswith(("mca.", "local_MCA.")) for key in state) or name.endswith("_mofo"):
        raise ValueError(f"{args.checkpoint}: the MOFO fine-tuning head has no Hugging Face counterpart; export its "
                         "pretraining checkpoint, or a fine-tuning run with VideoMAE's head (vit_*_patch16_224)")
    if trained.get("data_set") == "EPIC-KITCHENS-100":
        raise ValueError(f"{args.checkpoint}: EPIC-KITCHENS-100's verb and noun heads are one layer here; HF's "
                         "classifier would treat their logits as one set of classes")
    embedding = state.get("encoder.patch_embed.proj.weight", state.get("patch_embed.proj.weight"))
    tubelet = embedding.shape[2] if embedding is not None and embedding.dim() == 5 else 2  # (dim, 3, t, p, p)
    size = dict(img_size=saved_or(args.input_size, trained, "input_size", 224),
                tubelet_size=saved_or(args.tubelet_size, trained, "tubelet_size", tubelet))
    frames = saved_or(args.num_frames, trained, "num_frames", 16)
    defaulted = [f"--{flag} {value}" for flag, value in (("input_size", size["img_size"]), ("num_frames", frames))
                 if getattr(args, flag) is None and trained.get(flag) is None]
    if defaulted:  # sinusoid position tables leave no trace of the clip size in the weights
        print(f"note: {args.checkpoint} saved no {' or '.join(d.split()[0] for d in defaulted)}: exported with "
              f"{' '.join(defaulted)} (config.json); pass the ones it was trained with where they differ")
    pretraining = hf_videomae.is_pretraining_state(state)
    if pretraining != name.startswith("pretrain_"):
        kind = "a pretraining" if pretraining else "a fine-tuned"
        raise ValueError(f"{args.checkpoint} holds {kind} model, which --model {name} is not")
    if pretraining:
        depth = len({key.split(".")[2] for key in state if key.startswith("decoder.blocks.")})
        model = create_model(name, pretrained=False, num_frames=frames, decoder_depth=depth, **size)
    else:
        head = state.get("head.weight")
        if head is None:
            raise ValueError(f"{args.checkpoint}: no classifier head (head.weight) and no decoder")
        if args.num_frames is None:  # a fine-tuning run's model sees --num_frames x --num_segments frames
            frames *= trained.get("num_segments") or 1
        model = create_model(name, pretrained=False, all_frames=frames, num_classes=head.shape[0],
                             use_mean_pooling="fc_norm.weight" in state, **size)
    difference = utils.weights_difference(model.state_dict(), state)
    if difference:
        saved = utils.saved_model_flags(trained)
        raise ValueError(f"{args.checkpoint} does not fit --model {name} at {size['img_size']}px x {frames} frames: "
                         f"{difference}" + (f"; it was trained with {saved}" if saved else ""))
    model.load_state_dict(state, strict=True)
    return model


def export(args) -> dict:
    """Write ``args.output`` from ``args.checkpoint``; returns the config written."""
    raw, trained = utils.read_model_and_args(args.checkpoint, args.model_key)
    state = {key.removeprefix("module."): value for key, value in raw.items()}
    if hf_videomae.is_pretraining_state(state) and "decoder.head.weight" not in state:
        raise ValueError(f"{args.checkpoint} was pretrained without the pixel target (--target "
                         f"{trained.get('target')}): HF's VideoMAEForPreTraining has only the pixel head")
    dropped = sorted({key.rsplit(".", 1)[0] for key in state if key.startswith(EXTRA_TARGET_HEADS)})
    if dropped:
        print(f"Leaving out {', '.join(dropped)}: HF's VideoMAEForPreTraining predicts pixels only")
        state = {key: value for key, value in state.items() if not key.startswith(EXTRA_TARGET_HEADS)}
    labels = None
    if args.labels and hf_videomae.is_pretraining_state(state):
        raise ValueError(f"--labels names a classifier's classes; {args.checkpoint} is a pretraining checkpoint")
    if args.labels:
        labels = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
    model = build_model(args, state, trained)
    config = hf_videomae.config_for(model, norm_pix_loss=trained.get("normlize_target", True), labels=labels)
    short_side = saved_or(args.short_side_size, trained, "short_side_size", config["image_size"])
    hf_videomae.write_folder(Path(args.output), hf_videomae.from_videomae_state(model.state_dict()), config,
                             short_side)
    print(f"Wrote {args.output}: {config['architectures'][0]}, {config['hidden_size']}-dim x "
          f"{config['num_hidden_layers']} layers, {config['image_size']}px x {config['num_frames']} frames")
    return config


def main() -> None:
    args = get_args_parser().parse_args()
    with utils.setup_errors():
        export(args)


if __name__ == "__main__":
    main()

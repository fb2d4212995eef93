r"""Fine-tune a VideoMAE / MOFO encoder for action classification, plain or with MOFO's motion-box head.

    torchrun --nproc_per_node 8 run_mofo_finetuning.py --data_set SSV2 --nb_classes 174 \
        --data_path lists/ --data_root videos/ --box_dir boxes/ --model vit_base_patch16_224_mofo \
        --finetune pretrain/checkpoint-799.pth --output_dir out/

Rows of the paper's table: MOFO* = MOFO pretraining + ``--model vit_base_patch16_224``; MOFO** = VideoMAE
pretraining + ``--model vit_base_patch16_224_mofo``; MOFO-dagger = MOFO pretraining + the ``_mofo`` model.
Flags and defaults are VideoMAE's; ``--eval`` only runs the multi-view test of ``--resume`` or ``--finetune`` (or,
as VideoMAE, of the newest checkpoint in ``--output_dir`` where ``--finetune`` has no classifier or is not given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from timm import list_models
from timm.data.mixup import Mixup
from timm.models import create_model
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler

import modeling_finetune
import utils
from datasets import BOX_SOURCES, DATA_SET_CLASSES, TSN_DATA_SETS, build_dataset, multiple_samples_collate
from engine_for_finetuning import final_test, merge_views, train_one_epoch, validation_one_epoch
from motion_detection.boxfile import atomic_write_text
from video_transforms import AUGMENT_INTERPOLATIONS, rand_augment_policy

# The flags that make a fine-tuning run what it is: named when a resumed checkpoint's run had others.
RUN_SETTINGS = ("model", "data_set", "nb_classes", "finetune", "input_size", "num_frames", "sampling_rate",
                "num_segments", "batch_size", "update_freq", "num_sample", "opt", "opt_eps", "opt_betas", "momentum",
                "lr", "min_lr", "layer_decay", "warmup_epochs", "weight_decay", "drop_path", "mixup", "cutmix",
                "smoothing", "epochs",
                *modeling_finetune.MCA_SETTINGS)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("MOFO fine-tuning", description=__doc__,
                                     formatter_class=utils.HelpFormatter)
    parser.add_argument("--batch_size", default=64, type=utils.positive_int,
                        help="clips per GPU per step (before --num_sample)")
    parser.add_argument("--epochs", default=30, type=int)
    parser.add_argument("--update_freq", default=1, type=utils.positive_int, help="gradient accumulation steps")
    parser.add_argument("--save_ckpt_freq", default=100, type=int)
    parser.add_argument("--last_ckpt_freq", default=1, type=int,
                        help="also a rolling checkpoint-last-N every N epochs, replaced by the next: what a killed"
                             " job resumes from (0: none)")
    parser.add_argument("--print_freq", default=10, type=utils.positive_int)

    # model
    parser.add_argument("--model", default="vit_base_patch16_224", type=str, metavar="NAME",
                        choices=list_models(module="modeling_finetune"),
                        help="vit_*_patch16_224 (plain head) or vit_*_patch16_224_mofo (motion-box MCA head)")
    parser.add_argument("--tubelet_size", default=2, type=int)
    parser.add_argument("--input_size", default=224, type=utils.positive_int)
    parser.add_argument("--fc_drop_rate", default=0.0, type=float, help="dropout before the classifier")
    parser.add_argument("--drop", default=0.0, type=float, help="dropout rate")
    parser.add_argument("--attn_drop_rate", default=0.0, type=float)
    parser.add_argument("--drop_path", default=0.1, type=float, help="stochastic depth rate")
    parser.add_argument("--use_checkpoint", action="store_true", help="activation checkpointing")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (in place: checkpoints keep their keys)")
    parser.add_argument("--use_mean_pooling", default=True, type=utils.str2bool, nargs="?", const=True,
                        help="feature: fc_norm of the token mean (the default; also takes true/false)")
    parser.add_argument("--use_cls", action="store_false", dest="use_mean_pooling",
                        help="VideoMAE's switch: feature from the final norm's first token instead of the mean")
    parser.add_argument("--init_scale", default=0.001, type=float, help="scale of the new head's initial weights")
    parser.add_argument("--model_ema", action="store_true",
                        help="keep an exponential moving average of the weights, saved as model_ema in the "
                             "checkpoints (test it with --eval --finetune CHECKPOINT --model_key model_ema)")
    parser.add_argument("--model_ema_decay", default=0.9999, type=float, help="EMA decay per optimizer step")
    parser.add_argument("--model_ema_force_cpu", action="store_true",
                        help="keep the EMA on the CPU (the weights are copied to the host after every step)")
    parser.add_argument("--mca_mode", default="both", choices=["both", "inner"],
                        help="MOFO head: inside<->outside cross-attention both ways, or inside->outside only")
    parser.add_argument("--mca_depth", default=1, type=int, help="MOFO head: multi-cross-attention layers")
    parser.add_argument("--mca_heads", default=None, type=int, help="MOFO head: attention heads (default: encoder's)")
    parser.add_argument("--mca_pool", default="fuse", choices=modeling_finetune.MCA_POOLS,
                        help="MOFO head: fuse (the inside and outside means, concatenated, through a linear layer) or"
                             " inside (the inside mean only, the MOFO release's)")
    parser.add_argument("--mca_tokens", default="centre", choices=modeling_finetune.MCA_TOKEN_RULES,
                        help="MOFO head: a token is inside when its patch centre is in the box (centre, the masking's"
                             " rule) or when its tube shares a pixel with the box of either frame (overlap, the MOFO"
                             " release's)")

    # optimiser
    parser.add_argument("--opt", default="adamw", type=str)
    parser.add_argument("--opt_eps", default=1e-8, type=float)
    parser.add_argument("--opt_betas", default=None, type=float, nargs="+")
    parser.add_argument("--clip_grad", default=None, type=float)
    parser.add_argument("--momentum", default=0.9, type=float, help="for SGD-like optimizers")
    parser.add_argument("--weight_decay", default=0.05, type=float)
    parser.add_argument("--weight_decay_end", default=None, type=float)
    parser.add_argument("--lr", default=1e-3, type=float,
                        help="base lr: the lr is lr * total batch / 256, the total batch being --batch_size x "
                        "--update_freq x GPUs (as VideoMAE, --num_sample is not counted)")
    parser.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise lr decay")
    parser.add_argument("--warmup_lr", default=0.0, type=float,
                        help="lr at the first warmup step (scaled like --lr). VideoMAE's flag says 1e-6 but its"
                             " schedules never read it and warm up from 0, which is this default")
    parser.add_argument("--min_lr", default=1e-6, type=float)
    parser.add_argument("--warmup_epochs", default=5, type=int)
    parser.add_argument("--warmup_steps", default=-1, type=int)

    # augmentation
    parser.add_argument("--aa", default="rand-m7-n4-mstd0.5-inc1", type=rand_augment_policy,
                        help="RandAugment policy (timm syntax), none for no RandAugment")
    parser.add_argument("--train_interpolation", default="bicubic", choices=sorted(AUGMENT_INTERPOLATIONS),
                        help="resampling of RandAugment's geometric ops (random: bilinear or bicubic per op and clip)")
    parser.add_argument("--flip", action="store_true", default=True,
                        help="random horizontal flip in training, boxes flipped too (default; never for SSV2, whose "
                             "labels say left and right)")
    parser.add_argument("--no_flip", action="store_false", dest="flip",
                        help="no flip for any data set (the MOFO release's EPIC-KITCHENS-100 loader)")
    parser.add_argument("--crop_scale", default=[0.08, 1.0], type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="area range of the training random resized crop (VideoMAE: 0.08 1.0)")
    parser.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    parser.add_argument("--reprob", default=0.25, type=float, help="random erasing probability")
    parser.add_argument("--remode", default="pixel", type=str, help="random erasing mode")
    parser.add_argument("--recount", default=1, type=int,
                        help="random erasing: up to this many rectangles in every frame (VideoMAE passes it as timm's "
                             "num_splits too, which for recount > 1 leaves the first 1/recount of the frames unerased;"
                             " here every frame is erased)")
    parser.add_argument("--mixup", default=0.8, type=float, help="mixup alpha (0 = off)")
    parser.add_argument("--cutmix", default=1.0, type=float, help="cutmix alpha (0 = off)")
    parser.add_argument("--cutmix_minmax", default=None, type=float, nargs="+")
    parser.add_argument("--mixup_prob", default=1.0, type=float)
    parser.add_argument("--mixup_switch_prob", default=0.5, type=float)
    parser.add_argument("--mixup_mode", default="batch", choices=["batch", "pair", "elem"])

    # checkpoints
    parser.add_argument("--finetune", default="",
                        help="initialise from this checkpoint: a file, a DeepSpeed checkpoint folder, or a pretraining"
                             " run's output folder (its newest checkpoint)")
    parser.add_argument("--model_key", default="model|module", type=str)
    parser.add_argument("--model_prefix", default="", type=str,
                        help="load only the checkpoint's keys under this prefix, with the prefix removed")

    # data
    parser.add_argument("--data_set", default="Kinetics-400",
                        choices=["Kinetics-400", "SSV2", "UCF101", "HMDB51", "EPIC-KITCHENS-100"])
    parser.add_argument("--data_path", default="", help="folder with train.csv / val.csv / test.csv")
    parser.add_argument("--data_root", default="", help="folder the lists' video paths are relative to")
    parser.add_argument("--box_dir", default=None, help="motion-box files (needed by the _mofo models)")
    parser.add_argument("--box_source", default="video", choices=BOX_SOURCES,
                        help="the box that splits the tokens: video (the paper's: the listed clip's union box, one "
                             "for all frames), clip (the union of the sampled frames' boxes), frame (each time "
                             "slice its own frames' boxes)")
    parser.add_argument("--nb_classes", default=400, type=int, help="classes (EPIC: see --nb_verbs/--nb_nouns)")
    parser.add_argument("--epic_video_template", default="{participant_id}/videos/{video_id}.MP4",
                        help="EPIC-KITCHENS-100: video file of a csv row under --data_root (long videos are trimmed "
                             "by start/stop_frame; a template with {narration_id} names pre-trimmed clips)")
    parser.add_argument("--nb_verbs", default=97, type=int, help="EPIC-KITCHENS-100 verb classes")
    parser.add_argument("--nb_nouns", default=300, type=int, help="EPIC-KITCHENS-100 noun classes")
    parser.add_argument("--num_segments", default=1, type=int)
    parser.add_argument("--num_frames", default=16, type=utils.positive_int)
    parser.add_argument("--sampling_rate", default=4, type=utils.positive_int)
    parser.add_argument("--num_sample", default=2, type=utils.positive_int,
                        help="repeated augmentation: clips per decoded video")
    parser.add_argument("--short_side_size", default=224, type=utils.positive_int,
                        help="validation and test: frames resized to this short side before the crops")
    parser.add_argument("--test_num_segment", default=5, type=utils.positive_int, help="test: temporal clips per video")
    parser.add_argument("--test_num_crop", default=3, type=utils.positive_int, help="test: spatial crops per clip")
    parser.add_argument("--save_ckpt", action="store_true", default=True)
    parser.add_argument("--no_save_ckpt", action="store_false", dest="save_ckpt")
    parser.add_argument("--eval", action="store_true",
                        help="only run the multi-view test, of --resume or --finetune (a --finetune without a "
                             "classifier, or none: of the newest checkpoint in --output_dir, as VideoMAE)")
    parser.add_argument("--disable_eval_during_finetuning", action="store_true",
                        help="no validation after each epoch (and so no checkpoint-best); the final test still runs")
    parser.add_argument("--dist_eval", action="store_true",
                        help="VideoMAE's switch for validating on every rank: validation and the final test here always"
                             " split the videos over the ranks and merge their results")
    utils.add_run_args(parser)
    return parser


def layer_id_for(name: str, num_layers: int) -> int:
    """VideoMAE's layer ids for layer-wise lr decay: embeddings 0, block i -> i + 1, everything after the blocks
    (norms, MOFO head, classifier) num_layers + 1."""
    if name.startswith(("patch_embed", "pos_embed", "cls_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def build_model(args):
    kwargs = dict(img_size=args.input_size, num_classes=sum(args.head_sizes),
                  all_frames=args.num_frames * args.num_segments, tubelet_size=args.tubelet_size,
                  fc_drop_rate=args.fc_drop_rate, drop_rate=args.drop, drop_path_rate=args.drop_path,
                  attn_drop_rate=args.attn_drop_rate, use_mean_pooling=args.use_mean_pooling,
                  init_scale=args.init_scale, use_checkpoint=args.use_checkpoint)
    if args.model.endswith("_mofo"):
        kwargs.update({name: getattr(args, name) for name in modeling_finetune.MCA_SETTINGS})
    model = create_model(args.model, pretrained=False, **kwargs)
    args.use_box = isinstance(model, modeling_finetune.MotionFocusedVisionTransformer)
    return model


def build_optimizer(args, model) -> tuple[torch.optim.Optimizer, list[float]]:
    """``--opt`` over VideoMAE's parameter groups (no weight decay for norms, biases and position tables; lr scaled
    by ``--layer_decay`` per layer, :func:`layer_id_for`). Returns the optimizer and the per-layer lr scales."""
    num_layers = model.get_num_layers()
    layer_scales = [args.layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]
    groups = utils.param_groups_weight_decay(model, args.weight_decay, set(model.no_weight_decay()),
                                             lambda n: layer_id_for(n, num_layers), layer_scales)
    return utils.create_optimizer(args, groups), layer_scales


def build_mixup(args) -> Mixup | None:
    """timm's Mixup / CutMix from the flags (with the label smoothing, for the first head's classes); None when
    both are off."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=args.head_sizes[0])


def load_initial_weights(args, model) -> dict:
    """``--finetune``'s weights into the model (unless ``--eval --resume``: those are tested), returning its saved
    flags. ``--eval`` without ``--resume`` tests, as VideoMAE, the newest checkpoint in ``--output_dir`` (set as
    ``args.resume``) where ``--finetune`` has no classifier or is not given: VideoMAE's test command is its
    fine-tuning command, pretraining weights and all, with ``--eval`` added."""
    own_checkpoint = args.eval and args.auto_resume and not args.resume
    if not args.finetune:
        found = utils.latest_checkpoint(args.output_dir, args.enable_deepspeed) if own_checkpoint else None
        if found is not None:
            print(f"--eval tests {found}, the newest checkpoint in --output_dir (as VideoMAE)")
            args.resume = str(found)
        return {}
    if args.eval and args.resume:
        return {}
    resuming = None if args.eval else args.resume or (
        utils.latest_checkpoint(args.output_dir, args.enable_deepspeed) if args.auto_resume and args.output_dir
        else None)
    try:  # the file a run folder names now: loaded and recorded, as its newest changes while its pretraining goes on
        found = utils.resolve_checkpoint(args.finetune, report=not resuming)
    except FileNotFoundError:
        if not resuming:
            raise
        found = None  # resuming: its weights replace these, so --finetune need not even exist any more
    args.finetune_file = None if found is None else str(found.resolve())
    if resuming:
        print(f"--finetune {args.finetune} not loaded: resuming from {resuming}")
        return {}
    try:
        return utils.load_finetune_checkpoint(model, args.finetune, args.model_key, args.model_prefix,
                                              require_all=args.eval, resolved=found)
    except utils.IncompleteCheckpointError as e:
        if not own_checkpoint or e.has_classifier:
            raise
        found = utils.latest_checkpoint(args.output_dir, args.enable_deepspeed)
        if found is None:
            raise
        print(f"{e}; testing the run's newest checkpoint, {found} (VideoMAE's test command: the fine-tuning command "
              "with --eval added)")
        args.resume = str(found)
        return {}


def unused_flag_rules(args) -> list[tuple[bool, tuple[str, ...], str]]:
    """The flags each mode leaves unread (see ``utils.warn_unused_flags``); needs ``args.use_box`` (build_model)."""
    epic = args.data_set == "EPIC-KITCHENS-100"
    mixing = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    return [
        (epic, ("nb_classes",), "EPIC-KITCHENS-100's heads have --nb_verbs and --nb_nouns classes"),
        (not epic, ("nb_verbs", "nb_nouns", "epic_video_template"), f"--data_set {args.data_set} is not EPIC"),
        (not args.finetune, ("model_key", "model_prefix"), "they select the weights of --finetune, and there is none"),
        (not args.model_ema, ("model_ema_decay", "model_ema_force_cpu"), "no --model_ema"),
        (not mixing, ("mixup_prob", "mixup_switch_prob", "mixup_mode"), "mixup and cutmix are off"),
        (not args.reprob, ("remode", "recount"), "random erasing is off (--reprob 0)"),
        (not args.use_box, (*modeling_finetune.MCA_SETTINGS, "box_dir", "box_source"),
         f"--model {args.model} has no motion-box MCA head (the *_mofo models have)"),
        (args.data_set in TSN_DATA_SETS, ("sampling_rate",),
         f"--data_set {args.data_set} samples TSN segments over the whole clip, with no stride"),
        (args.eval, ("model_ema", "model_ema_decay", "model_ema_force_cpu"),
         "--eval tests the given weights (an EMA's: --eval --finetune CHECKPOINT --model_key model_ema)"),
        (not args.aa, ("train_interpolation",), "no RandAugment (--aa none)"),
        (not args.enable_deepspeed, ("zero_stage",), "DeepSpeed is off (--enable_deepspeed)"),
        *utils.optimizer_flag_rules(args),
    ]


def unused_class_warnings(args, datasets: list) -> list[str]:
    """A head with classes no listed video has (train, val and test lists together; test rows without labels are
    -1): the default --nb_classes 400 of a forgotten flag, or a subset of a data set's classes."""
    flags = ["nb_verbs", "nb_nouns"] if args.data_set == "EPIC-KITCHENS-100" else ["nb_classes"]
    lines = []
    for k, (flag, size) in enumerate(zip(flags, args.head_sizes, strict=True)):
        top = max(entry.target[k] for dataset in datasets if dataset is not None for entry in dataset.entries)
        if 0 <= top < size - 1:
            lines.append(f"warning: the lists' labels are 0 to {top}, but --{flag} {size}: {size - top - 1} outputs "
                         f"of the head are classes no listed video has (is --{flag} right for these lists?)")
    return lines


def eval_loader(dataset, args, rank: int, world: int):
    """Validation / test loader: every video exactly once over the ranks (a DistributedSampler would repeat some to
    even out the shards, counting them twice in the validation accuracy), batches of 2x the training."""
    sampler = range(rank, len(dataset), world)
    return DataLoader(dataset, sampler=sampler, batch_size=2 * args.batch_size, num_workers=args.num_workers,
                      pin_memory=args.pin_mem and args.device.startswith("cuda"), worker_init_fn=utils.seed_worker)


def tested_weights(args) -> dict:
    """What the test results are of (``weights`` in test_results.json, which ``--eval`` rewrites): the tested file,
    resolved, with the ``--model_key``/``--model_prefix`` that chose them in it, or after training the run's
    checkpoint of its last epoch (a finished run's rerun trains nothing: the checkpoint it resumed)."""
    trained_here = not args.eval and args.start_epoch < args.epochs
    if trained_here and not args.save_ckpt:
        return {"weights": f"the model after epoch {args.epochs - 1} (not saved: --no_save_ckpt)"}
    if trained_here:
        name = f"checkpoint-{args.epochs - 1}" + ("" if args.enable_deepspeed else ".pth")
        return {"weights": str((Path(args.output_dir) / name).resolve())}
    if args.resume:
        return {"weights": str(utils.resolve_checkpoint(args.resume, report=False).resolve())}
    if args.finetune:
        chosen = {"model_key": args.model_key} if args.model_key != "model|module" else {}
        return {"weights": args.finetune_file or str(Path(args.finetune).resolve()), **chosen,
                **({"model_prefix": args.model_prefix} if args.model_prefix else {})}
    return {"weights": "none (a freshly initialised model)"}


def run_test(model, dataset, args, device, rank: int, world: int) -> dict:
    """Multi-view test: every rank writes its views, rank 0 merges softmaxes per video over all ranks' files."""
    loader = eval_loader(dataset, args, rank, world)
    out_dir = Path(args.output_dir)
    final_test(loader, model, device, args, out_dir / f"test_views_rank{rank}.jsonl", args.enable_deepspeed)
    if utils.is_dist_avail_and_initialized():
        torch.distributed.barrier()
    results = {}
    if utils.is_main_process():
        results = merge_views([out_dir / f"test_views_rank{r}.jsonl" for r in range(world)], args.head_sizes)
        results["skipped_videos"] = len(dataset.entries) - results["videos"]
        results |= tested_weights(args)
        if results["skipped_videos"]:
            print(f"Warning: {results['skipped_videos']} of {len(dataset.entries)} test videos could not be used "
                  "(unreadable, or without a usable box file) and are not in the results (the log names them)")
        print("Final test (" + f"{args.test_num_segment} x {args.test_num_crop} views): "
              + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items()))
        atomic_write_text(out_dir / "test_results.json", json.dumps(results, indent=1) + "\n")
    return results


def main(args) -> None:
    device = utils.setup_device(args)
    rank, world = utils.get_rank(), utils.get_world_size()
    utils.seed_everything(args.seed + rank)
    if not args.output_dir:
        raise SystemExit("--output_dir is needed (checkpoints, logs and test views go there)")
    utils.make_output_dir(args.output_dir)
    args.head_sizes = [args.nb_verbs, args.nb_nouns] if args.data_set == "EPIC-KITCHENS-100" else [args.nb_classes]
    known = DATA_SET_CLASSES.get(args.data_set)
    if known is not None and args.nb_classes > known and utils.is_main_process():  # fewer: a subset of the classes
        print(f"warning: --nb_classes {args.nb_classes}, but {args.data_set} has {known} classes: unless the lists "
              "hold more, the extra outputs only take part in the softmax, label smoothing and mixup")
    print(args)

    utils.check_checkpoint_flags(args)
    utils.check_warmup_fits(args)
    if args.resume and not args.finetune and (args.model_key, args.model_prefix) != ("model|module", ""):
        raise SystemExit("--model_key and --model_prefix select the weights --finetune loads; --resume takes the "
                         "checkpoint's model to go on training it (to test EMA weights: --eval --finetune CHECKPOINT "
                         "--model_key model_ema)")
    with utils.setup_errors():
        model = build_model(args)
    utils.warn_unused_flags(args, get_args_parser(), unused_flag_rules(args))
    if args.use_box and not args.box_dir:
        raise SystemExit(f"--model {args.model} fuses tokens inside and outside the motion box: pass --box_dir")
    if not args.use_box:
        args.box_dir = None  # not read (the warning above): its box files need not exist
    with utils.setup_errors():  # the lists (and that their box files exist) are checked before training: the test's too
        test_set = build_dataset(is_train=False, test_mode=True, args=args)
        if not args.eval:
            train_set = build_dataset(is_train=True, test_mode=False, args=args)
            val_set = (None if args.disable_eval_during_finetuning
                       else build_dataset(is_train=False, test_mode=False, args=args))
    if not args.eval and utils.is_main_process():
        for line in unused_class_warnings(args, [train_set, val_set, test_set]):
            print(line)
    with utils.setup_errors():
        trained = load_initial_weights(args, model)
    model.to(device)
    print(f"Model: {args.model}, params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    model_ema = None
    if args.model_ema and not args.eval:
        if args.enable_deepspeed and args.precision != "fp32":
            raise SystemExit(f"--model_ema with --enable_deepspeed --precision {args.precision}: DeepSpeed keeps the "
                             "model's weights in that precision, so their average would be of rounded weights; "
                             "train with DDP (no --enable_deepspeed) or --precision fp32")
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, device="cpu" if args.model_ema_force_cpu else None)

    total_batch = args.batch_size * args.update_freq * world
    utils.scale_lr_to_batch(args, total_batch)
    optimizer, layer_scales = build_optimizer(args, model)
    model, model_without_ddp, optimizer, loss_scaler = utils.wrap_model(args, model, optimizer, device)
    if args.eval:
        args.auto_resume = False  # the checkpoint to test is chosen above
    with utils.setup_errors():
        resumed = utils.auto_load_model(args, model, model_without_ddp, optimizer, loss_scaler, model_ema,
                                        RUN_SETTINGS)
        if args.eval:  # --eval --resume, or the run's newest: as strict as --eval --finetune
            utils.check_head_settings(model_without_ddp, resumed, args.resume)
    if args.resume and not args.eval:
        utils.set_aside_abandoned_best(args.output_dir, args.start_epoch)
    if resumed and not args.eval:
        started, now = resumed.get("finetune_file"), getattr(args, "finetune_file", None)
        if started and now and started != now and utils.is_main_process():
            print(f"warning: this run was fine-tuned from {started}; --finetune {args.finetune} is now {now}, which "
                  f"it does not start from: it goes on from {args.resume} (a new --output_dir starts afresh)")
        args.finetune_file = started or now
    trained = resumed or trained
    if args.use_box and "mca_tokens" in trained:  # a MOFO head of this project's: per-frame boxes before --box_source
        utils.warn_setting_changed(trained, "box_source", args.box_source, "frame")
    if args.eval:
        print(f"Testing the weights of {args.resume or args.finetune or 'a freshly initialised model'}")

    if args.eval:
        run_test(model, test_set, args, device, rank, world)
        return

    train_sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    train_loader = utils.train_loader(train_set, train_sampler, args, device,
                                      multiple_samples_collate if args.num_sample > 1 else None)
    val_loader = None if val_set is None else eval_loader(val_set, args, rank, world)
    niter_per_ep = len(train_loader) // args.update_freq
    if niter_per_ep == 0:
        raise SystemExit(f"{len(train_set)} training videos make no full step of {args.batch_size} x {world} GPUs x "
                         f"--update_freq {args.update_freq}")
    mixup_fn = build_mixup(args)
    if mixup_fn is not None and args.mixup_mode == "pair" and args.batch_size * args.num_sample % 2:
        raise SystemExit(f"--mixup_mode pair mixes clips in pairs: --batch_size {args.batch_size} x --num_sample "
                         f"{args.num_sample} clips per step must be even")
    with utils.setup_errors():
        lr_schedule, wd_schedule = utils.build_schedules(args, niter_per_ep)
    log_writer = utils.tensorboard_writer(args, niter_per_ep)
    print(f"lr: {args.lr:.3e}, total batch: {total_batch}, steps per epoch: {niter_per_ep}, "
          f"layer scales: {[round(s, 4) for s in layer_scales]}")

    acc_key = "action_acc1" if len(args.head_sizes) == 2 else "acc1"
    previous = utils.trim_log(args.output_dir, args.start_epoch)
    # -1 before any validation: the first one is the best so far, also at 0% (VideoMAE waits for one above 0)
    best_acc = max((r[f"val_{acc_key}"] for r in previous if f"val_{acc_key}" in r), default=-1.0)
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        utils.seed_epoch(args.seed, epoch, rank, train_loader)
        with utils.training_errors(train_loader):
            train_stats = train_one_epoch(model, train_loader, optimizer, device, epoch, loss_scaler, args,
                                          lr_schedule, wd_schedule, epoch * niter_per_ep, mixup_fn, log_writer,
                                          args.enable_deepspeed, model_ema)
        val_stats, best = {}, False
        if val_loader is not None:
            val_stats = validation_one_epoch(val_loader, model, device, args, args.enable_deepspeed)
            best = val_stats[acc_key] > best_acc
            best_acc = max(best_acc, val_stats[acc_key])
            print(f"Val {acc_key}: {val_stats[acc_key]:.2f}%  best: {best_acc:.2f}%")
            if log_writer is not None:
                log_writer.add_scalar(f"val_{acc_key}", val_stats[acc_key], epoch)
        if log_writer is not None:
            log_writer.flush()
        utils.append_log(args.output_dir, {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
                                           **{f"val_{k}": v for k, v in val_stats.items()}})
        if args.save_ckpt:
            if best:  # before the epoch's checkpoint: a job killed in between reruns the epoch, which saves it again
                utils.save_model(args, epoch, model, model_without_ddp, optimizer, loss_scaler,
                                 tag="checkpoint-best", model_ema=model_ema)
            utils.save_epoch_checkpoint(args, epoch, model, model_without_ddp, optimizer, loss_scaler, model_ema)
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    run_test(model, test_set, args, device, rank, world)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

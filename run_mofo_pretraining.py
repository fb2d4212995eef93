r"""MOFO / VideoMAE self-supervised pretraining.

    torchrun --nproc_per_node 8 run_mofo_pretraining.py --data_path train.csv --data_root videos/ \
        --box_dir boxes/ --mask_type motion --mask_ratio 0.9 --motion_mask_ratio 0.75 \
        --model pretrain_videomae_base_patch16_224 --decoder_depth 4 --opt_betas 0.9 0.95 --output_dir out/

Flags and defaults are VideoMAE's, plus the motion-focused masking (``--mask_type motion``, ``--box_dir``,
``--motion_mask_ratio``, ``--box_source``, ``--missing_box``), motion-guided masking (``--mask_type
motion_guided``, ``--guided_base``), motion-trajectory and HOG targets (``--target``, ``--trajectory_*``,
``--hog_*``), ``--precision``, ``--num_sample``, ``--compile`` and DeepSpeed.
Under SLURM, ``srun`` with one task per GPU works without torchrun.
"""

from __future__ import annotations

import argparse
import datetime
import time

from timm import list_models
from timm.models import create_model
from torch.utils.data import DistributedSampler

import utils
from datasets import build_pretraining_dataset, multiple_samples_collate
from engine_for_pretraining import train_one_epoch
from hog_targets import HOG_NORMS, HOG_SAMPLINGS, check_hog, hog_dim
from modeling_pretrain import (  # the import registers pretrain_videomae_*
    DEFAULT_PATCH_SIZE,
    DEFAULT_TUBELET_SIZE,
    TARGET_CHOICES,
    canonical_target,
    parse_targets,
)
from trajectory_targets import TRAJECTORY_FLOWS, TRAJECTORY_NORMS, trajectory_dim

# The flags that make a pretraining run what it is: named when a resumed checkpoint's run had others.
RUN_SETTINGS = ("model", "decoder_depth", "mask_type", "mask_ratio", "motion_mask_ratio", "guided_base",
                "guided_motion", "target", "normlize_target", "trajectory_points", "trajectory_flow",
                "trajectory_norm", "hog_sampling", "hog_bins", "hog_cell_size", "hog_norm", "pixel_loss_weight",
                "trajectory_loss_weight", "hog_loss_weight", "input_size", "num_frames", "sampling_rate",
                "batch_size", "num_sample", "opt", "opt_eps", "opt_betas", "momentum", "lr", "min_lr",
                "warmup_epochs", "weight_decay", "epochs")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("MOFO pretraining", description=__doc__,
                                     formatter_class=utils.HelpFormatter)
    parser.add_argument("--batch_size", default=64, type=utils.positive_int,
                        help="clips per GPU per step (before --num_sample)")
    parser.add_argument("--epochs", default=800, type=int)
    parser.add_argument("--save_ckpt_freq", default=50, type=int, help="save a checkpoint every N epochs")
    parser.add_argument("--last_ckpt_freq", default=1, type=int,
                        help="also a rolling checkpoint-last-N every N epochs, replaced by the next: what a killed"
                             " job resumes from (0: none)")
    parser.add_argument("--print_freq", default=10, type=utils.positive_int, help="console log every N steps")

    # model
    parser.add_argument("--model", default="pretrain_videomae_base_patch16_224", type=str, metavar="NAME",
                        choices=list_models(module="modeling_pretrain"), help="pretrain_videomae_{mini,small,base,"
                        "large,huge}_patch16_224")
    parser.add_argument("--decoder_depth", default=4, type=int)
    parser.add_argument("--mask_type", default="tube", choices=["tube", "motion", "motion_guided"],
                        help="tube: VideoMAE's random tube masking; motion: MOFO's motion-focused tube masking;"
                             " motion_guided: a mask drawn at the middle time slice that follows each clip's optical"
                             " flow (MGMAE/MGM)")
    parser.add_argument("--guided_base", default="random", choices=["random", "box"],
                        help="--mask_type motion_guided: draw the middle slice's mask at random, or with MOFO's"
                             " inside-box rule on that slice's motion box (box: needs --box_dir)")
    parser.add_argument("--guided_motion", default="dis", choices=["dis", "codec_mv"],
                        help="--mask_type motion_guided: the motion the mask follows: dis, OpenCV's DIS flow of each"
                             " augmented clip (MGMAE's idea, RAFT there); codec_mv, the motion vectors stored in the"
                             " video file (MGM; MPEG-4 part 2 / H.264 files)")
    parser.add_argument("--mask_ratio", default=0.75, type=float, help="share of tubes masked (VideoMAE default)")
    parser.add_argument("--motion_mask_ratio", default=0.75, type=float,
                        help="share of the tubes inside the motion box that are always masked (MOFO; rounded, and at"
                             " most the --mask_ratio count; motion_guided: at the base slice)")
    parser.add_argument("--input_size", default=224, type=utils.positive_int, help="frame side after cropping")
    parser.add_argument("--drop_path", default=0.0, type=float, help="stochastic depth rate")
    parser.add_argument("--normlize_target", default=True, type=utils.str2bool,
                        help="predict per-tube normalised pixels (VideoMAE's spelling)")
    parser.add_argument("--target", default="pixel", choices=TARGET_CHOICES, type=canonical_target,
                        help="what the decoder predicts for masked tokens, one head each: VideoMAE's pixels,"
                             " M3Video's motion trajectories (points tracked through dense optical flow), HOG"
                             " (MME's appearance / shape features); trajectory+hog is the MME release's recipe")
    parser.add_argument("--trajectory_points", default=2, type=int,
                        help="trajectory target: points per side of the grid tracked in every patch")
    parser.add_argument("--trajectory_flow", default="dis", choices=TRAJECTORY_FLOWS,
                        help="trajectory target: optical flow between consecutive source frames (computed in the"
                             " data workers on the cropped clip; tvl1 takes tens of seconds per clip)")
    parser.add_argument("--trajectory_norm", default="mean", choices=TRAJECTORY_NORMS,
                        help="trajectory target: mean (M3Video's: per patch, divided by the mean path length),"
                             " patch_std (the MME release's recipe: each step standardised over the patch's points)"
                             " or none (pixels)")
    parser.add_argument("--hog_sampling", default="tubelet", choices=HOG_SAMPLINGS,
                        help="hog target: tubelet (each patch's HOG in its tubelet's middle frame, the MME release's"
                             " default, computed on the device) or trajectory (the HOG of the cell each trajectory"
                             " point is in at every source frame step, the MME paper's shape features, computed in"
                             " the data workers with the --trajectory_points and --trajectory_flow tracks)")
    parser.add_argument("--hog_bins", default=9, type=int, help="hog target: unsigned orientation bins")
    parser.add_argument("--hog_cell_size", default=8, type=int,
                        help="hog target: cell side in pixels (must divide the patch size, 16)")
    parser.add_argument("--hog_norm", default="l2", choices=HOG_NORMS,
                        help="hog target: l2 (each cell's histogram per channel, MaskFeat) or none (the MME"
                             " release's)")
    parser.add_argument("--pixel_loss_weight", default=1.0, type=float, help="weight of the pixel loss")
    parser.add_argument("--trajectory_loss_weight", default=1.0, type=float, help="weight of the trajectory loss")
    parser.add_argument("--hog_loss_weight", default=1.0, type=float, help="weight of the hog loss")
    parser.add_argument("--use_checkpoint", action="store_true",
                        help="activation checkpointing in the encoder and decoder blocks")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (in place: checkpoints keep their keys)")

    # optimiser
    parser.add_argument("--opt", default="adamw", type=str, help="any timm optimizer name")
    parser.add_argument("--opt_eps", default=1e-8, type=float)
    parser.add_argument("--opt_betas", default=None, type=float, nargs="+", help="e.g. 0.9 0.95")
    parser.add_argument("--clip_grad", default=None, type=float, help="max gradient norm (default: no clipping)")
    parser.add_argument("--momentum", default=0.9, type=float, help="for SGD-like optimizers")
    parser.add_argument("--weight_decay", default=0.05, type=float)
    parser.add_argument("--weight_decay_end", default=None, type=float,
                        help="final weight decay of the cosine schedule (default: --weight_decay)")
    parser.add_argument("--lr", default=1.5e-4, type=float,
                        help="base lr: the lr is lr * total batch / 256, the total batch being --batch_size x GPUs"
                             " (as VideoMAE, --num_sample is not counted)")
    parser.add_argument("--warmup_lr", default=0.0, type=float,
                        help="lr at the first warmup step (scaled like --lr). VideoMAE's flag says 1e-6 but its"
                             " schedules never read it and warm up from 0, which is this default")
    parser.add_argument("--min_lr", default=1e-5, type=float)
    parser.add_argument("--warmup_epochs", default=40, type=int)
    parser.add_argument("--warmup_steps", default=-1, type=int, help="overrides --warmup_epochs when > 0")

    # data
    parser.add_argument("--data_path", default="", type=str,
                        help="list file: 'path [label]' lines (whole videos) or, as VideoMAE V2's, 'path"
                             " start_index total_frames [label]' (those frames of the video; '0 -1': all of it)")
    parser.add_argument("--data_root", default="", type=str, help="folder the list's video paths are relative to")
    parser.add_argument("--box_dir", default=None, type=str,
                        help="motion-box files from motion_detection.extract_boxes (needed by --mask_type motion"
                             " and --guided_base box)")
    parser.add_argument("--box_source", default="video", choices=["video", "clip"],
                        help="video (the paper's): the listed clip's union box (the whole video's, or that of the"
                             " frames of a 'path start total' line); clip: union of the sampled frames' boxes"
                             " (--guided_base box: the middle slice's frames')")
    parser.add_argument("--missing_box", default="error", choices=["error", "random"],
                        help="videos without a box file: fail before training, or mask them as clips without motion"
                             " (tube masking; motion_guided: a random base slice)")
    parser.add_argument("--num_frames", default=16, type=utils.positive_int)
    parser.add_argument("--sampling_rate", default=4, type=utils.positive_int)
    parser.add_argument("--num_sample", default=1, type=utils.positive_int,
                        help="repeated sampling: clips cut from one decoded video, each with its own crop and mask")
    utils.add_run_args(parser)
    return parser


def unused_flag_rules(args) -> list[tuple[bool, tuple[str, ...], str]]:
    """The flags each mode leaves unread (see ``utils.warn_unused_flags``)."""
    targets = parse_targets(args.target)
    uses_boxes = args.mask_type == "motion" or (args.mask_type == "motion_guided" and args.guided_base == "box")
    tracks = "trajectory" in targets or ("hog" in targets and args.hog_sampling == "trajectory")
    mode = f"--mask_type {args.mask_type}" + (" --guided_base random" if args.mask_type == "motion_guided" else "")
    return [
        (not uses_boxes, ("motion_mask_ratio", "box_dir", "box_source", "missing_box"),
         f"{mode} uses no motion box"),
        (not tracks, ("trajectory_points", "trajectory_flow"),
         "no trajectory target, and no --hog_sampling trajectory tracks points"),
        ("trajectory" not in targets, ("trajectory_norm", "trajectory_loss_weight"),
         f"--target {args.target} has no trajectory head"),
        ("hog" not in targets, ("hog_sampling", "hog_bins", "hog_cell_size", "hog_norm", "hog_loss_weight"),
         f"--target {args.target} has no hog head"),
        ("pixel" not in targets, ("normlize_target", "pixel_loss_weight"), f"--target {args.target} has no pixel head"),
        (not args.enable_deepspeed, ("zero_stage",), "DeepSpeed is off (--enable_deepspeed)"),
        *utils.optimizer_flag_rules(args),
        (not args.output_dir, ("save_ckpt_freq", "last_ckpt_freq"), "no --output_dir, so nothing is saved"),
    ]


def masking_warnings(args) -> list[str]:
    """Settings that run but undo what the mode is for: with equal ratios motion-focused masking masks the box's
    tubes at the rate of the rest, i.e. tube masking (both defaults are VideoMAE's 0.75; the paper: 0.9 and 0.75);
    motion-guided masking of a clip one tubelet long has no motion to follow, so its mask is the base slice's."""
    warnings = []
    if args.mask_type == "motion" and args.motion_mask_ratio == args.mask_ratio:
        warnings.append(f"warning: --mask_type motion with --motion_mask_ratio equal to --mask_ratio "
                        f"({args.mask_ratio}) masks the tubes inside the motion box at the rate of the others: tube "
                        "masking (the paper: --mask_ratio 0.9 --motion_mask_ratio 0.75)")
    if args.mask_type == "motion_guided" and args.num_frames <= DEFAULT_TUBELET_SIZE:
        warnings.append(f"warning: --mask_type motion_guided with --num_frames {args.num_frames} (one tubelet): no "
                        "motion to follow, every clip gets its base slice's mask")
    return warnings


def build_model(args):
    args.targets = parse_targets(args.target)
    traj_dim = head_hog_dim = 0
    if "trajectory" in args.targets:
        traj_dim = trajectory_dim(args.trajectory_points, DEFAULT_TUBELET_SIZE, args.sampling_rate)
    if "hog" in args.targets:
        check_hog(args.hog_bins, args.hog_cell_size, args.hog_norm, DEFAULT_PATCH_SIZE)
        head_hog_dim = hog_dim(DEFAULT_PATCH_SIZE, args.hog_bins, args.hog_cell_size, args.hog_sampling,
                               args.trajectory_points, DEFAULT_TUBELET_SIZE * args.sampling_rate)
    model = create_model(args.model, pretrained=False, drop_path_rate=args.drop_path, decoder_depth=args.decoder_depth,
                         use_checkpoint=args.use_checkpoint, img_size=args.input_size, num_frames=args.num_frames,
                         targets=args.targets, trajectory_dim=traj_dim, hog_dim=head_hog_dim)
    patch_embed = model.encoder.patch_embed
    args.patch_size = patch_embed.patch_size
    args.tubelet_size = patch_embed.tubelet_size
    args.window_size = (args.num_frames // args.tubelet_size, args.input_size // args.patch_size[0],
                        args.input_size // args.patch_size[1])
    per_slice = args.window_size[1] * args.window_size[2]
    masked = int(args.mask_ratio * per_slice)
    if not 0 < masked < per_slice:
        raise ValueError(f"--mask_ratio {args.mask_ratio} masks {masked} of the {per_slice} tubes of a slice: the loss "
                         "needs masked tubes and the encoder visible ones")
    return model


def main(args) -> None:
    device = utils.setup_device(args)
    print(args)
    utils.check_checkpoint_flags(args)
    utils.check_warmup_fits(args)
    utils.warn_unused_flags(args, get_args_parser(), unused_flag_rules(args))
    if utils.is_main_process():
        for line in masking_warnings(args):
            print(line)
        if not args.output_dir:
            print("warning: no --output_dir: no checkpoint and no log.txt are written")
    rank, world = utils.get_rank(), utils.get_world_size()
    utils.seed_everything(args.seed + rank)
    if args.output_dir:
        utils.make_output_dir(args.output_dir)

    with utils.setup_errors():
        model = build_model(args)
        dataset = build_pretraining_dataset(args)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    data_loader = utils.train_loader(dataset, sampler, args, device,
                                     multiple_samples_collate if args.num_sample > 1 else None)
    if len(data_loader) == 0:
        raise SystemExit(f"error: {args.data_path}: {len(dataset)} listed clips make no full batch of --batch_size "
                         f"{args.batch_size} x {world} processes (the last, partial batch is dropped)")
    print(f"Model: {args.model}, params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    guided = f", following {args.guided_motion} motion" if args.mask_type == "motion_guided" else ""
    print(f"Dataset: {len(dataset)} videos, masking: {dataset.mask_generator}{guided}")

    model.to(device)
    total_batch = args.batch_size * world
    utils.scale_lr_to_batch(args, total_batch)
    niter_per_ep = len(data_loader)
    print(f"lr: {args.lr:.3e}, total batch: {total_batch}, steps per epoch: {niter_per_ep}")

    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    optimizer = utils.create_optimizer(args, utils.param_groups_weight_decay(model, args.weight_decay, skip))
    model, model_without_ddp, optimizer, loss_scaler = utils.wrap_model(args, model, optimizer, device)
    with utils.setup_errors():
        lr_schedule, wd_schedule = utils.build_schedules(args, niter_per_ep)
        trained = utils.auto_load_model(args, model, model_without_ddp, optimizer, loss_scaler,
                                        run_settings=RUN_SETTINGS)
    uses_boxes = args.mask_type == "motion" or (args.mask_type == "motion_guided" and args.guided_base == "box")
    if uses_boxes and (saved_box_source := utils.saved_box_source(trained)):  # None: a run without boxes
        utils.warn_setting_changed(trained, "box_source", args.box_source, saved_box_source)
    log_writer = utils.tensorboard_writer(args, niter_per_ep)
    if args.output_dir:
        utils.trim_log(args.output_dir, args.start_epoch)

    print(f"Start training for {args.epochs} epochs from epoch {args.start_epoch}")
    start_time = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        utils.seed_epoch(args.seed, epoch, rank, data_loader)
        with utils.training_errors(data_loader):
            stats = train_one_epoch(model, data_loader, optimizer, device, epoch, loss_scaler, args, lr_schedule,
                                    wd_schedule, epoch * niter_per_ep, log_writer, args.enable_deepspeed)
        if args.output_dir:
            utils.append_log(args.output_dir, {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}})
            utils.save_epoch_checkpoint(args, epoch, model, model_without_ddp, optimizer, loss_scaler)
        if log_writer is not None:
            log_writer.flush()
    total = time.time() - start_time
    print(f"Training time {datetime.timedelta(seconds=int(total))}")
    if log_writer is not None:
        log_writer.close()


if __name__ == "__main__":
    main(get_args_parser().parse_args())

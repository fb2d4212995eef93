"""One pretraining epoch: VideoMAE's normalised-pixel target, M3Video's motion trajectories and/or MME's HOG, MSE on
the masked tubes, per-step lr / weight-decay schedules, bf16 / fp16 / fp32, DDP or DeepSpeed."""

from __future__ import annotations

import time

import torch
from einops import rearrange

import utils
from hog_targets import tubelet_hog_targets
from modeling_pretrain import gather_tokens, split_tokens
from trajectory_targets import worker_targets
from video_transforms import normalize_video


def pixel_targets(pixels: torch.Tensor, patch_size: int, tubelet_size: int, normalize: bool = True) -> torch.Tensor:
    """Per-tube targets (B, N, tubelet*p*p*3) from videos (B, 3, T, H, W) of pixels in [0, 1].

    With ``normalize`` every tube is standardised per colour channel over its pixels (mean, unbiased std + 1e-6),
    VideoMAE's default target. Feature order: (t, h, w) inside the tube, channel fastest. VideoMAE un-normalises the
    model input to get these pixels; the training step takes them straight from the uint8 batch.
    """
    tubes = rearrange(pixels.float(), "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                      p0=tubelet_size, p1=patch_size, p2=patch_size)
    if normalize:
        tubes = (tubes - tubes.mean(dim=-2, keepdim=True)) / (tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
                                                              + 1e-6)
    return rearrange(tubes, "b n p c -> b n (p c)")


def masked_count(mask: torch.Tensor) -> int:
    """Masked tokens per clip of a CPU (B, N) mask batch; every clip must mask the same number (checked here on the
    host, so the model does not have to count on the device)."""
    counts = mask.flatten(1).sum(dim=1).numpy()  # numpy: a device tensor here would be an error, not a wait
    if (counts != counts[0]).any():
        raise ValueError(f"every clip in a batch must mask the same number of tokens, got {counts.tolist()}")
    return int(counts[0])


def pretrain_loss(model, batch: dict, device: torch.device, args, deepspeed: bool = False):
    """Forward and loss of one batch (uint8 frames, normalised here on the device): MSE on the masked tokens per
    target (``--target``), summed with the target weights (``--<target>_loss_weight``). Pixel and tubelet-sampled
    HOG targets are computed here from the frames; trajectory targets and trajectory-sampled HOG come with the
    batch. Returns the loss and each target's unweighted loss (tensors: nothing here waits for the device)."""
    num_masked = masked_count(batch["mask"])
    frames = batch["frames"].to(device, non_blocking=True).permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W) uint8
    videos = normalize_video(frames)
    mask = batch["mask"].to(device, non_blocking=True).flatten(1).bool()
    _, masked_index = split_tokens(mask, num_masked)
    targets = {}
    with torch.no_grad():
        if "pixel" in args.targets:
            pixels = pixel_targets(frames.float().div_(255), args.patch_size[0], args.tubelet_size,
                                   args.normlize_target)
            targets["pixel"] = gather_tokens(pixels, masked_index)
        from_workers = worker_targets(args.targets, args.hog_sampling)
        if "hog" in args.targets and "hog" not in from_workers:
            hog = tubelet_hog_targets(frames, args.patch_size[0], args.tubelet_size, args.hog_bins, args.hog_cell_size,
                                      args.hog_norm)
            targets["hog"] = gather_tokens(hog, masked_index)
        for name in from_workers:
            targets[name] = gather_tokens(batch[name].to(device, non_blocking=True).float(), masked_index)
    videos, autocast = utils.mixed_precision(videos, device, args.precision, deepspeed)
    with autocast:
        outputs = model(videos, mask, num_masked)
    if not isinstance(outputs, dict):
        outputs = {"pixel": outputs}
    losses = {name: torch.nn.functional.mse_loss(outputs[name].float(), target) for name, target in targets.items()}
    return sum(getattr(args, f"{name}_loss_weight") * loss for name, loss in losses.items()), losses


def train_one_epoch(model, data_loader, optimizer, device: torch.device, epoch: int, loss_scaler, args,
                    lr_schedule, wd_schedule, start_step: int, log_writer=None, deepspeed: bool = False) -> dict:
    """Train one epoch; ``start_step`` is the global step of its first iteration (indexes the schedules).

    Nothing in a step waits for the device: losses, gradient norms and the loss scale stay tensors until the
    console/tensorboard log every ``--print_freq`` steps, which also checks that no loss since the last log was
    non-finite (a non-finite loss stops the run before the next checkpoint is written).
    """
    model.train()
    metric_logger = utils.MetricLogger()
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.3e}"))
    metric_logger.add_meter("weight_decay", utils.SmoothedValue(window_size=1, fmt="{value:.4f}"))
    header = f"Epoch: [{epoch}]"
    replaced = missing_boxes = 0
    finite = utils.FiniteCheck(device)
    optimizer.zero_grad(set_to_none=True)
    last_time, last_step = time.time(), 0
    num_steps = len(data_loader)
    for it, batch in enumerate(metric_logger.log_every(data_loader, args.print_freq, header)):
        step = start_step + it
        lr, wd = lr_schedule[step], wd_schedule[step]
        utils.apply_schedules(optimizer, lr, wd)
        replaced += int(batch["replaced"].sum())
        missing_boxes += int(batch["missing_box"].sum())

        loss, losses = pretrain_loss(model, batch, device, args, deepspeed)
        finite.update(loss)
        grad_norm = utils.backward_step(model, loss, optimizer, loss_scaler, args.clip_grad, deepspeed)
        loss_scale = utils.current_loss_scale(model, loss_scaler, deepspeed, args.precision)
        metric_logger.update(loss=loss, lr=lr, weight_decay=wd, grad_norm=grad_norm, loss_scale=loss_scale,
                             **({f"loss_{name}": value for name, value in losses.items()} if len(losses) > 1 else {}))

        if it % args.print_freq == 0 or it == num_steps - 1:
            finite.check(step)  # waits for the device: the step time below is real
            now = time.time()
            clips = batch["frames"].shape[0] * utils.get_world_size() * (it + 1 - last_step)
            metric_logger.update(clips_per_s=clips / max(now - last_time, 1e-9))
            last_time, last_step = now, it + 1
            if log_writer is not None:
                for name in ("loss", "grad_norm", "clips_per_s", "data_time", *(f"loss_{n}" for n in losses)):
                    if name in metric_logger.meters:
                        log_writer.add_scalar(name, metric_logger.meters[name].value, step)
                log_writer.add_scalar("lr", lr, step)
                log_writer.add_scalar("weight_decay", wd, step)

    metric_logger.synchronize_between_processes(device)
    replaced = utils.all_reduce_sum(replaced, device)
    missing_boxes = utils.all_reduce_sum(missing_boxes, device)
    if replaced:
        print(f"epoch {epoch}: {int(replaced)} unusable videos (missing, corrupt, or without a usable box file) were"
              " skipped and replaced by other samples")
    if missing_boxes:
        print(f"epoch {epoch}: {int(missing_boxes)} clips had no box file and were masked as clips without motion")
    print("Averaged stats:", metric_logger)
    stats = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    stats.update(replaced_videos=int(replaced), missing_boxes=int(missing_boxes))
    return stats

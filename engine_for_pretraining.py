"""One pretraining epoch: VideoMAE's normalised-pixel target, MSE on the masked tubes, per-step lr / weight-decay
schedules, bf16 / fp16 / fp32, DDP or DeepSpeed."""

from __future__ import annotations

import contextlib
import time

import torch
from einops import rearrange
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import utils

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def pixel_targets(videos: torch.Tensor, patch_size: int, tubelet_size: int, normalize: bool = True) -> torch.Tensor:
    """Per-tube targets (B, N, tubelet*p*p*3) from ImageNet-normalised videos (B, 3, T, H, W).

    Pixels are un-normalised to [0, 1]; with ``normalize`` every tube is standardised per colour channel over its
    pixels (mean, unbiased std + 1e-6), VideoMAE's default target. Feature order: (t, h, w) inside the tube,
    channel fastest.
    """
    mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN, device=videos.device, dtype=torch.float32)[None, :, None, None, None]
    std = torch.as_tensor(IMAGENET_DEFAULT_STD, device=videos.device, dtype=torch.float32)[None, :, None, None, None]
    pixels = videos.float() * std + mean
    tubes = rearrange(pixels, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                      p0=tubelet_size, p1=patch_size, p2=patch_size)
    if normalize:
        tubes = (tubes - tubes.mean(dim=-2, keepdim=True)) / (tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
                                                              + 1e-6)
    return rearrange(tubes, "b n p c -> b n (p c)")


def autocast(device: torch.device, precision: str):
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(model, data_loader, optimizer, device: torch.device, epoch: int, loss_scaler, args,
                    lr_schedule, wd_schedule, start_step: int, log_writer=None, deepspeed: bool = False) -> dict:
    """Train one epoch; ``start_step`` is the global step of its first iteration (indexes the schedules)."""
    model.train()
    metric_logger = utils.MetricLogger()
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.3e}"))
    metric_logger.add_meter("weight_decay", utils.SmoothedValue(window_size=1, fmt="{value:.4f}"))
    header = f"Epoch: [{epoch}]"
    patch_size, tubelet_size = args.patch_size[0], args.tubelet_size
    replaced = missing_boxes = 0
    optimizer.zero_grad(set_to_none=True)
    last = time.time()
    for it, batch in enumerate(metric_logger.log_every(data_loader, args.print_freq, header)):
        step = start_step + it
        lr, wd = lr_schedule[step], wd_schedule[step]
        utils.apply_schedules(optimizer, lr, wd)

        videos = batch["video"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True).flatten(1).bool()
        replaced += int(batch["replaced"].sum())
        missing_boxes += int(batch["missing_box"].sum())
        with torch.no_grad():
            targets = pixel_targets(videos, patch_size, tubelet_size, args.normlize_target)
            targets = targets[mask].reshape(videos.shape[0], -1, targets.shape[-1])

        if deepspeed:
            dtype = AUTOCAST_DTYPES[args.precision] or torch.float32
            outputs = model(videos.to(dtype), mask)
            loss = torch.nn.functional.mse_loss(outputs.float(), targets)
        else:
            with autocast(device, args.precision):
                outputs = model(videos, mask)
            loss = torch.nn.functional.mse_loss(outputs.float(), targets)
        loss_value = loss.item()
        utils.check_finite(loss_value, step)

        grad_norm = utils.backward_step(model, loss, optimizer, loss_scaler, args.clip_grad, deepspeed)
        if deepspeed:
            loss_scale = getattr(model.optimizer, "cur_scale", None)
        else:
            loss_scale = loss_scaler.state_dict().get("scale")

        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.time()
        clips_per_s = videos.shape[0] * utils.get_world_size() / max(now - last, 1e-9)
        last = now
        grad_norm = float(grad_norm) if grad_norm is not None else None
        metric_logger.update(loss=loss_value, lr=lr, weight_decay=wd, grad_norm=grad_norm, loss_scale=loss_scale,
                             clips_per_s=clips_per_s)
        if log_writer is not None:
            log_writer.add_scalar("loss", loss_value, step)
            log_writer.add_scalar("lr", lr, step)
            log_writer.add_scalar("weight_decay", wd, step)
            log_writer.add_scalar("clips_per_s", clips_per_s, step)
            log_writer.add_scalar("data_time", metric_logger.meters["data_time"].value, step)
            if grad_norm is not None:
                log_writer.add_scalar("grad_norm", grad_norm, step)

    metric_logger.synchronize_between_processes(device)
    replaced = utils.all_reduce_sum(replaced, device)
    missing_boxes = utils.all_reduce_sum(missing_boxes, device)
    if replaced:
        print(f"epoch {epoch}: {int(replaced)} corrupt videos were skipped and replaced by other samples")
    if missing_boxes:
        print(f"epoch {epoch}: {int(missing_boxes)} clips had no box file and got plain tube masking")
    print("Averaged stats:", metric_logger)
    stats = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    stats.update(replaced_videos=int(replaced), missing_boxes=int(missing_boxes))
    return stats

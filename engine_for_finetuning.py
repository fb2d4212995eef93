"""Fine-tuning loops: train with mixup/cutmix and label smoothing, validate on one view, and the multi-view test
that writes per-view logits and merges softmaxes per video across ranks.

Targets are (B, H) class indices, one column per head: one head for SSV2/Kinetics/UCF/HMDB, two (verb, noun) for
EPIC-KITCHENS-100, whose logits are the concatenation of the heads. EPIC's action is the (verb, noun) pair: an
action prediction is correct when both the verb and the noun are.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

import utils


def split_heads(logits: torch.Tensor, head_sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(logits, head_sizes, dim=-1))


def forward(model, batch: dict, device, use_box: bool, precision: str, deepspeed: bool):
    videos, context = utils.mixed_precision(batch["video"].to(device, non_blocking=True), device, precision, deepspeed)
    args = (videos, batch["box"]) if use_box else (videos,)  # the box stays on the CPU: see the MOFO model
    with context:
        return model(*args).float()


def mixed_targets(mixup_fn, batch: dict, head_sizes: list[int], device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mix the clips once with timm's Mixup/CutMix and every head's targets with the same mixing, with label
    smoothing. timm cuts boxes out of the last two axes of a 4-D batch, so the clips are mixed through a
    (B, C*T, H, W) view: the same patch in every frame. The mixed clip keeps its main clip's motion box."""
    videos = batch["video"].to(device, non_blocking=True).contiguous()
    targets = batch["target"].to(device, non_blocking=True)
    if mixup_fn is None:
        return videos, [targets[:, h] for h in range(len(head_sizes))]
    mix = {"batch": mixup_fn._mix_batch, "pair": mixup_fn._mix_pair, "elem": mixup_fn._mix_elem}[mixup_fn.mode]
    lam = mix(videos.view(videos.shape[0], -1, *videos.shape[-2:]))
    return videos, [mixup_target(targets[:, h], size, lam, mixup_fn.label_smoothing)
                    for h, size in enumerate(head_sizes)]


SOFT_TARGET_LOSS = SoftTargetCrossEntropy()


def head_losses(logits: torch.Tensor, targets: list[torch.Tensor], head_sizes: list[int], smoothing: float):
    losses = []
    for head_logits, target in zip(split_heads(logits, head_sizes), targets, strict=True):
        if target.ndim == 2:  # soft targets from mixup (smoothing already applied), VideoMAE's loss for them
            losses.append(SOFT_TARGET_LOSS(head_logits, target))
        else:
            losses.append(F.cross_entropy(head_logits, target, label_smoothing=smoothing))
    return losses


def train_one_epoch(model, data_loader, optimizer, device, epoch: int, loss_scaler, args, lr_schedule, wd_schedule,
                    start_step: int, mixup_fn=None, log_writer=None, deepspeed: bool = False, model_ema=None) -> dict:
    """Train one epoch. As in pretraining, nothing in a step waits for the device: values are read and the losses
    checked for non-finite ones every ``--print_freq`` steps. ``model_ema`` (timm's ModelEmaV3, ``--model_ema``)
    is updated after every optimizer step."""
    model.train()
    metric_logger = utils.MetricLogger()
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.3e}"))
    header = f"Epoch: [{epoch}]"
    update_freq = args.update_freq
    num_batches = len(data_loader) // update_freq * update_freq  # leftover batches would overrun the schedule
    finite = utils.FiniteCheck(device)
    replaced = 0
    optimizer.zero_grad(set_to_none=True)
    for it, batch in enumerate(metric_logger.log_every(data_loader, args.print_freq, header, total=num_batches)):
        replaced += int(batch["replaced"].sum())  # a CPU tensor: no wait for the device
        step = start_step + it // update_freq
        if it % update_freq == 0:
            utils.apply_schedules(optimizer, lr_schedule[step], wd_schedule[step])
        videos, targets = mixed_targets(mixup_fn, batch, args.head_sizes, device)
        batch = {**batch, "video": videos}
        update = (it + 1) % update_freq == 0
        # DDP: only the micro-step that updates all-reduces the accumulated gradients.
        accumulate_only = not deepspeed and not update and isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with model.no_sync() if accumulate_only else contextlib.nullcontext():
            logits = forward(model, batch, device, args.use_box, args.precision, deepspeed)
            loss = sum(head_losses(logits, targets, args.head_sizes, args.smoothing))
            finite.update(loss)
            grad_norm = utils.backward_step(model, loss, optimizer, loss_scaler, args.clip_grad, deepspeed, update,
                                            update_freq)
        if update and model_ema is not None:
            model_ema.update(getattr(model, "module", model))  # DDP / DeepSpeed: the wrapped model
        metric_logger.update(loss=loss, lr=lr_schedule[step], grad_norm=grad_norm,
                             loss_scale=utils.current_loss_scale(model, loss_scaler, deepspeed, args.precision))
        if it % args.print_freq == 0 or it == num_batches - 1:
            finite.check(step)
            if log_writer is not None:
                log_writer.add_scalar("loss", metric_logger.meters["loss"].value, step)
                log_writer.add_scalar("lr", lr_schedule[step], step)
    metric_logger.synchronize_between_processes(device)
    replaced = int(utils.all_reduce_sum(replaced, device))
    if replaced:
        print(f"epoch {epoch}: {replaced} unusable videos (missing, corrupt, or without a usable box file) were"
              " skipped and replaced by other samples")
    print("Averaged stats:", metric_logger)
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()} | {"replaced_videos": replaced}


def head_prefixes(head_sizes: list[int]) -> list[str]:
    return ["verb_", "noun_"] if len(head_sizes) == 2 else [""]


def accuracy_keys(head_sizes: list[int]) -> list[str]:
    """The keys :func:`accuracies` returns, in its order."""
    keys = [f"{prefix}acc{k}" for prefix in head_prefixes(head_sizes) for k in (1, 5)]
    return keys + ["action_acc1"] if len(head_sizes) == 2 else keys


def accuracies(logits: torch.Tensor, targets: torch.Tensor, head_sizes: list[int]) -> dict[str, float]:
    """Top-1/top-5 per head in percent; with two heads (EPIC) also ``action`` top-1 (verb and noun both right)."""
    results, correct = {}, []
    for prefix, head_logits, target in zip(head_prefixes(head_sizes), split_heads(logits, head_sizes), targets.T,
                                           strict=True):
        k = min(5, head_logits.shape[-1])
        top = head_logits.topk(k, dim=-1).indices
        results[f"{prefix}acc1"] = (top[:, 0] == target).float().mean().item() * 100
        results[f"{prefix}acc5"] = (top == target[:, None]).any(-1).float().mean().item() * 100
        correct.append(top[:, 0] == target)
    if len(head_sizes) == 2:
        results["action_acc1"] = (correct[0] & correct[1]).float().mean().item() * 100
    return results


@torch.no_grad()
def validation_one_epoch(data_loader, model, device, args, deepspeed: bool = False) -> dict:
    """Loss and accuracy on one view per video; averaged over ranks weighted by batch size. A video that fails to
    decode or has no usable box file is left out (the loader hands another video in its place, which would count that
    one twice)."""
    model.eval()
    metric_logger = utils.MetricLogger()
    for key in ["loss", *accuracy_keys(args.head_sizes)]:
        metric_logger.meters[key]  # the same meters, in the same order, on every rank (some may skip all batches)
    skipped = 0
    for batch in metric_logger.log_every(data_loader, args.print_freq, "Val:"):
        kept = batch["replaced"] == 0
        skipped += int((~kept).sum())
        if not kept.any():
            continue
        targets = batch["target"][kept].to(device)
        logits = forward(model, batch, device, args.use_box, args.precision, deepspeed)[kept.to(device)]
        loss = sum(head_losses(logits, list(targets.T), args.head_sizes, 0.0))
        metric_logger.meters["loss"].update(loss.item(), n=targets.shape[0])
        for key, value in accuracies(logits, targets, args.head_sizes).items():
            metric_logger.meters[key].update(value, n=targets.shape[0])
    metric_logger.synchronize_between_processes(device)
    skipped = int(utils.all_reduce_sum(skipped, device))
    if skipped:
        print(f"validation: {skipped} videos could not be used (unreadable, or without a usable box file) and are "
              "left out")
    print("* " + "  ".join(f"{k} {m.global_avg:.3f}" for k, m in metric_logger.meters.items() if "acc" in k))
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()} | {"skipped_videos": skipped}


@torch.no_grad()
def final_test(data_loader, model, device, args, output_file: str | Path, deepspeed: bool = False) -> None:
    """Write one JSON line per view (this rank's share of the views): sample id (the entry's 0-based index among
    the test list's entries), its line in the list file, view, the video file (and for a segment of a long video its
    first and last frame, 0-based), targets and logits (the heads' one after another: EPIC's verbs, then nouns)."""
    model.eval()
    metric_logger = utils.MetricLogger()
    entries = data_loader.dataset.entries
    with open(output_file, "w", encoding="utf-8") as f:
        for batch in metric_logger.log_every(data_loader, args.print_freq, "Test:"):
            logits = forward(model, batch, device, args.use_box, args.precision, deepspeed).cpu()
            for i in range(logits.shape[0]):
                entry = entries[int(batch["sample_id"][i])]
                record = {"id": int(batch["sample_id"][i]), "line": entry.line, "view": int(batch["view"][i]),
                          "video": entry.video}
                if entry.num_frames is not None:
                    record["frames"] = [entry.first_frame, entry.first_frame + entry.num_frames - 1]
                f.write(json.dumps(record | {"target": batch["target"][i].tolist(),
                                             "logits": logits[i].tolist()}) + "\n")


def merge_views(view_files: list[str | Path], head_sizes: list[int]) -> dict[str, float]:
    """Per video: the mean over its views of each head's softmax; then accuracies over the labelled videos (a
    test list without labels, EPIC's test csv, has targets -1: it gets no accuracies, and ``unlabelled`` counts
    them). Views written by several ranks (and duplicated by a distributed sampler's padding) are merged by (id,
    view)."""
    views: dict[int, dict[int, np.ndarray]] = {}
    targets: dict[int, list[int]] = {}
    for path in view_files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            views.setdefault(record["id"], {})[record["view"]] = np.asarray(record["logits"], dtype=np.float64)
            targets[record["id"]] = record["target"]
    if not views:
        raise ValueError(f"no test views in {[str(p) for p in view_files]}")
    ids = sorted(views)
    merged = []
    for sample in ids:
        logits = torch.tensor(np.stack(list(views[sample].values())))
        probabilities = [torch.softmax(h, dim=-1).mean(0) for h in split_heads(logits, head_sizes)]
        merged.append(torch.cat(probabilities))
    labelled = [k for k, sample in enumerate(ids) if min(targets[sample]) >= 0]
    results = {}
    if labelled:
        results = accuracies(torch.stack(merged)[labelled], torch.tensor([targets[ids[k]] for k in labelled]),
                             head_sizes)
    results |= {"videos": len(ids), "views": sum(len(v) for v in views.values())}
    if len(labelled) < len(ids):
        results["unlabelled"] = len(ids) - len(labelled)
    return results

"""Fine-tuning-step benchmark: the plain ViT against the same ViT with MOFO's multi-cross-attention (MCA) head.

    python benchmarks/bench_finetune_step.py   # CUDA: ViT-B, batch 8, 16x224x224, 174 classes; CPU: tiny sizes

Both rows run one iteration of engine_for_finetuning's loop with run_mofo_finetuning's defaults (VideoMAE's SSV2
recipe: mixup 0.8 / cutmix 1.0 with label smoothing 0.1, drop path 0.1, layer-wise lr decay 0.75, --precision
autocast): ``mixed_targets``, ``forward``, ``head_losses``, ``utils.FiniteCheck`` and ``utils.backward_step``, with
the model from ``build_model``, the optimizer from ``utils.create_optimizer`` and the scaler from
``utils.wrap_model``. The MCA model (``--model`` + ``_mofo``) is called as ``model(x, box)`` with one motion box per
frame (B, T, 4) in [0, 1], as the fine-tuning loader delivers them.

Inputs are random normalised clips on the device (the host-to-device copy is not timed; the clips are re-copied
before every step, untimed, because mixup mixes them in place) and boxes in pinned host memory, where the loader
puts them and the MOFO model reads them (its token sets are chosen on the host). clips/s is the batch over the median
step time of --steps timed steps after --warmup; CUDA is synchronised only around each timed step. Every row runs in
its own process, --repeats times in turn (medians reported). Peak memory as in bench_pretrain_step.py. "MCA
overhead" is the MCA step's extra time over the plain step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from timm.models import list_models

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_pretrain_step import (  # noqa: E402
    PeakMemory,
    add_clip_args,
    add_timing_args,
    default_device,
    environment_lines,
    format_bytes,
    markdown_table,
    optimizer_label,
    parse_with_device_defaults,
    repeated_rows,
    time_steps,
)

import run_mofo_finetuning  # noqa: E402
import utils  # noqa: E402
from engine_for_finetuning import forward, head_losses, mixed_targets  # noqa: E402


def project_args(options: argparse.Namespace, model: str) -> argparse.Namespace:
    """run_mofo_finetuning's arguments (SSV2, its defaults) for this benchmark's model and sizes."""
    args = run_mofo_finetuning.get_args_parser().parse_args([
        "--model", model, "--data_set", "SSV2", "--nb_classes", str(options.nb_classes),
        "--batch_size", str(options.batch_size), "--num_frames", str(options.num_frames),
        "--input_size", str(options.input_size), "--precision", options.precision, "--device", options.device])
    args.head_sizes = [args.nb_classes]
    args.distributed = False
    return args


def make_batch(options: argparse.Namespace, device: torch.device) -> dict:
    """Random normalised clips (B, 3, T, S, S), targets (B, 1) and per-frame boxes (B, T, 4) in [0, 1]: a box of
    20-50% of each side per clip, drifting by up to 2% of the frame per frame."""
    generator = torch.Generator().manual_seed(options.seed)
    batch, frames, size = options.batch_size, options.num_frames, options.input_size
    video = torch.randn(batch, 3, frames, size, size, generator=generator)
    target = torch.randint(options.nb_classes, (batch, 1), generator=generator)
    sides = 0.2 + 0.3 * torch.rand(batch, 1, 2, generator=generator)
    start = (1 - sides) * torch.rand(batch, 1, 2, generator=generator)
    drift = 0.02 * (2 * torch.rand(batch, 1, 2, generator=generator) - 1) * torch.arange(frames)[None, :, None]
    corner = (start + drift).clamp(torch.zeros(1), 1 - sides)
    box = torch.cat([corner, corner + sides], dim=-1)
    box = box.pin_memory() if device.type == "cuda" else box  # on the host, as the loader gives it to the engine
    return {"video": video.to(device), "target": target.to(device), "box": box}


def run_row(model_name: str, options: argparse.Namespace) -> dict:
    """Build the model, optimizer and scaler as run_mofo_finetuning does, time the loop's steps, measure memory.
    Runs in a fresh process (``in_fresh_process``)."""
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as run_mofo_finetuning sets it (utils.setup_device)
    args = project_args(options, model_name)
    batch = make_batch(options, device)
    with PeakMemory(device) as memory:
        torch.manual_seed(options.seed)
        model = run_mofo_finetuning.build_model(args).to(device)
        optimizer, _ = run_mofo_finetuning.build_optimizer(args, model)
        model, _, optimizer, loss_scaler = utils.wrap_model(args, model, optimizer, device)
        model.train()
        mixup_fn = run_mofo_finetuning.build_mixup(args)  # SSV2's defaults: mixup 0.8, cutmix 1.0
        finite = utils.FiniteCheck(device)
        step_batch = dict(batch)

        def prepare():
            step_batch["video"] = batch["video"].clone()

        def step():
            utils.apply_schedules(optimizer, args.lr, args.weight_decay)
            videos, targets = mixed_targets(mixup_fn, step_batch, args.head_sizes, device)
            logits = forward(model, {**step_batch, "video": videos}, device, args.use_box, args.precision, False)
            loss = sum(head_losses(logits, targets, args.head_sizes, args.smoothing))
            finite.update(loss)
            utils.backward_step(model, loss, optimizer, loss_scaler, args.clip_grad, False, True, 1)

        times = time_steps(step, options.warmup, options.steps, device, prepare)
        finite.check(options.warmup + options.steps)
    return {"seconds": statistics.median(times), "peak": memory.peak, "optimizer": optimizer_label(optimizer, device)}


def plain_models_with_mca() -> list[str]:
    """The fine-tuning models whose ``_mofo`` variant (the MCA head) exists."""
    models = list_models(module="modeling_finetune")
    return [name for name in models if f"{name}_mofo" in models]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--model", default=None,
                        help="plain model; the MCA row uses MODEL_mofo (default vit_base_patch16_224 on CUDA, "
                             "vit_mini_patch16_224 on a CPU)")
    parser.add_argument("--nb_classes", type=utils.positive_int, default=174, help="classes (SSV2: 174)")
    add_clip_args(parser, cuda_batch_size=8)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype")
    add_timing_args(parser)
    options = parse_with_device_defaults(parser, [
        ("model", "vit_base_patch16_224", "vit_mini_patch16_224"), ("batch_size", 8, 2), ("num_frames", 16, 8),
        ("input_size", 224, 112)], plain_models_with_mca())
    if options.batch_size % 2:
        parser.error("mixup mixes each clip with its mirror in the batch: --batch_size must be even")
    device = torch.device(options.device)

    rows = [(options.model, "plain (mean pool)"), (f"{options.model}_mofo", "MCA (both, depth 1)")]
    print(f"fine-tuning step: batch {options.batch_size}, {options.num_frames}x{options.input_size}x"
          f"{options.input_size}, {options.nb_classes} classes, {options.precision} autocast, median of "
          f"{options.steps} steps after {options.warmup} warm-up"
          + (f", median of {options.repeats} runs per row" if options.repeats > 1 else ""))
    print("\n".join(environment_lines(device)), flush=True)
    by_name = repeated_rows([name for name, _ in rows], options, run_row)
    results = [by_name[name] for name, _ in rows]
    plain = results[0]["seconds"]
    print()
    table = []
    for (name, head), result in zip(rows, results, strict=True):
        overhead = "" if result is results[0] else f"{100 * (result['seconds'] / plain - 1):+.1f}%"
        table.append([name, head, result["optimizer"], f"{options.batch_size / result['seconds']:.2f}",
                      f"{1000 * result['seconds']:.1f}", format_bytes(result["peak"]), overhead])
    print(markdown_table(["model", "head", "optimizer", "clips/s", "ms/step", "peak memory", "MCA overhead"], table))


if __name__ == "__main__":
    main()

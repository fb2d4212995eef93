"""Pretraining-step benchmark: this project's step against a faithful VideoMAE reference step, same weights, same run.

    python benchmarks/bench_pretrain_step.py             # CUDA: ViT-B, batch 32, 16x224x224; CPU: tiny sizes
    python benchmarks/bench_pretrain_step.py --compile   # adds a torch.compile row

Rows (inputs: random clips on the device, as uint8 frames for ours, which normalises them in its step, and normalised
for VideoMAE's, as its loader gives them; --mask_ratio tube masks on the host, as the engine gets them from the data
loader; the data pipeline is bench_data.py's business):

- ``ours``: run_mofo_pretraining's model (``build_model``), optimizer (``utils.create_optimizer`` over
  ``utils.param_groups_weight_decay``) and scaler (``utils.wrap_model``), then one iteration of
  engine_for_pretraining's loop: ``pretrain_loss`` (--precision autocast, the model's SDPA attention),
  ``utils.FiniteCheck``, ``utils.backward_step``.
- ``ours + torch.compile`` (--compile): the same with run_mofo_pretraining's ``--compile``.
- ``VideoMAE reference``: VideoMAE's step re-implemented here over a model with the same weights: every tube
  patch-embedded then the visible ones selected, the position tables copied from the host every step (VideoMAE's
  are not buffers, so they stay on the CPU), explicit attention (``softmax(q * scale @ k^T) @ v``), its
  normalised-pixel target and MSE, --ref_precision autocast (fp16 on CUDA, as VideoMAE; bf16 by default on a CPU,
  where fp16 autocast has no fast kernels and would only measure that) with a GradScaler when fp16,
  ``optimizer.zero_grad()`` that zeroes (torch 1.x), unscale + VideoMAE's ``get_grad_norm_`` (or clipping), and a
  single-tensor AdamW (``foreach=False, fused=False``).

clips/s is the batch over the median step time of --steps timed steps after --warmup; CUDA is synchronised only
around each timed step. Every row runs in its own process, --repeats times in turn (medians reported). Peak memory
is ``torch.cuda.max_memory_allocated`` during the row on CUDA (the input batch included); on a CPU the peak growth
of the resident set during the row (model, optimizer state and activations; for the compile row also the
compiler's own memory), sampled every ms.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import list_models

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import engine_for_pretraining  # noqa: E402
import run_mofo_pretraining  # noqa: E402  (registers the pretrain_videomae_* models)
import utils  # noqa: E402
from masking_generator import TubeMaskingGenerator  # noqa: E402
from modeling_pretrain import DEFAULT_PATCH_SIZE, DEFAULT_TUBELET_SIZE  # noqa: E402
from video_transforms import normalize_video  # noqa: E402

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}

# ---------------------------------------------------------------- shared by the benchmark scripts


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def environment_lines(device: torch.device) -> list[str]:
    """Device, torch version, date and the command line, printed above every table."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"device: {device_name(device)}; torch {torch.__version__}; {now}",
            "command: python " + shlex.join(sys.argv)]


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device,
               prepare: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones; ``prepare`` runs untimed
    before every call. CUDA is synchronised before and after each timed call only."""
    times = []
    for i in range(warmup + steps):
        if prepare is not None:
            prepare()
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _resident_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory inside a ``with`` block, in bytes (None: unknown): ``torch.cuda.max_memory_allocated`` on CUDA;
    on a CPU the peak resident set above its size at entry, sampled every millisecond from /proc/self/statm
    (freed heap memory is first handed back to the system where glibc allows, so the baseline is honest)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)
        self._start = _resident_bytes()
        self._highest = self._start
        self._stop = threading.Event()
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._highest = max(self._highest, _resident_bytes() or 0)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        self._highest = max(self._highest, _resident_bytes() or 0)
        self.peak = self._highest - self._start


def in_fresh_process(device: str, function: Callable, *args):
    """``function(*args)`` in a new process: every row starts from the same memory state (the CPU figure is a
    resident-set growth) and inherits no other row's caches or compiled kernels. Forked from this process (which
    has only imported modules) for a CPU run; spawned for CUDA, which cannot be used in a forked child."""
    method = "spawn" if device.startswith("cuda") else "fork"
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context(method)) as pool:
        return pool.submit(function, *args).result()


def repeated_rows(keys: list, options: argparse.Namespace, row: Callable) -> dict:
    """``row(key, options)`` for every key, each in a fresh process, --repeats times in turn (a load change on a
    shared machine then hits every row); the median step time and peak memory of each key's runs."""
    runs = {key: [] for key in keys}
    for repeat in range(options.repeats):
        for key in keys:
            result = in_fresh_process(options.device, row, key, options)
            runs[key].append(result)
            print(f"  {key}, run {repeat + 1} of {options.repeats}: {1000 * result['seconds']:.1f} ms/step, "
                  f"peak {format_bytes(result['peak'])}", flush=True)  # kept if a later row runs out of time
    results = {}
    for key, results_of_key in runs.items():
        peaks = [r["peak"] for r in results_of_key if r["peak"] is not None]
        results[key] = {**results_of_key[0], "seconds": statistics.median(r["seconds"] for r in results_of_key),
                        "peak": int(statistics.median(peaks)) if peaks else None}
    return results


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- the two steps


def project_args(options: argparse.Namespace) -> argparse.Namespace:
    """run_mofo_pretraining's arguments for this benchmark's sizes (VideoMAE's SSV2 recipe otherwise)."""
    args = run_mofo_pretraining.get_args_parser().parse_args([
        "--model", options.model, "--batch_size", str(options.batch_size), "--num_frames", str(options.num_frames),
        "--input_size", str(options.input_size), "--mask_ratio", str(options.mask_ratio), "--opt_betas", "0.9",
        "0.95", "--precision", options.precision, "--device", options.device, "--decoder_depth",
        str(options.decoder_depth), *(["--clip_grad", str(options.clip_grad)] if options.clip_grad else [])])
    args.distributed = False
    return args


def make_batch(args: argparse.Namespace, device: torch.device, seed: int, reference: bool) -> dict:
    """Random clips already on the device (the host-to-device copy is not timed), as each step's loader gives them:
    ``frames`` (B, T, S, S, 3) uint8 for ours (normalised in the step) or, for VideoMAE's (``reference``), ``video``
    (B, 3, T, S, S), the same clips normalised; tube masks (B, N) on the host, pinned on CUDA."""
    generator = torch.Generator().manual_seed(seed)
    shape = (args.batch_size, args.num_frames, args.input_size, args.input_size, 3)
    frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    masks = TubeMaskingGenerator(args.window_size, args.mask_ratio, seed=seed)
    mask = torch.stack([torch.from_numpy(masks()) for _ in range(args.batch_size)])
    batch = {"mask": mask.pin_memory() if device.type == "cuda" else mask}
    if reference:
        return batch | {"video": normalize_video(frames.permute(0, 4, 1, 2, 3)).to(device)}
    return batch | {"frames": frames.to(device)}


def our_step(model, optimizer, loss_scaler, finite: utils.FiniteCheck, batch: dict, device: torch.device,
             args) -> None:
    """One iteration of engine_for_pretraining.train_one_epoch without its logging (which reads the values every
    --print_freq steps; ``finite`` is checked after the timed steps)."""
    utils.apply_schedules(optimizer, args.lr, args.weight_decay)
    loss, _ = engine_for_pretraining.pretrain_loss(model, batch, device, args)
    finite.update(loss)
    utils.backward_step(model, loss, optimizer, loss_scaler, args.clip_grad, deepspeed=False)


def videomae_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """VideoMAE's Attention.forward over our Attention's weights: explicit scores and softmax."""
    batch, tokens, _ = x.shape
    qkv_bias = None
    if attn.q_bias is not None:
        qkv_bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias, requires_grad=False), attn.v_bias))
    qkv = F.linear(input=x, weight=attn.qkv.weight, bias=qkv_bias)
    qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * attn.scale
    scores = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    scores = F.dropout(scores, attn.attn_drop_p, attn.training)
    x = (scores @ v).transpose(1, 2).reshape(batch, tokens, -1)
    return attn.proj_drop(attn.proj(x))


def videomae_block(block, x: torch.Tensor) -> torch.Tensor:
    """VideoMAE's Block.forward (pre-norm, optional layer scale; Mlp fc1 -> act -> fc2 -> dropout)."""
    mlp = block.mlp

    def feed_forward(y):
        return mlp.drop(mlp.fc2(mlp.act(mlp.fc1(y))))

    if block.gamma_1 is None:
        x = x + block.drop_path(videomae_attention(block.attn, block.norm1(x)))
        return x + block.drop_path(feed_forward(block.norm2(x)))
    x = x + block.drop_path(block.gamma_1 * videomae_attention(block.attn, block.norm1(x)))
    return x + block.drop_path(block.gamma_2 * feed_forward(block.norm2(x)))


def videomae_position_tables(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's and decoder's sinusoid tables on the CPU: VideoMAE keeps them as plain tensor attributes, which
    ``model.to(device)`` does not move, so every step of its model copies them to the device."""
    return model.encoder.pos_embed.detach().cpu(), model.pos_embed.detach().cpu()


def videomae_forward(model, video: torch.Tensor, mask: torch.Tensor,
                     tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """VideoMAE's PretrainVisionTransformer.forward over our model's weights: all tubes embedded, then the visible
    ones selected; decoder input [visible + pos, mask_token + pos], predictions for the masked tokens. ``tables``
    (:func:`videomae_position_tables`) are cast and copied to the device each call, as VideoMAE's own are: the
    encoder's like the tube embeddings, the decoder's expanded to the batch on the host like the input clip."""
    encoder, decoder = model.encoder, model.decoder
    encoder_table, decoder_table = tables or (encoder.pos_embed, model.pos_embed)
    x = encoder.patch_embed.proj(video).flatten(2).transpose(1, 2)
    x = x + encoder_table.type_as(x).to(x.device).clone().detach()
    batch, _, channels = x.shape
    x_vis = x[~mask].reshape(batch, -1, channels)
    for block in encoder.blocks:
        x_vis = videomae_block(block, x_vis)
    x_vis = model.encoder_to_decoder(encoder.head(encoder.norm(x_vis)))
    batch, _, channels = x_vis.shape
    pos = decoder_table.expand(batch, -1, -1).type_as(video).to(video.device).clone().detach()
    pos_vis = pos[~mask].reshape(batch, -1, channels)
    pos_mask = pos[mask].reshape(batch, -1, channels)
    x_full = torch.cat([x_vis + pos_vis, model.mask_token + pos_mask], dim=1)
    for block in decoder.blocks:
        x_full = videomae_block(block, x_full)
    return decoder.head(decoder.norm(x_full[:, -pos_mask.shape[1]:]))


def videomae_targets(videos: torch.Tensor, mask: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """VideoMAE's normalised-pixel labels of the masked tubes."""
    mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN).to(videos.device)[None, :, None, None, None]
    std = torch.as_tensor(IMAGENET_DEFAULT_STD).to(videos.device)[None, :, None, None, None]
    unnorm_videos = videos * std + mean
    squeezed = rearrange(unnorm_videos, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                         p0=tubelet_size, p1=patch_size, p2=patch_size)
    normed = (squeezed - squeezed.mean(dim=-2, keepdim=True)) / (
        squeezed.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    patches = rearrange(normed, "b n p c -> b n (p c)")
    batch, _, channels = patches.shape
    return patches[mask].reshape(batch, -1, channels)


def videomae_grad_norm(parameters) -> torch.Tensor:
    """VideoMAE's utils.get_grad_norm_ (2-norm of the per-parameter gradient norms)."""
    parameters = [p for p in parameters if p.grad is not None]
    return torch.norm(torch.stack([torch.norm(p.grad.detach(), 2.0) for p in parameters]), 2.0)


def reference_optimizer(model, args) -> torch.optim.Optimizer:
    """VideoMAE's AdamW over the same parameter groups (no decay on biases, norms, 1-D and skipped names),
    single-tensor (the torch 1.x implementation its recipe ran with)."""
    groups = utils.param_groups_weight_decay(model, args.weight_decay, set(model.no_weight_decay()))
    groups = [{k: v for k, v in group.items() if k != "param_names"} for group in groups]
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay, betas=tuple(args.opt_betas),
                             eps=args.opt_eps, foreach=False, fused=False)


def reference_step(model, optimizer, scaler, batch: dict, device: torch.device, args, precision: str,
                   tables: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One iteration of VideoMAE's engine_for_pretraining.train_one_epoch (without its logging)."""
    for group in optimizer.param_groups:
        group["lr"] = args.lr * group["lr_scale"]
        if group["weight_decay"] > 0:
            group["weight_decay"] = args.weight_decay
    videos = batch["video"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True).flatten(1).to(torch.bool)
    with torch.no_grad():
        labels = videomae_targets(videos, mask, args.patch_size[0], args.tubelet_size)
    dtype = AUTOCAST_DTYPES[precision]
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        outputs = videomae_forward(model, videos, mask, tables)
        loss = F.mse_loss(input=outputs, target=labels)
    if not math.isfinite(loss.item()):
        raise FloatingPointError("reference loss is not finite")
    optimizer.zero_grad(set_to_none=False)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if args.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    else:
        videomae_grad_norm(model.parameters())
    scaler.step(optimizer)
    scaler.update()


# ---------------------------------------------------------------- rows


def optimizer_label(optimizer: torch.optim.Optimizer, device: torch.device) -> str:
    """Class and implementation: fused, foreach (multi-tensor) or single-tensor; torch's default (``foreach``
    None) is foreach for CUDA parameters, single-tensor otherwise."""
    if optimizer.defaults.get("fused"):
        kind = "fused"
    else:
        foreach = optimizer.defaults.get("foreach")
        kind = "foreach" if foreach or (foreach is None and device.type == "cuda") else "single-tensor"
    return f"{type(optimizer).__name__} ({kind})"


def run_row(name: str, options: argparse.Namespace) -> dict:
    """One row (``ours``, ``compile`` or ``reference``): build its model (same seed, same weights) and optimizer,
    time its steps and measure its peak memory. Runs in a fresh process (``in_fresh_process``)."""
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as both run scripts (and VideoMAE's) set it
    args = project_args(options)
    with torch.device("meta"):
        run_mofo_pretraining.build_model(args)  # sets patch_size, tubelet_size and window_size on args
    batch = make_batch(args, device, options.seed, reference=name == "reference")
    with PeakMemory(device) as memory:
        torch.manual_seed(options.seed)
        model = run_mofo_pretraining.build_model(args).to(device)
        model.train()
        if name == "reference":
            optimizer = reference_optimizer(model, args)
            scaler = torch.amp.GradScaler(device.type, enabled=options.ref_precision == "fp16")
            tables = videomae_position_tables(model)

            def step():
                reference_step(model, optimizer, scaler, batch, device, args, options.ref_precision, tables)
        else:
            args.compile = name == "compile"
            skip = set(model.no_weight_decay())
            optimizer = utils.create_optimizer(args, utils.param_groups_weight_decay(model, args.weight_decay, skip))
            model, _, optimizer, loss_scaler = utils.wrap_model(args, model, optimizer, device)
            finite = utils.FiniteCheck(device)

            def step():
                our_step(model, optimizer, loss_scaler, finite, batch, device, args)

        times = time_steps(step, options.warmup, options.steps, device)
        if name != "reference":
            finite.check(options.warmup + options.steps)
    return {"seconds": statistics.median(times), "peak": memory.peak, "optimizer": optimizer_label(optimizer, device)}


def add_clip_args(parser: argparse.ArgumentParser, cuda_batch_size: int) -> None:
    """The batch and clip sizes of both step benchmarks; unset, parse_with_device_defaults fills them."""
    parser.add_argument("--batch_size", type=utils.positive_int, default=None,
                        help=f"clips per step (default {cuda_batch_size} on CUDA, 2 on CPU)")
    parser.add_argument("--num_frames", type=utils.positive_int, default=None,
                        help="frames per clip (default 16 on CUDA, 8 on CPU)")
    parser.add_argument("--input_size", type=utils.positive_int, default=None,
                        help="frame side (default 224 on CUDA, 112 on CPU)")


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """The flags both step benchmarks share (after their own)."""
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 5 CUDA, 2 CPU)")
    parser.add_argument("--steps", type=utils.positive_int, default=None,
                        help="timed steps per row (default 20 CUDA, 5 CPU)")
    parser.add_argument("--repeats", type=utils.positive_int, default=1,
                        help="run every row this many times, in turn, and report the medians (noisy machines)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)


def parse_with_device_defaults(parser: argparse.ArgumentParser, defaults: list[tuple[str, object, object]],
                               models: list[str]):
    """Parse, set torch's threads, fill every unset option of ``defaults`` (name, on CUDA, on a CPU), and refuse a
    ``--model`` not among ``models``."""
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    cuda = options.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")
    for name, on_cuda, on_cpu in [*defaults, ("warmup", 5, 2), ("steps", 20, 5)]:
        if getattr(options, name) is None:
            setattr(options, name, on_cuda if cuda else on_cpu)
    if options.model not in models:
        parser.error(f"--model {options.model}: not one of {', '.join(models)}")
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--model", default=None,
                        help="default pretrain_videomae_base_patch16_224 on CUDA, pretrain_videomae_mini_patch16_224 "
                             "on a CPU")
    add_clip_args(parser, cuda_batch_size=32)
    parser.add_argument("--decoder_depth", type=utils.positive_int, default=4)
    parser.add_argument("--mask_ratio", type=float, default=0.9, help="tube masking ratio")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"], help="our autocast dtype")
    parser.add_argument("--ref_precision", default=None, choices=["bf16", "fp16", "fp32"],
                        help="the reference's autocast dtype (default fp16 on CUDA, as VideoMAE; bf16 on a CPU)")
    parser.add_argument("--clip_grad", type=float, default=None, help="max gradient norm (default: no clipping)")
    parser.add_argument("--compile", action="store_true", help="add a row with torch.compile(model)")
    add_timing_args(parser)
    options = parse_with_device_defaults(parser, [
        ("model", "pretrain_videomae_base_patch16_224", "pretrain_videomae_mini_patch16_224"), ("batch_size", 32, 2),
        ("num_frames", 16, 8), ("input_size", 224, 112), ("ref_precision", "fp16", "bf16")],
        list_models(module="modeling_pretrain"))
    device = torch.device(options.device)

    rows = [("ours", "ours", "SDPA", options.precision)]
    if options.compile:
        rows.append(("compile", "ours + torch.compile", "SDPA", options.precision))
    rows.append(("reference", "VideoMAE reference", "explicit", options.ref_precision))
    num_tokens = (options.num_frames // DEFAULT_TUBELET_SIZE) * (options.input_size // DEFAULT_PATCH_SIZE) ** 2
    print(f"pretraining step: {options.model}, batch {options.batch_size}, {options.num_frames}x{options.input_size}"
          f"x{options.input_size}, {num_tokens} tubes, mask ratio {options.mask_ratio}, decoder depth "
          f"{options.decoder_depth}, median of {options.steps} steps after {options.warmup} warm-up"
          + (f", median of {options.repeats} runs per row" if options.repeats > 1 else ""))
    print("\n".join(environment_lines(device)), flush=True)
    # the compile row (minutes of compiling on a cold cache) after the table of the others: a time limit then costs
    # only its figure
    results = repeated_rows([key for key, *_ in rows if key != "compile"], options, run_row)
    print_step_table(rows, results, options.batch_size)
    if options.compile:
        results |= repeated_rows(["compile"], options, run_row)
        print_step_table(rows, results, options.batch_size)


def print_step_table(rows: list[tuple[str, str, str, str]], results: dict, batch_size: int) -> None:
    """The markdown table of the rows measured so far, in the order of ``rows``."""
    reference = results["reference"]["seconds"]
    table = []
    for key, label, attention, precision in rows:
        if key not in results:
            continue
        result = results[key]
        scaler = " + GradScaler" if precision == "fp16" else ""
        table.append([label, attention, precision + scaler, result["optimizer"],
                      f"{batch_size / result['seconds']:.2f}", f"{1000 * result['seconds']:.1f}",
                      format_bytes(result["peak"]), f"{reference / result['seconds']:.2f}x"])
    print()
    print(markdown_table(["step", "attention", "autocast", "optimizer", "clips/s", "ms/step", "peak memory",
                          "speedup vs reference"], table), flush=True)


if __name__ == "__main__":
    main()

"""What both run scripts share: distributed setup (torchrun or SLURM srun), schedules, metric logging,
parameter groups, atomic checkpoints with auto-resume, the training data loader and its seeding."""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import inspect
import itertools
import json
import math
import os
import pickle
import random
import re
import shutil
import socket
import subprocess
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tensorboardX import SummaryWriter

import hf_videomae
from motion_detection.boxfile import atomic_write_text, check_writable

# ---------------------------------------------------------------- command line


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with the module docstring as written and every flag's default (but None) after its help, also for
    flags without one."""

    def _format_action(self, action):
        if (not action.help and action.option_strings and action.nargs != 0
                and action.default not in (None, "", argparse.SUPPRESS)):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"  # argparse shows nothing, not even the default, for no help
        return super()._format_action(action)

    def _get_help_string(self, action):
        # on/off switches say in their help which one is the default: "(default: True)" under --no_x would mislead
        if action.default in (None, "") or action.nargs == 0 or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


@contextlib.contextmanager
def setup_errors():
    """A run's setup problems (a missing file, a bad list, flags that do not fit together, a refused checkpoint) end
    it with their message on one line instead of a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, pickle.UnpicklingError) as e:
        raise SystemExit(f"error: {e}") from None


@contextlib.contextmanager
def training_errors(data_loader: torch.utils.data.DataLoader):
    """A loss that stopped being finite (:class:`FiniteCheck`, as VideoMAE's "Loss is nan, stopping training") or
    data of which nothing loads (``datasets.UnusableDataError``, raised in a loader worker, whose message the loader
    wraps in the worker's traceback) ends the run with its message on one line. The loader's workers are stopped
    first: the others go on decoding (and logging their skipped videos, decord in several writes) and would cut
    into that line."""
    from datasets import UnusableDataError

    try:
        yield
    except FloatingPointError as e:
        raise SystemExit(f"error: {e}") from None
    except UnusableDataError as e:
        stop_workers(data_loader)
        raise SystemExit(f"error: {str(e).strip().splitlines()[-1].split('UnusableDataError: ', 1)[-1]}") from None


def stop_workers(data_loader: torch.utils.data.DataLoader) -> None:
    """Ends the persistent workers of ``data_loader`` now, each after the sample it is loading, as the loader does
    when it is deleted."""
    iterator = getattr(data_loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def positive_int(value: str) -> int:
    """argparse type of counts and sizes that must be at least 1 (batch, frames, stride, views, steps)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def str2bool(value: str) -> bool:
    """argparse type for VideoMAE's boolean flags given as words (``--normlize_target false``)."""
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


# ---------------------------------------------------------------- distributed


def slurm_master_addr(nodelist: str) -> str:
    """First host of a SLURM node list (``node[03-05,07]`` -> ``node03``), via scontrol when available."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
        return match.group(1) + (match.group(2) or "")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The output, device, precision, resume and loader flags of both run scripts, with VideoMAE's names and
    defaults (bf16 and auto-resume are this project's), and the distributed ones."""
    parser.add_argument("--output_dir", default="", help="checkpoints and log.txt")
    parser.add_argument("--log_dir", default=None, help="tensorboard logs")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                        help="autocast dtype, fp16 with a gradient scaler; with --enable_deepspeed, DeepSpeed's bf16"
                             " or fp16 mode instead (the model in that precision; fp16 with DeepSpeed's loss scaling)")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--resume", default="", help="checkpoint to resume from")
    parser.add_argument("--auto_resume", action="store_true", default=True,
                        help="resume from the newest checkpoint in --output_dir, also over another --resume (a "
                             "released checkpoint, or an older one of the run's; fine-tuning's --eval tests --resume)"
                             " (default)")
    parser.add_argument("--no_auto_resume", action="store_false", dest="auto_resume")
    parser.add_argument("--start_epoch", default=0, type=int)
    parser.add_argument("--num_workers", default=10, type=int)
    parser.add_argument("--pin_mem", action="store_true", default=True, help="pin CPU memory in the data loader")
    parser.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    parser.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    parser.add_argument("--local_rank", "--local-rank", default=-1, type=int,
                        help="passed by torch.distributed.launch (VideoMAE's launcher), which also exports LOCAL_RANK:"
                             " the rank and GPU are taken from that environment, as under torchrun or srun")
    parser.add_argument("--enable_deepspeed", action="store_true", help="train with DeepSpeed instead of DDP")
    parser.add_argument("--zero_stage", default=0, type=int, choices=[0, 1, 2], help="DeepSpeed ZeRO stage")


def make_output_dir(output_dir: str) -> None:
    """Create ``--output_dir`` and check that it takes files, before any training: a folder that cannot hold
    log.txt or a checkpoint would otherwise fail only once the first epoch is done."""
    try:
        check_writable(output_dir)
    except OSError as e:
        raise SystemExit(f"cannot write to --output_dir {output_dir}: {e}") from None


def init_distributed_mode(args) -> None:
    """Set args.rank / world_size / gpu / distributed from torchrun's or srun's environment and join the group.

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; under ``srun`` (one task per GPU) they come from SLURM_PROCID,
    SLURM_STEP_NUM_TASKS (or SLURM_NTASKS) and SLURM_LOCALID, with the master address taken from the step's first
    node. Without either, the run is a single process (with ``--enable_deepspeed`` a process group of one, which
    DeepSpeed needs). The backend is NCCL on GPUs and gloo on CPUs.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        args.rank, args.world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        args.gpu = int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) > 1:
        # srun's step size first: a step may run fewer tasks than the allocation holds.
        args.rank = int(env["SLURM_PROCID"])
        args.world_size = int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]))
        if "SLURM_STEP_NUM_TASKS" not in env:
            print(f"SLURM: task {args.rank} of {args.world_size} (SLURM_NTASKS) waits for the others; a script run"
                  " straight from the sbatch shell, without srun, would wait forever: launch with srun"
                  " (scripts/launch.sh does)", flush=True)
        local_id = int(env.get("SLURM_LOCALID", 0))  # modulo: with --gpus-per-task each task sees one GPU
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible > 1 and local_id >= visible and args.device.startswith("cuda"):
            raise SystemExit(f"SLURM: task {local_id} of this node, which shows {visible} GPUs: launch one task per "
                             f"GPU (GPUS={visible}, or --ntasks-per-node={visible})")
        args.gpu = local_id % visible if visible else local_id
        env.setdefault("MASTER_ADDR", slurm_master_addr(env.get("SLURM_STEP_NODELIST", env["SLURM_JOB_NODELIST"])))
        env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 10000))
        env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = str(args.rank), str(args.world_size), str(args.gpu)
    else:
        args.rank, args.world_size, args.gpu = 0, 1, 0
        if not getattr(args, "enable_deepspeed", False):
            args.distributed = False
            return
        # A plain `python run_*.py --enable_deepspeed`: DeepSpeed needs a process group (else it looks for MPI),
        # so the run is a group of one on a free local port.
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    args.distributed = True
    use_cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        if args.gpu >= torch.cuda.device_count():
            raise SystemExit(f"local rank {args.gpu}, and this node shows {torch.cuda.device_count()} GPUs: start one "
                             f"process per GPU (GPUS={torch.cuda.device_count()}, or torchrun --nproc_per_node "
                             f"{torch.cuda.device_count()})")
        torch.cuda.set_device(args.gpu)
    args.dist_backend = "nccl" if use_cuda else "gloo"
    print(f"| distributed init (rank {args.rank}/{args.world_size}, {args.dist_backend})", flush=True)
    dist.init_process_group(args.dist_backend, init_method=args.dist_url, world_size=args.world_size,
                            rank=args.rank, timeout=datetime.timedelta(minutes=30))
    dist.barrier()
    setup_for_distributed(args.rank == 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_for_distributed(is_master: bool) -> None:
    """Silence print() on all ranks but the first (``print(..., force=True)`` still prints)."""
    import builtins

    builtin_print = builtins.print

    def print_master(*args, **kwargs):
        if kwargs.pop("force", False) or is_master:
            builtin_print(*args, **kwargs)

    builtins.print = print_master


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(value: float, device) -> float:
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    if is_dist_avail_and_initialized():
        dist.all_reduce(t)
    return t.item()


# ---------------------------------------------------------------- run-script setup


def setup_device(args) -> torch.device:
    """Join the process group (torchrun or srun) and pick this process's device, refusing impossible settings."""
    init_distributed_mode(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible; pass --device cpu to train on the CPU")
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        raise SystemExit("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    device = torch.device(f"cuda:{args.gpu}" if args.device.startswith("cuda") else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as VideoMAE: the fastest convolution for the fixed clip size
        warning = precision_warning(args.precision, torch.cuda.get_device_name(device),
                                    torch.cuda.get_device_capability(device))
        if warning and is_main_process():
            print(warning)
    return device


def precision_warning(precision: str, gpu: str, capability: tuple[int, int]) -> str | None:
    """bf16 on a GPU before Ampere (compute capability 8.0) runs without bf16 arithmetic, far slower than fp16."""
    if precision != "bf16" or tuple(capability) >= (8, 0):
        return None
    return (f"warning: --precision bf16 on {gpu} (compute capability {capability[0]}.{capability[1]}), which has no "
            "bf16 arithmetic: pass --precision fp16 (VideoMAE's setting on V100s) for its tensor cores")


def warn_unused_flags(args, parser: argparse.ArgumentParser, rules) -> list[str]:
    """Name the flags a run's mode does not read instead of ignoring them silently. ``rules`` are ``(applies,
    names, reason)``: where ``applies`` holds, the flags among ``names`` set to other than their defaults get one
    warning line (printed by the main process). Returns the lines."""
    lines = []
    for applies, names, reason in rules:
        given = [f"--{name}" for name in names if applies and getattr(args, name) != parser.get_default(name)]
        if given:
            lines.append(f"warning: {', '.join(given)} {'is' if len(given) == 1 else 'are'} not used: {reason}")
    if is_main_process():
        for line in lines:
            print(line)
    return lines


def optimizer_flag_rules(args) -> list[tuple[bool, tuple[str, ...], str]]:
    """``warn_unused_flags`` rules for ``--opt_eps``, ``--opt_betas`` and ``--momentum``, which timm drops for an
    ``--opt`` that has no such setting (AdamW has no momentum, SGD no betas)."""
    from timm.optim import get_optimizer_info

    try:
        info = get_optimizer_info(args.opt.lower().removeprefix("lookahead_"))
    except ValueError:
        return []  # create_optimizer names the unknown optimizer
    return [(not getattr(info, f"has_{setting}"), (flag,), f"--opt {args.opt} has no {setting}")
            for flag, setting in (("opt_eps", "eps"), ("opt_betas", "betas"), ("momentum", "momentum"))]


def warn_setting_changed(trained: dict, name: str, value, unsaved) -> None:
    """Name a flag the checkpoint's run set otherwise than this run (``unsaved``: its value in this project's runs
    saved before the flag existed), e.g. a resubmitted job after a default changed."""
    saved = trained.get(name, unsaved)
    if saved != value and is_main_process():
        print(f"warning: the checkpoint's run used --{name} {saved}, this run --{name} {value}")


def saved_box_source(trained: dict) -> str | None:
    """The ``--box_source`` a pretraining checkpoint's run drew its masks with: the saved one, ``clip`` for this
    project's box-masked runs from before the flag (its default since is ``video``), None for a run that used no
    boxes (VideoMAE's and the MOFO release's ``--mask_type tube``)."""
    if trained.get("box_source") is not None:
        return trained["box_source"]
    used_boxes = trained.get("mask_type") == "motion" or (
        trained.get("mask_type") == "motion_guided" and trained.get("guided_base") == "box")
    return "clip" if used_boxes else None


def warn_settings_changed(trained: dict, args, names: tuple[str, ...]) -> None:
    """Name the flags among ``names`` that the resumed checkpoint's run set otherwise than this run (a
    resubmitted job whose script was edited since, or a --resume of another recipe): it goes on with this run's.
    A finished run (no epoch left) trains nothing with them, and says so: its rerun tests the old weights again
    (a requeue after a killed test, or on another GPU count, which rescales the lr and --update_freq)."""
    changed = [name for name in names if trained.get(name) is not None and name in vars(args)
               and trained[name] != getattr(args, name)]
    if not changed:
        return

    def flags(values, names=changed) -> str:
        return " ".join(f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}"
                        for name, value in zip(names, values, strict=True))

    scaled = " (lrs as scaled by the total batch)" if {"lr", "min_lr", "warmup_lr"} & set(changed) else ""
    if not is_main_process():
        return
    trains = [name for name in changed if name != "epochs"]
    if trains and args.start_epoch >= args.epochs:  # a finished run: nothing is trained with the new settings
        print(f"warning: {args.resume} finished all {args.start_epoch} epochs of a run with "
              f"{flags((trained[n] for n in trains), trains)}; this command's "
              f"{flags((getattr(args, n) for n in trains), trains)}{scaled} trains nothing: the finished run is "
              f"only tested again, if at all. A new --output_dir trains with them, --epochs above {args.start_epoch} "
              "trains on")
        return
    print(f"warning: resuming a run that used {flags(trained[n] for n in changed)}; this run goes on with "
          f"{flags(getattr(args, n) for n in changed)}{scaled}")


def read_log(output_dir) -> list[dict]:
    """The records of a run's ``log.txt``, one JSON object per epoch (a line a killed write cut short is left out)."""
    path = Path(output_dir) / "log.txt"
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                records.append(record)
    return records


def append_log(output_dir, record: dict) -> None:
    """One epoch's record appended to ``log.txt`` (main process). Written before that epoch's checkpoint, so that a
    checkpoint never lacks its line; :func:`trim_log` drops the lines a resumed run runs again."""
    if is_main_process():
        with open(Path(output_dir) / "log.txt", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def trim_log(output_dir, start_epoch: int) -> list[dict]:
    """Keep the ``log.txt`` records of the epochs before ``start_epoch`` (the ones a resumed run does not run again:
    a killed run may have logged an epoch whose checkpoint it did not write) and return them; rewritten atomically
    by the main process when that drops anything."""
    records = read_log(output_dir)
    kept = [record for record in records if record["epoch"] < start_epoch]
    path = Path(output_dir) / "log.txt"
    if is_main_process() and path.exists() and len(path.read_text(encoding="utf-8").splitlines()) != len(kept):
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
    return kept


def check_checkpoint_flags(args) -> None:
    """Checkpoint-frequency flags that cannot work, refused at the start rather than after the first epoch."""
    if args.save_ckpt_freq < 1:
        raise SystemExit(f"--save_ckpt_freq must be >= 1 (epochs between kept checkpoints), got "
                         f"{args.save_ckpt_freq}")
    if args.last_ckpt_freq < 0:
        raise SystemExit(f"--last_ckpt_freq must be >= 0 (0: no rolling checkpoint), got {args.last_ckpt_freq}")


def scale_lr_to_batch(args, total_batch: int) -> None:
    """VideoMAE's linear scaling: every lr flag is given for a total batch of 256."""
    for name in ("lr", "min_lr", "warmup_lr"):
        setattr(args, name, getattr(args, name) * total_batch / 256)


def check_warmup_fits(args) -> None:
    """Refuse ``--warmup_epochs`` beyond ``--epochs`` (the default 40 in a short test run) at startup, before the
    model, the data and a checkpoint load; a ``--warmup_steps`` is checked against the loader's steps later."""
    if not getattr(args, "eval", False) and args.warmup_steps <= 0 and args.warmup_epochs > args.epochs:
        raise SystemExit(f"error: --warmup_epochs {args.warmup_epochs} is longer than the run (--epochs "
                         f"{args.epochs}): lower --warmup_epochs (0 for a short test run) or raise --epochs")


def build_schedules(args, niter_per_ep: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step lr (warmup + cosine) and weight-decay (cosine) schedules."""
    lr_schedule = cosine_scheduler(args.lr, args.min_lr, args.epochs, niter_per_ep, args.warmup_epochs,
                                   args.warmup_lr, args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    return lr_schedule, cosine_scheduler(args.weight_decay, wd_end, args.epochs, niter_per_ep)


def create_optimizer(args, param_groups: list[dict]) -> torch.optim.Optimizer:
    """Any timm optimizer (``--opt``) over the parameter groups, with ``--opt_eps/--opt_betas/--momentum``. Adam and
    AdamW run PyTorch's fused kernel (one launch for all parameters instead of several per tensor) when every
    parameter is on a CUDA or CPU device."""
    from timm.optim import create_optimizer_v2

    kwargs = {"eps": args.opt_eps, "momentum": args.momentum}
    if args.opt_betas:
        kwargs["betas"] = tuple(args.opt_betas)
    devices = {p.device.type for group in param_groups for p in group["params"]}
    if args.opt.lower() in ("adam", "adamw") and devices <= {"cuda", "cpu"}:
        kwargs["fused"] = True
    return create_optimizer_v2(param_groups, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, **kwargs)


def deepspeed_config(args) -> dict:
    """DeepSpeed's config from the flags. With bf16 and ``--update_freq > 1`` the gradients are accumulated in fp32
    (``grad_accum_dtype``), which DeepSpeed supports from ZeRO stage 1 on; at stage 0 it would sum them in bf16, so
    that combination is refused."""
    accumulation = getattr(args, "update_freq", 1)
    config = {
        "train_micro_batch_size_per_gpu": args.batch_size * args.num_sample,
        "gradient_accumulation_steps": accumulation,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": args.zero_stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": args.clip_grad or 0.0,
        "fp16": {"enabled": args.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "bf16": {"enabled": args.precision == "bf16"},
    }
    if args.precision == "bf16" and accumulation > 1:
        if args.zero_stage == 0:
            raise SystemExit("--enable_deepspeed --precision bf16 --update_freq > 1 needs --zero_stage 1 or 2: at"
                             " stage 0 DeepSpeed accumulates the gradients in bf16 (or train with DDP, without"
                             " --enable_deepspeed)")
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def wrap_model(args, model: torch.nn.Module, optimizer, device: torch.device):
    """DeepSpeed engine (``--enable_deepspeed``) or DDP (when distributed) around the model.
    Returns (model, model_without_ddp, optimizer, loss_scaler); the scaler is None under DeepSpeed. ``--compile``
    compiles the model in place first (``nn.Module.compile``: state-dict keys and checkpoints stay the same)."""
    if args.compile:
        model.compile()
    if args.enable_deepspeed:
        import deepspeed

        model, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(args),
                                                      dist_init_required=not is_dist_avail_and_initialized())
        model.checkpoint_engine.load = load_deepspeed_file
        return model, model.module, optimizer, None
    model_without_ddp = model
    if args.distributed:
        # No device_ids: DDP then leaves the inputs where the engines put them (the MOFO model's box on the CPU).
        # No buffer needs syncing (fixed position tables, no BatchNorm): skip DDP's per-forward broadcast (torch
        # 2.13 renamed the switch and warns on the old name).
        ddp = torch.nn.parallel.DistributedDataParallel
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else "broadcast_buffers")
        model = ddp(model, **{no_sync: False})
    scaler = NativeScalerWithGradNormCount(enabled=args.precision == "fp16", device=device.type)
    return model, model_without_ddp, optimizer, scaler


def tensorboard_writer(args, steps_per_epoch: int) -> SummaryWriter | None:
    """The main process's writer to ``--log_dir`` (None without one). A resumed run purges the events a killed job
    wrote from its resume point on, so the epoch it runs again is not plotted twice."""
    if not args.log_dir or not is_main_process():
        return None
    return SummaryWriter(args.log_dir, purge_step=args.start_epoch * steps_per_epoch if args.start_epoch else None)


def seed_epoch(seed: int, epoch: int, rank: int, loader) -> None:
    """Make an epoch's randomness a function of (seed, epoch, rank) only, so a resumed run repeats an
    uninterrupted one: the distributed sampler's shuffle, the seed every (persistent) worker reseeds from when the
    epoch's first index reaches it (see :class:`EpochSeededDataset`), and the main process's python, numpy (timm's
    Mixup draws there) and torch (DropPath, dropout) generators. The seed is hashed from the three, so no two
    (seed, epoch, rank) share a stream (``--seed 1`` on rank 0 is not ``--seed 0`` on rank 1)."""
    epoch_seed = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    loader.sampler.sampler.set_epoch(epoch)
    loader.sampler.epoch_seed = epoch_seed
    random.seed(epoch_seed)
    np.random.seed(epoch_seed)
    torch.manual_seed(epoch_seed)


# ---------------------------------------------------------------- schedules and optimiser groups


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int, warmup_epochs: int = 0,
                     start_warmup_value: float = 0.0, warmup_steps: int = -1) -> np.ndarray:
    """Per-step values: linear warmup from start_warmup_value, then half-cosine from base_value to final_value."""
    warmup_iters = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    if warmup_iters > epochs * niter_per_ep:
        raise ValueError(f"the warmup ({warmup_iters} steps) is longer than the run ({epochs} epochs x {niter_per_ep} "
                         "steps): lower --warmup_epochs / --warmup_steps or raise --epochs")
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    steps = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float, skip: set[str] = frozenset(),
                              layer_id_fn=None, layer_scales: list[float] | None = None) -> list[dict]:
    """AdamW groups: no decay on biases, norms and 1-D parameters or names in ``skip`` (mask_token, pos_embed).
    With ``layer_id_fn``/``layer_scales`` each group also carries an ``lr_scale`` (layer-wise lr decay)."""
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name.endswith(".bias") or name in skip or name.split(".")[-1] in skip
        layer = layer_id_fn(name) if layer_id_fn else 0
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "decayed": not no_decay, "lr_scale": layer_scales[layer] if layer_scales else 1.0}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def apply_schedules(optimizer, lr: float, weight_decay: float | None) -> None:
    """Set this step's values (as Python floats, so optimizer state stays loadable with weights_only=True). Weight
    decay goes to the groups :func:`param_groups_weight_decay` marked ``decayed``, also while the schedule is at 0
    (``--weight_decay 0 --weight_decay_end 0.05``); groups from elsewhere count as decayed when theirs is above 0."""
    for group in optimizer.param_groups:
        group["lr"] = float(lr) * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("decayed", group["weight_decay"] > 0):
            group["weight_decay"] = float(weight_decay)


# ---------------------------------------------------------------- logging


class SmoothedValue:
    """Window median/average and global average of a series. Tensor values are kept as they are and read in one
    transfer when a statistic is asked for, so updating never waits for the device."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})"):
        self.deque: deque = deque(maxlen=window_size)
        self.total, self.count, self.fmt = 0.0, 0, fmt
        self._pending: list[tuple[torch.Tensor, int]] = []

    def update(self, value: float | torch.Tensor, n: int = 1) -> None:
        if isinstance(value, torch.Tensor):
            self._pending.append((value.detach().float().reshape(()), n))
            return
        self._add(float(value), n)

    def _add(self, value: float, n: int) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def _flush(self) -> None:
        if self._pending:
            values = torch.stack([value.to(self._pending[0][0].device) for value, _ in self._pending]).tolist()
            for value, (_, n) in zip(values, self._pending, strict=True):
                self._add(value, n)
            self._pending.clear()

    def synchronize_between_processes(self, device) -> None:
        self._flush()
        if is_dist_avail_and_initialized():
            t = torch.tensor([self.count, self.total], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            self.count, self.total = int(t[0].item()), t[1].item()

    @property
    def median(self) -> float:
        self._flush()
        return float(np.median(self.deque)) if self.deque else 0.0

    @property
    def avg(self) -> float:
        self._flush()
        return float(np.mean(self.deque)) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        self._flush()
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        self._flush()
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        self._flush()
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max,
                               value=self.value)


class MetricLogger:
    """Console progress every ``print_freq`` steps with smoothed meters, ETA, step and data-wait time."""

    def __init__(self, delimiter: str = "  "):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs) -> None:
        for k, v in kwargs.items():
            if v is None:
                continue
            self.meters[k].update(v)

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def synchronize_between_processes(self, device) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes(device)

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(self, iterable, print_freq: int, header: str = "", total: int | None = None):
        """Yield the items of ``iterable`` (the first ``total`` only, when given), printing progress."""
        start = end = time.time()
        step_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        self.add_meter("data_time", data_time)
        total = len(iterable) if total is None else total
        width = len(str(total))
        for i, obj in enumerate(itertools.islice(iterable, total)):  # stops without fetching an item more
            data_time.update(time.time() - end)
            yield obj
            step_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(step_time.global_avg * (total - i - 1)))
                print(f"{header} [{i:>{width}}/{total}] eta: {eta} {self} time: {step_time}", flush=True)
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        print(f"{header} total time: {elapsed} ({(time.time() - start) / max(total, 1):.4f} s / it)", flush=True)


# ---------------------------------------------------------------- checkpoints

# checkpoint-N: kept (every --save_ckpt_freq epochs and the last); checkpoint-last-N: the rolling one of
# --last_ckpt_freq, replaced by the next. Auto-resume takes the highest N of either.
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(?:last-)?(\d+)(\.pth)?$")
ROLLING_PATTERN = re.compile(r"checkpoint-last-\d+(\.pth)?(\.tmp)?$")  # with what a killed save left
KILLED_SAVE_PATTERN = re.compile(r"checkpoint-(?:last-\d+|\d+|best)\.pth\.tmp$")  # what a killed save_on_master left


def save_on_master(state: dict, path: str | Path) -> None:
    """torch.save to ``path.tmp``, flushed to disk, then renamed, on the main process: never a half-written
    checkpoint, also after a node crash (the rename and the data are both synced before the next epoch)."""
    if not is_main_process():
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_checkpoint_folder(folder: Path) -> None:
    """Every rank flushes all the DeepSpeed checkpoint folder's files to disk (an fsync writes out the dirty pages
    of the machine that calls it, and the shards of a multi-node run are written on several; one with none to
    write returns at once), then waits for the others: only then may ``latest`` name it, and the previous rolling
    folder go."""
    for path in folder.rglob("*"):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)
    if is_dist_avail_and_initialized():
        torch.distributed.barrier()


def plain_args(args) -> dict:
    """The run's flags as a plain dict, which ``torch.load(weights_only=True)`` reads back (unset flags as None, so
    a reader tells "not set" from "not saved")."""
    return {k: v for k, v in vars(args).items() if v is None or isinstance(v, (int, float, str, bool, list, tuple))}


def checkpoint_state(model_without_ddp, optimizer, loss_scaler, epoch: int, args, model_ema=None) -> dict:
    """Everything to resume, in types that ``torch.load(weights_only=True)`` accepts (args as a plain dict); with
    ``model_ema``, its weights under ``model_ema`` (VideoMAE's key). ``scaler`` only where there is a loss scale
    (fp16): VideoMAE's resume loads any ``scaler`` it finds, and a GradScaler refuses the empty state of a disabled
    one."""
    state = {"model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
    scaler = loss_scaler.state_dict() if loss_scaler is not None else {}
    if scaler:
        state["scaler"] = scaler
    state["args"] = plain_args(args)
    if model_ema is not None:
        state["model_ema"] = model_ema.module.state_dict()
    return state


def save_model(args, epoch: int, model, model_without_ddp, optimizer, loss_scaler, tag: str | None = None,
               model_ema=None) -> None:
    """``{tag}.pth`` (DDP / single process) or DeepSpeed's ``{tag}/`` folder (the EMA weights in its client state,
    as VideoMAE); ``tag`` defaults to ``checkpoint-{epoch}``. Only names of ``CHECKPOINT_PATTERN`` become what
    auto-resume picks: ``checkpoint-best`` never does."""
    name = tag or f"checkpoint-{epoch}"
    if getattr(args, "enable_deepspeed", False):
        client_state = {"epoch": epoch, "args": plain_args(args)}
        if model_ema is not None:
            client_state["model_ema"] = model_ema.module.state_dict()
        save_deepspeed_folder(model, Path(args.output_dir), name, client_state)
        if CHECKPOINT_PATTERN.match(name) and is_main_process():
            atomic_write_text(Path(args.output_dir) / "latest", name)
            fsync_path(args.output_dir)
    else:
        save_on_master(checkpoint_state(model_without_ddp, optimizer, loss_scaler, epoch, args, model_ema),
                       Path(args.output_dir) / f"{name}.pth")


def save_deepspeed_folder(engine, output_dir: Path, name: str, client_state: dict) -> None:
    """DeepSpeed's ``name/`` folder, complete on every rank when this returns. One that exists already (
    ``checkpoint-best`` after a better epoch) is replaced only once the new one is complete: DeepSpeed writes its
    files in place, so the new one is written as ``name.tmp/`` and renamed over it; a job killed meanwhile keeps
    the old one. Rank 0 decides and renames (the folder is on a shared file system, as DeepSpeed's ``latest``)."""
    folder, staging = output_dir / name, output_dir / f"{name}.tmp"
    replacing = [folder.exists()]
    if is_dist_avail_and_initialized():
        torch.distributed.broadcast_object_list(replacing, src=0)
    if replacing[0] and is_main_process():
        shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
    if replacing[0] and is_dist_avail_and_initialized():
        torch.distributed.barrier()
    written = staging if replacing[0] else folder
    engine.save_checkpoint(str(output_dir), tag=written.name, client_state=client_state, save_latest=False)
    fsync_checkpoint_folder(written)
    if not replacing[0]:
        return
    if is_main_process():
        old = output_dir / f"{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(staging, folder)
        fsync_path(output_dir)
        shutil.rmtree(old)
    if is_dist_avail_and_initialized():
        torch.distributed.barrier()


def save_epoch_checkpoint(args, epoch: int, model, model_without_ddp, optimizer, loss_scaler,
                          model_ema=None) -> None:
    """After ``epoch``: the kept ``checkpoint-{epoch}`` every ``--save_ckpt_freq`` epochs and after the last, else
    the rolling ``checkpoint-last-{epoch}`` every ``--last_ckpt_freq`` epochs (0: never). Once it is complete the
    older rolling ones are removed, so a killed job loses at most ``--last_ckpt_freq`` epochs for the disk of one
    more checkpoint (two while a new one is written), and so are the ``.tmp`` files of saves a killed job left."""
    done = epoch + 1
    if done % args.save_ckpt_freq == 0 or done == args.epochs:
        tag = f"checkpoint-{epoch}"
    elif args.last_ckpt_freq > 0 and done % args.last_ckpt_freq == 0:
        tag = f"checkpoint-last-{epoch}"
    else:
        return
    save_model(args, epoch, model, model_without_ddp, optimizer, loss_scaler, tag=tag, model_ema=model_ema)
    if not is_main_process():
        return
    print(f"Saved {Path(args.output_dir) / tag}{'' if getattr(args, 'enable_deepspeed', False) else '.pth'}")
    for path in Path(args.output_dir).glob("checkpoint-*"):
        if ROLLING_PATTERN.match(path.name) and path.name not in (tag, f"{tag}.pth"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        elif KILLED_SAVE_PATTERN.match(path.name):  # this process is the folder's one writer, and it is done
            path.unlink()


def latest_checkpoint(output_dir: str | Path, deepspeed: bool) -> Path | None:
    """Newest complete checkpoint: ``checkpoint-N.pth`` files (complete by construction: renamed when written), or
    the DeepSpeed folder named by its ``latest`` file (written atomically once every rank has written its files)."""
    output_dir = Path(output_dir)
    if deepspeed:
        latest = output_dir / "latest"
        if not latest.exists():
            return None
        name = latest.read_text().strip()
        if not name or not (output_dir / name).is_dir():
            raise FileNotFoundError(f"{latest} names {name!r}, which is not a checkpoint folder of {output_dir};"
                                    " pass a complete one with --resume")
        if CHECKPOINT_PATTERN.match(name):
            return output_dir / name
        numbered = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
                    if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
        if not numbered:  # VideoMAE's save_model moves latest to checkpoint-best, which has no epoch to resume
            raise FileNotFoundError(f"{latest} names {name!r}, and {output_dir} has no checkpoint-N folder to resume")
        print(f"{latest} names {name!r}: taking the newest numbered checkpoint, {max(numbered)[1].name}")
        return max(numbered)[1]
    newest = checkpoint_files_newest_first(output_dir)
    return newest[0] if newest else None


def checkpoint_files_newest_first(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N.pth`` and ``checkpoint-last-N.pth`` files of a run folder, highest N first."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*.pth")
             if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that torch.load cannot read at all (truncated, emptied, not a torch.save file)."""


def load_checkpoint_file(path: str | Path, map_location="cpu", allowed: tuple = (), mmap: bool = False) -> dict:
    """Checkpoints from anywhere are read with weights_only=True (no arbitrary code from pickles). The one class
    allowed besides tensors and plain containers (and ``allowed``) is ``argparse.Namespace``: VideoMAE's and the
    MOFO release's ``save_model`` store their ``args`` as one, so their released checkpoints load as they are.

    A Hugging Face VideoMAE file (``model.safetensors``, a ``*.safetensors.index.json`` of shards, or
    ``pytorch_model.bin``) comes back as a VideoMAE checkpoint: ``{"model": VideoMAE's keys, "args": its
    config.json's settings}`` (:func:`hf_videomae.read_checkpoint`)."""
    path = Path(path)
    if path.name.endswith((".safetensors", ".safetensors.index.json")):
        return hf_videomae.read_checkpoint(hf_videomae.read_safetensors(path), path)
    with torch.serialization.safe_globals([argparse.Namespace, *allowed]):
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", str(e), re.S)
            reason = " ".join((found.group(1) if found else str(e)).split())
            raise pickle.UnpicklingError(
                f"{path}: refused by torch.load(weights_only=True), which runs no code from the file: {reason} (not a "
                "torch.save checkpoint, or one that pickles objects other than tensors and plain containers)") from None
        except OSError:  # not found, a folder, no permission: the error names the file
            raise
        except Exception as e:  # a truncated or empty file, or no torch.save file at all: EOFError, RuntimeError, ...
            raise UnreadableCheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch.save "
                                            f"file?): {type(e).__name__}: {e}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint (a dict of weights)")
    if hf_videomae.is_hf_state(checkpoint):
        return hf_videomae.read_checkpoint(checkpoint, path)
    return checkpoint


def load_deepspeed_file(path: str, map_location=None) -> dict:
    """DeepSpeed's checkpoint engine reads with weights_only=False; the engines of ``wrap_model`` read through
    this instead: weights_only=True, allowing the DeepSpeed classes its ZeRO optimizer shards hold (the loss
    scaler, the stage, the parameter fragments' addresses)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return load_checkpoint_file(path, map_location, (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address))


def check_no_other_kind(output_dir: str | Path, deepspeed: bool) -> None:
    """A run folder whose checkpoints were saved with DeepSpeed on (folders) or off (files), the other way from this
    run, is refused: resuming cannot read them, and starting again would overwrite the run's log and delete its
    rolling checkpoint."""
    try:
        other = latest_checkpoint(output_dir, not deepspeed)
    except FileNotFoundError:  # a DeepSpeed ``latest`` naming nothing usable: nothing to resume either
        return
    if other is not None:
        saved, now = ("with", "without") if not deepspeed else ("without", "with")
        raise SystemExit(f"{output_dir} holds {other.name}, saved {saved} --enable_deepspeed, and this run is "
                         f"{now} it: resume it as it was saved, or start in another --output_dir")


def check_fresh_start(output_dir: str | Path) -> None:
    """A fresh start (``--no_auto_resume``, no ``--resume``) in a folder holding an earlier run's checkpoints is
    refused: the new run would overwrite only some of them, and its next resume would go on from the earlier run's
    newest instead of its own."""
    for deepspeed in (False, True):
        try:
            found = latest_checkpoint(output_dir, deepspeed)
        except FileNotFoundError:
            continue
        if found is not None:
            raise SystemExit(f"{output_dir} holds {found.name} of an earlier run and --no_auto_resume starts afresh: a "
                             "resumed job would go on from the earlier run's checkpoints; remove them or start in "
                             "another --output_dir")


def warn_going_back(resume: str, output_dir: str, deepspeed: bool) -> None:
    """``--no_auto_resume --resume`` of an older checkpoint of the run's own folder goes back to it: say what that
    overwrites and that a requeued job with the same command goes back again."""
    try:
        found = latest_checkpoint(output_dir, deepspeed)
    except FileNotFoundError:
        return
    if found is not None and Path(output_dir).resolve() in Path(resume).resolve().parents and (
            Path(resume).resolve() != found.resolve()):
        print(f"warning: --no_auto_resume --resume {resume} goes back from {found.name}, the newest checkpoint in "
              f"{output_dir}: the newer ones are overwritten as the run reaches their epochs, and a requeued job "
              "with this command goes back to it again")


def auto_load_model(args, model, model_without_ddp, optimizer, loss_scaler, model_ema=None,
                    run_settings: tuple[str, ...] = ()) -> dict:
    """Resume from ``--resume`` or, with ``--auto_resume``, from the newest checkpoint in ``--output_dir``; that one
    wins over any other ``--resume`` (a released checkpoint to start from, or an older one of the run's), so a
    resubmitted or requeued job continues instead of starting again or going back (``--eval`` tests its
    ``--resume``; ``--no_auto_resume`` trains from it); where that file cannot be read (damaged on disk), the next
    older one of the run's is taken, with a warning (DeepSpeed folders: no fallback). Sets ``args.start_epoch``.
    ``model_ema`` takes the checkpoint's EMA weights, or the model's when it has none (a checkpoint written without
    ``--model_ema``). A run that goes on (not weights only, which start a new run, nor ``--eval``) names the flags
    among ``run_settings`` it saved otherwise (:func:`warn_settings_changed`). Returns the resumed run's saved flags
    (empty when nothing was resumed)."""
    deepspeed = getattr(args, "enable_deepspeed", False)
    own = False
    if args.auto_resume and args.output_dir:
        try:
            found = latest_checkpoint(args.output_dir, deepspeed)
        except FileNotFoundError as e:
            if not args.resume:
                raise
            print(f"warning: {e}; taking --resume {args.resume}")
            found = None
        if found is None and not args.resume:
            check_no_other_kind(args.output_dir, deepspeed)
        testing = getattr(args, "eval", False) and args.resume  # --eval --resume OUT/checkpoint-best.pth
        if found and not testing and (not args.resume or Path(args.resume).resolve() != found.resolve()):
            if args.resume:
                print(f"--resume {args.resume} not taken: {args.output_dir} holds this run's own newest checkpoint, "
                      f"{found.name}, and a requeued job must go on from there, not back (--no_auto_resume takes "
                      "--resume)")
            args.resume, own = str(found), True
    elif args.resume and args.output_dir and not getattr(args, "eval", False):
        warn_going_back(args.resume, args.output_dir, deepspeed)
    if not args.resume:
        if args.output_dir and not args.auto_resume and not getattr(args, "eval", False):
            check_fresh_start(args.output_dir)
        return {}
    fallbacks = checkpoint_files_newest_first(args.output_dir)[1:] if own and not deepspeed else []
    while True:
        print(f"Resume checkpoint {args.resume}")
        try:  # an unreadable file fails before anything is loaded into the model or optimizer
            trained, goes_on = _load_resume_checkpoint(args, model, model_without_ddp, optimizer, loss_scaler,
                                                       model_ema, deepspeed)
            break
        except UnreadableCheckpointError as e:
            if not fallbacks:
                raise ValueError(f"{args.resume}: cannot resume from it: {e}") from e
            print(f"warning: {e}; resuming from the run's next older checkpoint, {fallbacks[0].name}")
            args.resume = str(fallbacks.pop(0))
        except (RuntimeError, KeyError, TypeError, ValueError) as e:  # keys, shapes or parameter groups that do not fit
            raise ValueError(f"{args.resume}: cannot resume from it: {e}") from e
    if args.start_epoch >= args.epochs and not getattr(args, "eval", False):
        if not own:
            raise SystemExit(f"{args.resume}: saved after epoch {args.start_epoch - 1}, and --epochs {args.epochs} is "
                             f"the total, not more epochs: pass --epochs above {args.start_epoch} to train on")
        print(f"{args.resume}: trained for all {args.epochs} epochs already")
    if goes_on:
        warn_settings_changed(trained, args, run_settings)
    return trained


def _load_resume_checkpoint(args, model, model_without_ddp, optimizer, loss_scaler, model_ema,
                            deepspeed: bool) -> tuple[dict, bool]:
    """Load ``args.resume`` into the model and EMA and, unless ``--eval``, the optimizer and scaler, setting
    ``args.start_epoch`` from it; returns the run's saved flags and whether its run goes on (False for ``--eval``
    and for weights only: a new run from them)."""
    testing = getattr(args, "eval", False)
    resolved = resolve_checkpoint(args.resume)
    if deepspeed and resolved.name.startswith("mp_rank_"):  # a DeepSpeed tag folder, or a run folder's newest
        from deepspeed.runtime.zero.utils import ZeRORuntimeException

        path = resolved.parent
        try:
            with this_runs_group_settings(None if testing else optimizer):
                loaded, client_state = model.load_checkpoint(str(path.parent), tag=path.name,
                                                             load_optimizer_states=not testing,
                                                             load_lr_scheduler_states=not testing)
        except ZeRORuntimeException as e:  # ZeRO's optimizer shards are per rank: another world size cannot read them
            raise ValueError(f"{e} Resume it with as many processes as saved it (ZeRO stage 0's checkpoints resume "
                             "with any number)") from None
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            saved = load_checkpoint_file(resolved)  # weights of another model: named as for a checkpoint file
            raise ValueError(weights_misfit(model_without_ddp.state_dict(), saved.get("module") or {},
                                            saved_args(saved), args)) from None
        if loaded is None:
            raise FileNotFoundError(f"{path}: not a DeepSpeed checkpoint folder (expected {path}/mp_rank_00_*.pt)")
        if model_ema is not None:
            model_ema.module.load_state_dict(client_state.get("model_ema") or model_without_ddp.state_dict())
        if not testing:
            check_same_optimizer(saved_args(client_state), args)
            args.start_epoch = resumed_epoch(client_state, path) + 1
        return saved_args(client_state), not testing
    checkpoint = load_checkpoint_file(resolved)
    if not isinstance(checkpoint.get("model"), dict):
        if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            checkpoint = {"model": checkpoint}  # a bare state dict (zero_to_fp32.py's): weights only
        elif isinstance(checkpoint.get("module"), dict):
            raise ValueError(f"{resolved} is a DeepSpeed checkpoint (its weights under 'module'): resume it with "
                             "--enable_deepspeed, or start from its weights (fine-tuning: --finetune; pretraining: "
                             "its weights alone as --resume in a new --output_dir)")
        else:
            raise ValueError(f"{resolved}: no 'model' weights to resume (its keys: {sorted(checkpoint)[:8]})")
    other_stage = other_stage_checkpoint(model_without_ddp.state_dict(), checkpoint.get("model", {}))
    if other_stage:
        raise ValueError(other_stage)
    try:
        model_without_ddp.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise ValueError(weights_misfit(model_without_ddp.state_dict(), checkpoint["model"], saved_args(checkpoint),
                                        args)) from None
    refresh_master_weights = getattr(getattr(model, "optimizer", None), "refresh_fp32_params", None)
    if deepspeed and refresh_master_weights is not None:  # its fp32 copies (ZeRO, bf16) were made from the old ones
        refresh_master_weights()
    if model_ema is not None:
        model_ema.module.load_state_dict(checkpoint.get("model_ema") or checkpoint["model"])
    if testing:  # VideoMAE's checkpoint-best (epoch "best") is tested as any other
        return saved_args(checkpoint), False
    if deepspeed and "optimizer" in checkpoint:  # a DDP run's: its optimizer state is not DeepSpeed's
        print(f"{args.resume}: not a DeepSpeed checkpoint: only its weights are loaded, and training starts at "
              f"epoch {args.start_epoch} with a fresh optimizer")
        return saved_args(checkpoint), False
    if "optimizer" not in checkpoint or "epoch" not in checkpoint:
        print(f"{args.resume}: weights only (no optimizer state or epoch): training starts at epoch "
              f"{args.start_epoch} with a fresh optimizer")
        return saved_args(checkpoint), False
    check_same_optimizer(saved_args(checkpoint), args)
    with this_runs_group_settings(optimizer):
        optimizer.load_state_dict(checkpoint["optimizer"])
    args.start_epoch = resumed_epoch(checkpoint, args.resume) + 1
    if loss_scaler is not None and checkpoint.get("scaler"):
        loss_scaler.load_state_dict(checkpoint["scaler"])
    return saved_args(checkpoint), True


# The saved flags that shape a model's weights: a resume whose weights do not fit names those its command changed.
MODEL_SHAPE_SETTINGS = ("model", "nb_classes", "nb_verbs", "nb_nouns", "decoder_depth", "target", "tubelet_size",
                        "num_frames", "input_size", "use_mean_pooling", "use_learnable_pos_emb", "trajectory_points",
                        "mca_mode", "mca_depth", "mca_heads")


def saved_model_flags(trained: dict) -> str:
    """``--model X --nb_classes N`` (EPIC: ``--nb_verbs``/``--nb_nouns``) as the checkpoint's run saved them, for
    hints."""
    heads = ("nb_verbs", "nb_nouns") if trained.get("data_set") == "EPIC-KITCHENS-100" else ("nb_classes",)
    return " ".join(f"--{key} {trained[key]}" for key in ("model", *heads) if trained.get(key) is not None)


def weights_difference(own: dict, state: dict) -> str:
    """Counts and a first example of a state dict's weights missing from a model's (``own``), left over and of
    another shape, in one line (torch's error lists them all)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    return "; ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in (
        (missing, "of the model's weights are not in it"), (unexpected, "of its weights have no place in the model"),
        (shapes, "weights are another shape")) if keys)


def weights_misfit(own: dict, state: dict, trained: dict, args) -> str:
    """Why a checkpoint's weights do not fit this command's model, in one line: :func:`weights_difference` and the
    saved flags of :data:`MODEL_SHAPE_SETTINGS` this command changed (else the saved --model and head sizes)."""
    differing = [key for key in MODEL_SHAPE_SETTINGS if trained.get(key) is not None and key in vars(args)
                 and trained[key] != getattr(args, key)]
    saved = (" ".join(f"--{key} {trained[key]}" for key in differing) if differing else saved_model_flags(trained))
    hint = (f"it was saved by a run with {saved}: pass the same to go on with it, or use a new --output_dir for "
            "another model" if saved else "a checkpoint of another --model")
    return f"its weights do not fit --model {getattr(args, 'model', '?')}: {weights_difference(own, state)}; {hint}"


@contextlib.contextmanager
def this_runs_group_settings(optimizer):
    """Load optimizer state inside this block and keep this run's parameter-group settings: torch replaces them with
    the saved ones, so a resumed run would go on with the old ``--layer_decay`` scales, ``--opt_betas``,
    ``--opt_eps`` and ``--momentum`` whatever its flags say (lr and weight decay are set again every step). A
    group's ``step`` (timm's Lamb counts there) is state, and stays the loaded one."""
    if optimizer is None:
        yield
        return
    settings = [{key: value for key, value in group.items() if key not in ("params", "step")}
                for group in optimizer.param_groups]
    yield
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)


def set_aside_abandoned_best(output_dir: str | Path, start_epoch: int) -> None:
    """A ``checkpoint-best`` saved in an epoch that this resume trains again (the job was killed after it, before
    that epoch's own checkpoint) holds weights the rerun throws away, and its accuracy has left log.txt: kept, it
    would stay the best whenever the rerun scores lower. It is renamed ``abandoned-best-epoch{N}``, with a warning,
    so the rerun writes a new one."""
    if not output_dir or not is_main_process():
        return
    for best in (Path(output_dir) / "checkpoint-best.pth", Path(output_dir) / "checkpoint-best"):
        if not best.exists():
            continue
        try:
            epoch = load_checkpoint_file(resolve_checkpoint(best), mmap=True).get("epoch")
        except (OSError, ValueError, pickle.UnpicklingError) as e:
            print(f"warning: {best}: cannot read its epoch ({e}); kept as it is")
            continue
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < start_epoch:
            continue
        aside = best.with_name(f"abandoned-best-epoch{epoch}{best.suffix}")
        if aside.is_dir():
            shutil.rmtree(aside)
        os.replace(best, aside)
        print(f"warning: {best.name} is from epoch {epoch}, which this run trains again: moved to {aside} (its "
              "accuracy is no longer in log.txt); the rerun writes a new one")


def check_same_optimizer(trained: dict, args) -> None:
    """ValueError when the checkpoint's run used another ``--opt``: its moments are not this optimizer's state."""
    saved, now = trained.get("opt"), getattr(args, "opt", None)
    if saved and now and saved.lower() != now.lower():
        raise ValueError(f"its run used --opt {saved}, this one --opt {now}, whose state it does not hold: resume with "
                         f"--opt {saved}, or start a new run from its weights (fine-tuning: --finetune; pretraining: "
                         "its weights alone as --resume in a new --output_dir)")


def other_stage_checkpoint(model_state: dict, state: dict) -> str | None:
    """Why ``state`` cannot resume this model where it is the other stage's (a pretraining checkpoint has a decoder,
    a fine-tuning one has none), instead of a hundred missing and unexpected keys; None otherwise."""
    def has_decoder(keys) -> bool:
        return any(key.removeprefix("module.").startswith("decoder.") for key in keys)

    if not state or has_decoder(model_state) == has_decoder(state):
        return None
    if has_decoder(state):
        return "a pretraining checkpoint (encoder and decoder): fine-tuning starts from one with --finetune"
    return "a fine-tuning checkpoint (no decoder): pretraining resumes only from a pretraining run's checkpoint"


def resumed_epoch(checkpoint: dict, path) -> int:
    """The epoch a checkpoint was saved after; a ValueError for VideoMAE's ``checkpoint-best`` (epoch "best")."""
    epoch = checkpoint.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise ValueError(f"{path}: its epoch is {epoch!r}, not a number (VideoMAE's checkpoint-best): resume from "
                         "a checkpoint-N, or start from these weights (fine-tuning: --finetune; pretraining: as "
                         "--resume in a new --output_dir)")
    return epoch


def resolve_checkpoint(path: str | Path, report: bool = True) -> Path:
    """The file to read for a checkpoint file, a DeepSpeed checkpoint folder (``latest`` names the tag, whose
    ``mp_rank_00_model_states.pt`` holds ``module``), a run's output folder (its newest checkpoint, as
    auto-resume picks it, named when ``report``) or a Hugging Face model folder (its weights file,
    :data:`hf_videomae.WEIGHT_FILES`)."""
    path = Path(path)
    hf_files = [path / name for name in hf_videomae.WEIGHT_FILES if path.is_dir() and (path / name).is_file()]
    if hf_files:
        return hf_files[0]
    if path.is_dir() and not (path / "mp_rank_00_model_states.pt").exists():
        found = latest_checkpoint(path, deepspeed=(path / "latest").exists())
        if found is None:
            raise FileNotFoundError(f"{path}: a folder without checkpoints (checkpoint-N.pth or DeepSpeed's latest)")
        if report:
            print(f"{path}: newest checkpoint {found.name}")
        path = found
    if path.is_dir():
        path = path / "mp_rank_00_model_states.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return path


def model_state(checkpoint: dict, path: str | Path, model_key: str = "model|module") -> dict:
    """The state dict under the first of ``model_key``'s keys present, or the checkpoint itself when it is one."""
    for key in model_key.split("|"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            print(f"Load state dict by model_key = {key}")
            return checkpoint[key]
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(f"{path}: none of the keys {model_key!r} holds a state dict (has: {sorted(checkpoint)[:8]})")


def saved_args(checkpoint: dict) -> dict:
    """The run's flags saved with a checkpoint: a plain dict (ours), or an argparse Namespace (VideoMAE's)."""
    saved = checkpoint.get("args") or {}
    if isinstance(saved, argparse.Namespace):
        return dict(vars(saved))
    return dict(saved) if isinstance(saved, dict) else {}


def read_model_and_args(path: str | Path, model_key: str = "model|module",
                        resolved: Path | None = None) -> tuple[dict, dict]:
    """A model state dict (:func:`model_state`) and the run's saved flags (:func:`saved_args`) from any checkpoint
    :func:`resolve_checkpoint` takes, or from ``resolved``, the file it named for ``path`` before (a run folder's
    newest changes while its run goes on). A run folder's newest checkpoint from before the run's last epoch (a run
    still going, or stopped) is reported."""
    resolved = resolve_checkpoint(path) if resolved is None else resolved
    checkpoint = load_checkpoint_file(resolved)
    args = saved_args(checkpoint)
    epochs, epoch = args.get("epochs"), checkpoint.get("epoch")
    if resolved != Path(path) and isinstance(epoch, int) and isinstance(epochs, int) and epoch + 1 < epochs:
        print(f"warning: {resolved} is from epoch {epoch} of a run of {epochs} epochs, not its last")
    return model_state(checkpoint, resolved, model_key), args


def encoder_state(state: dict) -> dict:
    """Fine-tuning weights from any of our checkpoint kinds: drops DDP's ``module.``, keeps a pretraining
    checkpoint's encoder (``encoder.``/``backbone.`` prefixes removed; decoder, ``encoder_to_decoder`` and
    ``mask_token`` dropped), renames a MOFO release head (:func:`release_mca_state`)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for prefix in ("encoder.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return release_mca_state(state) if is_release_mca_state(state) else state


# The MOFO release's fine-tuning head (VisionTransformer_BB_focused, fusing_method MCA) in this codebase's terms.
RELEASE_MCA_SETTINGS = {"mca_mode": "inner", "mca_depth": 1, "mca_heads": 3, "mca_pool": "inside",
                        "mca_tokens": "overlap"}
RELEASE_UNUSED_PREFIXES = ("global_MCA.", "patch_yab.", "soft_att_local.", "soft_att_global.")


def is_release_mca_state(state: dict) -> bool:
    return any(key.removeprefix("module.").startswith("local_MCA.") for key in state)


def release_mca_state(state: dict) -> dict:
    """A MOFO release fine-tuned state dict with its head renamed to this codebase's: ``local_MCA.N`` becomes
    ``mca.N.inner`` (its separate ``attn.q`` and ``attn.kv`` weights one ``attn.qkv``), and the weights its MCA mode
    never used (``global_MCA``, the box-counting ``patch_yab`` convolution, ``soft_att_*``) are dropped. The model
    must be built with :data:`RELEASE_MCA_SETTINGS`."""
    converted = {}
    for key, value in state.items():
        if key.startswith(RELEASE_UNUSED_PREFIXES):
            continue
        if not key.startswith("local_MCA."):
            converted[key] = value
            continue
        layer, rest = key.removeprefix("local_MCA.").split(".", 1)
        if rest == "attn.kv.weight":
            continue
        if rest == "attn.q.weight":
            rest, value = "attn.qkv.weight", torch.cat([value, state[f"local_MCA.{layer}.attn.kv.weight"]])
        converted[f"mca.{layer}.inner.{rest}"] = value
    return converted


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int, int],
                          old_grid: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Resize a learned (1, N, C) position table to the (T', H', W') token grid: bicubic in space per time slice
    (as VideoMAE), linear in time. The old grid is ``old_grid`` (from the checkpoint's saved clip settings) when it
    fits N; else a square-sided split of N with the new frames, else with the new spatial size (taken as only the
    frames changed: 8 x 14 x 14 to 4 x 14 x 14), else the only one; a ValueError when N still fits several."""
    _, num_old, dim = pos_embed.shape
    if old_grid is not None and math.prod(old_grid) == num_old and old_grid[1] == old_grid[2]:
        t_old = old_grid[0]
    else:
        candidates = [t for t in range(1, num_old + 1)
                      if num_old % t == 0 and math.isqrt(num_old // t) ** 2 == num_old // t]
        preferred = ([t for t in candidates if t == grid[0]] or
                     [t for t in candidates if num_old // t == grid[1] * grid[2]] or
                     (candidates if len(candidates) == 1 else []))
        if not preferred:
            splits = ", ".join(f"{t} x {math.isqrt(num_old // t)}^2" for t in candidates)
            raise ValueError(f"a learned position table of {num_old} tokens fits several grids ({splits}); a "
                             "checkpoint saved with its num_frames and input_size says which")
        t_old = preferred[0]
    side = math.isqrt(num_old // t_old)
    table = pos_embed.float().reshape(t_old, side, side, dim).permute(0, 3, 1, 2)  # (T, C, S, S)
    if (side, side) != tuple(grid[1:]):
        table = torch.nn.functional.interpolate(table, size=grid[1:], mode="bicubic", align_corners=False)
    if t_old != grid[0]:
        flat = table.permute(1, 2, 3, 0).reshape(1, -1, t_old)  # (1, C*H*W, T)
        flat = torch.nn.functional.interpolate(flat, size=grid[0], mode="linear", align_corners=False)
        table = flat.reshape(dim, grid[1], grid[2], grid[0]).permute(3, 0, 1, 2)
    return table.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)


def saved_token_grid(trained: dict, state: dict) -> tuple[int, int, int] | None:
    """The token grid a checkpoint was trained on, from its saved ``num_frames`` (times a fine-tuning run's
    ``num_segments``)/``input_size`` and its patch embedding's kernel (None when it does not say)."""
    kernel = state.get("patch_embed.proj.weight")
    frames, size = trained.get("num_frames"), trained.get("input_size")
    if kernel is None or not isinstance(frames, int) or not isinstance(size, int):
        return None
    frames *= trained.get("num_segments") or 1
    tubelet, patch = kernel.shape[2], kernel.shape[3]
    return frames // tubelet, size // patch, size // patch


class IncompleteCheckpointError(ValueError):
    """A checkpoint given to test (``--eval``) lacks weights of the model or has weights it has no place for;
    ``has_classifier``: whether it has a classifier head (of any size)."""

    def __init__(self, message: str, has_classifier: bool):
        super().__init__(message)
        self.has_classifier = has_classifier


def check_head_settings(model: torch.nn.Module, trained: dict, path: str | Path) -> None:
    """ValueError when the checkpoint's saved MOFO head settings are not the model's: ``mca_heads`` and
    ``mca_tokens`` leave no trace in the weights, so a strict load would test another head without a word."""
    settings = model.mca_settings() if hasattr(model, "mca_settings") else None
    if settings is None:
        return
    if "mca_heads" in trained and trained["mca_heads"] is None:  # the encoder's head count
        trained = {**trained, "mca_heads": model.blocks[0].attn.num_heads}
    differing = {key: trained[key] for key in settings if trained.get(key) not in (None, settings[key])}
    if differing:
        raise ValueError(f"{path} was trained with " + " ".join(f"--{k} {v}" for k, v in differing.items())
                         + ": --eval it with the same head")


def load_finetune_checkpoint(model: torch.nn.Module, path: str | Path, model_key: str = "model|module",
                             model_prefix: str = "", require_all: bool = False, resolved: Path | None = None) -> dict:
    """Initialise a fine-tuning model from a pretraining, fine-tuned, DeepSpeed, MOFO release or own checkpoint
    (``--finetune``); with ``model_prefix`` (VideoMAE's ``--model_prefix``) only from the keys under that prefix, the
    prefix removed.

    A classifier head of another size is dropped; a learned position table of another grid is interpolated (fixed
    sinusoid tables are rebuilt by the model and need nothing); missing and unexpected keys are printed. With
    ``require_all`` (``--eval``: these weights are what is tested, in the model they were trained in) a ValueError
    is raised for a model weight missing from the checkpoint, a checkpoint weight the model has no place for, and
    MOFO head settings other than the saved ones (``mca_heads`` and ``mca_tokens`` leave no trace in the weights).
    ``resolved``: the file :func:`resolve_checkpoint` named for ``path`` before (:func:`read_model_and_args`).
    Returns the checkpoint's saved flags.
    """
    raw, trained = read_model_and_args(path, model_key, resolved)
    state = encoder_state(raw)
    settings = model.mca_settings() if hasattr(model, "mca_settings") else None
    if require_all:
        check_head_settings(model, trained, path)
    if is_release_mca_state(raw):
        flags = " ".join(f"--{key} {value}" for key, value in RELEASE_MCA_SETTINGS.items())
        if settings == RELEASE_MCA_SETTINGS:
            print(f"{path}: the MOFO release's head, renamed (local_MCA -> mca.N.inner; its unused global_MCA, "
                  "patch_yab and soft_att_* dropped)")
        elif require_all:
            raise ValueError(f"{path} holds the MOFO release's head: --eval it with a *_mofo model and {flags}")
        else:
            state = {k: v for k, v in state.items() if not k.startswith("mca.")}
            print(f"{path}: the MOFO release's head does not fit this model's ({settings or 'none'}; it needs "
                  f"{flags}): only its encoder and classifier are loaded")
    if model_prefix:  # after the wrapper prefixes, as VideoMAE applies it, else on the file's own keys
        # (--model_prefix module. on a DDP file); what is under it may itself be wrapped (teacher.encoder.)
        under = {k[len(model_prefix):]: v for k, v in state.items() if k.startswith(model_prefix)}
        if not under:
            under = {k[len(model_prefix):]: v for k, v in raw.items() if k.startswith(model_prefix)}
        state = encoder_state(under)
        if not state.keys() & model.state_dict().keys():
            raise ValueError(f"{path}: no weights of {type(model).__name__} under --model_prefix {model_prefix!r}")
    grid, own_grid = saved_token_grid(trained, state), tuple(model.patch_embed.grid_size)
    if require_all and grid is not None and grid != own_grid:  # fixed sinusoid tables fit any grid: it runs
        print(f"warning: {path} was trained on clips of {grid[0]} x {grid[1]} x {grid[2]} tokens (its --num_frames "
              f"{trained['num_frames']} --input_size {trained['input_size']}), tested here on {own_grid[0]} x "
              f"{own_grid[1]} x {own_grid[2]}")
    low_precision = sorted({str(v.dtype) for v in state.values() if v.is_floating_point() and v.dtype != torch.float32})
    if low_precision:
        print(f"Warning: {path} holds {', '.join(low_precision)} weights (e.g. a DeepSpeed bf16/fp16 run); the model "
              "starts from these rounded values. A ZeRO run's (--zero_stage 1 or 2) fp32 master weights come from "
              "DeepSpeed's zero_to_fp32.py on its folder; --zero_stage 0 saves none apart from its optimizer's.")
    own = model.state_dict()
    removed = []
    for key in ("head.weight", "head.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            print(f"Removing key {key} from the checkpoint: shape {tuple(state[key].shape)} != {tuple(own[key].shape)}")
            removed.append(f"{key} {tuple(state.pop(key).shape)}")
    if "pos_embed" in state:
        if "pos_embed" not in own:
            print(f"Not using the checkpoint's learned pos_embed {tuple(state['pos_embed'].shape)}: "
                  f"{type(model).__name__} uses fixed sinusoid position tables")
            del state["pos_embed"]
        elif state["pos_embed"].shape != own["pos_embed"].shape:
            print(f"Interpolating pos_embed {tuple(state['pos_embed'].shape)} -> {tuple(own['pos_embed'].shape)}")
            state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], model.patch_embed.grid_size,
                                                       saved_token_grid(trained, state))
    name = type(model).__name__
    mismatched = [f"{k} is {tuple(v.shape)}, the model's {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} weights are another shape than {name}'s ({mismatched[0]}): a "
                         "checkpoint of another model size or patch size (--model), or tubelet size (--tubelet_size)")
    if not any(k.startswith(("patch_embed.", "blocks.")) for k in state.keys() & own.keys()):
        raise ValueError(f"{path}: none of its weights is one of {name}'s encoder weights (it has "
                         f"{', '.join(sorted(state)[:4]) or 'none'}, ...): another --model_key or --model_prefix?")
    result = model.load_state_dict(state, strict=False)
    print(f"Loaded {path}")
    if result.missing_keys:
        print(f"Weights of {name} not initialized from the checkpoint: {result.missing_keys}")
    if result.unexpected_keys:
        print(f"Weights from the checkpoint not used in {name}: {result.unexpected_keys}")
    if require_all and (result.missing_keys or result.unexpected_keys):
        problems = []
        if result.missing_keys:
            problems.append(f"{len(result.missing_keys)} weights of {type(model).__name__} are not in it (e.g. "
                            f"{', '.join(result.missing_keys[:3])})")
        if removed:
            problems.append(f"its {', '.join(removed)} is another size than the model's head")
        if result.unexpected_keys:
            problems.append(f"{len(result.unexpected_keys)} of its weights have no place in {type(model).__name__} "
                            f"(e.g. {', '.join(result.unexpected_keys[:3])})")
        if saved := saved_model_flags(trained):
            problems.append(f"it was saved by a run with {saved}")
        raise IncompleteCheckpointError(f"{path}: --eval tests these weights, but " + "; ".join(problems),
                                        has_classifier=bool(removed) or "head.weight" not in result.missing_keys)
    return trained


# ---------------------------------------------------------------- mixed precision


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def mixed_precision(inputs: torch.Tensor, device: torch.device, precision: str, deepspeed: bool):
    """``(inputs, context)`` for a forward pass at ``--precision``: autocast (none for fp32); under DeepSpeed, whose
    engine holds the weights in that dtype and does its own mixed precision, the inputs in that dtype instead."""
    if deepspeed:
        return inputs.to(PRECISION_DTYPES[precision]), contextlib.nullcontext()
    if precision == "fp32":
        return inputs, contextlib.nullcontext()
    return inputs, torch.autocast(device_type=device.type, dtype=PRECISION_DTYPES[precision])


class NativeScalerWithGradNormCount:
    """backward + (unscale, clip, grad norm) + step, with a GradScaler for fp16 and plain steps otherwise."""

    state_dict_key = "amp_scaler"

    def __init__(self, enabled: bool = True, device: str = "cuda"):
        self._scaler = torch.amp.GradScaler(device, enabled=enabled)

    def __call__(self, loss, optimizer, clip_grad=None, parameters=None, update_grad: bool = True):
        self._scaler.scale(loss).backward()
        if not update_grad:
            return None
        self._scaler.unscale_(optimizer)
        params = [p for p in parameters if p.grad is not None]
        if clip_grad is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self._scaler.step(optimizer)
        self._scaler.update()
        return norm

    def scale_tensor(self) -> torch.Tensor | None:
        """The current loss scale as a device tensor (None without fp16): reading it does not wait for the device."""
        return self._scaler._scale.clone() if self._scaler.is_enabled() else None  # update() changes it in place

    def state_dict(self) -> dict:
        return self._scaler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self._scaler.load_state_dict(state_dict)


def current_loss_scale(model, loss_scaler, deepspeed: bool, precision: str):
    """The fp16 loss scale to log (a falling one shows overflowing steps, which are skipped), None otherwise; under
    DeepSpeed its optimizer's ``loss_scale`` (FP16_Optimizer has no ``cur_scale``, ZeRO's has both)."""
    if precision != "fp16":
        return None
    return model.optimizer.loss_scale if deepspeed else loss_scaler.scale_tensor()


def backward_step(model, loss: torch.Tensor, optimizer, loss_scaler, clip_grad: float | None, deepspeed: bool,
                  update: bool = True, accumulation: int = 1):
    """Backward, then (when ``update``) clip, optimizer step and zero the gradients; a DeepSpeed engine does its own
    accumulation and stepping. Returns the gradient norm before clipping (None on accumulation micro-steps)."""
    if deepspeed:
        boundary = model.is_gradient_accumulation_boundary()
        model.backward(loss)
        grad_norm = None
        if boundary and not (model.fp16_enabled() or model.bfloat16_enabled() or model.zero_optimization()):
            # DeepSpeed's plain fp32 optimizer keeps no norm: the all-reduced gradients' one, as its step finds them
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.module.parameters() if p.grad is not None])
        model.step()
        return (model.get_global_grad_norm() if grad_norm is None else grad_norm) if boundary else None
    grad_norm = loss_scaler(loss / accumulation, optimizer, clip_grad=clip_grad, parameters=model.parameters(),
                            update_grad=update)
    if update:
        optimizer.zero_grad(set_to_none=True)
    return grad_norm


# ---------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seeds numpy/random from torch's per-worker seed (base seed from ``--seed`` plus
    the worker id) and reseeds the dataset's own generators, so workers differ and runs are reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


class EpochSeeds(torch.utils.data.Sampler):
    """``sampler``'s indices paired with the current epoch's seed: what :class:`EpochSeededDataset` takes."""

    def __init__(self, sampler):
        self.sampler, self.epoch_seed = sampler, 0

    def __iter__(self):
        return ((self.epoch_seed, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochSeededDataset(torch.utils.data.Dataset):
    """A dataset indexed by (epoch seed, index) that reseeds python, numpy, torch and the dataset's own streams from
    (epoch seed, worker id) when the first index of a new epoch arrives. Workers can then stay alive across epochs
    (``persistent_workers``, no re-fork and re-import every epoch) while each epoch's augmentations and masks
    stay a function of the seed, the epoch and the rank: a resumed run repeats an uninterrupted one."""

    def __init__(self, dataset):
        self.dataset, self.epoch_seed = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch_seed, index = key
        if epoch_seed != self.epoch_seed:
            info = torch.utils.data.get_worker_info()
            seed = int(np.random.SeedSequence([epoch_seed, 0 if info is None else info.id]).generate_state(1)[0])
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            self.dataset.reseed(seed)
            self.epoch_seed = epoch_seed
        return self.dataset[index]


def train_loader(dataset, sampler, args, device: torch.device, collate_fn=None) -> torch.utils.data.DataLoader:
    """The training loader of both run scripts: epoch-seeded persistent workers, pinned memory on CUDA, full
    batches only. Call :func:`seed_epoch` before every epoch. The loader draws its workers' base seed from a
    generator of its own: from the global one, that draw (at the first epoch a run iterates) would shift the
    model's random stream in a resumed run."""
    return torch.utils.data.DataLoader(
        EpochSeededDataset(dataset), sampler=EpochSeeds(sampler), batch_size=args.batch_size,
        num_workers=args.num_workers, pin_memory=args.pin_mem and device.type == "cuda", drop_last=True,
        persistent_workers=args.num_workers > 0, collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(getattr(args, "seed", 0)),
    )


class FiniteCheck:
    """Remembers on the device whether any loss since the last ``check`` was non-finite; ``check`` (every
    ``--print_freq`` steps) reads it once and stops the run if so, before the next checkpoint can be written."""

    def __init__(self, device: torch.device):
        self.all_finite = torch.ones((), dtype=torch.bool, device=device)
        self.last_loss: torch.Tensor | None = None

    def update(self, loss: torch.Tensor) -> None:
        self.all_finite &= torch.isfinite(loss.detach())
        self.last_loss = loss.detach()

    def check(self, step: int) -> None:
        """Every rank calls it at the same steps; the flag is reduced over ranks, so all stop together (a rank left
        in the next collective would wait for the others until the timeout)."""
        all_finite = self.all_finite
        if is_dist_avail_and_initialized():
            all_finite = all_finite.to(torch.int32)
            dist.all_reduce(all_finite, op=dist.ReduceOp.MIN)
        if not bool(all_finite):
            where = "on this rank" if not bool(self.all_finite) else "on another rank"
            raise FloatingPointError(f"a loss since the previous log was not finite {where} (last loss here "
                                     f"{float(self.last_loss)}, step {step}): stopping; the last checkpoint is intact")

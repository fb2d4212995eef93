"""The training step's speed work: no reads of device values inside a step (pretraining and fine-tuning, the MCA
head included), lazy metric meters, the deferred non-finite check, fused AdamW, the DeepSpeed bf16 accumulation
rule and gradient norm, and SLURM step sizes. A CUDA-only test runs the steps under
``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from timm.models import create_model

import modeling_finetune  # noqa: F401  (registers the vit_* models)
import utils
from engine_for_finetuning import forward, head_losses
from engine_for_pretraining import pretrain_loss

REPO = Path(__file__).resolve().parents[1]
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def count_device_reads():
    """Counts the tensor -> Python conversions (each one waits for the device on a GPU)."""
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        def read(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield calls
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def pretrain_setup(device="cpu", precision="fp32"):
    torch.manual_seed(0)
    model = create_model("pretrain_videomae_mini_patch16_224", img_size=64, num_frames=8).to(device)
    args = SimpleNamespace(targets=("pixel",), patch_size=(16, 16), tubelet_size=2, normlize_target=True,
                           precision=precision, pixel_loss_weight=1.0, hog_sampling="tubelet", opt="adamw",
                           opt_eps=1e-8, opt_betas=[0.9, 0.95], momentum=0.9, lr=1e-3, weight_decay=0.05,
                           clip_grad=0.02)
    optimizer = utils.create_optimizer(args, utils.param_groups_weight_decay(model, 0.05))
    scaler = utils.NativeScalerWithGradNormCount(enabled=precision == "fp16", device=torch.device(device).type)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::4] = True
    batch = {"frames": torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8), "mask": mask}
    return model, args, optimizer, scaler, batch


def pretrain_steps(model, args, optimizer, scaler, batch, device, steps=3):
    logger, finite = utils.MetricLogger(), utils.FiniteCheck(torch.device(device))
    for _ in range(steps):
        loss, _ = pretrain_loss(model, batch, torch.device(device), args)
        finite.update(loss)
        grad_norm = utils.backward_step(model, loss, optimizer, scaler, args.clip_grad, deepspeed=False)
        logger.update(loss=loss, grad_norm=grad_norm, loss_scale=scaler.scale_tensor(), lr=1e-3)
    return logger, finite


def test_pretraining_step_reads_nothing_from_the_device():
    model, args, optimizer, scaler, batch = pretrain_setup()
    with count_device_reads() as reads:
        logger, finite = pretrain_steps(model, args, optimizer, scaler, batch, "cpu")
    assert reads == []
    finite.check(step=2)  # the log step reads once
    assert logger.meters["loss"].global_avg > 0 and logger.meters["loss"].count == 3  # global_avg reads


def finetune_setup(name: str):
    torch.manual_seed(0)
    model = create_model(name, img_size=64, all_frames=8, num_classes=5)
    args = SimpleNamespace(opt="adamw", opt_eps=1e-8, opt_betas=None, momentum=0.9, lr=1e-3, weight_decay=0.05)
    optimizer = utils.create_optimizer(args, utils.param_groups_weight_decay(model, 0.05))
    batch = {"video": torch.randn(2, 3, 8, 64, 64), "box": torch.tensor([[0.2, 0.2, 0.6, 0.7], [0.0, 0.5, 0.5, 1.0]]),
             "target": torch.tensor([[1], [3]])}
    return model, optimizer, batch


@pytest.mark.parametrize("name", ["vit_mini_patch16_224", "vit_mini_patch16_224_mofo"])
def test_finetuning_step_reads_nothing_from_the_device(name):
    model, optimizer, batch = finetune_setup(name)
    scaler = utils.NativeScalerWithGradNormCount(enabled=False, device="cpu")
    logger = utils.MetricLogger()
    with count_device_reads() as reads:
        for _ in range(2):
            logits = forward(model, batch, torch.device("cpu"), name.endswith("_mofo"), "fp32", deepspeed=False)
            loss = sum(head_losses(logits, [batch["target"][:, 0]], [5], smoothing=0.1))
            grad_norm = utils.backward_step(model, loss, optimizer, scaler, 1.0, deepspeed=False)
            logger.update(loss=loss, grad_norm=grad_norm)
    assert reads == []
    assert logger.meters["grad_norm"].max > 0 and logger.meters["grad_norm"].count == 2


def test_meters_read_tensors_once_with_the_right_statistics():
    meter = utils.SmoothedValue(window_size=2)
    for value in (1.0, torch.tensor(2.0), torch.tensor(4.0)):
        meter.update(value)
    with count_device_reads() as reads:
        assert (meter.global_avg, meter.median, meter.max, meter.value) == (7 / 3, 3.0, 4.0, 4.0)
    assert reads == ["tolist"]  # one transfer for all pending values


def test_finite_check_stops_on_any_non_finite_loss_since_the_last_log():
    finite = utils.FiniteCheck(torch.device("cpu"))
    for loss in (1.0, float("inf"), 2.0):
        finite.update(torch.tensor(loss))
    with pytest.raises(FloatingPointError, match="not finite.*step 7.*last checkpoint is intact"):
        finite.check(step=7)
    clean = utils.FiniteCheck(torch.device("cpu"))
    clean.update(torch.tensor(0.5))
    clean.check(step=1)


def finite_check_rank(rank: int, port: int, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        finite = utils.FiniteCheck(torch.device("cpu"))
        finite.update(torch.tensor(float("nan") if rank == 1 else 1.0))
        try:
            finite.check(step=3)
            results[rank] = "went on"
        except FloatingPointError as e:
            results[rank] = str(e)
    finally:
        torch.distributed.destroy_process_group()


def test_a_non_finite_loss_on_one_rank_stops_every_rank():
    """Else the finite ranks would enter the next all-reduce and wait for the stopped one until the timeout."""
    context = torch.multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        torch.multiprocessing.start_processes(finite_check_rank, args=(utils.free_port(), results), nprocs=2,
                                              start_method="spawn")
        assert "not finite on another rank" in results[0] and "not finite on this rank" in results[1]


def test_logged_loss_scales_keep_each_steps_value():
    """GradScaler.update() changes its scale tensor in place: each logged value is a copy."""
    scaler = utils.NativeScalerWithGradNormCount(enabled=True, device="cpu")
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    logged = []
    for value in (float("inf"), float("inf"), 1.0):
        optimizer.zero_grad()
        scaler((weight * value).sum(), optimizer, parameters=[weight])
        logged.append(utils.current_loss_scale(None, scaler, deepspeed=False, precision="fp16"))
    assert [float(scale) for scale in logged] == [2.0**15, 2.0**14, 2.0**14]  # halved by each overflow
    for precision in ("bf16", "fp32"):  # no loss scale to log (DeepSpeed's fp16 needs a GPU: not tested here)
        assert utils.current_loss_scale(None, scaler, deepspeed=False, precision=precision) is None


def test_a_weight_decay_schedule_from_zero_reaches_the_decayed_groups():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    optimizer = torch.optim.AdamW(utils.param_groups_weight_decay(model, weight_decay=0.0))
    utils.apply_schedules(optimizer, lr=1e-3, weight_decay=0.05)
    decays = {tuple(group["param_names"]): group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {("0.weight",): 0.05, ("0.bias", "1.weight", "1.bias"): 0.0}


def test_adam_and_adamw_are_fused_and_others_untouched():
    model = torch.nn.Linear(4, 4)
    base = dict(opt_eps=1e-8, opt_betas=None, momentum=0.9, lr=0.1, weight_decay=0.0)
    for opt, fused in (("adamw", True), ("adam", True), ("sgd", None)):
        optimizer = utils.create_optimizer(SimpleNamespace(opt=opt, **base), [{"params": list(model.parameters())}])
        assert optimizer.defaults.get("fused") is fused


def test_deepspeed_bf16_accumulates_in_fp32_or_refuses():
    args = SimpleNamespace(batch_size=2, num_sample=1, update_freq=4, zero_stage=1, clip_grad=None, precision="bf16")
    assert utils.deepspeed_config(args)["data_types"] == {"grad_accum_dtype": "fp32"}
    args.zero_stage = 0
    with pytest.raises(SystemExit, match="needs --zero_stage 1 or 2"):
        utils.deepspeed_config(args)
    args.update_freq = 1
    assert "data_types" not in utils.deepspeed_config(args)


DEEPSPEED_GRAD_NORMS = """import json, os
import torch
import utils
from types import SimpleNamespace
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(utils.free_port()), RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
norms = {}
for deepspeed in (False, True):
    for zero_stage in (0, 1) if deepspeed else (0,):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        args = SimpleNamespace(enable_deepspeed=deepspeed, compile=False, batch_size=2, num_sample=1, update_freq=2,
                               zero_stage=zero_stage, clip_grad=0.01, precision="fp32", distributed=False)
        engine, _, optimizer, scaler = utils.wrap_model(args, model, torch.optim.AdamW(model.parameters(), lr=0.1),
                                                        torch.device("cpu"))
        seen = []
        for step in range(4):
            x = torch.linspace(-1, 1, 12).reshape(2, 6) * (step + 1)
            update = step % 2 == 1
            norm = utils.backward_step(engine, engine(x).square().mean(), optimizer, scaler, args.clip_grad, deepspeed,
                                       update, accumulation=2)
            seen.append(None if norm is None else float(norm))
        norms[f"deepspeed={deepspeed} zero={zero_stage}"] = seen
print(json.dumps(norms))
"""


def test_deepspeed_steps_report_the_gradient_norm_as_ddp_does(tmp_path):
    """DeepSpeed's plain fp32 optimizer (ZeRO stage 0) keeps no gradient norm: the step computes it, so its logs have
    ``grad_norm`` as DDP's and ZeRO's do, the same values before clipping, and none on accumulation micro-steps."""
    script = tmp_path / "norms.py"
    script.write_text(DEEPSPEED_GRAD_NORMS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    norms = json.loads(result.stdout.strip().splitlines()[-1])
    ddp = norms.pop("deepspeed=False zero=0")
    assert ddp[0] is None and ddp[2] is None and ddp[1] > 0.01 and ddp[3] > 0.01  # clipped to 0.01 after
    for name, seen in norms.items():
        assert seen[0] is None and seen[2] is None, name
        assert seen[1] == pytest.approx(ddp[1], rel=1e-5) and seen[3] == pytest.approx(ddp[3], rel=1e-5), name


def test_slurm_world_size_is_the_steps(monkeypatch):
    """An srun step may run fewer tasks than the allocation: SLURM_STEP_NUM_TASKS wins over SLURM_NTASKS. A single
    task (world 1) stays a plain process."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    args = SimpleNamespace(device="cpu", dist_url="env://")
    utils.init_distributed_mode(args)
    assert (args.distributed, args.world_size) == (False, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_never_synchronize():
    model, args, optimizer, scaler, batch = pretrain_setup("cuda", "bf16")
    pretrain_steps(model, args, optimizer, scaler, batch, "cuda", steps=1)  # warm-up: lazy state, kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pretrain_steps(model, args, optimizer, scaler, batch, "cuda", steps=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


class RandomDraws(torch.utils.data.Dataset):
    """Each item: a draw from the dataset's own stream, numpy's and torch's global ones."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.tensor([index, self.rng.integers(1 << 30), np.random.randint(1 << 30),
                             int(torch.randint(1 << 30, ()))])


def epoch_batches(loader, epoch: int) -> torch.Tensor:
    """The epoch's batches, then a row of what the main process draws during it (timm's Mixup from numpy, DropPath
    from torch)."""
    utils.seed_epoch(seed=5, epoch=epoch, rank=0, loader=loader)
    batches = list(loader)
    main = torch.tensor([[np.random.randint(1 << 30), int(torch.randint(1 << 30, ())), random.randrange(1 << 30), 0]])
    return torch.cat([*batches, main])


def test_persistent_workers_reseed_every_epoch_and_a_resumed_run_repeats_them():
    args = SimpleNamespace(batch_size=2, num_workers=2, pin_mem=False)

    def loader():
        sampler = torch.utils.data.DistributedSampler(RandomDraws(), num_replicas=1, rank=0, shuffle=True, seed=5)
        return utils.train_loader(RandomDraws(), sampler, args, torch.device("cpu"))

    persistent = loader()
    assert persistent.persistent_workers
    epochs = [epoch_batches(persistent, epoch) for epoch in range(3)]
    assert not torch.equal(epochs[1], epochs[2])  # new shuffle and new draws
    resumed = loader()  # a run restarted at epoch 2: fresh workers
    torch.testing.assert_close(epoch_batches(resumed, 2), epochs[2], rtol=0, atol=0)
    workers_draws = epochs[0][:-1, 1]
    assert len(set(workers_draws.tolist())) == 8  # the two workers do not repeat each other's stream


def test_epoch_seeds_of_other_seeds_and_ranks_differ():
    """Seeds are hashed from (seed, epoch, rank): --seed 1 on rank 0 is not --seed 0 on rank 1 (nor epoch 1)."""
    sampler = torch.utils.data.DistributedSampler(RandomDraws(), num_replicas=1, rank=0)
    loader = utils.train_loader(RandomDraws(), sampler, SimpleNamespace(batch_size=2, num_workers=0, pin_mem=False),
                                torch.device("cpu"))
    seeds = set()
    for seed, epoch, rank in itertools.product(range(3), range(3), range(3)):
        utils.seed_epoch(seed, epoch, rank, loader)
        seeds.add(loader.sampler.epoch_seed)
    assert len(seeds) == 27


def test_compile_keeps_the_checkpoint_keys():
    """``--compile`` compiles in place (``nn.Module.compile``): no ``_orig_mod.`` prefix in saved state dicts."""
    model = create_model("pretrain_videomae_mini_patch16_224", img_size=64, num_frames=8)
    keys = list(model.state_dict())
    args = SimpleNamespace(compile=True, enable_deepspeed=False, distributed=False, precision="fp32")
    wrapped, without_ddp, _, _ = utils.wrap_model(args, model, None, torch.device("cpu"))
    assert wrapped is model and without_ddp is model and model._compiled_call_impl is not None
    assert list(without_ddp.state_dict()) == keys


class CountedBatches:
    """A data loader stand-in: ``len`` batches, counting how many were fetched."""

    def __init__(self, length: int):
        self.length, self.fetched = length, 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for i in range(self.length):
            self.fetched += 1
            yield i


def test_progress_over_part_of_a_loader_counts_and_ends_at_that_part(capsys):
    """Fine-tuning runs whole --update_freq groups of batches: the progress lines count those, the last of them and
    the epoch's total time are printed, and no batch past them is fetched."""
    loader = CountedBatches(10)
    assert list(utils.MetricLogger().log_every(loader, 4, "Epoch: [0]", total=9)) == list(range(9))
    out = capsys.readouterr().out
    assert loader.fetched == 9
    assert "Epoch: [0] [0/9]" in out and "Epoch: [0] [8/9]" in out and "[9/" not in out
    assert "Epoch: [0] total time:" in out

"""MOFO pretraining end to end on CPU: target, schedules, checkpoints, resume after a kill, DDP under a simulated
``srun``, DeepSpeed under torchrun, non-finite loss, and loading released-style checkpoints."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboardX.proto import event_pb2

import make_synthetic_dataset
import run_mofo_pretraining
import utils
from engine_for_pretraining import pixel_targets
from utils import free_port

REPO = Path(__file__).resolve().parents[1]


def write_all_list(root: Path) -> Path:
    """all.csv: the train, val and test lists of a synthetic set in one, for pretraining on every video."""
    lines = [line for split in ("train", "val", "test") for line in (root / f"{split}.csv").read_text().splitlines()]
    (root / "all.csv").write_text("\n".join(lines) + "\n")
    return root / "all.csv"


def pretraining_set(root: Path, num_videos: int, num_frames: int, seed: int) -> Path:
    """A synthetic set in ``root`` with its all.csv."""
    make_synthetic_dataset.make_dataset(root, num_videos=num_videos, num_frames=num_frames, seed=seed)
    write_all_list(root)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return pretraining_set(tmp_path_factory.mktemp("pretrain_data"), num_videos=8, num_frames=16, seed=3)


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data_path", str(data / "all.csv"), "--data_root", str(data / "videos"), "--box_dir", str(data / "gt_boxes"),
        "--mask_type", "motion", "--mask_ratio", "0.9", "--model", "pretrain_videomae_mini_patch16_224",
        "--decoder_depth", "1", "--input_size", "64", "--num_frames", "8", "--sampling_rate", "2",
        "--batch_size", "2", "--epochs", "3", "--warmup_epochs", "1", "--lr", "0.1", "--opt_betas", "0.9", "0.95",
        "--device", "cpu", "--precision", "fp32", "--num_workers", "1", "--output_dir", str(out),
        "--save_ckpt_freq", "1", "--print_freq", "100", *extra,
    ]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


class NoStrayFiles:
    """A run's environment with its own empty TMPDIR and HOME, and a snapshot of the data folder: ``check()`` after
    the run asserts that no image was written to either, and the data folder is as it was (the release wrote debug
    images every step)."""

    def __init__(self, tmp_path: Path, data: Path):
        self.scratch, self.data = tmp_path / "scratch", data
        for name in ("tmp", "home"):
            (self.scratch / name).mkdir(parents=True)
        self.env = clean_env(TMPDIR=str(self.scratch / "tmp"), HOME=str(self.scratch / "home"))
        self.before = self.listing(data)
        self.repo_before = self.repo_images()

    @staticmethod
    def repo_images() -> set[str]:
        """Images in the repository that git does not track (a debug folder next to the code), .venv aside."""
        listed = subprocess.run(["git", "ls-files", "--others", "--", ":!.venv"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.split()
        return {name for name in listed if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".gif")}

    @staticmethod
    def listing(folder: Path) -> dict[str, int]:
        return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}

    def check(self) -> None:
        images = [p for p in self.scratch.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif")]
        assert not images, images
        assert self.listing(self.data) == self.before
        assert self.repo_images() <= self.repo_before, sorted(self.repo_images() - self.repo_before)


# Runs an entry point (argv[1]) with DeepSpeed unimportable, as on a machine without it installed.
WITHOUT_DEEPSPEED = ("import runpy, sys; sys.modules['deepspeed'] = None; sys.argv = sys.argv[1:]; "
                     "sys.path.insert(0, str(__import__('pathlib').Path(sys.argv[0]).parent)); "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")


def pretrain(args: list[str], env: dict | None = None, timeout: int = 240, cwd: Path = REPO,
             without_deepspeed: bool = False) -> subprocess.CompletedProcess:
    python = [sys.executable, "-c", WITHOUT_DEEPSPEED] if without_deepspeed else [sys.executable]
    return subprocess.run([*python, str(REPO / "run_mofo_pretraining.py"), *args], cwd=cwd,
                          env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def epoch_losses(out: Path) -> dict[int, float]:
    """Last logged train loss of every epoch in log.txt."""
    losses = {}
    for line in (out / "log.txt").read_text().splitlines():
        record = json.loads(line)
        losses[record["epoch"]] = record["train_loss"]
    return losses


def test_pixel_targets_match_a_per_tube_reference():
    torch.manual_seed(0)
    videos = torch.rand(2, 3, 4, 32, 32)
    targets = pixel_targets(videos, patch_size=16, tubelet_size=2, normalize=True)
    assert targets.shape == (2, 2 * 2 * 2, 2 * 16 * 16 * 3)
    pixels = videos[1]
    t, h, w = 1, 0, 1  # token index t*4 + h*2 + w
    tube = pixels[:, 2 * t:2 * t + 2, 16 * h:16 * h + 16, 16 * w:16 * w + 16]  # (c, 2, 16, 16)
    per_channel = tube.reshape(3, -1)
    expected = (per_channel - per_channel.mean(1, keepdim=True)) / (per_channel.std(1, keepdim=True) + 1e-6)
    expected = expected.T.reshape(-1)  # (t, h, w) inside the tube, channel fastest
    torch.testing.assert_close(targets[1, t * 4 + h * 2 + w], expected, rtol=1e-5, atol=1e-5)
    raw = pixel_targets(videos, 16, 2, normalize=False)
    torch.testing.assert_close(raw[1, t * 4 + h * 2 + w], tube.reshape(3, -1).T.reshape(-1))


def test_lr_warmup_starts_at_zero_like_videomae_unless_warmup_lr_is_given():
    import run_mofo_finetuning
    import run_mofo_pretraining

    for parser in (run_mofo_pretraining.get_args_parser(), run_mofo_finetuning.get_args_parser()):
        for extra, first in (([], 0.0), (["--warmup_lr", "1e-4"], 1e-4)):
            args = parser.parse_args(["--epochs", "4", "--warmup_epochs", "1", *extra])
            lr_schedule, _ = utils.build_schedules(args, niter_per_ep=5)
            assert lr_schedule[0] == pytest.approx(first) and lr_schedule[4] == pytest.approx(args.lr)


def test_a_warmup_longer_than_the_run_is_refused_before_anything_loads(dataset, tmp_path):
    """VideoMAE's default 40 warmup epochs in a 1-epoch try (pretraining and fine-tuning): refused at startup, naming
    the flag to lower, before the model is built; --warmup_steps past the run is refused once the steps are known."""
    result = pretrain(run_args(dataset, tmp_path / "out", "--epochs", "1", "--warmup_epochs", "40"))
    assert result.returncode != 0 and "Model:" not in result.stdout
    assert ("error: --warmup_epochs 40 is longer than the run (--epochs 1): lower --warmup_epochs (0 for a short test "
            "run) or raise --epochs") in result.stderr
    finetune = subprocess.run([sys.executable, str(REPO / "run_mofo_finetuning.py"), "--data_path", str(tmp_path),
                               "--epochs", "1", "--output_dir", str(tmp_path / "ft"), "--device", "cpu"], cwd=REPO,
                              env=clean_env(), capture_output=True, text=True, timeout=120)
    assert finetune.returncode != 0
    assert "error: --warmup_epochs 5 is longer than the run (--epochs 1)" in finetune.stderr
    steps = pretrain(run_args(dataset, tmp_path / "steps", "--epochs", "1", "--warmup_steps", "100000"))
    assert steps.returncode != 0 and "the warmup (100000 steps) is longer than the run" in steps.stderr


def test_weights_that_do_not_fit_name_the_flag_the_command_changed():
    """A resume with another --decoder_depth (or --target, ...) than its run: the message names that flag, not the
    unchanged --model; without a changed saved flag it names the saved --model and head size."""
    own = {"encoder.w": torch.zeros(2), "decoder.blocks.1.w": torch.zeros(1)}
    state = {"encoder.w": torch.zeros(2)}
    command = argparse.Namespace(model="pretrain_videomae_mini_patch16_224", decoder_depth=2)
    message = utils.weights_misfit(own, state, {"model": command.model, "decoder_depth": 1}, command)
    assert message == ("its weights do not fit --model pretrain_videomae_mini_patch16_224: 1 of the model's weights "
                       "are not in it (e.g. decoder.blocks.1.w); it was saved by a run with --decoder_depth 1: pass "
                       "the same to go on with it, or use a new --output_dir for another model")
    epic = {"model": "vit_b", "data_set": "EPIC-KITCHENS-100", "nb_verbs": 97, "nb_nouns": 300, "nb_classes": 400}
    assert "saved by a run with --model vit_b --nb_verbs 97 --nb_nouns 300:" in utils.weights_misfit(
        own, state, epic, argparse.Namespace(model="vit_b"))


def test_cosine_schedule_warms_up_then_decays():
    schedule = utils.cosine_scheduler(1.0, 0.1, epochs=4, niter_per_ep=5, warmup_epochs=1, start_warmup_value=0.0)
    assert len(schedule) == 20
    np.testing.assert_allclose(schedule[:5], np.linspace(0, 1, 5))
    assert schedule[5] == pytest.approx(1.0) and schedule[-1] > 0.1 and np.all(np.diff(schedule[5:]) <= 0)


def test_no_weight_decay_on_biases_norms_and_mask_token():
    import modeling_pretrain

    model = modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=32, num_frames=4)
    groups = utils.param_groups_weight_decay(model, 0.05, set(model.no_weight_decay()))
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert "mask_token" in no_decay and "encoder.blocks.0.attn.q_bias" in no_decay
    assert "encoder.norm.weight" in no_decay and "decoder.head.bias" in no_decay
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "encoder_to_decoder.weight" in decay
    assert len(no_decay) + len(decay) == len(list(model.parameters()))


def test_loss_falls_and_a_killed_run_resumes_on_the_same_trajectory(dataset, tmp_path):
    """Uninterrupted 3-epoch run vs. a run killed after its first (rolling) checkpoint and restarted with
    auto-resume: the same per-epoch losses and bit-identical final weights; the rolling checkpoints are gone. The
    resumed run has DeepSpeed unimportable."""
    keep_last_only = ("--save_ckpt_freq", "10")
    full, workdir = tmp_path / "full", tmp_path / "workdir"
    workdir.mkdir()
    stray = NoStrayFiles(tmp_path, dataset)
    result = pretrain(run_args(dataset, full, *keep_last_only), cwd=workdir, env=stray.env)
    assert result.returncode == 0, result.stderr[-3000:]
    stray.check()
    # DDP by default (no DeepSpeed folder or `latest`), only the checkpoint and the log, nothing in the working
    # folder (the release wrote debug images every step)
    assert sorted(p.name for p in full.iterdir()) == ["checkpoint-2.pth", "log.txt"] and not list(workdir.iterdir())
    assert run_mofo_pretraining.get_args_parser().parse_args([]).enable_deepspeed is False
    losses = epoch_losses(full)
    assert sorted(losses) == [0, 1, 2] and losses[2] < losses[0] - 0.01

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "run_mofo_pretraining.py", *run_args(dataset, killed, *keep_last_only)],
                            cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (killed / "checkpoint-last-0.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint-last-0.pth").exists() and not (killed / "checkpoint-2.pth").exists()
    resumed = pretrain(run_args(dataset, killed, *keep_last_only), without_deepspeed=True)  # needed only with
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # --enable_deepspeed (the release could not run without)
    assert f"Resume checkpoint {killed / 'checkpoint-last-0.pth'}" in resumed.stdout
    assert "warning: resuming a run that used" not in resumed.stdout  # the same settings
    assert f"Saved {killed / 'checkpoint-last-1.pth'}" in resumed.stdout
    assert epoch_losses(killed) == losses
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2.pth"]
    final_full = utils.load_checkpoint_file(full / "checkpoint-2.pth")
    final_resumed = utils.load_checkpoint_file(killed / "checkpoint-2.pth")
    assert final_full["epoch"] == final_resumed["epoch"] == 2
    for key, value in final_full["model"].items():
        assert torch.equal(value, final_resumed["model"][key]), key


@pytest.mark.parametrize("script", ["run_mofo_pretraining.py", "run_mofo_finetuning.py"])
def test_an_output_dir_that_takes_no_files_stops_the_run_before_any_work(script, tmp_path):
    """Found at startup, before a dataset or model is built: it used to fail after the first epoch (or the whole
    test), when log.txt was first written."""
    (tmp_path / "a_file").write_text("")
    result = subprocess.run([sys.executable, script, "--output_dir", str(tmp_path / "a_file" / "out"), "--device",
                             "cpu", "--data_path", str(tmp_path / "nowhere")], cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"cannot write to --output_dir {tmp_path / 'a_file' / 'out'}: [Errno 20] Not a directory" in result.stderr


@pytest.mark.parametrize("deepspeed", [True, False])
def test_resuming_with_deepspeed_switched_is_refused_and_keeps_the_run(deepspeed, tmp_path):
    """A run saved with DeepSpeed off (checkpoint files) resumed with it on, or the other way round, stops naming
    the checkpoint; it used to start again from epoch 0, emptying log.txt and deleting the rolling checkpoint."""
    if deepspeed:
        (tmp_path / "checkpoint-last-2.pth").write_bytes(b"a file checkpoint")
    else:
        (tmp_path / "checkpoint-last-2").mkdir()
        (tmp_path / "latest").write_text("checkpoint-last-2")
    (tmp_path / "log.txt").write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    args = argparse.Namespace(output_dir=str(tmp_path), auto_resume=True, resume="", enable_deepspeed=deepspeed,
                              start_epoch=0, epochs=5)
    with pytest.raises(SystemExit, match=f"holds checkpoint-last-2(.pth)?, saved {'without' if deepspeed else 'with'} "
                                         "--enable_deepspeed"):
        utils.auto_load_model(args, None, None, None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and len((tmp_path / "log.txt").read_text()) > 30


def read_events(log_dir: Path) -> list:
    """Every event of a TensorBoard folder's files (TFRecord: length, its crc, the record, its crc)."""
    events = []
    for path in sorted(log_dir.glob("events.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
            i += 12 + length + 4
    return events


def test_a_resumed_run_purges_the_tensorboard_steps_it_runs_again(tmp_path):
    """Resumed at epoch 3 of 5 steps each, the writer tells TensorBoard to drop what a killed job wrote from step
    15 on (a SessionLog START at that step), so the epoch run again is not plotted twice; a new run purges nothing."""
    for start_epoch in (0, 3):
        log_dir = tmp_path / f"tb{start_epoch}"
        writer = utils.tensorboard_writer(argparse.Namespace(log_dir=str(log_dir), start_epoch=start_epoch), 5)
        writer.add_scalar("loss", 1.0, start_epoch * 5)
        writer.close()
        purges = [e.step for e in read_events(log_dir) if e.session_log.status == event_pb2.SessionLog.START]
        assert purges == ([15] if start_epoch else [])
    assert utils.tensorboard_writer(argparse.Namespace(log_dir=None, start_epoch=3), 5) is None


def test_rolling_checkpoints_replace_each_other_and_leave_the_kept_ones(tmp_path):
    """--save_ckpt_freq 3, --last_ckpt_freq 2, 8 epochs: kept checkpoint-2, -5, -7; rolling checkpoint-last-N at
    N = 1, 3 (then gone); one rolling file at most, the newest, which auto-resume takes over an older kept one."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    args = argparse.Namespace(output_dir=str(tmp_path), save_ckpt_freq=3, last_ckpt_freq=2, epochs=8)
    (tmp_path / "checkpoint-best.pth").write_bytes(b"best")
    (tmp_path / "checkpoint-last-0.pth.tmp").write_bytes(b"half a file")
    (tmp_path / "checkpoint-99.pth.tmp").write_bytes(b"half of a kept one")  # a save killed in an earlier job
    (tmp_path / "checkpoint-best.pth.tmp").write_bytes(b"half of a best one")
    seen = []
    for epoch in range(8):
        utils.save_epoch_checkpoint(args, epoch, model, model, optimizer, None)
        seen.append(sorted(p.name for p in tmp_path.glob("checkpoint-*") if p.name != "checkpoint-best.pth"))
    assert seen == [
        ["checkpoint-99.pth.tmp", "checkpoint-best.pth.tmp", "checkpoint-last-0.pth.tmp"],
        ["checkpoint-last-1.pth"],
        ["checkpoint-2.pth"],
        ["checkpoint-2.pth", "checkpoint-last-3.pth"],
        ["checkpoint-2.pth", "checkpoint-last-3.pth"],
        ["checkpoint-2.pth", "checkpoint-5.pth"],
        ["checkpoint-2.pth", "checkpoint-5.pth"],
        ["checkpoint-2.pth", "checkpoint-5.pth", "checkpoint-7.pth"],
    ]
    assert (tmp_path / "checkpoint-best.pth").read_bytes() == b"best"
    utils.save_model(args, 8, model, model, optimizer, None, tag="checkpoint-last-8")
    assert utils.latest_checkpoint(tmp_path, deepspeed=False) == tmp_path / "checkpoint-last-8.pth"
    assert utils.load_checkpoint_file(tmp_path / "checkpoint-last-8.pth")["epoch"] == 8

    args.last_ckpt_freq = 0
    utils.save_epoch_checkpoint(args, 9, model, model, optimizer, None)
    assert not (tmp_path / "checkpoint-9.pth").exists() and not (tmp_path / "checkpoint-last-9.pth").exists()


def test_ddp_with_two_processes_launched_as_srun_tasks(dataset, tmp_path):
    """Two CPU processes with only SLURM's variables (what ``srun`` gives each task): DDP over gloo. The step runs 2
    of the allocation's 4 tasks: the world size is the step's."""
    out = tmp_path / "ddp"
    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, "run_mofo_pretraining.py", *run_args(dataset, out, "--epochs", "1")],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=clean_env(SLURM_PROCID=str(rank), SLURM_NTASKS="4", SLURM_STEP_NUM_TASKS="2",
                                       SLURM_LOCALID=str(rank), SLURM_JOB_NODELIST="localhost",
                                       SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID="1", MASTER_PORT=port))
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "distributed init (rank 0/2, gloo)" in logs[0] + logs[1]
    assert "total batch: 4" in logs[0]
    assert "broadcast_buffers" not in logs[0] + logs[1]  # no deprecation warning per rank
    checkpoint = utils.load_checkpoint_file(out / "checkpoint-0.pth")
    assert checkpoint["epoch"] == 0 and np.isfinite(epoch_losses(out)[0])


def test_videomae_launcher_with_two_processes(dataset, tmp_path):
    """VideoMAE's scripts launch with ``python -m torch.distributed.launch``, which appends ``--local-rank=N``."""
    out = tmp_path / "launch"
    launch = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "2", "--master_port",
              str(free_port()), "run_mofo_pretraining.py"]
    result = subprocess.run(launch + run_args(dataset, out, "--epochs", "1"), cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "distributed init (rank 1/2, gloo)" in result.stdout + result.stderr
    assert utils.load_checkpoint_file(out / "checkpoint-0.pth")["epoch"] == 0


def test_deepspeed_with_two_processes_and_resume(dataset, tmp_path):
    """ZeRO-1 over two processes: the rolling folder of epoch 0 is removed once every rank has written the kept
    one of the last epoch; a longer run resumes from it."""
    out = tmp_path / "deepspeed"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port()), "run_mofo_pretraining.py"]
    args = run_args(dataset, out, "--enable_deepspeed", "--zero_stage", "1", "--epochs", "2", "--save_ckpt_freq", "10")
    first = subprocess.run(torchrun + args, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"Saved {out / 'checkpoint-last-0'}" in first.stdout
    assert (out / "latest").read_text().strip() == "checkpoint-1"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert len(list((out / "checkpoint-1").glob("*optim_states.pt"))) == 2  # one ZeRO shard per rank
    args = run_args(dataset, out, "--enable_deepspeed", "--zero_stage", "1", "--epochs", "3")
    torchrun[6] = str(free_port())
    second = subprocess.run(torchrun + args, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "from epoch 2" in second.stdout
    # named once (rank 0): the schedule of the resumed run changes with --epochs
    assert second.stdout.count("warning: resuming a run that used --epochs 2; this run goes on with --epochs 3") == 1
    assert (out / "latest").read_text().strip() == "checkpoint-2"
    assert sorted(epoch_losses(out)) == [0, 1, 2]
    args = run_args(dataset, out, "--enable_deepspeed", "--zero_stage", "1", "--epochs", "4")
    alone = subprocess.run([sys.executable, "run_mofo_pretraining.py", *args], cwd=REPO, env=clean_env(),
                           capture_output=True, text=True, timeout=300)  # ZeRO shards of 2 ranks, read by one
    assert alone.returncode != 0 and "Traceback" not in alone.stderr, alone.stderr[-3000:]
    assert "used a DP world size of 2 but the current world size is 1" in alone.stderr
    assert "Resume it with as many processes as saved it" in alone.stderr


class OpensAFile:
    """A pickle payload: unpickled without weights_only, it creates ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_deepspeed_without_a_launcher_resumes_with_weights_only_loads(dataset, tmp_path):
    """``python run_mofo_pretraining.py --enable_deepspeed`` runs as a group of one. Killed after its second rolling
    checkpoint folder (the first one removed), it resumes from that one. The resume reads DeepSpeed's files (bf16
    ZeRO-1 optimizer shards hold DeepSpeed's own classes) with weights_only=True, so a folder holding any other
    pickled object is refused before it runs."""
    out = tmp_path / "deepspeed"
    args = run_args(dataset, out, "--enable_deepspeed", "--zero_stage", "1", "--precision", "bf16", "--epochs", "4",
                    "--save_ckpt_freq", "10")
    proc = subprocess.Popen([sys.executable, "run_mofo_pretraining.py", *args], cwd=REPO, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = out / "latest"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (
            latest.exists() and latest.read_text() == "checkpoint-last-1" and not (out / "checkpoint-last-0").exists()):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.read_text() == "checkpoint-last-1"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-last-1"]
    result = pretrain(args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "from epoch 2" in result.stdout and latest.read_text() == "checkpoint-3"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert list((out / "checkpoint-3").glob("*optim_states.pt"))
    deeper = pretrain(run_args(dataset, out, "--enable_deepspeed", "--zero_stage", "1", "--precision", "bf16",
                               "--epochs", "5", "--decoder_depth", "2"))
    assert deeper.returncode != 0 and "Missing key(s)" not in deeper.stderr
    assert "it was saved by a run with --decoder_depth 1: pass the same" in deeper.stderr.strip().splitlines()[-1]
    states = out / "checkpoint-3" / "mp_rank_00_model_states.pt"
    poisoned = torch.load(states, map_location="cpu", weights_only=False)
    poisoned["payload"] = OpensAFile(tmp_path / "ran")
    torch.save(poisoned, states)
    args[args.index("--epochs") + 1] = "5"
    refused = pretrain(args)
    assert refused.returncode != 0 and "refused by torch.load(weights_only=True)" in refused.stderr
    assert not (tmp_path / "ran").exists()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(dataset, tmp_path):
    out = tmp_path / "nan"
    assert pretrain(run_args(dataset, out, "--epochs", "1")).returncode == 0
    good = (out / "checkpoint-0.pth").read_bytes()
    exploded = pretrain(run_args(dataset, out, "--epochs", "2", "--lr", "1e12", "--warmup_epochs", "0"))
    assert exploded.returncode != 0
    assert "stopping; the last checkpoint is intact" in exploded.stderr and "Traceback" not in exploded.stderr
    assert (out / "checkpoint-0.pth").read_bytes() == good
    assert not (out / "checkpoint-1.pth").exists()


def test_data_of_which_no_video_decodes_ends_the_run_on_one_line(dataset, tmp_path):
    """Every listed file exists (the startup check passes) but is cut short: the loader worker gives up after
    MAX_REPLACEMENTS in a row, and the run ends with that message, not the loader's wrapped traceback."""
    corrupt = tmp_path / "videos"
    corrupt.mkdir()
    for video in (dataset / "videos").glob("*.mp4"):
        (corrupt / video.name).write_bytes(video.read_bytes()[:3000])
    args = run_args(dataset, tmp_path / "out")
    args[args.index("--data_root") + 1] = str(corrupt)
    result = pretrain(args)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: 20 videos in a row were missing, failed to decode"), errors
    assert f"; last: {corrupt}" in errors[0]


def test_missing_box_files_fail_before_training(dataset, tmp_path):
    empty = tmp_path / "no_boxes"
    empty.mkdir()
    args = run_args(dataset, tmp_path / "out")
    args[args.index("--box_dir") + 1] = str(empty)
    result = pretrain(args)
    assert result.returncode != 0
    assert "have no box file" in result.stderr and "000000.json" in result.stderr
    assert "Start training" not in result.stdout and "Traceback" not in result.stderr  # one message, no traceback
    args[args.index("--box_dir") + 1] = str(tmp_path / "no_such_dir")  # a typo: not 'videos without boxes'
    result = pretrain(args + ["--missing_box", "random"])
    assert result.returncode != 0 and f"--box_dir {tmp_path / 'no_such_dir'}: no such folder" in result.stderr


def test_a_list_too_short_for_one_batch_is_named(dataset, tmp_path):
    args = run_args(dataset, tmp_path / "out")
    args[args.index("--batch_size") + 1] = "9"
    result = pretrain(args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("error: " + str(dataset / "all.csv") + ": 8 listed clips make no full batch of --batch_size 9 x 1 "
            "processes") in result.stderr, result.stderr[-2000:]


def test_motion_masking_without_box_dir_is_refused(dataset, tmp_path):
    """No folder to fall back on (the release's was a fixed path): motion masking names the flag it needs."""
    args = run_args(dataset, tmp_path / "out")
    del args[args.index("--box_dir"):args.index("--box_dir") + 2]
    result = pretrain(args + ["--mask_type", "motion"])
    assert result.returncode != 0 and "--mask_type motion needs --box_dir" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("checkpoint-*"))


def test_resume_from_a_videomae_style_checkpoint_loads_strictly(dataset, tmp_path):
    """Released VideoMAE/MOFO pretraining checkpoints: the state dict under 'model', and the run's argparse
    Namespace under 'args' (their save_model stores it; weights_only loading must still accept the file)."""
    import argparse

    import modeling_pretrain

    model = modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=64, num_frames=8, decoder_depth=1)
    released = tmp_path / "released.pth"
    videomae_args = argparse.Namespace(model="pretrain_videomae_base_patch16_224", lr=1.5e-4, window_size=(8, 14, 14),
                                       mask_type="tube", imagenet_default_mean_and_std=True, resume="")
    torch.save({"model": model.state_dict(), "args": videomae_args}, released)
    command = run_args(dataset, tmp_path / "out", "--epochs", "1", "--resume", str(released))
    result = pretrain(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights only (no optimizer state or epoch)" in result.stdout and "from epoch 0" in result.stdout
    assert "resuming a run that used" not in result.stdout  # a new run from its weights: its own --lr and --model

    resubmitted = pretrain(command)  # the same command again: the run's own checkpoint, not the released one
    assert resubmitted.returncode == 0, resubmitted.stderr[-3000:]
    assert f"--resume {released} not taken" in resubmitted.stdout
    assert "checkpoint-0.pth: trained for all 1 epochs already" in resubmitted.stdout
    finished = pretrain(run_args(dataset, tmp_path / "more", "--epochs", "1",
                                 "--resume", str(tmp_path / "out" / "checkpoint-0.pth")))
    assert finished.returncode != 0 and "--epochs 1 is the total, not more epochs" in finished.stderr

    state = model.state_dict()
    state["encoder.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, released)
    result = pretrain(run_args(dataset, tmp_path / "out2", "--epochs", "1", "--resume", str(released)))
    assert result.returncode != 0 and "encoder.extra.weight" in result.stderr


def test_deepspeed_resumes_from_a_released_file_as_weights(dataset, tmp_path):
    """``--enable_deepspeed --resume released.pth`` (no DeepSpeed folder) starts from its weights: in ZeRO's fp32
    copies too, which were made before they were loaded (at lr 0 the weights saved after an epoch are the file's)."""
    import modeling_pretrain

    model = modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=64, num_frames=8, decoder_depth=1)
    torch.save({"model": model.state_dict()}, tmp_path / "released.pth")
    out = tmp_path / "out"
    result = pretrain(run_args(dataset, out, "--enable_deepspeed", "--zero_stage", "1", "--epochs", "1", "--lr", "0",
                               "--warmup_lr", "0", "--min_lr", "0", "--resume", str(tmp_path / "released.pth")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights only (no optimizer state or epoch)" in result.stdout
    saved = torch.load(out / "checkpoint-0" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    torch.testing.assert_close(saved, model.state_dict())


def test_checkpoints_are_atomic_and_loaded_without_pickled_code(tmp_path):
    for epoch in (0, 4):
        utils.save_on_master({"epoch": epoch, "model": {"w": torch.ones(2)}}, tmp_path / f"checkpoint-{epoch}.pth")
    (tmp_path / "checkpoint-9.pth.tmp").write_bytes(b"half a file")
    assert not list(tmp_path.glob("checkpoint-4.pth.tmp"))
    assert utils.latest_checkpoint(tmp_path, deepspeed=False) == tmp_path / "checkpoint-4.pth"
    assert utils.load_checkpoint_file(tmp_path / "checkpoint-4.pth")["epoch"] == 4
    before = (tmp_path / "checkpoint-4.pth").read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a save failing half-way: an unpicklable object
        utils.save_on_master({"epoch": 5, "model": {"w": torch.ones(2)}, "bad": lambda: 0},
                             tmp_path / "checkpoint-4.pth")
    assert (tmp_path / "checkpoint-4.pth").read_bytes() == before and not list(tmp_path.glob("checkpoint-4.pth.tmp"))
    torch.save({"model": {}, "payload": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match=r"(?s)evil.pth: refused by torch.load\(weights_only=True\).*PosixPath"):
        utils.load_checkpoint_file(tmp_path / "evil.pth")


def test_resuming_from_the_other_stages_checkpoint_says_so(tmp_path):
    """--resume with a pretraining checkpoint in fine-tuning (or the reverse) names the stage and --finetune, not the
    hundred keys that do not fit."""
    from timm.models import create_model

    import modeling_finetune  # noqa: F401  (registers the fine-tuning models)
    import modeling_pretrain  # noqa: F401

    pretraining = create_model("pretrain_videomae_mini_patch16_224", img_size=32, num_frames=4)
    finetuning = create_model("vit_mini_patch16_224", img_size=32, all_frames=4, num_classes=3)
    for saved, loading, message in [(pretraining, finetuning, "a pretraining checkpoint .*with --finetune"),
                                    (finetuning, pretraining, "a fine-tuning checkpoint .*pretraining resumes only")]:
        args = argparse.Namespace(output_dir="", resume=str(tmp_path / "other.pth"), auto_resume=True, start_epoch=0,
                                  epochs=9, enable_deepspeed=False)
        optimizer = torch.optim.SGD(saved.parameters(), lr=0.1)
        utils.save_on_master(utils.checkpoint_state(saved, optimizer, None, 2, args), args.resume)
        optimizer = torch.optim.SGD(loading.parameters(), lr=0.1)
        with pytest.raises(ValueError, match=f"other.pth: cannot resume from it: {message}"):
            utils.auto_load_model(args, loading, loading, optimizer, None)
    own = argparse.Namespace(output_dir="", resume=str(tmp_path / "own.pth"), auto_resume=True, start_epoch=0,
                             epochs=9, enable_deepspeed=False)
    optimizer = torch.optim.SGD(finetuning.parameters(), lr=0.1)
    utils.save_on_master(utils.checkpoint_state(finetuning, optimizer, None, 2, own), own.resume)
    utils.auto_load_model(own, finetuning, finetuning, optimizer, None)
    assert own.start_epoch == 3


@pytest.mark.parametrize("saved", ["checkpoint-2.pth", "checkpoint-last-4.pth", "deepspeed"])
def test_a_fresh_start_in_a_folder_of_an_earlier_run_is_refused(tmp_path, saved):
    """--no_auto_resume would overwrite checkpoint-0 and log.txt but keep the earlier run's newer checkpoints, from
    which the next (auto-)resume would go on."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(output_dir=str(tmp_path), resume="", auto_resume=False, start_epoch=0, epochs=9,
                              enable_deepspeed=False)
    assert utils.auto_load_model(args, model, model, optimizer, None) == {}  # an empty folder: a fresh start
    (tmp_path / "log.txt").write_text("")
    assert utils.auto_load_model(args, model, model, optimizer, None) == {}
    if saved == "deepspeed":
        (tmp_path / "checkpoint-3").mkdir()
        (tmp_path / "latest").write_text("checkpoint-3")
    else:
        utils.save_on_master(utils.checkpoint_state(model, optimizer, None, 2, args), tmp_path / saved)
    name = "checkpoint-3" if saved == "deepspeed" else saved
    with pytest.raises(SystemExit, match=f"holds {name} of an earlier run and --no_auto_resume starts afresh"):
        utils.auto_load_model(args, model, model, optimizer, None)
    args.auto_resume = True
    if saved != "deepspeed":
        utils.auto_load_model(args, model, model, optimizer, None)
        assert args.start_epoch == 3


def test_auto_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, capsys):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(output_dir=str(tmp_path), resume="", auto_resume=True, start_epoch=0, epochs=9,
                              enable_deepspeed=False)
    for epoch in (3, 5):
        with torch.no_grad():
            model.weight.fill_(epoch)
        utils.save_on_master(utils.checkpoint_state(model, optimizer, None, epoch, args),
                             tmp_path / f"checkpoint-{epoch}.pth")
    newest = tmp_path / "checkpoint-last-6.pth"
    newest.write_bytes((tmp_path / "checkpoint-5.pth").read_bytes()[:100])  # a file damaged on disk
    (tmp_path / "checkpoint-5.pth").write_bytes(b"")
    utils.auto_load_model(args, model, model, optimizer, None)
    assert args.start_epoch == 4 and args.resume == str(tmp_path / "checkpoint-3.pth")
    assert torch.equal(model.weight, torch.full((2, 2), 3.0))
    out = capsys.readouterr().out
    assert "checkpoint-last-6.pth: not a readable checkpoint" in out
    assert "next older checkpoint, checkpoint-5.pth" in out
    (tmp_path / "checkpoint-3.pth").write_bytes(b"")
    args.resume = ""
    with pytest.raises(ValueError, match=r"checkpoint-3.pth: cannot resume from it: .*not a readable checkpoint"):
        utils.auto_load_model(args, model, model, optimizer, None)


@pytest.mark.parametrize("argv, expected", [
    (["--mask_type", "tube", "--motion_mask_ratio", "0.5", "--box_dir", "boxes"],
     "--motion_mask_ratio, --box_dir are not used: --mask_type tube uses no motion box"),
    (["--mask_type", "motion_guided", "--missing_box", "random"],
     "--missing_box is not used: --mask_type motion_guided --guided_base random uses no motion box"),
    (["--trajectory_points", "4", "--trajectory_flow", "tvl1"],
     "--trajectory_points, --trajectory_flow are not used: no trajectory target, and no --hog_sampling trajectory"
     " tracks points"),
    (["--target", "hog", "--hog_sampling", "trajectory", "--trajectory_norm", "patch_std"],
     "--trajectory_norm is not used: --target hog has no trajectory head"),
    (["--hog_bins", "12", "--hog_loss_weight", "2"], "--hog_bins, --hog_loss_weight are not used: --target pixel has"
     " no hog head"),
    (["--target", "trajectory", "--normlize_target", "false"],
     "--normlize_target is not used: --target trajectory has no pixel head"),
    (["--zero_stage", "2"], "--zero_stage is not used: DeepSpeed is off (--enable_deepspeed)"),
    (["--save_ckpt_freq", "5"], "--save_ckpt_freq is not used: no --output_dir, so nothing is saved"),
    (["--opt", "sgd", "--opt_betas", "0.9", "0.95"], "--opt_betas is not used: --opt sgd has no betas"),
    (["--opt", "lookahead_adamw", "--momentum", "0.8"],
     "--momentum is not used: --opt lookahead_adamw has no momentum"),
    (["--opt", "sgd", "--momentum", "0.8"], None),
    (["--opt_betas", "0.9", "0.95", "--opt_eps", "1e-6"], None),
    (["--mask_type", "motion", "--motion_mask_ratio", "0.5", "--box_dir", "boxes", "--box_source", "video"], None),
    (["--mask_type", "motion_guided", "--guided_base", "box", "--motion_mask_ratio", "0.5", "--box_dir", "b"], None),
    (["--target", "pixel+hog", "--hog_sampling", "trajectory", "--trajectory_points", "4", "--hog_bins", "12"], None),
    (["--target", "trajectory", "--trajectory_norm", "patch_std", "--trajectory_loss_weight", "32"], None),
    (["--enable_deepspeed", "--zero_stage", "2", "--output_dir", "out", "--save_ckpt_freq", "5"], None),
])
def test_flags_a_mode_does_not_read_are_named(argv, expected):
    """A flag set to other than its default where the run does not read it gets a warning naming it."""
    parser = run_mofo_pretraining.get_args_parser()
    args = parser.parse_args(argv)
    lines = utils.warn_unused_flags(args, parser, run_mofo_pretraining.unused_flag_rules(args))
    assert lines == ([] if expected is None else [f"warning: {expected}"])


@pytest.mark.parametrize("argv, warned", [
    (["--mask_type", "motion"], True), (["--mask_type", "motion", "--mask_ratio", "0.9"], False),
    (["--mask_type", "motion", "--mask_ratio", "0.9", "--motion_mask_ratio", "0.9"], True),
    (["--mask_type", "motion", "--motion_mask_ratio", "0.9"], False), (["--mask_type", "tube"], False),
])
def test_motion_masking_with_equal_ratios_is_named_as_tube_masking(argv, warned):
    """Both ratios default to VideoMAE's 0.75: --mask_type motion without --mask_ratio 0.9 would silently be tube
    masking."""
    lines = run_mofo_pretraining.masking_warnings(run_mofo_pretraining.get_args_parser().parse_args(argv))
    assert bool(lines) == warned and all("tube masking (the paper: --mask_ratio 0.9" in line for line in lines)


def test_motion_guided_masking_of_one_tubelet_is_named():
    parser = run_mofo_pretraining.get_args_parser()
    lines = run_mofo_pretraining.masking_warnings(parser.parse_args(["--mask_type", "motion_guided", "--num_frames",
                                                                     "2"]))
    assert lines == ["warning: --mask_type motion_guided with --num_frames 2 (one tubelet): no motion to follow, "
                     "every clip gets its base slice's mask"]
    assert run_mofo_pretraining.masking_warnings(parser.parse_args(["--mask_type", "motion_guided"])) == []


@pytest.mark.parametrize("ratio, masked", [("0.0", 0), ("1.0", 16), ("0.05", 0)])
def test_a_mask_ratio_that_leaves_nothing_masked_or_visible_is_refused(dataset, tmp_path, ratio, masked):
    args = run_args(dataset, tmp_path / "out")
    args[args.index("--mask_ratio") + 1] = ratio
    result = pretrain(args + ["--mask_type", "tube"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"--mask_ratio {ratio} masks {masked} of the 16 tubes of a slice" in result.stderr, result.stderr[-2000:]


def test_save_ckpt_freq_zero_is_refused_at_the_start(tmp_path):
    result = pretrain(["--save_ckpt_freq", "0", "--device", "cpu", "--output_dir", str(tmp_path)])
    assert result.returncode != 0 and "--save_ckpt_freq must be >= 1" in result.stderr, result.stderr[-2000:]


def test_a_resumed_run_keeps_the_log_lines_of_the_epochs_it_does_not_run_again(tmp_path):
    """log.txt gets an epoch's line before its checkpoint: a run killed between the two, or while writing the line,
    leaves lines that the resumed run drops (it runs those epochs again) so every epoch is logged once."""
    utils.append_log(tmp_path, {"epoch": 0, "train_loss": 1.0})
    utils.append_log(tmp_path, {"epoch": 1, "train_loss": 0.9})
    with open(tmp_path / "log.txt", "a", encoding="utf-8") as f:
        f.write('{"epoch": 2, "train_lo')  # a write cut short by the kill
    assert [r["epoch"] for r in utils.read_log(tmp_path)] == [0, 1]
    assert utils.trim_log(tmp_path, 1) == [{"epoch": 0, "train_loss": 1.0}]
    assert (tmp_path / "log.txt").read_text() == '{"epoch": 0, "train_loss": 1.0}\n'
    before = (tmp_path / "log.txt").stat().st_mtime_ns
    assert utils.trim_log(tmp_path, 5) == [{"epoch": 0, "train_loss": 1.0}]
    assert (tmp_path / "log.txt").stat().st_mtime_ns == before  # nothing to drop: not rewritten
    assert utils.trim_log(tmp_path / "new", 0) == [] and not (tmp_path / "new").exists()


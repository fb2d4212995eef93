"""MOFO fine-tuning end to end on CPU: from a checkpoint written by run_mofo_pretraining.py, plain and MCA heads,
the multi-view test merged across two ranks, ``--eval``, and learning the synthetic motion classes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from timm.models import create_model

import make_synthetic_dataset
import modeling_finetune  # noqa: F401  (registers the models)
import run_mofo_finetuning
import utils
from test_mofo_model import RELEASE, release_head_state
from test_pretraining import WITHOUT_DEEPSPEED, NoStrayFiles, clean_env, pretrain, run_args, write_all_list
from utils import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune_data")
    make_synthetic_dataset.make_dataset(root, num_videos=16, num_frames=16, seed=5)
    return root


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """A checkpoint written by run_mofo_pretraining.py (one epoch of MOFO masking)."""
    write_all_list(data)
    out = tmp_path_factory.mktemp("pretrain_run")
    result = pretrain(run_args(data, out, "--epochs", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "checkpoint-0.pth"


def finetune_args(data: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [
        "--data_set", "SSV2", "--nb_classes", str(len(make_synthetic_dataset.CLASSES)), "--data_path", str(data),
        "--data_root", str(data / "videos"), "--box_dir", str(data / "gt_boxes"), "--model", model,
        "--input_size", "64", "--short_side_size", "64", "--num_frames", "8", "--batch_size", "4",
        "--num_sample", "1", "--epochs", "1", "--warmup_epochs", "0", "--lr", "0.01", "--test_num_segment", "2",
        "--test_num_crop", "2", "--device", "cpu", "--precision", "fp32", "--num_workers", "0",
        "--output_dir", str(out), "--print_freq", "100", *extra,
    ]


def finetune(args: list[str], env: dict | None = None, cwd: Path = REPO, without_deepspeed: bool = False
             ) -> subprocess.CompletedProcess:
    python = [sys.executable, "-c", WITHOUT_DEEPSPEED] if without_deepspeed else [sys.executable]
    return subprocess.run([*python, str(REPO / "run_mofo_finetuning.py"), *args], cwd=cwd,
                          env=env or clean_env(), capture_output=True, text=True, timeout=300)


def test_eval_tests_only_complete_weights_and_runs_a_mofo_release_checkpoint(data, pretrained, tmp_path):
    """--eval of a checkpoint without the model's head would test random weights: refused. A MOFO release fine-tuned
    checkpoint (DeepSpeed layout, its head's own key names) is tested with the release's head settings."""
    out = tmp_path / "eval"
    refused = finetune(finetune_args(data, out, "vit_mini_patch16_224", "--eval", "--finetune", str(pretrained)))
    assert refused.returncode != 0 and "--eval tests these weights" in refused.stderr
    model = create_model("vit_mini_patch16_224_mofo", num_classes=len(make_synthetic_dataset.CLASSES), img_size=64,
                         all_frames=8, **RELEASE)
    release = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": release_head_state(model)}, release)
    wrong_head = finetune(finetune_args(data, out, "vit_mini_patch16_224_mofo", "--eval", "--finetune", str(release)))
    assert wrong_head.returncode != 0 and "holds the MOFO release's head" in wrong_head.stderr
    flags = [word for key, value in RELEASE.items() for word in (f"--{key}", str(value))]
    result = finetune(finetune_args(data, out, "vit_mini_patch16_224_mofo", "--eval", "--finetune", str(release),
                                    *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the MOFO release's head, renamed" in result.stdout and "not initialized" not in result.stdout
    assert json.loads((out / "test_results.json").read_text())["videos"] > 0


@pytest.mark.parametrize("model", ["vit_mini_patch16_224", "vit_mini_patch16_224_mofo"])
def test_finetune_from_a_pretraining_run_then_eval(data, pretrained, tmp_path, model):
    out, workdir = tmp_path / model, tmp_path / "workdir"
    workdir.mkdir()
    stray = NoStrayFiles(tmp_path, data)
    result = finetune(finetune_args(data, out, model, "--finetune", str(pretrained)), cwd=workdir, env=stray.env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    stray.check()
    # Only what the run is for, and nothing in the working folder (the release wrote debug images every step).
    assert not list(workdir.iterdir())
    assert run_mofo_finetuning.get_args_parser().parse_args([]).enable_deepspeed is False  # DDP unless asked
    written = {p.name for p in out.iterdir()}
    expected = {"checkpoint-0.pth", "log.txt", "test_results.json", "test_views_rank0.jsonl"}
    assert written == expected | {"checkpoint-best.pth"}  # best: from the first validation on
    assert f"Loaded {pretrained}" in result.stdout
    missing = "fc_norm.weight" if model.endswith("224") else "mca.0.inner.attn.qkv.weight"
    assert "not initialized from the checkpoint" in result.stdout and missing in result.stdout
    record = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert {"train_loss", "val_acc1", "val_acc5"} <= set(record)
    results = json.loads((out / "test_results.json").read_text())
    num_test = len((data / "test.csv").read_text().splitlines())
    assert results["videos"] == num_test and results["views"] == num_test * 2 * 2 and results["skipped_videos"] == 0
    test_rows = [line.split()[0] for line in (data / "test.csv").read_text().splitlines()]
    views = [json.loads(line) for line in (out / "test_views_rank0.jsonl").read_text().splitlines()]
    assert len(views) == num_test * 2 * 2 and all(view["video"] == test_rows[view["id"]] for view in views)
    assert 0 <= results["acc1"] <= 100
    assert results["weights"] == str((out / "checkpoint-0.pth").resolve())  # the weights the results are of

    (out / "test_results.json").unlink()
    again = finetune(finetune_args(data, out, model, "--eval", "--resume", str(out / "checkpoint-0.pth")))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "test_results.json").read_text()) == results
    # VideoMAE's test command, the training command with --eval: --finetune's pretraining weights have no head, so
    # the run's own newest checkpoint is tested
    (out / "test_results.json").unlink()
    videomae_way = finetune(finetune_args(data, out, model, "--finetune", str(pretrained), "--eval"))
    assert videomae_way.returncode == 0, videomae_way.stderr[-3000:]
    assert f"testing the run's newest checkpoint, {out / 'checkpoint-0.pth'}" in videomae_way.stdout
    assert json.loads((out / "test_results.json").read_text()) == results
    (out / "test_results.json").unlink()
    no_weights_named = finetune(finetune_args(data, out, model, "--eval"))
    assert no_weights_named.returncode == 0, no_weights_named.stderr[-3000:]
    assert f"--eval tests {out / 'checkpoint-0.pth'}, the newest checkpoint in --output_dir" in no_weights_named.stdout
    assert json.loads((out / "test_results.json").read_text()) == results
    # A test video gone from disk (so without a box file) is left out, logged once for its four views, and counted.
    lists = tmp_path / f"{model}_lists"
    lists.mkdir()
    for name in ("train.csv", "val.csv"):
        shutil.copy(data / name, lists / name)
    (lists / "test.csv").write_text((data / "test.csv").read_text() + "gone.mp4 0\n")
    (out / "test_results.json").unlink()
    with_gone = finetune(finetune_args(data, out, model, "--eval", "--data_path", str(lists)))
    assert with_gone.returncode == 0, with_gone.stderr[-3000:]
    assert json.loads((out / "test_results.json").read_text()) == results | {"skipped_videos": 1}
    skipped = [line for line in with_gone.stderr.splitlines() if "skipping" in line and "gone.mp4" in line]
    assert len(skipped) == 1 and "it is left out of the evaluation" in skipped[0], skipped
    assert f"1 of {num_test + 1} test videos could not be used" in with_gone.stdout
    if model.endswith("_mofo"):  # tested with other boxes than it was trained with: named
        other_boxes = finetune(finetune_args(data, out, model, "--eval", "--box_source", "frame"))
        assert other_boxes.returncode == 0, other_boxes.stderr[-3000:]
        assert ("warning: the checkpoint's run used --box_source video, this run --box_source frame"
                in other_boxes.stdout)
        for how in ([], ["--resume", str(out / "checkpoint-0.pth")]):  # as --finetune: a head of other settings
            other_head = finetune(finetune_args(data, out, model, "--eval", "--mca_tokens", "overlap", *how))
            assert other_head.returncode != 0 and "trained with --mca_tokens centre: --eval it with the same head" in (
                other_head.stderr), other_head.stderr[-2000:]
    # a classifier of another size is an error, not a reason to test another checkpoint
    state = torch.load(out / "checkpoint-0.pth", map_location="cpu", weights_only=True)["model"]
    torch.save({"model": {**state, "head.weight": state["head.weight"][:3], "head.bias": state["head.bias"][:3]}},
               tmp_path / "three_classes.pth")
    wrong_head = finetune(finetune_args(data, out, model, "--eval", "--finetune", str(tmp_path / "three_classes.pth")))
    assert wrong_head.returncode != 0 and "is another size than the model's head" in wrong_head.stderr


def test_videomae_switches_use_cls_and_no_eval_during_finetuning(data, tmp_path):
    """VideoMAE's ``--use_cls`` (final norm, first token) and ``--disable_eval_during_finetuning`` (no validation,
    so no checkpoint-best; the final test still runs); ``--use_mean_pooling`` also works bare, as in VideoMAE."""
    from run_mofo_finetuning import get_args_parser

    parse = get_args_parser().parse_args
    assert parse(["--use_mean_pooling"]).use_mean_pooling
    assert not parse(["--use_mean_pooling", "false"]).use_mean_pooling
    assert not parse(["--use_cls"]).use_mean_pooling and parse([]).use_mean_pooling
    assert parse([]).train_interpolation == "bicubic"
    assert parse(["--train_interpolation", "random"]).train_interpolation == "random"
    with pytest.raises(SystemExit):
        parse(["--train_interpolation", "lanczos"])  # PIL's affine ops take nearest, bilinear and bicubic only
    out = tmp_path / "run"
    result = finetune(finetune_args(data, out, "vit_mini_patch16_224", "--use_cls", "--disable_eval_during_finetuning"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Val acc1" not in result.stdout and not (out / "checkpoint-best.pth").exists()
    record = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert "train_loss" in record and not any(k.startswith("val_") for k in record)
    state = torch.load(out / "checkpoint-0.pth", map_location="cpu", weights_only=True)["model"]
    assert "norm.weight" in state and "fc_norm.weight" not in state
    assert json.loads((out / "test_results.json").read_text())["videos"] > 0


@pytest.mark.parametrize("flag", ["--batch_size", "--update_freq", "--num_sample", "--sampling_rate", "--num_frames",
                                  "--test_num_segment", "--test_num_crop", "--short_side_size", "--print_freq"])
def test_counts_below_one_are_refused_when_parsed(flag, capsys):
    """Else a zero would fail as a traceback (a division, an empty batch) or, for the test views, after training."""
    from run_mofo_finetuning import get_args_parser

    with pytest.raises(SystemExit):
        get_args_parser().parse_args([flag, "0"])
    assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err
    assert getattr(get_args_parser().parse_args([flag, "3"]), flag[2:]) == 3


def test_rand_augment_policy_is_checked_when_parsed_and_none_turns_it_off(capsys):
    """``--aa none`` (an EXTRA_ARGS word; ``--aa ''`` there would pass two quote characters) and ``--aa ""``."""
    from run_mofo_finetuning import get_args_parser

    parse = get_args_parser().parse_args
    assert parse([]).aa == "rand-m7-n4-mstd0.5-inc1" and parse(["--aa", "rand-m9-n2"]).aa == "rand-m9-n2"
    assert parse(["--aa", "none"]).aa == "" and parse(["--aa", ""]).aa == ""
    for bad in ("''", "rand-m7-x3", "autoaug"):
        with pytest.raises(SystemExit):
            parse(["--aa", bad])
        assert f"argument --aa: {bad!r} is not a timm RandAugment policy" in capsys.readouterr().err


def test_model_ema_is_updated_saved_and_testable(data, pretrained, tmp_path):
    """``--model_ema``: decay 1 keeps the starting (--finetune) weights, decay 0 follows the model; the average is
    saved as ``model_ema`` and tested with ``--model_key model_ema``. DeepSpeed in bf16 is refused."""
    encoder = torch.load(pretrained, map_location="cpu", weights_only=True)["model"]
    runs = {}
    for decay in ("1.0", "0.0"):
        out = tmp_path / f"decay{decay}"
        result = finetune(finetune_args(data, out, "vit_mini_patch16_224", "--finetune", str(pretrained),
                                        "--model_ema", "--model_ema_decay", decay))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        runs[decay] = out, torch.load(out / "checkpoint-0.pth", map_location="cpu", weights_only=True)
    _, kept = runs["1.0"]
    qkv = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(kept["model_ema"][qkv], encoder[f"encoder.{qkv}"])
    assert not torch.equal(kept["model"][qkv], kept["model_ema"][qkv])
    out, followed = runs["0.0"]
    for key, value in followed["model"].items():
        torch.testing.assert_close(followed["model_ema"][key], value)
    tested = {}
    for key in ("model", "model_ema"):
        (out / "test_results.json").unlink()
        result = finetune(finetune_args(data, out, "vit_mini_patch16_224", "--eval", "--finetune",
                                        str(out / "checkpoint-0.pth"), "--model_key", key))
        assert result.returncode == 0, result.stderr[-3000:]
        tested[key] = json.loads((out / "test_results.json").read_text())
    assert (tested["model"].pop("model_key"), tested["model_ema"].pop("model_key")) == ("model", "model_ema")
    assert tested["model"] == tested["model_ema"]
    assert tested["model"]["weights"] == str((out / "checkpoint-0.pth").resolve())
    refused = finetune(finetune_args(data, tmp_path / "ds", "vit_mini_patch16_224", "--model_ema",
                                     "--enable_deepspeed", "--precision", "bf16"))
    assert refused.returncode != 0 and "--model_ema with --enable_deepspeed --precision bf16" in refused.stderr


def test_model_ema_under_deepspeed_is_saved_and_resumed(data, tmp_path):
    """DeepSpeed (fp32, two processes) keeps the average in its checkpoint's client state; a resumed run picks it up
    (decay 0: the average is the model)."""
    out = tmp_path / "deepspeed"
    for epochs in ("1", "3"):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(free_port()), "run_mofo_finetuning.py"]
        args = finetune_args(data, out, "vit_mini_patch16_224", "--enable_deepspeed", "--model_ema",
                             "--model_ema_decay", "0", "--epochs", epochs, "--save_ckpt_freq", "10")
        result = subprocess.run(torchrun + args, cwd=REPO, env=clean_env(), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"Resume checkpoint {out / 'checkpoint-0'}" in result.stdout
    assert f"Saved {out / 'checkpoint-last-1'}" in result.stdout and f"Saved {out / 'checkpoint-2'}" in result.stdout
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-0", "checkpoint-2", "checkpoint-best"}
    state = torch.load(out / "checkpoint-2" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert state["module"].keys() == state["model_ema"].keys()
    for key, value in state["module"].items():
        torch.testing.assert_close(state["model_ema"][key], value)


KILLED_AT_BEST = """import os, signal, sys
import run_mofo_finetuning, utils
save_model = utils.save_model
def save_or_die(*args, tag=None, **kwargs):
    if tag == "checkpoint-best":
        os.kill(os.getpid(), signal.SIGKILL)
    return save_model(*args, tag=tag, **kwargs)
utils.save_model = save_or_die
run_mofo_finetuning.main(run_mofo_finetuning.get_args_parser().parse_args(sys.argv[1:]))
"""


def test_a_job_killed_before_its_best_checkpoint_saves_it_when_resumed(data, pretrained, tmp_path):
    """checkpoint-best is written before the epoch's checkpoint: a job killed in between reruns the epoch when
    resumed and writes it then (the other order left the best epoch without checkpoint-best for good, its accuracy
    already in log.txt)."""
    out = tmp_path / "killed"
    args = finetune_args(data, out, "vit_mini_patch16_224", "--finetune", str(pretrained), "--epochs", "2",
                         "--test_num_segment", "1", "--test_num_crop", "1")
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_BEST, *args], cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = finetune(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "warning: resuming a run that used" not in resumed.stdout  # the same settings
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]
    best = max(log, key=lambda entry: (entry["val_acc1"], -entry["epoch"]))
    saved = torch.load(out / "checkpoint-best.pth", map_location="cpu", weights_only=True)
    assert saved["epoch"] == best["epoch"]
    # the finished run rerun with another lr (or requeued on another GPU count) trains nothing, and says so
    other_lr = finetune([*args, "--lr", "0.02"])
    assert other_lr.returncode == 0, other_lr.stderr[-3000:]
    assert (f"warning: {out / 'checkpoint-1.pth'} finished all 2 epochs of a run with --lr 0.00015625; this "
            "command's --lr 0.0003125 (lrs as scaled by the total batch) trains nothing: the finished run is only "
            "tested again") in other_lr.stdout and "this run goes on with" not in other_lr.stdout
    # another --model in the run's folder: one line naming the saved model, not torch's list of every key
    other_model = finetune([*args, "--model", "vit_mini_patch16_224_mofo", "--epochs", "3"])
    assert other_model.returncode != 0
    error = other_model.stderr.strip().splitlines()[-1]
    assert "its weights do not fit --model vit_mini_patch16_224_mofo: " in error, other_model.stderr[-2000:]
    assert "it was saved by a run with --model vit_mini_patch16_224: pass the same" in error
    assert "Missing key(s)" not in other_model.stderr
    # a best saved in an epoch the resume trains again (here: epoch 2, as if killed before checkpoint-2) is set aside
    torch.save({**saved, "epoch": 2}, out / "checkpoint-best.pth")
    # resubmitted with an edited recipe: it goes on, naming what changed
    longer = finetune([*args, "--lr", "0.02", "--epochs", "3", "--no_save_ckpt"])
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "warning: checkpoint-best.pth is from epoch 2, which this run trains again" in longer.stdout
    assert (out / "abandoned-best-epoch2.pth").exists() and not (out / "checkpoint-best.pth").exists()
    assert ("warning: resuming a run that used --lr 0.00015625 --epochs 2; this run goes on with --lr 0.0003125 "
            "--epochs 3 (lrs as scaled by the total batch)" in longer.stdout)


def test_head_classes_no_listed_video_has_are_warned():
    """The default --nb_classes 400 of a forgotten flag: named with the lists' labels (train, val and test together,
    so that a class only the val list has is no reason to warn; EPIC per head; unlabelled test rows are -1)."""
    def lists(*targets):
        return SimpleNamespace(entries=[SimpleNamespace(target=t) for t in targets])

    ssv2 = SimpleNamespace(data_set="SSV2", head_sizes=[400])
    assert run_mofo_finetuning.unused_class_warnings(ssv2, [lists((1,), (3,)), None, lists((-1,))]) == [
        "warning: the lists' labels are 0 to 3, but --nb_classes 400: 396 outputs of the head are classes no listed "
        "video has (is --nb_classes right for these lists?)"]
    assert run_mofo_finetuning.unused_class_warnings(SimpleNamespace(data_set="SSV2", head_sizes=[4]),
                                                     [lists((1,)), lists((3,)), lists((-1,))]) == []
    epic = SimpleNamespace(data_set="EPIC-KITCHENS-100", head_sizes=[97, 300])
    warned = run_mofo_finetuning.unused_class_warnings(epic, [lists((96, 5)), lists((0, 7)), lists((-1, -1))])
    assert [line.split(":")[1] for line in warned] == [" the lists' labels are 0 to 7, but --nb_nouns 300"]


def test_mofo_model_without_box_dir_is_refused(data, tmp_path):
    args = finetune_args(data, tmp_path, "vit_mini_patch16_224_mofo")
    del args[args.index("--box_dir"):args.index("--box_dir") + 2]
    result = finetune(args)
    assert result.returncode != 0 and "pass --box_dir" in result.stderr


def test_pair_mixup_with_an_odd_step_is_refused_at_startup(data, tmp_path):
    result = finetune(finetune_args(data, tmp_path, "vit_mini_patch16_224", "--mixup_mode", "pair", "--batch_size",
                                    "3"))
    assert result.returncode != 0 and "--batch_size 3 x --num_sample 1 clips per step must be even" in result.stderr


def test_multi_view_test_is_merged_across_two_ranks(data, pretrained, tmp_path):
    out = tmp_path / "ddp"
    port = str(free_port())
    args = finetune_args(data, out, "vit_mini_patch16_224_mofo", "--finetune", str(pretrained), "--no_save_ckpt")
    procs = [subprocess.Popen([sys.executable, "run_mofo_finetuning.py", *args], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=clean_env(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                                            SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="2", MASTER_PORT=port))
             for rank in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    per_rank = [len((out / f"test_views_rank{r}.jsonl").read_text().splitlines()) for r in range(2)]
    num_test = len((data / "test.csv").read_text().splitlines())
    assert all(n > 0 for n in per_rank) and sum(per_rank) >= num_test * 4
    results = json.loads((out / "test_results.json").read_text())
    assert results["videos"] == num_test and results["views"] == num_test * 4
    assert not list(out.glob("checkpoint-*"))


@pytest.mark.parametrize("model, argv, expected", [
    ("vit_mini_patch16_224", ["--mca_depth", "2", "--box_dir", "boxes"],
     "--mca_depth, --box_dir are not used: --model vit_mini_patch16_224 has no motion-box MCA head"),
    ("vit_mini_patch16_224_mofo", ["--data_set", "SSV2", "--sampling_rate", "2"],
     "--sampling_rate is not used: --data_set SSV2 samples TSN segments over the whole clip, with no stride"),
    ("vit_mini_patch16_224_mofo", ["--eval", "--model_ema"],
     "--model_ema is not used: --eval tests the given weights (an EMA's: --eval --finetune CHECKPOINT --model_key"),
    ("vit_mini_patch16_224_mofo", ["--aa", "", "--train_interpolation", "bilinear"],
     "--train_interpolation is not used: no RandAugment"),
    ("vit_mini_patch16_224_mofo", ["--zero_stage", "1"], "--zero_stage is not used: DeepSpeed is off"),
    ("vit_mini_patch16_224_mofo", ["--data_set", "EPIC-KITCHENS-100", "--nb_classes", "97"],
     "--nb_classes is not used: EPIC-KITCHENS-100's heads have --nb_verbs and --nb_nouns classes"),
    ("vit_mini_patch16_224_mofo", ["--nb_verbs", "10"], "--nb_verbs is not used: --data_set Kinetics-400 is not EPIC"),
    ("vit_mini_patch16_224_mofo", ["--model_key", "model_ema"], "--model_key is not used: they select the weights"),
    ("vit_mini_patch16_224_mofo", ["--model_ema_decay", "0.99"], "--model_ema_decay is not used: no --model_ema"),
    ("vit_mini_patch16_224_mofo", ["--mixup", "0", "--cutmix", "0", "--mixup_mode", "pair"],
     "--mixup_mode is not used: mixup and cutmix are off"),
    ("vit_mini_patch16_224_mofo", ["--reprob", "0", "--recount", "2"], "--recount is not used: random erasing is off"),
    ("vit_mini_patch16_224_mofo", ["--data_set", "EPIC-KITCHENS-100", "--nb_verbs", "10", "--finetune", "x.pth",
                                   "--model_key", "model_ema", "--mixup", "0", "--mixup_mode", "pair", "--recount",
                                   "2"], None),
    ("vit_mini_patch16_224_mofo", ["--mca_depth", "2", "--box_dir", "boxes", "--sampling_rate", "2", "--aa", "",
                                   "--enable_deepspeed", "--zero_stage", "1", "--model_ema"], None),
])
def test_flags_a_mode_does_not_read_are_named(model, argv, expected):
    """A flag set to other than its default where the run does not read it gets a warning naming it."""
    parser = run_mofo_finetuning.get_args_parser()
    args = parser.parse_args(["--model", model, *argv])
    args.use_box = model.endswith("_mofo")
    lines = utils.warn_unused_flags(args, parser, run_mofo_finetuning.unused_flag_rules(args))
    assert len(lines) == (expected is not None) and all(line.startswith(f"warning: {expected}") for line in lines)


def test_a_plain_model_reads_no_box_file_and_startup_errors_come_first(data, tmp_path):
    """--box_dir for a plain model is named as unused and its files are not read (a missing folder is no error);
    --model_key with --resume (weights it does not select) and --save_ckpt_freq 0 stop the run at the start."""
    args = finetune_args(data, tmp_path / "plain", "vit_mini_patch16_224", "--eval")
    args[args.index("--box_dir") + 1] = str(tmp_path / "no_such_folder")
    result = finetune(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: --box_dir is not used: --model vit_mini_patch16_224 has no motion-box MCA head" in result.stdout
    for extra, message in [(["--resume", str(tmp_path / "x.pth"), "--model_key", "model_ema"],
                            "--model_key and --model_prefix select the weights --finetune loads"),
                           (["--save_ckpt_freq", "0"], "--save_ckpt_freq must be >= 1")]:
        result = finetune(finetune_args(data, tmp_path / "refused", "vit_mini_patch16_224", *extra))
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    # the test list is read with the others, before training; more classes than SSV2 has are named
    lists = tmp_path / "no_test_list"
    lists.mkdir()
    for split in ("train", "val"):
        shutil.copy(data / f"{split}.csv", lists / f"{split}.csv")
    args = finetune_args(data, tmp_path / "no_test", "vit_mini_patch16_224", "--nb_classes", "200")
    args[args.index("--data_path") + 1] = str(lists)
    result = finetune(args)
    assert result.returncode != 0 and f"{lists / 'test.csv'}" in result.stderr, result.stderr[-2000:]
    assert "Epoch: [0]" not in result.stdout
    assert "warning: --nb_classes 200, but SSV2 has 174 classes" in result.stdout


def test_a_resumed_run_needs_no_finetune_source_and_names_a_newer_one(data, pretrained, tmp_path):
    """--finetune a pretraining run's folder: the file it named is recorded. Resubmitted, the run resumes from its own
    checkpoint without reading --finetune (moved away meanwhile: still resumes), and names the folder's newer
    checkpoint it does not start from (a run that went on pretraining)."""
    source = tmp_path / "pretraining"
    source.mkdir()
    shutil.copy(pretrained, source / "checkpoint-0.pth")
    out = tmp_path / "from_folder"
    args = finetune_args(data, out, "vit_mini_patch16_224", "--finetune", str(source), "--test_num_segment", "1",
                         "--test_num_crop", "1", "--disable_eval_during_finetuning")
    first = finetune(args)
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = torch.load(out / "checkpoint-0.pth", weights_only=True)["args"]["finetune_file"]
    assert recorded == str((source / "checkpoint-0.pth").resolve())
    shutil.copy(pretrained, source / "checkpoint-3.pth")
    longer = args[:]
    longer[longer.index("--epochs") + 1] = "2"
    second = finetune(longer)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"--finetune {source} not loaded: resuming from {out / 'checkpoint-0.pth'}" in second.stdout
    assert (f"warning: this run was fine-tuned from {recorded}; --finetune {source} is now "
            f"{(source / 'checkpoint-3.pth').resolve()}") in second.stdout
    assert torch.load(out / "checkpoint-1.pth", weights_only=True)["args"]["finetune_file"] == recorded
    shutil.move(source, tmp_path / "moved")
    longer[longer.index("--epochs") + 1] = "3"
    third = finetune(longer, without_deepspeed=True)  # DeepSpeed is needed only with --enable_deepspeed
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"Resume checkpoint {out / 'checkpoint-1.pth'}" in third.stdout and "warning: this run" not in third.stdout

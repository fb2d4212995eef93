"""The launch scripts scripts/<dataset>/<stage>.sh.

End to end on CPU, chained as a user would run them (boxes -> pretraining -> fine-tuning from that checkpoint), with
tiny overrides through the scripts' environment variables and EXTRA_ARGS, no SLURM and GPUS=1 (torchrun, gloo).
With torchrun/srun/python replaced by recorders: the default commands carry the paper's recipe, EXTRA_ARGS comes
last, and under a SLURM allocation (a spooled copy of the script, as sbatch runs it) srun is used from the
submission directory.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
import torch

import make_synthetic_dataset
from motion_detection import load_boxes

REPO = Path(__file__).resolve().parents[1]
STAGE_SCRIPTS = sorted((REPO / "scripts").glob("*/*.sh"))
ALL_SCRIPTS = sorted((REPO / "scripts").rglob("*.sh"))
VENV_BIN = Path(sys.executable).parent  # the venv's python and torchrun
# Variables the scripts take with a default or as an option (${NAME:-...}, ${NAME:+...}): none may leak in from the
# environment running the tests.
KNOBS = {name for script in ALL_SCRIPTS for name in re.findall(r"\$\{(\w+):[-?+]", script.read_text())}
TINY = "--device cpu --precision fp32 --input_size 64 --num_frames 8 --num_workers 0 --warmup_epochs 0 --print_freq 100"
TINY_PRETRAIN = f"{TINY} --decoder_depth 1"
TINY_FINETUNE = f"{TINY} --short_side_size 64 --num_sample 1 --test_num_segment 1 --test_num_crop 1 --lr 0.01"
EPIC_HEADER = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
               "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
               "noun_class", "all_nouns", "all_noun_classes"]
EPIC_VIDEOS = ["P01/videos/P01_01.MP4", "P01/videos/P01_02.MP4", "P02/videos/P02_01.MP4", "P03/videos/P03_11.MP4"]
VIDEO_FRAMES = 24
EPIC_SEGMENTS = [(1, 14), (9, VIDEO_FRAMES)]  # (start_frame, stop_frame) of each long video's two segments


@dataclass
class Data:
    root: Path
    videos: list[str]  # every video of the lists, relative to DATA_ROOT
    num_train: int
    num_test: int
    finetune_args: str  # the classes of the synthetic data

    @property
    def env(self) -> dict[str, str]:
        root = self.root
        return {"DATA_PATH": str(root), "DATA_ROOT": str(root / "videos"), "BOX_DIR": str(root / "boxes")}


def write_epic_csv(path: Path, rows: list[tuple[str, int, int, int, int]]) -> None:
    """EPIC-KITCHENS-100 annotation csv: (video, start_frame, stop_frame, verb_class, noun_class) rows. The
    quoted list columns hold commas, as in the official files."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(EPIC_HEADER)
        for k, (video, start, stop, verb, noun) in enumerate(rows):
            participant, video_id = video.split("/")[0], Path(video).stem
            writer.writerow([f"{video_id}_{k}", participant, video_id, "00:00:01.00", "00:00:01.00", "00:00:02.00",
                             start, stop, "put plate, cup", "put", verb, "plate", noun, "['plate', 'cup']",
                             f"[{noun}, 7]"])


def make_ssv2(root: Path) -> Data:
    make_synthetic_dataset.make_dataset(root, num_videos=8, num_frames=16, seed=11)
    lists = {split: (root / f"{split}.csv").read_text().split("\n")[:-1] for split in ("train", "val", "test")}
    videos = [line.split()[0] for lines in lists.values() for line in lines]
    classes = len(make_synthetic_dataset.CLASSES)
    return Data(root, videos, len(lists["train"]), len(lists["test"]), f"--nb_classes {classes}")


def make_epic(root: Path) -> Data:
    """Synthetic clips renamed to long videos <participant>/videos/<video>.MP4, two action segments each."""
    make_synthetic_dataset.make_dataset(root / "source", num_videos=len(EPIC_VIDEOS), num_frames=VIDEO_FRAMES, seed=12)
    for index, video in enumerate(EPIC_VIDEOS):
        (root / "videos" / video).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "source" / "videos" / f"{index:06d}.mp4", root / "videos" / video)
    rows = [(video, start, stop, k % 3, (2 * k + part) % 5)
            for k, video in enumerate(EPIC_VIDEOS) for part, (start, stop) in enumerate(EPIC_SEGMENTS)]
    write_epic_csv(root / "train.csv", rows)
    write_epic_csv(root / "val.csv", rows[::2])
    write_epic_csv(root / "test.csv", rows[1::2])
    return Data(root, EPIC_VIDEOS, len(rows), len(rows[1::2]), "")


DATASETS = {"ssv2": make_ssv2, "epic": make_epic}


def script_env(**variables: str) -> dict[str, str]:
    """The test process's environment without SLURM, distributed or script variables, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in KNOBS and not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    return env | variables


def run_script(script: Path, cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    """bash SCRIPT from another folder than the repository (the script finds the root itself)."""
    return subprocess.run(["bash", str(script)], cwd=cwd, env=script_env(**variables), capture_output=True, text=True,
                          timeout=300)


class Pipeline:
    """Runs each (dataset, stage) once, after the stages it needs, and keeps its output."""

    def __init__(self, tmp: Path):
        self.tmp, self.data, self.runs = tmp, {}, {}

    def dataset(self, name: str) -> Data:
        if name not in self.data:
            assert name in DATASETS, f"scripts/{name}/: no test data set for it in {__file__}"
            self.data[name] = DATASETS[name](self.tmp / name)
        return self.data[name]

    def run(self, dataset: str, stage: str) -> tuple[Path, subprocess.CompletedProcess]:
        if (dataset, stage) in self.runs:
            return self.runs[dataset, stage]
        data, out = self.dataset(dataset), self.tmp / f"{dataset}_{stage}"
        if stage == "boxes":
            variables = {"FLOW": "dis", "EXTRA_ARGS": "--num_workers 0"}
        elif stage == "pretrain":
            self.run(dataset, "boxes")
            variables = {"MODEL": "pretrain_videomae_mini_patch16_224", "EXTRA_ARGS": TINY_PRETRAIN}
        elif stage.startswith("finetune"):
            checkpoint = self.run(dataset, "pretrain")[0] / "checkpoint-0.pth"
            model = "vit_mini_patch16_224_mofo" if stage == "finetune_mofo" else "vit_mini_patch16_224"
            variables = {"MODEL": model, "PRETRAINED": str(checkpoint), "TOTAL_BATCH": "2",
                         "EXTRA_ARGS": f"{TINY_FINETUNE} {data.finetune_args}"}
        else:
            pytest.fail(f"scripts/{dataset}/{stage}.sh: no end-to-end test for this stage in {__file__}")
        result = run_script(REPO / "scripts" / dataset / f"{stage}.sh", self.tmp, **data.env, OUTPUT_DIR=str(out),
                            GPUS="1", EPOCHS="1", BATCH_SIZE="2", **variables)
        assert result.returncode == 0, f"{dataset}/{stage}.sh:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        self.runs[dataset, stage] = out, result
        return out, result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(tmp_path_factory.mktemp("scripts"))


@pytest.mark.parametrize("script", STAGE_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_stage_script_end_to_end(script, pipeline):
    dataset, stage = script.parent.name, script.stem
    out, result = pipeline.run(dataset, stage)
    data = pipeline.dataset(dataset)
    log = result.stdout + result.stderr
    if stage == "boxes":
        assert f"{len(data.videos)} written | 0 already done | 0 failed" in log
        for video in data.videos:
            boxes = load_boxes(data.root / "boxes" / Path(video).with_suffix(".json"))
            assert boxes.flow["method"] == "dis" and boxes.num_frames > 1
        assert not list((data.root / "boxes").glob("failed*"))
        return
    assert "distributed init (rank 0/1, gloo)" in log  # torchrun with one CPU process, not srun
    if stage == "pretrain":
        checkpoint = torch.load(out / "checkpoint-0.pth", map_location="cpu", weights_only=True)
        assert checkpoint["epoch"] == 0 and "encoder.patch_embed.proj.weight" in checkpoint["model"]
        assert checkpoint["args"]["mask_type"] == "motion" and checkpoint["args"]["box_dir"] == str(data.root / "boxes")
        if dataset == "epic":  # one VideoMAE V2 line per training segment: its long video, first frame, length
            lines = Path(checkpoint["args"]["data_path"]).read_text().splitlines()
            assert lines == [f"{video} {start - 1} {stop - start + 1}"
                             for video in EPIC_VIDEOS for start, stop in EPIC_SEGMENTS]
    else:
        model = "vit_mini_patch16_224_mofo" if stage == "finetune_mofo" else "vit_mini_patch16_224"
        assert f"Model: {model}," in log and f"Loaded {pipeline.run(dataset, 'pretrain')[0]}/checkpoint-0.pth" in log
        results = json.loads((out / "test_results.json").read_text())
        assert results["videos"] == results["views"] == data.num_test
        accuracies = ["verb_acc1", "noun_acc1", "action_acc1"] if dataset == "epic" else ["acc1"]
        assert all(0 <= results[name] <= 100 for name in accuracies)


# Dry runs: torchrun, srun and python record their arguments instead of running.

RECORDER = '#!/usr/bin/env bash\nprintf "%s\\0" "$(basename "$0")" "$@" >> "$RECORD"\n'
PAPER_PRETRAINING = {"--mask_type": "motion", "--mask_ratio": "0.9", "--motion_mask_ratio": "0.75",
                     "--model": "pretrain_videomae_base_patch16_224", "--decoder_depth": "4", "--batch_size": "32",
                     "--num_frames": "16", "--sampling_rate": "2", "--opt": "adamw", "--opt_betas": "0.9 0.95",
                     "--lr": "1.5e-4", "--warmup_epochs": "40", "--epochs": "800"}
FINETUNING = {"--num_frames": "16", "--input_size": "224", "--test_num_segment": "2", "--test_num_crop": "3",
              "--batch_size": "8", "--lr": "5e-4", "--opt_betas": "0.9 0.999", "--layer_decay": "0.75"}
RECIPES = {
    ("ssv2", "pretrain"): PAPER_PRETRAINING,
    ("epic", "pretrain"): PAPER_PRETRAINING,
    # VideoMAE's recipe for its 800-epoch SSV2 checkpoint; the MOFO release's for EPIC
    ("ssv2", "finetune"): FINETUNING | {"--data_set": "SSV2", "--nb_classes": "174", "--epochs": "50",
                                        "--num_sample": "1", "--batch_size": "8", "--update_freq": "8"},
    ("epic", "finetune"): FINETUNING | {"--data_set": "EPIC-KITCHENS-100", "--nb_verbs": "97", "--nb_nouns": "300",
                                        "--epochs": "100", "--num_sample": "2", "--batch_size": "8",
                                        "--update_freq": "1"},
}


def fake_commands(folder: Path, names, script: str) -> Path:
    """``folder`` with an executable bash ``script`` under each of ``names`` (put it first on PATH)."""
    folder.mkdir()
    for name in names:
        (folder / name).write_text(script)
        (folder / name).chmod(stat.S_IRWXU)
    return folder


@pytest.fixture
def dry_run(tmp_path):
    """dry_run(script, **variables) -> the recorded command's words."""
    fake_bin = fake_commands(tmp_path / "bin", ("torchrun", "srun", "python"), RECORDER)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        write_epic_csv(data / f"{split}.csv", [(EPIC_VIDEOS[0], 1, 10, 0, 0)])

    def run(script: Path, **variables: str) -> list[str]:
        record = tmp_path / "record"
        record.unlink(missing_ok=True)
        env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "RECORD": str(record), "DATA_PATH": str(data),
               "VIDEO_LIST": str(data / "train.csv")} | variables
        result = run_script(script, tmp_path, **env)
        assert result.returncode == 0, result.stderr
        return record.read_text().split("\0")[:-1]

    return run


def options(words: list[str]) -> dict[str, str]:
    """--flag -> its value words joined by spaces."""
    values: dict[str, list[str]] = {}
    for word in words:
        if word.startswith("--"):
            values[word] = []
            last = word
        elif values:
            values[last].append(word)
    return {flag: " ".join(value) for flag, value in values.items()}


@pytest.mark.parametrize("script", STAGE_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_default_command_is_the_papers_recipe(script, dry_run):
    dataset, stage = script.parent.name, script.stem
    words = dry_run(script, EXTRA_ARGS=" --seed  7 --print_freq 5 ")
    assert words[-4:] == ["--seed", "7", "--print_freq", "5"]  # EXTRA_ARGS last: it overrides the script
    flags = options(words)
    if stage == "boxes":
        assert words[:3] == ["python", "-m", "motion_detection.extract_boxes"] and flags["--flow"] == "tvl1"
        return
    entry = "run_mofo_pretraining.py" if stage == "pretrain" else "run_mofo_finetuning.py"
    assert words[:5] == ["torchrun", "--standalone", "--nproc_per_node", "8", entry]
    expected = RECIPES[dataset, "pretrain" if stage == "pretrain" else "finetune"]
    assert {flag: flags.get(flag) for flag in expected} == expected
    if stage.startswith("finetune"):  # the MCA head reads the motion boxes, the plain head does not need them
        mofo = stage == "finetune_mofo"
        assert flags["--model"] == "vit_base_patch16_224" + "_mofo" * mofo and ("--box_dir" in flags) == mofo


@pytest.mark.parametrize("dataset", sorted({s.parent.name for s in STAGE_SCRIPTS}))
def test_finetuning_starts_from_the_pretraining_scripts_newest_checkpoint(dataset, dry_run):
    """Fine-tuning reads the pretraining run's folder (its newest checkpoint, whatever --epochs it ran), into one
    output folder per head and per source, so auto-resume never picks up another run's checkpoints."""
    pretrain = options(dry_run(REPO / "scripts" / dataset / "pretrain.sh"))
    outputs = set()
    for stage in ("finetune_mofo", "finetune_plain"):
        for source in ("", "ckpts/videomae_800.pth", "ckpts/videomae_2400.pth"):
            finetune = options(dry_run(REPO / "scripts" / dataset / f"{stage}.sh", **({"PRETRAINED": source}
                                                                                     if source else {})))
            assert finetune["--finetune"] == (source or pretrain["--output_dir"])
            outputs.add(finetune["--output_dir"])
    assert len(outputs) == 6
    large = options(dry_run(REPO / "scripts" / dataset / "pretrain.sh", MODEL="pretrain_videomae_large_patch16_224"))
    assert (pretrain["--output_dir"], large["--output_dir"]) == (f"out/{dataset}/pretrain_motion_vitb",
                                                                  f"out/{dataset}/pretrain_motion_vitl")


def test_epic_lists_follow_the_video_template(dry_run, tmp_path):
    """The EPIC scripts list the action segments as fine-tuning reads the csvs: the long videos' frame ranges, or
    with EPIC_VIDEO_TEMPLATE the pre-trimmed clips it names, whole; fine-tuning gets the same template. A csv the
    reader refuses stops the script, naming the file, and so does a clip name with a space, which the list's readers
    would cut at it."""
    listed_csv = tmp_path / "train.csv"
    write_epic_csv(listed_csv, [(EPIC_VIDEOS[0], 3, 10, 0, 0), (EPIC_VIDEOS[1], 1, 5, 1, 1)])

    def epic_videos(csv_file: Path, **variables: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", 'set -e; source scripts/launch.sh; epic_videos "$1" > "$2"; echo done',
                               "-", str(csv_file), str(tmp_path / "list")], cwd=REPO, env=script_env(**variables),
                              capture_output=True, text=True, timeout=60)

    assert epic_videos(listed_csv).returncode == 0
    assert (tmp_path / "list").read_text().splitlines() == [f"{EPIC_VIDEOS[0]} 2 8", f"{EPIC_VIDEOS[1]} 0 5"]
    assert epic_videos(listed_csv, EPIC_VIDEO_TEMPLATE="clips/{narration_id}.mp4").returncode == 0
    assert (tmp_path / "list").read_text().splitlines() == ["clips/P01_01_0.mp4", "clips/P01_02_1.mp4"]
    spaced = epic_videos(listed_csv, EPIC_VIDEO_TEMPLATE="trimmed clips/{narration_id}.mp4")  # read as "trimmed"
    assert spaced.returncode != 0 and "names 'trimmed clips/P01_01_0.mp4', with whitespace" in spaced.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text(listed_csv.read_text().replace("stop_frame", "end_frame"))
    refused = epic_videos(broken)
    assert refused.returncode != 0 and "done" not in refused.stdout
    assert f"{broken}: columns ['stop_frame'] missing" in refused.stderr
    template = "clips/{narration_id}.mp4"
    for stage in ("finetune_mofo", "finetune_plain"):
        script = REPO / "scripts" / "epic" / f"{stage}.sh"
        assert options(dry_run(script, EPIC_VIDEO_TEMPLATE=template))["--epic_video_template"] == template
        assert "--epic_video_template" not in options(dry_run(script))


def test_ssv2_finetuning_keeps_videomaes_total_batch_on_any_number_of_gpus(dry_run, tmp_path):
    """512 videos per step: 8 per GPU x 8 accumulation steps on one 8-GPU node, x 2 on 4 nodes (32 SLURM tasks),
    x 8 on the 8 tasks `launch` starts in a 2-node allocation given GPUS=4; a total that the tasks cannot reach in
    whole steps is refused."""
    script = REPO / "scripts/ssv2/finetune_mofo.sh"
    assert options(dry_run(script, GPUS="2"))["--update_freq"] == "32"
    sbatch = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "32", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "4"}
    assert options(dry_run(script, **sbatch))["--update_freq"] == "2"
    salloc = {"SLURM_JOB_ID": "8", "SLURM_NNODES": "2", "GPUS": "4"}  # no tasks per node: launch starts GPUS each
    assert options(dry_run(script, **salloc))["--update_freq"] == "8"
    assert options(dry_run(script, UPDATE_FREQ="3"))["--update_freq"] == "3"
    refused = run_script(script, tmp_path, GPUS="3", PATH=f"{tmp_path}/bin:/usr/bin:/bin")
    assert refused.returncode == 2 and "TOTAL_BATCH 512 is not BATCH_SIZE 8 x 3 tasks" in refused.stderr


def test_epic_finetuning_keeps_its_total_batch_of_one_node_on_fewer_gpus(dry_run, tmp_path):
    """EPIC's 64 videos per step (8 GPUs x 8, the release's batch per GPU) by accumulation on 2 GPUs, by the plain
    head's script too; 3 GPUs cannot reach it in whole steps."""
    for stage in ("finetune_mofo", "finetune_plain"):
        script = REPO / "scripts" / "epic" / f"{stage}.sh"
        assert options(dry_run(script, GPUS="2"))["--update_freq"] == "4"
        assert options(dry_run(script, GPUS="2", TOTAL_BATCH="32"))["--update_freq"] == "2"
        refused = run_script(script, tmp_path, GPUS="3", PATH=f"{tmp_path}/bin:/usr/bin:/bin")
        assert refused.returncode == 2 and "TOTAL_BATCH 64 is not BATCH_SIZE 8 x 3 tasks" in refused.stderr


@pytest.mark.parametrize("script, extra, variable", [
    ("ssv2/finetune_mofo.sh", "--seed 1 --output_dir=elsewhere", "OUTPUT_DIR"),
    ("epic/finetune_plain.sh", "--finetune other.pth", "PRETRAINED"),
    ("ssv2/finetune_plain.sh", "--batch_size 4", "BATCH_SIZE"),
    ("epic/finetune_mofo.sh", "--model vit_base_patch16_224", "MODEL"),
    ("epic/finetune_plain.sh", "--update_freq 2", "UPDATE_FREQ"),  # TOTAL_BATCH sets it
    ("ssv2/finetune_mofo.sh", "--update_freq=2", "UPDATE_FREQ"),
    ("ssv2/finetune_mofo.sh", "--finetun other.pth", "PRETRAINED"),  # a prefix argparse takes for --finetune
    ("ssv2/pretrain.sh", "--mask_type tube", "MASK_TYPE"),
    ("epic/pretrain.sh", "--output_dir x", "OUTPUT_DIR"),
    ("ssv2/pretrain.sh", "--model pretrain_videomae_large_patch16_224", "MODEL"),  # the folder's name follows it
])
def test_extra_args_may_not_set_what_other_settings_derive_from(script, extra, variable, dry_run, tmp_path):
    """--output_dir in EXTRA_ARGS would leave the tb/ logs in the script's folder; --finetune, --model or --mask_type
    a folder named after another source, which the next run resumes; --batch_size the accumulation steps of another
    total batch. The variable is named instead; other flags pass (test_default_command_is_the_papers_recipe)."""
    result = run_script(REPO / "scripts" / script, tmp_path, EXTRA_ARGS=extra, PATH=f"{tmp_path}/bin:/usr/bin:/bin")
    assert result.returncode == 2 and f"set {variable} instead" in result.stderr, result.stderr
    assert options(dry_run(REPO / "scripts" / script, EXTRA_ARGS="--model_ema --output_dirs"))["--model_ema"] == ""
    several_lines = options(dry_run(REPO / "scripts" / script, EXTRA_ARGS="--seed 7\n    --num_workers 3\n"))
    assert (several_lines["--seed"], several_lines["--num_workers"]) == ("7", "3")  # not the first line's only
    late = run_script(REPO / "scripts" / script, tmp_path, EXTRA_ARGS=f"--seed 1\n{extra}",
                      PATH=f"{tmp_path}/bin:/usr/bin:/bin")
    assert late.returncode == 2 and f"set {variable} instead" in late.stderr, late.stderr


def test_epic_video_list_into_a_reader_that_stops_early_is_quiet(tmp_path):
    """`python scripts/epic_video_list.py CSV | head -1`: no BrokenPipeError traceback, exit status 0."""
    write_epic_csv(tmp_path / "train.csv", [(EPIC_VIDEOS[k % 4], 1 + k, 30 + k, 0, 0) for k in range(5000)])
    result = subprocess.run(["bash", "-c", f"{sys.executable} scripts/epic_video_list.py {tmp_path / 'train.csv'} "
                             "| head -1; exit ${PIPESTATUS[0]}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "P01/videos/P01_01.MP4 0 30\n", result.stderr
    assert "Traceback" not in result.stderr


def test_under_slurm_srun_runs_python_from_the_submission_directory(dry_run, tmp_path):
    spool = tmp_path / "spool" / "job42"  # sbatch runs a copy of the script from its spool folder
    spool.mkdir(parents=True)
    shutil.copy(REPO / "scripts/ssv2/pretrain.sh", spool / "slurm_script")
    slurm = {"SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_CPUS_PER_TASK": "12",
             "SLURM_NTASKS_PER_NODE": "8"}  # as sbatch sets them from the script's #SBATCH lines
    words = dry_run(spool / "slurm_script", **slurm)
    assert words[:5] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=12", "python", "run_mofo_pretraining.py"]
    # An allocation without tasks per node (`salloc --gres=gpu:4`, then `GPUS=4 bash scripts/...`): GPUS tasks.
    salloc = {"SLURM_JOB_ID": "43", "GPUS": "4"}
    words = dry_run(REPO / "scripts/ssv2/finetune_mofo.sh", **salloc)
    assert words[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=4", "python"]
    # Box extraction runs once per array task, without srun; the shard comes from SLURM_ARRAY_TASK_*.
    assert dry_run(REPO / "scripts/ssv2/boxes.sh", **slurm)[:3] == ["python", "-m", "motion_detection.extract_boxes"]
    elsewhere = run_script(spool / "slurm_script", tmp_path, **slurm | {"SLURM_SUBMIT_DIR": str(tmp_path)})
    assert elsewhere.returncode != 0 and "scripts/launch.sh" in elsewhere.stderr


SLOW_RECORDER = ('#!/usr/bin/env bash\nprintf "pid=%s\\0" "$$" >> "$RECORD"\n' + RECORDER.split("\n", 1)[1]
                 + '[[ -t 0 ]] && printf "tty\\0" >> "$RECORD"\nsleep "${SLEEP:-0}"\nexit "${STATUS:-0}"\n')


@pytest.mark.parametrize("script", ["ssv2/pretrain.sh", "ssv2/boxes.sh"])
def test_a_slurm_job_requeues_itself_when_its_time_limit_is_near(script, tmp_path):
    """sbatch sends the batch shell USR1 before the time limit (#SBATCH --signal=B:USR1@300): it calls `scontrol
    requeue` for its job at once, while srun (or the extraction) still runs; the requeued job resumes. Without the
    signal, the command's exit status is the script's."""
    fake_bin = fake_commands(tmp_path / "bin", ("srun", "python", "scontrol"), SLOW_RECORDER)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.csv").write_text("a.mp4 0\n")
    record = tmp_path / "record"
    env = script_env(PATH=f"{fake_bin}:/usr/bin:/bin", RECORD=str(record), DATA_PATH=str(data), SLURM_JOB_ID="42",
                     SLURM_NTASKS_PER_NODE="8", SLEEP="60")
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / script)], cwd=tmp_path, env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not record.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert record.exists(), "the command never started"
        proc.send_signal(signal.SIGUSR1)
        while b"scontrol" not in record.read_bytes() and time.time() < deadline:
            time.sleep(0.05)
        calls = record.read_text().split("\0")[:-1]
        assert "scontrol" in calls, "USR1 did not requeue the job"
        assert calls[calls.index("scontrol"):] == ["scontrol", "requeue", "42"]
        time.sleep(1)
        assert proc.poll() is None  # the training goes on until SLURM stops the job
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    # An interrupt to the batch shell (scancel --signal=INT) stops the command, which ignores SIGINT itself.
    record.unlink()
    interrupted = subprocess.Popen(["bash", str(REPO / "scripts" / script)], cwd=tmp_path, start_new_session=True,
                                   env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not record.exists() and time.time() < deadline:
            time.sleep(0.05)
        interrupted.send_signal(signal.SIGINT)
        interrupted.wait(timeout=20)  # not the command's 60 s
        assert interrupted.returncode != 0
        command = int(record.read_text().split("\0")[0].removeprefix("pid="))
        while time.time() < deadline:
            try:
                os.kill(command, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the command outlived the interrupted batch shell")
    finally:
        os.killpg(interrupted.pid, signal.SIGKILL)
    # A refused requeue leaves the job running to its end, with the command's own exit status.
    record.unlink()
    refused = subprocess.Popen(["bash", str(REPO / "scripts" / script)], cwd=tmp_path, start_new_session=True,
                               env=env | {"SLEEP": "3", "STATUS": "5"}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not record.exists() and time.time() < deadline:
        time.sleep(0.05)
    refused.send_signal(signal.SIGUSR1)
    _, stderr = refused.communicate(timeout=30)
    assert refused.returncode == 5 and "scontrol requeue failed" in stderr
    record.unlink()
    finished = subprocess.run(["bash", str(REPO / "scripts" / script)], cwd=tmp_path, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env=env | {"SLEEP": "0", "STATUS": "3"}, timeout=60)
    assert finished.returncode == 3 and b"scontrol" not in record.read_bytes()
    # From a terminal (an salloc shell) the command runs in the foreground with the terminal, so Ctrl-C reaches it.
    record.unlink()
    controller, terminal = pty.openpty()
    try:
        interactive = subprocess.run(["bash", str(REPO / "scripts" / script)], cwd=tmp_path, stdin=terminal,
                                     capture_output=True, env=env | {"SLEEP": "0"}, timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    calls = record.read_text().split("\0")[:-1]
    assert interactive.returncode == 0 and "tty" in calls and "scontrol" not in calls


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO / "scripts")))
def test_script_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", STAGE_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_sbatch_header(script):
    lines = script.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", "\n".join(lines[:first_command]), re.M))
    assert not [line for line in lines[first_command:] if line.startswith("#SBATCH")]  # sbatch stops reading there
    assert {"nodes", "ntasks-per-node", "cpus-per-task", "time"} <= set(header)
    assert "set -euo pipefail" in lines
    # USR1 five minutes before the time limit requeues the job (scripts/launch.sh), its log goes on in the same file
    assert header["signal"] == "B:USR1@300" and header["open-mode"] == "append" and "#SBATCH --requeue" in lines
    if script.stem == "boxes":  # CPU work, one shard per array task
        assert "array" in header and "gres" not in header and header["ntasks-per-node"] == "1"
    else:  # one task per GPU
        assert header["gres"] == f"gpu:{header['ntasks-per-node']}"


def test_gpu_check_runs_the_steps_it_is_given(tmp_path):
    """Two device calls of a few minutes each instead of one of the whole device budget: the named steps only, each
    with its line in summary.txt; an unknown step is refused."""
    fake_bin = fake_commands(tmp_path / "bin", ("python3", "nvidia-smi"), RECORDER)
    record, out = tmp_path / "record", tmp_path / "out"
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "RECORD": str(record), "OUT": str(out)}
    result = run_script(REPO / "benchmarks/gpu_check.sh", tmp_path, **env)
    assert result.returncode == 0, result.stderr
    all_steps = [line.split(":")[0] for line in (out / "summary.txt").read_text().splitlines()]
    assert all_steps == ["cuda_tests", "motion", "pretrain_step", "finetune_step"]
    record.unlink()
    result = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "motion", "finetune_step"], cwd=tmp_path,
                            env=script_env(**env), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in (out / "summary.txt").read_text().splitlines()] == ["motion",
                                                                                                "finetune_step"]
    ran = record.read_text()
    assert "bench_motion.py" in ran and "bench_finetune_step.py" in ran
    assert "pytest" not in ran and "bench_pretrain_step.py" not in ran
    refused = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "data"], cwd=tmp_path,
                             env=script_env(**env), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "steps: cuda_tests motion pretrain_step finetune_step" in refused.stderr


# The packages of requirements.txt that the GPU image holds (the device notes, read 2026-11-17; its OpenCV has no
# contrib modules), and the modules of those it lacks. A requirement in neither must be sorted into one.
GPU_IMAGE_PACKAGES = {"torch", "torchvision", "timm", "einops", "safetensors", "scipy", "pandas", "tqdm", "pytest",
                      "opencv-contrib-python-headless"}
GPU_IMAGE_LACKS = {"deepspeed": "deepspeed", "decord": "decord", "av": "av", "tensorboardX": "tensorboardX",
                   "scikit-video": "skvideo", "ruff": "ruff"}
GPU_IMAGE_SITE = """import importlib.abc, sys
import cv2
del cv2.optflow  # OpenCV without contrib
class GpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU image)", name=name)
sys.meta_path.insert(0, GpuImage())
"""


def test_gpu_check_carries_every_package_its_steps_import_that_the_gpu_image_lacks(tmp_path):
    """The one GPU run must not end at an import: with what the image lacks and gpu_check.sh does not carry made
    unimportable, its test step collects its tests and its benchmark scripts start."""
    script = (REPO / "benchmarks/gpu_check.sh").read_text()
    carried = {wheel.split("==")[0] for wheel in re.search(r"^WHEELS=\((.*?)\)", script, re.M).group(1).split()}
    required = {re.split(r"[=<>\[ ]", line)[0] for line in (REPO / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    unsorted = required - GPU_IMAGE_PACKAGES - set(GPU_IMAGE_LACKS)
    assert not unsorted, f"is {unsorted} on the GPU image? add it to GPU_IMAGE_PACKAGES or GPU_IMAGE_LACKS"
    assert carried <= set(GPU_IMAGE_LACKS)
    blocked = {GPU_IMAGE_LACKS[name] for name in required - GPU_IMAGE_PACKAGES - carried}
    (tmp_path / "sitecustomize.py").write_text(GPU_IMAGE_SITE.format(blocked=sorted(blocked)))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    steps = re.findall(r"^step (\w+) \d+ python3 (.*?)(?<!\\)$", script.replace("\\\n", " "), re.M)
    assert [name for name, _ in steps] == ["cuda_tests", "motion", "pretrain_step", "finetune_step"]
    for name, command in steps:
        words = command.split()
        words = [*words, "--collect-only"] if words[:2] == ["-m", "pytest"] else [words[0], "--help"]
        result = subprocess.run([sys.executable, *words], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    blocked_import = subprocess.run([sys.executable, "-c", "import skvideo"], env=env, capture_output=True, text=True)
    assert "not on the GPU image" in blocked_import.stderr  # the stand-in image does block


def test_results_table_and_loss_curves_keep_runs_apart(tmp_path):
    """Runs of SSV2 and EPIC side by side (other columns); two runs in folders of one name are not merged."""
    for run, result in (("ssv2", {"acc1": 61.5, "acc5": 88.0, "videos": 10}),
                        ("epic", {"verb_acc1": 40.0, "noun_acc1": 30.0, "action_acc1": 20.0, "videos": 12})):
        (tmp_path / run).mkdir()
        (tmp_path / run / "test_results.json").write_text(json.dumps(result))
    table = subprocess.run([sys.executable, "scripts/results_table.py", str(tmp_path / "ssv2"), str(tmp_path / "epic")],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    header, ssv2, epic = table.stdout.splitlines()
    assert header.split() == ["run", "acc1", "acc5", "verb_acc1", "noun_acc1", "action_acc1", "videos"]
    assert ssv2.split() == ["ssv2", "61.50", "88.00", "10"]
    assert epic.split() == ["epic", "40.00", "30.00", "20.00", "12"]
    (tmp_path / "other" / "ssv2").mkdir(parents=True)
    shutil.copy(tmp_path / "ssv2" / "test_results.json", tmp_path / "other" / "ssv2" / "test_results.json")
    clash = subprocess.run([sys.executable, "scripts/results_table.py", str(tmp_path / "ssv2"),
                            str(tmp_path / "other" / "ssv2")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert clash.returncode != 0 and "two runs would share a row" in clash.stderr  # not one row for both
    for group, loss in (("a", 1.5), ("b", 0.5)):
        (tmp_path / group / "run").mkdir(parents=True)
        (tmp_path / group / "run" / "log.txt").write_text(json.dumps({"epoch": 0, "train_loss": loss}) + "\n"
                                                           + '{"epoch": 1, "train_lo')  # cut short by a kill
    runs = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]
    same = subprocess.run([sys.executable, "scripts/loss_curves.py", *runs], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert same.returncode != 0 and "name them with --names" in same.stderr
    named = subprocess.run([sys.executable, "scripts/loss_curves.py", *runs, "--names", "a", "b"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert named.stdout.splitlines()[1].split() == ["0", "1.5000", "0.5000"]
    # one epoch each: the plot shows a point per run (a line needs two), at epoch 0 on the left edge
    png = tmp_path / "curves.png"
    subprocess.run([sys.executable, "scripts/loss_curves.py", *runs, "--names", "a", "b", "--png", str(png)],
                   cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    image = cv2.imread(str(png))
    lowest = image[346:355, 46:55].reshape(-1, 3)  # run b's 0.5, the plot's lowest value, at (50, 350)
    assert (lowest == (30, 120, 220)).all(axis=1).sum() >= 9
    assert (image[355:400, 300:] == 255).all()  # no label of an epoch 1 that was never run at the right


def test_loss_curves_name_what_they_cannot_draw(tmp_path):
    """A --key no run logged, a run without it beside one with it, a plot name of another kind, and a plot into
    a folder not made yet (made, not a false 'wrote')."""
    for run, record in (("pretrain", {"epoch": 0, "train_loss": 1.0}),
                        ("finetune", {"epoch": 0, "train_loss": 2.0, "val_acc1": 50.0})):
        (tmp_path / run).mkdir()
        (tmp_path / run / "log.txt").write_text(json.dumps(record) + "\n")

    def curves(*extra):
        return subprocess.run([sys.executable, "scripts/loss_curves.py", *extra], cwd=REPO, capture_output=True,
                              text=True, timeout=60)

    nowhere = curves(str(tmp_path / "pretrain"), "--key", "val_acc1")
    assert nowhere.returncode != 0 and "no run logged val_acc1" in nowhere.stderr and "Traceback" not in nowhere.stderr
    one = curves(str(tmp_path / "pretrain"), str(tmp_path / "finetune"), "--key", "val_acc1")
    assert one.returncode == 0 and "note: pretrain logged no val_acc1: left out" in one.stdout
    assert one.stdout.splitlines()[-2].split() == ["epoch", "finetune"]
    other_kind = curves(str(tmp_path / "pretrain"), "--png", str(tmp_path / "plot"))
    assert other_kind.returncode == 2 and "give a file name ending in .png" in other_kind.stderr
    deeper = tmp_path / "plots" / "new" / "curves.png"
    made = curves(str(tmp_path / "pretrain"), "--png", str(deeper))
    assert made.returncode == 0 and f"wrote {deeper}" in made.stdout and cv2.imread(str(deeper)).shape == (400, 640, 3)

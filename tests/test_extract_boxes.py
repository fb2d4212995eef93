"""End-to-end tests of the motion-box extraction CLI on real (synthetic) mp4 files, run as subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import decord
import pytest

import make_synthetic_dataset
from motion_detection import load_boxes
from motion_detection.extract_boxes import Outcome, default_shard, failed_list_text
from motion_detection.video import read_video

REPO = Path(__file__).resolve().parents[1]
NESTED = "nested/deeper/clip.mp4"
GOOD = ["000000.mp4", "000001.mp4", "000002.mp4", "000003.mp4", "000004.mp4", NESTED]
BAD = {  # list entry -> part of the reason the CLI must give
    "bad/random.mp4": "cannot be opened",
    "bad/truncated.mp4": "cannot be opened",
    "bad/empty.mp4": "empty",
    "bad/one_frame.mp4": "fewer than 2 decodable frames",
    "bad/missing.mp4": "not found",
}
SUMMARY = re.compile(r"summary: (\d+) videos \| (\d+) written \| (\d+) already done \| (\d+) failed")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(base, video root): six good clips (one in a nested folder), broken files, and a clip outside the root."""
    base = tmp_path_factory.mktemp("extract_boxes")
    make_synthetic_dataset.make_dataset(base / "synthetic", 6, num_frames=20, width=160, height=120, fps=12, seed=3)
    root = base / "synthetic" / "videos"
    (root / NESTED).parent.mkdir(parents=True)
    (root / "000005.mp4").rename(root / NESTED)
    bad = root / "bad"
    bad.mkdir()
    (bad / "random.mp4").write_bytes(os.urandom(20000))
    real = (root / "000000.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(real[: len(real) // 2])
    (bad / "empty.mp4").write_bytes(b"")
    frames, _ = make_synthetic_dataset.render_clip(0, 2, 160, 120, seed=1, camera_motion=True)
    writer = cv2.VideoWriter(str(bad / "one_frame.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (160, 120))
    writer.write(cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    writer.release()
    (base / "outside").mkdir()
    shutil.copy(root / "000000.mp4", base / "outside" / "000000.mp4")
    return base, root


def write_list(path: Path, entries: list) -> Path:
    path.write_text("".join(f"{entry} {i % 8}\n" for i, entry in enumerate(entries)))
    return path


def clean_env(**extra: str) -> dict:
    """This process's environment without SLURM array variables (the suite may itself run under SLURM)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **extra}


def cli(video_list, video_root, output_dir, *extra, workers: int = 0) -> list[str]:
    return [sys.executable, "-m", "motion_detection.extract_boxes", "--video_list", str(video_list),
            "--video_root", str(video_root), "--output_dir", str(output_dir), "--flow", "dis",
            "--short_side", "112", "--num_workers", str(workers), *map(str, extra)]


def run(*args, rc: int = 0, env: dict | None = None, workers: int = 0) -> subprocess.CompletedProcess:
    """Run the CLI to completion and check its exit status."""
    result = subprocess.run(cli(*args, workers=workers), cwd=REPO, env=env or clean_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == rc, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def summary(result: subprocess.CompletedProcess) -> tuple[int, ...]:
    """(videos, written, already done, failed) from the summary line."""
    match = SUMMARY.search(result.stdout)
    assert match, result.stdout
    return tuple(int(g) for g in match.groups())


def outputs(output_dir: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every box file under output_dir."""
    return {p.relative_to(output_dir).as_posix(): p.read_bytes() for p in sorted(output_dir.rglob("*.json"))}


def failed_rows(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert lines[0] == "video\treason"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 2 for row in rows), rows
    return dict(rows)


def box_name(video: str) -> str:
    return video.removesuffix(".mp4") + ".json"


@pytest.fixture(scope="module")
def reference_dir(data, tmp_path_factory) -> Path:
    """Output of an uninterrupted in-process run over the good videos."""
    base, root = data
    out = tmp_path_factory.mktemp("reference")
    result = run(write_list(base / "good.csv", GOOD), root, out)
    assert summary(result) == (6, 6, 0, 0)
    assert not (out / "failed.tsv").exists()
    return out


@pytest.fixture(scope="module")
def reference(reference_dir) -> dict[str, bytes]:
    return outputs(reference_dir)


def test_one_box_file_per_video_mirrors_the_list(data, reference_dir, reference):
    """Every video gets a valid box file at its mirrored path with the decoded frame count and original size."""
    _, root = data
    assert set(reference) == {box_name(v) for v in GOOD}
    for video in GOOD:
        frames, _ = read_video(root / video)
        boxes = load_boxes(reference_dir / box_name(video))
        assert boxes.video == video
        assert boxes.num_frames == len(frames) == len(decord.VideoReader(str(root / video))) == 20
        assert (boxes.width, boxes.height) == (frames.shape[2], frames.shape[1]) == (160, 120)
        assert boxes.flow["method"] == "dis" and boxes.flow["detection"]["short_side"] == 112
        assert boxes.union is not None


def test_bad_videos_are_recorded_and_good_ones_still_written(data, reference, tmp_path):
    """Corrupt, truncated, empty, one-frame and missing videos go to failed.tsv with a reason; the run exits 1."""
    _, root = data
    out = tmp_path / "out"
    result = run(write_list(tmp_path / "list.csv", GOOD[:2] + list(BAD)), root, out, rc=1, workers=2)
    assert summary(result) == (7, 2, 0, 5)
    assert outputs(out) == {box_name(v): reference[box_name(v)] for v in GOOD[:2]}
    reasons = failed_rows(out / "failed.tsv")
    assert set(reasons) == set(BAD)
    for video, reason in BAD.items():
        assert reason in reasons[video], reasons[video]
        assert f"FAILED {video}: " in result.stdout

    again = run(write_list(tmp_path / "good.csv", GOOD[:2]), root, out)
    assert summary(again) == (2, 0, 2, 0)
    assert not (out / "failed.tsv").exists(), "a run without failures must remove the stale failed list"


def test_resume_skips_valid_files_and_recomputes_the_rest(data, reference_dir, reference, tmp_path):
    """Valid files are skipped; corrupt, invalid and other-settings files are recomputed; --overwrite redoes all."""
    _, root = data
    out = tmp_path / "out"
    shutil.copytree(reference_dir, out)
    (out / "000001.json").write_bytes(reference["000001.json"][:200])
    (out / "000002.json").write_text('{"version": 1}')
    run(write_list(tmp_path / "a.csv", ["000003.mp4"]), root, out, "--flow", "tvl1", "--short_side", 32, "--overwrite")
    run(write_list(tmp_path / "b.csv", ["000004.mp4"]), root, out, "--temporal_window", 3, "--overwrite")
    assert load_boxes(out / "000003.json").flow["method"] == "tvl1"
    assert load_boxes(out / "000004.json").flow["detection"]["temporal_window"] == 3
    untouched = {v: (out / box_name(v)).stat().st_mtime_ns for v in ("000000.mp4", NESTED)}

    video_list = write_list(tmp_path / "good.csv", GOOD)
    result = run(video_list, root, out)
    assert summary(result) == (6, 4, 2, 0)
    assert "2 already done" in result.stderr
    assert outputs(out) == reference
    assert {v: (out / box_name(v)).stat().st_mtime_ns for v in untouched} == untouched

    assert summary(run(video_list, root, out)) == (6, 0, 6, 0)
    assert summary(run(video_list, root, out, "--overwrite")) == (6, 6, 0, 0)
    assert outputs(out) == reference


def test_killed_run_resumes_to_identical_outputs(data, reference, tmp_path):
    """SIGKILL mid-run leaves only complete box files; the re-run completes them byte-identically, no temp files."""
    _, root = data
    out = tmp_path / "out"
    video_list = write_list(tmp_path / "good.csv", GOOD)
    proc = subprocess.Popen(cli(video_list, root, out, workers=1), cwd=REPO, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out.rglob("*.json")):
            assert proc.poll() is None, "the extraction ended before writing any box file"
            assert time.monotonic() < deadline, "no box file after 60 s"
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done = outputs(out)
    assert 0 < len(done) < len(GOOD), "the kill came after the run had finished: nothing was interrupted"
    assert done == {name: reference[name] for name in done}, "a killed run left a partial box file"
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert all(f.endswith((".json", ".json.tmp")) for f in files), files

    result = run(video_list, root, out)
    assert summary(result) == (6, 6 - len(done), len(done), 0)
    assert outputs(out) == reference
    assert not list(out.rglob("*.tmp"))


def test_stale_temp_files_are_removed(data, reference_dir, reference, tmp_path):
    """Temp files left by a killed run are gone after a completed re-run, also next to box files it skips."""
    _, root = data
    out = tmp_path / "out"
    shutil.copytree(reference_dir, out)
    (out / "000000.json.tmp").write_bytes(reference["000000.json"][:100])
    (out / box_name(NESTED)).unlink()
    (out / (box_name(NESTED) + ".tmp")).write_bytes(reference[box_name(NESTED)][:100])
    result = run(write_list(tmp_path / "good.csv", GOOD), root, out)
    assert summary(result) == (6, 1, 5, 0)
    assert outputs(out) == reference
    assert not list(out.rglob("*.tmp"))


def test_in_process_and_worker_pool_give_identical_outputs(data, reference, tmp_path):
    """--num_workers 2 writes the same bytes as --num_workers 0."""
    _, root = data
    result = run(write_list(tmp_path / "good.csv", GOOD), root, tmp_path / "out", workers=2)
    assert summary(result) == (6, 6, 0, 0)
    assert outputs(tmp_path / "out") == reference


def test_shards_cover_every_video_exactly_once(data, reference, tmp_path):
    """Shards 0..k-1 are disjoint and cover the list; a failure goes to its shard's failed.shardIIII-of-KKKK.tsv."""
    _, root = data
    video_list = write_list(tmp_path / "list.csv", GOOD + ["bad/missing.mp4"])
    shard_outputs, failed_lists = [], {}
    for shard in range(3):
        out = tmp_path / f"shard{shard}"
        result = subprocess.run(cli(video_list, root, out, "--shard_id", shard, "--num_shards", 3), cwd=REPO,
                                env=clean_env(), capture_output=True, text=True, timeout=120)
        videos, written, done, failed = summary(result)
        assert result.returncode == (1 if failed else 0)
        assert (videos, done) == (written + failed, 0)
        shard_outputs.append(outputs(out))
        failed_lists.update({p.name: failed_rows(p) for p in out.glob("failed*")})
    assert sum(len(o) for o in shard_outputs) == len(GOOD)
    assert {k: v for o in shard_outputs for k, v in o.items()} == reference
    [(name, rows)] = failed_lists.items()
    assert re.fullmatch(r"failed\.shard000[0-2]-of-0003\.tsv", name)
    assert rows == {"bad/missing.mp4": "file not found"}


def test_shard_defaults_come_from_the_slurm_array(monkeypatch):
    """default_shard() maps SLURM_ARRAY_TASK_ID/COUNT/MIN/STEP to (shard_id, num_shards)."""
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(var, raising=False)
    assert default_shard() == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert default_shard() == (0, 1), "a task id without a task count is not an array"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert default_shard() == (2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")  # --array=5-8
    assert default_shard() == (2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")  # --array=5-11:2
    assert default_shard() == (2, 4)


def test_cli_takes_its_shard_from_the_slurm_array(data, tmp_path):
    """Under a SLURM array task the CLI processes that task's shard without --shard_id/--num_shards."""
    _, root = data
    video_list = write_list(tmp_path / "good.csv", GOOD)
    env = clean_env(SLURM_ARRAY_TASK_ID="11", SLURM_ARRAY_TASK_MIN="10", SLURM_ARRAY_TASK_COUNT="3")
    assert "shard 1/3" in run(video_list, root, tmp_path / "slurm", env=env).stderr
    run(video_list, root, tmp_path / "explicit", "--shard_id", 1, "--num_shards", 3)
    assert len(outputs(tmp_path / "slurm")) == 2
    assert outputs(tmp_path / "slurm") == outputs(tmp_path / "explicit")


@pytest.mark.parametrize(
    "extra, env, message",
    [
        (["--shard_id", "3", "--num_shards", "3"], {}, "--shard_id 3"),
        (["--shard_id", "-1", "--num_shards", "2"], {}, "--shard_id -1"),
        ([], {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4"}, "--shard_id 5"),
        ([], {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID"),
        (["--num_workers", "-1"], {}, "--num_workers must be >= 0"),
        (["--batch_size", "0"], {}, "--batch_size must be >= 1"),
        (["--num_contours", "0"], {}, "num_contours"),
    ],
)
def test_invalid_arguments_exit_with_a_clear_error(data, tmp_path, extra, env, message):
    """Bad shard, worker, batch or detection settings stop the CLI with a usage error before any work."""
    _, root = data
    result = run(write_list(tmp_path / "good.csv", GOOD[:1]), root, tmp_path / "out", *extra, rc=2,
                 env=clean_env(**env))
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_absolute_paths_below_the_root_work_and_outside_paths_fail(data, reference, tmp_path):
    """Absolute paths under --video_root mirror like relative ones; paths outside it are recorded failures."""
    base, root = data
    outside = str(base / "outside" / "000000.mp4")
    entries = [str(root / "000000.mp4"), str(root / NESTED), outside, "../outside/000000.mp4"]
    result = run(write_list(tmp_path / "list.csv", entries), root, tmp_path / "out", rc=1)
    assert summary(result) == (4, 2, 0, 2)
    assert outputs(tmp_path / "out") == {name: reference[name] for name in ("000000.json", box_name(NESTED))}
    reasons = failed_rows(tmp_path / "out" / "failed.tsv")
    assert set(reasons) == {outside, "../outside/000000.mp4"}
    assert "not below --video_root" in reasons[outside]
    assert "relative to the video root" in reasons["../outside/000000.mp4"]
    assert f"FAILED {outside}: " in result.stdout
    assert "FAILED ../outside/000000.mp4: " in result.stdout
    assert not list((base / "outside").glob("*.json"))


def test_duplicate_rows_are_processed_once(data, reference, tmp_path):
    """Repeated rows and other spellings of a video (./a.mp4, ROOT/a.mp4) give one job, also across shards."""
    _, root = data
    entries = ["000000.mp4", "000000.mp4", "./000000.mp4", root / "000000.mp4", "000001.mp4", "000001.mp4"]
    video_list = write_list(tmp_path / "list.csv", entries)
    assert summary(run(video_list, root, tmp_path / "out", workers=2)) == (2, 2, 0, 0)
    assert outputs(tmp_path / "out") == {name: reference[name] for name in ("000000.json", "000001.json")}
    shards = [summary(run(video_list, root, tmp_path / f"s{i}", "--shard_id", i, "--num_shards", 2)) for i in (0, 1)]
    assert shards == [(1, 1, 0, 0), (1, 1, 0, 0)]


def test_failed_list_reasons_stay_on_one_line():
    """Multi-line reasons (OpenCV errors) and tabs cannot break the failed list's two-column rows."""
    failures = [Outcome("b.mp4", False, "OpenCV error: (-215)\n in function 'x'\n"), Outcome("a.mp4", False, "x\ty")]
    assert failed_list_text(failures) == "video\treason\na.mp4\tx y\nb.mp4\tOpenCV error: (-215) in function 'x'\n"

"""End-to-end tests of the motion-box extraction CLI on real (synthetic) mp4 files, run as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import decord
import numpy as np
import pytest

import make_synthetic_dataset
from motion_detection import MotionBoxDetector, extract_boxes, load_boxes
from motion_detection.boxfile import STALE_TEMP_AGE, failed_list_text, read_failed_list, save_partial, video_identity
from motion_detection.extract_boxes import default_shard
from motion_detection.video import read_video, write_mp4

REPO = Path(__file__).resolve().parents[1]
NESTED = "nested/deeper/clip.mp4"
GOOD = ["000000.mp4", "000001.mp4", "000002.mp4", "000003.mp4", "000004.mp4", NESTED]
BAD = {  # list entry -> part of the reason the CLI must give
    "bad/random.mp4": "cannot be opened",
    "bad/truncated.mp4": "cannot be opened",
    "bad/empty.mp4": "empty",
    "bad/one_frame.mp4": "fewer than 2 decodable frames",
    "bad/missing.mp4": "not found",
    "bad/truncated_faststart.mp4": "of the 60 frames the container reports could be decoded",
    "bad/corrupt_middle.mp4": "of the 60 frames the container reports could be decoded",
    "bad/cut_in_first_frame.mp4": "only 1 of the 60 frames the container reports could be decoded",
}
INTACT = ["sixty/faststart.mp4", "sixty/mp4v.mp4"]  # the 60-frame videos the two above are cut from
VICTIM = "long/victim.mp4"  # 400 frames: open long enough for a test to kill the worker decoding it
SUMMARY = re.compile(r"summary: (\d+) videos \| (\d+) written \| (\d+) already done \| (\d+) failed")


def write_faststart_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """An MPEG-4 mp4 with its index before the frames (PyAV, movflags=faststart), as streaming-ready downloads are:
    cut short, it still opens and reports every frame."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(base, video root): six good clips (one in a nested folder), broken files (among them two 60-frame videos
    that decode to fewer frames than they report), a long clip, and a clip outside the root."""
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
    frames, _ = make_synthetic_dataset.render_clip(0, 60, 160, 120, seed=2)
    (root / "sixty").mkdir()
    write_faststart_mp4(root / INTACT[0], frames, 12)
    whole = (root / INTACT[0]).read_bytes()
    (bad / "truncated_faststart.mp4").write_bytes(whole[: len(whole) // 2])
    with av.open(str(root / INTACT[0])) as container:  # cut in its first frame: no frame pair
        first = next(packet.pos for packet in container.demux(video=0) if packet.pos is not None)
    (bad / "cut_in_first_frame.mp4").write_bytes(whole[: first + 100])
    write_mp4(root / INTACT[1], frames, 12)
    corrupt = bytearray((root / INTACT[1]).read_bytes())
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 2000] = bytes(2000)  # index intact, frames zeroed
    (bad / "corrupt_middle.mp4").write_bytes(corrupt)
    for name in ("truncated_faststart.mp4", "cut_in_first_frame.mp4", "corrupt_middle.mp4"):  # all report 60 frames
        capture = cv2.VideoCapture(str(bad / name))
        assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 60
        capture.release()
    write_mp4(root / VICTIM, np.tile(frames[:20], (20, 1, 1, 1)), 12)
    shutil.copy(root / "000000.mp4", root / "000000.MP4")
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
    """The command line for one list file, or for several (a list of them)."""
    lists = video_list if isinstance(video_list, list) else [video_list]
    return [sys.executable, "-m", "motion_detection.extract_boxes", "--video_list", *map(str, lists),
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


def test_videos_without_any_motion_box_are_counted_and_named(data, tmp_path):
    """A still video gets a box file of no boxes, and the summary warns that training takes it as a clip without
    motion, naming it (and not the moving one beside it)."""
    _, root = data
    still = tmp_path / "videos"
    still.mkdir()
    frames, _ = make_synthetic_dataset.render_clip(0, 12, 160, 120, seed=4)
    write_mp4(still / "still.mp4", np.repeat(frames[:1], 12, axis=0), 12)
    shutil.copy(root / "000000.mp4", still / "moving.mp4")
    result = run(write_list(tmp_path / "list.csv", ["still.mp4", "moving.mp4"]), still, tmp_path / "boxes")
    assert load_boxes(tmp_path / "boxes" / "still.json").union is None
    assert "warning: 1 of the 2 videos written have no motion box in any frame (still.mp4)" in result.stdout
    for k in range(4):  # more than are named: the rest are found by their box files
        shutil.copy(still / "still.mp4", still / f"still{k}.mp4")
    many = run(write_list(tmp_path / "many.csv", [f"still{k}.mp4" for k in range(4)]), still, tmp_path / "boxes")
    assert ('4 of the 4 videos written have no motion box in any frame (still0.mp4, still1.mp4, still2.mp4, ...; '
            'their box files hold "union":null)') in many.stdout
    assert '"union":null' in (tmp_path / "boxes" / "still3.json").read_text()


def test_bad_videos_are_recorded_and_good_ones_still_written(data, reference, tmp_path):
    """Corrupt, truncated, empty, one-frame and missing videos go to failed.tsv with a reason; the run exits 1.
    Truncated or corrupt videos that still open (index at the front) fail because they decode to fewer frames than
    the container reports, while the intact videos they were cut from are written with all 60 frames."""
    _, root = data
    out = tmp_path / "out"
    result = run(write_list(tmp_path / "list.csv", GOOD[:2] + INTACT + list(BAD)), root, out, rc=1, workers=2)
    assert summary(result) == (4 + len(BAD), 4, 0, len(BAD))
    written = outputs(out)
    assert {name: written[name] for name in map(box_name, GOOD[:2])} == {box_name(v): reference[box_name(v)]
                                                                        for v in GOOD[:2]}
    assert set(written) == set(map(box_name, GOOD[:2] + INTACT))
    assert all(load_boxes(out / box_name(video)).num_frames == 60 for video in INTACT)
    reasons = failed_rows(out / "failed.tsv")
    assert set(reasons) == set(BAD)
    for video, reason in BAD.items():
        assert reason in reasons[video], reasons[video]
        assert f"FAILED {video}: " in result.stdout
    assert "[mpeg4 @" not in result.stderr  # FFmpeg's line per damaged packet stays silent: one FAILED line a video

    again = run(write_list(tmp_path / "good.csv", GOOD[:2]), root, out)
    assert summary(again) == (2, 0, 2, 0)
    assert failed_rows(out / "failed.tsv") == reasons, "a run on other videos keeps the failures it did not retry"


def test_the_failed_list_keeps_other_lists_failures_and_drops_fixed_videos(data, tmp_path):
    """Lists extracted one after the other into one --output_dir (train, then val) keep each other's failures in
    failed.tsv; a video that is boxed on a later run (here: a missing one copied in) leaves it, and the list goes
    when nothing in it failed."""
    _, root = data
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in GOOD[:2]:
        shutil.copy(root / name, videos / name)
    (videos / "broken.mp4").write_bytes(os.urandom(5000))
    out = tmp_path / "out"
    train = write_list(tmp_path / "train.csv", [GOOD[0], "gone.mp4"])
    val = write_list(tmp_path / "val.csv", [GOOD[1], videos / "broken.mp4"])  # rows name the path below the root
    assert summary(run(train, videos, out, rc=1)) == (2, 1, 0, 1)
    assert summary(run(val, videos, out, rc=1)) == (2, 1, 0, 1)
    assert set(failed_rows(out / "failed.tsv")) == {"gone.mp4", "broken.mp4"}
    shutil.copy(root / GOOD[2], videos / "gone.mp4")
    assert summary(run(train, videos, out)) == (2, 1, 1, 0)
    assert set(failed_rows(out / "failed.tsv")) == {"broken.mp4"}
    (videos / "broken.mp4").unlink()
    shutil.copy(root / GOOD[3], videos / "broken.mp4")
    assert summary(run(write_list(tmp_path / "again.csv", ["./broken.mp4"]), videos, out)) == (1, 1, 0, 0)
    assert not (out / "failed.tsv").exists(), "a failed list without rows is removed"


def children(pid: int) -> list[int]:
    """Process ids whose parent is pid (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if name.isdigit() and int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def has_open(pid: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker decoding a video through /proc")
def test_a_video_that_kills_its_worker_is_recorded_and_every_other_one_written(data, reference, tmp_path):
    """A worker killed (SIGKILL, as by the out-of-memory killer) each time it opens one video breaks its pool. The
    unfinished videos are rerun in a new pool of the full size, then in halves until the video runs alone and
    kills its worker again: it is recorded in failed.tsv, and every other video is written, byte-identical."""
    _, root = data
    victim = (root / VICTIM).resolve()
    out = tmp_path / "out"
    video_list = write_list(tmp_path / "list.csv", GOOD[:2] + [VICTIM] + GOOD[2:])
    log = tmp_path / "stdout", tmp_path / "stderr"  # files, not pipes: nothing is read until the run ends
    with open(log[0], "w") as stdout, open(log[1], "w") as stderr:
        proc = subprocess.Popen(cli(video_list, root, out, workers=2), cwd=REPO, env=clean_env(), stdout=stdout,
                                stderr=stderr, start_new_session=True)
    killed = set()
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the extraction did not end within 240 s"
            for pid in children(proc.pid):
                if has_open(pid, victim):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, log[0].read_text(), log[1].read_text())
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    assert len(killed) >= 3, "a worker killed in the first pool, in the full-size rerun and alone"
    assert "rerunning the" in result.stderr and "in a new pool of 2 workers" in result.stderr, result.stderr
    assert summary(result) == (7, 6, 0, 1)
    assert outputs(out) == reference
    reasons = failed_rows(out / "failed.tsv")
    assert list(reasons) == [VICTIM] and "worker process died" in reasons[VICTIM]


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (an exited orphan may stay a zombie under a PID 1 that
    does not reap it)."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the workers through /proc")
def test_workers_end_when_their_run_is_terminated(data, tmp_path):
    """SIGTERM to the main process alone (``timeout``, a wrapper signalling its child) ends it without the pool's
    shutdown; its workers must not go on with the videos in progress and those queued to them (minutes of TV-L1
    here), or a rerun would do the same videos at the same time."""
    _, root = data
    videos = tmp_path / "videos"
    videos.mkdir()
    names = [f"long{i}.mp4" for i in range(4)]
    for name in names:
        shutil.copy(root / VICTIM, videos / name)
    command = cli(write_list(tmp_path / "list.csv", names), videos, tmp_path / "out", "--flow", "tvl1", workers=2)
    proc = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(workers := [pid for pid in children(proc.pid)
                              if any(has_open(pid, (videos / name).resolve()) for name in names)]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "two workers did not start on a video"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in workers), "workers went on after their run was terminated"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the workers too: they stay in the run's process group
            os.killpg(proc.pid, signal.SIGKILL)
    assert not list((tmp_path / "out").rglob("*.json")), "a video of minutes was finished"


def test_entries_that_would_share_a_box_file_are_both_rejected(data, reference, tmp_path):
    """a.mp4 and a.MP4 (two files on Linux) map to one a.json: both go to failed.tsv naming each other, also when
    they fall into different shards, and the rest of the list is written."""
    _, root = data
    video_list = write_list(tmp_path / "list.csv", ["000000.mp4", "000000.MP4", "000001.mp4"])
    result = run(video_list, root, tmp_path / "out", rc=1)
    assert summary(result) == (3, 1, 0, 2)
    assert outputs(tmp_path / "out") == {"000001.json": reference["000001.json"]}
    reasons = failed_rows(tmp_path / "out" / "failed.tsv")
    assert set(reasons) == {"000000.mp4", "000000.MP4"}
    for entry, other in (("000000.mp4", "000000.MP4"), ("000000.MP4", "000000.mp4")):
        assert f"same box file 000000.json as list entry {other}" in reasons[entry], reasons[entry]
    shards = [run(video_list, root, tmp_path / f"shard{i}", "--shard_id", i, "--num_shards", 2, rc=1) for i in (0, 1)]
    assert [summary(r) for r in shards] == [(2, 1, 0, 1), (1, 0, 0, 1)]  # 000000.mp4 and 000000.MP4 apart
    assert [set(failed_rows(next((tmp_path / f"shard{i}").glob("failed*")))) for i in (0, 1)] == [
        {"000000.mp4"}, {"000000.MP4"}]
    assert not list(tmp_path.glob("shard*/000000.json"))


def test_resume_skips_valid_files_and_recomputes_the_rest(data, reference_dir, reference, tmp_path):
    """Valid files are skipped; corrupt, invalid and other-settings files are recomputed; --overwrite redoes all."""
    _, root = data
    out = tmp_path / "out"
    shutil.copytree(reference_dir, out)
    (out / "000001.json").write_bytes(b"\xff\xfe" + reference["000001.json"][:200])  # truncated, not UTF-8
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


def test_a_replaced_video_is_boxed_again_and_a_copied_one_is_not(data, reference_dir, reference, tmp_path):
    """A box file records its video's size in bytes: a video re-encoded or replaced since (another size) is
    recomputed, a copy (same bytes, a new modification time) is not."""
    _, root = data
    videos, out = tmp_path / "videos", tmp_path / "out"
    shutil.copytree(root, videos)
    shutil.copytree(reference_dir, out)
    assert all(load_boxes(out / box_name(v)).extra["video_bytes"] == (root / v).stat().st_size for v in GOOD)
    assert (videos / "000004.mp4").stat().st_size != (videos / "000000.mp4").stat().st_size
    shutil.copy(videos / "000004.mp4", videos / "000000.mp4")  # replaced
    os.utime(videos / "000001.mp4", ns=(1, 1))  # copied without its times
    result = run(write_list(tmp_path / "good.csv", GOOD), videos, out)
    assert summary(result) == (6, 1, 5, 0)
    assert f"bytes, {(root / '000000.mp4').stat().st_size} when boxed" in result.stderr
    redone, source = load_boxes(out / "000000.json"), load_boxes(reference_dir / "000004.json")
    np.testing.assert_array_equal(redone.frames, source.frames)
    assert {name: data for name, data in outputs(out).items() if name != "000000.json"} == {
        name: data for name, data in reference.items() if name != "000000.json"}


def test_a_shard_outside_the_shards_is_refused_with_a_hint_in_an_array(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "17")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "17")
    with pytest.raises(SystemExit) as exit_info:
        extract_boxes.main(["--video_list", "x.csv", "--output_dir", str(tmp_path), "--shard_id", "17"])
    assert exit_info.value.code == 2
    assert "--shard_id 17 is outside [0, --num_shards 1) (pass --num_shards with --shard_id" in capsys.readouterr().err


def test_several_lists_are_read_as_one(data, reference_dir, reference, tmp_path):
    """``--video_list train.csv val.csv test.csv`` (scripts/ssv2/boxes.sh): a list without a final newline loses
    no video, as the first video of the next list would be lost to ``cat``; a video in two lists is boxed once."""
    _, root = data
    out = tmp_path / "out"
    shutil.copytree(reference_dir, out)
    (out / box_name(GOOD[3])).unlink()
    (tmp_path / "train.csv").write_text("\n".join(f"{video} 0" for video in GOOD[:3]))
    lists = [tmp_path / "train.csv", write_list(tmp_path / "val.csv", GOOD[3:] + GOOD[:1])]
    result = run(lists, root, out)
    assert summary(result) == (len(GOOD), 1, len(GOOD) - 1, 0)
    assert outputs(out) == reference


def test_a_list_that_is_not_utf8_is_named(data, tmp_path):
    _, root = data
    (tmp_path / "latin1.csv").write_bytes("caf\u00e9.mp4 0\n".encode("latin-1"))
    result = subprocess.run(cli(tmp_path / "latin1.csv", root, tmp_path / "out"), cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "latin1.csv is not UTF-8 text" in result.stderr, result.stderr
    missing = run(tmp_path / "no_such.csv", root, tmp_path / "out", rc=2)  # invalid arguments: exit status 2
    assert f"cannot read --video_list {tmp_path / 'no_such.csv'}" in missing.stderr
    (tmp_path / "blank.csv").write_text("\n  \n")
    blank = run(tmp_path / "blank.csv", root, tmp_path / "out", rc=2)
    assert f"--video_list {tmp_path / 'blank.csv'} lists no videos" in blank.stderr and "Traceback" not in blank.stderr
    # beside a list with videos (a small data set's empty test split), it is named and the others are boxed
    (tmp_path / "empty.csv").write_text("")
    beside = run([tmp_path / "blank.csv", write_list(tmp_path / "one.csv", GOOD[:1]), tmp_path / "empty.csv"], root,
                 tmp_path / "out")
    assert summary(beside) == (1, 1, 0, 0)
    for name in ("blank.csv", "empty.csv"):
        assert f"--video_list {tmp_path / name} lists no videos" in beside.stderr


def test_a_wrong_video_root_stops_the_run_first(data, tmp_path):
    """Not one "file not found" per video (220k lines for SSV2), each named by its relative path only."""
    result = run(write_list(tmp_path / "list.csv", GOOD), tmp_path / "typo", tmp_path / "out", rc=2)
    assert f"list.csv: none of the {len(GOOD)} videos checked is found below --video_root {tmp_path / 'typo'}" in (
        result.stderr) and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_box_folder_that_takes_no_files_stops_the_run_first(data, tmp_path):
    """An --output_dir that cannot be written is named before any flow (a spreadsheet's byte-order mark in the
    list is no problem)."""
    _, root = data
    (tmp_path / "a_file").write_text("")
    bom_list = tmp_path / "bom.csv"
    bom_list.write_bytes(b"\xef\xbb\xbf" + "".join(f"{video}\n" for video in GOOD[:1]).encode())
    result = run(bom_list, root, tmp_path / "a_file" / "boxes", rc=2)
    assert "cannot write box files to --output_dir" in result.stderr and "Traceback" not in result.stderr
    assert "frame pairs" not in result.stdout
    assert summary(run(bom_list, root, tmp_path / "out"))[:2] == (1, 1)


def kill_when(command: list[str], ready, event: str) -> None:
    """Run the CLI in a session of its own and SIGKILL it, workers included, as soon as ``ready()`` holds."""
    proc = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, f"the extraction ended before {event}"
            assert time.monotonic() < deadline, f"60 s passed before {event}"
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_killed_run_resumes_to_identical_outputs(data, reference, tmp_path):
    """SIGKILL mid-run leaves only complete box files; the re-run completes them byte-identically and leaves no
    temp file of its own (a killed writer's is kept until it is stale: it could belong to a running extraction)."""
    _, root = data
    out = tmp_path / "out"
    video_list = write_list(tmp_path / "good.csv", GOOD)
    kill_when(cli(video_list, root, out, workers=1), lambda: bool(list(out.rglob("*.json"))), "it wrote a box file")
    done = outputs(out)
    assert 0 < len(done) < len(GOOD), "the kill came after the run had finished: nothing was interrupted"
    assert done == {name: reference[name] for name in done}, "a killed run left a partial box file"
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert all(f.endswith(".json") or re.fullmatch(r"(.*/)?\..+\.json\.[0-9a-f]{12}\.tmp", f) for f in files), files
    left = set(out.rglob("*.tmp"))

    result = run(video_list, root, out)
    assert summary(result) == (6, 6 - len(done), len(done), 0)
    assert outputs(out) == reference
    assert set(out.rglob("*.tmp")) <= left


def test_a_run_killed_within_a_long_video_goes_on_from_its_saved_pairs(data, tmp_path):
    """SIGKILL in the middle of a 400-frame video leaves its pair boxes so far (``victim.json.partial``, saved every
    --partial_every seconds) and no box file; the next run computes only the pairs after them, writes the box file
    of an uninterrupted run byte for byte and removes the partial file. A partial file that is broken, made for
    other settings or another version of the video, or met with --overwrite, is not used."""
    _, root = data
    videos, out = tmp_path / "videos", tmp_path / "out"
    (videos / "long").mkdir(parents=True)
    shutil.copy2(root / VICTIM, videos / VICTIM)
    video_list = write_list(tmp_path / "list.csv", [VICTIM])
    run(video_list, videos, tmp_path / "whole", "--partial_every", 0)
    whole = outputs(tmp_path / "whole")
    partial = out / "long" / "victim.json.partial"
    kill_when(cli(video_list, videos, out, "--partial_every", 0.02), partial.exists, "it saved its progress")
    assert not outputs(out), "the kill came after the box file was written"
    saved = partial.read_bytes()
    done = len(json.loads(saved)["pairs"])
    assert 0 < done < 399

    result = run(video_list, videos, out)
    assert f"went on from frame pair {done} of 399" in result.stderr, result.stderr
    assert f"| {399 - done} frame pairs in" in result.stdout, result.stdout
    assert outputs(out) == whole and not partial.exists()

    def move_video_on_a_second(video=videos / VICTIM):
        os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))

    for extra, saved_bytes, change, warning in [
        ((), b"{", None, "starting over: .*victim.json.partial: not valid JSON"),
        (("--rel_threshold", 0.35), saved, None, "made for another flow or detection settings"),
        (("--overwrite",), saved, None, None),
        ((), saved, move_video_on_a_second, "made for another version of the video file"),
    ]:
        (out / "long" / "victim.json").unlink()
        partial.write_bytes(saved_bytes)
        if change is not None:
            change()
        result = run(video_list, videos, out, *extra)
        assert "| 399 frame pairs in" in result.stdout and "went on from" not in result.stderr, result.stderr
        assert warning is None and "starting over" not in result.stderr or re.search(warning, result.stderr), \
            result.stderr
        assert not partial.exists()
        if not extra:
            assert outputs(out) == whole


def test_a_partial_file_that_cannot_be_used_costs_nothing_else(data, reference, tmp_path):
    """A video whose partial file name would pass 255 bytes is written (no progress saved) and later runs of its
    shard go on; a partial file of the same settings and video file but more frame pairs than the video has (a
    re-encode that kept size and time) is replaced: the video starts over, with a warning naming the file."""
    _, root = data
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    long_name = "a" * 245 + ".mp4"  # a.json fits in 255 bytes, a.json.partial does not
    for name in (long_name, "000000.mp4"):
        shutil.copy2(root / "000000.mp4", videos / name)
    run(write_list(tmp_path / "one.csv", [long_name]), videos, out, "--partial_every", 1e-9)
    written = (out / box_name(long_name)).read_bytes()
    assert written == reference["000000.json"].replace(b"000000", long_name[:-4].encode())
    result = run(write_list(tmp_path / "both.csv", [long_name, "000000.mp4"]), videos, out, "--partial_every", 1e-9)
    assert summary(result) == (2, 1, 1, 0) and outputs(out)["000000.json"] == reference["000000.json"]

    (out / "000000.json").unlink()
    detector = MotionBoxDetector("dis", short_side=112)
    key = {"video": "000000.mp4", "file": video_identity(videos / "000000.mp4"), "flow": detector.config()}
    save_partial(out / "000000.json.partial", key, [np.zeros(4, np.float32)] * 25)  # the video has 19 pairs
    result = run(write_list(tmp_path / "short.csv", ["000000.mp4"]), videos, out)
    assert "000000.json.partial holds more frame pairs than the video" in result.stderr, result.stderr
    assert outputs(out)["000000.json"] == reference["000000.json"] and not (out / "000000.json.partial").exists()


def test_stale_temp_files_are_removed_and_fresh_ones_kept(data, reference_dir, reference, tmp_path):
    """Temp files older than an hour (left by killed runs) are removed by a re-run, also next to box files it
    skips; younger ones may be another running extraction's writes and are left alone, as are other files."""
    _, root = data
    out = tmp_path / "out"
    shutil.copytree(reference_dir, out)
    stale = [out / ".000000.json.0123456789ab.tmp", out / "nested/deeper/.clip.json.ba9876543210.tmp"]
    fresh = out / ".000001.json.00112233aabb.tmp"
    other = out / "notes.tmp"
    for path in [*stale, fresh, other]:
        path.write_bytes(reference["000000.json"][:100])
    old = time.time() - STALE_TEMP_AGE - 60
    for path in [*stale, other]:
        os.utime(path, (old, old))
    (out / box_name(NESTED)).unlink()
    result = run(write_list(tmp_path / "good.csv", GOOD), root, out)
    assert summary(result) == (6, 1, 5, 0)
    assert outputs(out) == reference
    assert sorted(out.rglob("*.tmp")) == sorted([fresh, other])


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
    assert "\r" not in result.stderr  # no progress bar in a log file (stderr is not a terminal here)

    refused = run(write_list(tmp_path / "list.csv", entries), "", tmp_path / "no_root", rc=2)
    assert "list.csv: 3 absolute paths" in refused.stderr and "pass --video_root" in refused.stderr
    assert "FAILED" not in refused.stdout and not (tmp_path / "no_root").exists()


def test_duplicate_rows_are_processed_once(data, reference, tmp_path):
    """Repeated rows and other spellings of a video (./a.mp4, ROOT/a.mp4) give one job, also across shards."""
    _, root = data
    entries = ["000000.mp4", "000000.mp4", "./000000.mp4", root / "000000.mp4", "000001.mp4", "000001.mp4"]
    video_list = write_list(tmp_path / "list.csv", entries)
    assert summary(run(video_list, root, tmp_path / "out", workers=2)) == (2, 2, 0, 0)
    assert outputs(tmp_path / "out") == {name: reference[name] for name in ("000000.json", "000001.json")}
    shards = [summary(run(video_list, root, tmp_path / f"s{i}", "--shard_id", i, "--num_shards", 2)) for i in (0, 1)]
    assert shards == [(1, 1, 0, 0), (1, 1, 0, 0)]


def test_failed_list_reasons_stay_on_one_line(tmp_path):
    """Multi-line reasons (OpenCV errors) and tabs cannot break the failed list's two-column rows."""
    rows = {"b.mp4": "OpenCV error: (-215)\n in function 'x'\n", "a.mp4": "x\ty"}
    text = failed_list_text(rows)
    assert text == "video\treason\na.mp4\tx y\nb.mp4\tOpenCV error: (-215) in function 'x'\n"
    path = tmp_path / "failed.tsv"
    path.write_text(text)
    assert read_failed_list(path) == {"a.mp4": "x y", "b.mp4": "OpenCV error: (-215) in function 'x'"}
    assert read_failed_list(tmp_path / "none.tsv") == {}


# ---------------------------------------------------------------- the SLURM launch scripts, dry runs

BOX_SCRIPTS = [REPO / "scripts/ssv2/boxes.sh", REPO / "scripts/epic/boxes.sh"]


def dry_run_script(script: Path, tmp_path: Path, **variables: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a box script with a python that records its arguments: (the script's result, python's arguments)."""
    fake_bin, lists, record = tmp_path / "bin", tmp_path / "lists", tmp_path / "record"
    if not fake_bin.exists():
        fake_bin.mkdir()
        (fake_bin / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$RECORD"\n')
        (fake_bin / "python").chmod(0o755)
        lists.mkdir()
        for split in ("train", "val", "test"):
            (lists / f"{split}.csv").write_text(f"{split}.mp4 0\n")
    record.unlink(missing_ok=True)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "RECORD": str(record), "DATA_PATH": str(lists),
           "VIDEO_LIST": str(lists / "train.csv")} | variables
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return result, record.read_text().split("\0")[:-1] if record.exists() else []


@pytest.mark.parametrize("script", BOX_SCRIPTS, ids=lambda p: p.parent.name)
def test_box_scripts_take_the_shard_from_the_task_id_out_of_num_shards(script, tmp_path):
    """Array task N is shard N of NUM_SHARDS (default: as many as the #SBATCH --array line has tasks), also when
    it is resubmitted alone (SLURM_ARRAY_TASK_COUNT=1); outside SLURM no shard is passed."""
    first, last = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)$", script.read_text(), re.M).groups())
    result, words = dry_run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert words[:2] == ["-m", "motion_detection.extract_boxes"] and "--shard_id" not in words
    assert "--num_shards" not in words and words[-2:] == ["--flow", "tvl1"], words  # no empty words from arrays
    resubmitted = {"SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "17", "SLURM_ARRAY_TASK_COUNT": "1",
                   "SLURM_ARRAY_TASK_MIN": "17", "SLURM_ARRAY_TASK_MAX": "17"}
    for extra, shards in (({}, str(last - first + 1)), ({"NUM_SHARDS": "32"}, "32")):
        result, words = dry_run_script(script, tmp_path, **resubmitted, **extra)
        assert result.returncode == 0, result.stderr
        assert words[-4:] == ["--num_shards", shards, "--shard_id", "17"], words
    result, words = dry_run_script(script, tmp_path, **resubmitted, EXTRA_ARGS="--num_workers 3")
    assert words[-6:] == ["--num_shards", "64", "--shard_id", "17", "--num_workers", "3"], words


@pytest.mark.parametrize("script", BOX_SCRIPTS, ids=lambda p: p.parent.name)
def test_box_scripts_expand_possibly_empty_arrays_safely(script):
    """"${A[@]}" of an empty array aborts under set -u in bash < 4.4: every expansion is guarded, ${A[@]+"${A[@]}"}."""
    text = script.read_text()
    expansions = re.findall(r'"\$\{(\w+)\[@\]\}"', text)
    guarded = re.findall(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', text)
    assert "EXTRA" in expansions and sorted(expansions) == sorted(guarded), text


def test_ssv2_box_script_stops_on_a_missing_list(tmp_path):
    """A missing csv would fail the extraction at the start of the job, after its wait in the queue: the script names
    it and stops before running the extraction. The lists go to --video_list as they are, not through ``cat``."""
    result, words = dry_run_script(REPO / "scripts/ssv2/boxes.sh", tmp_path)
    at = words.index("--video_list") + 1
    assert words[at : at + 4] == [*(str(tmp_path / "lists" / f"{s}.csv") for s in ("train", "val", "test")),
                                  "--video_root"], words
    (tmp_path / "lists" / "val.csv").unlink()
    result, words = dry_run_script(REPO / "scripts/ssv2/boxes.sh", tmp_path)
    assert result.returncode == 2 and words == []
    assert f"{tmp_path / 'lists' / 'val.csv'} not found" in result.stderr, result.stderr

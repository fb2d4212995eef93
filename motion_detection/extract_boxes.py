"""Extract one motion-box JSON per video of a VideoMAE-style list (``path [label ...]`` per line).

    python -m motion_detection.extract_boxes --video_list train.csv --video_root videos/ --output_dir boxes/

``a/b.mp4`` (relative to ``--video_root``) gets ``boxes/a/b.json``. The run is resumable: a valid box file made
with the same flow and detection settings is skipped, and every file is written under a temporary name of its own
and renamed, so a killed run leaves no half file (and its temp files are removed by a later run after an hour).
Within a video, the boxes of the frame pairs done so far are saved every ``--partial_every`` seconds
(``boxes/a/b.json.partial``, removed when the box file is written), and a later run goes on from there.
Videos that cannot be used (unreadable, truncated, crashing the decoder, or two entries such as ``a/b.mp4`` and
``a/b.MP4`` that would share a box file) are listed with the reason in ``failed.tsv`` (per shard when sharded) and
the exit status is 1 (2 for invalid arguments); every other video is still written. A video listed twice, or
spelled differently (``./a.mp4``, ``ROOT/a.mp4``), is processed once. Under a SLURM array the shard defaults to
the array task (``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``); a resubmission of some tasks
(``sbatch --array=17``) is an array of its own, so pass ``--shard_id``/``--num_shards`` there (scripts/*/boxes.sh do).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
from tqdm import tqdm

from .boxfile import (
    MAX_NAME_BYTES,
    BoxFileError,
    atomic_write_text,
    box_file_path,
    check_writable,
    failed_list_text,
    load_boxes,
    load_partial,
    partial_file_path,
    read_failed_list,
    relative_video_path,
    remove_stale_temp_files,
    save_boxes,
    save_partial,
    video_identity,
)
from .detect import MotionBoxDetector, add_detection_args, params_from_args
from .flow import available_flows
from .video import StartPastEndError, VideoReadError, check_no_space_in_path, check_video_root

log = logging.getLogger("extract_boxes")
PROGRESS_SECONDS = 60  # between progress lines when stderr is not a terminal
DEVICE_FLOWS = ("tvl1_torch",)  # flow backends that take --device and --compile
PARTIAL_EVERY = 300.0  # seconds between saves of an unfinished video's pair boxes (SLURM's USR1@300 lead)
GPU_BATCH_SIZE = 64  # --batch_size default for a flow backend on a GPU (one process, pairs batched on the device)


@dataclass
class Job:
    video: str  # path relative to the video root; also the box file's relative path
    source: str  # path to open
    output: str
    partial_every: float = 0.0  # seconds between saves of the pair boxes so far (0: never)
    resume: bool = True  # go on from a partial box file left by an interrupted run


@dataclass
class Outcome:
    video: str
    ok: bool
    message: str = ""
    num_frames: int = 0
    pairs: int = 0  # frame pairs computed by this run
    resumed_from: int = 0  # frame pairs taken from a partial box file
    no_box: bool = False  # written, with no motion box in any frame


class PartialProgress:
    """The pair boxes of the video being processed, saved beside its box file (``b.json.partial``) every
    ``partial_every`` seconds, so that a killed run (a job's time limit) goes on from the last save instead of
    starting a long video again. A partial file made for other settings or another version of the video is not
    used; one that cannot be written (disk full, a name over 255 bytes) only costs the resumption."""

    def __init__(self, job: Job, config: dict):
        self.path = partial_file_path(job.output)
        self.every = job.partial_every
        self.resume = job.resume
        self.saved = time.monotonic()
        self.problem = ""
        try:
            self.key = {"video": job.video, "file": video_identity(job.source), "flow": config}
        except OSError:
            self.key = None  # the decoder names the problem
        if len(os.fsencode(self.path.name)) > MAX_NAME_BYTES:
            self.every, self.resume = 0, False  # no such file can exist

    def load(self) -> list:
        if self.key is None or not self.resume or not self.path.exists():
            return []
        try:
            return load_partial(self.path, self.key)
        except BoxFileError as e:
            self.problem = f"starting over: {e}"
            return []

    def update(self, pairs: list) -> None:
        if self.key is None or self.every <= 0 or time.monotonic() - self.saved < self.every:
            return
        try:
            save_partial(self.path, self.key, pairs)
        except OSError as e:
            self.problem = f"progress not saved: cannot write {self.path} ({e})"
            self.key = None
        self.saved = time.monotonic()

    def remove(self) -> None:
        remove_partial(self.path)


def remove_partial(path: Path) -> None:
    """Delete a partial box file if there is one; a file that cannot be deleted (read-only folder) is left: it is
    only read for a video without a valid box file."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def read_video_list(path: str | os.PathLike) -> list[str]:
    """First whitespace-separated column of every non-empty line (a path with a space is a ValueError)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # -sig: a spreadsheet's byte-order mark
    except OSError as e:
        raise ValueError(f"cannot read --video_list {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--video_list {path} is not UTF-8 text: {e}") from None
    videos = []
    for number, line in enumerate(lines, start=1):
        if fields := line.split():
            check_no_space_in_path(fields, f"--video_list {path}:{number}")
            videos.append(fields[0])
    return videos


def distinct_videos(entries: list[str], video_root: str) -> list[str]:
    """The first entry of every distinct video (``a.mp4``, ``./a.mp4`` and ``ROOT/a.mp4`` are one box file), so
    that no video is processed twice, by two workers or by two shards (EPIC-style lists name a video once per
    action segment)."""
    first = {}
    for entry in entries:
        first.setdefault(video_key(entry, video_root), entry)
    return list(first.values())


def video_key(entry: str, video_root: str) -> str:
    """The path below the video root that names a video's box file (the entry itself if it is not below it)."""
    try:
        return relative_video_path(entry, video_root)
    except ValueError:
        return entry


def default_shard() -> tuple[int, int]:
    """(shard_id, num_shards) of a SLURM job array (``--array=MIN-MAX[:STEP]``), or (0, 1)."""
    if "SLURM_ARRAY_TASK_COUNT" not in os.environ or "SLURM_ARRAY_TASK_ID" not in os.environ:
        return 0, 1
    values = {}
    for name, default in (("ID", None), ("COUNT", None), ("MIN", "0"), ("STEP", "1")):
        value = os.environ.get(f"SLURM_ARRAY_TASK_{name}", default)
        try:
            values[name] = int(value)
        except ValueError:
            raise ValueError(f"SLURM_ARRAY_TASK_{name}={value!r} is not an integer") from None
    return (values["ID"] - values["MIN"]) // max(values["STEP"], 1), values["COUNT"]


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def failed_list_path(output_dir: str, shard_id: int, num_shards: int) -> Path:
    name = "failed.tsv" if num_shards == 1 else f"failed.shard{shard_id:04d}-of-{num_shards:04d}.tsv"
    return Path(output_dir) / name


def merged_failures(earlier: dict[str, str], videos: list[str], failures: list[Outcome],
                    video_root: str) -> dict[str, str]:
    """The failed list after this run, by path below the video root (as the box files, so that it holds when the
    videos move): this run's failures, and the earlier rows of videos it did not process (a run on another list
    into the same --output_dir keeps them); the earlier rows of the videos it processed go."""
    processed = {video_key(video, video_root) for video in videos}
    rows = {video_key(video, video_root): reason for video, reason in earlier.items()}
    rows = {video: reason for video, reason in rows.items() if video not in processed}
    return rows | {video_key(outcome.video, video_root): outcome.message for outcome in failures}


_detector: MotionBoxDetector | None = None


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """A pool worker whose run died (SIGKILL, or a SIGTERM to the main process alone, which skips the pool's
    shutdown) ends itself, as torch's DataLoader workers do, instead of going on with the videos already queued to
    it: a rerun would do them again, at the same time. Its progress within the current video is kept (``.partial``)."""
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def _init_worker(detector_kwargs: dict, single_thread: bool, parent_pid: int | None = None) -> None:
    global _detector
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    if single_thread:
        cv2.setNumThreads(1)
    _detector = MotionBoxDetector(**detector_kwargs)
    torch = sys.modules.get("torch")  # imported by a torch flow backend (tvl1_torch)
    if single_thread and torch is not None:
        torch.set_num_threads(1)


def _run_job(job: Job) -> Outcome:
    try:
        progress = PartialProgress(job, _detector.config())
        done = progress.load()
        try:
            boxes = _detector.detect_video(job.source, job.video, done, progress.update)
        except StartPastEndError as e:  # the partial file's key matched, its pairs do not
            progress.problem = f"starting over: {progress.path} holds more frame pairs than the video ({e})"
            done = []
            boxes = _detector.detect_video(job.source, job.video, done, progress.update)
        if progress.key is not None:  # a box file of a video replaced later (re-encoded) is recomputed
            boxes.extra["video_bytes"] = progress.key["file"]["size"]
        save_boxes(job.output, boxes)
        progress.remove()
        return Outcome(job.video, True, progress.problem, boxes.num_frames, pairs=boxes.num_frames - 1 - len(done),
                       resumed_from=len(done), no_box=boxes.union is None)
    except VideoReadError as e:
        return Outcome(job.video, False, str(e))
    except Exception as e:  # a bad video must not stop the run: record it and go on
        return Outcome(job.video, False, f"{type(e).__name__}: {e}")


def _run_pool(jobs: list[Job], detector_kwargs: dict, num_workers: int, progress) -> tuple[list[Outcome], list[Job]]:
    """Run jobs in worker processes; returns the outcomes and the jobs lost when a worker died."""
    outcomes, done = [], set()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(num_workers, ctx, _init_worker, (detector_kwargs, True, os.getpid())) as pool:
        futures = {pool.submit(_run_job, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                outcomes.append(future.result())
            except BrokenProcessPool:
                continue
            done.add(futures[future].video)
            progress(outcomes[-1])
    return outcomes, [job for job in jobs if job.video not in done]


def run_jobs(jobs: list[Job], detector_kwargs: dict, num_workers: int, progress) -> list[Outcome]:
    if num_workers == 0:
        _init_worker(detector_kwargs, False)
        outcomes = []
        for job in jobs:
            outcomes.append(_run_job(job))
            progress(outcomes[-1])
        return outcomes
    outcomes, lost = _run_pool(jobs, detector_kwargs, num_workers, progress)
    if lost:
        log.warning("a worker process died (a decoder crash, or out of memory); rerunning the %d unfinished videos "
                    "in a new pool of %d workers", len(lost), min(num_workers, len(lost)))
        outcomes += _rerun(lost, detector_kwargs, num_workers, progress)
    return outcomes


def _rerun(jobs: list[Job], detector_kwargs: dict, num_workers: int, progress) -> list[Outcome]:
    """Run jobs in a fresh pool; when it breaks as well, split its unfinished jobs in halves and rerun each half
    the same way, so that a video that kills its worker even alone is found in a few pools (each as large as the
    jobs allow) and recorded as failed, while every other video is still done."""
    outcomes, lost = _run_pool(jobs, detector_kwargs, min(num_workers, len(jobs)), progress)
    if not lost:
        return outcomes
    if len(jobs) == 1:
        outcome = Outcome(jobs[0].video, False, "the worker process died while processing this video alone "
                          "(a decoder crash, or out of memory)")
        progress(outcome)
        return outcomes + [outcome]
    halves = [lost] if len(lost) == 1 else [lost[: len(lost) // 2], lost[len(lost) // 2 :]]
    log.warning("a worker process died again; rerunning the %d unfinished videos in %s", len(lost),
                "a pool of its own" if len(lost) == 1 else f"two pools of {len(halves[0])} and {len(halves[1])}")
    for half in halves:
        outcomes += _rerun(half, detector_kwargs, num_workers, progress)
    return outcomes


def box_file_collisions(videos: list[str], video_root: str) -> dict[str, str]:
    """Entry -> reason, for distinct list entries that map to the same box file (``a/b.mp4`` and ``a/b.MP4`` or
    ``a/b.webm`` all give ``a/b.json``): each would overwrite the other's boxes, so neither is processed. Checked
    on the whole list, as the entries may fall into different shards."""
    owners: dict[Path, list[str]] = {}
    for entry in videos:
        try:
            owners.setdefault(box_file_path("", relative_video_path(entry, video_root)), []).append(entry)
        except ValueError:
            continue  # not a usable path: plan_jobs reports it
    reasons = {}
    for box, entries in owners.items():
        for entry in entries if len(entries) > 1 else ():
            others = ", ".join(other for other in entries if other != entry)
            reasons[entry] = f"same box file {box.as_posix()} as list entry {others}; rename one of the videos"
    return reasons


def video_changed(boxes, source: str) -> str:
    """Why a box file is not its video's any more ('' if it is): the video has another size in bytes than the one
    it was made from (re-encoded or replaced; a copy keeps its size, whatever its modification time). Box files
    without the record (made before it) count as their video's."""
    recorded = boxes.extra.get("video_bytes")
    try:
        size = os.path.getsize(source)
    except OSError:
        return ""  # a missing video is named when its job fails
    return "" if recorded is None or size == recorded else f"its video has {size} bytes, {recorded} when boxed"


def plan_jobs(
    videos: list[str], args, config: dict, collisions: dict[str, str] | None = None
) -> tuple[list[Job], int, list[Outcome]]:
    """Jobs still to do, the number already done, and list entries that are unusable as paths or collide
    (``collisions``: entry -> reason). Stale temp files of killed runs are removed from the box folders."""
    jobs, skipped, bad, folders = [], 0, [], {Path(args.output_dir)}
    collisions = collisions or {}
    for entry in videos:
        try:
            rel = relative_video_path(entry, args.video_root)
            output = box_file_path(args.output_dir, rel)
        except ValueError as e:
            bad.append(Outcome(entry, False, str(e)))
            continue
        if entry in collisions:
            bad.append(Outcome(entry, False, collisions[entry]))
            continue
        folders.add(output.parent)
        if output.exists() and not args.overwrite:
            source = os.path.join(args.video_root, rel)
            try:
                boxes = load_boxes(output)
                changed = video_changed(boxes, source)
                if boxes.flow == config and not changed:
                    skipped += 1
                    remove_partial(partial_file_path(output))  # left when killed after the box file
                    continue
                log.info("recomputing %s: %s", output, changed or "made with other settings")
            except BoxFileError as e:
                log.info("recomputing invalid box file: %s", e)
        jobs.append(Job(rel, os.path.join(args.video_root, rel), str(output), args.partial_every, not args.overwrite))
    for folder in folders:  # once per folder, not per video: SSV2 has 220k box files in one
        remove_stale_temp_files(folder)
    return jobs, skipped, bad


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        shard_id, num_shards = default_shard()
    except ValueError as e:
        parser.error(str(e))
    parser.add_argument("--video_list", required=True, nargs="+",
                        help="VideoMAE-style list(s); the first column is the video path. Several lists are read as "
                        "one, each line by line (SSV2: train.csv val.csv test.csv), so a list without a final "
                        "newline loses no video as it would to `cat`; a video in two lists gets one box file")
    parser.add_argument("--video_root", default="", help="folder the list's paths are relative to")
    parser.add_argument("--output_dir", required=True, help="box files go here, mirroring the video paths")
    parser.add_argument("--flow", default="tvl1", choices=available_flows(), help="optical flow (default: tvl1)")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="worker processes, one video each (0 = in this process). Default: the usable CPUs, "
                        "each worker with one OpenCV / torch thread; 0 for tvl1_torch on a GPU, which batches the "
                        "pairs of a video on the device while a background thread decodes")
    parser.add_argument("--device", default=None,
                        help=f"device of a torch flow backend ({', '.join(DEVICE_FLOWS)}): cuda, cuda:N or cpu "
                        "(default: cuda when available, else cpu); box files do not depend on it")
    parser.add_argument("--compile", action="store_true",
                        help=f"{', '.join(DEVICE_FLOWS)}: run the flow iterations through torch.compile (fused "
                        "kernels, about a minute to compile at the start)")
    parser.add_argument("--shard_id", type=int, default=shard_id, help="this shard (default: SLURM array task)")
    parser.add_argument("--num_shards", type=int, default=num_shards, help="shards in all (default: SLURM array)")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute even valid existing box files (and start unfinished videos again)")
    parser.add_argument("--partial_every", type=float, default=PARTIAL_EVERY,
                        help="seconds between saves of an unfinished video's frame-pair boxes beside its box file "
                        "(NAME.json.partial), from which a killed or requeued run goes on: a long video (EPIC) is "
                        "not started again; 0 = never (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help=f"frame pairs of a video handed to the flow backend at once (default: 8; "
                        f"{GPU_BATCH_SIZE} for tvl1_torch on a GPU)")
    add_detection_args(parser)
    return parser


def build_detector(args: argparse.Namespace) -> tuple[MotionBoxDetector, dict]:
    """The detector for this process and the keyword arguments every worker builds its own from. Fills in the
    device-dependent defaults: ``--batch_size`` (8, or ``GPU_BATCH_SIZE`` on a GPU) and ``--num_workers`` (one per
    usable CPU, or 0 on a GPU). ValueError for a setting that does not fit the flow."""
    for name in ("device", "compile"):
        if getattr(args, name) not in (None, False) and args.flow not in DEVICE_FLOWS:
            raise ValueError(f"--{name} applies to {', '.join(DEVICE_FLOWS)}, not to --flow {args.flow}")
    if args.batch_size is not None and args.flow == "codec_mv":
        raise ValueError("--batch_size sets how many frame pairs an optical flow takes at once; --flow codec_mv reads "
                         "the vectors from the file")
    flow_params = {"device": args.device} if args.device is not None else {}
    if args.compile:
        flow_params["compile"] = True
    detector_kwargs = {"flow": args.flow, "flow_params": flow_params, **vars(params_from_args(args))}
    detector = MotionBoxDetector(**detector_kwargs)
    on_accelerator = getattr(detector.backend, "on_accelerator", False)
    if args.compile and not on_accelerator:
        log.warning("--compile on a CPU: torch.compile runs tvl1_torch slower than eager there (BENCHMARKS.md), and "
                    "every worker process compiles it again")
    detector_kwargs["batch_size"] = args.batch_size or (GPU_BATCH_SIZE if on_accelerator else detector.batch_size)
    if args.num_workers is None:
        args.num_workers = 0 if on_accelerator else default_workers()
    return detector, detector_kwargs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not 0 <= args.shard_id < args.num_shards:
        resubmitted = (" (pass --num_shards with --shard_id: a SLURM array task resubmitted alone, --array=N, is an "
                       "array of one)") if "SLURM_ARRAY_TASK_ID" in os.environ else ""
        parser.error(f"--shard_id {args.shard_id} is outside [0, --num_shards {args.num_shards}){resubmitted}")
    for name, low in (("num_workers", 0), ("batch_size", 1), ("partial_every", 0)):
        if getattr(args, name) is not None and not getattr(args, name) >= low:
            parser.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    try:
        detector, detector_kwargs = build_detector(args)
    except ValueError as e:
        parser.error(str(e))
    config = detector.config()
    lists = " ".join(args.video_list)
    try:
        listed = {list_file: read_video_list(list_file) for list_file in args.video_list}
        entries = [video for videos in listed.values() for video in videos]
        empty = [list_file for list_file, videos in listed.items() if not videos]
        if len(empty) == len(listed):
            raise ValueError(f"--video_list {lists} lists no videos (empty, or blank lines only)")
        for list_file in empty:  # a small data set's empty test split: the other lists' videos are still boxed
            log.warning("--video_list %s lists no videos (empty, or blank lines only)", list_file)
        check_video_root(entries, args.video_root, lists, "--video_root")
    except ValueError as e:
        parser.error(str(e))
    absolute = [entry for entry in entries if Path(entry).is_absolute()]
    if absolute and not args.video_root:
        parser.error(f"{lists}: {len(absolute)} absolute paths ({absolute[0]}, ...); pass --video_root, a "
                     "folder above them: box files mirror the paths below it")
    try:  # before hours of flow: a box folder that takes no files would lose every video's boxes
        check_writable(args.output_dir)
    except OSError as e:
        parser.error(f"cannot write box files to --output_dir {args.output_dir}: {e}")
    all_videos = distinct_videos(entries, args.video_root)
    videos = all_videos[args.shard_id :: args.num_shards]
    jobs, skipped, failures = plan_jobs(videos, args, config, box_file_collisions(all_videos, args.video_root))
    log.info("shard %d/%d: %d videos, %d already done, %d to do with %s flow",
             args.shard_id, args.num_shards, len(videos), skipped, len(jobs), args.flow)
    for outcome in failures:
        print(f"FAILED {outcome.video}: {outcome.message}")

    start = time.time()
    interactive = sys.stderr.isatty()  # a SLURM log gets a line a minute, not a progress bar's carriage returns
    bar = tqdm(total=len(jobs), unit="video", dynamic_ncols=True, disable=not jobs or not interactive)
    done, reported = [0], [start]

    def progress(outcome: Outcome) -> None:
        bar.update(1)
        done[0] += 1
        if not outcome.ok:
            bar.write(f"FAILED {outcome.video}: {outcome.message}")
        elif outcome.message:
            log.warning("%s: %s", outcome.video, outcome.message)
        if outcome.resumed_from:
            log.info("%s: went on from frame pair %d of %d (saved by an interrupted run)", outcome.video,
                     outcome.resumed_from, outcome.num_frames - 1)
        if not interactive and time.time() - reported[0] >= PROGRESS_SECONDS:
            reported[0] = time.time()
            log.info("%d/%d videos done (%.2f videos/s)", done[0], len(jobs), done[0] / (reported[0] - start))

    outcomes = run_jobs(jobs, detector_kwargs, args.num_workers, progress)
    bar.close()
    elapsed = time.time() - start
    failures += [o for o in outcomes if not o.ok]
    written = [o for o in outcomes if o.ok]
    pairs = sum(o.pairs for o in written)

    failed_path = failed_list_path(args.output_dir, args.shard_id, args.num_shards)
    try:
        failed_rows = merged_failures(read_failed_list(failed_path), videos, failures, args.video_root)
        if failed_rows:
            atomic_write_text(failed_path, failed_list_text(failed_rows))
        elif failed_path.exists():
            failed_path.unlink()
    except (OSError, UnicodeDecodeError) as e:
        log.error("cannot update the list of failed videos %s: %s", failed_path, e)
    rate = pairs / elapsed if elapsed > 0 else 0.0
    print(f"summary: {len(videos)} videos | {len(written)} written | {skipped} already done | "
          f"{len(failures)} failed | {pairs} frame pairs in {elapsed:.1f}s ({rate:.1f} pairs/s)")
    if failures:
        print(f"failed videos and reasons: {failed_path}")
    without = [o.video for o in written if o.no_box]
    if without:
        named = ", ".join(without[:3]) + (', ...; their box files hold "union":null' if len(without) > 3 else "")
        print(f"warning: {len(without)} of the {len(written)} videos written have no motion box in any frame "
              f"({named}), so training takes their clips as clips without motion. Right for still videos; else their "
              "motion stayed below --min_peak (faint motion, a short side under about 160 pixels, or --flow dis, "
              "whose flow is smoother): look at a few with python -m motion_detection.visualize VIDEO BOX_FILE")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

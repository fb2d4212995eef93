"""Tests of the box visualiser (mp4 / gif / png output, drawn colours, input checks) and the box-quality table."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import make_synthetic_dataset
from motion_detection import MotionBoxDetector, MotionBoxes, evaluate, load_boxes, save_boxes, union_box, visualize
from motion_detection.video import read_video

REPO = Path(__file__).resolve().parents[1]
T, W, H = 12, 160, 120
NAMES = ["000000", "000001", "000002"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three synthetic clips (12 frames, 160x120) with ground truth in gt_boxes/ and DIS boxes in dis/."""
    base = tmp_path_factory.mktemp("visualize_evaluate")
    make_synthetic_dataset.make_dataset(base, len(NAMES), num_frames=T, width=W, height=H, fps=12, seed=11)
    detector = MotionBoxDetector("dis")
    for name in NAMES:
        save_boxes(base / "dis" / f"{name}.json", detector.detect_video(base / "videos" / f"{name}.mp4", f"{name}.mp4"))
    return base


def run_visualize(data: Path, out: Path, *extra: str, boxes: str = "dis/000000.json") -> Path:
    visualize.main([str(data / "videos/000000.mp4"), str(data / boxes), "--out", str(out), *extra])
    return out


def boxes_record(frames, union=None, width=W, height=H) -> MotionBoxes:
    """A box record for hand-written boxes (None = no box in that frame); the union defaults to the frames'."""
    array = np.array([[np.nan] * 4 if b is None else b for b in frames], dtype=np.float32)
    union = union_box(array) if union is None else np.asarray(union, np.float32)
    return MotionBoxes("v.mp4", width, height, len(array), 12.0, {"method": "hand"}, array, union)


def exit_message(excinfo, capsys) -> str:
    """What a CLI exit told the user: the SystemExit text, or argparse's stderr."""
    return str(excinfo.value.code) + capsys.readouterr().err


# ---------------------------------------------------------------- visualize: output kinds


@pytest.mark.parametrize("show_map", [False, True])
def test_mp4_decodes_with_the_videos_frame_count_and_size(data, tmp_path, show_map):
    """The mp4 has every frame of the video, at its size; --show_map puts the map beside it (double width)."""
    out = run_visualize(data, tmp_path / "check.mp4", *(["--show_map"] if show_map else []))
    frames, info = read_video(out)
    assert frames.shape == (T, H, 2 * W if show_map else W, 3)
    assert info.fps == pytest.approx(12.0)


def test_odd_frame_size_mp4_is_padded_not_cropped(tmp_path):
    """mp4v would crop an odd frame size; the writer pads to even so that no row or column is lost."""
    frames = np.full((5, 61, 81, 3), 200, np.uint8)
    visualize.write_output(frames, tmp_path / "odd.mp4", 12.0, 8)
    decoded, _ = read_video(tmp_path / "odd.mp4")
    assert decoded.shape == (5, 62, 82, 3)
    assert np.abs(decoded[:, :61, :81].astype(int) - 200).mean() < 3


def test_gif_has_every_frame(data, tmp_path):
    out = run_visualize(data, tmp_path / "check.gif", "--gt", str(data / "gt_boxes/000000.json"))
    with Image.open(out) as gif:
        assert gif.n_frames == T
        assert gif.size == (W, H)


@pytest.mark.parametrize(("strip_frames", "show_map", "size"), [
    (5, False, (5 * W, H)),  # frames side by side
    (50, False, (T * W, H)),  # never more tiles than frames
    (3, True, (2 * W, 3 * H)),  # wide frame + map tiles stacked vertically
])
def test_png_strip_holds_evenly_spaced_rendered_frames(data, tmp_path, strip_frames, show_map, size):
    """The strip's tiles are exactly the rendered first, ..., last frames (png is lossless)."""
    extra = ["--strip_frames", str(strip_frames)] + (["--show_map"] if show_map else [])
    with Image.open(run_visualize(data, tmp_path / "strip.png", *extra)) as image:
        assert image.size == size
        strip = np.asarray(image.convert("RGB"))
    frames, _ = read_video(data / "videos/000000.mp4")
    boxes = load_boxes(data / "dis/000000.json")
    maps = list(MotionBoxDetector("dis").iter_maps(frames)) if show_map else None
    rendered = visualize.render(frames, boxes, None, maps)
    tile_h, tile_w = rendered.shape[1:3]
    first = strip[:tile_h, :tile_w]
    last = strip[-tile_h:, -tile_w:]
    np.testing.assert_array_equal(first, rendered[0])
    np.testing.assert_array_equal(last, rendered[-1])


# ---------------------------------------------------------------- visualize: what is drawn


def test_box_colours_appear_on_the_box_edges():
    """Frame box green, union yellow, ground truth cyan, each on its own edges (x2/y2 exclusive), nothing inside."""
    frames = np.zeros((2, H, W, 3), np.uint8)
    boxes = boxes_record([[20, 30, 60, 70], None], union=[10, 10, 100, 90])
    gt = boxes_record([[70, 40, 110, 80], [70, 40, 110, 80]])
    out = visualize.render(frames, boxes, gt)
    assert out.shape == frames.shape
    green, yellow, cyan = (np.array(c, np.uint8) for c in
                           (visualize.FRAME_COLOUR, visualize.UNION_COLOUR, visualize.GT_COLOUR))
    for y, x in [(30, 40), (69, 40), (50, 20), (50, 59)]:  # top, bottom, left, right edge of the frame box
        np.testing.assert_array_equal(out[0, y, x], green)
    for y, x in [(10, 50), (89, 50), (50, 10), (50, 99)]:
        np.testing.assert_array_equal(out[0, y, x], yellow)
    for y, x in [(40, 90), (79, 90), (60, 109)]:
        np.testing.assert_array_equal(out[0, y, x], cyan)
    for y, x in [(70, 40), (50, 60), (50, 40), (5, 5), (80, 110)]:  # past exclusive edges, inside, outside
        np.testing.assert_array_equal(out[0, y, x], [0, 0, 0])
    # Frame 1 has no frame box: no green anywhere, but the union and the ground truth are still drawn.
    assert not (out[1] == green).all(axis=-1).any()
    np.testing.assert_array_equal(out[1, 10, 50], yellow)
    np.testing.assert_array_equal(out[1, 40, 90], cyan)


def test_frames_without_boxes_are_left_untouched(data):
    """NaN frame boxes, no union and NaN ground truth draw nothing at all."""
    frames, _ = read_video(data / "videos/000001.mp4")
    empty = boxes_record([None] * T)
    assert empty.union is None
    np.testing.assert_array_equal(visualize.render(frames, empty, empty), frames)


def test_map_panel_is_a_heat_image_with_the_frame_box():
    """With maps the frame gets a heat panel on its right, normalised per frame, with the frame box drawn on it;
    the last frame (no pair of its own) reuses the last map."""
    frames = np.zeros((3, H, W, 3), np.uint8)
    maps = [np.zeros((60, 80), np.float32), np.zeros((60, 80), np.float32)]
    maps[0][20:40, 30:50] = 5.0
    maps[1][5:10, 5:10] = 1.0
    boxes = boxes_record([[60, 40, 100, 80]] * 3)
    out = visualize.render(frames, boxes, maps=maps)
    assert out.shape == (3, H, 2 * W, 3)
    np.testing.assert_array_equal(out[:, :, :W], visualize.render(frames, boxes))
    heat = out[0, :, W:]
    assert heat[60, 80].sum() > heat[110, 10].sum() + 200  # hot where the map peaks, dark elsewhere
    np.testing.assert_array_equal(heat[40, 80], visualize.FRAME_COLOUR)
    np.testing.assert_array_equal(out[2, :, W:], out[1, :, W:])
    assert not np.array_equal(out[0, :, W:], out[1, :, W:])


def test_show_map_uses_the_box_files_flow_else_falls_back_to_flow_option(data):
    """A DIS box file rebuilds the detector that made it; a ground-truth file ("ground_truth") uses --flow."""
    dis_boxes = load_boxes(data / "dis/000000.json")
    assert visualize.detector_for(dis_boxes.flow, "tvl1").config() == MotionBoxDetector("dis").config()
    gt_flow = load_boxes(data / "gt_boxes/000000.json").flow
    assert gt_flow["method"] == "ground_truth"
    assert visualize.detector_for(gt_flow, "tvl1").backend.name == "tvl1"
    assert visualize.detector_for(gt_flow, "dis").backend.name == "dis"


def test_show_map_with_a_ground_truth_box_file_draws_the_fallback_flows_map(data, tmp_path):
    """End to end: the gt file as the boxes with --show_map --flow dis shows DIS maps beside the frames."""
    out = run_visualize(data, tmp_path / "gt.png", "--show_map", "--flow", "dis", "--strip_frames", "2",
                        boxes="gt_boxes/000000.json")
    strip = np.asarray(Image.open(out).convert("RGB"))
    frames, _ = read_video(data / "videos/000000.mp4")
    maps = list(MotionBoxDetector("dis").iter_maps(frames))
    expected = visualize.render(frames, load_boxes(data / "gt_boxes/000000.json"), None, maps)
    np.testing.assert_array_equal(strip, np.concatenate([expected[0], expected[-1]], axis=0))


@pytest.mark.usefixtures("one_torch_thread")
def test_show_map_recomputes_a_tvl1_torch_box_files_map_with_its_settings(data, tmp_path, capsys):
    """A box file written with --flow tvl1_torch (whose record includes the implementation) rebuilds its detector,
    and the CLI draws that detector's maps; a box file from another implementation exits naming the file."""
    video = data / "videos/000000.mp4"
    made = MotionBoxDetector("tvl1_torch", {"device": "cpu"}, short_side=48)
    save_boxes(tmp_path / "torch.json", made.detect_video(video, "000000.mp4"))
    boxes = load_boxes(tmp_path / "torch.json")
    assert "implementation" in boxes.flow["params"]
    assert visualize.detector_for(boxes.flow, "dis").config() == boxes.flow
    visualize.main([str(video), str(tmp_path / "torch.json"), "--show_map", "--strip_frames", "2",
                    "--out", str(tmp_path / "torch.png")])
    strip = np.asarray(Image.open(tmp_path / "torch.png").convert("RGB"))
    frames, _ = read_video(video)
    maps = list(MotionBoxDetector("tvl1_torch", short_side=48).iter_maps(frames))  # on the CLI's default device
    expected = visualize.render(frames, boxes, None, maps)
    np.testing.assert_array_equal(strip, np.concatenate([expected[0], expected[-1]], axis=0))

    boxes.flow["params"]["implementation"] = "torch float32 r0"
    save_boxes(tmp_path / "old.json", boxes)
    with pytest.raises(SystemExit) as excinfo:
        visualize.main([str(video), str(tmp_path / "old.json"), "--show_map", "--out", str(tmp_path / "old.png")])
    message = exit_message(excinfo, capsys)
    assert str(tmp_path / "old.json") in message and "torch float32 r0" in message, message
    assert not (tmp_path / "old.png").exists()


# ---------------------------------------------------------------- visualize: input checks


def test_unknown_extension_exits_before_any_work(data, tmp_path):
    """The real CLI rejects .avi with a clear message, no traceback, and creates nothing."""
    out = tmp_path / "new_dir" / "check.avi"
    result = subprocess.run(
        [sys.executable, "-m", "motion_detection.visualize", str(data / "videos/000000.mp4"),
         str(data / "dis/000000.json"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "unknown output kind '.avi'" in result.stderr and ".mp4, .gif, .png" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.parent.exists()


@pytest.mark.parametrize("option", ["boxes", "gt"])
def test_box_file_with_another_frame_count_exits_naming_it(data, tmp_path, capsys, option):
    short = load_boxes(data / "gt_boxes/000000.json")
    short.num_frames, short.frames = T - 2, short.frames[: T - 2]
    save_boxes(tmp_path / "short.json", short)
    args = [str(data / "videos/000000.mp4"), str(data / "dis/000000.json"), "--out", str(tmp_path / "x.png")]
    if option == "boxes":
        args[1] = str(tmp_path / "short.json")
    else:
        args += ["--gt", str(tmp_path / "short.json")]
    with pytest.raises(SystemExit) as excinfo:
        visualize.main(args)
    message = exit_message(excinfo, capsys)
    assert str(tmp_path / "short.json") in message and f"{T - 2} frames" in message and f"decodes to {T}" in message
    assert not (tmp_path / "x.png").exists()


def test_a_frame_range_draws_those_frames_with_their_boxes(data, tmp_path, capsys, monkeypatch):
    """--start_frame/--num_frames draw frames 4..8 exactly as in the whole video, with their own boxes; a box file
    that ends inside the range exits naming it; a video too large to hold is refused with the way out."""
    out = run_visualize(data, tmp_path / "range.png", "--start_frame", "4", "--num_frames", "5",
                        "--strip_frames", "5")
    frames, _ = read_video(data / "videos/000000.mp4")
    expected = visualize.render(frames, load_boxes(data / "dis/000000.json"))[4:9]
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), np.concatenate(list(expected), axis=1))

    short = load_boxes(data / "gt_boxes/000000.json")
    short.num_frames, short.frames = 7, short.frames[:7]
    save_boxes(tmp_path / "short.json", short)
    with pytest.raises(SystemExit) as excinfo:
        run_visualize(data, tmp_path / "x.png", "--start_frame", "4", "--num_frames", "5",
                      boxes=str(tmp_path / "short.json"))
    message = exit_message(excinfo, capsys)
    assert str(tmp_path / "short.json") in message and "7 frames" in message and "frame 8" in message, message

    monkeypatch.setattr(visualize, "MAX_DECODED_BYTES", 6 * W * H * 3)
    with pytest.raises(SystemExit) as excinfo:
        run_visualize(data, tmp_path / "all.png")
    message = exit_message(excinfo, capsys)
    assert f"{T} frames of {W}x{H}" in message and "--start_frame and --num_frames" in message, message
    # the last 6 frames fit, however many --num_frames asks for
    assert run_visualize(data, tmp_path / "six.png", "--start_frame", "6", "--num_frames", "100").exists()


def test_box_file_for_another_frame_size_exits_naming_it(data, tmp_path, capsys):
    big = boxes_record([[0, 0, 200, 150]] * T, width=320, height=240)
    save_boxes(tmp_path / "big.json", big)
    with pytest.raises(SystemExit) as excinfo:
        visualize.main([str(data / "videos/000000.mp4"), str(tmp_path / "big.json"), "--out", str(tmp_path / "x.gif")])
    message = exit_message(excinfo, capsys)
    assert str(tmp_path / "big.json") in message and "320x240" in message and f"{W}x{H}" in message


def test_another_videos_box_file_of_the_same_size_is_drawn_with_a_warning(data, tmp_path, capsys):
    """The box file of a sibling clip (same size and length) is a likely slip of the command line: named."""
    run_visualize(data, tmp_path / "own.png")
    assert "was made for" not in capsys.readouterr().err
    assert run_visualize(data, tmp_path / "sibling.png", boxes="dis/000001.json").exists()
    assert f"{data / 'dis/000001.json'} was made for 000001.mp4, not 000000.mp4" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "expected"), [
    (["videos/000000.mp4", "dis/missing.json"], ["dis/missing.json", "box file not found"]),
    (["videos/missing.mp4", "dis/000000.json"], ["videos/missing.mp4", "file not found"]),
    (["videos/000000.mp4", "dis/000000.json", "--strip_frames", "0"], ["--strip_frames must be >= 1"]),
])
def test_bad_inputs_exit_with_a_clear_message(data, tmp_path, capsys, args, expected):
    """No traceback: the message names the unreadable file and the problem."""
    argv = [str(data / a) if i < 2 else a for i, a in enumerate(args)] + ["--out", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit) as excinfo:
        visualize.main(argv)
    message = exit_message(excinfo, capsys)
    assert all(part in message for part in expected), message


def test_show_map_on_a_single_frame_video_exits_clearly(tmp_path, capsys):
    frames, _ = make_synthetic_dataset.render_clip(0, 2, W, H, seed=1)
    make_synthetic_dataset.write_mp4(tmp_path / "one.mp4", frames[:1], 12)
    save_boxes(tmp_path / "one.json", boxes_record([[10, 10, 50, 50]]))
    argv = [str(tmp_path / "one.mp4"), str(tmp_path / "one.json"), "--out", str(tmp_path / "one.png")]
    visualize.main(argv)  # without the map a single frame is fine
    assert Image.open(tmp_path / "one.png").size == (W, H)
    with pytest.raises(SystemExit) as excinfo:
        visualize.main([*argv, "--show_map"])
    assert "frame pair" in exit_message(excinfo, capsys)


# ---------------------------------------------------------------- evaluate


def write_boxes(folder: Path, records: dict[str, MotionBoxes]) -> Path:
    for name, record in records.items():
        save_boxes(folder / f"{name}.json", record)
    return folder


def test_perfect_predictions_score_one(data, tmp_path):
    shutil.copytree(data / "gt_boxes", tmp_path / "copy")
    quality = evaluate.box_quality(data / "gt_boxes", tmp_path / "copy")
    assert quality == {"videos": 3, "missing": 0, "union_iou": 1.0, "frame_iou": 1.0, "coverage": 1.0,
                       "frame_hit@0.5": 1.0}


def test_missing_prediction_scores_zero_and_is_counted(data, tmp_path):
    shutil.copytree(data / "gt_boxes", tmp_path / "copy")
    (tmp_path / "copy/000001.json").unlink()
    quality = evaluate.box_quality(data / "gt_boxes", tmp_path / "copy")
    assert quality["missing"] == 1 and quality["videos"] == 3
    for key in ("union_iou", "frame_iou", "coverage", "frame_hit@0.5"):
        assert quality[key] == pytest.approx(2 / 3)


def test_shifted_predictions_give_the_hand_computed_scores(tmp_path):
    """40x40 true boxes; shifts of 10 and 30 px give IoU 1200/2000 = 0.6 and 400/2800 = 1/7."""
    gt = write_boxes(tmp_path / "gt", {"a": boxes_record([[10, 10, 50, 50]] * 4),
                                       "b": boxes_record([[60, 20, 100, 60]] * 4)})
    pred = write_boxes(tmp_path / "pred", {"a": boxes_record([[20, 10, 60, 50]] * 3 + [None]),
                                           "b": boxes_record([[90, 20, 130, 60]] * 4)})
    quality = evaluate.box_quality(gt, pred)
    assert quality["missing"] == 0
    assert quality["union_iou"] == pytest.approx((0.6 + 1 / 7) / 2)
    assert quality["frame_iou"] == pytest.approx((0.6 * 3 / 4 + 1 / 7) / 2)  # the frame without a box scores 0
    assert quality["coverage"] == pytest.approx((3 / 4 + 1) / 2)
    assert quality["frame_hit@0.5"] == pytest.approx((3 / 4 + 0) / 2)


def test_frames_without_a_true_box_reward_predicting_none(tmp_path):
    """Where the ground truth has no box, no predicted box agrees (1) and a predicted box scores 0."""
    gt = write_boxes(tmp_path / "gt", {"a": boxes_record([[10, 10, 50, 50], None]), "b": boxes_record([None, None])})
    same = write_boxes(tmp_path / "same", {"a": boxes_record([[10, 10, 50, 50], None]),
                                           "b": boxes_record([None, None])})
    assert evaluate.box_quality(gt, same)["union_iou"] == evaluate.box_quality(gt, same)["frame_iou"] == 1.0
    extra = write_boxes(tmp_path / "extra", {"a": boxes_record([[10, 10, 50, 50], [10, 10, 50, 50]]),
                                             "b": boxes_record([[0, 0, 20, 20], None])})
    quality = evaluate.box_quality(gt, extra)
    assert quality["frame_iou"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert quality["union_iou"] == pytest.approx((1 + 0) / 2)


def test_invalid_predictions_count_as_missing(tmp_path):
    """Unreadable JSON, another frame count and another frame size all score 0 and count as missing."""
    box = [[10, 10, 50, 50]] * 4
    gt = write_boxes(tmp_path / "gt", {n: boxes_record(box) for n in "abcd"})
    pred = write_boxes(tmp_path / "pred", {"a": boxes_record(box), "c": boxes_record(box[:3]),
                                           "d": boxes_record(box, width=2 * W, height=2 * H)})
    (pred / "b.json").write_text("{not json")
    quality = evaluate.box_quality(gt, pred)
    assert quality["missing"] == 3
    assert quality["frame_iou"] == quality["union_iou"] == pytest.approx(1 / 4)


def test_cli_prints_one_named_row_per_pred_dir(data, capsys):
    evaluate.main(["--gt_dir", str(data / "gt_boxes"), "--pred_dir", str(data / "gt_boxes"), str(data / "dis"),
                   "--names", "perfect", "dis flow"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["boxes", "videos", "missing", "union", "IoU", "frame", "IoU", "has", "box",
                                "IoU>=.5"]
    assert len(lines) == 4 and set(lines[1]) == {"-"}
    assert lines[2].split() == ["perfect", "3", "0", "1.000", "1.000", "1.00", "1.00"]
    dis = evaluate.box_quality(data / "gt_boxes", data / "dis")
    assert lines[3].split() == ["dis", "flow", "3", "0", f"{dis['union_iou']:.3f}", f"{dis['frame_iou']:.3f}",
                                f"{dis['coverage']:.2f}", f"{dis['frame_hit@0.5']:.2f}"]
    assert 0.3 < dis["union_iou"] < 1.0  # DIS finds the object, but not perfectly


def test_cli_default_names_are_folder_names_or_paths_when_those_repeat(data, tmp_path, capsys):
    for run in ("run1", "run2"):
        shutil.copytree(data / "dis", tmp_path / run / "dis")
    evaluate.main(["--gt_dir", str(data / "gt_boxes"), "--pred_dir", str(data / "dis")])
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "dis"
    evaluate.main(["--gt_dir", str(data / "gt_boxes"), "--pred_dir", str(tmp_path / "run1/dis"),
                   str(tmp_path / "run2/dis")])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == [str(tmp_path / "run1/dis"), str(tmp_path / "run2/dis")]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--pred_dir", "{data}/dis", "{data}/gt_boxes", "--names", "one"], "1 names for 2 --pred_dir"),
    (["--pred_dir", "{data}/dis", "{data}/gt_boxes", "--names", "same", "same"], "row names must differ"),
    (["--pred_dir", "{data}/no_such_dir"], "no_such_dir does not exist"),
])
def test_cli_argument_errors(data, capsys, extra, expected):
    with pytest.raises(SystemExit) as excinfo:
        evaluate.main(["--gt_dir", str(data / "gt_boxes"), *(a.format(data=data) for a in extra)])
    assert excinfo.value.code != 0
    assert expected in exit_message(excinfo, capsys)


def test_empty_or_broken_ground_truth_exits_clearly(data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as excinfo:
        evaluate.main(["--gt_dir", str(tmp_path / "empty"), "--pred_dir", str(data / "dis")])
    assert f"no ground-truth box files under {tmp_path / 'empty'}" in exit_message(excinfo, capsys)
    shutil.copytree(data / "gt_boxes", tmp_path / "broken")
    (tmp_path / "broken/000002.json").write_text("[]")
    with pytest.raises(SystemExit) as excinfo:
        evaluate.main(["--gt_dir", str(tmp_path / "broken"), "--pred_dir", str(data / "dis")])
    assert str(tmp_path / "broken/000002.json") in exit_message(excinfo, capsys)

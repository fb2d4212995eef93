"""The benchmark scripts run (tiny sizes) and print their tables, so they cannot rot unnoticed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_bench_motion_prints_speed_and_agreement_tables():
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_motion.py", "--pairs", "2", "--short_side", "64", "--num_videos", "1",
         "--num_frames", "4", "--flows", "dis", "--aspect", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device: cpu") and lines[1].startswith("command: python ")
    assert "speed: 64x64, 2 pairs" in result.stdout  # --aspect 1: the goal's square frames
    speed, agreement = markdown_tables(lines)
    assert [(row["flow"], row["threads"]) for row in speed] == [("dis", "1"), ("dis", str(os.cpu_count()))]
    assert all(float(row["flow pairs/s"]) > 0 and float(row["ms per pair (detect)"]) > 0 for row in speed)
    assert [row["flow"] for row in agreement] == ["dis"]
    assert agreement[0]["union IoU vs dis"] == "1.000"  # a backend agrees with itself
    assert 0 < float(agreement[0]["union IoU vs truth"]) <= 1


@pytest.mark.parametrize("script, args, message", [
    ("bench_motion.py", ["--flows", "dis", "--batch_size", "0"], "argument --batch_size: must be at least 1, got 0"),
    ("bench_motion.py", ["--flows", "dis", "--short_side", "8"], "--short_side: at least 32 pixels, got 8"),
    ("bench_motion.py", ["--flows", "dis", "--torch_devices", "cuda"], "--torch_devices cuda but no GPU is visible"),
    ("bench_finetune_step.py", ["--device", "cpu", "--model", "vit_mini_patch16_224_mofo"],
     "--model vit_mini_patch16_224_mofo: not one of vit_base_patch16_224, "),
    ("bench_pretrain_step.py", ["--device", "cpu", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    ("bench_data.py", ["--input_size", "100"], "--input_size 100 do not split into tubelets of 2x16x16"),
])
def test_benchmarks_refuse_what_they_cannot_run(script, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1], result.stderr


BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the tests below also import the benchmark scripts' functions
TINY_STEP = ["--device", "cpu", "--batch_size", "2", "--num_frames", "4", "--input_size", "32", "--warmup", "1",
             "--steps", "2", "--threads", "1"]


def test_bench_motion_rows_per_device_batch_and_mode():
    """OpenCV rows run with one thread and all; tvl1_torch gets a row per device, mode and batch size, a GPU row
    with all threads only (its cost per core means nothing)."""
    import bench_motion

    assert bench_motion.speed_configs("dis", [8], 4, ["cpu"], ["eager"]) == [("dis", None, 1, [1, 4])]
    rows = bench_motion.speed_configs("tvl1_torch", [8, 64], 4, ["cpu", "cuda"], ["eager", "compile"])
    assert [label for label, *_ in rows] == [
        "tvl1_torch[cpu,b8]", "tvl1_torch[cpu,b64]", "tvl1_torch[cpu,b8,compile]", "tvl1_torch[cpu,b64,compile]",
        "tvl1_torch[cuda,b8]", "tvl1_torch[cuda,b64]", "tvl1_torch[cuda,b8,compile]", "tvl1_torch[cuda,b64,compile]"]
    assert rows[3][1:] == ({"device": "cpu", "compile": True}, 64, [1, 4])
    assert rows[4][1:] == ({"device": "cuda", "compile": False}, 8, [4])


def markdown_tables(lines: list[str]) -> list[list[dict[str, str]]]:
    """Every markdown table in the lines, each as one dict per row."""
    tables, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
        elif table:
            assert len(table) > 2 and set(table[1]) == {"---"}, lines
            tables.append([dict(zip(table[0], row, strict=True)) for row in table[2:]])
            table = []
    return tables


def run_benchmark(script: str, *args: str) -> tuple[list[str], list[dict[str, str]]]:
    """Run a benchmark script; returns its output lines and its (last) markdown table as one dict per row."""
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tables = markdown_tables(lines)
    assert tables, result.stdout
    return lines, tables[-1]


def assert_environment_recorded(lines: list[str], script: str) -> None:
    assert any(line.startswith("device: cpu") and "torch " in line for line in lines)
    assert any(line.startswith(f"command: python benchmarks/{script}") for line in lines)


def test_bench_pretrain_step_table():
    """With --compile, the table of the other rows is printed before the compile row starts (a time limit during
    minutes of compiling on a GPU would cost only that row), then the whole table."""
    lines, rows = run_benchmark("bench_pretrain_step.py", *TINY_STEP, "--decoder_depth", "1", "--compile")
    assert_environment_recorded(lines, "bench_pretrain_step.py")
    first, last = markdown_tables(lines)
    assert lines.index("| step | attention | autocast | optimizer | clips/s | ms/step | peak memory | speedup vs "
                       "reference |") < lines.index(next(line for line in lines if line.startswith("  compile, run")))
    assert [row["step"] for row in first] == ["ours", "VideoMAE reference"] and first == [rows[0], rows[2]]
    assert [row["step"] for row in rows] == ["ours", "ours + torch.compile", "VideoMAE reference"]
    assert [row["attention"] for row in rows] == ["SDPA", "SDPA", "explicit"]
    for row in rows:
        assert float(row["clips/s"]) > 0 and float(row["ms/step"]) > 0
        assert row["peak memory"].endswith(("MiB", "GiB")) and float(row["peak memory"].split()[0]) > 0
        assert float(row["speedup vs reference"].rstrip("x")) > 0
    assert rows[2]["speedup vs reference"] == "1.00x"
    assert "single-tensor" in rows[2]["optimizer"] and "fused" in rows[1]["optimizer"]


def test_videomae_reference_computes_the_models_forward_and_target():
    """The reference step's re-implementation of VideoMAE (explicit attention, every tube embedded) gives the
    project model's predictions and the engine's targets, in fp32."""
    import bench_pretrain_step as bench
    from timm.models import create_model

    from engine_for_pretraining import pixel_targets

    torch.manual_seed(0)
    model = create_model("pretrain_videomae_mini_patch16_224", img_size=32, num_frames=4, decoder_depth=2)
    videos = torch.randn(2, 3, 4, 32, 32)
    mask = torch.stack([torch.randperm(8) < 6 for _ in range(2)])
    with torch.no_grad():
        tables = bench.videomae_position_tables(model)
        torch.testing.assert_close(bench.videomae_forward(model, videos, mask, tables), model(videos, mask),
                                   rtol=1e-4, atol=1e-5)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    targets = pixel_targets(videos * std + mean, 16, 2)  # VideoMAE un-normalises its input; ours reads the pixels
    torch.testing.assert_close(bench.videomae_targets(videos, mask, 16, 2), targets[mask].reshape(2, 6, -1))


def test_bench_finetune_step_table():
    lines, rows = run_benchmark("bench_finetune_step.py", *TINY_STEP)
    assert_environment_recorded(lines, "bench_finetune_step.py")
    assert [row["model"] for row in rows] == ["vit_mini_patch16_224", "vit_mini_patch16_224_mofo"]
    for row in rows:
        assert float(row["clips/s"]) > 0 and float(row["ms/step"]) > 0
        assert float(row["peak memory"].split()[0]) > 0
    assert rows[0]["MCA overhead"] == "" and rows[1]["MCA overhead"].endswith("%")
    assert float(rows[1]["MCA overhead"].rstrip("%")) > -100


TINY_DATA = ["--num_frames", "4", "--sampling_rate", "1", "--input_size", "32", "--items", "2", "--rounds", "1"]


def test_bench_data_table_on_synthetic_videos():
    lines, rows = run_benchmark("bench_data.py", "--num_videos", "2", "--video_frames", "8", "--width", "64",
                                "--height", "48", *TINY_DATA)
    assert_environment_recorded(lines, "bench_data.py")
    assert [(row["pipeline"], row["masking"], row["num_sample"]) for row in rows] == [
        (pipeline, masking, n) for n in ("1", "4") for pipeline, masking in [
            ("VideoMAE-style baseline", "tube"), ("ours", "tube"), ("ours, normalised in the worker", "tube"),
            ("ours", "motion (box files)")]]
    for row in rows:
        assert float(row["clips/s"]) > 0 and float(row["ms/clip"]) > 0 and float(row["speedup vs baseline"][:-1]) > 0
    assert all(row["speedup vs baseline"] == "1.00x" for row in rows if row["pipeline"] == "VideoMAE-style baseline")


def test_bench_data_worker_normalisation_gives_videomae_clips(tmp_path):
    """The like-for-like row's items are our clips normalised as VideoMAE's loader yields them."""
    import bench_data

    from datasets import VideoMAEPretrainDataset
    from make_synthetic_dataset import make_dataset

    summary = make_dataset(tmp_path, 2, num_frames=8, width=64, height=48)
    list_file = tmp_path / "all.csv"
    list_file.write_text("".join(f"{i:06d}.mp4 0\n" for i in range(2)))
    dataset = VideoMAEPretrainDataset(str(list_file), str(summary["video_dir"]), num_frames=4, sampling_rate=1,
                                      input_size=32, num_sample=2, seed=0)
    frames = dataset[1][0]["frames"]
    dataset.reseed(0)
    [normalised, _] = bench_data.NormalizedInWorker(dataset)[1]
    assert "frames" not in normalised and normalised["video"].shape == (3, 4, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    torch.testing.assert_close(normalised["video"], (frames.permute(3, 0, 1, 2) / 255 - mean) / std)


def test_bench_data_on_a_given_list_and_the_videomae_baseline_items(tmp_path):
    """--data_path/--data_root/--box_dir read an existing set; the baseline's items are VideoMAE's (clip, mask)."""
    import bench_data
    import numpy as np

    from make_synthetic_dataset import make_dataset

    summary = make_dataset(tmp_path, 2, num_frames=10, width=64, height=48, val_fraction=0, test_fraction=0)
    list_file = tmp_path / "list.csv"
    list_file.write_text("000000.mp4 0\n000001.mp4 1\n")
    baseline = bench_data.VideoMAEBaseline(str(list_file), str(summary["video_dir"]), num_frames=4, sampling_rate=2,
                                           input_size=32, mask_ratio=0.75)
    clip, mask = baseline[1]
    assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    assert 0 <= float((clip * std + mean).min()) and float((clip * std + mean).max()) <= 1 + 1e-6
    assert mask.shape == (2 * 2 * 2,) and mask.sum() == 2 * 3 and np.array_equal(mask[:4], mask[4:])

    _, rows = run_benchmark("bench_data.py", "--data_path", str(list_file), "--data_root", str(summary["video_dir"]),
                            "--box_dir", str(summary["box_dir"]), "--num_sample", "2", *TINY_DATA)
    assert [(row["masking"], row["num_sample"]) for row in rows] == [("tube", "2"), ("tube", "2"), ("tube", "2"),
                                                                     ("motion (box files)", "2")]

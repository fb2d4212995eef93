"""Data-pipeline benchmark: pretraining clips per second per CPU worker, this project's dataset against a
VideoMAE-style baseline on the same video files.

    python benchmarks/bench_data.py                                            # small synthetic videos
    python benchmarks/bench_data.py --width 320 --height 240 --video_frames 48  # SSV2-sized synthetic videos
    python benchmarks/bench_data.py --data_path list.csv --data_root videos/ --box_dir boxes/

Every row times ``dataset[i]`` in this process (what one DataLoader worker does), with one torch and one OpenCV
thread as in a worker:

- ``ours``: ``datasets.VideoMAEPretrainDataset`` with tube masking, and with MOFO's motion-focused masking over
  the box files (synthetic videos: the generator's ground-truth boxes, written in the box-file format; with
  --data_path only when --box_dir is given). ``--num_sample N`` clips come from one decode. Its clips are uint8
  frames, normalised by the training step on its device; ``ours, normalised in the worker`` adds that
  normalisation to the item (float32 (3, T, S, S), as VideoMAE's loader yields), the like-for-like row.
- ``VideoMAE-style baseline``: VideoMAE's pretraining data path written out here: decord decoding of the sampled
  frames at full resolution, PIL images, GroupMultiScaleCrop (scales 1, .875, .75, .66, one of 13 fixed offsets,
  bilinear resize to --input_size), Stack, ToTorchFormatTensor, GroupNormalize, TubeMaskingGenerator. VideoMAE
  has no repeated sampling for pretraining, so its N clips cost N decodes.

clips/s counts every clip (N per item); each row's figure is the median over --rounds rounds (rows take turns, so
a load change on a shared machine hits all of them) of --items items after one untimed item.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import decord
import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "scripts"),
                str(Path(__file__).resolve().parent)]

from bench_pretrain_step import environment_lines, markdown_table  # noqa: E402

import make_synthetic_dataset as synthetic  # noqa: E402
import utils  # noqa: E402
from datasets import VideoMAEPretrainDataset, read_video_list  # noqa: E402
from modeling_pretrain import DEFAULT_PATCH_SIZE, DEFAULT_TUBELET_SIZE  # noqa: E402
from video_transforms import normalize_clip  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
VIDEOMAE_SCALES = (1, 0.875, 0.75, 0.66)


class GroupMultiScaleCrop:
    """VideoMAE's GroupMultiScaleCrop (fix_crop, more_fix_crop, max_distort 1): a crop size from ``scales`` x the
    short side (snapped to the input size within 3 px), one of 13 fixed offsets, PIL bilinear resize."""

    def __init__(self, input_size: int, scales=VIDEOMAE_SCALES, max_distort: int = 1):
        self.scales, self.max_distort, self.input_size = list(scales), max_distort, [input_size, input_size]

    def __call__(self, img_tuple):
        img_group, label = img_tuple
        crop_w, crop_h, offset_w, offset_h = self._sample_crop_size(img_group[0].size)
        cropped = [img.crop((offset_w, offset_h, offset_w + crop_w, offset_h + crop_h)) for img in img_group]
        return [img.resize((self.input_size[0], self.input_size[1]), Image.BILINEAR) for img in cropped], label

    def _sample_crop_size(self, im_size):
        image_w, image_h = im_size
        base_size = min(image_w, image_h)
        crop_sizes = [int(base_size * x) for x in self.scales]
        crop_h = [self.input_size[1] if abs(x - self.input_size[1]) < 3 else x for x in crop_sizes]
        crop_w = [self.input_size[0] if abs(x - self.input_size[0]) < 3 else x for x in crop_sizes]
        pairs = [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w) if abs(i - j) <= self.max_distort]
        crop_pair = random.choice(pairs)
        w_step, h_step = (image_w - crop_pair[0]) // 4, (image_h - crop_pair[1]) // 4
        offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step),
                   (0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0),
                   (w_step, h_step), (3 * w_step, h_step), (w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
        offset_w, offset_h = random.choice(offsets)
        return crop_pair[0], crop_pair[1], offset_w, offset_h


def stack(img_tuple):
    """VideoMAE's Stack(roll=False): RGB images -> (H, W, 3T) uint8."""
    img_group, label = img_tuple
    return np.concatenate(img_group, axis=2), label


def to_torch_format_tensor(pic_tuple):
    """VideoMAE's ToTorchFormatTensor(div=True): (H, W, C) uint8 -> (C, H, W) float in [0, 1]."""
    pic, label = pic_tuple
    return torch.from_numpy(pic).permute(2, 0, 1).contiguous().float().div(255.0), label


def group_normalize(tensor_tuple):
    """VideoMAE's GroupNormalize: channel by channel, in place."""
    tensor, label = tensor_tuple
    rep_mean = IMAGENET_MEAN * (tensor.size()[0] // len(IMAGENET_MEAN))
    rep_std = IMAGENET_STD * (tensor.size()[0] // len(IMAGENET_STD))
    for t, m, s in zip(tensor, rep_mean, rep_std, strict=True):
        t.sub_(m).div_(s)
    return tensor, label


class VideoMAETubeMasking:
    """VideoMAE's TubeMaskingGenerator (numpy's global generator)."""

    def __init__(self, input_size, mask_ratio: float):
        self.frames, self.height, self.width = input_size
        self.num_patches_per_frame = self.height * self.width
        self.num_masks_per_frame = int(mask_ratio * self.num_patches_per_frame)

    def __call__(self) -> np.ndarray:
        mask_per_frame = np.hstack([np.zeros(self.num_patches_per_frame - self.num_masks_per_frame),
                                    np.ones(self.num_masks_per_frame)])
        np.random.shuffle(mask_per_frame)
        return np.tile(mask_per_frame, (self.frames, 1)).flatten()


class VideoMAEBaseline:
    """VideoMAE's pretraining dataset (its ``VideoMAE`` class with ``DataAugmentationForVideoMAE``): one TSN
    segment of num_frames frames every sampling_rate frames, decoded at full size, returned as (clip, mask)."""

    def __init__(self, list_file: str, data_root: str, num_frames: int, sampling_rate: int, input_size: int,
                 mask_ratio: float, patch_size: int = 16, tubelet_size: int = 2):
        self.paths = [str(Path(data_root) / path) for path, _ in read_video_list(list_file)]
        self.new_length, self.new_step, self.num_segments = num_frames, sampling_rate, 1
        self.skip_length = self.new_length * self.new_step
        self.crop = GroupMultiScaleCrop(input_size)
        window = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)
        self.masked_position_generator = VideoMAETubeMasking(window, mask_ratio)

    def __len__(self) -> int:
        return len(self.paths)

    def transform(self, images):
        process_data, _ = group_normalize(to_torch_format_tensor(stack(self.crop(images))))
        return process_data, self.masked_position_generator()

    def __getitem__(self, index: int):
        decord_vr = decord.VideoReader(self.paths[index], num_threads=1)
        duration = len(decord_vr)
        segment_indices, skip_offsets = self._sample_train_indices(duration)
        images = self._video_tsn_decord_batch_loader(decord_vr, duration, segment_indices, skip_offsets)
        process_data, mask = self.transform((images, None))
        process_data = process_data.view((self.new_length, 3) + process_data.size()[-2:]).transpose(0, 1)
        return process_data, mask

    def _sample_train_indices(self, num_frames: int):
        average_duration = (num_frames - self.skip_length + 1) // self.num_segments
        if average_duration > 0:
            offsets = np.multiply(list(range(self.num_segments)), average_duration)
            offsets = offsets + np.random.randint(average_duration, size=self.num_segments)
        elif num_frames > max(self.num_segments, self.skip_length):
            offsets = np.sort(np.random.randint(num_frames - self.skip_length + 1, size=self.num_segments))
        else:
            offsets = np.zeros((self.num_segments,))
        skip_offsets = np.zeros(self.skip_length // self.new_step, dtype=int)
        return offsets + 1, skip_offsets

    def _video_tsn_decord_batch_loader(self, video_reader, duration, indices, skip_offsets):
        frame_id_list = []
        for seg_ind in indices:
            offset = int(seg_ind)
            for i, _ in enumerate(range(0, self.skip_length, self.new_step)):
                frame_id = offset + skip_offsets[i] - 1 if offset + skip_offsets[i] <= duration else offset - 1
                frame_id_list.append(frame_id)
                if offset + self.new_step < duration:
                    offset += self.new_step
        video_data = video_reader.get_batch(frame_id_list).asnumpy()
        return [Image.fromarray(video_data[vid, :, :, :]).convert("RGB") for vid, _ in enumerate(frame_id_list)]


class NormalizedInWorker:
    """Our dataset with each clip's ImageNet normalisation done in the worker, as VideoMAE's pipeline does it."""

    def __init__(self, dataset: VideoMAEPretrainDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        items = self.dataset[index]
        for item in items if isinstance(items, list) else [items]:
            item["video"] = normalize_clip(item.pop("frames").permute(0, 3, 1, 2))
        return items


def clips_per_second(dataset, items: int, num_sample: int, calls_per_item: int) -> float:
    """Clips per second of ``dataset[i]`` over ``items`` items (after one untimed item); an item is
    ``calls_per_item`` calls and yields ``num_sample`` clips."""
    def load(i: int) -> None:
        for _ in range(calls_per_item):
            dataset[i % len(dataset)]

    load(0)
    start = time.perf_counter()
    for i in range(1, items + 1):
        load(i)
    return items * num_sample / (time.perf_counter() - start)


def synthetic_videos(folder: Path, options: argparse.Namespace) -> tuple[str, str, str]:
    """Write the synthetic set; returns (list file, video root, box dir of ground-truth box files)."""
    summary = synthetic.make_dataset(folder, options.num_videos, num_frames=options.video_frames,
                                     width=options.width, height=options.height, val_fraction=0, test_fraction=0)
    list_file = folder / "all.csv"
    list_file.write_text("".join(f"{i:06d}.mp4 {label}\n" for i, label in enumerate(summary["labels"])))
    return str(list_file), str(summary["video_dir"]), str(summary["box_dir"])


def run(options: argparse.Namespace, list_file: str, data_root: str, box_dir: str | None) -> list[list[str]]:
    """Every row's clips/s (median over rounds) and its speedup over the baseline at the same num_sample."""
    common = dict(num_frames=options.num_frames, sampling_rate=options.sampling_rate,
                  input_size=options.input_size, mask_ratio=options.mask_ratio)
    rows = []  # (pipeline, masking, num_sample, dataset, calls per item)
    for num_sample in options.num_sample:
        baseline = VideoMAEBaseline(list_file, data_root, **common)
        rows.append(("VideoMAE-style baseline", "tube", num_sample, baseline, num_sample))
        ours = VideoMAEPretrainDataset(list_file, data_root, None, mask_type="tube", num_sample=num_sample,
                                       seed=options.seed, **common)
        rows.append(("ours", "tube", num_sample, ours, 1))
        rows.append(("ours, normalised in the worker", "tube", num_sample, NormalizedInWorker(ours), 1))
        if box_dir:
            rows.append(("ours", "motion (box files)", num_sample,
                         VideoMAEPretrainDataset(list_file, data_root, box_dir, mask_type="motion",
                                                 num_sample=num_sample, seed=options.seed, **common), 1))
    random.seed(options.seed)
    np.random.seed(options.seed)
    rates = [[] for _ in rows]
    for _ in range(options.rounds):
        for k, (_, _, num_sample, dataset, calls) in enumerate(rows):
            rates[k].append(clips_per_second(dataset, options.items, num_sample, calls))
    medians = [statistics.median(r) for r in rates]
    baseline_rate = {n: rate for (name, _, n, _, _), rate in zip(rows, medians, strict=True)
                     if name == "VideoMAE-style baseline"}
    return [[name, masking, str(n), f"{rate:.2f}", f"{1000 / rate:.1f}", f"{rate / baseline_rate[n]:.2f}x"]
            for (name, masking, n, _, _), rate in zip(rows, medians, strict=True)]


def main() -> None:
    positive = utils.positive_int
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=None, help="VideoMAE list file (default: synthetic videos)")
    parser.add_argument("--data_root", default="", help="folder the list's video paths are relative to")
    parser.add_argument("--box_dir", default=None, help="box files for the motion-masking rows (with --data_path)")
    parser.add_argument("--num_videos", type=positive, default=4, help="synthetic videos")
    parser.add_argument("--video_frames", type=positive, default=32, help="frames per synthetic video")
    parser.add_argument("--width", type=positive, default=160, help="synthetic video width")
    parser.add_argument("--height", type=positive, default=120, help="synthetic video height")
    parser.add_argument("--num_frames", type=positive, default=16, help="frames per clip")
    parser.add_argument("--sampling_rate", type=positive, default=2, help="frame step (VideoMAE's SSV2 pretraining: 2)")
    parser.add_argument("--input_size", type=positive, default=224, help="clip side after the crop")
    parser.add_argument("--mask_ratio", type=float, default=0.9)
    parser.add_argument("--num_sample", type=positive, nargs="+", default=[1, 4], help="clips per decoded video")
    parser.add_argument("--items", type=positive, default=8, help="timed dataset items per row and round")
    parser.add_argument("--rounds", type=positive, default=5, help="rounds; each row reports its median round")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    if options.box_dir and not options.data_path:
        parser.error("--box_dir goes with --data_path (synthetic videos come with their own boxes)")
    if options.input_size % DEFAULT_PATCH_SIZE or options.num_frames % DEFAULT_TUBELET_SIZE:
        parser.error(f"clips of --num_frames {options.num_frames} x --input_size {options.input_size} do not split "
                     f"into tubelets of {DEFAULT_TUBELET_SIZE}x{DEFAULT_PATCH_SIZE}x{DEFAULT_PATCH_SIZE}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if options.data_path:
            list_file, data_root, box_dir = options.data_path, options.data_root, options.box_dir
            source = f"{list_file} ({len(read_video_list(list_file))} videos)"
        else:
            list_file, data_root, box_dir = synthetic_videos(Path(tmp), options)
            source = (f"{options.num_videos} synthetic videos, {options.width}x{options.height}, "
                      f"{options.video_frames} frames (mp4v), ground-truth box files")
        table = run(options, list_file, data_root, box_dir)

    print(f"pretraining data, one worker: {source}; clips of {options.num_frames} frames every "
          f"{options.sampling_rate}, {options.input_size}x{options.input_size}, mask ratio {options.mask_ratio}; "
          f"median of {options.rounds} rounds of {options.items} items")
    print("\n".join(environment_lines(torch.device("cpu"))) + f"; decord {decord.__version__}")
    print()
    print(markdown_table(["pipeline", "masking", "num_sample", "clips/s", "ms/clip", "speedup vs baseline"], table))


if __name__ == "__main__":
    main()

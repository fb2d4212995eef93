"""Codec motion vectors as flow (``--flow codec_mv``): the block vectors stored in the compressed video.

As in MGM (Fan et al., ICCV 2023), motion comes from the bitstream instead of an optical-flow solver: FFmpeg's
decoder exports each inter-coded block's vector (PyAV, ``flags2=+export_mvs``); the decoded pixels are never
converted or looked at. FFmpeg exports vectors from its MPEG-1/2/4 part 2, H.261/H.263-family and H.264 decoders
only: a video in another inter codec (HEVC, VP8/9, AV1, ...) is an error rather than silently "no motion".

Each block's displacement is painted into its w x h block of the frame (overlapping vectors, e.g. the two of a
bidirectional block, are averaged), and the field is area-resized to the working size with the vectors scaled to
working pixels. Convention (same as :mod:`.flow`): flow ``i`` is the forward motion from frame ``i`` to ``i + 1``,
taken from the vectors stored in frame ``i + 1``; there are ``T - 1`` flows for ``T`` frames.

* Past reference (``source < 0``): ``dst - src`` is the motion from the reference to this frame. Future reference
  (``source > 0``, B-frames): ``src - dst`` is the motion from this frame to the reference. Either is divided by
  the frame distance to that reference, giving motion per frame. FFmpeg exports only the direction (``source`` is
  always -1 or +1), so the distance is taken as the display-order distance to the nearest anchor (I/P) frame on
  that side, which is exact for codecs with one reference per direction (MPEG-1/2/4 part 2, H.263). In H.264 a
  block may use any of several references, including B-frames (B-pyramid), which the side data does not name;
  its magnitudes can then be off by an integer factor, while the sign stays right. Where the stream's sequence
  parameter set (in the mp4/mkv header) allows more than one reference per direction, as x264's defaults do, the
  first such file of a process is logged with the re-encode that makes the vectors exact (``H264_EXACT_REMEDY``).
* The vectors sit where the block is in frame ``i + 1``, so an object's flow is one frame's motion ahead of an
  optical flow indexed at frame ``i``.
* I-frames and frames without vectors (intra-only codecs such as MJPEG, all-I encodes) give zero flow: no motion
  is detected in them. So do MPEG-4 part 2 B-frames (FFmpeg exports their vectors as zeros) and the last frame
  of an MPEG-1/2 stream or of an MPEG-4 part 2 stream with B-frames (output at flush without vectors).
  Intra-coded blocks inside a predicted frame have no vector either; their motion is inpainted from the
  surrounding blocks (zero there would draw false motion boundaries under a moving camera).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import av
import cv2
import numpy as np

from .flow import FlowBackend, register_flow
from .video import VideoReadError

# FFmpeg decoders that export AV_FRAME_DATA_MOTION_VECTORS: the mpegvideo-based ones and H.264 (all but h263i,
# msmpeg4v1, mpegvideo and rv10/20 checked by encoding a clip with PyAV 18.1).
EXPORTING_DECODERS = frozenset({
    "mpeg1video", "mpeg2video", "mpegvideo", "mpeg4", "h261", "h263", "h263i", "flv", "msmpeg4v1", "msmpeg4v2",
    "msmpeg4", "wmv1", "wmv2", "rv10", "rv20", "h264",
})
_B_FRAME = int(av.video.frame.PictureType.B)
H264_EXACT_REMEDY = "ffmpeg -i IN -c:v libx264 -x264-params ref=1:b-pyramid=none OUT"
H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})  # chroma fields
log = logging.getLogger(__name__)
_multi_reference_logged = False  # the first file of a process is named, not every one of a dataset


class _BitReader:
    """Bits of an H.264 RBSP, most significant first, with the exp-Golomb codes of its syntax."""

    def __init__(self, data: bytes):
        self.data, self.position = data, 0

    def bit(self) -> int:
        value = self.data[self.position >> 3] >> (7 - (self.position & 7)) & 1  # IndexError past the end
        self.position += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


def h264_sequence_parameter_sets(extradata: bytes | None) -> list[bytes]:
    """The SPS NAL units of a stream's codec extradata: an avcC record (mp4, mkv) or Annex B start codes."""
    if not extradata:
        return []
    if extradata[0] == 1 and len(extradata) > 6:  # avcC: version 1, ..., numOfSequenceParameterSets at byte 5
        units, position = [], 6
        for _ in range(extradata[5] & 0x1F):
            length = int.from_bytes(extradata[position:position + 2], "big")
            units.append(extradata[position + 2:position + 2 + length])
            position += 2 + length
        return units
    units = extradata.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01")
    return [unit for unit in units if unit and unit[0] & 0x1F == 7]


def h264_max_reference_frames(sps: bytes) -> int:
    """``max_num_ref_frames`` of an SPS NAL unit (H.264 7.3.2.1.1: the fields before it are read past)."""
    bits = _BitReader(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))  # header byte; emulation prevention
    profile = bits.bits(8)
    bits.bits(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile in H264_HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format == 3:
            bits.bit()  # separate_colour_plane_flag
        bits.ue(), bits.ue(), bits.bit()  # bit depths, qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for index in range(12 if chroma_format == 3 else 8):
                if bits.bit():  # the list's delta_scale codes, until one makes next_scale 0
                    last = following = 8
                    for _ in range(16 if index < 6 else 64):
                        if following:
                            following = (last + bits.se() + 256) % 256
                        last = following or last
    bits.ue()  # log2_max_frame_num_minus4
    order_type = bits.ue()
    if order_type == 0:
        bits.ue()
    elif order_type == 1:
        bits.bit(), bits.se(), bits.se()
        for _ in range(bits.ue()):
            bits.se()
    return bits.ue()


def log_multiple_references(path: str, codec_context) -> None:
    """Log (once per process) an H.264 file whose SPS allows more than one reference frame per direction (one is
    taken by the B-frames' future anchor where there are B-frames): its vectors may point further back than the
    anchor that codec_mv divides by."""
    global _multi_reference_logged
    if _multi_reference_logged or codec_context.codec.name != "h264":
        return
    try:
        references = max(map(h264_max_reference_frames, h264_sequence_parameter_sets(codec_context.extradata)),
                         default=0)
    except (IndexError, ValueError):  # a truncated or odd SPS: the decoder reports real damage
        return
    per_direction = references - bool(codec_context.has_b_frames)
    if per_direction > 1:
        _multi_reference_logged = True
        log.warning("%s: H.264 with up to %d reference frames per direction: FFmpeg's motion vectors do not say "
                    "which one a block uses, so a vector from further back is taken as the motion from the nearest "
                    "anchor frame (up to %dx too large). Re-encode (%s) for exact motion; other such files of this "
                    "process are not named.", path, per_direction, per_direction, H264_EXACT_REMEDY)


def rasterise(vectors: np.ndarray | None, frame_size: tuple[int, int], out_size: tuple[int, int],
              past_distance: float = 1.0, future_distance: float = 1.0) -> np.ndarray:
    """Dense forward flow (out_h, out_w, 2), in output pixels, of one frame's ``MotionVectors.to_ndarray()``.

    ``past_distance``/``future_distance``: frames between this frame and its past/future reference. Blocks are
    painted on a grid of the largest cell dividing every block's size and position (8 px for FFmpeg's exports)
    with two-dimensional difference arrays, so there is no per-block loop.
    """
    frame_w, frame_h = frame_size
    out_w, out_h = out_size
    if vectors is None or len(vectors) == 0:
        return np.zeros((out_h, out_w, 2), np.float32)
    scale = np.maximum(vectors["motion_scale"], 1).astype(np.float32)
    # motion = src - dst; per frame forward motion is -motion / d for a past reference, +motion / d for a future.
    per_frame = np.where(vectors["source"] < 0, -1.0 / past_distance, 1.0 / future_distance).astype(np.float32)
    values = np.stack([vectors["motion_x"] / scale * per_frame, vectors["motion_y"] / scale * per_frame,
                       np.ones(len(vectors), np.float32)], axis=-1)
    w, h = vectors["w"].astype(np.int64), vectors["h"].astype(np.int64)
    x0 = np.clip(vectors["dst_x"] - w // 2, 0, frame_w)
    y0 = np.clip(vectors["dst_y"] - h // 2, 0, frame_h)
    x1, y1 = np.clip(x0 + w, 0, frame_w), np.clip(y0 + h, 0, frame_h)
    cell = int(np.gcd.reduce(np.concatenate([w, h, x0, y0, x1, y1, [frame_w, frame_h]])))
    cols, rows = -(-frame_w // cell), -(-frame_h // cell)
    diff = np.zeros((rows + 1, cols + 1, 3), np.float32)
    x0, x1, y0, y1 = x0 // cell, -(-x1 // cell), y0 // cell, -(-y1 // cell)
    for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        np.add.at(diff, (ys, xs), sign * values)
    sums = diff.cumsum(axis=0).cumsum(axis=1)[:rows, :cols]
    count = np.rint(sums[..., 2:])
    cells = np.divide(sums[..., :2], count, out=np.zeros_like(sums[..., :2]), where=count > 0)
    unknown = (count[..., 0] == 0).astype(np.uint8)
    if 0 < unknown.sum() < unknown.size:  # intra-coded blocks of a predicted frame: inpaint from the neighbours
        cells = np.dstack([cv2.inpaint(np.ascontiguousarray(cells[..., k]), unknown, 1, cv2.INPAINT_NS)
                           for k in (0, 1)])
    dense = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:frame_h, :frame_w]
    if (out_w, out_h) != (frame_w, frame_h):
        dense = cv2.resize(dense, (out_w, out_h), interpolation=cv2.INTER_AREA)
        dense *= np.array([out_w / frame_w, out_h / frame_h], np.float32)
    return np.ascontiguousarray(dense, dtype=np.float32)


def rotate_flow(flow: np.ndarray, quarter_turns: int) -> np.ndarray:
    """A flow field (h, w, 2) of the coded picture as shown after ``np.rot90(picture, quarter_turns)``: the field
    turned and its (u, v) vectors with it (x right, y down; a counter-clockwise quarter turn takes (u, v) to
    (v, -u))."""
    k = quarter_turns % 4
    if k == 0:
        return flow
    turned = np.rot90(flow, k)
    u, v = turned[..., 0], turned[..., 1]
    vectors = {1: (v, -u), 2: (-u, -v), 3: (-v, u)}[k]
    return np.ascontiguousarray(np.stack(vectors, axis=-1), dtype=np.float32)


def display_quarter_turns(rotation: float) -> int:
    """``np.rot90`` turns that show a coded picture as OpenCV and decord do, from PyAV's ``frame.rotation`` (the
    display matrix's angle: -90 for a picture shown turned clockwise)."""
    if rotation % 90:
        raise VideoReadError(f"display rotation {rotation} degrees is not a multiple of 90")
    return int(rotation // 90) % 4


def _decoded_vectors(path: str) -> Iterator[tuple[int, np.ndarray | None, tuple[int, int], int]]:
    """(picture type, vectors or None, coded (width, height), display quarter turns) of each frame in display order;
    errors -> VideoReadError."""
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"PyAV cannot open the file: {e}") from None
    with container:
        if not container.streams.video:
            raise VideoReadError("no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.codec
        if codec.name not in EXPORTING_DECODERS and not codec.intra_only:
            raise VideoReadError(f"codec {codec.name!r} exports no motion vectors (FFmpeg does for MPEG-1/2/4 "
                                 f"part 2, H.263 and H.264 only); use an optical-flow backend")
        log_multiple_references(path, stream.codec_context)
        stream.codec_context.options = {"flags2": "+export_mvs"}
        decoded = 0
        try:
            for frame in container.decode(stream):
                side = frame.side_data.get("MOTION_VECTORS")
                yield (int(frame.pict_type), None if side is None else side.to_ndarray(), (frame.width, frame.height),
                       display_quarter_turns(frame.rotation))
                decoded += 1
        except av.error.FFmpegError as e:
            raise VideoReadError(f"decoding failed after {decoded} frames: {e}") from None


def _with_reference_distances(frames, reference: str):
    """(vectors, size, turns, past distance, future distance or None) per frame in display order. A B-frame waits
    for the next anchor (I/P), which fixes its future distance; B-frames after the last anchor have none."""
    last_anchor, pending = None, []

    def past(index: int) -> int:
        return 1 if reference == "adjacent" or last_anchor is None else index - last_anchor

    for index, (kind, vectors, size, turns) in enumerate(frames):
        if kind == _B_FRAME:
            pending.append((index, vectors, size, turns))
            continue
        for i, v, s, t in pending:
            yield v, s, t, past(i), 1 if reference == "adjacent" else index - i
        yield vectors, size, turns, past(index), 1
        pending, last_anchor = [], index
    for i, v, s, t in pending:
        yield v, s, t, past(i), None


@register_flow("codec_mv")
class CodecMotionVectors(FlowBackend):
    """Motion vectors exported by the decoder (see the module docstring). It reads the file, not frame pairs:
    :class:`~.detect.MotionBoxDetector` calls :meth:`flows_from_video` for it.

    ``reference``: how far a vector's reference is taken to be: ``"anchor"`` (default), the nearest I/P frame on
    its side in display order; ``"adjacent"``, the neighbouring frame (what FFmpeg's ``source = +-1`` says).
    """

    REFERENCES = ("anchor", "adjacent")

    def __init__(self, reference: str = "anchor"):
        if reference not in self.REFERENCES:
            raise ValueError(f"unknown reference model {reference!r}; choose from {self.REFERENCES}")
        self.reference = reference

    def params(self) -> dict:
        return {"reference": self.reference}

    def pair(self, prev, nxt):
        raise TypeError("codec_mv reads motion vectors from the compressed file, not from decoded frames: "
                        "use MotionBoxDetector.detect_video or flows_from_video")

    def flows_from_video(self, path: str | os.PathLike, working_size: tuple[int, int], start: int = 0,
                         stop: int | None = None) -> Iterator[np.ndarray]:
        """Forward flow (h, w, 2) at ``working_size`` = (w, h) for each of the video's T - 1 frame pairs, in the
        picture as shown (a display rotation applied, as OpenCV and decord apply it to the frames); with ``start``
        and ``stop``, only pairs ``start .. stop - 1`` (decoding stops after them; earlier ones are not drawn)."""
        frames = _with_reference_distances(_decoded_vectors(os.fspath(path)), self.reference)
        next(frames, None)  # frame 0's vectors point before the clip; flow i comes from frame i + 1
        for pair, (vectors, size, turns, past, future) in enumerate(frames):
            if stop is not None and pair >= stop:
                return
            if pair < start:
                continue
            if vectors is not None and future is None:
                vectors = vectors[vectors["source"] < 0]
            coded_size = working_size[::-1] if turns % 2 else working_size
            yield rotate_flow(rasterise(vectors, size, coded_size, past, future or 1), turns)


def sampled_frame_motion(path: str | os.PathLike, frame_indices, working_size: tuple[int, int],
                         reference: str = "anchor") -> np.ndarray:
    """Forward motion (T - 1, h, w, 2) between consecutive sampled frames (``frame_indices``, ascending indices in
    the file) at ``working_size`` = (w, h): the codec flows of the frame pairs in between, summed at fixed pixels
    (MGM's accumulation of the vectors over the sampling interval). Repeated indices (a short video's last frame)
    give zero motion; pairs past the last one FFmpeg decodes add none. Errors: VideoReadError."""
    indices = np.asarray(frame_indices, dtype=np.int64)
    width, height = working_size
    motion = np.zeros((len(indices) - 1, height, width, 2), dtype=np.float32)
    first, last = int(indices[0]), int(indices[-1])
    if last > first:
        flows = CodecMotionVectors(reference).flows_from_video(path, working_size, first, last)
        for pair, flow in enumerate(flows, start=first):
            motion[np.searchsorted(indices, pair, side="right") - 1] += flow
    return motion

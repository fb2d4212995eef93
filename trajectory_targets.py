"""Motion-trajectory targets for masked tokens (M3Video / MME, Sun et al. 2023), computed in the data workers.

For every tubelet token, ``points_per_side``^2 points on a regular grid inside its patch (cell centres) are tracked
through the dense optical flow of the tubelet's time span at the full frame rate: a clip sampled every
``sampling_rate`` frames with tubelets of ``tubelet_size`` sampled frames spans ``steps = tubelet_size *
sampling_rate`` source frames per tubelet. Flow is sampled bilinearly at the point's current (sub-pixel)
position and chained step by step; a point is clipped to the frame (one that leaves it moves on along the edge,
with the flow there). A point's trajectory is its
move at each of those frame steps, ``P[k+1] - P[k]`` (M3Video's position features ``ΔP``, the release's
``traj_shape``).

Per patch, the moves are normalised (``norm``). ``mean`` (M3Video's): divided by the mean path length of the
patch's points (the target is the shape of the motion, not its speed), floored at ``min_motion`` pixels so the flow
noise of a static patch is not blown up to unit size. ``patch_std`` (the MME release's pretraining recipe): each
step's x and y standardised over the patch's points (unbiased std, floored at ``PATCH_STD_FLOOR`` pixels: a still or
rigidly moving patch's spread is only flow noise, which MME's whole-pixel int8 moves round to 0, and standardising
it would make unit-size noise). ``none``: pixels. The target of a token
is ``(points, steps, xy)`` flattened:
``points_per_side**2 * steps * 2`` values. The same tracks also give M3Video's shape features, the HOG of the cell
each point is in at every step (:func:`hog_targets.trajectory_hog_targets`).

The flow is computed on the augmented frames (after the crop and resize), so the trajectories are in the
coordinates of the clip the model sees; OpenCV's DIS (its medium preset, which estimates at half the resolution and
upsamples) costs a few ms per 224x224 frame pair on one core. The pretraining loss compares predictions and targets
on the masked tokens only. Scales: with ``mean`` a patch's moves sum to a unit path, so the mean square of its target
is at least ``1 / (2 * steps^2)`` for a moving patch (0.031 at 4 steps, reached at constant speed; up to ``steps``
times that for a stop-and-go patch), against about 1 for VideoMAE's normalised pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from hog_targets import check_hog, hog_dim, trajectory_hog_targets
from motion_detection.flow import create_flow

DEFAULT_MIN_MOTION = 1.0  # pixels; smaller mean path lengths are not scaled up
PATCH_STD_FLOOR = 0.5  # pixels; below MME's whole-pixel quantum, so flow noise stays small after patch_std
TRAJECTORY_NORMS = ("mean", "patch_std", "none")
# Frame-pair CPU flows for the data workers: codec_mv needs the compressed file, tvl1_torch a GPU (CUDA does not
# start in forked workers). tvl1 costs about 0.3 s per 224x224 pair: tens of seconds per clip.
TRAJECTORY_FLOWS = ("dis", "tvl1")


def worker_targets(targets, hog_sampling: str) -> tuple[str, ...]:
    """Which of the ``--target`` names ``targets`` the data workers compute (:class:`TrajectoryTargets`): the
    trajectories, and the HOG when ``--hog_sampling`` is ``trajectory`` (tubelet HOG comes from the training step)."""
    names = ("trajectory",) if "trajectory" in targets else ()
    return names + ("hog",) if "hog" in targets and hog_sampling == "trajectory" else names


def trajectory_dim(points_per_side: int, tubelet_size: int, sampling_rate: int) -> int:
    """Values per token: the (x, y) move of each point at each source frame step of the tubelet."""
    return points_per_side**2 * tubelet_size * sampling_rate * 2


def patch_grid_points(grid_hw: tuple[int, int], patch_size: int, points_per_side: int) -> np.ndarray:
    """(H' * W' * P, 2) starting (x, y) pixel positions: ``P = points_per_side^2`` cell centres per patch, patches
    in row-major order, points row-major inside the patch. Pixel (i, j) has its centre at x = j, y = i."""
    cell = patch_size / points_per_side
    offsets = (np.arange(points_per_side) + 0.5) * cell - 0.5
    ys = (np.arange(grid_hw[0])[:, None] * patch_size + offsets[None, :]).reshape(-1)  # (H' * p,)
    xs = (np.arange(grid_hw[1])[:, None] * patch_size + offsets[None, :]).reshape(-1)
    yy = ys.reshape(grid_hw[0], 1, points_per_side, 1)
    xx = xs.reshape(1, grid_hw[1], 1, points_per_side)
    yy, xx = np.broadcast_arrays(yy, xx)
    return np.stack([xx, yy], axis=-1).reshape(-1, 2).astype(np.float32)


def sample_flow(flow: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear (u, v) of ``flow`` (K, H, W, 2) at ``points`` (K, Q, 2): each of the K fields at its own points.
    Points outside the frame take the nearest border value."""
    k, height, width, _ = flow.shape
    x = np.clip(points[..., 0], 0, width - 1)
    y = np.clip(points[..., 1], 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2) if width > 1 else np.zeros_like(x, dtype=np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2) if height > 1 else np.zeros_like(y, dtype=np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    field = np.arange(k)[:, None]
    top = flow[field, y0, x0] * (1 - fx) + flow[field, y0, x1] * fx
    bottom = flow[field, y1, x0] * (1 - fx) + flow[field, y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def track_points(flows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Positions (K, S + 1, Q, 2) of K independent tracks: ``flows`` (K, S, H, W, 2) holds S consecutive flow
    fields per track, ``starts`` (K, Q, 2) the starting points. Positions are clipped to the frame: a point
    leaving it stops at the edge across it, and moves on along it with the flow there."""
    upper = np.array([flows.shape[3] - 1, flows.shape[2] - 1], dtype=np.float32)
    positions = [np.asarray(starts, dtype=np.float32)]
    for step in range(flows.shape[1]):
        positions.append(np.clip(positions[-1] + sample_flow(flows[:, step], positions[-1]), 0, upper))
    return np.stack(positions, axis=1)


def tubelet_tracks(flows: np.ndarray, grid_size: tuple[int, int, int], patch_size: int, tubelet_size: int,
                   sampling_rate: int, points_per_side: int = 2) -> np.ndarray:
    """Positions (T', steps + 1, H'W', points, 2) of every token's grid points, tracked through the dense flow
    ``flows`` (F, H, W, 2) between consecutive source frames of the clip, ``F >= T' * steps`` (``steps =
    tubelet_size * sampling_rate``): tubelet ``t`` tracks through flows ``t * steps`` to ``(t + 1) * steps - 1``."""
    frames, height, width = grid_size[0], grid_size[1] * patch_size, grid_size[2] * patch_size
    steps = tubelet_size * sampling_rate
    if flows.shape[0] < frames * steps or tuple(flows.shape[1:3]) != (height, width):
        raise ValueError(f"need at least {frames * steps} flow fields of {height}x{width} for {frames} tubelets of "
                         f"{steps} frame steps, got {tuple(flows.shape)}")
    starts = patch_grid_points(grid_size[1:], patch_size, points_per_side)
    per_tubelet = flows[: frames * steps].reshape(frames, steps, height, width, 2)
    tracks = track_points(per_tubelet, np.broadcast_to(starts, (frames, *starts.shape)))  # (T', S+1, Q, 2)
    return tracks.reshape(frames, steps + 1, grid_size[1] * grid_size[2], points_per_side**2, 2)


def trajectory_targets_from_tracks(tracks: np.ndarray, norm: str = "mean",
                                   min_motion: float = DEFAULT_MIN_MOTION) -> np.ndarray:
    """Targets (T' * H'W', points * steps * 2) in token order (t, h, w) from :func:`tubelet_tracks`; ``norm`` as in
    the module docstring."""
    check_norm(norm, tracks.shape[3])
    moves = np.diff(tracks, axis=1)  # (T', S, H'W', P, 2)
    if norm == "mean":
        path = np.linalg.norm(moves, axis=-1).sum(axis=1).mean(axis=-1)  # (T', H'W')
        moves = moves / np.maximum(path, min_motion)[:, None, :, None, None]
    elif norm == "patch_std":
        spread = np.maximum(moves.std(axis=3, ddof=1, keepdims=True), PATCH_STD_FLOOR)
        moves = (moves - moves.mean(axis=3, keepdims=True)) / spread
    targets = moves.transpose(0, 2, 3, 1, 4)  # (T', H'W', P, S, 2)
    return np.ascontiguousarray(targets.reshape(tracks.shape[0] * tracks.shape[2], -1), dtype=np.float32)


def trajectory_targets_from_flow(flows: np.ndarray, grid_size: tuple[int, int, int], patch_size: int,
                                 tubelet_size: int, sampling_rate: int, points_per_side: int = 2,
                                 norm: str = "mean", min_motion: float = DEFAULT_MIN_MOTION) -> np.ndarray:
    """Targets (T' * H' * W', dim) in token order (t, h, w) from the dense flow (see :func:`tubelet_tracks`)."""
    tracks = tubelet_tracks(flows, grid_size, patch_size, tubelet_size, sampling_rate, points_per_side)
    return trajectory_targets_from_tracks(tracks, norm, min_motion)


def check_norm(norm: str, points_per_patch: int) -> None:
    if norm not in TRAJECTORY_NORMS:
        raise ValueError(f"trajectory norm must be one of {TRAJECTORY_NORMS}, got {norm!r}")
    if norm == "patch_std" and points_per_patch < 2:
        raise ValueError("the patch_std trajectory norm needs at least 2 points per side: a std over one point")


class TrajectoryTargets:
    """Targets along the tracked points of an augmented dense clip, for the pretraining dataset.

    Call with the (F, 3, S, S) uint8 clip of ``T * sampling_rate + 1`` consecutive source frames after
    the crop (the sampled frames are every ``sampling_rate``-th of them); returns a dict of (N, dim) float32
    arrays, one per name in ``outputs``: ``trajectory`` (the normalised moves, float32) and ``hog`` (the HOG of the
    cell each point is in at every step, ``--hog_sampling trajectory``, float16; see :mod:`hog_targets`).
    """

    def __init__(self, grid_size: tuple[int, int, int], patch_size: int, tubelet_size: int, sampling_rate: int,
                 points_per_side: int = 2, flow: str = "dis", min_motion: float = DEFAULT_MIN_MOTION,
                 norm: str = "mean", outputs: tuple[str, ...] = ("trajectory",), hog_bins: int = 9,
                 hog_cell_size: int = 8, hog_norm: str = "l2"):
        if points_per_side < 1 or patch_size % points_per_side:
            raise ValueError(f"points_per_side must divide the patch size {patch_size}, got {points_per_side}")
        if not outputs or set(outputs) - {"trajectory", "hog"}:
            raise ValueError(f"outputs must be 'trajectory' and/or 'hog', got {outputs}")
        if "trajectory" in outputs:  # the HOG of the tracks does not normalise them
            check_norm(norm, points_per_side**2)
        self.norm, self.outputs = norm, tuple(outputs)
        self.grid_size, self.patch_size = tuple(grid_size), patch_size
        self.tubelet_size, self.sampling_rate = tubelet_size, sampling_rate
        self.points_per_side, self.flow_name, self.min_motion = points_per_side, flow, min_motion
        self.hog_bins, self.hog_cell_size, self.hog_norm = hog_bins, hog_cell_size, hog_norm
        if "hog" in self.outputs:
            check_hog(hog_bins, hog_cell_size, hog_norm, patch_size)
        steps = tubelet_size * sampling_rate
        dims = {"trajectory": lambda: trajectory_dim(points_per_side, tubelet_size, sampling_rate),
                "hog": lambda: hog_dim(patch_size, hog_bins, hog_cell_size, "trajectory", points_per_side, steps)}
        self.dims = {name: dims[name]() for name in self.outputs}
        if flow not in TRAJECTORY_FLOWS:
            raise ValueError(f"trajectory flow {flow!r} cannot run in the data workers; choose from {TRAJECTORY_FLOWS}")
        create_flow(flow)  # fails here, not in the workers, when OpenCV lacks it (tvl1 needs opencv-contrib)

    @property
    def num_source_frames(self) -> int:
        """Source frames the clip must hold: every step of every tubelet plus the last frame."""
        return self.grid_size[0] * self.tubelet_size * self.sampling_rate + 1

    def __call__(self, dense_clip) -> dict[str, np.ndarray]:
        frames = np.asarray(dense_clip)
        if frames.shape[0] < self.num_source_frames:
            raise ValueError(f"need {self.num_source_frames} source frames, got {frames.shape[0]}")
        if frames.dtype != np.uint8:
            frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
        grey = np.stack([cv2.cvtColor(np.ascontiguousarray(f.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
                         for f in frames[: self.num_source_frames]])
        flows = create_flow(self.flow_name)(grey[:-1], grey[1:])  # made per call: OpenCV objects do not pickle
        tracks = tubelet_tracks(flows, self.grid_size, self.patch_size, self.tubelet_size, self.sampling_rate,
                                self.points_per_side)
        targets = {}
        if "trajectory" in self.outputs:
            targets["trajectory"] = trajectory_targets_from_tracks(tracks, self.norm, self.min_motion)
        if "hog" in self.outputs:  # float16: half the bytes through the workers (L2-normalised values are at most 1)
            targets["hog"] = trajectory_hog_targets(frames, tracks, self.hog_bins, self.hog_cell_size,
                                                    self.hog_norm).astype(np.float16)
        return targets

    def __repr__(self) -> str:
        hog = (f", HOG {self.hog_bins} bins {self.hog_cell_size} px cells norm {self.hog_norm}"
               if "hog" in self.outputs else "")
        return (f"TrajectoryTargets({'+'.join(self.outputs)}: {self.points_per_side}x{self.points_per_side} points "
                f"per patch, {self.tubelet_size * self.sampling_rate} steps per tubelet, flow {self.flow_name}, "
                f"norm {self.norm}{hog})")

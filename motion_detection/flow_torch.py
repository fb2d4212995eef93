"""Batched TV-L1 optical flow in PyTorch (``--flow tvl1_torch``): OpenCV DualTVL1's model and parameters, on CUDA
or the CPU, every pair of a batch solved at once as (B, C, h, w) float32 tensors with grey levels in [0, 255].

The algorithm (Zach, Pock and Bischof 2007; Sánchez, Meinhardt-Llopis and Facciolo 2013, IPOL), with the names
of :class:`~motion_detection.flow.TVL1Params`:

1. Pyramid: up to ``scales`` levels, each the previous one resized bilinearly by ``scale_step`` (OpenCV's
   ``resize``, no anti-aliasing), none with a side under 16 pixels.
2. Coarse to fine from zero flow: the flow u of a level is upsampled bilinearly and divided by ``scale_step`` to
   start the next one; the dual variable p restarts at zero on every level.
3. ``warps`` times per level: warp I1 and its centred gradient (computed once per level) to x + u0 by bicubic
   interpolation (zero outside the image, positions to 1/32 pixel: OpenCV's ``remap``) and linearise the data
   term, rho(u) = I1(x + u0) + grad I1(x + u0) . (u - u0) - I0(x).
4. After each warp, up to ``outer_iterations`` rounds of: a ``median_filtering`` x ``median_filtering`` median
   filter of u (outlier removal, as in OpenCV), then up to ``inner_iterations`` of

   - thresholding: v = u + clamp(-rho(u) / |grad I1|^2, -lambda theta, lambda theta) grad I1,
   - primal step: u = v + theta div p,
   - dual step, per flow component: p = (p + tau/theta grad u) / (1 + tau/theta |grad u|),

   a pair stopping (until the next warp) as soon as one iteration changes its u by a mean square of at most
   ``epsilon``^2 (OpenCV's test). Gradients are forward differences and div their negative adjoint.

Batching does not change a pair's result: a pair that meets the stopping test leaves the working batch, so each
follows the iteration sequence it would follow alone and no per-pair Python loop is needed. On a GPU the test is
read on the host only every ``DEVICE_CHECK_EVERY`` iterations (each read waits for the device), and a pair that
stops in between is frozen by a mask until then, which gives the same flow up to float rounding.
``compile=True`` runs one iteration and the median filter through torch.compile, which fuses their dozens of
elementwise kernels into a few.

Each step follows OpenCV's CPU implementation (tvl1flow.cpp); the arithmetic is float32 torch, and bilinear and
bicubic samples come from torch's kernels, so the flow agrees with OpenCV's to about 0.015 px mean end-point error,
not bit for bit (BENCHMARKS.md). Revision 1 of this backend resized the pyramid the IPOL way (Gaussian
anti-aliasing), replicated the border and dropped the data term outside the image: slightly more accurate
(0.190 against OpenCV's 0.207 px on the tests' pairs), but 0.043 px away from OpenCV's flow, and its boxes
further from OpenCV's.
"""

from __future__ import annotations

import functools
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from .flow import FlowBackend, TVL1Params, register_flow

MIN_LEVEL_SIZE = 16  # OpenCV's: no pyramid level with a side under 16 pixels
REMAP_SUBPIXELS = 32  # OpenCV's remap resolves positions to 1/32 pixel (INTER_TAB_SIZE)
GRAD_EPSILON = float(np.finfo(np.float32).eps)  # |grad I1|^2 below this counts as no gradient
REVISION = 2  # bump when the numbers this backend produces change, so box files made before are recomputed
IMPLEMENTATION = f"torch float32 r{REVISION}"  # recorded in box files next to the TV-L1 parameters
DEVICE_CHECK_EVERY = 10  # on a GPU, iterations between host reads of the stopping test (each read is a sync)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pyramid_sizes(height: int, width: int, scales: int, scale_step: float) -> list[tuple[int, int]]:
    """(h, w) of each level, finest first; each level is the previous one times ``scale_step``, rounded, and none
    has a side under ``MIN_LEVEL_SIZE`` (OpenCV's rule)."""
    sizes = [(height, width)]
    while len(sizes) < scales:
        h, w = (max(1, round(s * scale_step)) for s in sizes[-1])
        if min(h, w) < MIN_LEVEL_SIZE:
            break
        sizes.append((h, w))
    return sizes


def downscale(images: torch.Tensor, size: tuple[int, int], scale_step: float) -> torch.Tensor:
    """One pyramid step as OpenCV's ``resize(fx=fy=scale_step, INTER_LINEAR)``: bilinear samples at
    (dst + 0.5) / scale_step - 0.5, the border replicated, without anti-aliasing."""
    h, w = images.shape[-2:]
    axes = [((torch.arange(n, dtype=images.dtype, device=images.device) + 0.5) / scale_step) * (2 / m) - 1
            for n, m in ((size[1], w), (size[0], h))]  # source positions, in grid_sample's [-1, 1] units
    grid = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1).expand(images.shape[0], -1, -1, -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def upscale_flow(flow: torch.Tensor, size: tuple[int, int], scale_step: float) -> torch.Tensor:
    """Bilinear upsampling of (B, 2, h, w) flow to ``size``, the vectors divided by ``scale_step`` (OpenCV's)."""
    return F.interpolate(flow, size=size, mode="bilinear", align_corners=False) / scale_step


def centred_gradient(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) -> (B, 2, h, w) holding (d/dx, d/dy) by central differences, edges replicated."""
    p = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return torch.cat([p[..., 1:-1, 2:] - p[..., 1:-1, :-2], p[..., 2:, 1:-1] - p[..., :-2, 1:-1]], 1) * 0.5


def forward_gradient(flow: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2, h, w) -> (B, 2, 2, h, w): forward differences along x (index 0 of dim 1) and y, zero on the last
    column / row (Neumann boundary). ``out``, when given, must hold zeros there; it is filled and returned (the
    CPU's eager iterations reuse one buffer; compiled ones leave the memory to the compiler)."""
    if out is None:
        dx = F.pad(flow[..., 1:] - flow[..., :-1], (0, 1))
        return torch.stack([dx, F.pad(flow[..., 1:, :] - flow[..., :-1, :], (0, 0, 0, 1))], 1)
    torch.sub(flow[..., 1:], flow[..., :-1], out=out[:, 0, ..., :-1])
    torch.sub(flow[..., 1:, :], flow[..., :-1, :], out=out[:, 1, ..., :-1, :])
    return out


def divergence(p: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2, h, w) -> (B, 2, h, w): backward differences, the negative adjoint of :func:`forward_gradient`
    for fields that are zero on the last column (x part) and row (y part), which the dual step keeps."""
    px, py = p[:, 0], p[:, 1]
    div = px + py
    div[..., 1:] -= px[..., :-1]
    div[..., 1:, :] -= py[..., :-1, :]
    return div


def _batcher_comparators(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sorting network on n (a power of two) wires: (i, j) puts min at i, max at j."""
    pairs, p = [], 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                pairs += [
                    (i + j, i + j + k) for i in range(min(k, n - j - k)) if (i + j) // (2 * p) == (i + j + k) // (2 * p)
                ]
            k //= 2
        p *= 2
    return pairs


MEDIAN_NETWORKS: dict[int, tuple[tuple[int, int, bool, bool], ...]] = {}  # median_network's, by m


def median_network(m: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """A selection network for the median (wire m // 2) of m values: Batcher's network for the next power of two
    (the missing wires act as +inf, so comparators touching them are dropped), pruned back from the median wire.
    Each entry (i, j, want_min, want_max) says which of min -> i and max -> j are still needed. Kept in
    ``MEDIAN_NETWORKS`` (a plain dict, which torch.compile reads without tracing the construction again)."""
    if m not in MEDIAN_NETWORKS:
        n = 1 << max(m - 1, 0).bit_length()
        needed, kept = {m // 2}, []
        for i, j in reversed([(i, j) for i, j in _batcher_comparators(n) if j < m]):
            if i in needed or j in needed:
                kept.append((i, j, i in needed, j in needed))
                needed |= {i, j}
        MEDIAN_NETWORKS[m] = tuple(reversed(kept))
    return MEDIAN_NETWORKS[m]


def median_filter(flow: torch.Tensor, size: int) -> torch.Tensor:
    """size x size median of each channel of (B, C, h, w), edges replicated (as OpenCV's medianBlur). A pruned
    sorting network of elementwise min/max over the size^2 shifted views (7 times faster on the CPU than
    torch.median over unfolded windows, with the same result)."""
    r = size // 2
    h, w = flow.shape[-2:]
    padded = F.pad(flow, (r, r, r, r), mode="replicate")
    wires = [padded[..., dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)]
    for i, j, want_min, want_max in median_network(size * size):
        a, b = wires[i], wires[j]
        if want_min:
            wires[i] = torch.minimum(a, b)
        if want_max:
            wires[j] = torch.maximum(a, b)
    return wires[size * size // 2]


def warp(images: torch.Tensor, flow: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Bicubic samples of (B, C, h, w) ``images`` at ``base + flow`` (pixel coordinates (x, y), (1 or B, 2, h, w)),
    as OpenCV's ``remap(INTER_CUBIC)``: zero outside the image (its default constant border), and positions
    rounded to 1/``REMAP_SUBPIXELS`` pixel (its fixed-point maps). The rounding also keeps the float error of
    grid_sample's coordinates off the border pixels, where a 1e-5 px offset would blend in the zero border."""
    h, w = flow.shape[-2:]
    pos = torch.round((base + flow) * REMAP_SUBPIXELS) / REMAP_SUBPIXELS
    # Python scalars: no host-to-device copy (and stream sync) per warp
    grid = torch.stack((pos[:, 0] * (2 / max(w - 1, 1)) - 1, pos[:, 1] * (2 / max(h - 1, 1)) - 1), dim=-1)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def primal_dual_step(u: torch.Tensor, p: torch.Tensor, grad_i1: torch.Tensor, rho_c: torch.Tensor,
                     neg_inv_norm: torch.Tensor, grad_u: torch.Tensor | None, active: torch.Tensor | None,
                     limit: float, taut: float, theta: float, epsilon_sq: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One inner iteration of step 4 on every pair of a batch: thresholding, primal and dual steps. Returns the new
    flow ``u`` (B, 2, h, w) and, per pair, whether it goes on iterating (its u changed by a mean square above
    ``epsilon_sq``); the dual variable ``p`` (B, 2, 2, h, w) is updated in place. Pairs not ``active`` (None: all
    are) keep their u and p and stop. ``grad_u``: a buffer for :func:`forward_gradient` (None: a new tensor). No
    host synchronisation, so that torch.compile can fuse it into a few kernels."""
    rho = torch.addcmul(rho_c, grad_i1[:, :1], u[:, :1]).addcmul_(grad_i1[:, 1:], u[:, 1:])
    new_u = torch.addcmul(u, grad_i1, rho.mul_(neg_inv_norm).clamp_(-limit, limit))  # v
    new_u.add_(divergence(p), alpha=theta)
    going_on = (new_u - u).square_().sum((1, 2, 3)) > epsilon_sq * u.shape[-2] * u.shape[-1]
    grad_u = forward_gradient(new_u, out=grad_u)
    norm = torch.hypot(grad_u[:, 0], grad_u[:, 1]).mul_(taut).add_(1).unsqueeze(1)
    if active is None:
        p.add_(grad_u, alpha=taut).div_(norm)
        return new_u, going_on
    p.copy_(torch.where(active.view(-1, 1, 1, 1, 1), torch.add(p, grad_u, alpha=taut).div_(norm), p))
    return torch.where(active.view(-1, 1, 1, 1), new_u, u), active & going_on


def masked_median(u: torch.Tensor, size: int, active: torch.Tensor | None) -> torch.Tensor:
    """The median filter of step 4 on the ``active`` pairs of (B, 2, h, w) flow (None: on all)."""
    filtered = median_filter(u, size)
    return filtered if active is None else torch.where(active.view(-1, 1, 1, 1), filtered, u)


@functools.cache
def compiled(function):
    """``function`` through torch.compile with dynamic shapes: one compilation serves most batch and level sizes
    (a batch of one pair, among a few special sizes, compiles once more)."""
    return torch.compile(function, dynamic=True)


def _iterate(u: torch.Tensor, p: torch.Tensor, grad_i1: torch.Tensor, rho_c: torch.Tensor, c: TVL1Params,
             check_every: int, compile: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 4 for one warp, updating the flow ``u`` (B, 2, h, w) and dual variable ``p`` (B, 2, 2, h, w) in place.
    ``grad_i1`` is the warped gradient (B, 2, h, w) and ``rho_c`` = rho(0) (B, 1, h, w).

    The stopping test is read on the host every ``check_every`` iterations: pairs that have stopped are written
    back and dropped from the working tensors then. With ``check_every`` 1 (the CPU, where reading it costs
    nothing) every pair left is still iterating; otherwise (a GPU, where each read waits for the device) a pair
    that stops in between is frozen by a mask until the next read, so it ends on the same iteration either way."""
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    step = compiled(primal_dual_step) if compile else primal_dual_step
    median = compiled(masked_median) if compile else masked_median
    if c.median_filtering > 1:
        median_network(c.median_filtering**2)  # in MEDIAN_NETWORKS before torch.compile first reads it
    constants = dict(limit=c.lambda_ * c.theta, taut=c.tau / c.theta, theta=c.theta, epsilon_sq=c.epsilon**2)
    neg_inv_norm = -1.0 / grad_i1.square().sum(1, keepdim=True).clamp_min(GRAD_EPSILON)
    index = torch.arange(u.shape[0], device=u.device)
    work_u, work_p = u, p.clone()
    grad_u = None if compile else u.new_zeros(u.shape[0], 2, *u.shape[1:])
    active = None if check_every == 1 else torch.ones_like(index, dtype=torch.bool)
    iteration = 0
    for _ in range(c.outer_iterations):
        if c.median_filtering > 1:
            work_u = median(work_u, c.median_filtering, active)
        for _ in range(c.inner_iterations):
            work_u, going_on = step(work_u, work_p, grad_i1, rho_c, neg_inv_norm, grad_u, active, **constants)
            if active is not None:
                active = going_on
            iteration += 1
            if iteration % check_every or bool(going_on.all()):
                continue
            done = ~going_on
            u[index[done]], p[index[done]] = work_u[done], work_p[done]
            if not bool(going_on.any()):
                return u, p
            index, work_u, work_p, grad_i1, rho_c, neg_inv_norm = (
                t[going_on] for t in (index, work_u, work_p, grad_i1, rho_c, neg_inv_norm))
            if grad_u is not None:
                grad_u = grad_u[going_on]
            if active is not None:
                active = torch.ones_like(index, dtype=torch.bool)
    u[index], p[index] = work_u, work_p
    return u, p


def solve_level(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, c: TVL1Params, check_every: int,
                compile: bool) -> torch.Tensor:
    """Steps 3-4 on one pyramid level: (B, 1, h, w) images and initial flow (B, 2, h, w) -> refined flow."""
    b, _, h, w = i0.shape
    i1_and_gradient = torch.cat([i1, centred_gradient(i1)], 1)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=u.dtype, device=u.device), torch.arange(w, dtype=u.dtype, device=u.device), indexing="ij"
    )
    base = torch.stack([xs, ys]).unsqueeze(0)
    p = u.new_zeros(b, 2, 2, h, w)
    for _ in range(c.warps):
        warped = warp(i1_and_gradient, u, base)
        grad_i1 = warped[:, 1:]
        rho_c = warped[:, :1] - (grad_i1 * u).sum(1, keepdim=True) - i0
        u, p = _iterate(u, p, grad_i1, rho_c, c, check_every, compile)
    return u


@torch.inference_mode()
def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor, config: TVL1Params | None = None, compile: bool = False,
              check_every: int | None = None) -> torch.Tensor:
    """TV-L1 flow of a batch: ``prev``/``nxt`` (B, 1, H, W) float grey levels in [0, 255] -> (B, 2, H, W) float32
    (u, v) with prev[y, x] ~ nxt[y + v, x + u]. ``compile``: the iterations through torch.compile (fused kernels,
    compiled with dynamic shapes on first use; the flow agrees with the eager one to float rounding, which can
    move a pair's stopping iteration). ``check_every``: iterations between reads of the stopping test on the host
    (default 1 on a CPU, ``DEVICE_CHECK_EVERY`` on a GPU); on a CPU the flow is the same to the bit for any value,
    on a GPU up to the rounding of the per-pair sum in the test, whose order can depend on the batch."""
    c = config or TVL1Params()
    if check_every is None:
        check_every = 1 if prev.device.type == "cpu" else DEVICE_CHECK_EVERY
    images = torch.cat([prev, nxt], 1).float()
    b, _, height, width = images.shape
    sizes = pyramid_sizes(height, width, c.scales, c.scale_step)
    levels = [images]
    for size in sizes[1:]:
        levels.append(downscale(levels[-1], size, c.scale_step))
    u = images.new_zeros(b, 2, *sizes[-1])
    for level in reversed(range(len(sizes))):
        if u.shape[-2:] != sizes[level]:
            u = upscale_flow(u, sizes[level], c.scale_step)
        u = solve_level(levels[level][:, :1], levels[level][:, 1:], u, c, check_every, compile)
    return u


@register_flow("tvl1_torch")
class TVL1TorchFlow(FlowBackend):
    """TV-L1 with OpenCV DualTVL1's parameters in batched PyTorch, on ``device`` (default: cuda when available,
    else cpu); ``compile``: the iterations through torch.compile (fused kernels, compiled on the first calls, about
    a minute; slower than eager on a CPU). The box-file record (``params()``) leaves out the device and
    ``compile``, so box files from a GPU and a CPU run count as made with the same settings. ``params()`` is
    accepted back as keyword arguments (to recompute a box file's maps); its ``implementation`` must then be this
    one, whose numbers it records."""

    def __init__(self, device: str | torch.device | None = None, implementation: str | None = None,
                 compile: bool = False, **overrides):
        if implementation not in (None, IMPLEMENTATION):
            raise ValueError(f"implementation {implementation!r} is not this one ({IMPLEMENTATION!r}), whose flow "
                             "differs: recompute the box file")
        self.config = TVL1Params(**overrides)
        c = self.config
        if c.scales < 1 or c.warps < 1 or c.inner_iterations < 1 or c.outer_iterations < 1:
            raise ValueError("scales, warps, inner_iterations and outer_iterations must be >= 1")
        if not 0 < c.scale_step < 1:
            raise ValueError(f"scale_step must be in (0, 1), got {c.scale_step}")
        if c.median_filtering > 1 and c.median_filtering % 2 == 0:
            raise ValueError(f"median_filtering must be odd (or <= 1 for none), got {c.median_filtering}")
        try:
            self.device = torch.device(device or default_device())
        except RuntimeError as e:
            raise ValueError(f"invalid device {device!r}: {e}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device} requested but CUDA is not available")
        self.compile = compile

    @property
    def on_accelerator(self) -> bool:
        """On a GPU the backend is fed from one process, frames decoded on a background thread while it works;
        on the CPU it is run like the OpenCV backends (one worker process per CPU, one torch thread each)."""
        return self.device.type != "cpu"

    def params(self) -> dict:
        return {**asdict(self.config), "implementation": IMPLEMENTATION}

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if prev.shape != nxt.shape or prev.ndim != 3 or prev.dtype != np.uint8 or nxt.dtype != np.uint8:
            raise ValueError(f"expected two uint8 (B, H, W) batches, got {prev.shape} {prev.dtype} and {nxt.shape}")
        pairs = torch.from_numpy(np.stack([prev, nxt], 1)).to(self.device).float()
        flow = tvl1_flow(pairs[:, :1], pairs[:, 1:], self.config, compile=self.compile)
        return flow.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def pair(self, prev, nxt):
        return self(prev[None], nxt[None])[0]

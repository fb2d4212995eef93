"""Dense optical-flow backends, selected by name (``--flow``).

A backend maps a batch of frame pairs to flow fields: ``backend(prev, nxt)`` with ``prev``/``nxt`` uint8
grayscale (B, H, W) returns float32 (B, H, W, 2) holding (u, v) = (dx, dy) in pixels, such that
``prev[y, x] ~ nxt[y + v, x + u]``. The batch interface lets GPU backends process many pairs at once;
the OpenCV backends loop. New backends register themselves with :func:`register_flow`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import cv2
import numpy as np

_BACKENDS: dict[str, type[FlowBackend]] = {}
# Backends in modules with heavy imports (torch), imported on first use so that the CLIs start quickly.
_LAZY_BACKENDS = {"tvl1_torch": ".flow_torch", "codec_mv": ".codec_mv"}  # imported on first use


def register_flow(name: str):
    def wrap(cls):
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return wrap


def available_flows() -> list[str]:
    return sorted({*_BACKENDS, *_LAZY_BACKENDS})


def create_flow(name: str, **kwargs) -> FlowBackend:
    if name not in _BACKENDS and name in _LAZY_BACKENDS:
        importlib.import_module(_LAZY_BACKENDS[name], __package__)
    if name not in _BACKENDS:
        raise ValueError(f"unknown flow backend {name!r}; available: {', '.join(available_flows())}")
    return _BACKENDS[name](**kwargs)


class FlowBackend(ABC):
    name = "base"

    def params(self) -> dict:
        """The parameters that determine the flow; recorded in every box file."""
        return {}

    @abstractmethod
    def pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Flow of one (H, W) uint8 pair."""

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if prev.shape != nxt.shape or prev.ndim != 3 or prev.dtype != np.uint8:
            raise ValueError(f"expected two uint8 (B, H, W) batches, got {prev.shape} {prev.dtype} and {nxt.shape}")
        return np.stack([self.pair(p, n) for p, n in zip(prev, nxt, strict=True)]).astype(np.float32, copy=False)


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV contrib's CPU DualTVL1 parameters, at its defaults. The MOFO release's flow came from denseflow, whose
    TV-L1 is OpenCV's CUDA ``cv::cuda::OpticalFlowDual_TVL1``: the same model and tau, lambda, theta, scales,
    warps, epsilon and scale_step, but one loop of up to 300 iterations per warp instead of 10 outer x 30 inner,
    and no median filtering (``median_filtering`` 5 here), so its flow is close to this one but not the same."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    scales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    median_filtering: int = 5


@register_flow("tvl1")
class TVL1Flow(FlowBackend):
    """TV-L1 (Zach et al. 2007), the paper's flow, via ``cv2.optflow`` (opencv-contrib)."""

    def __init__(self, **overrides):
        self.config = TVL1Params(**overrides)
        c = self.config
        self._impl = cv2.optflow.DualTVL1OpticalFlow_create(
            tau=c.tau, lambda_=c.lambda_, theta=c.theta, nscales=c.scales, warps=c.warps, epsilon=c.epsilon,
            innnerIterations=c.inner_iterations, outerIterations=c.outer_iterations, scaleStep=c.scale_step,
            medianFiltering=c.median_filtering,
        )

    def params(self) -> dict:
        return asdict(self.config)

    def pair(self, prev, nxt):
        return self._impl.calc(prev, nxt, None)


@register_flow("dis")
class DISFlow(FlowBackend):
    """OpenCV's Dense Inverse Search: about two orders of magnitude faster than TV-L1 on a CPU."""

    PRESETS = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }

    def __init__(self, preset: str = "medium"):
        if preset not in self.PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {sorted(self.PRESETS)}")
        self.preset = preset
        self._impl = cv2.DISOpticalFlow_create(self.PRESETS[preset])
        # OpenCV re-derives its pyramid from the width alone when the short side is below this (patch size at the
        # finest scale) and then reads outside the image: a segfault (e.g. a 56x14 frame with "medium").
        self.min_side = self._impl.getPatchSize() << self._impl.getFinestScale()

    def params(self) -> dict:
        return {"preset": self.preset}

    def pair(self, prev, nxt):
        if min(prev.shape[:2]) < self.min_side:
            raise ValueError(f"DIS ({self.preset}) needs frames of at least {self.min_side} pixels a side, got "
                             f"{prev.shape[1]}x{prev.shape[0]} (use --flow tvl1 for such small videos)")
        return self._impl.calc(prev, nxt, None)


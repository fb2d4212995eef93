"""Shared fixtures: synthetic clips rendered in memory by the project's dataset generator."""

import pytest
import torch

import make_synthetic_dataset as synthetic


@pytest.fixture(scope="session")
def synthetic_clip():
    """One 20-frame clip of an object moving right under a panning/zooming camera: (frames, gt boxes)."""
    return synthetic.render_clip(label=1, num_frames=20, seed=7, camera_motion=True)


@pytest.fixture(scope="session")
def synthetic_clips_moving_camera():
    """One clip per motion class, each under a moving camera."""
    return [
        synthetic.render_clip(label=label, num_frames=16, seed=1000 + label, camera_motion=True)
        for label in range(len(synthetic.CLASSES))
    ]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: intra-op threads only add contention on CI's 2 cores (data-loader workers run single-threaded
    too). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

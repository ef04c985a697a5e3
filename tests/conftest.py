"""Shared test set-up: one torch thread for the tiny models (thread start-up costs more than it saves on
2 cores), offline hub, non-interactive matplotlib. Integration tests with the real model raise it again."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TEST_DEVICE = torch.device(os.environ.get("ANYDEPTH_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    """Where the tests marked ``device`` run: ``ANYDEPTH_TEST_DEVICE`` (default cpu; scripts/gpu_check.py sets
    cuda). Those tests move their tiny model there and are written device-agnostic."""
    return TEST_DEVICE


@pytest.fixture(autouse=True)
def _threads_for_real_models(request):
    """Real-model tests (marked integration) get every core; everything else one thread."""
    if request.node.get_closest_marker("integration"):
        torch.set_num_threads(os.cpu_count() or 1)
        yield
        torch.set_num_threads(1)
    else:
        yield

"""Shared fixtures: tests run on every device present; CUDA ones skip with a reason elsewhere."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| over max |e|: the error relative to the tensor's scale."""
    scale = expected.detach().double().abs().max().clamp_min(1e-30)
    return ((actual.detach().double() - expected.detach().double()).abs().max() / scale).item()

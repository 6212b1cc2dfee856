"""Shared fixtures: tests run on every device present; CUDA ones skip with a reason elsewhere."""

import pytest
import torch

import lrfused
from helpers import twin_leaves

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def twin_params():
    """A factory of two identical lists of leaf params (ours, torch's), from a fixed seed."""

    def make(device, dtype=torch.float32, shapes=((37, 5), (1000,), (1,), (3, 1, 7)), seed=1234):
        return twin_leaves(shapes, dtype, seed, device)

    return make


@pytest.fixture
def twin_setup():
    """A factory of (ours, theirs, lrfused optimizer, torch optimizer): two param groups (the second
    with its own lr) on the same params, lr 1e-2."""

    def make(device, torch_optimizer=torch.optim.Adam, dtype=torch.float32, **opt_kwargs):
        torch.manual_seed(0)
        base = [torch.randn(40, 3, device=device, dtype=dtype), torch.randn(17, device=device, dtype=dtype)]
        ours = [p.clone().requires_grad_() for p in base]
        theirs = [p.clone().requires_grad_() for p in base]

        def groups(params):
            return [{"params": [params[0]]}, {"params": [params[1]], "lr": 3e-3}]

        opt_ours = lrfused.FusedScheduledAdam(groups(ours), lr=1e-2, **opt_kwargs)
        opt_theirs = torch_optimizer(groups(theirs), lr=1e-2, **opt_kwargs)
        return ours, theirs, opt_ours, opt_theirs

    return make


@pytest.fixture
def op_kwargs():
    """The keyword arguments of ``helpers.adam_step_one_bucket`` at torch's Adam defaults (a fresh dict)."""
    return dict(
        beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False, maximize=False
    )

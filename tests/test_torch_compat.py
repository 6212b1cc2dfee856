"""Each private part of torch that lrfused relies on (lrfused/_torch_compat.py), checked for the
behaviour lrfused expects of it on the torch installed, and the import-time refusal of a torch
that lacks one."""

import math
import re

import pytest
import torch
from torch.optim import lr_scheduler as T
from torch.optim import optimizer as optimizer_module

import lrfused
from lrfused import _torch_compat as compat


def sgd(groups=1):
    return torch.optim.SGD(
        [{"params": [torch.zeros(2, requires_grad=True)]} for _ in range(groups)], lr=0.1, momentum=0.9
    )


def test_every_hook_is_present_on_this_torch():
    assert compat.missing_hooks() == []


def test_a_missing_hook_refuses_the_import_naming_it_and_torchs_version(monkeypatch):
    hook = compat.HOOKS["LRScheduler._update_lr"]
    monkeypatch.setitem(compat.HOOKS, "LRScheduler._update_lr", hook._replace(present=lambda: False))
    expected = rf"torch {re.escape(torch.__version__)}: .*LRScheduler\._update_lr \(lrfused's schedulers override it"
    with pytest.raises(ImportError, match=expected):
        compat.check_hooks()


def test_step_calls_update_lr_once_per_step_with_its_epoch():
    calls = []

    class Recording(T.StepLR):
        def _update_lr(self, epoch=None):
            calls.append(epoch)
            super()._update_lr(epoch)

    scheduler = Recording(sgd(), step_size=2)
    scheduler.step()
    assert calls == [None, None]  # the constructor's step, then this one
    assert scheduler.last_epoch == 1


def test_is_initial_is_true_only_during_the_constructors_step():
    seen = []

    class Watching(T.LambdaLR):
        def get_lr(self):
            seen.append(compat.in_constructor_step(self))
            return super().get_lr()

    scheduler = Watching(sgd(), lambda t: 0.5**t)
    scheduler.step()
    assert seen == [True, False] and not compat.in_constructor_step(scheduler)


def test_last_lr_is_what_get_last_lr_returns():
    scheduler = T.StepLR(sgd(2), step_size=1)
    assert compat.last_lr(scheduler) == scheduler.get_last_lr()
    compat.set_last_lr(scheduler, [0.25, 0.5])
    assert scheduler.get_last_lr() == [0.25, 0.5]


def test_cyclic_scale_fn_is_the_users_function_or_none():
    def scale(x):
        return 1 / (x + 1)

    assert compat.cyclic_scale_fn(T.CyclicLR(sgd(), 0.01, 0.1, scale_fn=scale)) is scale
    assert compat.cyclic_scale_fn(T.CyclicLR(sgd(), 0.01, 0.1, mode="triangular2")) is None


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_one_cycle_phases_and_annealing(three_phase, anneal):
    scheduler = T.OneCycleLR(
        sgd(), 0.1, total_steps=100, pct_start=0.3, three_phase=three_phase, anneal_strategy=anneal
    )
    phases = compat.one_cycle_phases(scheduler)
    assert len(phases) == (3 if three_phase else 2)
    assert phases[0]["end_step"] == 0.3 * 100 - 1 and phases[-1]["end_step"] == 99
    assert compat.one_cycle_anneal(scheduler) == anneal
    assert compat.ONE_CYCLE_ANNEAL_KEY in scheduler.state_dict()


def test_sequential_children_and_milestones():
    optimizer = sgd()
    first, second = T.ConstantLR(optimizer, 0.5, total_iters=3), T.ExponentialLR(optimizer, 0.9)
    scheduler = T.SequentialLR(optimizer, [first, second], milestones=[3])
    assert compat.sequential_children(scheduler) == [first, second]
    assert list(compat.sequential_milestones(scheduler)) == [3]


def test_has_kernel_for_tells_the_backends_apart():
    if not lrfused.has_kernels():
        pytest.skip("the compiled library is not loaded")
    assert compat.has_kernel_for("lrfused::advance_lr_", "CPU")
    assert not compat.has_kernel_for("lrfused::advance_lr_", "MPS")
    assert compat.has_kernel_for("lrfused::advance_lr_", "CUDA") == lrfused.has_cuda_kernels()


@pytest.mark.parametrize("bad", [math.inf, math.nan, None])
def test_non_finite_check_finds_a_nan_or_an_infinity_and_unscales(bad):
    grads = [torch.tensor([2.0, 4.0]), torch.tensor([8.0])]
    if bad is not None:
        grads[1][0] = bad
    found = torch.zeros(1)
    compat.non_finite_check_and_unscale_(grads, found, torch.tensor([0.5]))
    assert float(found) == (0.0 if bad is None else 1.0)
    assert grads[0].tolist() == [1.0, 2.0]


def test_optimizer_wraps_step_through_profile_hook_step():
    """torch's Optimizer.__init__ wraps the class's step() with ``profile_hook_step``: lrfused's own
    wrapper is the one installed."""
    lrfused.FusedScheduledAdam([torch.zeros(1, requires_grad=True)])
    assert lrfused.FusedScheduledAdam.step.hooked
    assert lrfused.FusedScheduledAdam.step.__code__ is lrfused.FusedScheduledAdam.profile_hook_step(None).__code__


def test_step_hooks_are_listed_in_torchs_order():
    optimizer = sgd()
    order = []
    handles = [
        optimizer.register_step_pre_hook(lambda *a: order.append("own pre")),
        optimizer_module.register_optimizer_step_pre_hook(lambda *a: order.append("global pre")),
        optimizer.register_step_post_hook(lambda *a: order.append("own post")),
        optimizer_module.register_optimizer_step_post_hook(lambda *a: order.append("global post")),
    ]
    try:
        for hook in compat.optimizer_step_pre_hooks(optimizer) + compat.optimizer_step_post_hooks(optimizer):
            hook()
        optimizer.step()  # torch's own wrapper, the same order
    finally:
        for handle in handles:
            handle.remove()
    assert order == ["global pre", "own pre", "own post", "global post"] * 2
    assert compat.optimizer_step_pre_hooks(optimizer) == compat.optimizer_step_post_hooks(optimizer) == []


def test_record_function_labels_what_runs_inside_it():
    with torch.profiler.profile() as profiler:
        with compat.record_function("lrfused test label"):
            torch.zeros(1).add_(1)
    assert "lrfused test label" in [event.name for event in profiler.events()]


@pytest.mark.parametrize("mode", [True, False])
def test_set_grad_enabled_switches_grad_mode(mode):
    with torch.set_grad_enabled(not mode):
        compat.set_grad_enabled(mode)
        assert torch.is_grad_enabled() is mode

"""lrfused where torch's recipes put several writers on one optimizer: stacked schedulers, other
writers of group["lr"], param groups added later, wrappers, checkpoints. Each case runs the same
recipe on torch.optim.AdamW + torch's schedulers and on lrfused, on fresh random data."""

import copy
import gc
import inspect
import math
import pickle
import random
import warnings
import weakref

import pytest
import torch
from torch.optim import lr_scheduler as T
from torch.optim.swa_utils import SWALR

import lrfused
from lrfused import lr_scheduler as L
from lrfused.optim import binding_of
from helpers import assert_same_params, max_relative_error


def twins(seed: int, groups: int = 2):
    torch.manual_seed(seed)
    base = [torch.randn(6, 5) for _ in range(groups)]
    ours = [p.clone().requires_grad_() for p in base]
    theirs = [p.clone().requires_grad_() for p in base]
    lrs = [10 ** random.Random(seed + i).uniform(-3, -1) for i in range(groups)]
    opt_ours = lrfused.FusedScheduledAdamW([{"params": [p], "lr": lr} for p, lr in zip(ours, lrs)])
    opt_theirs = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(theirs, lrs)])
    return ours, theirs, opt_ours, opt_theirs


def optimizer_steps(ours, theirs, opt_ours, opt_theirs):
    for a, b in zip(ours, theirs):
        g = torch.randn_like(a)
        a.grad, b.grad = g.clone(), g.clone()
    opt_ours.step()
    opt_theirs.step()


def assert_same_lrs(opt_ours, opt_theirs, where=""):
    for index, (a, b) in enumerate(zip(opt_ours.param_groups, opt_theirs.param_groups)):
        assert math.isclose(float(a["lr"]), float(b["lr"]), rel_tol=1e-12, abs_tol=1e-300), (where, index)
    # What the next optimizer step reads: the device words, once it has taken in the host's writes.
    binding_of(opt_ours).absorb(opt_ours.param_groups)
    words = binding_of(opt_ours).lr_words().tolist()
    assert words == pytest.approx([float(g["lr"]) for g in opt_theirs.param_groups], rel=1e-12, abs=1e-300), where


def run_recipe(recipe, seed: int, steps: int):
    """``recipe(module, optimizer) -> step(i)``: builds schedulers and steps them at iteration i."""
    ours, theirs, opt_ours, opt_theirs = twins(seed)
    step_ours, step_theirs = recipe(L, opt_ours), recipe(T, opt_theirs)
    assert_same_lrs(opt_ours, opt_theirs, "after construction")
    for i in range(steps):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        step_ours(i)
        step_theirs(i)
        assert_same_lrs(opt_ours, opt_theirs, f"iteration {i}")
    assert_same_params(ours, theirs, tolerance=1e-6)
    return opt_ours


# --- 1. several schedulers on one optimizer -----------------------------------------------------


def _step_and_exponential(module, opt):
    a, b = module.StepLR(opt, step_size=3, gamma=0.5), module.ExponentialLR(opt, gamma=0.97)
    return lambda i: (a.step(), b.step())


def _per_iteration_and_per_epoch(module, opt):
    warmup, decay = module.LinearLR(opt, start_factor=0.1, total_iters=8), module.StepLR(opt, step_size=2, gamma=0.3)
    return lambda i: (warmup.step(), decay.step() if i % 5 == 4 else None)


def _cosine_then_cyclic(module, opt):
    cosine = module.CosineAnnealingLR(opt, T_max=7, eta_min=1e-4)
    cyclic = module.CyclicLR(opt, base_lr=1e-4, max_lr=1e-2, step_size_up=3, cycle_momentum=False)
    return lambda i: (cosine.step(), cyclic.step())


def _three_multiplicative(module, opt):
    a = module.MultiStepLR(opt, milestones=[2, 5, 5], gamma=0.5)
    b = module.PolynomialLR(opt, total_iters=12, power=1.5)
    c = module.ConstantLR(opt, factor=0.5, total_iters=4)
    return lambda i: (a.step(), b.step(), c.step())


def _sequential_under_exponential(module, opt):
    seq = module.SequentialLR(opt, [module.LinearLR(opt, start_factor=0.2, total_iters=4),
                                    module.CosineAnnealingLR(opt, T_max=9)], milestones=[4])
    exp = module.ExponentialLR(opt, gamma=0.98)
    return lambda i: (seq.step(), exp.step())


STACKS = {"StepLR+ExponentialLR": _step_and_exponential, "per iteration + per epoch": _per_iteration_and_per_epoch,
          "CosineAnnealingLR then CyclicLR": _cosine_then_cyclic, "three multiplicative": _three_multiplicative,
          "SequentialLR + ExponentialLR": _sequential_under_exponential}


@pytest.mark.parametrize("name", STACKS)
@pytest.mark.parametrize("seed", range(3))
def test_stacked_schedulers_compose_like_torch(name, seed):
    opt = run_recipe(STACKS[name], seed, 30)
    assert binding_of(opt).driven  # the stacked steps ran on the device


def test_warmup_per_iteration_with_plateau_per_epoch():
    ours, theirs, opt_ours, opt_theirs = twins(3)
    warm_ours, warm_theirs = L.LinearLR(opt_ours, 0.1, total_iters=10), T.LinearLR(opt_theirs, 0.1, total_iters=10)
    plat_ours = L.ReduceLROnPlateau(opt_ours, patience=1, factor=0.5)
    plat_theirs = T.ReduceLROnPlateau(opt_theirs, patience=1, factor=0.5)
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.7, 0.8, 0.9]
    for epoch, loss in enumerate(losses):
        for _ in range(3):
            optimizer_steps(ours, theirs, opt_ours, opt_theirs)
            warm_ours.step()
            warm_theirs.step()
        plat_ours.step(torch.tensor(loss))
        plat_theirs.step(loss)
        assert_same_lrs(opt_ours, opt_theirs, f"epoch {epoch}")
    assert_same_params(ours, theirs, tolerance=1e-6)


# --- 2. other writers: the last one wins ----------------------------------------------------------


def _hand_writes(module, opt):
    sched = module.StepLR(opt, step_size=2, gamma=0.5)

    def step(i):
        if i == 4:
            opt.param_groups[0]["lr"] = 0.05
        sched.step()
        if i == 9:
            opt.param_groups[1]["lr"] = 1e-4
    return step


def _stock_torch_scheduler_on_top(module, opt):
    ours = module.CosineAnnealingLR(opt, T_max=10)
    stock = T.ExponentialLR(opt, gamma=0.9)  # a torch class on whichever optimizer
    return lambda i: (ours.step(), stock.step())


def _swa_after_cosine(module, opt):
    cosine = module.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4)
    swa = {}

    def step(i):
        if i < 10:
            cosine.step()
            return
        if "s" not in swa:
            swa["s"] = SWALR(opt, swa_lr=5e-3, anneal_epochs=4, anneal_strategy="cos")
        swa["s"].step()
    return step


WRITERS = {"hand writes": _hand_writes, "stock torch scheduler": _stock_torch_scheduler_on_top,
           "SWALR after cosine": _swa_after_cosine}


@pytest.mark.parametrize("name", WRITERS)
def test_other_writers_win_like_torch(name):
    run_recipe(WRITERS[name], 11, 20)


def test_a_hand_write_is_applied_at_the_next_optimizer_step():
    ours, theirs, opt_ours, opt_theirs = twins(5)
    L.CosineAnnealingLR(opt_ours, T_max=10)
    T.CosineAnnealingLR(opt_theirs, T_max=10)
    for opt in (opt_ours, opt_theirs):
        opt.param_groups[1]["lr"] = 0.02
    optimizer_steps(ours, theirs, opt_ours, opt_theirs)
    assert_same_params(ours, theirs, tolerance=1e-6)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        opt_ours.param_groups[0]["lr"] = float("nan")
        opt_ours.step()


# --- 3. param groups added after a scheduler --------------------------------------------------------


def test_param_group_added_after_a_chainable_scheduler():
    ours, theirs, opt_ours, opt_theirs = twins(7, groups=1)
    s_ours, s_theirs = L.StepLR(opt_ours, step_size=2, gamma=0.5), T.StepLR(opt_theirs, step_size=2, gamma=0.5)
    optimizer_steps(ours, theirs, opt_ours, opt_theirs)
    s_ours.step()
    s_theirs.step()
    extra = torch.randn(4)
    extra_ours, extra_theirs = extra.clone().requires_grad_(), extra.clone().requires_grad_()
    opt_ours.add_param_group({"params": [extra_ours], "lr": 0.04})
    opt_theirs.add_param_group({"params": [extra_theirs], "lr": 0.04})
    ours.append(extra_ours)
    theirs.append(extra_theirs)
    seen = []
    for _ in range(5):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        assert_same_lrs(opt_ours, opt_theirs)
        seen.append(opt_ours.param_groups[1]["lr"])
    assert seen == pytest.approx([0.02, 0.02, 0.01, 0.01, 0.005])
    assert "initial_lr" not in opt_ours.param_groups[1] and len(s_ours.base_lrs) == 1
    assert_same_params(ours, theirs, tolerance=1e-6)


def test_param_group_added_after_a_closed_form_scheduler_raises_like_torch():
    _, _, opt_ours, opt_theirs = twins(8, groups=1)
    s_ours, s_theirs = L.LambdaLR(opt_ours, lambda t: 0.9 ** t), T.LambdaLR(opt_theirs, lambda t: 0.9 ** t)
    for opt in (opt_ours, opt_theirs):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    with pytest.raises(ValueError) as theirs_error:
        s_theirs.step()
    with pytest.raises(ValueError) as ours_error:
        s_ours.step()
    assert str(ours_error.value) == str(theirs_error.value)


# --- 4. ReduceLROnPlateau and checkpoints ---------------------------------------------------------------


def test_plateau_survives_the_optimizer_reloading_its_own_state():
    ours, theirs, opt_ours, opt_theirs = twins(9)
    plat_ours = L.ReduceLROnPlateau(opt_ours, patience=0, factor=0.5)
    plat_theirs = T.ReduceLROnPlateau(opt_theirs, patience=0, factor=0.5)
    history = []
    for epoch, loss in enumerate([1.0, 1.1, 1.2, 0.5, 0.6]):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        plat_ours.step(loss)
        plat_theirs.step(loss)
        # accelerate's AcceleratedOptimizer does exactly this on construction.
        opt_ours.load_state_dict(opt_ours.state_dict())
        history.append(opt_ours.param_groups[0]["lr"])
        assert_same_lrs(opt_ours, opt_theirs, f"epoch {epoch}")
    # What a logger kept at each step still holds that step's value.
    expected = [1.0, 0.5, 0.25, 0.25, 0.125]
    base = float(history[0])
    assert [float(h) / base for h in history] == pytest.approx(expected)
    assert_same_params(ours, theirs, tolerance=1e-6)


def test_plateau_loads_a_torch_state_dict():
    _, _, opt_ours, opt_theirs = twins(10)
    plat_theirs = T.ReduceLROnPlateau(opt_theirs, patience=2, cooldown=1)
    for loss in (1.0, 0.8, 0.9, 0.95):
        plat_theirs.step(loss)
    plat_ours = L.ReduceLROnPlateau(opt_ours, patience=2, cooldown=1)
    plat_ours.load_state_dict(plat_theirs.state_dict())
    assert plat_ours.get_last_lr() == plat_theirs.get_last_lr()
    assert float(plat_ours.best) == plat_theirs.best and int(plat_ours.num_bad_epochs) == plat_theirs.num_bad_epochs
    for loss in (0.97, 0.99, 1.0, 0.5):
        plat_ours.step(loss)
        plat_theirs.step(loss)
        assert [float(x) for x in plat_ours.get_last_lr()] == pytest.approx(plat_theirs.get_last_lr(), rel=1e-12)


# --- 5. wrapped optimizers ---------------------------------------------------------------------------------


class _Wrapper(torch.optim.Optimizer):
    """The shape of accelerate's AcceleratedOptimizer: a torch Optimizer holding the real one in
    ``.optimizer`` and sharing its param_groups."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.optimizer.load_state_dict(self.optimizer.state_dict())

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def defaults(self):
        return self.optimizer.defaults

    def step(self, closure=None):
        return self.optimizer.step(closure)


class _LightningStyleWrapper:
    """The shape of Lightning's LightningOptimizer: not an Optimizer, the real one in ``_optimizer``."""

    def __init__(self, optimizer):
        self._optimizer = optimizer


@pytest.mark.parametrize("wrap", [_Wrapper, _LightningStyleWrapper])
def test_scheduler_on_a_wrapped_optimizer_drives_the_inner_one(wrap):
    ours, theirs, opt_ours, opt_theirs = twins(12)
    sched = L.CosineAnnealingLR(wrap(opt_ours), T_max=5)
    reference = T.CosineAnnealingLR(opt_theirs, T_max=5)
    assert sched.optimizer is opt_ours
    for _ in range(6):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        sched.step()
        reference.step()
        assert_same_lrs(opt_ours, opt_theirs)


# --- 6. LambdaLR calls the function when torch does ------------------------------------------------------


def test_lambda_indexing_a_list_runs_its_length():
    values = [1.0, 0.5, 0.25, 0.125]
    _, _, opt, _ = twins(13, groups=1)
    sched = L.LambdaLR(opt, lambda t: values[t])
    for _ in range(3):
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(opt.param_groups[0]["initial_lr"] * 0.125)
    with pytest.raises(IndexError):
        sched.step()


def test_stateful_lambda_applies_at_the_step_torch_does():
    ours, theirs, opt_ours, opt_theirs = twins(14)
    scale = {"value": 1.0}
    s_ours = L.LambdaLR(opt_ours, lambda t: scale["value"] / (1 + t))
    s_theirs = T.LambdaLR(opt_theirs, lambda t: scale["value"] / (1 + t))
    calls = []
    for i in range(8):
        if i == 3:
            scale["value"] = 0.1
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        calls.append(s_ours.get_last_lr())
        assert_same_lrs(opt_ours, opt_theirs, f"step {i}")
    assert_same_params(ours, theirs, tolerance=1e-6)


# --- 7. fractional and explicit epochs, legacy state -------------------------------------------------------


def test_warm_restarts_fractional_epochs_as_documented_by_torch():
    ours, theirs, opt_ours, opt_theirs = twins(15)
    s_ours = L.CosineAnnealingWarmRestarts(opt_ours, T_0=2, T_mult=2, eta_min=1e-5)
    s_theirs = T.CosineAnnealingWarmRestarts(opt_theirs, T_0=2, T_mult=2, eta_min=1e-5)
    iters = 4
    for epoch in range(5):
        for i in range(iters):
            optimizer_steps(ours, theirs, opt_ours, opt_theirs)
            s_ours.step(epoch + i / iters)
            s_theirs.step(epoch + i / iters)
            assert_same_lrs(opt_ours, opt_theirs, (epoch, i))
    assert_same_params(ours, theirs, tolerance=1e-6)


def test_writes_to_t_cur_are_honoured():
    ours, theirs, opt_ours, opt_theirs = twins(16)
    s_ours = L.CosineAnnealingWarmRestarts(opt_ours, T_0=5)
    s_theirs = T.CosineAnnealingWarmRestarts(opt_theirs, T_0=5)
    for i in range(12):
        if i == 3:
            s_ours.T_cur = s_theirs.T_cur = 0
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        assert_same_lrs(opt_ours, opt_theirs, i)


@pytest.mark.parametrize("name,kwargs", [("StepLR", dict(step_size=3, gamma=0.5)), ("CosineAnnealingLR", dict(T_max=8)),
                                         ("ExponentialLR", dict(gamma=0.9)), ("LinearLR", dict(total_iters=6))])
def test_explicit_epochs_use_torchs_closed_form(name, kwargs):
    ours, theirs, opt_ours, opt_theirs = twins(17)
    s_ours, s_theirs = getattr(L, name)(opt_ours, **kwargs), getattr(T, name)(opt_theirs, **kwargs)
    for epoch in (1, 2, 5, 5, 3, 11, 2.5, 12):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        with pytest.warns(UserWarning):
            s_ours.step(epoch)
        with pytest.warns(UserWarning):
            s_theirs.step(epoch)
        assert_same_lrs(opt_ours, opt_theirs, epoch)
    s_ours.step()
    s_theirs.step()
    assert_same_lrs(opt_ours, opt_theirs, "after")


def test_chained_child_last_lr_before_the_first_step():
    _, _, opt_ours, opt_theirs = twins(18)
    chain_ours = L.ChainedScheduler([L.ConstantLR(opt_ours, factor=0.5), L.ExponentialLR(opt_ours, gamma=0.9)])
    chain_theirs = T.ChainedScheduler([T.ConstantLR(opt_theirs, factor=0.5), T.ExponentialLR(opt_theirs, gamma=0.9)])
    for a, b in zip(chain_ours._schedulers, chain_theirs._schedulers):
        assert a.get_last_lr() == b.get_last_lr()
    assert chain_ours.get_last_lr() == chain_theirs.get_last_lr()


def test_legacy_one_cycle_state_dict_loads():
    _, _, opt, _ = twins(19)
    sched = L.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    state.pop("_anneal_func_type")
    state["anneal_func"] = T.OneCycleLR._annealing_cos
    _, _, opt2, _ = twins(19)
    fresh = L.OneCycleLR(opt2, max_lr=0.1, total_steps=20)
    fresh.load_state_dict(state)
    assert fresh._anneal_func_type == "cos" and fresh.last_epoch == 5


# --- 8. constructor arguments ---------------------------------------------------------------------------


def test_torchs_signature_is_accepted():
    p = torch.zeros(3, requires_grad=True)
    for cls, theirs in ((lrfused.FusedScheduledAdam, torch.optim.Adam), (lrfused.FusedScheduledAdamW, torch.optim.AdamW)):
        opt = cls([p], 1e-3, (0.9, 0.99), 1e-8, 0.01, True, foreach=False, maximize=False, capturable=True, fused=True)
        assert opt.param_groups[0]["amsgrad"] is True
        reference = theirs([p], 1e-3, (0.9, 0.99), 1e-8, 0.01, True)
        assert set(reference.param_groups[0]) <= set(opt.param_groups[0])
    with pytest.raises(ValueError, match="differentiable=True"):
        lrfused.FusedScheduledAdam([p], differentiable=True)


@pytest.mark.parametrize("name", L.__all__)
def test_scheduler_has_torchs_constructor_and_docstring(name):
    ours, theirs = getattr(L, name), getattr(T, name)
    # the constructor is written out with torch's parameters, names, order and defaults (lrfused's
    # only additions, CyclicLR's ``horizon`` and ReduceLROnPlateau's ``sync_free``, are keyword-only)
    mine = [p for p in inspect.signature(ours.__init__).parameters.values()
            if not (p.name in ("horizon", "sync_free") and p.kind == p.KEYWORD_ONLY)]
    assert [(p.name, p.default, p.kind) for p in mine] == [
        (p.name, p.default, p.kind) for p in inspect.signature(theirs.__init__).parameters.values()]
    # help() shows torch's documentation, then lrfused's note
    torch_doc, note = ours.__doc__.split("\nNote (lrfused):\n")
    assert torch_doc.strip() == inspect.cleandoc(theirs.__doc__)
    assert note.strip()


def test_tensor_betas_and_momentums():
    ours, theirs, opt_ours, opt_theirs = twins(20)
    for opt in (opt_ours, opt_theirs):
        opt.param_groups[0]["betas"] = (0.9, 0.999)
    betas = (torch.tensor(0.85), torch.tensor(0.99))
    opt = lrfused.FusedScheduledAdamW([torch.zeros(2, requires_grad=True)], betas=betas)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.85, 0.99))
    s_ours = L.OneCycleLR(opt_ours, max_lr=0.05, total_steps=10, base_momentum=torch.tensor(0.8),
                          max_momentum=torch.tensor(0.9))
    s_theirs = T.OneCycleLR(opt_theirs, max_lr=0.05, total_steps=10, base_momentum=torch.tensor(0.8),
                            max_momentum=torch.tensor(0.9))
    for _ in range(9):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        assert_same_lrs(opt_ours, opt_theirs)
    assert_same_params(ours, theirs, tolerance=1e-6)


# --- 9. schedule= and the lr it applies ------------------------------------------------------------------


def test_schedule_refuses_a_scheduler_and_reports_its_lr():
    p = torch.zeros(3, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([p], lr=0.1, schedule=lrfused.schedules.exponential_decay(0.5))
    with pytest.raises(ValueError, match="either schedule= or a scheduler"):
        L.StepLR(opt, step_size=2)
    assert opt.param_groups[0]["lr"] == 0.1 and "initial_lr" not in opt.param_groups[0]
    for expected in (0.1, 0.05, 0.025):
        assert opt.scheduled_lr() == pytest.approx(expected)
        p.grad = torch.ones(3)
        opt.step()


def test_a_stock_scheduler_on_schedule_warns_that_the_lrs_multiply():
    p = torch.zeros(3, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([p], lr=0.1, schedule=lrfused.schedules.exponential_decay(0.5))
    stock = T.LambdaLR(opt, lambda t: 1.0 / (t + 1))  # what a framework builds on any optimizer
    p.grad = torch.ones(3)
    with pytest.warns(UserWarning, match=r"product of both"):
        opt.step()
    stock.step()
    assert opt.scheduled_lr() == pytest.approx(0.1 / 2 * 0.5)  # the product, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # once only


# --- 10. no reference cycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [lambda o: L.StepLR(o, 3), lambda o: L.ReduceLROnPlateau(o),
                                   lambda o: L.SequentialLR(o, [L.ConstantLR(o), L.ExponentialLR(o, 0.9)], [2])])
def test_deleting_a_scheduler_frees_it_without_the_collector(build):
    ours, _, opt, _ = twins(21)
    sched = build(opt)
    for p in ours:
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step(1.0) if isinstance(sched, L.ReduceLROnPlateau) else sched.step()
    gc.disable()
    try:
        ref = weakref.ref(sched)
        del sched
        assert ref() is None
    finally:
        gc.enable()
    opt.step()  # the optimizer goes on with the lr it was left


def test_optimizer_with_a_scheduler_deep_copies_and_pickles():
    ours, _, opt, _ = twins(22)
    sched = L.CosineAnnealingLR(opt, T_max=4)
    for p in ours:
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert binding_of(clone).lr_words().tolist() == binding_of(opt).lr_words().tolist()


# --- the scheduler objects themselves ------------------------------------------------------------


_EVERY_CLASS = {
    "LambdaLR": lambda S, opt: S.LambdaLR(opt, lambda t: 0.9 ** t),
    "MultiplicativeLR": lambda S, opt: S.MultiplicativeLR(opt, lambda t: 0.95),
    "StepLR": lambda S, opt: S.StepLR(opt, step_size=2),
    "MultiStepLR": lambda S, opt: S.MultiStepLR(opt, milestones=[2, 4]),
    "ConstantLR": lambda S, opt: S.ConstantLR(opt),
    "LinearLR": lambda S, opt: S.LinearLR(opt),
    "ExponentialLR": lambda S, opt: S.ExponentialLR(opt, 0.9),
    "PolynomialLR": lambda S, opt: S.PolynomialLR(opt),
    "CosineAnnealingLR": lambda S, opt: S.CosineAnnealingLR(opt, T_max=5),
    "CosineAnnealingWarmRestarts": lambda S, opt: S.CosineAnnealingWarmRestarts(opt, T_0=3),
    "CyclicLR": lambda S, opt: S.CyclicLR(opt, 0.001, 0.01, step_size_up=2),
    "OneCycleLR": lambda S, opt: S.OneCycleLR(opt, max_lr=0.05, total_steps=20),
    "SequentialLR": lambda S, opt: S.SequentialLR(opt, [S.ConstantLR(opt), S.ExponentialLR(opt, 0.9)], [2]),
    "ChainedScheduler": lambda S, opt: S.ChainedScheduler([S.ConstantLR(opt), S.ExponentialLR(opt, 0.9)]),
}


@pytest.mark.parametrize("name", sorted(_EVERY_CLASS))
def test_attributes_and_state_dict_are_torchs(name):
    """Code that reads a scheduler's attributes or compares state dicts (torch's own tests,
    checkpoint tools) sees torch's: lrfused keeps its device state outside the instance."""
    ours, theirs, opt_ours, opt_theirs = twins(31)
    sched_ours, sched_theirs = _EVERY_CLASS[name](L, opt_ours), _EVERY_CLASS[name](T, opt_theirs)
    for _ in range(5):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        sched_ours.step()
        sched_theirs.step()
    assert sched_ours.__dict__.keys() == sched_theirs.__dict__.keys()
    assert sched_ours.state_dict().keys() == sched_theirs.state_dict().keys()
    copy_ours = _EVERY_CLASS[name](L, opt_ours)
    copy_ours.load_state_dict(sched_ours.state_dict())
    assert getattr(copy_ours, "last_epoch", None) == getattr(sched_ours, "last_epoch", None)
    assert copy_ours.get_last_lr() == pytest.approx(sched_ours.get_last_lr(), rel=1e-12)


def test_plateau_with_number_metrics_is_torchs_exactly():
    """A Python number metric: torch's host step, float lrs, torch's state dict and its errors
    at the step where torch raises them; a tensor metric then moves the state to the device."""
    ours, theirs, opt_ours, opt_theirs = twins(32)
    plat_ours = L.ReduceLROnPlateau(opt_ours, patience=0, min_lr=[1e-5, 1e-4])
    plat_theirs = T.ReduceLROnPlateau(opt_theirs, patience=0, min_lr=[1e-5, 1e-4])
    for metric in (1.0, 0.5, 0.7, 0.9):
        optimizer_steps(ours, theirs, opt_ours, opt_theirs)
        plat_ours.step(metric)
        plat_theirs.step(metric)
        assert [type(g["lr"]) for g in opt_ours.param_groups] == [float, float]
        assert plat_ours.state_dict() == plat_theirs.state_dict()
        assert_same_lrs(opt_ours, opt_theirs)
    assert_same_params(ours, theirs, tolerance=1e-6)
    # torch raises about min_lrs only when a reduction needs them: so does lrfused.
    for opt in (opt_ours, opt_theirs):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": 0.05})
    plat_ours.step(0.1)
    plat_theirs.step(0.1)
    with pytest.raises(RuntimeError, match="The number of param groups"):
        plat_theirs.step(0.3)
    with pytest.raises(RuntimeError, match="The number of param groups"):
        plat_ours.step(0.3)
    plat_ours.min_lrs.append(1e-6)
    plat_theirs.min_lrs.append(1e-6)
    # A CPU tensor metric (Lightning's) costs nothing to read: torch's step, float lrs.
    plat_ours.step(torch.tensor(0.4))
    plat_theirs.step(torch.tensor(0.4))
    assert plat_ours.state_dict() == plat_theirs.state_dict()
    assert [type(g["lr"]) for g in opt_ours.param_groups] == [float] * 3
    assert_same_lrs(opt_ours, opt_theirs)

"""Every lrfused.lr_scheduler class against torch's: step by step on random configurations, stacked
and mixed with other writers of the lr, checkpoints, explicit epochs, refusals."""

import copy
import gc
import inspect
import io
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
from helpers import (
    assert_same_params,
    assert_unchanged,
    max_relative_error,
    raised,
    same_outcome,
    snapshot,
    step_both,
    step_twins,
    twin_leaves,
)
from lrfused import lr_scheduler as L
from lrfused.lr_scheduler import _device
from lrfused.lr_scheduler._device import device_side
from lrfused.optim import binding_of

warnings.filterwarnings("ignore", category=UserWarning, module="torch.optim.lr_scheduler")


def make_config(name: str, rng: random.Random):
    """Random constructor kwargs for one scheduler class; same for torch and lrfused."""
    g = rng
    if name == "StepLR":
        return dict(step_size=g.randint(1, 9), gamma=g.uniform(0.1, 0.99))
    if name == "MultiStepLR":
        ms = sorted(g.randint(0, 40) for _ in range(g.randint(1, 5)))
        return dict(milestones=ms + ms[:1], gamma=g.uniform(0.1, 0.9))  # a duplicate milestone
    if name == "ConstantLR":
        return dict(factor=g.uniform(0.05, 1.0), total_iters=g.randint(0, 20))
    if name == "LinearLR":
        return dict(start_factor=g.uniform(0.01, 1.0), end_factor=g.uniform(0.0, 1.0), total_iters=g.randint(1, 30))
    if name == "ExponentialLR":
        return dict(gamma=g.uniform(0.9, 0.999))
    if name == "PolynomialLR":
        return dict(total_iters=g.randint(1, 60), power=g.uniform(0.5, 3.0))
    if name == "CosineAnnealingLR":  # T_max shorter than the run: periodic past it, like torch
        return dict(T_max=g.randint(1, 40), eta_min=g.choice([0.0, g.uniform(1e-5, 1e-3)]))
    if name == "CosineAnnealingWarmRestarts":
        return dict(T_0=g.randint(1, 10), T_mult=g.randint(1, 3), eta_min=g.uniform(0, 1e-4))
    if name == "CyclicLR":
        mode = g.choice(["triangular", "triangular2", "exp_range"])
        return dict(
            base_lr=[g.uniform(1e-4, 1e-3), g.uniform(1e-4, 1e-3)],
            max_lr=g.uniform(2e-3, 1e-2),
            step_size_up=g.randint(1, 15),
            step_size_down=g.choice([None, g.randint(1, 15)]),
            mode=mode,
            gamma=g.uniform(0.9, 1.0),
            base_momentum=g.uniform(0.7, 0.85),
            max_momentum=g.uniform(0.86, 0.95),
        )
    if name == "OneCycleLR":
        return dict(
            max_lr=[g.uniform(1e-3, 1e-1), g.uniform(1e-3, 1e-1)],
            total_steps=g.randint(130, 200),
            pct_start=g.uniform(0.1, 0.5),
            anneal_strategy=g.choice(["cos", "linear"]),
            three_phase=g.choice([False, True]),
            div_factor=g.uniform(5, 30),
            final_div_factor=g.uniform(10, 1e4),
        )
    if name == "LambdaLR":
        k = g.uniform(0.001, 0.1)
        return dict(lr_lambda=lambda t: 1.0 / (1.0 + k * t))
    if name == "MultiplicativeLR":
        k = g.uniform(0.95, 0.999)
        return dict(lr_lambda=lambda t: k if t % 3 else 1.0)
    raise KeyError(name)


CLASSES = [
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "LambdaLR",
    "MultiplicativeLR",
]


def assert_same_trajectory(
    ours, theirs, opt_ours, opt_theirs, sched_ours, sched_theirs, steps, step_args=(), tolerance=1e-6
):
    for step in range(steps):
        for a, b in zip(opt_ours.param_groups, opt_theirs.param_groups):
            assert math.isclose(a["lr"], b["lr"], rel_tol=1e-9, abs_tol=1e-15), (step, a["lr"], b["lr"])
            assert a["betas"] == b["betas"], (step, a["betas"], b["betas"])
        assert sched_ours.get_last_lr() == pytest.approx(sched_theirs.get_last_lr(), rel=1e-9, abs=1e-15)
        step_twins(ours, theirs, opt_ours, opt_theirs)
        sched_ours.step(*step_args)
        sched_theirs.step(*step_args)
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < tolerance


@pytest.mark.parametrize("name", CLASSES)
def test_float64_params_match_torch_at_1e_12(device, name, twin_setup):
    # float64 params are updated in float64 opmath, as torch's Adam updates them: with every
    # scheduler the trajectories agree to the last few bits.
    config = make_config(name, random.Random(f"{name}-float64"))
    ours, theirs, opt_ours, opt_theirs = twin_setup(
        device, dtype=torch.float64, weight_decay=0.1, decoupled_weight_decay=True
    )
    assert_same_trajectory(
        ours,
        theirs,
        opt_ours,
        opt_theirs,
        getattr(L, name)(opt_ours, **config),
        getattr(T, name)(opt_theirs, **config),
        60,
        tolerance=1e-12,
    )
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.float64
        assert max_relative_error(a, b) < 1e-12, name
        assert max_relative_error(opt_ours.state[a]["exp_avg"], opt_theirs.state[b]["exp_avg"]) < 1e-12, name


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("seed", range(4))
def test_matches_torch(device, name, seed, twin_setup):
    config = make_config(name, random.Random(f"{name}-{seed}"))
    ours, theirs, opt_ours, opt_theirs = twin_setup(device)
    sched_ours = getattr(L, name)(opt_ours, **config)
    sched_theirs = getattr(T, name)(opt_theirs, **config)
    assert isinstance(sched_ours, T.LRScheduler) and isinstance(sched_ours, getattr(T, name))
    steps = config.get("total_steps", 121)
    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, sched_ours, sched_theirs, min(steps, 121))


@pytest.mark.parametrize("seed", range(4))
def test_sequential_warmup_then_anything(device, seed, twin_setup):
    rng = random.Random(seed)
    follower = rng.choice(["StepLR", "ExponentialLR", "CosineAnnealingLR", "PolynomialLR", "MultiStepLR"])
    config = make_config(follower, rng)
    warmup = rng.randint(1, 20)
    ours, theirs, opt_ours, opt_theirs = twin_setup(device)

    def build(module, opt):
        children = [
            module.LinearLR(opt, start_factor=0.01, total_iters=warmup),
            getattr(module, follower)(opt, **config),
        ]
        return module.SequentialLR(opt, children, milestones=[warmup])

    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, build(L, opt_ours), build(T, opt_theirs), 110)


@pytest.mark.parametrize("seed", range(4))
def test_chained_scheduler_including_cosine_with_eta_min(device, seed, twin_setup):
    rng = random.Random(100 + seed)
    names = rng.sample(["StepLR", "ExponentialLR", "ConstantLR", "LinearLR", "CosineAnnealingLR"], 2)
    names = names if "CosineAnnealingLR" in names else names + ["CosineAnnealingLR"]
    configs = [make_config(n, rng) for n in names]
    configs[names.index("CosineAnnealingLR")]["eta_min"] = 1e-4  # makes torch's chain affine, not a product
    ours, theirs, opt_ours, opt_theirs = twin_setup(device)
    build = lambda module, opt: module.ChainedScheduler(  # noqa: E731
        [getattr(module, n)(opt, **c) for n, c in zip(names, configs)]
    )
    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, build(L, opt_ours), build(T, opt_theirs), 100)


def test_cyclic_custom_scale_fn(device, twin_setup):
    for scale_mode in ("cycle", "iterations"):
        config = dict(
            base_lr=1e-3, max_lr=1e-2, step_size_up=4, scale_fn=lambda x: 1.0 / (1.0 + x), scale_mode=scale_mode
        )
        ours, theirs, opt_ours, opt_theirs = twin_setup(device)
        assert_same_trajectory(
            ours, theirs, opt_ours, opt_theirs, L.CyclicLR(opt_ours, **config), T.CyclicLR(opt_theirs, **config), 60
        )


def test_reduce_lr_on_plateau_on_device(device, twin_setup):
    # sync_free=True: the device state machine for a CPU tensor too (the default keeps it for GPU
    # metrics), so that it runs here without a GPU.
    ours, theirs, opt_ours, opt_theirs = twin_setup(device)
    config = dict(mode="min", factor=0.5, patience=2, threshold=1e-3, cooldown=1, min_lr=[1e-4, 2e-4])
    sched_ours = L.ReduceLROnPlateau(opt_ours, **config, sync_free=True)
    sched_theirs = T.ReduceLROnPlateau(opt_theirs, **config)
    rng = random.Random(0)
    for epoch in range(40):
        step_twins(ours, theirs, opt_ours, opt_theirs)
        metric = 1.0 / (1 + epoch) if epoch < 8 else 0.1 + rng.random() * 0.01
        sched_ours.step(torch.tensor(metric, device=device))  # a device tensor: no host read
        sched_theirs.step(metric)
        for a, b in zip(opt_ours.param_groups, opt_theirs.param_groups):
            assert isinstance(a["lr"], torch.Tensor) and a["lr"].device.type == device
            assert math.isclose(float(a["lr"]), b["lr"], rel_tol=1e-12)
        assert int(sched_ours.num_bad_epochs) == sched_theirs.num_bad_epochs
        assert int(sched_ours.cooldown_counter) == sched_theirs.cooldown_counter
    assert float(opt_ours.param_groups[0]["lr"]) < 1e-2, "the plateau must have reduced the lr"


@pytest.mark.parametrize("sync_free", [None, False])
def test_reduce_lr_on_plateau_with_a_cpu_tensor_metric_is_torchs(sync_free, twin_setup):
    # A CPU tensor metric (as Lightning passes it) is read for free: torch's step, its float lrs,
    # its state dict. A state the device machine made is brought back to numbers at such a step.
    ours, theirs, opt_ours, opt_theirs = twin_setup("cpu")
    config = dict(mode="max", factor=0.3, patience=1, cooldown=2, min_lr=1e-4)
    sched_ours = L.ReduceLROnPlateau(opt_ours, **config, **({} if sync_free is None else dict(sync_free=sync_free)))
    sched_theirs = T.ReduceLROnPlateau(opt_theirs, **config)
    rng = random.Random(3)
    for epoch in range(30):
        step_twins(ours, theirs, opt_ours, opt_theirs)
        metric = torch.tensor(rng.random(), dtype=torch.float32)
        if epoch == 10:
            sched_ours._sync_free = True  # one step on the device machine, then back
        sched_ours.step(metric)
        if epoch == 10:
            del sched_ours._sync_free  # back to the constructor's choice
            if sync_free is not None:
                sched_ours._sync_free = sync_free
        sched_theirs.step(metric)
        if epoch != 10:
            assert [type(g["lr"]) for g in opt_ours.param_groups] == [float, float]
            # lrfused's keyword, when given, is kept as torch keeps every attribute of a scheduler
            assert {k: v for k, v in sched_ours.state_dict().items() if k != "_sync_free"} == sched_theirs.state_dict()
        assert [float(a["lr"]) for a in opt_ours.param_groups] == [b["lr"] for b in opt_theirs.param_groups]
    assert max(max_relative_error(a, b) for a, b in zip(ours, theirs)) < 1e-6
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-6


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "CyclicLR", "LambdaLR"])
def test_state_dict_resume_is_exact(name, twin_setup):
    config = make_config(name, random.Random(name))
    ours, _, opt, _ = twin_setup("cpu")
    sched = getattr(L, name)(opt, **config)
    for _ in range(30):
        for p in ours:
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=name != "LambdaLR")
    resumed_params = [p.detach().clone().requires_grad_() for p in ours]
    resumed_opt = lrfused.FusedScheduledAdam(
        [{"params": [resumed_params[0]]}, {"params": [resumed_params[1]], "lr": 3e-3}], lr=1e-2
    )
    resumed_sched = getattr(L, name)(resumed_opt, **config)
    resumed_opt.load_state_dict(saved["opt"])
    resumed_sched.load_state_dict(saved["sched"])
    for _ in range(40):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, resumed_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        resumed_opt.step()
        sched.step()
        resumed_sched.step()
        assert sched.get_last_lr() == resumed_sched.get_last_lr()
    for p, q in zip(ours, resumed_params):
        assert torch.equal(p, q)


def test_resume_with_last_epoch_like_torch(twin_setup):
    config = dict(T_max=50, eta_min=1e-4)
    ours, theirs, opt_ours, opt_theirs = twin_setup("cpu")
    for opt in (opt_ours, opt_theirs):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    sched_ours = L.CosineAnnealingLR(opt_ours, last_epoch=19, **config)
    sched_theirs = T.CosineAnnealingLR(opt_theirs, last_epoch=19, **config)
    assert sched_ours.last_epoch == sched_theirs.last_epoch == 20
    assert sched_ours.get_last_lr() == sched_theirs.get_last_lr()
    for _ in range(5):
        sched_ours.step()
        sched_theirs.step()
        assert sched_ours.get_last_lr() == pytest.approx(sched_theirs.get_last_lr(), rel=1e-12)


@pytest.mark.parametrize(
    "build",
    [
        lambda S, opt: S.StepLR(opt, step_size=3),
        lambda S, opt: S.OneCycleLR(opt, max_lr=0.1, total_steps=12),
        lambda S, opt: S.SequentialLR(opt, [S.LinearLR(opt, 0.2, total_iters=3), S.ExponentialLR(opt, 0.9)], [3]),
    ],
    ids=["step", "one-cycle", "sequential"],
)
def test_on_another_optimizer_a_scheduler_is_torchs_class(build):
    """Without a FusedScheduledAdam there is no device lr: the class is torch's, nothing more."""
    torch.manual_seed(0)
    params = [torch.randn(4, requires_grad=True) for _ in range(2)]
    opt_ours, opt_theirs = torch.optim.Adam(params, lr=0.01), torch.optim.Adam(params, lr=0.01)
    ours, theirs = build(L, opt_ours), build(T, opt_theirs)
    assert ours.optimizer is opt_ours
    assert ours.__dict__.keys() == theirs.__dict__.keys()
    for _ in range(12):
        ours.step()
        theirs.step()
        assert ours.get_last_lr() == theirs.get_last_lr()
        assert [g["betas"] for g in opt_ours.param_groups] == [g["betas"] for g in opt_theirs.param_groups]
    plateau = L.ReduceLROnPlateau(opt_ours, patience=0)
    reference = T.ReduceLROnPlateau(opt_theirs, patience=0)
    for metric in (1.0, 2.0, 3.0):
        plateau.step(metric)
        reference.step(metric)
    assert plateau.state_dict() == reference.state_dict()
    assert opt_ours.param_groups[0]["lr"] == opt_theirs.param_groups[0]["lr"]


def test_lambda_past_its_horizon_is_computed_on_the_host(twin_setup):
    ours, theirs, opt_ours, opt_theirs = twin_setup("cpu")
    lam = lambda t: 0.9**t  # noqa: E731
    sched_ours = L.LambdaLR(opt_ours, lam, horizon=5)
    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, sched_ours, T.LambdaLR(opt_theirs, lam), 12)


@pytest.mark.parametrize("scale_mode", ["cycle", "iterations"])
def test_cyclic_custom_scale_fn_with_horizon(device, scale_mode, twin_setup):
    # horizon= puts the whole table on the device (what a captured scheduler.step() needs); past
    # it the host computes the steps, with the same values.
    config = dict(base_lr=1e-3, max_lr=1e-2, step_size_up=4, scale_fn=lambda x: 1.0 / (1.0 + x), scale_mode=scale_mode)
    ours, theirs, opt_ours, opt_theirs = twin_setup(device)
    sched_ours = L.CyclicLR(opt_ours, **config, horizon=30)
    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, sched_ours, T.CyclicLR(opt_theirs, **config), 40)


def test_affine_chain_on_the_device(device, twin_setup):
    ours, theirs, opt_ours, opt_theirs = twin_setup(device)
    build = lambda module, opt: module.ChainedScheduler(  # noqa: E731
        [module.ExponentialLR(opt, gamma=0.97), module.CosineAnnealingLR(opt, T_max=9, eta_min=1e-4)]
    )
    sched_ours = build(L, opt_ours)
    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, sched_ours, build(T, opt_theirs), 39)
    words = binding_of(opt_ours).lr_words().tolist()
    assert words == pytest.approx([g["lr"] for g in opt_theirs.param_groups], rel=1e-12)


def test_warm_restarts_explicit_epoch_follows_torch(twin_setup):
    ours, theirs, opt_ours, opt_theirs = twin_setup("cpu")
    sched_ours = L.CosineAnnealingWarmRestarts(opt_ours, T_0=3, T_mult=3)
    sched_theirs = T.CosineAnnealingWarmRestarts(opt_theirs, T_0=3, T_mult=3)
    for epoch in (363, 364, 3.5, 7, 7.25, 20):
        sched_ours.step(epoch)
        sched_theirs.step(epoch)
        assert (sched_ours.T_cur, sched_ours.T_i) == (sched_theirs.T_cur, sched_theirs.T_i)
        assert sched_ours.get_last_lr() == sched_theirs.get_last_lr()
        assert binding_of(opt_ours).lr_words().tolist() == [g["lr"] for g in opt_theirs.param_groups]


def test_constant_lr_factor_zero_raises_like_torch(twin_setup):
    _, _, opt, _ = twin_setup("cpu")
    sched = L.ConstantLR(opt, factor=0.0, total_iters=2)
    sched.step()
    with pytest.raises(ZeroDivisionError):
        sched.step()


def test_one_cycle_past_total_steps_raises_like_torch(twin_setup):
    _, _, opt, _ = twin_setup("cpu")
    sched = L.OneCycleLR(opt, max_lr=0.1, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="Tried to step 4 times"):
        sched.step()


# --- recipes: stacked schedulers and other writers ---------------------------------------------------


def twins(seed: int, groups: int = 2):
    torch.manual_seed(seed)
    base = [torch.randn(6, 5) for _ in range(groups)]
    ours = [p.clone().requires_grad_() for p in base]
    theirs = [p.clone().requires_grad_() for p in base]
    lrs = [10 ** random.Random(seed + i).uniform(-3, -1) for i in range(groups)]
    opt_ours = lrfused.FusedScheduledAdamW([{"params": [p], "lr": lr} for p, lr in zip(ours, lrs)])
    opt_theirs = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(theirs, lrs)])
    return ours, theirs, opt_ours, opt_theirs


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
        step_twins(ours, theirs, opt_ours, opt_theirs)
        step_ours(i)
        step_theirs(i)
        assert_same_lrs(opt_ours, opt_theirs, f"iteration {i}")
    assert_same_params(ours, theirs, tolerance=1e-6)
    return opt_ours


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
    seq = module.SequentialLR(
        opt,
        [module.LinearLR(opt, start_factor=0.2, total_iters=4), module.CosineAnnealingLR(opt, T_max=9)],
        milestones=[4],
    )
    exp = module.ExponentialLR(opt, gamma=0.98)
    return lambda i: (seq.step(), exp.step())


STACKS = {
    "StepLR+ExponentialLR": _step_and_exponential,
    "per iteration + per epoch": _per_iteration_and_per_epoch,
    "CosineAnnealingLR then CyclicLR": _cosine_then_cyclic,
    "three multiplicative": _three_multiplicative,
    "SequentialLR + ExponentialLR": _sequential_under_exponential,
}


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
            step_twins(ours, theirs, opt_ours, opt_theirs)
            warm_ours.step()
            warm_theirs.step()
        plat_ours.step(torch.tensor(loss))
        plat_theirs.step(loss)
        assert_same_lrs(opt_ours, opt_theirs, f"epoch {epoch}")
    assert_same_params(ours, theirs, tolerance=1e-6)


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


WRITERS = {
    "hand writes": _hand_writes,
    "stock torch scheduler": _stock_torch_scheduler_on_top,
    "SWALR after cosine": _swa_after_cosine,
}


@pytest.mark.parametrize("name", WRITERS)
def test_other_writers_win_like_torch(name):
    run_recipe(WRITERS[name], 11, 20)


def test_a_hand_write_is_applied_at_the_next_optimizer_step():
    ours, theirs, opt_ours, opt_theirs = twins(5)
    L.CosineAnnealingLR(opt_ours, T_max=10)
    T.CosineAnnealingLR(opt_theirs, T_max=10)
    for opt in (opt_ours, opt_theirs):
        opt.param_groups[1]["lr"] = 0.02
    step_twins(ours, theirs, opt_ours, opt_theirs)
    assert_same_params(ours, theirs, tolerance=1e-6)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        opt_ours.param_groups[0]["lr"] = float("nan")
        opt_ours.step()


def test_param_group_added_after_a_chainable_scheduler():
    ours, theirs, opt_ours, opt_theirs = twins(7, groups=1)
    s_ours, s_theirs = L.StepLR(opt_ours, step_size=2, gamma=0.5), T.StepLR(opt_theirs, step_size=2, gamma=0.5)
    step_twins(ours, theirs, opt_ours, opt_theirs)
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
        step_twins(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        assert_same_lrs(opt_ours, opt_theirs)
        seen.append(opt_ours.param_groups[1]["lr"])
    assert seen == pytest.approx([0.02, 0.02, 0.01, 0.01, 0.005])
    assert "initial_lr" not in opt_ours.param_groups[1] and len(s_ours.base_lrs) == 1
    assert_same_params(ours, theirs, tolerance=1e-6)


def test_param_group_added_after_a_closed_form_scheduler_raises_like_torch():
    _, _, opt_ours, opt_theirs = twins(8, groups=1)
    s_ours, s_theirs = L.LambdaLR(opt_ours, lambda t: 0.9**t), T.LambdaLR(opt_theirs, lambda t: 0.9**t)
    for opt in (opt_ours, opt_theirs):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    with pytest.raises(ValueError) as theirs_error:
        s_theirs.step()
    with pytest.raises(ValueError) as ours_error:
        s_ours.step()
    assert str(ours_error.value) == str(theirs_error.value)


def test_plateau_survives_the_optimizer_reloading_its_own_state():
    ours, theirs, opt_ours, opt_theirs = twins(9)
    plat_ours = L.ReduceLROnPlateau(opt_ours, patience=0, factor=0.5)
    plat_theirs = T.ReduceLROnPlateau(opt_theirs, patience=0, factor=0.5)
    history = []
    for epoch, loss in enumerate([1.0, 1.1, 1.2, 0.5, 0.6]):
        step_twins(ours, theirs, opt_ours, opt_theirs)
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
        step_twins(ours, theirs, opt_ours, opt_theirs)
        sched.step()
        reference.step()
        assert_same_lrs(opt_ours, opt_theirs)


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
        step_twins(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        calls.append(s_ours.get_last_lr())
        assert_same_lrs(opt_ours, opt_theirs, f"step {i}")
    assert_same_params(ours, theirs, tolerance=1e-6)


def test_warm_restarts_fractional_epochs_as_documented_by_torch():
    ours, theirs, opt_ours, opt_theirs = twins(15)
    s_ours = L.CosineAnnealingWarmRestarts(opt_ours, T_0=2, T_mult=2, eta_min=1e-5)
    s_theirs = T.CosineAnnealingWarmRestarts(opt_theirs, T_0=2, T_mult=2, eta_min=1e-5)
    iters = 4
    for epoch in range(5):
        for i in range(iters):
            step_twins(ours, theirs, opt_ours, opt_theirs)
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
        step_twins(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        assert_same_lrs(opt_ours, opt_theirs, i)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("StepLR", dict(step_size=3, gamma=0.5)),
        ("CosineAnnealingLR", dict(T_max=8)),
        ("ExponentialLR", dict(gamma=0.9)),
        ("LinearLR", dict(total_iters=6)),
    ],
)
def test_explicit_epochs_use_torchs_closed_form(name, kwargs):
    ours, theirs, opt_ours, opt_theirs = twins(17)
    s_ours, s_theirs = getattr(L, name)(opt_ours, **kwargs), getattr(T, name)(opt_theirs, **kwargs)
    for epoch in (1, 2, 5, 5, 3, 11, 2.5, 12):
        step_twins(ours, theirs, opt_ours, opt_theirs)
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


def test_torchs_signature_is_accepted():
    p = torch.zeros(3, requires_grad=True)
    for cls, theirs in (
        (lrfused.FusedScheduledAdam, torch.optim.Adam),
        (lrfused.FusedScheduledAdamW, torch.optim.AdamW),
    ):
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
    mine = [
        p
        for p in inspect.signature(ours.__init__).parameters.values()
        if not (p.name in ("horizon", "sync_free") and p.kind == p.KEYWORD_ONLY)
    ]
    assert [(p.name, p.default, p.kind) for p in mine] == [
        (p.name, p.default, p.kind) for p in inspect.signature(theirs.__init__).parameters.values()
    ]
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
    s_ours = L.OneCycleLR(
        opt_ours, max_lr=0.05, total_steps=10, base_momentum=torch.tensor(0.8), max_momentum=torch.tensor(0.9)
    )
    s_theirs = T.OneCycleLR(
        opt_theirs, max_lr=0.05, total_steps=10, base_momentum=torch.tensor(0.8), max_momentum=torch.tensor(0.9)
    )
    for _ in range(9):
        step_twins(ours, theirs, opt_ours, opt_theirs)
        s_ours.step()
        s_theirs.step()
        assert_same_lrs(opt_ours, opt_theirs)
    assert_same_params(ours, theirs, tolerance=1e-6)


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


@pytest.mark.parametrize(
    "build",
    [
        lambda o: L.StepLR(o, 3),
        lambda o: L.ReduceLROnPlateau(o),
        lambda o: L.SequentialLR(o, [L.ConstantLR(o), L.ExponentialLR(o, 0.9)], [2]),
    ],
)
def test_deleting_a_scheduler_frees_it_without_the_collector(build):
    ours, _, opt, _ = twins(21)
    sched = build(opt)
    for p in ours:
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step(1.0) if isinstance(sched, L.ReduceLROnPlateau) else sched.step()
    gc.disable()
    try:
        ref, key = weakref.ref(sched), id(sched)
        assert key in _device._SIDES or isinstance(sched, L.ReduceLROnPlateau)  # (a number metric: no side)
        del sched
        assert ref() is None
        assert key not in _device._SIDES  # its device side (clock, rules) goes with it
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


_EVERY_CLASS = {
    "LambdaLR": lambda S, opt: S.LambdaLR(opt, lambda t: 0.9**t),
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
        step_twins(ours, theirs, opt_ours, opt_theirs)
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
        step_twins(ours, theirs, opt_ours, opt_theirs)
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


# --- long runs, checkpoints and bad arguments --------------------------------------------------------


def test_scheduler_clock_past_a_million_steps():
    w = torch.zeros(4, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=1.0)
    sched = lrfused.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1000, T_mult=2)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0), T_0=1000, T_mult=2
    )
    for scheduler in (sched, reference):
        scheduler.step(10**6 + 17)
        for _ in range(3):
            scheduler.step()
    assert sched.get_last_lr() == reference.get_last_lr()
    # The device words first: reading them applies the scheduler steps deferred to the next
    # optimizer step, which move the clock.
    assert binding_of(opt).lr_words().tolist() == pytest.approx(reference.get_last_lr(), rel=1e-12)
    assert int(device_side(sched).clock) == 10**6 + 20


def _fresh():
    w = torch.zeros(3, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    return w, opt


@pytest.mark.parametrize(
    "build,error,fragment",
    [
        (lambda o: lrfused.lr_scheduler.StepLR(o, step_size=0), ValueError, "Invalid step_size: 0"),
        (lambda o: lrfused.lr_scheduler.StepLR(o, step_size=3, gamma=0.0), ValueError, "Invalid gamma: 0.0"),
        (lambda o: lrfused.lr_scheduler.ExponentialLR(o, gamma=-0.5), ValueError, "Invalid gamma: -0.5"),
        (lambda o: lrfused.lr_scheduler.CosineAnnealingLR(o, T_max=0), ValueError, "Invalid T_max: 0"),
        (lambda o: lrfused.lr_scheduler.MultiStepLR(o, milestones=[2, 3.5]), TypeError, "milestones must be an int"),
        (lambda o: lrfused.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=0), ValueError, "total_steps"),
        (
            lambda o: lrfused.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5),
            ValueError,
            "pct_start",
        ),
        (lambda o: lrfused.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0"),
    ],
)
def test_bad_scheduler_arguments_change_nothing(build, error, fragment):
    w, opt = _fresh()
    before_w, before_state = w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()}
    before_lr = opt.param_groups[0]["lr"]
    with pytest.raises(error, match=fragment):
        build(opt)
    assert torch.equal(w, before_w)
    assert all(torch.equal(v, before_state[k]) for k, v in opt.state[w].items())
    # The optimizer still steps with its own lr: a refused scheduler changed nothing.
    assert opt.param_groups[0]["lr"] == before_lr
    w.grad = torch.ones(3)
    opt.step()
    assert binding_of(opt).lr_words().tolist() == [before_lr]


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("CosineAnnealingLR", dict(T_max=30, eta_min=1e-4)),
        ("OneCycleLR", dict(max_lr=0.05, total_steps=60)),
        ("StepLR", dict(step_size=4, gamma=0.5)),
    ],
)
@pytest.mark.parametrize("direction", ["torch_to_lrfused", "lrfused_to_torch"])
def test_scheduler_checkpoints_move_between_torch_and_lrfused(name, kwargs, direction):
    torch.manual_seed(0)
    base = torch.randn(32)
    source_w = base.clone().requires_grad_()
    if direction == "torch_to_lrfused":
        source_opt, source_sched = torch.optim.AdamW([source_w], lr=1e-2), None
        source_sched = getattr(T, name)(source_opt, **kwargs)
    else:
        source_opt = lrfused.FusedScheduledAdamW([source_w], lr=1e-2)
        source_sched = getattr(L, name)(source_opt, **kwargs)
    grads = [torch.randn(32) for _ in range(40)]
    for g in grads[:15]:
        source_w.grad = g.clone()
        source_opt.step()
        source_sched.step()
    buffer = io.BytesIO()
    torch.save({"w": source_w.detach(), "opt": source_opt.state_dict(), "sched": source_sched.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    target_w = checkpoint["w"].clone().requires_grad_()
    if direction == "torch_to_lrfused":
        target_opt = lrfused.FusedScheduledAdamW([target_w], lr=1e-2)
        target_sched = getattr(L, name)(target_opt, **kwargs)
    else:
        target_opt = torch.optim.AdamW([target_w], lr=1e-2)
        target_sched = getattr(T, name)(target_opt, **kwargs)
    target_opt.load_state_dict(checkpoint["opt"])
    target_sched.load_state_dict(checkpoint["sched"])
    for g in grads[15:]:
        source_w.grad, target_w.grad = g.clone(), g.clone()
        source_opt.step()
        target_opt.step()
        source_sched.step()
        target_sched.step()
        assert target_sched.get_last_lr() == pytest.approx(source_sched.get_last_lr(), rel=1e-9)
    assert max_relative_error(target_w, source_w) < 1e-6


# --- hostile input -----------------------------------------------------------------------------------


REFUSED_SCHEDULERS = {
    "CyclicLR mode": lambda M, o: M.CyclicLR(o, 1e-3, 1e-2, mode="foo"),
    "CyclicLR base_lr count": lambda M, o: M.CyclicLR(o, [1e-3] * 3, 1e-2),
    "CyclicLR max_lr count": lambda M, o: M.CyclicLR(o, 1e-3, [1e-2] * 3),
    "OneCycleLR pct_start": lambda M, o: M.OneCycleLR(o, 0.1, total_steps=10, pct_start=2.0),
    "OneCycleLR total_steps": lambda M, o: M.OneCycleLR(o, 0.1, total_steps=-1),
    "OneCycleLR no length": lambda M, o: M.OneCycleLR(o, 0.1),
    "OneCycleLR anneal": lambda M, o: M.OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="square"),
    "LambdaLR raises at 0": lambda M, o: M.LambdaLR(o, lambda e: 1 / 0),
    "LambdaLR lambda count": lambda M, o: M.LambdaLR(o, [lambda e: 1.0] * 3),
    "MultiplicativeLR lambda count": lambda M, o: M.MultiplicativeLR(o, [lambda e: 1.0] * 3),
    "StepLR step_size 0": lambda M, o: M.StepLR(o, 0),
    "CosineAnnealingWarmRestarts T_0": lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=0),
    "CosineAnnealingWarmRestarts T_mult": lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=0),
    "LinearLR start_factor": lambda M, o: M.LinearLR(o, start_factor=0.0),
    "LinearLR end_factor": lambda M, o: M.LinearLR(o, end_factor=1.5),
    "ConstantLR factor": lambda M, o: M.ConstantLR(o, factor=1.5),
    "ReduceLROnPlateau mode": lambda M, o: M.ReduceLROnPlateau(o, mode="up"),
    "ReduceLROnPlateau factor": lambda M, o: M.ReduceLROnPlateau(o, factor=1.0),
    "ReduceLROnPlateau threshold_mode": lambda M, o: M.ReduceLROnPlateau(o, threshold_mode="x"),
    "ReduceLROnPlateau min_lr count": lambda M, o: M.ReduceLROnPlateau(o, min_lr=[0.0] * 3),
    "resume without initial_lr": lambda M, o: M.StepLR(o, 2, last_epoch=3),
}


REFUSED_EARLIER_THAN_TORCH = {"StepLR step_size 0"}


@pytest.mark.hostile
@pytest.mark.parametrize("case", list(REFUSED_SCHEDULERS))
@pytest.mark.parametrize("driven", [False, True], ids=["alone", "beside a scheduler"])
def test_a_refused_scheduler_constructor_leaves_everything_as_it_was(case, driven):
    ours, theirs = twin_leaves([(5,), (3,)], seed=6)
    opt_ours = lrfused.FusedScheduledAdamW([{"params": [ours[0]], "lr": 1e-2}, {"params": [ours[1]], "lr": 3e-3}])
    opt_theirs = torch.optim.AdamW([{"params": [theirs[0]], "lr": 1e-2}, {"params": [theirs[1]], "lr": 3e-3}])
    driver_ours = L.ExponentialLR(opt_ours, 0.8) if driven else None
    driver_theirs = T.ExponentialLR(opt_theirs, 0.8) if driven else None
    step_both(ours, theirs, opt_ours, opt_theirs, 2)
    if driven:
        driver_ours.step()
        driver_theirs.step()
    if case == "resume without initial_lr":
        for group in opt_ours.param_groups:
            group.pop("initial_lr", None)
    before = snapshot(opt_ours)
    words = binding_of(opt_ours).words().clone()
    theirs_probe = copy.deepcopy(opt_theirs)
    if case == "resume without initial_lr":
        for group in theirs_probe.param_groups:
            group.pop("initial_lr", None)
    if case in REFUSED_EARLIER_THAN_TORCH:
        # torch takes it and fails at the first step that uses it
        with pytest.raises(ZeroDivisionError):
            REFUSED_SCHEDULERS[case](T, theirs_probe).step()
    else:
        assert raised(lambda: REFUSED_SCHEDULERS[case](T, theirs_probe)) is not None, "torch refuses this too"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert raised(lambda: REFUSED_SCHEDULERS[case](L, opt_ours)) is not None
    assert_unchanged(opt_ours, before)
    torch.testing.assert_close(binding_of(opt_ours).words(), words, rtol=0, atol=0, equal_nan=True)
    for k in range(3):  # and the optimizer trains on as torch's, which never saw the refusal
        step_both(ours, theirs, opt_ours, opt_theirs, 1, seed=30 + k)
        if driven:
            driver_ours.step()
            driver_theirs.step()
    assert [g["lr"] for g in opt_ours.param_groups] == pytest.approx([g["lr"] for g in opt_theirs.param_groups])
    assert_same_params(ours, theirs)


ACCEPTED_SCHEDULERS = {
    "CosineAnnealingLR T_max 100.0": lambda M, o: M.CosineAnnealingLR(o, T_max=100.0),
    "CosineAnnealingLR T_max 7.5": lambda M, o: M.CosineAnnealingLR(o, T_max=7.5),
    "CosineAnnealingLR eta_min above lr": lambda M, o: M.CosineAnnealingLR(o, T_max=5, eta_min=0.05),
    "StepLR step_size 2.0": lambda M, o: M.StepLR(o, step_size=2.0),
    "StepLR gamma 1.5": lambda M, o: M.StepLR(o, 2, gamma=1.5),
    "MultiStepLR unsorted": lambda M, o: M.MultiStepLR(o, [5, 2, 2]),
    "MultiStepLR tuple": lambda M, o: M.MultiStepLR(o, (1, 3)),
    "ExponentialLR gamma 1": lambda M, o: M.ExponentialLR(o, 1.0),
    "PolynomialLR power 0": lambda M, o: M.PolynomialLR(o, total_iters=4, power=0.0),
    "PolynomialLR float total_iters": lambda M, o: M.PolynomialLR(o, total_iters=4.0),
    "LinearLR total_iters 0": lambda M, o: M.LinearLR(o, total_iters=0),
    "ConstantLR factor 0": lambda M, o: M.ConstantLR(o, factor=0.0, total_iters=2),  # torch: 1 / 0 at 2
    "StepLR step_size 2.5": lambda M, o: M.StepLR(o, step_size=2.5),
    "StepLR step_size -3": lambda M, o: M.StepLR(o, step_size=-3),
    "CosineAnnealingLR T_max -4": lambda M, o: M.CosineAnnealingLR(o, T_max=-4),
    "CosineAnnealingWarmRestarts T_mult 2": lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2),
    "CyclicLR exp_range": lambda M, o: M.CyclicLR(
        o, 1e-3, 1e-2, step_size_up=3, mode="exp_range", gamma=0.9, cycle_momentum=False
    ),
    "OneCycleLR epochs": lambda M, o: M.OneCycleLR(o, 0.05, epochs=2, steps_per_epoch=5),
    "OneCycleLR linear three-phase": lambda M, o: M.OneCycleLR(
        o, 0.05, total_steps=12, anneal_strategy="linear", three_phase=True
    ),
    "LambdaLR negative factor": lambda M, o: M.LambdaLR(o, lambda e: 1.0 - 0.3 * e),
}


@pytest.mark.hostile
@pytest.mark.parametrize("case", list(ACCEPTED_SCHEDULERS))
@pytest.mark.parametrize("epochs", ["steps", "explicit epochs"])
def test_arguments_torch_accepts_are_accepted_and_followed(case, epochs):
    ours, theirs = twin_leaves([(5,), (3,)], seed=7)
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s_ours = ACCEPTED_SCHEDULERS[case](L, opt_ours)
        s_theirs = ACCEPTED_SCHEDULERS[case](T, opt_theirs)
        for k in range(8):
            step_both(ours, theirs, opt_ours, opt_theirs, 1, seed=k)
            epoch = (
                None
                if epochs == "steps" or case.startswith(("OneCycleLR", "CyclicLR"))
                else [1, 2, 5, 3, 3, 0, 7, 2][k]
            )
            error_theirs = raised(lambda: s_theirs.step(epoch))
            error_ours = raised(lambda: s_ours.step(epoch))
            same_outcome(error_ours, error_theirs)
            if error_theirs is not None:  # torch fails too (ConstantLR's factor 0 divides by zero)
                return
            assert s_ours.get_last_lr() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12)
    binding_of(opt_ours).absorb(opt_ours.param_groups)
    assert binding_of(opt_ours).lr_words().tolist() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12)
    assert_same_params(ours, theirs)


@pytest.mark.hostile
@pytest.mark.parametrize("epoch", [-1, -3, 0])
@pytest.mark.parametrize("make", ["StepLR", "CosineAnnealingLR", "ExponentialLR", "LambdaLR", "MultiStepLR"])
def test_explicit_negative_epochs_follow_torch(epoch, make):
    build = {
        "StepLR": lambda M, o: M.StepLR(o, 2, 0.5),
        "CosineAnnealingLR": lambda M, o: M.CosineAnnealingLR(o, 6),
        "ExponentialLR": lambda M, o: M.ExponentialLR(o, 0.7),
        "LambdaLR": lambda M, o: M.LambdaLR(o, lambda e: e + 2),
        "MultiStepLR": lambda M, o: M.MultiStepLR(o, [1, 2]),
    }[make]
    opt_ours = lrfused.FusedScheduledAdam([torch.zeros(2, requires_grad=True)], lr=0.1)
    opt_theirs = torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=0.1)
    s_ours, s_theirs = build(L, opt_ours), build(T, opt_theirs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in (3, epoch, None, None):
            error_theirs = raised(lambda: s_theirs.step(e))
            error_ours = raised(lambda: s_ours.step(e))
            same_outcome(error_ours, error_theirs)
            assert s_ours.get_last_lr() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12)
    binding_of(opt_ours).absorb(opt_ours.param_groups)
    assert binding_of(opt_ours).lr_words().tolist() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12)


@pytest.mark.hostile
@pytest.mark.parametrize(
    "build, names",
    [
        (lambda M, o: M.StepLR(o, step_size=0), "step_size"),
        (lambda M, o: M.CosineAnnealingLR(o, T_max=0), "T_max"),
        (lambda M, o: M.CosineAnnealingLR(o, T_max=0.0), "T_max"),
        (lambda M, o: M.CosineAnnealingLR(o, T_max=10, eta_min=float("nan")), "eta_min"),
        (lambda M, o: M.ExponentialLR(o, gamma=-0.5), "gamma"),
        (lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=0), "T_0"),
        (lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=1.5), "T_mult"),
        (lambda M, o: M.MultiStepLR(o, milestones=[2, 3.5]), "milestones"),
        (lambda M, o: M.OneCycleLR(o, max_lr=0.1, total_steps=0), "total_steps"),
        (lambda M, o: M.LambdaLR(o, lambda e: 1.0, horizon=0), "horizon"),
    ],
)
def test_errors_name_torch_arguments(build, names):
    opt = lrfused.FusedScheduledAdam([torch.zeros(2, requires_grad=True)], lr=0.1)
    error = raised(lambda: build(L, opt))
    assert error is not None and names in str(error), error
    for internal in ("period", "floor", "init", "Step(", "Cosine("):
        assert internal not in str(error), error


NON_FINITE_SCHEDULERS = {
    "CyclicLR max_lr": (lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=float("nan")), r"CyclicLR: invalid max_lr: nan"),
    "CyclicLR base_lr list": (
        lambda o: L.CyclicLR(o, base_lr=[1e-3, float("inf")], max_lr=1e-2),
        r"CyclicLR: invalid base_lr: inf \(param_groups\[1\]\)",
    ),
    "CyclicLR scale_fn": (
        lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, scale_fn=lambda x: float("nan")),
        r"CyclicLR.step\(\) computed lr=nan for param_groups\[0\] \(from scale_fn\(1\) = nan\)",
    ),
    "OneCycleLR max_lr": (
        lambda o: L.OneCycleLR(o, max_lr=float("nan"), total_steps=10),
        r"OneCycleLR: invalid max_lr: nan",
    ),
    "LambdaLR": (
        lambda o: L.LambdaLR(o, lambda t: float("nan")),
        r"LambdaLR.step\(\) computed lr=nan for param_groups\[0\]",
    ),
}


@pytest.mark.hostile
@pytest.mark.parametrize("name", list(NON_FINITE_SCHEDULERS))
def test_a_scheduler_argument_that_is_not_finite_is_named(name):
    build, message = NON_FINITE_SCHEDULERS[name]
    opt = lrfused.FusedScheduledAdam(
        [{"params": [torch.zeros(2, requires_grad=True)]}, {"params": [torch.zeros(3, requires_grad=True)]}]
    )
    before = snapshot(opt)
    with pytest.raises(ValueError, match=message):
        build(opt)
    assert_unchanged(opt, before)
    # torch takes these and trains with a NaN lr; on a torch optimizer lrfused's class is torch's.
    build(
        torch.optim.Adam(
            [{"params": [torch.zeros(2, requires_grad=True)]}, {"params": [torch.zeros(3, requires_grad=True)]}]
        )
    )


def test_a_sequential_lr_in_one_thread_leaves_a_scheduler_in_another_on_the_device():
    """The depth of SequentialLR steps is per thread: while another thread is inside a SequentialLR's
    step (its children stepped on the host), this thread's scheduler still steps its device clock."""
    import threading

    inside, leave = threading.Event(), threading.Event()

    def hold_a_parent_step():
        with _device.children_on_host():
            inside.set()
            leave.wait(30)

    other = threading.Thread(target=hold_a_parent_step)
    other.start()
    try:
        assert inside.wait(30)
        ours, theirs, opt_ours, opt_theirs = twins(41)
        scheduler_ours, scheduler_theirs = L.CosineAnnealingLR(opt_ours, T_max=20), T.CosineAnnealingLR(opt_theirs, 20)
        for k in range(12):
            for p, q in zip(ours, theirs):
                p.grad = torch.ones_like(p)
                q.grad = torch.ones_like(q)
            opt_ours.step()
            opt_theirs.step()
            scheduler_ours.step()
            scheduler_theirs.step()
            assert len(binding_of(opt_ours).deferred_rules) == 1, k  # a device step, not a host write
            assert_same_lrs(opt_ours, opt_theirs, k)
    finally:
        leave.set()
        other.join()

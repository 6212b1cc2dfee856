"""Every lrfused.lr_scheduler class against torch's, step by step, on random configurations."""

import io
import math
import random
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T

import lrfused
from lrfused import lr_scheduler as L
from lrfused.optim import binding_of
from helpers import max_relative_error

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
        return dict(base_lr=[g.uniform(1e-4, 1e-3), g.uniform(1e-4, 1e-3)], max_lr=g.uniform(2e-3, 1e-2),
                    step_size_up=g.randint(1, 15), step_size_down=g.choice([None, g.randint(1, 15)]), mode=mode,
                    gamma=g.uniform(0.9, 1.0), base_momentum=g.uniform(0.7, 0.85), max_momentum=g.uniform(0.86, 0.95))
    if name == "OneCycleLR":
        return dict(max_lr=[g.uniform(1e-3, 1e-1), g.uniform(1e-3, 1e-1)], total_steps=g.randint(130, 200),
                    pct_start=g.uniform(0.1, 0.5), anneal_strategy=g.choice(["cos", "linear"]),
                    three_phase=g.choice([False, True]), div_factor=g.uniform(5, 30),
                    final_div_factor=g.uniform(10, 1e4))
    if name == "LambdaLR":
        k = g.uniform(0.001, 0.1)
        return dict(lr_lambda=lambda t: 1.0 / (1.0 + k * t))
    if name == "MultiplicativeLR":
        k = g.uniform(0.95, 0.999)
        return dict(lr_lambda=lambda t: k if t % 3 else 1.0)
    raise KeyError(name)


CLASSES = ["StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR", "CosineAnnealingLR",
           "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR", "LambdaLR", "MultiplicativeLR"]




def assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, sched_ours, sched_theirs, steps, step_args=(),
                           tolerance=1e-6):
    for step in range(steps):
        for a, b in zip(opt_ours.param_groups, opt_theirs.param_groups):
            assert math.isclose(a["lr"], b["lr"], rel_tol=1e-9, abs_tol=1e-15), (step, a["lr"], b["lr"])
            assert a["betas"] == b["betas"], (step, a["betas"], b["betas"])
        assert sched_ours.get_last_lr() == pytest.approx(sched_theirs.get_last_lr(), rel=1e-9, abs=1e-15)
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
        sched_ours.step(*step_args)
        sched_theirs.step(*step_args)
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < tolerance


@pytest.mark.parametrize("name", CLASSES)
def test_float64_params_match_torch_at_1e_12(device, name, twin_setup):
    # float64 params are updated in float64 opmath, as torch's Adam updates them: with every
    # scheduler the trajectories agree to the last few bits.
    config = make_config(name, random.Random(f"{name}-float64"))
    ours, theirs, opt_ours, opt_theirs = twin_setup(device, dtype=torch.float64, weight_decay=0.1,
                                                    decoupled_weight_decay=True)
    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, getattr(L, name)(opt_ours, **config),
                           getattr(T, name)(opt_theirs, **config), 60, tolerance=1e-12)
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
        children = [module.LinearLR(opt, start_factor=0.01, total_iters=warmup), getattr(module, follower)(opt, **config)]
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
        [getattr(module, n)(opt, **c) for n, c in zip(names, configs)])
    assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, build(L, opt_ours), build(T, opt_theirs), 100)


def test_cyclic_custom_scale_fn(device, twin_setup):
    for scale_mode in ("cycle", "iterations"):
        config = dict(base_lr=1e-3, max_lr=1e-2, step_size_up=4, scale_fn=lambda x: 1.0 / (1.0 + x),
                      scale_mode=scale_mode)
        ours, theirs, opt_ours, opt_theirs = twin_setup(device)
        assert_same_trajectory(ours, theirs, opt_ours, opt_theirs, L.CyclicLR(opt_ours, **config),
                               T.CyclicLR(opt_theirs, **config), 60)


def test_reduce_lr_on_plateau_on_device(device, twin_setup):
    # sync_free=True: the device state machine for a CPU tensor too (the default keeps it for GPU
    # metrics), so that it runs here without a GPU.
    ours, theirs, opt_ours, opt_theirs = twin_setup(device)
    config = dict(mode="min", factor=0.5, patience=2, threshold=1e-3, cooldown=1, min_lr=[1e-4, 2e-4])
    sched_ours = L.ReduceLROnPlateau(opt_ours, **config, sync_free=True)
    sched_theirs = T.ReduceLROnPlateau(opt_theirs, **config)
    rng = random.Random(0)
    for epoch in range(40):
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
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
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
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
    resumed_opt = lrfused.FusedScheduledAdam([{"params": [resumed_params[0]]}, {"params": [resumed_params[1]],
                                                                                "lr": 3e-3}], lr=1e-2)
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


@pytest.mark.parametrize("build", [
    lambda S, opt: S.StepLR(opt, step_size=3),
    lambda S, opt: S.OneCycleLR(opt, max_lr=0.1, total_steps=12),
    lambda S, opt: S.SequentialLR(opt, [S.LinearLR(opt, 0.2, total_iters=3), S.ExponentialLR(opt, 0.9)], [3]),
], ids=["step", "one-cycle", "sequential"])
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
    lam = lambda t: 0.9 ** t  # noqa: E731
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
        [module.ExponentialLR(opt, gamma=0.97), module.CosineAnnealingLR(opt, T_max=9, eta_min=1e-4)])
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



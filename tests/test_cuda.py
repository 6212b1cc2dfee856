"""The CUDA kernel: parity, no host sync, launches per step, CUDA graphs, streams, devices.

Every test here skips, with its reason, on a machine without a GPU or without lrfused's CUDA
kernels."""

import math

import pytest
import torch

import lrfused
from helpers import max_relative_error, twin_leaves
from lrfused import lr_scheduler as L
from lrfused.optim import binding_of

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not lrfused.has_cuda_kernels(), reason="lrfused was built without its CUDA kernels"),
]


def twins(shapes, dtype=torch.float32, device="cuda"):
    return twin_leaves(shapes, dtype, 0, device)


def set_grads(ours, theirs):
    for a, b in zip(ours, theirs):
        g = torch.randn_like(a)
        a.grad, b.grad = g.clone(), g.clone()


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_parity_fp32_with_torch_fused_and_scheduler(amsgrad, decoupled, maximize):
    shapes = [(1,), (3,), (1000, 17), (65536 * 2 + 5,), (4097,)]
    ours, theirs = twins(shapes)
    kw = dict(lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize)
    opt_ours = (lrfused.FusedScheduledAdamW if decoupled else lrfused.FusedScheduledAdam)(ours, **kw)
    opt_theirs = (torch.optim.AdamW if decoupled else torch.optim.Adam)(theirs, fused=True, **kw)
    sched_ours = L.OneCycleLR(opt_ours, max_lr=1e-2, total_steps=200)
    sched_theirs = torch.optim.lr_scheduler.OneCycleLR(opt_theirs, max_lr=1e-2, total_steps=200)
    for _ in range(200):
        set_grads(ours, theirs)
        opt_ours.step()
        opt_theirs.step()
        sched_ours.step()
        sched_theirs.step()
    for a, b in zip(ours, theirs):
        assert error_against_fused(a, b) < 1e-6


def error_against_fused(actual, expected):
    """max |a - e| over max(max |e|, 1). torch's fused kernel rounds its bias corrections to float32
    where lrfused (like torch's single-tensor Adam) keeps them in float64: each step then differs
    by about an ulp of the step size, an absolute error that a 1- or 3-element tensor of small
    values cannot be measured against relative to its own maximum."""
    scale = max(expected.detach().double().abs().max().item(), 1.0)
    return (actual.detach().double() - expected.detach().double()).abs().max().item() / scale


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_parity_reduced_precision(dtype, tolerance):
    ours, theirs = twins([(4099,), (64, 33), (1,)], dtype)
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-3)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-3, fused=True)
    for _ in range(200):
        set_grads(ours, theirs)
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < tolerance


def test_unaligned_storage_takes_the_scalar_path():
    storage = torch.randn(10_001, device="cuda")
    offset_view = storage[1:]  # 4-byte offset: not 16-byte aligned
    ours = [torch.nn.Parameter(offset_view.detach())]
    theirs = [offset_view.detach().clone().requires_grad_()]
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for _ in range(20):
        set_grads(ours, theirs)
        opt_ours.step()
        opt_theirs.step()
    assert max_relative_error(ours[0], theirs[0]) < 1e-6


def test_grad_scaler_overflow_changes_nothing():
    ours, _ = twins([(1000,)])
    opt = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    scaler.scale(ours[0].sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert int(opt.state[ours[0]]["step"]) == 1
    before = ours[0].detach().clone()
    step_before = opt.state[ours[0]]["step"].clone()
    opt.zero_grad()
    scaler.scale(ours[0].sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(ours[0], before) and torch.equal(opt.state[ours[0]]["step"], step_before)
    assert int(opt.invalid_steps) == 0  # an AMP skip is not an unusable schedule value


def test_no_host_sync_over_200_steps():
    ours, _ = twins([(1000,), (33, 7)])
    opt = lrfused.FusedScheduledAdamW(ours, lr=1e-3)
    sched = L.CosineAnnealingLR(opt, T_max=100, eta_min=1e-5)
    for p in ours:
        p.grad = torch.randn_like(p)
    opt.step()  # the first step builds the tensor table
    sched.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(200):
            opt.step()
            sched.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # A pending event proves the host ran ahead of the device.
    torch.cuda._sleep(100_000_000)
    event = torch.cuda.Event()
    event.record()
    for _ in range(10):
        opt.step()
        sched.step()
    assert not event.query(), "the host waited for the device"
    torch.cuda.synchronize()


@pytest.mark.parametrize("num_tensors", [1, 1000])
def test_launches_per_step(num_tensors):
    # Two groups and two dtypes: still one launch per optimizer step and scheduler step.
    params = [
        torch.randn(257, device="cuda", dtype=torch.float32 if i % 2 else torch.bfloat16, requires_grad=True)
        for i in range(num_tensors + 1)
    ]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = lrfused.FusedScheduledAdamW([{"params": params[::2]}, {"params": params[1::2], "lr": 3e-4}], lr=1e-3)
    sched = L.StepLR(opt, step_size=3)
    opt.step()
    sched.step()
    torch.cuda.synchronize()
    steps = 10
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            opt.step()
            sched.step()
        torch.cuda.synchronize()
    kernels = device_launches(profiler)
    optimizer_kernels = [e for e in kernels if "adam_step" in e.name]
    assert len(optimizer_kernels) == steps, "one optimizer launch per step"
    assert len(kernels) == steps, f"one launch per step, the scheduler's included, got {len(kernels) / steps}"


def device_launches(profiler):
    """Kernels and copies the device ran (user annotations, which the profiler also lists as
    CUDA events, are not launches)."""
    return [
        e
        for e in profiler.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
        and not getattr(e, "is_user_annotation", False)
        and not e.name.startswith("ProfilerStep")
    ]


def test_non_default_stream():
    ours, theirs = twins([(5000,)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the params were made on the default stream
    with torch.cuda.stream(stream):
        for _ in range(30):
            set_grads(ours, theirs)
            opt_ours.step()
            opt_theirs.step()
    torch.cuda.synchronize()
    assert max_relative_error(ours[0], theirs[0]) < 1e-6


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_device():
    ours, theirs = twins([(5000,), (7, 3)], device="cuda:1")
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    sched = L.ExponentialLR(opt_ours, gamma=0.9)
    sched_theirs = torch.optim.lr_scheduler.ExponentialLR(opt_theirs, gamma=0.9)
    for _ in range(30):
        set_grads(ours, theirs)
        opt_ours.step()
        opt_theirs.step()
        sched.step()
        sched_theirs.step()
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("amsgrad,decoupled,maximize", [(False, True, False), (True, False, True)])
def test_bit_identical_to_the_cpu_kernel(dtype, amsgrad, decoupled, maximize):
    # Both kernels round the same way (no fused multiply-adds on either side, IEEE division and
    # square root, the same float64 scalars): their results must agree bit for bit.
    torch.manual_seed(0)
    shapes = [(1,), (3,), (65536 * 2 + 5,), (4097,), (257, 33)]
    cpu = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    gpu = [p.detach().cuda().requires_grad_() for p in cpu]
    kw = dict(lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled)
    opt_cpu, opt_gpu = lrfused.FusedScheduledAdam(cpu, **kw), lrfused.FusedScheduledAdam(gpu, **kw)
    sched_cpu = L.OneCycleLR(opt_cpu, max_lr=1e-2, total_steps=50)
    sched_gpu = L.OneCycleLR(opt_gpu, max_lr=1e-2, total_steps=50)
    for _ in range(50):
        for a, b in zip(cpu, gpu):
            g = torch.randn_like(a)
            a.grad, b.grad = g, g.cuda()
        opt_cpu.step()
        opt_gpu.step()
        sched_cpu.step()
        sched_gpu.step()
    for a, b in zip(cpu, gpu):
        assert torch.equal(a.detach(), b.detach().cpu())
        assert torch.equal(opt_cpu.state[a]["exp_avg_sq"], opt_gpu.state[b]["exp_avg_sq"].cpu())


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).cuda()


SCHEDULES = {
    "cosine": (
        lambda o: L.CosineAnnealingLR(o, T_max=30, eta_min=1e-4),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30, eta_min=1e-4),
    ),
    "one-cycle (beta1 cycles)": (
        lambda o: L.OneCycleLR(o, max_lr=1e-2, total_steps=260),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=260),
    ),
    "lambda with horizon": (
        lambda o: L.LambdaLR(o, lambda t: 1.0 / (1 + 0.05 * t), horizon=260),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0 / (1 + 0.05 * t)),
    ),
}


@pytest.mark.parametrize("grads_from_graph_pool", [True, False])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_whole_step_graph_replayed_200_times_matches_eager(schedule, grads_from_graph_pool):
    # grads_from_graph_pool: torch's documented whole-network recipe, grads set to None before
    # capture, so backward allocates them from the graph's pool and lrfused builds its table while
    # capturing. Otherwise the grads are zeroed in place and the capture reuses the eager table.
    make_ours, make_theirs = SCHEDULES[schedule]
    model, eager = make_model(0), make_model(0)
    data = [(torch.randn(16, 32, device="cuda"), torch.randn(16, 1, device="cuda")) for _ in range(203)]
    opt = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-2)
    sched = make_ours(opt)
    opt_eager = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    sched_eager = make_theirs(opt_eager)
    static_x, static_y = data[0][0].clone(), data[0][1].clone()

    def train_step():
        if not grads_from_graph_pool:
            opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(static_x), static_y)
        loss.backward()
        opt.step()
        sched.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            if grads_from_graph_pool:
                opt.zero_grad(set_to_none=True)
            static_x.copy_(data[i][0])
            static_y.copy_(data[i][1])
            train_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if grads_from_graph_pool:
        opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        train_step()  # step 4 once replayed
    for i in range(3, 203):
        static_x.copy_(data[i][0])
        static_y.copy_(data[i][1])
        graph.replay()

    for x, y in data:
        opt_eager.zero_grad()
        torch.nn.functional.mse_loss(eager(x), y).backward()
        opt_eager.step()
        sched_eager.step()
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), eager.parameters()):
        assert max_relative_error(a, b) < 1e-5
    assert int(opt.invalid_steps) == 0
    # The replays moved the lr on the device to where the eager run's host lr is.
    assert math.isclose(binding_of(opt).lr_words()[0].item(), sched_eager.get_last_lr()[0], rel_tol=1e-9)


def test_eager_step_after_capture_does_not_read_the_captured_table():
    # A table filled inside a capture holds nothing until the first replay: an eager step with the
    # very same tensors must build its own.
    torch.manual_seed(0)
    ours = [torch.randn(70_000, device="cuda", requires_grad=True), torch.randn(33, device="cuda", requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    for p in ours:
        p.grad = torch.randn_like(p)
    opt.step()  # eager state and table for the first grads
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph, stream=side):
            for p in ours:
                p.grad = torch.zeros_like(p)  # new tensors from the graph's pool: a table built in capture
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    # The reference takes lrfused's params and state after its first step; then both take the
    # same eager step.
    for a, b in zip(ours, theirs):
        b.detach().copy_(a.detach())
    opt_theirs.load_state_dict(opt.state_dict())
    for a, b in zip(ours, theirs):
        g = torch.randn_like(a)
        a.grad.copy_(g)  # the graph-pool grads, filled eagerly
        b.grad = g.clone()
    opt.step()
    opt_theirs.step()
    torch.cuda.synchronize()
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-6


def test_capturing_a_host_computed_step_is_refused_before_anything_changes():
    params = [torch.randn(10, device="cuda", requires_grad=True)]
    opt = lrfused.FusedScheduledAdam(params, lr=1e-2)
    sched = L.LambdaLR(opt, lambda t: 0.9**t)
    params[0].grad = torch.randn_like(params[0])
    opt.step()
    sched.step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="no device form"):
        with torch.cuda.graph(graph):
            sched.step()
    assert sched.last_epoch == 1
    assert binding_of(opt).lr_words().tolist() == [opt.param_groups[0]["lr"]]


def test_replays_past_the_horizon_skip_and_count():
    # No host runs during replays, so the device must handle a clock past the table: the step is
    # skipped, nothing changes, and invalid_steps counts it (eagerly, the host computes those steps).
    params = [torch.randn(1000, device="cuda", requires_grad=True)]
    opt = lrfused.FusedScheduledAdam(params, lr=1e-2)
    sched = L.LambdaLR(opt, lambda t: 0.9**t, horizon=10)
    params[0].grad = torch.randn_like(params[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.step()
            sched.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
        sched.step()
    snapshots = []
    for _ in range(15):
        graph.replay()
        snapshots.append(params[0].detach().clone())
    torch.cuda.synchronize()
    # Replay k reads clock 3 + k: valid for k < 7, skipped for the 8 others.
    assert int(opt.state[params[0]]["step"]) == 3 + 7
    assert int(opt.invalid_steps) == 8
    assert all(torch.equal(s, snapshots[6]) for s in snapshots[7:])
    assert not torch.equal(snapshots[5], snapshots[6])


def test_steps_alternating_between_two_streams():
    ours, theirs = twins([(70_000,), (5,)])
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2, fused=True)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for i in range(20):
        set_grads(ours, theirs)
        stream = streams[i % 2]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            opt_ours.step()
        torch.cuda.current_stream().wait_stream(stream)
        opt_theirs.step()
    torch.cuda.synchronize()
    for a, b in zip(ours, theirs):
        assert error_against_fused(a, b) < 1e-6


# SGD, RMSprop and Adagrad: (lrfused's class, torch's class, arguments, whether OneCycleLR cycles
# their momentum).
OTHER_RULES = {
    "SGD": (lrfused.FusedScheduledSGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True), True),
    "RMSprop": (lrfused.FusedScheduledRMSprop, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True), True),
    "Adagrad": (lrfused.FusedScheduledAdagrad, torch.optim.Adagrad, dict(lr=5e-2, lr_decay=0.01), False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rule", list(OTHER_RULES))
def test_the_other_rules_are_bit_identical_to_the_cpu_kernel(rule, dtype):
    ours_class, _, kwargs, cycles = OTHER_RULES[rule]
    torch.manual_seed(0)
    shapes = [(1,), (3,), (65536 * 2 + 5,), (4097,), (257, 33)]
    cpu = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    gpu = [p.detach().cuda().requires_grad_() for p in cpu]
    opt_cpu, opt_gpu = ours_class(cpu, weight_decay=0.1, **kwargs), ours_class(gpu, weight_decay=0.1, **kwargs)
    sched_cpu = L.OneCycleLR(opt_cpu, max_lr=kwargs["lr"], total_steps=30, cycle_momentum=cycles)
    sched_gpu = L.OneCycleLR(opt_gpu, max_lr=kwargs["lr"], total_steps=30, cycle_momentum=cycles)
    for _ in range(30):
        for a, b in zip(cpu, gpu):
            g = torch.randn_like(a)
            a.grad, b.grad = g, g.cuda()
        opt_cpu.step()
        opt_gpu.step()
        sched_cpu.step()
        sched_gpu.step()
    for a, b in zip(cpu, gpu):
        assert torch.equal(a.detach(), b.detach().cpu())
        for name, value in opt_cpu.state[a].items():
            assert torch.equal(value, opt_gpu.state[b][name].cpu()), name


@pytest.mark.parametrize("rule", list(OTHER_RULES))
def test_the_other_rules_captured_with_their_scheduler_match_torch(rule):
    ours_class, theirs_class, kwargs, cycles = OTHER_RULES[rule]
    model, eager = make_model(0), make_model(0)
    data = [(torch.randn(16, 32, device="cuda"), torch.randn(16, 1, device="cuda")) for _ in range(63)]
    opt = ours_class(model.parameters(), **kwargs)
    sched = L.OneCycleLR(opt, max_lr=kwargs["lr"], total_steps=70, cycle_momentum=cycles)
    opt_eager = theirs_class(eager.parameters(), **kwargs)
    sched_eager = torch.optim.lr_scheduler.OneCycleLR(
        opt_eager, max_lr=kwargs["lr"], total_steps=70, cycle_momentum=cycles
    )
    static_x, static_y = data[0][0].clone(), data[0][1].clone()

    def train_step():
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.mse_loss(model(static_x), static_y).backward()
        opt.step()
        sched.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            static_x.copy_(data[i][0])
            static_y.copy_(data[i][1])
            train_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step()
    for i in range(3, 63):
        static_x.copy_(data[i][0])
        static_y.copy_(data[i][1])
        graph.replay()
    for x, y in data:
        opt_eager.zero_grad()
        torch.nn.functional.mse_loss(eager(x), y).backward()
        opt_eager.step()
        sched_eager.step()
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), eager.parameters()):
        assert max_relative_error(a, b) < 1e-4
    assert math.isclose(binding_of(opt).lr_words()[0].item(), sched_eager.get_last_lr()[0], rel_tol=1e-9)

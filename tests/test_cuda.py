"""The CUDA kernel: parity, no host sync, launches per step, CUDA graphs, streams, devices.

Every test here skips, with its reason, on a machine without a GPU or without lrfused's CUDA
kernels."""

import math

import pytest
import torch

import lrfused
from lrfused import lr_scheduler as L
from conftest import max_relative_error

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not lrfused.has_cuda_kernels(), reason="lrfused was built without its CUDA kernels"),
]


def twins(shapes, dtype=torch.float32, device="cuda"):
    torch.manual_seed(0)
    base = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    return [b.clone().requires_grad_() for b in base], [b.clone().requires_grad_() for b in base]


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
        assert max_relative_error(a, b) < 1e-6


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
    (ours[0].sum() * 1.0).backward()
    scaler.step(opt)
    scaler.update()
    before = ours[0].detach().clone()
    step_before = opt.state[ours[0]]["step"].clone()
    opt.zero_grad()
    (ours[0].sum() * float("inf")).backward()
    scaler.step(opt)
    assert torch.equal(ours[0], before) and torch.equal(opt.state[ours[0]]["step"], step_before)


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
    params = [torch.randn(257, device="cuda", requires_grad=True) for _ in range(num_tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = lrfused.FusedScheduledAdamW(params, lr=1e-3)
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
    kernels = [e for e in profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    optimizer_kernels = [e for e in kernels if "fused_adam" in e.name]
    assert len(optimizer_kernels) == steps, "one optimizer launch per step"
    assert len(kernels) <= 2 * steps, f"at most 2 launches per step (the clock add), got {len(kernels) / steps}"


def test_cuda_graph_replays_match_eager():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).cuda()
    eager = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).cuda()
    eager.load_state_dict(model.state_dict())
    data = [(torch.randn(16, 32, device="cuda"), torch.randn(16, 1, device="cuda")) for _ in range(53)]

    opt = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-2)
    sched = L.CosineAnnealingLR(opt, T_max=20, eta_min=1e-4)
    opt_eager = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    sched_eager = torch.optim.lr_scheduler.CosineAnnealingLR(opt_eager, T_max=20, eta_min=1e-4)

    static_x, static_y = data[0][0].clone(), data[0][1].clone()

    def train_step():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(static_x), static_y)
        loss.backward()
        opt.step()
        sched.step()

    # Warm up on a side stream (as torch's graph documentation asks), 3 real steps.
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
        train_step()  # captured: this is step 4 once replayed
    for i in range(3, 53):
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
    assert math.isclose(sched_eager.get_last_lr()[0], sched._schedules[0](53), rel_tol=1e-9)


def test_non_default_stream():
    ours, theirs = twins([(5000,)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    stream = torch.cuda.Stream()
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

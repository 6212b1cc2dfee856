"""Hostile inputs: each case runs the same input through torch.optim.Adam/AdamW (and torch's
schedulers) and through lrfused. Where torch trains, lrfused trains to the same params and step
counts; where torch refuses, lrfused refuses too, with a message that names the argument; and a
refusal, wherever it happens, leaves params, states, step counters and lrs exactly as they were."""

import copy
import math
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T

import lrfused
from lrfused import _reference, lr_scheduler as L, schedules
from lrfused.finder import LRFinder
from lrfused.optim import binding_of
from helpers import adam_step_one_bucket, assert_same_params, max_relative_error


# --- helpers --------------------------------------------------------------------------------------


def snapshot(opt):
    """Everything a refusal must leave as it was: groups (lrs, betas, ...), params, states."""
    groups = [{k: (v.detach().clone() if isinstance(v, torch.Tensor) else copy.copy(v))
               for k, v in g.items() if k != "params"} for g in opt.param_groups]
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    states = [{k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
              for g in opt.param_groups for p in g["params"]]
    return groups, params, states


def assert_unchanged(opt, before):
    groups, params, states = snapshot(opt)
    old_groups, old_params, old_states = before
    assert len(groups) == len(old_groups)
    for new, old in zip(groups, old_groups):
        assert new.keys() == old.keys()
        for key in new:
            if isinstance(new[key], torch.Tensor):
                assert torch.equal(new[key], old[key]), key
            else:
                assert new[key] is old[key] or new[key] == old[key], key
    for new, old in zip(params, old_params):
        assert torch.equal(new, old)
    for new, old in zip(states, old_states):
        assert new.keys() == old.keys()
        for key in new:
            assert torch.equal(new[key], old[key]) if isinstance(new[key], torch.Tensor) else new[key] == old[key]


def raised(build):
    try:
        build()
    except Exception as error:  # noqa: BLE001 - the type is compared below
        return error
    return None


def same_outcome(ours, theirs):
    """torch refuses => lrfused refuses with the same type (lrfused may refuse more: it says so)."""
    if theirs is not None:
        assert ours is not None, f"torch raised {theirs!r}, lrfused accepted"
        assert isinstance(ours, type(theirs)) or isinstance(theirs, type(ours)), (ours, theirs)


def random_grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for p in params:
        real = torch.view_as_real(p.detach()) if p.is_complex() else p.detach()
        g = torch.randn(real.shape, generator=generator).to(real.dtype)
        grads.append(torch.view_as_complex(g) if p.is_complex() else g)
    return grads


def step_both(ours, theirs, opt_ours, opt_theirs, steps, seed=0):
    for k in range(steps):
        for a, b, g in zip(ours, theirs, random_grads(ours, seed + k)):
            if a.requires_grad and (a.grad is None or a.grad is not g):
                a.grad = g.clone()
            if b.requires_grad:
                b.grad = g.clone()
        opt_ours.step()
        opt_theirs.step()


class _Each:
    """Several torch optimizers stepped as one."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def step(self):
        for opt in self.optimizers:
            opt.step()


def twin(shapes, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    base = [torch.randn(s, dtype=dtype) for s in shapes]
    return [b.clone().requires_grad_() for b in base], [b.clone().requires_grad_() for b in base]


# --- 1. param groups in every form torch takes --------------------------------------------------------


def _group_forms():
    def modules():
        torch.manual_seed(3)
        base = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
        return base, copy.deepcopy(base)

    return {
        "generator": lambda m: m.parameters(),
        "list": lambda m: list(m.parameters()),
        "tuple": lambda m: tuple(m.parameters()),
        "group with a generator": lambda m: [{"params": m[0].parameters(), "lr": 1e-2},
                                             {"params": m[2].parameters()}],
        "group with a tuple": lambda m: [{"params": tuple(m[0].parameters())}, {"params": m[2].parameters()}],
        "group with one tensor": lambda m: [{"params": m[0].weight}, {"params": [m[0].bias]},
                                            {"params": m[2].parameters(), "weight_decay": 0.1}],
        "named generator": lambda m: [p for _, p in m.named_parameters()],
        "map object": lambda m: map(lambda p: p, m.parameters()),
        "filter generator": lambda m: (p for p in m.parameters() if p.dim() == 2),
        "empty group beside others": lambda m: [{"params": []}, {"params": m.parameters()}],
    }, modules


GROUP_FORMS, _modules = _group_forms()


@pytest.mark.parametrize("form", list(GROUP_FORMS))
@pytest.mark.parametrize("adamw", [False, True])
def test_param_groups_in_every_form_train_as_torch(form, adamw):
    ours_model, theirs_model = _modules()
    make = GROUP_FORMS[form]
    opt_ours = (lrfused.FusedScheduledAdamW if adamw else lrfused.FusedScheduledAdam)(make(ours_model), lr=3e-3)
    opt_theirs = (torch.optim.AdamW if adamw else torch.optim.Adam)(make(theirs_model), lr=3e-3, foreach=False)
    assert [len(g["params"]) for g in opt_ours.param_groups] == [len(g["params"]) for g in opt_theirs.param_groups]
    assert sum(len(g["params"]) for g in opt_ours.param_groups) > 0
    x = torch.randn(16, 4)
    for _ in range(4):
        for model, opt in ((ours_model, opt_ours), (theirs_model, opt_theirs)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    before = _modules()[0]
    moved = [not torch.equal(a, b) for a, b in zip(ours_model.parameters(), before.parameters())]
    assert moved == [not torch.equal(a, b) for a, b in zip(theirs_model.parameters(), before.parameters())]
    assert_same_params(list(ours_model.parameters()), list(theirs_model.parameters()))


@pytest.mark.parametrize("bad, error", [
    (lambda m: [{"params": set(m.parameters())}], TypeError),
    (lambda m: [], ValueError),
    (lambda m: [{"params": [m[0].weight]}, {"params": [m[0].weight]}], ValueError),
    (lambda m: [m[0].weight * 2], ValueError),  # not a leaf
    (lambda m: [{"lr": 0.1}], KeyError),
    (lambda m: ["a string"], TypeError),
])
def test_malformed_param_groups_are_refused_as_torch_refuses(bad, error):
    model = _modules()[0]
    theirs = raised(lambda: torch.optim.Adam(bad(model)))
    ours = raised(lambda: lrfused.FusedScheduledAdam(bad(model)))
    assert isinstance(theirs, error) and isinstance(ours, error), (ours, theirs)


def test_add_param_group_refusal_changes_nothing():
    model = _modules()[0]
    opt = lrfused.FusedScheduledAdam([model[0].weight])
    before = snapshot(opt)
    for bad in ({"params": [model[0].weight]}, {"params": {model[2].weight}}, {"params": [model[2].weight], "lr": -1},
                {"params": [torch.zeros(2, dtype=torch.int64)]},
                {"params": [model[2].weight], "betas": (1.0, 0.9)}):
        with pytest.raises((ValueError, TypeError)):
            opt.add_param_group(bad)
        assert_unchanged(opt, before)


# --- 2. dtypes mixed in a group, a param listed twice --------------------------------------------------


MIXES = {
    "fp32+bf16": [torch.float32, torch.bfloat16],
    "fp32+fp16": [torch.float32, torch.float16],
    "fp32+complex64": [torch.float32, torch.complex64],
    "bf16+fp16+fp32": [torch.bfloat16, torch.float16, torch.float32],
    "complex64+bf16": [torch.complex64, torch.bfloat16],
}


@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_group_of_mixed_dtypes_counts_each_step_once(mix, amsgrad):
    torch.manual_seed(1)
    base = [torch.randn(64, dtype=dtype) for dtype in MIXES[mix]]
    ours = [b.clone().requires_grad_() for b in base]
    theirs = [b.clone().requires_grad_() for b in base]
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2, amsgrad=amsgrad)
    # torch keeps a step per param, so one torch optimizer per param is the same optimizer: its
    # fused CPU Adam (float32 opmath, as lrfused's kernels) for reduced precision, its for-loop for
    # complex params, which the fused one refuses.
    per_param = [torch.optim.AdamW([b], lr=1e-2, amsgrad=amsgrad, fused=not b.is_complex(),
                                   foreach=False if b.is_complex() else None) for b in theirs]
    opt_theirs = _Each(per_param)
    step_both(ours, theirs, opt_ours, opt_theirs, 5)
    for a, b, start, one in zip(ours, theirs, base, per_param):
        assert int(opt_ours.state[a]["step"]) == int(one.state[b]["step"]) == 5
        moved_ours, moved_theirs = (a.detach() - start), (b.detach() - start)
        assert moved_theirs.abs().max() > 0
        tolerance = 1e-5 if a.dtype in (torch.float32, torch.complex64) else 0.1
        assert max_relative_error(moved_ours, moved_theirs) < tolerance, a.dtype
    saved = opt_ours.state_dict()
    assert [int(s["step"]) for s in saved["state"].values()] == [5] * len(base)


@pytest.mark.parametrize("listing", [(0, 0), (0, 1, 0), (0, 0, 0), (1, 0, 1, 0), (0, 1, 1)])
@pytest.mark.parametrize("decoupled", [False, True])
def test_a_param_listed_twice_steps_as_torch_for_loop(listing, decoupled):
    ours, theirs = twin([(7,), (3, 4)], seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own "duplicate parameters" warning, raised for both
        opt_ours = lrfused.FusedScheduledAdam([ours[i] for i in listing], lr=1e-2, weight_decay=0.1,
                                              decoupled_weight_decay=decoupled)
        opt_theirs = torch.optim.Adam([theirs[i] for i in listing], lr=1e-2, weight_decay=0.1,
                                      decoupled_weight_decay=decoupled, foreach=False)
    step_both(ours, theirs, opt_ours, opt_theirs, 4)
    for i in set(listing):
        assert int(opt_ours.state[ours[i]]["step"]) == int(opt_theirs.state[theirs[i]]["step"]) == 4 * listing.count(i)
    assert_same_params(ours, theirs)


def test_mixed_dtypes_after_a_checkpoint_keep_their_own_counts():
    ours, theirs = twin([(5,), (5,)])
    ours[1].data = ours[1].data.to(torch.bfloat16)
    theirs[1].data = theirs[1].data.to(torch.bfloat16)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    step_both(ours, theirs, opt_ours, opt_theirs, 2)
    fresh = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    fresh.load_state_dict(opt_theirs.state_dict())
    step_both(ours, theirs, fresh, opt_theirs, 3, seed=10)
    assert [int(fresh.state[p]["step"]) for p in ours] == [5, 5]


# --- 3. the lr: tensors and numbers at construction ----------------------------------------------------


BAD_HYPERPARAMETERS = [
    dict(lr=-1.0), dict(lr=float("nan")), dict(lr=torch.tensor(-1.0)), dict(lr=torch.tensor(float("nan"))),
    dict(lr=torch.tensor([1e-3, 1e-3])), dict(lr="0.1"), dict(lr=None),
    dict(betas=(1.0, 0.999)), dict(betas=(-0.1, 0.999)), dict(betas=(0.9, 1.0)), dict(betas=(0.9, -1e-9)),
    dict(betas=(float("nan"), 0.999)), dict(betas=(torch.tensor(1.5), 0.999)), dict(betas=(0.9,)),
    dict(eps=-1e-8), dict(eps=float("nan")), dict(weight_decay=-0.1), dict(weight_decay=float("nan")),
]


@pytest.mark.parametrize("kwargs", BAD_HYPERPARAMETERS, ids=repr)
@pytest.mark.parametrize("where", ["constructor", "add_param_group"])
def test_hyperparameters_torch_refuses_are_refused(kwargs, where):
    def build(cls):
        if where == "constructor":
            return cls([torch.zeros(3, requires_grad=True)], **kwargs)
        opt = cls([torch.zeros(3, requires_grad=True)])
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **kwargs})
        return opt

    # torch checks these in its constructor only (its add_param_group takes them and trains with
    # them); lrfused refuses them wherever they come in.
    theirs = raised(lambda: torch.optim.Adam([torch.zeros(3, requires_grad=True)], **kwargs))
    ours = raised(lambda: build(lrfused.FusedScheduledAdam))
    assert theirs is not None
    (name, value), = kwargs.items()
    words = {"lr": ("learning rate", "Tensor lr"), "betas": ("beta",), "eps": ("epsilon",),
             "weight_decay": ("weight_decay",)}[name]
    assert isinstance(ours, (ValueError, TypeError)) and any(w in str(ours) for w in words), ours
    if "1-element" in str(theirs):
        # torch's own tests match this message ("Tensor lr must be 1-element"): it is kept word for word.
        assert str(ours).startswith(str(theirs)), (ours, theirs)


@pytest.mark.parametrize("kwargs", [dict(lr=float("inf")), dict(eps=float("inf")), dict(weight_decay=float("inf")),
                                    dict(lr=torch.tensor(float("inf")))], ids=repr)
def test_non_finite_hyperparameters_torch_takes_are_refused_by_name(kwargs):
    # torch accepts these and trains to infinities or NaNs; lrfused refuses them, naming them.
    (name, value), = kwargs.items()
    with pytest.raises(ValueError, match="inf"):
        lrfused.FusedScheduledAdam([torch.zeros(3, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("lr", [torch.tensor(1e-2), torch.tensor(0.0), torch.tensor(3e-3, dtype=torch.float64)])
def test_a_tensor_lr_torch_takes_trains_as_torch(lr):
    ours, theirs = twin([(10,), (2, 3)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=lr.clone())
    opt_theirs = torch.optim.Adam(theirs, lr=lr.clone(), foreach=False)
    step_both(ours, theirs, opt_ours, opt_theirs, 3)
    opt_ours.param_groups[0]["lr"].fill_(5e-3)
    opt_theirs.param_groups[0]["lr"].fill_(5e-3)
    step_both(ours, theirs, opt_ours, opt_theirs, 3, seed=5)
    assert_same_params(ours, theirs)


# --- 4. checkpoints: missing, fractional, negative steps; layouts --------------------------------------


def _trained(steps=2, shapes=((4,), (2, 3))):
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    opt = lrfused.FusedScheduledAdam(params, lr=1e-2)
    for k in range(steps):
        for p, g in zip(params, random_grads(params, k)):
            p.grad = g
        opt.step()
    return params, opt


def _edit(change):
    def edit(saved):
        change(saved["state"][0])
        return saved
    return edit


BAD_CHECKPOINTS = {
    "no step": _edit(lambda s: s.pop("step")),
    "no exp_avg": _edit(lambda s: s.pop("exp_avg")),
    "no exp_avg_sq": _edit(lambda s: s.pop("exp_avg_sq")),
    "step 2.5": _edit(lambda s: s.update(step=torch.tensor(2.5))),
    "step -1": _edit(lambda s: s.update(step=torch.tensor(-1.0))),
    "step nan": _edit(lambda s: s.update(step=torch.tensor(float("nan")))),
    "step inf": _edit(lambda s: s.update(step=float("inf"))),
    "step of two elements": _edit(lambda s: s.update(step=torch.tensor([1.0, 2.0]))),
    "step a string": _edit(lambda s: s.update(step="2")),
    "exp_avg of another shape": _edit(lambda s: s.update(exp_avg=torch.zeros(5))),
    "lr -1": lambda saved: (saved["param_groups"][0].update(lr=-1.0), saved)[1],
    "betas out of range": lambda saved: (saved["param_groups"][0].update(betas=(0.9, 1.5)), saved)[1],
    "another group count": lambda saved: (saved["param_groups"].append(dict(saved["param_groups"][0])), saved)[1],
    "another param count": lambda saved: (saved["param_groups"][0].update(params=[0]), saved)[1],
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_before_anything_changes(case):
    params, opt = _trained()
    saved = BAD_CHECKPOINTS[case](copy.deepcopy(opt.state_dict()))
    target_params, target = _trained(steps=3)
    before = snapshot(target)
    with pytest.raises((ValueError, TypeError, KeyError)):
        target.load_state_dict(saved)
    assert_unchanged(target, before)
    for p, g in zip(target_params, random_grads(target_params, 9)):
        p.grad = g
    target.step()
    assert all(int(target.state[p]["step"]) == 4 for p in target_params)


@pytest.mark.parametrize("step", [torch.tensor(3.0), torch.tensor(3), 3, 3.0, torch.tensor(3.0, dtype=torch.float64)],
                         ids=repr)
def test_whole_steps_in_any_form_torch_saves_are_loaded(step):
    ours, theirs = twin([(6,)])
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    step_both(ours, theirs, opt_ours, opt_theirs, 3)
    saved = copy.deepcopy(opt_theirs.state_dict())  # its tensors are torch's own otherwise
    saved["state"][0]["step"] = step
    opt_ours.load_state_dict(saved)
    step_both(ours, theirs, opt_ours, opt_theirs, 2, seed=20)
    assert int(opt_ours.state[ours[0]]["step"]) == 5
    assert_same_params(ours, theirs)


def _conv_pair():
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(3, 4, 3)
    return conv, copy.deepcopy(conv)


@pytest.mark.parametrize("when", ["before loading", "after loading", "mid-training"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_model_converted_to_channels_last_trains_as_torch(when, amsgrad):
    ours, theirs = _conv_pair()
    opt_ours = lrfused.FusedScheduledAdam(ours.parameters(), lr=1e-2, amsgrad=amsgrad)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, amsgrad=amsgrad, foreach=False)
    x = torch.randn(2, 3, 8, 8)

    def train(steps):
        for _ in range(steps):
            for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                opt.zero_grad()
                model(x.to(memory_format=torch.channels_last)).square().mean().backward()
                opt.step()

    train(2)
    if when == "mid-training":
        ours.to(memory_format=torch.channels_last)
        theirs.to(memory_format=torch.channels_last)
    else:
        saved = copy.deepcopy(opt_theirs.state_dict())  # its tensors are torch's own otherwise
        if when == "before loading":
            ours.to(memory_format=torch.channels_last)
            theirs.to(memory_format=torch.channels_last)
        opt_ours = lrfused.FusedScheduledAdam(ours.parameters(), lr=1e-2, amsgrad=amsgrad)
        opt_ours.load_state_dict(saved)
        if when == "after loading":
            ours.to(memory_format=torch.channels_last)
            theirs.to(memory_format=torch.channels_last)
    train(3)
    assert ours.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_params(list(ours.parameters()), list(theirs.parameters()))


@pytest.mark.parametrize("make", [
    lambda: torch.randn(6, 4).t(),                    # dense, transposed
    lambda: torch.randn(12)[::2],                     # not dense: a strided view
    lambda: torch.randn(4, 6)[:, 1:5],                # not dense: a slice
    lambda: torch.randn(2, 3, 4, 5).permute(0, 2, 3, 1),
    lambda: torch.randn(0, 3),                        # empty
    lambda: torch.randn(()),                          # zero-dim
], ids=["transposed", "strided", "sliced", "permuted", "empty", "scalar"])
def test_params_of_any_layout_train_as_torch(make):
    torch.manual_seed(5)
    base = make()
    # The param keeps the strides it was made with (clone() of a view that is not dense would not).
    ours = [torch.empty_strided(base.shape, base.stride()).copy_(base).requires_grad_()]
    theirs = [base.detach().clone().requires_grad_()]
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    step_both(ours, theirs, opt_ours, opt_theirs, 3)
    assert ours[0].stride() == base.stride()
    assert_same_params(ours, theirs)


def test_grads_in_another_layout_than_their_param_train_as_torch():
    ours, theirs = twin([(2, 3, 4, 5)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for k in range(3):
        g = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
        ours[0].grad, theirs[0].grad = g.clone(memory_format=torch.preserve_format), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert_same_params(ours, theirs)


# --- 5/13. what cannot be updated is refused at construction -------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_params_the_kernels_cannot_update_are_refused_at_construction(dtype):
    p = torch.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype)):
        lrfused.FusedScheduledAdam([p])
    opt = lrfused.FusedScheduledAdam([torch.zeros(3, requires_grad=True)])
    before = snapshot(opt)
    with pytest.raises(TypeError, match=str(dtype)):
        opt.add_param_group({"params": [p]})
    assert_unchanged(opt, before)


def test_a_param_made_float64_after_construction_steps_in_float64():
    # model.double() after the optimizer was built: torch steps the params in their new dtype.
    torch.manual_seed(0)
    made = [[torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)] for _ in range(2)]
    made[1] = [p.detach().clone().requires_grad_() for p in made[0]]
    ours, theirs = made
    opt = lrfused.FusedScheduledAdam([{"params": [ours[0]]}, {"params": [ours[1]]}])
    opt_theirs = torch.optim.Adam([{"params": [theirs[0]]}, {"params": [theirs[1]]}])
    for params, optimizer in ((ours, opt), (theirs, opt_theirs)):
        params[1].data = params[1].data.double()
        params[0].grad, params[1].grad = torch.ones(3), torch.ones(3, dtype=torch.float64)
        optimizer.step()
    assert ours[1].dtype == torch.float64 and opt.state[ours[1]]["exp_avg"].dtype == torch.float64
    assert torch.allclose(ours[1], theirs[1], rtol=1e-12, atol=0) and torch.equal(ours[0], theirs[0])


# --- 8. a bad value in a later group is refused before the first group moves ---------------------------


LATE_BAD_VALUES = {
    "betas (0.9, 1.0)": ("betas", (0.9, 1.0)),
    "betas (nan, 0.9)": ("betas", (float("nan"), 0.9)),
    "betas a string": ("betas", "ab"),
    "betas three": ("betas", (0.9, 0.99, 0.999)),
    "eps -1": ("eps", -1.0),
    "eps nan": ("eps", float("nan")),
    "eps None": ("eps", None),
    "weight_decay -1": ("weight_decay", -1.0),
    "weight_decay nan": ("weight_decay", float("nan")),
    "weight_decay a string": ("weight_decay", "0.1"),
}


@pytest.mark.parametrize("case", list(LATE_BAD_VALUES))
@pytest.mark.parametrize("groups, bad_group", [(2, 1), (3, 2), (3, 1)])
def test_a_bad_value_in_a_later_group_changes_no_group(case, groups, bad_group):
    params = [torch.randn(4, requires_grad=True) for _ in range(groups)]
    opt = lrfused.FusedScheduledAdam([{"params": [p]} for p in params], lr=1e-2)
    for p, g in zip(params, random_grads(params, 0)):
        p.grad = g
    opt.step()
    key, value = LATE_BAD_VALUES[case]
    good = opt.param_groups[bad_group][key]
    opt.param_groups[bad_group][key] = value
    before = snapshot(opt)
    with pytest.raises((ValueError, TypeError)) as error:
        opt.step()
    assert f"{bad_group}" in str(error.value) or key.split("_")[0] in str(error.value).lower() or "beta" in str(
        error.value)
    assert_unchanged(opt, before)
    opt.param_groups[bad_group][key] = good
    opt.step()  # a retry steps every group once
    assert [int(opt.state[p]["step"]) for p in params] == [2] * groups


# --- 9. refused scheduler constructors leave everything as it was --------------------------------------


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


@pytest.mark.parametrize("case", list(REFUSED_SCHEDULERS))
@pytest.mark.parametrize("driven", [False, True], ids=["alone", "beside a scheduler"])
def test_a_refused_scheduler_constructor_leaves_everything_as_it_was(case, driven):
    ours, theirs = twin([(5,), (3,)], seed=6)
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


# --- 12. arguments torch accepts, with torch's names in errors -----------------------------------------


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
    "CyclicLR exp_range": lambda M, o: M.CyclicLR(o, 1e-3, 1e-2, step_size_up=3, mode="exp_range", gamma=0.9,
                                                  cycle_momentum=False),
    "OneCycleLR epochs": lambda M, o: M.OneCycleLR(o, 0.05, epochs=2, steps_per_epoch=5),
    "OneCycleLR linear three-phase": lambda M, o: M.OneCycleLR(o, 0.05, total_steps=12, anneal_strategy="linear",
                                                               three_phase=True),
    "LambdaLR negative factor": lambda M, o: M.LambdaLR(o, lambda e: 1.0 - 0.3 * e),
}


@pytest.mark.parametrize("case", list(ACCEPTED_SCHEDULERS))
@pytest.mark.parametrize("epochs", ["steps", "explicit epochs"])
def test_arguments_torch_accepts_are_accepted_and_followed(case, epochs):
    ours, theirs = twin([(5,), (3,)], seed=7)
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s_ours = ACCEPTED_SCHEDULERS[case](L, opt_ours)
        s_theirs = ACCEPTED_SCHEDULERS[case](T, opt_theirs)
        for k in range(8):
            step_both(ours, theirs, opt_ours, opt_theirs, 1, seed=k)
            epoch = None if epochs == "steps" or case.startswith(("OneCycleLR", "CyclicLR")) else [1, 2, 5, 3, 3, 0, 7, 2][k]
            error_theirs = raised(lambda: s_theirs.step(epoch))
            error_ours = raised(lambda: s_ours.step(epoch))
            same_outcome(error_ours, error_theirs)
            if error_theirs is not None:  # torch fails too (ConstantLR's factor 0 divides by zero)
                return
            assert s_ours.get_last_lr() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12)
    binding_of(opt_ours).absorb(opt_ours.param_groups)
    assert binding_of(opt_ours).lr_words().tolist() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12)
    assert_same_params(ours, theirs)


@pytest.mark.parametrize("epoch", [-1, -3, 0])
@pytest.mark.parametrize("make", ["StepLR", "CosineAnnealingLR", "ExponentialLR", "LambdaLR", "MultiStepLR"])
def test_explicit_negative_epochs_follow_torch(epoch, make):
    build = {"StepLR": lambda M, o: M.StepLR(o, 2, 0.5), "CosineAnnealingLR": lambda M, o: M.CosineAnnealingLR(o, 6),
             "ExponentialLR": lambda M, o: M.ExponentialLR(o, 0.7), "LambdaLR": lambda M, o: M.LambdaLR(o, lambda e: e + 2),
             "MultiStepLR": lambda M, o: M.MultiStepLR(o, [1, 2])}[make]
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


@pytest.mark.parametrize("build, names", [
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
])
def test_errors_name_torch_arguments(build, names):
    opt = lrfused.FusedScheduledAdam([torch.zeros(2, requires_grad=True)], lr=0.1)
    error = raised(lambda: build(L, opt))
    assert error is not None and names in str(error), error
    for internal in ("period", "floor", "init", "Step(", "Cosine("):
        assert internal not in str(error), error


# --- 6. the LR finder: NaN losses, ramps that go down -------------------------------------------------


def _finder_run(bad_at, bad_value, num_iter=40):
    torch.manual_seed(8)
    model = torch.nn.Linear(4, 1)
    opt = lrfused.FusedScheduledAdam(model.parameters(), lr=1e-4)
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]
    calls = []

    def train_step(m, batch):
        calls.append(1)
        loss = torch.nn.functional.mse_loss(m(batch[0]), batch[1])
        return loss * bad_value if len(calls) - 1 >= bad_at else loss

    finder = LRFinder(model, opt)
    history = finder.range_test(data, end_lr=1.0, num_iter=num_iter, train_step=train_step, progress=False,
                                check_every=5)
    return finder, history, len(calls)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("bad_at", [0, 1, 13, 39])
def test_a_nan_or_infinite_loss_is_divergence(bad_value, bad_at):
    finder, history, calls = _finder_run(bad_at, bad_value)
    assert len(history["loss"]) == bad_at and all(math.isfinite(x) for x in history["loss"])
    assert calls <= min(40, (bad_at // 5 + 1) * 5)  # stopped at the first check after it
    if bad_at < 3:
        with pytest.raises(ValueError, match="too few"):
            finder.suggestion(skip_start=0, skip_end=0)
    else:
        assert math.isfinite(finder.suggestion(skip_start=0, skip_end=0))


@pytest.mark.parametrize("optimizer", ["lrfused", "torch"])
@pytest.mark.parametrize("lr, start_lr, end_lr", [(2.0, None, 1.0), (1.0, None, 1.0), (1e-3, 0.5, 0.1)])
def test_a_ramp_that_does_not_go_up_is_refused(optimizer, lr, start_lr, end_lr):
    model = torch.nn.Linear(2, 1)
    opt = (lrfused.FusedScheduledAdam if optimizer == "lrfused" else torch.optim.SGD)(model.parameters(), lr=lr)
    finder = LRFinder(model, opt, torch.nn.functional.mse_loss)
    with pytest.raises(ValueError, match="end_lr"):
        finder.range_test([(torch.randn(4, 2), torch.randn(4, 1))], start_lr=start_lr, end_lr=end_lr, num_iter=5,
                          progress=False)
    assert opt.param_groups[0]["lr"] == lr


# --- 7. the reference refuses what the kernels refuse ---------------------------------------------------


def _op_args(op_kwargs):
    return dict(params=[torch.zeros(3), torch.zeros(2)], grads=[torch.ones(3), torch.ones(2)],
                exp_avgs=[torch.zeros(3), torch.zeros(2)], exp_avg_sqs=[torch.zeros(3), torch.zeros(2)],
                max_exp_avg_sqs=[], step=torch.tensor(0),
                program=torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64), **op_kwargs)


BAD_OP_ARGS = {
    "beta1 nan": lambda a: a.update(beta1=float("nan")),
    "beta2 -0.1": lambda a: a.update(beta2=-0.1),
    "beta2 1": lambda a: a.update(beta2=1.0),
    "eps nan": lambda a: a.update(eps=float("nan")),
    "weight_decay -1": lambda a: a.update(weight_decay=-1.0),
    "grads short": lambda a: a["grads"].pop(),
    "amsgrad without max": lambda a: a.update(amsgrad=True),
    "grad shape": lambda a: a["grads"].__setitem__(1, torch.ones(3)),
    "state dtype": lambda a: a["exp_avgs"].__setitem__(0, torch.zeros(3, dtype=torch.bfloat16)),
    "param dtype": lambda a: a["params"].__setitem__(1, torch.zeros(2, dtype=torch.float16)),
    "float64 params": lambda a: a.update(params=[p.double() for p in a["params"]]),
    "int params": lambda a: a.update(params=[p.int() for p in a["params"]]),
    "step float": lambda a: a.update(step=torch.tensor(0.0)),
    "step two elements": lambda a: a.update(step=torch.zeros(2, dtype=torch.int64)),
    "program float32": lambda a: a.update(program=a["program"].float()),
    "program malformed": lambda a: a.update(program=torch.tensor([99.0, 3.0, 1.0], dtype=torch.float64)),
    "grad_scale float64": lambda a: a.update(grad_scale=torch.ones(1, dtype=torch.float64)),
    "found_inf two": lambda a: a.update(found_inf=torch.zeros(2)),
    "invalid_steps float": lambda a: a.update(invalid_steps=torch.zeros(())),
}


def _call_one_bucket(op, args):
    positional = [args.pop(k) for k in ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "step",
                                        "program")]
    adam_step_one_bucket(op, *positional, **args)
    return positional


@pytest.mark.parametrize("case", list(BAD_OP_ARGS))
@pytest.mark.parametrize("op", ["compiled", "reference"])
def test_the_reference_and_the_kernels_refuse_the_same_calls(case, op, op_kwargs):
    if op == "compiled" and not lrfused.has_kernels():
        pytest.skip("the compiled library is not loaded")
    args = _op_args(op_kwargs)
    BAD_OP_ARGS[case](args)
    tensors = list(args["params"]) + list(args["exp_avgs"]) + list(args["exp_avg_sqs"]) + [args["step"]]
    before = [t.clone() for t in tensors]
    call = torch.ops.lrfused.adam_step_ if op == "compiled" else _reference.adam_step_
    with pytest.raises(RuntimeError, match="adam_step_: "):
        _call_one_bucket(call, args)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


def test_the_reference_matches_the_kernels_on_a_good_call(op_kwargs):
    if not lrfused.has_kernels():
        pytest.skip("the compiled library is not loaded")
    results = []
    for call in (torch.ops.lrfused.adam_step_, _reference.adam_step_):
        args = _op_args(op_kwargs)
        args["grads"] = random_grads(args["params"], 1)
        results.append(_call_one_bucket(call, args)[0])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert not torch.equal(results[0][0], torch.zeros(3)), "the good call moved the params"


@pytest.mark.parametrize("library, fragment", [(None, "no compiled extension"),
                                               (b"not a library", "failed to load: ")])
def test_the_fallback_warning_names_the_cause(tmp_path, library, fragment):
    # A copy of the package without its library (an install that never built it), or with a
    # broken one; Python's own message would say "partially initialized module" for both. (Under
    # another name: an editable install would find the real library for "lrfused._C".)
    import shutil

    source = lrfused.__path__[0]
    copy_dir = tmp_path / "lrfused_copy"
    shutil.copytree(source, copy_dir, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    if library is not None:
        (copy_dir / "_C.abi3.so").write_bytes(library)
    code = ("import sys, warnings\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import lrfused_copy\n"
            "assert not lrfused_copy.has_kernels()\n"
            "print('|'.join(str(w.message) for w in caught))\n")
    env = dict(os.environ, LRFUSED_REQUIRE_KERNELS="0")  # CI's CUDA check sets it to 1
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert fragment in result.stdout and "partially initialized" not in result.stdout, result.stdout


# --- 10. copies and pickles step as the original ---------------------------------------------------------


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))], ids=["deepcopy", "pickle"])
@pytest.mark.parametrize("kwargs", [dict(), dict(schedule=schedules.cosine_decay(20)), dict(check_finite=True),
                                    dict(amsgrad=True, weight_decay=0.1)], ids=repr)
def test_a_copied_optimizer_steps_as_the_original(copier, kwargs):
    params = [torch.randn(5, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    opt = lrfused.FusedScheduledAdamW(params, lr=1e-2, **kwargs)
    for p, g in zip(params, random_grads(params, 0)):
        p.grad = g
    opt.step()
    clone = copier({"params": params, "opt": opt})
    for k in range(3):
        grads = random_grads(params, 10 + k)
        for p, q, g in zip(params, clone["params"], grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        clone["opt"].step()
    for p, q in zip(params, clone["params"]):
        assert torch.equal(p, q)
    assert clone["opt"]._schedule == opt._schedule or repr(clone["opt"]._schedule) == repr(opt._schedule)
    assert clone["opt"]._check_finite == opt._check_finite


# --- more of the same kind --------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [(1, 0, 1), (0, 1, 1), (1, 1, 0), (0, 0, 0)])
def test_params_whose_grads_come_and_go_count_as_torch(pattern):
    ours, theirs = twin([(3,), (4,), (2,)], seed=9)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for k in range(4):
        for i, (a, b, g) in enumerate(zip(ours, theirs, random_grads(ours, k))):
            has = pattern[i] or k % 2 == 0
            a.grad, b.grad = (g.clone(), g.clone()) if has else (None, None)
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        assert (a in opt_ours.state) == (b in opt_theirs.state)
        if b in opt_theirs.state:
            assert int(opt_ours.state[a]["step"]) == int(opt_theirs.state[b]["step"])
    assert_same_params(ours, theirs)


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(maximize=True, amsgrad=True), dict(betas=(0.0, 0.0)),
                                    dict(betas=(0.0, 0.5), eps=0.0), dict(weight_decay=1.0, amsgrad=True),
                                    dict(eps=1.0, maximize=True)], ids=repr)
@pytest.mark.parametrize("adamw", [False, True])
def test_edge_hyperparameters_train_as_torch(kwargs, adamw):
    ours, theirs = twin([(9,), (3, 3)], seed=10)
    opt_ours = (lrfused.FusedScheduledAdamW if adamw else lrfused.FusedScheduledAdam)(ours, **kwargs)
    opt_theirs = (torch.optim.AdamW if adamw else torch.optim.Adam)(theirs, foreach=False, **kwargs)
    step_both(ours, theirs, opt_ours, opt_theirs, 4)
    assert_same_params(ours, theirs)


@pytest.mark.parametrize("grad", [lambda s: torch.zeros(s), lambda s: torch.full(s, 1e30), lambda s: torch.full(s, 1e-30),
                                  lambda s: torch.full(s, float("nan")), lambda s: torch.full(s, float("inf"))],
                         ids=["zeros", "huge", "tiny", "nan", "inf"])
def test_extreme_gradients_give_torch_results(grad):
    ours, theirs = twin([(6,)], seed=11)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for _ in range(2):
        g = grad((6,))
        ours[0].grad, theirs[0].grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert torch.allclose(ours[0], theirs[0], rtol=1e-5, atol=0, equal_nan=True)
    assert torch.equal(ours[0].isnan(), theirs[0].isnan())


def test_a_tensor_beta_written_after_construction_is_followed():
    ours, theirs = twin([(5,)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    step_both(ours, theirs, opt_ours, opt_theirs, 1)
    opt_ours.param_groups[0]["betas"] = (torch.tensor(0.8), 0.99)
    opt_theirs.param_groups[0]["betas"] = (torch.tensor(0.8), 0.99)
    step_both(ours, theirs, opt_ours, opt_theirs, 3, seed=4)
    assert_same_params(ours, theirs)


def test_a_float_lr_written_as_nan_is_refused_before_any_change():
    params = [torch.randn(3, requires_grad=True) for _ in range(2)]
    opt = lrfused.FusedScheduledAdam([{"params": [p]} for p in params])
    for p, g in zip(params, random_grads(params, 0)):
        p.grad = g
    opt.param_groups[1]["lr"] = float("nan")
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
        opt.step()
    assert_unchanged(opt, before)


# --- a learning rate that is not finite names what the user passed ---------------------------------------


NON_FINITE_SCHEDULERS = {
    "CyclicLR max_lr": (lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=float("nan")), r"CyclicLR: invalid max_lr: nan"),
    "CyclicLR base_lr list": (lambda o: L.CyclicLR(o, base_lr=[1e-3, float("inf")], max_lr=1e-2),
                              r"CyclicLR: invalid base_lr: inf \(param_groups\[1\]\)"),
    "CyclicLR scale_fn": (lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, scale_fn=lambda x: float("nan")),
                          r"CyclicLR.step\(\) computed lr=nan for param_groups\[0\] \(from scale_fn\(1\) = nan\)"),
    "OneCycleLR max_lr": (lambda o: L.OneCycleLR(o, max_lr=float("nan"), total_steps=10),
                          r"OneCycleLR: invalid max_lr: nan"),
    "LambdaLR": (lambda o: L.LambdaLR(o, lambda t: float("nan")),
                 r"LambdaLR.step\(\) computed lr=nan for param_groups\[0\]"),
}


@pytest.mark.parametrize("name", list(NON_FINITE_SCHEDULERS))
def test_a_scheduler_argument_that_is_not_finite_is_named(name):
    build, message = NON_FINITE_SCHEDULERS[name]
    opt = lrfused.FusedScheduledAdam([{"params": [torch.zeros(2, requires_grad=True)]},
                                      {"params": [torch.zeros(3, requires_grad=True)]}])
    before = snapshot(opt)
    with pytest.raises(ValueError, match=message):
        build(opt)
    assert_unchanged(opt, before)
    # torch takes these and trains with a NaN lr; on a torch optimizer lrfused's class is torch's.
    build(torch.optim.Adam([{"params": [torch.zeros(2, requires_grad=True)]},
                            {"params": [torch.zeros(3, requires_grad=True)]}]))

"""torch.optim.Optimizer's contract as torch's own optimizer tests exercise it: checkpoints from
older torch versions, entries of optimizer.state that are not a param's, params on the meta device."""

import copy
import pickle

import pytest
import torch

import lrfused
from helpers import max_relative_error

# Param-group keys torch added after the first Adam checkpoints were written.
NEWER_KEYS = ["maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"]
PAIRS = {"Adam": (lrfused.FusedScheduledAdam, torch.optim.Adam), "AdamW": (lrfused.FusedScheduledAdamW, torch.optim.AdamW)}


def _stepped(cls, params, steps=3):
    opt = cls(params, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("missing", NEWER_KEYS + ["all"])
@pytest.mark.parametrize("source", ["lrfused", "torch"])
def test_a_checkpoint_without_newer_group_keys_loads_with_torchs_defaults(pair, missing, source):
    ours_cls, torch_cls = PAIRS[pair]
    torch.manual_seed(0)
    base = [torch.randn(4, 3), torch.randn(5)]
    writer = _stepped(ours_cls if source == "lrfused" else torch_cls, [p.clone().requires_grad_() for p in base])
    checkpoint = writer.state_dict()
    for group in checkpoint["param_groups"]:
        for key in NEWER_KEYS if missing == "all" else [missing]:
            del group[key]
    ours_params = [p.clone().requires_grad_() for p in base]
    theirs_params = [p.clone().requires_grad_() for p in base]
    ours, theirs = ours_cls(ours_params), torch_cls(theirs_params)
    # Each its own copy: load_state_dict keeps the tensors it is given (torch's does too).
    ours.load_state_dict(copy.deepcopy(checkpoint))
    theirs.load_state_dict(copy.deepcopy(checkpoint))
    for ours_group, theirs_group in zip(ours.param_groups, theirs.param_groups):
        assert {k: v for k, v in ours_group.items() if k != "params"} == \
               {k: v for k, v in theirs_group.items() if k != "params"}
    for _ in range(3):
        for a, b in zip(ours_params, theirs_params):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    for a, b in zip(ours_params, theirs_params):
        assert max_relative_error(a, b) < 1e-6


def test_an_old_pickled_optimizer_gets_the_newer_keys():
    # An optimizer pickled before a key existed: unpickling runs __setstate__, as torch's does.
    opt = lrfused.FusedScheduledAdamW([torch.zeros(3, requires_grad=True)])
    del opt.param_groups[0]["maximize"], opt.param_groups[0]["decoupled_weight_decay"]
    loaded = pickle.loads(pickle.dumps(opt))
    assert loaded.param_groups[0]["maximize"] is False
    assert loaded.param_groups[0]["decoupled_weight_decay"] is True  # AdamW's, as torch.optim.AdamW says


@pytest.mark.parametrize("value", [1, "a note", [1, 2], None])
def test_an_entry_of_the_state_that_is_not_a_params_is_kept_as_torch_keeps_it(value):
    # A framework or a state-dict hook may write optimizer.state["key"] = value.
    results = []
    for cls in (lrfused.FusedScheduledAdam, torch.optim.Adam):
        torch.manual_seed(0)
        p = torch.randn(3, requires_grad=True)
        opt = _stepped(cls, [p])
        opt.state["key"] = value
        saved = opt.state_dict()
        results.append(saved["state"]["key"])
        fresh = cls([torch.randn(3, requires_grad=True)])
        fresh.load_state_dict(saved)
        assert fresh.state["key"] == value
        fresh.param_groups[0]["params"][0].grad = torch.ones(3)
        fresh.step()
    assert results[0] == results[1] == value


def test_params_on_the_meta_device_are_refused_at_construction_with_a_clear_message():
    # torch.optim.Adam(fused=True) refuses them (at its first step); lrfused, always fused, refuses
    # them at construction, before anything is made, naming the param.
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[0\]: it is on the meta device"):
        lrfused.FusedScheduledAdam([meta])
    torch_fused = torch.optim.Adam([meta], fused=True)
    meta.grad = torch.zeros(2, device="meta")
    with pytest.raises(RuntimeError, match="fused=True"):
        torch_fused.step()
    opt = lrfused.FusedScheduledAdam([torch.zeros(2, requires_grad=True)])
    with pytest.raises(RuntimeError, match=r"param_groups\[1\]\['params'\]\[0\]: it is on the meta device"):
        opt.add_param_group({"params": [meta]})
    assert len(opt.param_groups) == 1

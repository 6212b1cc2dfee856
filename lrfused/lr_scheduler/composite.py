"""Schedulers made of schedulers: SequentialLR (one child at a time, chosen on the device) and
ChainedScheduler (every child each step, each on the lr the previous one left)."""

from __future__ import annotations

from torch.optim import lr_scheduler as torch_schedulers

from .. import _rules, _torch_compat
from ..optim import binding_of
from ._device import OnDevice, children_on_host, drives_device, unchanged_if_refused, unwrap_optimizer
from ._docs import torch_doc_and_note


@torch_doc_and_note
class SequentialLR(OnDevice, torch_schedulers.SequentialLR):
    """torch's SequentialLR: child ``i`` from ``milestones[i-1]`` on, restarted at its closed form.

    The children are stepped by torch's code on the host; on the device one rule per step
    picks the child from SequentialLR's clock and applies its rule, so a captured ``step()``
    crosses milestones in its replays. A child without a device form (a LambdaLR without
    ``horizon=``, a stock torch scheduler) makes every step host-computed.
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "SequentialLR")
        # torch's constructor steps the first child once more.
        with unchanged_if_refused(optimizer), children_on_host():
            torch_schedulers.SequentialLR.__init__(self, optimizer, schedulers, milestones, last_epoch)
        if drives_device(optimizer):
            # torch's constructor wrote the groups from the host: the device follows.
            binding_of(optimizer, "SequentialLR").write(optimizer.param_groups)

    def _leaf_rule(self, index):
        children = []
        for child in _torch_compat.sequential_children(self):
            if not isinstance(child, OnDevice):
                return None
            rule = child._leaf_rule(index)
            if rule is None or int(rule[0]) == _rules.RULE_SEQUENTIAL:
                return None
            children.append(rule)
        return _rules.sequential(list(_torch_compat.sequential_milestones(self)), children)

    def step(self):
        self._run_step(self._torch_step, None)

    def _torch_step(self):
        with children_on_host():
            torch_schedulers.SequentialLR.step(self)

    def _update_lr(self, epoch=None):  # pragma: no cover - torch's SequentialLR never calls its own
        raise NotImplementedError

    def load_state_dict(self, state_dict):
        with children_on_host():
            super().load_state_dict(state_dict)


@torch_doc_and_note
class ChainedScheduler(torch_schedulers.ChainedScheduler):
    """torch's ChainedScheduler: every child steps each time, in order, each from the lr the
    previous one left. Each lrfused child's step runs on the device, so the chain does too."""

    def __init__(self, schedulers, optimizer=None):
        schedulers = list(schedulers)
        if optimizer is not None:
            optimizer = unwrap_optimizer(optimizer, "ChainedScheduler")
        # (torch's constructor only reads the groups: a refusal has nothing to put back)
        torch_schedulers.ChainedScheduler.__init__(self, schedulers, optimizer)

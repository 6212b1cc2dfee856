"""torch.optim.lr_scheduler's classes for lrfused's optimizers (FusedScheduledAdam/AdamW, SGD,
RMSprop, Adagrad), stepping the lr on the device (and the momentum, for the cycling schedulers:
Adam's beta1, SGD's and RMSprop's ``momentum``).

Each class has the name, the constructor arguments and the defaults of torch's class, and
subclasses it (so ``isinstance(s, torch.optim.lr_scheduler.StepLR)`` holds where frameworks check
it). Swap the import and nothing else::

    from lrfused.lr_scheduler import CosineAnnealingLR   # was: from torch.optim.lr_scheduler import ...

Each ``step()`` runs torch's own code on the host, so ``get_last_lr()``, ``param_groups[i]["lr"]``,
betas, warnings and errors are torch's, and runs the same step on the device from the
scheduler's own clock, inside the next optimizer step's op (no launch of its own, no host sync):
see note [A scheduler step] in ``_device.py``.
Schedulers compose as torch's do: several on one optimizer, stepped at any rates, each step from
the lr the others left; any other writer of ``param_groups[i]["lr"]`` (a stock torch scheduler,
SWALR, a framework's lr finder, a hand write, ``load_state_dict``) wins from the next step on.

Where the step runs (a CUDA graph can capture only the device form):

=================================================  ======================================
on the device                                      computed on the host, written to it
=================================================  ======================================
StepLR, MultiStepLR, ConstantLR, LinearLR,         LambdaLR / MultiplicativeLR without
ExponentialLR, PolynomialLR, CosineAnnealingLR,    ``horizon=`` (torch calls the lambda at
CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts  each step, so does lrfused), or past it;
(integer steps), ReduceLROnPlateau,                CyclicLR with a custom ``scale_fn`` and
LambdaLR / MultiplicativeLR / CyclicLR(scale_fn)   no ``horizon=``; a fractional epoch or a
with ``horizon=N`` for t < N, SequentialLR and     write to ``T_cur``; the constructor's
ChainedScheduler of these, ``step(epoch)`` with    own step; a SequentialLR with such a
an integer epoch                                   child; stock torch schedulers
=================================================  ======================================

An instance's attributes and ``state_dict()`` are torch's (the device clock and rules live
outside the instance), so code that inspects or compares schedulers sees torch's.

Differences from torch: none in the values (each class is tested against torch's on the same
inputs). ReduceLROnPlateau given a metric on a GPU keeps its state and lrs as device tensors (see
its docstring and its ``sync_free`` keyword); a learning rate that is not finite (an argument, or
what a step computed on the host) is refused, naming it, where torch trains to NaN; and a
lrfused optimizer built with ``schedule=`` refuses these schedulers (its kernel already schedules
the lr). On an optimizer that is not lrfused's (nor wraps one) a class here is torch's class and
nothing more: there is no device lr to step.
"""

from .closed_form import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    StepLR,
)
from .composite import ChainedScheduler, SequentialLR
from .plateau import ReduceLROnPlateau

__all__ = [
    "LambdaLR",
    "MultiplicativeLR",
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
    "SequentialLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
]

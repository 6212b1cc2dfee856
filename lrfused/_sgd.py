"""FusedScheduledSGD: torch.optim.SGD whose learning-rate schedule runs inside the update kernel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ._scheduled import FusedScheduledOptimizer
from ._step_plan import SGD
from ._validation import check_momentum_step, validate_sgd
from .schedules import Schedule


class FusedScheduledSGD(FusedScheduledOptimizer):
    r"""SGD (momentum, dampening, Nesterov) whose learning-rate schedule is evaluated inside the
    update kernel: torch.optim.SGD's update, with torch's constructor, defaults, checks, state
    (``momentum_buffer``) and group keys.

    .. math::
        \begin{aligned}
        &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \;(\times -1 \text{ if maximize}) + \lambda\theta_{t-1}\\
        &\text{momentum } \mu \ne 0:\; b_t \leftarrow \mu b_{t-1} + (1-\tau) g_t \;(b_1 = g_1),\quad
         g_t \leftarrow g_t + \mu b_t \text{ (Nesterov) or } b_t\\
        &\theta_t \leftarrow \theta_{t-1} - \gamma_t g_t
        \end{aligned}

    The lr :math:`\gamma_t` comes from the schedule as for :class:`lrfused.FusedScheduledAdam`
    (``group["lr"]``, ``schedule=``, or a scheduler of :mod:`lrfused.lr_scheduler`); the cycling
    schedulers (CyclicLR, OneCycleLR with ``cycle_momentum``) drive ``group["momentum"]`` on the
    device, as torch's drive it on the host.

    Args are torch.optim.SGD's, plus ``schedule`` and ``check_finite`` (see
    :class:`lrfused.FusedScheduledAdam`). ``foreach`` and ``fused`` are kept in the groups as given;
    ``differentiable=True`` is refused.

    The step counter the kernel keeps per param (for ``schedule=`` and for the momentum buffer's
    first step) is ``state[p]["step"]`` while the optimizer runs; torch's SGD has no such key, so
    ``state_dict()`` leaves it out of the params' state and saves the counts under its
    ``"lrfused"`` key. A checkpoint of torch's SGD loads as torch would continue it.

    One difference from torch: the buffer's first step is told by that counter (0: the buffer is
    the grad). A group whose momentum goes from 0 to non-zero after it has stepped gets buffers of
    zeros whose first step is ``(1 - dampening) * g`` where torch's is ``g``: the same without
    dampening, as almost every recipe has it.
    """

    _rule = SGD
    _CHECKED_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _GROUP_DEFAULTS = (
        ("nesterov", False),
        ("maximize", False),
        ("foreach", None),
        ("differentiable", False),
        ("fused", None),
    )

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        schedule: Schedule | None = None,
        check_finite: bool = False,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        validate_sgd(defaults)
        super().__init__(
            params,
            defaults,
            foreach=foreach,
            capturable=False,
            differentiable=differentiable,
            fused=fused,
            schedule=schedule,
            check_finite=check_finite,
        )

    def _validate_group_values(self, values: dict[str, Any]) -> None:
        validate_sgd(values)

    def _check_step_hyperparameters(self, index: int, group: dict[str, Any]) -> None:
        check_momentum_step(index, group, ("dampening", "weight_decay"))

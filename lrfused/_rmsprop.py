"""FusedScheduledRMSprop: torch.optim.RMSprop whose learning-rate schedule runs inside the update kernel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ._scheduled import FusedScheduledOptimizer
from ._step_plan import RMSPROP
from ._validation import check_momentum_step, validate_rmsprop
from .schedules import Schedule


class FusedScheduledRMSprop(FusedScheduledOptimizer):
    r"""RMSprop (centered, momentum) whose learning-rate schedule is evaluated inside the update
    kernel: torch.optim.RMSprop's update, with torch's constructor (every argument positional, as
    torch's), defaults, checks, state (``step``, ``square_avg``, ``momentum_buffer`` with
    momentum > 0, ``grad_avg`` when centered) and group keys.

    .. math::
        \begin{aligned}
        &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \;(\times -1 \text{ if maximize}) + \lambda\theta_{t-1}\\
        &v_t \leftarrow \alpha v_{t-1} + (1-\alpha) g_t^2 \qquad
         \text{centered: } m_t \leftarrow \alpha m_{t-1} + (1-\alpha) g_t,\;
         \tilde v_t = v_t - m_t^2\\
        &\text{momentum } \mu > 0:\; b_t \leftarrow \mu b_{t-1} + g_t / (\sqrt{\tilde v_t} + \epsilon),\;
         \theta_t \leftarrow \theta_{t-1} - \gamma_t b_t \quad
         \text{else } \theta_t \leftarrow \theta_{t-1} - \gamma_t g_t / (\sqrt{\tilde v_t} + \epsilon)
        \end{aligned}

    The lr :math:`\gamma_t` comes from the schedule as for :class:`lrfused.FusedScheduledAdam`;
    the cycling schedulers drive ``group["momentum"]`` on the device. ``step`` is an int64 tensor
    on the param's device (torch's is float32). Args are torch.optim.RMSprop's, plus ``schedule``
    and ``check_finite`` (keyword-only).
    """

    _rule = RMSPROP
    _CHECKED_KEYS = ("lr", "alpha", "eps", "weight_decay", "momentum")
    _GROUP_DEFAULTS = (
        ("momentum", 0),
        ("centered", False),
        ("capturable", False),
        ("foreach", None),
        ("maximize", False),
        ("differentiable", False),
    )

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        schedule: Schedule | None = None,
        check_finite: bool = False,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
        )
        validate_rmsprop(defaults)
        super().__init__(
            params,
            defaults,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=None,
            schedule=schedule,
            check_finite=check_finite,
        )

    def _validate_group_values(self, values: dict[str, Any]) -> None:
        validate_rmsprop(values)

    def _check_step_hyperparameters(self, index: int, group: dict[str, Any]) -> None:
        check_momentum_step(index, group, ("alpha", "eps", "weight_decay"))

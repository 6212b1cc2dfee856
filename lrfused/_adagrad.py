"""FusedScheduledAdagrad: torch.optim.Adagrad whose learning-rate schedule runs inside the update kernel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ._scheduled import FusedScheduledOptimizer
from ._step_plan import ADAGRAD
from ._validation import check_number, validate_adagrad
from .schedules import Schedule


class FusedScheduledAdagrad(FusedScheduledOptimizer):
    r"""Adagrad whose learning-rate schedule is evaluated inside the update kernel:
    torch.optim.Adagrad's update, with torch's constructor, defaults, checks, state (``step``,
    ``sum``) and group keys.

    .. math::
        \begin{aligned}
        &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \;(\times -1 \text{ if maximize}) + \lambda\theta_{t-1}\\
        &\tilde\gamma_t = \gamma_t / (1 + (t-1)\eta) \qquad
         s_t \leftarrow s_{t-1} + g_t^2 \qquad
         \theta_t \leftarrow \theta_{t-1} - \tilde\gamma_t\, g_t / (\sqrt{s_t} + \epsilon)
        \end{aligned}

    The lr :math:`\gamma_t` comes from the schedule as for :class:`lrfused.FusedScheduledAdam`.
    As torch's Adagrad, the constructor makes every param's state (``sum`` full of
    ``initial_accumulator_value``); ``step`` is an int64 tensor on the param's device, shared by the
    params of a group, device and dtype (torch's is a float32 per param). Adagrad has no momentum:
    a cycling scheduler with ``cycle_momentum=True`` raises, as torch's does.
    """

    _rule = ADAGRAD
    _CHECKED_KEYS = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
    _GROUP_DEFAULTS = (
        ("foreach", None),
        ("maximize", False),
        ("differentiable", False),
        ("fused", None),
    )

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        schedule: Schedule | None = None,
        check_finite: bool = False,
    ):
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        validate_adagrad(defaults)
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
        # torch's Adagrad makes its state here, for every param: a checkpoint taken before the first
        # step holds it too. (A param added later by add_param_group gets it at its first step.)
        for group in self.param_groups:
            self._planner.make_states(group, self.state, group["params"])

    def _validate_group_values(self, values: dict[str, Any]) -> None:
        validate_adagrad(values)

    def _check_step_hyperparameters(self, index: int, group: dict[str, Any]) -> None:
        for key, name in (
            ("lr_decay", "lr_decay value"),
            ("eps", "epsilon value"),
            ("weight_decay", "weight_decay value"),
        ):
            value = check_number(f"{name} in param_groups[{index}]", group[key])
            if value < 0.0:
                raise ValueError(f"Invalid {name}: {group[key]} in param_groups[{index}]")

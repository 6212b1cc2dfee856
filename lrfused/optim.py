"""lrfused's optimizers: FusedScheduledAdam and FusedScheduledAdamW here, and (from their own
modules) FusedScheduledSGD, FusedScheduledRMSprop and FusedScheduledAdagrad: torch.optim
optimizers whose learning-rate schedule runs inside the update kernel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ._adagrad import FusedScheduledAdagrad
from ._rmsprop import FusedScheduledRMSprop
from ._scheduled import FusedScheduledOptimizer, binding_of
from ._sgd import FusedScheduledSGD
from ._step_plan import ADAM
from ._validation import check_step_hyperparameters, float_betas, validate_hyperparameters
from .schedules import Schedule

__all__ = [
    "FusedScheduledAdam",
    "FusedScheduledAdamW",
    "FusedScheduledSGD",
    "FusedScheduledRMSprop",
    "FusedScheduledAdagrad",
    "FusedScheduledOptimizer",
    "binding_of",
]


class FusedScheduledAdam(FusedScheduledOptimizer):
    r"""Adam and AdamW whose learning-rate schedule is evaluated inside the update kernel.

    The update is torch.optim.Adam's (``decoupled_weight_decay=True`` gives AdamW):

    .. math::
        \begin{aligned}
        &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \;(\times -1 \text{ if maximize})\\
        &\text{Adam: } g_t \leftarrow g_t + \lambda\theta_{t-1} \qquad
         \text{AdamW: } \theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma_t\lambda)\\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
         v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \qquad
         (\text{AMSGrad: } \hat v_t \leftarrow \max(\hat v_{t-1}, v_t))\\
        &\theta_t \leftarrow \theta_{t-1} - \frac{\gamma_t}{1-\beta_1^t}\,
         \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}
        \end{aligned}

    where the learning rate :math:`\gamma_t` (and :math:`\beta_1` for cycling schedules) comes
    from the schedule, evaluated in float64 in the kernel from a clock on the device:

    * no schedule: :math:`\gamma_t` is ``group["lr"]`` (a float, or a 1-element tensor, read on
      the device); changing it between steps works as in torch;
    * ``schedule=s`` (see :mod:`lrfused.schedules`): :math:`\gamma_t = \text{lr} \cdot s(t)`
      with :math:`t` the optimizer's own step count before this step. No scheduler object and no
      per-step Python work; an AMP-skipped step pauses the schedule too;
    * a scheduler of :mod:`lrfused.lr_scheduler` (same classes and arguments as
      ``torch.optim.lr_scheduler``): its ``step()`` advances a device clock.

    Args:
        params: parameters or param groups, as for any torch optimizer. Float32, float16,
            bfloat16, float64 or complex (viewed as real, as torch does) dense tensors; the math is
            torch's opmath: float64 for float64 (and complex128) params, float32 for the others.
        lr: learning rate (default: 1e-3).
        betas: coefficients of the running averages of the gradient and its square (floats, or
            1-element tensors, read once at construction).
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty (Adam) or decoupled decay (AdamW).
        amsgrad: use the maximum of past squared-gradient averages (torch's 6th positional argument).
        foreach, fused, capturable: torch's implementation switches, accepted and kept in the param
            groups so that checkpoints move to and from torch unchanged. lrfused has one
            implementation: always fused (one kernel per device and dtype) and always capturable
            (step counters, lr and schedule on the device, no host sync).
        differentiable: ``True`` is refused (the update is an in-place kernel autograd does not
            trace through).
        maximize: maximize the objective instead of minimizing it.
        decoupled_weight_decay: AdamW's decay.
        schedule: a :class:`lrfused.schedules.Schedule` multiplying each group's lr at the
            optimizer's own step count. ``group["lr"]`` is then the base lr that the schedule
            multiplies (a write to it changes that base), and the lr the kernel applies at step
            ``t`` is ``group["lr"] * schedule(t)`` (:meth:`scheduled_lr`). A torch-compatible
            lrfused scheduler cannot be attached as well (it raises).
        check_finite: skip, on the device and without a sync, every step in which a gradient
            holds a NaN or an infinity (nothing changes, step counters included), and count the
            skipped steps in the device tensor ``skipped_steps``. Off by default: like
            torch.optim.Adam, lrfused then applies non-finite gradients as they are (and a
            GradScaler, when used, already skips them).

    The state keeps torch's keys (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``);
    ``step`` is an int64 tensor on the param's device that the kernel advances (float32 counters
    stop at 2**24). Checkpoints load with ``torch.load(weights_only=True)`` and move both ways
    between lrfused and ``torch.optim.Adam/AdamW``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        schedule: Schedule | None = None,
        check_finite: bool = False,
    ):
        validate_hyperparameters(lr, betas, eps, weight_decay)
        betas = float_betas(betas)
        # The implementation flags are kept as given, in torch's keys, so that a checkpoint moves
        # between lrfused and torch.optim.Adam/AdamW unchanged; lrfused's kernel is always the same.
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(
            params,
            defaults,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            schedule=schedule,
            check_finite=check_finite,
        )

    _rule = ADAM
    _CHECKED_KEYS = ("lr", "betas", "eps", "weight_decay")
    _GROUP_DEFAULTS = (
        ("amsgrad", False),
        ("maximize", False),
        ("foreach", None),
        ("capturable", False),
        ("differentiable", False),
        ("decoupled_weight_decay", False),
        ("fused", None),
    )

    def _validate_group_values(self, values: dict[str, Any]) -> None:
        validate_hyperparameters(values["lr"], values["betas"], values["eps"], values["weight_decay"])

    def _check_step_hyperparameters(self, index: int, group: dict[str, Any]) -> None:
        check_step_hyperparameters(index, group)


class FusedScheduledAdamW(FusedScheduledAdam):
    """:class:`FusedScheduledAdam` with decoupled weight decay (AdamW), ``weight_decay=1e-2``:
    torch.optim.AdamW's signature."""

    # The signature is written out again, as torch writes AdamW's beside Adam's, so that help(),
    # inspect.signature and IDEs show AdamW's own defaults (weight_decay=1e-2, no
    # decoupled_weight_decay argument).
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        schedule: Schedule | None = None,
        check_finite: bool = False,
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            schedule=schedule,
            check_finite=check_finite,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # AdamW's decay, whatever a checkpoint says (torch.optim.AdamW does the same).
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True

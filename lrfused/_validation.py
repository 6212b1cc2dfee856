"""The checks of FusedScheduledAdam's arguments, as torch.optim.Adam makes them (its messages, its
order), plus NaN and infinity: raised before anything changes, naming the argument and the value."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._reference import KERNEL_DTYPES


def check_number(name: str, value: Any, tensor_name: str | None = None) -> float:
    """A finite real number; ``tensor_name`` is what torch calls it when it is a tensor."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {tensor_name or name} must be 1-element, got {value.numel()} elements")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"Tensor {name} must hold a real number, got dtype {value.dtype}")
        # Read once, where torch reads it (construction, add_param_group, load_state_dict): a sync
        # for a GPU tensor, never made by a step. A value written into it later is read on the device.
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value}")
    return float(value)


def validate_hyperparameters(lr, betas, eps, weight_decay) -> None:
    """torch.optim.Adam's checks, plus NaN and inf; the message names the argument and value."""
    lr_value = check_number("learning rate", lr, "lr")
    if lr_value < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair of floats)")
    for index, beta in enumerate(betas):
        value = check_number(f"beta parameter at index {index}", beta, f"betas[{index}]")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if check_number("epsilon value", eps) < 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if check_number("weight_decay value", weight_decay) < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def check_implementation_flags(*, foreach, capturable, differentiable, fused, owner="FusedScheduledAdam") -> None:
    """torch's implementation switches: accepted as torch accepts them, with lrfused's meaning."""
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be None or a bool, got {value!r}")
    for name, value in (("capturable", capturable), ("differentiable", differentiable)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    if differentiable:
        raise ValueError(
            f"differentiable=True is not supported by {owner}: its update is an in-place kernel that "
            f"autograd does not trace through; use torch.optim.{_torch_name(owner)}(differentiable=True)"
        )


def check_loaded_step(key: Any, param_state: dict[str, Any]) -> None:
    """A saved step must be a whole, non-negative count: torch.optim.Adam's float32 step of 3.0
    loads as 3, a 2.5 or a -1 is refused (the bias corrections would be silently wrong)."""
    name = f"load_state_dict: state[{key!r}]['step']"
    if "step" not in param_state:
        raise ValueError(
            f"{name} is missing (keys: {sorted(param_state)}); without it the moments cannot be bias-corrected"
        )
    value = check_number(name, param_state["step"])
    if not (value >= 0 and value.is_integer()):
        raise ValueError(f"{name} must be a whole number >= 0, got {value}")


def check_step_hyperparameters(index: int, group: dict[str, Any]) -> None:
    """A group's hyperparameters as a step checks them, naming the group."""
    betas, eps, weight_decay = group["betas"], group["eps"], group["weight_decay"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} in param_groups[{index}] (expected a pair of floats)")
    # torch checks beta1's range only in the constructor: a scheduler may write any momentum
    # (torch's own tests cycle it up to 22) and the step takes torch's arithmetic (note
    # [Unusable schedule values]). It must still be a finite number.
    check_number("beta parameter at index 0", betas[0])
    validate_hyperparameters(0.0, (0.0, betas[1]), eps, weight_decay)


def float_betas(betas) -> tuple[float, float]:
    """Betas as floats: a 1-element tensor beta is read once, here (a sync if it is on a GPU)."""
    return tuple(float(b.item()) if isinstance(b, Tensor) else b for b in betas)


def _torch_name(owner: str) -> str:
    return owner.removeprefix("FusedScheduled")


def check_param(p: Tensor, where: str, owner: str = "FusedScheduledAdam") -> None:
    """Refuses, before any state exists, a param the kernels cannot update."""
    if p.is_sparse or p.layout != torch.strided:
        raise ValueError(f"{owner} needs dense parameters, got layout {p.layout} for {where}")
    if p.device.type == "meta":
        # torch.optim.Adam(fused=True) refuses them too; its for-loop Adam "steps" them, shapes only.
        raise RuntimeError(
            f"{owner} cannot update {where}: it is on the meta device, which holds no data. Build the "
            "optimizer after materializing the model (module.to_empty(device=...), then initialize it)"
        )
    if not (p.is_floating_point() or p.is_complex()):
        raise TypeError(f"{owner} needs floating-point parameters, got dtype {p.dtype} for {where}")
    real = p.real.dtype if p.is_complex() else p.dtype
    if real not in KERNEL_DTYPES:
        raise TypeError(
            f"{owner} updates float32, float16, bfloat16 and float64 params (and complex ones of those), "
            f"got dtype {p.dtype} for {where}; use torch.optim.{_torch_name(owner)} for {p.dtype} params"
        )


def _non_negative(name: str, value: Any, tensor_name: str | None = None) -> None:
    """torch's ``if not 0.0 <= value: raise ValueError(f"Invalid {name}: {value}")``, plus NaN and inf."""
    if check_number(name, value, tensor_name) < 0.0:
        raise ValueError(f"Invalid {name}: {value}")


def validate_sgd(values: dict[str, Any]) -> None:
    """torch.optim.SGD's checks (its order and messages), plus NaN and inf."""
    _non_negative("learning rate", values["lr"], "lr")
    _non_negative("momentum value", values["momentum"])
    check_number("dampening", values["dampening"])
    _non_negative("weight_decay value", values["weight_decay"])
    if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def validate_rmsprop(values: dict[str, Any]) -> None:
    """torch.optim.RMSprop's checks (its order and messages), plus NaN and inf."""
    _non_negative("learning rate", values["lr"], "lr")
    _non_negative("epsilon value", values["eps"])
    _non_negative("momentum value", values["momentum"])
    _non_negative("weight_decay value", values["weight_decay"])
    _non_negative("alpha value", values["alpha"])


def validate_adagrad(values: dict[str, Any]) -> None:
    """torch.optim.Adagrad's checks (its order and messages), plus NaN and inf."""
    _non_negative("learning rate", values["lr"], "lr")
    _non_negative("lr_decay value", values["lr_decay"])
    _non_negative("weight_decay value", values["weight_decay"])
    _non_negative("initial_accumulator_value value", values["initial_accumulator_value"])
    _non_negative("epsilon value", values["eps"])


def check_momentum_step(index: int, group: dict[str, Any], checked: tuple[str, ...]) -> None:
    """A step's check of a group of SGD or RMSprop: a scheduler may write any finite momentum (torch
    checks its range only in the constructor); the other keys keep the constructor's ranges."""
    check_number(f"momentum value in param_groups[{index}]", group["momentum"])
    for key in checked:
        name = {
            "lr_decay": "lr_decay value",
            "eps": "epsilon value",
            "weight_decay": "weight_decay value",
            "alpha": "alpha value",
            "dampening": "dampening",
        }[key]
        value = check_number(f"{name} in param_groups[{index}]", group[key])
        if key != "dampening" and value < 0.0:
            raise ValueError(f"Invalid {name}: {group[key]} in param_groups[{index}]")

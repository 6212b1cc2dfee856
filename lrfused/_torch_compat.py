"""The private parts of torch that lrfused relies on, named in one place and checked at import.

lrfused's schedulers are torch's own classes, stepped by torch's own code; to run a step on the
device they hook into a few places torch does not document. Each is listed in ``HOOKS`` with what
it is for, and checked when lrfused is imported: a torch that renamed or stopped using one raises
ImportError naming the hook and torch's version, where lrfused would otherwise go silently wrong
(were ``LRScheduler.step`` to stop calling ``_update_lr``, every device step would silently turn
into a host write). The rest of the package reads these names through the functions below.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.optim import lr_scheduler as _schedulers
from torch.optim import optimizer as _optimizer_module


class Hook(NamedTuple):
    """A private name of torch's: where it lives, how lrfused uses it, and how its presence is checked."""

    where: str
    use: str
    present: Callable[[], bool]


def _names_in(function: Any) -> set[str]:
    """The attribute and global names a Python function's code reads or writes."""
    return set(inspect.unwrap(function).__code__.co_names)


HOOKS: dict[str, Hook] = {
    "LRScheduler._update_lr": Hook(
        "torch.optim.lr_scheduler.LRScheduler",
        "lrfused's schedulers override it: torch's step() calls it once the step is counted, and the override runs "
        "torch's own update on the host, then the same step on the device",
        lambda: (
            callable(getattr(_schedulers.LRScheduler, "_update_lr", None))
            and "_update_lr" in _names_in(_schedulers.LRScheduler.step)
        ),
    ),
    "LRScheduler._is_initial": Hook(
        "torch.optim.lr_scheduler.LRScheduler",
        "tells the constructor's own step (computed on the host, never deferred) from a training step",
        lambda: hasattr(_schedulers.LRScheduler, "_is_initial"),
    ),
    "LRScheduler._last_lr": Hook(
        "torch.optim.lr_scheduler.LRScheduler",
        "what get_last_lr() returns: ReduceLROnPlateau's device step sets it to the lrs it published",
        lambda: "_last_lr" in _names_in(_schedulers.LRScheduler.get_last_lr),
    ),
    "CyclicLR._scale_fn_custom": Hook(
        "torch.optim.lr_scheduler.CyclicLR",
        "a user's scale_fn, tabulated for the device (None for the built-in modes)",
        lambda: "_scale_fn_custom" in _names_in(_schedulers.CyclicLR.__init__),
    ),
    "OneCycleLR._schedule_phases": Hook(
        "torch.optim.lr_scheduler.OneCycleLR",
        "where each phase ends, encoded into the device schedule",
        lambda: "_schedule_phases" in _names_in(_schedulers.OneCycleLR.__init__),
    ),
    "OneCycleLR._anneal_func_type": Hook(
        "torch.optim.lr_scheduler.OneCycleLR",
        "cosine or linear annealing, encoded into the device schedule",
        lambda: "_anneal_func_type" in _names_in(_schedulers.OneCycleLR.__init__),
    ),
    "SequentialLR._schedulers": Hook(
        "torch.optim.lr_scheduler.SequentialLR",
        "the children whose rules make SequentialLR's device rule",
        lambda: "_schedulers" in _names_in(_schedulers.SequentialLR.__init__),
    ),
    "SequentialLR._milestones": Hook(
        "torch.optim.lr_scheduler.SequentialLR",
        "the milestones of SequentialLR's device rule",
        lambda: "_milestones" in _names_in(_schedulers.SequentialLR.__init__),
    ),
    "torch._C._dispatch_has_kernel_for_dispatch_key": Hook(
        "torch._C",
        "whether lrfused._C was built with its CUDA kernels",
        lambda: callable(getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)),
    ),
    "Optimizer.profile_hook_step": Hook(
        "torch.optim.Optimizer",
        "the wrapper torch puts around every optimizer's step() (step hooks, profiler label): lrfused gives its own, "
        "the same hooks and label at a tenth of the host cost",
        lambda: "profile_hook_step" in _names_in(torch.optim.Optimizer._patch_step_function),
    ),
    "Optimizer step hooks": Hook(
        "torch.optim.optimizer",
        "the global hooks (_global_optimizer_pre_hooks, _global_optimizer_post_hooks) and each optimizer's own "
        "(_optimizer_step_pre_hooks, _optimizer_step_post_hooks), run by that wrapper as torch runs them",
        lambda: (
            isinstance(getattr(_optimizer_module, "_global_optimizer_pre_hooks", None), dict)
            and isinstance(getattr(_optimizer_module, "_global_optimizer_post_hooks", None), dict)
            and "_optimizer_step_pre_hooks" in _names_in(torch.optim.Optimizer.register_step_pre_hook)
            and "_optimizer_step_post_hooks" in _names_in(torch.optim.Optimizer.register_step_post_hook)
            and callable(getattr(torch.optim.Optimizer, "_optimizer_step_code", None))
        ),
    ),
    "torch._C._profiler._RecordFunctionFast": Hook(
        "torch._C._profiler",
        "the step's profiler label, recorded in C++ (torch.compile's generated code records its own with it)",
        lambda: callable(getattr(torch._C._profiler, "_RecordFunctionFast", None)),
    ),
    "torch._C._set_grad_enabled": Hook(
        "torch._C",
        "grad mode switched off around an eager step in one C call (torch.no_grad() costs ~2 µs of host time)",
        lambda: callable(getattr(torch._C, "_set_grad_enabled", None)),
    ),
    "torch._amp_foreach_non_finite_check_and_unscale_": Hook(
        "torch",
        "check_finite=True: finds a NaN or an infinity in the grads on the device, as GradScaler does",
        lambda: callable(getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)),
    ),
}


def missing_hooks() -> list[str]:
    """The hooks this torch does not have (or no longer uses as lrfused expects)."""
    return [name for name, hook in HOOKS.items() if not hook.present()]


def check_hooks() -> None:
    missing = missing_hooks()
    if missing:
        details = "; ".join(f"{name} ({HOOKS[name].use})" for name in missing)
        raise ImportError(
            f"lrfused cannot run on torch {torch.__version__}: it relies on private parts of torch that this version "
            f"does not have: {details}. Use a torch that lrfused supports (see its README) or an lrfused release "
            "made for this torch."
        )


check_hooks()


# --- the reads, through one door each ---------------------------------------------------------------


def in_constructor_step(scheduler: Any) -> bool:
    """Whether ``scheduler`` is running the step its constructor makes (LRScheduler._is_initial)."""
    return bool(getattr(scheduler, "_is_initial", False))


def set_last_lr(scheduler: Any, lrs: list[Any]) -> None:
    """What ``scheduler.get_last_lr()`` returns from now on (LRScheduler._last_lr)."""
    scheduler._last_lr = lrs


def last_lr(scheduler: Any) -> list[Any]:
    return scheduler._last_lr


def cyclic_scale_fn(scheduler: Any) -> Callable[[float], float] | None:
    """A CyclicLR's own scale_fn, or None for a built-in mode (CyclicLR._scale_fn_custom)."""
    return scheduler._scale_fn_custom


def one_cycle_phases(scheduler: Any) -> list[dict[str, Any]]:
    """OneCycleLR's phases, each with its ``end_step`` (OneCycleLR._schedule_phases)."""
    return scheduler._schedule_phases


# The key of a OneCycleLR's state dict that names its annealing (a state saved by torch < 2.2
# names the function instead, under "anneal_func").
ONE_CYCLE_ANNEAL_KEY = "_anneal_func_type"


def one_cycle_anneal(scheduler: Any) -> str:
    """ "cos" or "linear" (OneCycleLR._anneal_func_type)."""
    return getattr(scheduler, ONE_CYCLE_ANNEAL_KEY)


def sequential_children(scheduler: Any) -> list[Any]:
    return scheduler._schedulers


def sequential_milestones(scheduler: Any) -> list[int]:
    return scheduler._milestones


def has_kernel_for(op: str, dispatch_key: str) -> bool:
    """Whether the dispatcher has a kernel of ``op`` for ``dispatch_key``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, dispatch_key)


def non_finite_check_and_unscale_(grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor) -> None:
    """GradScaler's device check: ``found_inf`` becomes non-zero when a grad holds a NaN or an
    infinity, and each grad is multiplied by ``inv_scale``."""
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)


def record_function(name: str) -> Any:
    """A context that labels what runs inside it in the profiler's trace, as
    ``torch.autograd.profiler.record_function`` does, recorded in C++ (torch._C._profiler._RecordFunctionFast).
    torch.compile traces torch's own (it cannot trace the C++ one)."""
    if torch.compiler.is_compiling():
        return torch.autograd.profiler.record_function(name)
    return torch._C._profiler._RecordFunctionFast(name)


# Switches grad mode for this thread (what torch.no_grad() calls), bound as it is: a step calls it twice.
set_grad_enabled: Callable[[bool], None] = torch._C._set_grad_enabled


def optimizer_step_pre_hooks(optimizer: torch.optim.Optimizer) -> list[Callable]:
    """The hooks torch runs before an optimizer's step, in torch's order: the global ones, then the optimizer's."""
    global_hooks = _optimizer_module._global_optimizer_pre_hooks
    own = optimizer._optimizer_step_pre_hooks
    return [*global_hooks.values(), *own.values()] if global_hooks or own else []


def optimizer_step_post_hooks(optimizer: torch.optim.Optimizer) -> list[Callable]:
    """The hooks torch runs after an optimizer's step, in torch's order: the optimizer's, then the global ones."""
    own = optimizer._optimizer_step_post_hooks
    global_hooks = _optimizer_module._global_optimizer_post_hooks
    return [*own.values(), *global_hooks.values()] if global_hooks or own else []


def optimizer_step_code(optimizer: torch.optim.Optimizer) -> None:
    """The empty method torch's profiler hooks into after each step (Optimizer._optimizer_step_code)."""
    optimizer._optimizer_step_code()

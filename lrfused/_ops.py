"""Typed wrappers over ``torch.ops.lrfused.*``, the fake kernels torch.compile traces through, and
the choice between the compiled library and the pure-PyTorch reference."""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import _reference, _torch_compat


def _why_not_loaded(error: ImportError) -> str:
    """The cause of a failed ``import lrfused._C`` in words (Python's own message for a missing
    module, "cannot import name '_C' from partially initialized module", names neither)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        spec = importlib.util.find_spec(f"{__package__}._C")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return (
            f"no compiled extension lrfused/_C*.so in {here}: the package was installed or copied without building it"
        )
    message = str(error) or type(error).__name__
    if "undefined symbol" in message or "version" in message.lower():
        return (
            f"{spec.origin} does not match the running torch {torch.__version__} (built against another "
            f"torch or Python?): {message}"
        )
    return f"{spec.origin} failed to load: {message}"


_LOAD_ERROR: str | None = None
# LRFUSED_USE_REFERENCE=1 runs the pure-PyTorch reference although the library is built: CI runs
# the scheduler tests once that way, and it is a way to tell a kernel bug from anything else.
_REFERENCE_ASKED = os.environ.get("LRFUSED_USE_REFERENCE", "0") == "1"
if _REFERENCE_ASKED:
    _LOAD_ERROR = "LRFUSED_USE_REFERENCE=1 asks for the reference"
else:
    try:
        from . import _C  # noqa: F401  (registers the ops)
    except ImportError as error:  # pragma: no cover - exercised by the fallback test in a subprocess
        _LOAD_ERROR = _why_not_loaded(error)

if _LOAD_ERROR is None and not hasattr(torch.ops.lrfused, "adam_step_"):  # pragma: no cover
    _LOAD_ERROR = "lrfused._C loaded but registered no ops"

if _LOAD_ERROR is not None and not _REFERENCE_ASKED:
    _MESSAGE = (
        f"lrfused: the compiled kernels could not be loaded ({_LOAD_ERROR}); running the pure-PyTorch "
        "reference instead, which is correct but slower. Rebuild with "
        "`pip install --no-build-isolation -e .` against the torch you run."
    )
    if os.environ.get("LRFUSED_REQUIRE_KERNELS", "0") == "1":
        raise ImportError(_MESSAGE)
    warnings.warn(_MESSAGE, RuntimeWarning, stacklevel=2)


def has_kernels() -> bool:
    """Whether the compiled CPU kernels are loaded (else the reference runs)."""
    return _LOAD_ERROR is None


def has_cuda_kernels() -> bool:
    """Whether lrfused._C was built with its CUDA kernels."""
    if not has_kernels():
        return False
    # The step ops are composite (they gather, then run the backend's runner); advance_lr_ has a
    # kernel per backend, built together with the CUDA runner.
    return _torch_compat.has_kernel_for("lrfused::advance_lr_", "CUDA")


def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, *shared, **amp_and_handle) -> None:
    """One step of every group and dtype of one device, and the scheduler steps deferred to it
    (note [One op per step] in csrc/common/step_plan.h): :func:`rule_step_` of Adam. ``shared``
    are the arguments every step op takes after its state lists (steps, buckets, words, clocks,
    rules, applied, pending); ``buckets`` has one row per step counter, as
    :mod:`lrfused._step_plan` lays it out."""
    from ._step_plan import ADAM

    rule_step_(ADAM, params, grads, (exp_avgs, exp_avg_sqs, max_exp_avg_sqs), *shared, **amp_and_handle)


def rule_step_(
    rule,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: tuple[list[torch.Tensor], ...],
    steps: list[torch.Tensor],
    buckets: torch.Tensor,
    words: torch.Tensor,
    clocks: list[torch.Tensor],
    rules: list[torch.Tensor],
    applied: torch.Tensor,
    pending: torch.Tensor,
    *,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    invalid_steps: torch.Tensor | None = None,
    handle: torch.Tensor | None = None,
) -> None:
    """The step op of ``rule`` (an :class:`lrfused._step_plan.UpdateRule`): :func:`adam_step_`,
    or ``sgd_step_``, ``rmsprop_step_``, ``adagrad_step_`` with the rule's state lists in its
    order (a list holds the tensors of the buckets that have that state)."""
    op = getattr(torch.ops.lrfused, rule.op) if _LOAD_ERROR is None else getattr(_reference, rule.op)
    op(
        params,
        grads,
        *states,
        steps,
        buckets,
        words,
        clocks,
        rules,
        applied,
        pending,
        grad_scale=grad_scale,
        found_inf=found_inf,
        invalid_steps=invalid_steps,
        handle=handle,
    )


def table_step_(
    table: torch.Tensor,
    buckets: torch.Tensor,
    steps: list[torch.Tensor],
    words: torch.Tensor,
    clocks: list[torch.Tensor],
    rules: list[torch.Tensor],
    applied: torch.Tensor,
    pending: torch.Tensor,
    *,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    invalid_steps: torch.Tensor | None = None,
) -> bool:
    """:func:`adam_step_` from the tensors the table holds, the grads read in C++ (note [Step
    tables] in csrc/step_table.h); False, with nothing changed, when the grads no longer match."""
    return torch.ops.lrfused.table_step_.default(
        table,
        buckets,
        steps,
        words,
        clocks,
        rules,
        applied,
        pending,
        grad_scale=grad_scale,
        found_inf=found_inf,
        invalid_steps=invalid_steps,
    )


def set_step_table(
    table: torch.Tensor,
    sources: list[torch.Tensor],
    params: list[torch.Tensor],
    states0: list[torch.Tensor],
    states1: list[torch.Tensor],
    states2: list[torch.Tensor],
    watched: list[torch.Tensor],
) -> None:
    """Gives ``table`` the tensors of an eager call: the state lists as the rule's op takes them."""
    torch.ops.lrfused.set_step_table(table, sources, params, states0, states1, states2, watched)


def new_handle() -> torch.Tensor | None:
    """A bucket's handle: what the CUDA op keeps for the bucket is freed with it (None without the library)."""
    return torch.ops.lrfused.new_handle() if _LOAD_ERROR is None else None


def validate_schedule(schedule: torch.Tensor) -> None:
    """Raises RuntimeError when a CPU program is malformed (the C++ validator)."""
    if _LOAD_ERROR is None:
        torch.ops.lrfused.evaluate_schedule(schedule, 0)
    else:
        _reference.schedule_value(schedule, 0)


def advance_lr_(groups: torch.Tensor, clock: torch.Tensor, rules: torch.Tensor, epoch: int | None = None) -> None:
    """One scheduler step on the device: ``clock`` moves to ``clock + 1`` (or ``epoch``) and each
    param group's HELD words in ``groups`` follow its rule (note [Scheduler steps on the device])."""
    op = torch.ops.lrfused.advance_lr_ if _LOAD_ERROR is None else _reference.advance_lr_
    op(groups, clock, rules, epoch)


def validate_rules(rules: torch.Tensor, group_count: int) -> None:
    """Raises RuntimeError when a CPU rules array for ``group_count`` groups is malformed."""
    if _LOAD_ERROR is None:
        torch.ops.lrfused.validate_rules(rules, group_count)


def evaluate_schedule(schedule: torch.Tensor, t: int) -> tuple[float, float]:
    """The (lr, beta1) that the C++ evaluator gives at clock t; beta1 is NaN when not cycled."""
    lr, beta1 = torch.ops.lrfused.evaluate_schedule(schedule, t)
    return lr, beta1


def schedule_encoding() -> list[int]:
    """The compiled library's schedule encoding: the kind count, the depth limit, the CyclicLR mode
    count, then six numbers per kind (``_layout.NodeLayout.as_row``), for the tests to compare
    with ``lrfused.schedules``' table."""
    return list(torch.ops.lrfused.schedule_encoding())


def step_encoding() -> dict[str, int]:
    """The compiled library's step encoding by name (the bucket row's words, the flags, the
    deferred-step limit, the HELD words, the rule kinds, the element types), for the tests to
    compare with ``_step_plan.ENCODING`` and ``_rules.ENCODING``."""
    text = torch.ops.lrfused.step_encoding()
    return {name: int(value) for name, value in (entry.split("=") for entry in text.split())}


if _LOAD_ERROR is None:

    def _step_op_fake(*args, **kwargs) -> None:
        # A step op mutates its inputs in place and returns nothing: no new tensors to describe.
        return None

    for _name in ("adam_step_", "sgd_step_", "rmsprop_step_", "adagrad_step_"):
        torch.library.register_fake(f"lrfused::{_name}")(_step_op_fake)

    @torch.library.register_fake("lrfused::advance_lr_")
    def _advance_lr_fake(groups, clock, rules, epoch=None) -> None:
        return None

    @torch.library.register_fake("lrfused::validate_rules")
    def _validate_rules_fake(rules, group_count) -> None:
        # Reads the rules' values: only a real tensor can be checked, so a trace checks nothing.
        return None

    @torch.library.register_fake("lrfused::new_handle")
    def _new_handle_fake() -> torch.Tensor:
        return torch.empty(1, dtype=torch.int64)

r"""Schedule factories in optax's manner: each validates its arguments once and returns a
:class:`~lrfused.schedules.Schedule`, and composition (:func:`join`, :func:`product`,
:func:`warmup`) takes the place of flags.

A schedule's value is a multiplier: ``FusedScheduledAdam(params, lr=3e-4, schedule=s)`` applies
``lr * s(t)`` at the optimizer's step ``t`` (its count of applied steps, starting at 0). Every
formula below is the one the kernels evaluate in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import _nodes as nodes
from ._checks import non_negative_int, positive_int
from ._layout import CYCLIC_EXP_RANGE, CYCLIC_TRIANGULAR, CYCLIC_TRIANGULAR2
from ._nodes import Schedule


def constant(value: float = 1.0) -> Schedule:
    """The same value at every step: :math:`v(t) = v`.

    Args:
      value (float): the value. Default: 1.0.

    Returns:
      Schedule: the constant schedule.

    >>> constant(0.5)(1000)
    0.5
    """
    return nodes.Constant(value)


def step_decay(step_size: int, gamma: float = 0.1, init_value: float = 1.0) -> Schedule:
    r"""torch's StepLR: decays by ``gamma`` every ``step_size`` steps.

    .. math:: v(t) = v_0 \, \gamma^{\lfloor t / s \rfloor}

    Args:
      step_size (int): steps between decays (> 0).
      gamma (float): the factor of each decay (> 0). Default: 0.1.
      init_value (float): :math:`v_0`. Default: 1.0.

    Returns:
      Schedule: the step decay.

    >>> s = step_decay(3, gamma=0.5)
    >>> [s(t) for t in range(7)]
    [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    """
    return nodes.Step(init_value, step_size, gamma)


def multistep_decay(milestones: Sequence[int], gamma: float = 0.1, init_value: float = 1.0) -> Schedule:
    r"""torch's MultiStepLR: decays by ``gamma`` at each milestone; a repeated milestone compounds.

    .. math:: v(t) = v_0 \, \gamma^{|\{m \in \text{milestones} : m \le t\}|}

    Args:
      milestones (sequence of int): the steps (>= 0) at which the value decays, in any order.
      gamma (float): the factor of each decay (> 0). Default: 0.1.
      init_value (float): :math:`v_0`. Default: 1.0.

    Returns:
      Schedule: the multi-step decay.

    >>> s = multistep_decay([2, 4, 4], gamma=0.5)
    >>> [s(t) for t in range(6)]
    [1.0, 1.0, 0.5, 0.5, 0.125, 0.125]
    """
    return nodes.MultiStep(init_value, milestones, gamma)


def exponential_decay(gamma: float, init_value: float = 1.0) -> Schedule:
    r"""torch's ExponentialLR, as a closed form (float64 ``pow``, exact over long runs).

    .. math:: v(t) = v_0 \, \gamma^t

    Args:
      gamma (float): the factor per step (> 0).
      init_value (float): :math:`v_0`. Default: 1.0.

    Returns:
      Schedule: the exponential decay.

    >>> exponential_decay(0.5)(3)
    0.125
    """
    return nodes.Exponential(init_value, gamma)


def polynomial_decay(total_steps: int, power: float = 1.0, init_value: float = 1.0, end_value: float = 0.0) -> Schedule:
    r"""torch's PolynomialLR (with an end value): a polynomial decay held at its end.

    .. math:: v(t) = v_1 + (v_0 - v_1) \left(1 - \frac{\min(t, T)}{T}\right)^p

    Args:
      total_steps (int): :math:`T`, the steps the decay takes (> 0).
      power (float): :math:`p`. Default: 1.0 (linear).
      init_value (float): :math:`v_0`. Default: 1.0.
      end_value (float): :math:`v_1`, held from step :math:`T` on. Default: 0.0.

    Returns:
      Schedule: the polynomial decay.

    >>> s = polynomial_decay(10, power=2.0)
    >>> [s(t) for t in (0, 5, 10, 20)]
    [1.0, 0.25, 0.0, 0.0]
    """
    return nodes.Polynomial(init_value, total_steps, power, end_value)


def linear(start_value: float, end_value: float, total_steps: int) -> Schedule:
    r"""A straight line from ``start_value`` to ``end_value`` in ``total_steps``, then held.

    .. math:: v(t) = v_a + (v_b - v_a) \frac{\min(t, T)}{T}

    Args:
      start_value (float): :math:`v_a`, the value at step 0.
      end_value (float): :math:`v_b`, the value from step :math:`T` on.
      total_steps (int): :math:`T` (> 0).

    Returns:
      Schedule: the linear schedule.

    >>> s = linear(0.0, 1.0, 4)
    >>> [s(t) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return nodes.Linear(1.0, start_value, end_value, total_steps)


def cosine_decay(decay_steps: int, alpha: float = 0.0, init_value: float = 1.0, periodic: bool = False) -> Schedule:
    r"""A cosine from ``init_value`` down to the floor ``alpha * init_value`` (optax's cosine_decay).

    .. math:: v(t) = f + (v_0 - f) \frac{1 + \cos(\pi t / T)}{2}, \qquad f = \alpha v_0

    held at :math:`f` from step :math:`T` on, or periodic past :math:`T` like torch's
    CosineAnnealingLR with ``periodic=True``.

    Args:
      decay_steps (int): :math:`T` (> 0).
      alpha (float): the floor as a fraction of ``init_value``. Default: 0.0.
      init_value (float): :math:`v_0`. Default: 1.0.
      periodic (bool): follow the cosine past :math:`T` instead of holding the floor. Default: False.

    Returns:
      Schedule: the cosine decay.

    >>> s = cosine_decay(100, alpha=0.1)
    >>> [round(s(t), 6) for t in (0, 50, 100, 150)]
    [1.0, 0.55, 0.1, 0.1]
    >>> round(cosine_decay(100, periodic=True)(150), 6)
    0.5
    """
    return nodes.Cosine(init_value, decay_steps, alpha * init_value, clamp=not periodic)


def cosine_warm_restarts(T_0: int, T_mult: int = 1, init_value: float = 1.0, floor: float = 0.0) -> Schedule:
    r"""SGDR (torch's CosineAnnealingWarmRestarts): cosine cycles of length :math:`T_0 T_{mult}^k`.

    .. math:: v(t) = f + (v_0 - f) \frac{1 + \cos(\pi t_{cur} / T_i)}{2}

    where :math:`t_{cur}` counts the steps since the current cycle began and :math:`T_i` is its
    length. Cycle boundaries are found by integer accumulation, as torch's ``step()`` does.

    Args:
      T_0 (int): the first cycle's length (> 0).
      T_mult (int): the factor between cycle lengths (>= 1). Default: 1.
      init_value (float): :math:`v_0`, the value at each restart. Default: 1.0.
      floor (float): :math:`f`, the value each cycle decays toward. Default: 0.0.

    Returns:
      Schedule: the restarting cosine.

    >>> s = cosine_warm_restarts(2, T_mult=2)
    >>> [round(s(t), 6) for t in range(7)]
    [1.0, 0.5, 1.0, 0.853553, 0.5, 0.146447, 1.0]
    """
    return nodes.WarmRestarts(init_value, T_0, T_mult, floor)


def cyclic(
    base_value: float,
    max_value: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> Schedule:
    r"""torch's CyclicLR (without beta1): a triangle between ``base_value`` and ``max_value``.

    .. math:: v(t) = v_b + (v_m - v_b) \, f(x) \, s

    with :math:`f` rising from 0 to 1 over ``step_size_up`` steps and back over
    ``step_size_down``, and the scale :math:`s` 1 (``"triangular"``), :math:`2^{1-c}` in cycle
    :math:`c` (``"triangular2"``) or :math:`\gamma^t` (``"exp_range"``).

    Args:
      base_value (float): :math:`v_b`, the bottom of the triangle.
      max_value (float): :math:`v_m`, its top.
      step_size_up (int): steps from bottom to top. Default: 2000.
      step_size_down (int, optional): steps from top to bottom. Default: ``step_size_up``.
      mode (str): ``"triangular"``, ``"triangular2"`` or ``"exp_range"``. Default: ``"triangular"``.
      gamma (float): the decay of ``"exp_range"``. Default: 1.0.

    Returns:
      Schedule: the cyclic schedule.

    >>> s = cyclic(0.0, 1.0, step_size_up=2, mode="triangular2")
    >>> [s(t) for t in range(9)]
    [0.0, 0.5, 1.0, 0.5, 0.0, 0.25, 0.5, 0.25, 0.0]
    """
    modes = {"triangular": CYCLIC_TRIANGULAR, "triangular2": CYCLIC_TRIANGULAR2, "exp_range": CYCLIC_EXP_RANGE}
    if mode not in modes:
        raise ValueError(f"mode is invalid, got {mode!r}; expected one of {sorted(modes)}")
    up = float(step_size_up)
    total = up + (up if step_size_down is None else float(step_size_down))
    return nodes.Cyclic(base_value, max_value, total, up / total, mode=modes[mode], gamma=gamma)


def one_cycle(
    total_steps: int,
    max_value: float = 1.0,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    r"""torch's OneCycleLR (the lr only): up from ``max_value / div_factor`` to ``max_value``, then
    down to ``max_value / div_factor / final_div_factor``.

    Each phase anneals from :math:`a` to :math:`b` as :math:`b + (a - b)(1 + \cos(\pi p)) / 2`
    (``"cos"``) or :math:`a + (b - a) p` (``"linear"``), :math:`p` the fraction of the phase done.
    The first phase ends at step ``pct_start * total_steps - 1`` and the last at ``total_steps - 1``,
    where the value is ``max_value / div_factor / final_div_factor``; from there on that final value
    is held, as optax holds it (torch's OneCycleLR extrapolates its last phase one step further,
    to ``total_steps``, and raises after it).

    Args:
      total_steps (int): the length of the cycle (> 0).
      max_value (float): the peak. Default: 1.0.
      pct_start (float): the fraction of the cycle spent going up, in (0, 1). Default: 0.3.
      anneal_strategy (str): ``"cos"`` or ``"linear"``. Default: ``"cos"``.
      div_factor (float): the start is ``max_value / div_factor``. Default: 25.0.
      final_div_factor (float): the end is the start divided by it. Default: 1e4.
      three_phase (bool): come back down to the start before the final decay. Default: False.

    Returns:
      Schedule: the one-cycle schedule.

    >>> s = one_cycle(10, max_value=1.0, anneal_strategy="linear", div_factor=10.0)
    >>> [round(s(t), 6) for t in (0, 1, 2, 9, 10, 100)]
    [0.1, 0.55, 1.0, 1e-05, 1e-05, 1e-05]
    """
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}")
    initial = max_value / div_factor
    final = initial / final_div_factor
    cycle = nodes.OneCycle(
        initial,
        max_value,
        final,
        total_steps,
        pct_start=pct_start,
        three_phase=three_phase,
        anneal_cos=anneal_strategy == "cos",
    )
    # The node follows torch's OneCycleLR, which at step total_steps extrapolates its last phase.
    return nodes.Sequential([cycle, nodes.Constant(final)], [total_steps])


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""One schedule after another (optax's join_schedules): schedule :math:`i` runs from
    ``boundaries[i-1]`` on, restarted at its own step 0.

    .. math:: v(t) = s_i(t - b_{i-1}) \quad \text{for } b_{i-1} \le t < b_i

    Args:
      schedules (sequence of Schedule): the pieces, in order (at least one).
      boundaries (sequence of int): ``len(schedules) - 1`` non-decreasing steps.

    Returns:
      Schedule: the joined schedule.

    >>> s = join([constant(1.0), linear(1.0, 0.0, 2)], [3])
    >>> [s(t) for t in range(6)]
    [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    """
    return nodes.Sequential(schedules, boundaries)


def product(*schedules: Schedule) -> Schedule:
    r"""The product of the schedules' values, :math:`v(t) = \prod_i s_i(t)`; beta1 comes from the
    first that cycles it.

    Args:
      *schedules (Schedule): the factors.

    Returns:
      Schedule: their product.

    >>> s = product(constant(2.0), step_decay(2, gamma=0.5))
    >>> [s(t) for t in range(5)]
    [2.0, 2.0, 1.0, 1.0, 0.5]
    """
    return nodes.Product(schedules)


def warmup(schedule: Schedule, warmup_steps: int, start_value: float = 0.0) -> Schedule:
    r"""A linear warm-up from ``start_value`` to ``schedule(0)`` in ``warmup_steps``, then ``schedule``
    (from its own step 0).

    Args:
      schedule (Schedule): what follows the warm-up.
      warmup_steps (int): the warm-up's length (>= 0; 0: ``schedule`` itself).
      start_value (float): the value at step 0. Default: 0.0.

    Returns:
      Schedule: the warm-up joined to ``schedule``.

    >>> s = warmup(exponential_decay(0.5), warmup_steps=2)
    >>> [s(t) for t in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.25]
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {schedule!r}")
    if non_negative_int("warmup_steps", warmup_steps) == 0:
        return schedule  # no warm-up (the Hugging Face Trainer's default, which optax takes too)
    return nodes.Sequential([nodes.Linear(1.0, start_value, schedule(0), warmup_steps), schedule], [warmup_steps])


def warmup_cosine(
    warmup_steps: int, decay_steps: int, peak_value: float = 1.0, end_value: float = 0.0, start_value: float = 0.0
) -> Schedule:
    r"""A linear warm-up to ``peak_value``, then a cosine to ``end_value`` over ``decay_steps``,
    held there (optax's warmup_cosine_decay_schedule, with ``decay_steps`` counted after the warm-up).

    Args:
      warmup_steps (int): the warm-up's length (>= 0; 0 starts at ``peak_value``).
      decay_steps (int): the cosine's length (> 0).
      peak_value (float): the value the warm-up reaches. Default: 1.0.
      end_value (float): the value the cosine ends at. Default: 0.0.
      start_value (float): the value at step 0. Default: 0.0.

    Returns:
      Schedule: the warm-up and cosine.

    >>> s = warmup_cosine(warmup_steps=2, decay_steps=10)
    >>> [round(s(t), 4) for t in (0, 1, 2, 7, 12, 20)]
    [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    cosine = nodes.Cosine(peak_value, decay_steps, end_value, clamp=True)
    return warmup(cosine, warmup_steps, start_value)


def warmup_stable_decay(
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    peak_value: float = 1.0,
    end_value: float = 0.0,
    decay: str = "linear",
    start_value: float = 0.0,
) -> Schedule:
    r"""Warmup-stable-decay (WSD): a linear warm-up, a plateau at ``peak_value``, then a decay to
    ``end_value``, held there.

    The decay over :math:`T` steps, :math:`p = \min(t, T) / T`: ``"linear"``
    :math:`v_1 + (v_p - v_1)(1 - p)`, ``"cosine"`` :math:`v_1 + (v_p - v_1)(1 + \cos \pi p) / 2`,
    ``"1-sqrt"`` :math:`v_1 + (v_p - v_1)(1 - \sqrt{p})`.

    Args:
      warmup_steps (int): the warm-up's length (>= 0; 0 starts at ``peak_value``).
      stable_steps (int): the plateau's length (>= 0).
      decay_steps (int): :math:`T`, the decay's length (> 0).
      peak_value (float): :math:`v_p`. Default: 1.0.
      end_value (float): :math:`v_1`. Default: 0.0.
      decay (str): ``"linear"``, ``"cosine"`` or ``"1-sqrt"``. Default: ``"linear"``.
      start_value (float): the value at step 0. Default: 0.0.

    Returns:
      Schedule: the three phases joined.

    >>> s = warmup_stable_decay(2, 3, 4, decay="1-sqrt")
    >>> [round(s(t), 4) for t in range(11)]
    [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.2929, 0.134, 0.0, 0.0]
    """
    non_negative_int("stable_steps", stable_steps)
    positive_int("decay_steps", decay_steps)
    decays = {
        "linear": lambda: nodes.Polynomial(peak_value, decay_steps, 1.0, end_value),
        "cosine": lambda: nodes.Cosine(peak_value, decay_steps, end_value, clamp=True),
        "1-sqrt": lambda: nodes.OneMinusSqrt(peak_value, end_value, decay_steps),
    }
    if decay not in decays:
        raise ValueError(f"decay must be one of {sorted(decays)}, got {decay!r}")
    # Each phase of length zero is left out: a Sequential child is reached only if it lasts.
    phases, boundaries = [], []
    if non_negative_int("warmup_steps", warmup_steps) > 0:
        phases.append(nodes.Linear(1.0, start_value, peak_value, warmup_steps))
        boundaries.append(warmup_steps)
    if stable_steps > 0:
        phases.append(nodes.Constant(peak_value))
        boundaries.append(warmup_steps + stable_steps)
    phases.append(decays[decay]())
    return phases[0] if len(phases) == 1 else nodes.Sequential(phases, boundaries[: len(phases) - 1])


def inverse_sqrt(warmup_steps: int = 0, timescale: int | None = None, peak_value: float = 1.0) -> Schedule:
    r"""A linear warm-up, then an inverse square-root decay (transformers'
    ``get_inverse_sqrt_schedule``).

    .. math:: v(t) = \frac{v_p}{\sqrt{(t + \tau - w) / \tau}} \quad \text{for } t \ge w

    Args:
      warmup_steps (int): :math:`w`, the warm-up's length (>= 0). Default: 0.
      timescale (int, optional): :math:`\tau` (> 0). Default: ``warmup_steps``, or 10000 without a warm-up.
      peak_value (float): :math:`v_p`, the value at the end of the warm-up. Default: 1.0.

    Returns:
      Schedule: the warm-up and decay.

    >>> s = inverse_sqrt(warmup_steps=4)
    >>> [s(t) for t in (0, 2, 4, 16)]
    [0.0, 0.5, 1.0, 0.5]
    """
    non_negative_int("warmup_steps", warmup_steps)
    timescale = timescale if timescale is not None else (warmup_steps or 10_000)
    positive_int("timescale", timescale)
    # The decay child restarts at its own t=0 at the boundary: t_child + warmup + (timescale - warmup).
    decay = nodes.InverseSqrt(peak_value, timescale, float(timescale))
    if warmup_steps == 0:
        return decay
    return nodes.Sequential([nodes.Linear(peak_value, 0.0, 1.0, warmup_steps), decay], [warmup_steps])


def lr_range_exp(start_lr: float, end_lr: float, num_iter: int) -> Schedule:
    r"""The LR range test's exponential ramp (pytorch-lr-finder's ExponentialLR), held at its end.

    .. math:: v(t) = a \left(\frac{b}{a}\right)^{\min(t, n - 1) / (n - 1)}

    Args:
      start_lr (float): :math:`a` (> 0).
      end_lr (float): :math:`b` (> 0).
      num_iter (int): :math:`n`, the steps of the ramp (>= 2).

    Returns:
      Schedule: the ramp.

    >>> s = lr_range_exp(1e-6, 1.0, 7)
    >>> [f"{s(t):.0e}" for t in range(0, 8, 2)]
    ['1e-06', '1e-04', '1e-02', '1e+00']
    """
    return nodes.ExpRamp(start_lr, end_lr, num_iter)


def lr_range_linear(start_lr: float, end_lr: float, num_iter: int) -> Schedule:
    r"""The LR range test's linear ramp (pytorch-lr-finder's LinearLR), held at its end.

    .. math:: v(t) = a + \frac{\min(t, n - 1)}{n - 1} (b - a)

    Args:
      start_lr (float): :math:`a`.
      end_lr (float): :math:`b`.
      num_iter (int): :math:`n`, the steps of the ramp (>= 2).

    Returns:
      Schedule: the ramp.

    >>> s = lr_range_linear(0.0, 1.0, 5)
    >>> [s(t) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return nodes.LinearRamp(start_lr, end_lr, num_iter)


def lambda_schedule(function: Callable[[int], float], *, horizon: int) -> Schedule:
    r"""Any Python function of the step, :math:`v(t) = \text{function}(t)`, tabulated once on the
    host for ``t < horizon`` (see :class:`~lrfused.schedules.Tabulated`).

    The kernels read the table from the optimizer's on-device step, which an AMP overflow pauses
    without the host knowing: the whole range is tabulated up front, so nothing is uploaded later.

    Args:
      function (callable): ``t -> value``, a pure function of the step.
      horizon (int): the steps tabulated, ``[0, horizon)``; asking Python for a later step is an
        error, and a kernel that reaches one skips the update and counts it (``invalid_steps``).

    Returns:
      Schedule: the tabulated function.

    >>> s = lambda_schedule(lambda t: 0.9 ** t, horizon=100)
    >>> round(s(10), 6)
    0.348678
    """
    return nodes.Tabulated(function, horizon=horizon)
